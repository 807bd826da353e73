"""Mesh files: OBJ (+ MTL) with per-vertex colours, and binary glTF (GLB).

Both writers go through ``atomic_path`` so an interrupted export never leaves a truncated
file where a previous good one was.
"""

from __future__ import annotations

import io
import os

import numpy as np

from threestudio_like.export.mesh import Mesh
from threestudio_like.utils.io import atomic_path, atomic_write_text


def write_obj(path: str, mesh: Mesh, material_name: str = "material_0") -> str:
    """Write ``path`` (.obj) and a sibling .mtl it references; returns the OBJ path.

    Vertex colours use the widespread ``v x y z r g b`` extension (read by trimesh,
    MeshLab, Blender). The MTL holds one plain white material named ``material_name``; the
    faces deliberately do not ``usemtl`` it, because trimesh (and other readers) then show
    the material's colour instead of the vertex colours. A texture bake writes its own MTL.
    """
    if not path.lower().endswith(".obj"):
        raise ValueError(f"write_obj: expected a path ending in .obj, got {path!r}")
    mtl_path = os.path.splitext(path)[0] + ".mtl"
    atomic_write_text(mtl_path, _mtl_text(material_name))

    positions = mesh.v_pos.detach().cpu().double().numpy()
    if mesh.v_rgb is not None:
        colors = mesh.v_rgb.detach().cpu().double().clamp(0, 1).numpy()
        vertex_rows = np.concatenate([positions, colors], axis=1)
        vertex_fmt = "v %.6f %.6f %.6f %.6f %.6f %.6f"
    else:
        vertex_rows, vertex_fmt = positions, "v %.6f %.6f %.6f"
    faces = mesh.t_pos_idx.detach().cpu().numpy() + 1  # OBJ indices are 1-based

    buffer = io.StringIO()
    buffer.write(f"mtllib {os.path.basename(mtl_path)}\n")
    np.savetxt(buffer, vertex_rows, fmt=vertex_fmt)
    np.savetxt(buffer, faces, fmt="f %d %d %d")
    atomic_write_text(path, buffer.getvalue())
    return path


def _mtl_text(material_name: str) -> str:
    return "\n".join(
        [
            f"newmtl {material_name}",
            "Ka 1.000000 1.000000 1.000000",
            "Kd 1.000000 1.000000 1.000000",
            "Ks 0.000000 0.000000 0.000000",
            "Ns 10.000000",
            "d 1.000000",
            "illum 1",
            "",
        ]
    )


# world z-up -> glTF's mandated y-up: a proper rotation (-90 degrees about x), so winding,
# volumes and normals keep their orientation
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def write_glb(path: str, mesh: Mesh, y_up: bool = True) -> str:
    """Write binary glTF; vertex colours become the COLOR_0 attribute. Returns the path.

    glTF viewers assume +y up, so by default world (x, y, z) is stored as (x, z, -y);
    ``y_up=False`` stores world coordinates unchanged.
    """
    if not path.lower().endswith(".glb"):
        raise ValueError(f"write_glb: expected a path ending in .glb, got {path!r}")
    scene_mesh = mesh.to_trimesh()
    if y_up:
        scene_mesh.apply_transform(Z_UP_TO_Y_UP)
    with atomic_path(path) as tmp:
        scene_mesh.export(tmp, file_type="glb")
    return path
