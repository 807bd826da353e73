"""What a user checks in an end-of-training export: one main piece in the prompted colour (not the
grey haze around the object) that renders like the model. Shared by the slow recipe runs."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import trimesh

from threestudio_like.export.fidelity import MIN_EXPORT_PSNR
from threestudio_like.mesh.marching_tets import face_components
from threestudio_like.mesh.types import Mesh


def assert_export_is_the_object(trial: str, printed: str = "") -> None:
    """The newest export of ``trial``: its largest piece holds 95% of the faces, under a quarter of
    its vertices are pale (the prompts' colours all have a dark channel; haze is grey), and its
    fidelity is above the warning level, with no warning ``printed``."""
    save = os.path.join(trial, "save")
    folder = os.path.join(save, max((f for f in os.listdir(save) if f.endswith("-export")), key=lambda f: int(f[2:-7])))
    with open(os.path.join(folder, "fidelity.json")) as f:
        report = json.load(f)
    mesh = trimesh.load(os.path.join(folder, "model.glb"), force="mesh", process=False)
    colours = mesh.visual.to_color().vertex_colors[:, :3] / 255.0  # the texture at each vertex
    mesh.merge_vertices(merge_tex=True, merge_norm=True)  # welded across UV seams
    labels, _ = face_components(Mesh(torch.as_tensor(mesh.vertices, dtype=torch.float32), torch.as_tensor(mesh.faces)))
    pieces = np.bincount(labels.numpy())
    pale = float((colours.min(axis=1) > 0.6).mean())
    summary = f"PSNR {report['psnr']} dB, {len(pieces)} pieces, largest {pieces.max() / pieces.sum():.3f}, pale {pale:.3f}"
    print(f"{trial}: {summary}")
    assert pieces.max() >= 0.95 * pieces.sum(), summary
    assert pale < 0.25, summary
    assert report["psnr"] >= MIN_EXPORT_PSNR and "warning: the exported mesh" not in printed, summary
