"""Quadric-error decimation before UV unwrapping: xatlas time grows steeply with face and chart
count, and a bumpy 65k-face surface from a short run can take minutes to unwrap."""

from __future__ import annotations

import numpy as np
import torch

from threestudio_like.mesh.types import Mesh


def decimate(mesh: Mesh, max_faces: int) -> Mesh:
    """``mesh`` with at most about ``max_faces`` faces (quadric edge collapse, fast-simplification).

    Meshes already small enough are returned unchanged. Per-vertex colours and UVs do not survive
    edge collapses, so decimate before colouring or unwrapping.
    """
    if max_faces < 1:
        raise ValueError(f"max_faces must be a positive face count, got {max_faces}")
    if mesh.n_faces <= max_faces:
        return mesh
    if mesh.v_rgb is not None or mesh.v_tex is not None:
        raise ValueError("decimate() drops per-vertex colours and UVs: decimate before colouring or unwrapping")
    try:
        import fast_simplification
    except ImportError as e:  # a declared dependency, but say what to do if it was skipped
        raise ImportError("mesh decimation needs fast-simplification: pip install fast-simplification") from e
    vertices, faces = fast_simplification.simplify(
        mesh.v_pos.detach().cpu().numpy().astype(np.float32),
        mesh.t_pos_idx.detach().cpu().numpy().astype(np.int64),
        target_count=max_faces,
    )
    device = mesh.v_pos.device
    return Mesh(torch.as_tensor(vertices, dtype=torch.float32, device=device), torch.as_tensor(faces, dtype=torch.long, device=device))
