"""Mesh files: OBJ (+ MTL) and binary glTF (GLB), with per-vertex colours or a texture.

A texture is a float image in [0, 1] (H, W, 3), row 0 at the top, addressed by the mesh's
``v_tex`` (OBJ convention, v = 0 at the bottom). The OBJ's MTL references it as ``map_Kd``;
the GLB embeds it as the PBR base colour of a dielectric, fully rough material.

Both writers go through ``atomic_path`` so an interrupted export never leaves a truncated
file where a previous good one was.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Optional

import numpy as np

from threestudio_like.mesh.types import Mesh

if TYPE_CHECKING:
    import trimesh
from threestudio_like.utils.io import atomic_path, atomic_write_text, save_image, to_uint8


def write_obj(
    path: str,
    mesh: Mesh,
    texture: Optional[np.ndarray] = None,
    texture_format: str = "png",
    material_name: str = "material_0",
) -> str:
    """Write ``path`` (.obj) and a sibling .mtl it references (and the texture image, if any);
    returns the OBJ path.

    Without a texture, vertex colours use the widespread ``v x y z r g b`` extension (read by
    trimesh, MeshLab, Blender) and the faces deliberately do not ``usemtl`` the plain white
    material, because readers would then show it instead of the vertex colours.
    """
    if not path.lower().endswith(".obj"):
        raise ValueError(f"write_obj: expected a path ending in .obj, got {path!r}")
    stem = os.path.splitext(path)[0]
    texture_name = None
    if texture is not None:
        if mesh.v_tex is None:
            raise ValueError("write_obj: a texture needs texture coordinates (mesh.v_tex)")
        texture_name = f"{os.path.basename(stem)}_albedo.{texture_format}"
        save_image(os.path.join(os.path.dirname(path), texture_name), texture)
    atomic_write_text(stem + ".mtl", _mtl_text(material_name, texture_name))

    positions = mesh.v_pos.detach().cpu().double().numpy()
    if mesh.v_rgb is not None and texture is None:
        colors = mesh.v_rgb.detach().cpu().double().clamp(0, 1).numpy()
        vertex_rows = np.concatenate([positions, colors], axis=1)
        vertex_fmt = "v %.6f %.6f %.6f %.6f %.6f %.6f"
    else:
        vertex_rows, vertex_fmt = positions, "v %.6f %.6f %.6f"
    faces = mesh.t_pos_idx.detach().cpu().numpy() + 1  # OBJ indices are 1-based

    buffer = io.StringIO()
    buffer.write(f"mtllib {os.path.basename(stem)}.mtl\n")
    np.savetxt(buffer, vertex_rows, fmt=vertex_fmt)
    if texture is not None:
        np.savetxt(buffer, mesh.v_tex.detach().cpu().double().numpy(), fmt="vt %.6f %.6f")
        buffer.write(f"usemtl {material_name}\n")
        np.savetxt(buffer, np.repeat(faces, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(buffer, faces, fmt="f %d %d %d")
    atomic_write_text(path, buffer.getvalue())
    return path


def _mtl_text(material_name: str, texture_name: Optional[str] = None) -> str:
    lines = [
        f"newmtl {material_name}",
        "Ka 1.000000 1.000000 1.000000",
        "Kd 1.000000 1.000000 1.000000",
        "Ks 0.000000 0.000000 0.000000",
        "Ns 10.000000",
        "d 1.000000",
        "illum 1",
    ]
    if texture_name is not None:
        lines.append(f"map_Kd {texture_name}")
    return "\n".join(lines + [""])


# world z-up -> glTF's mandated y-up: a proper rotation (-90 degrees about x), so winding,
# volumes and normals keep their orientation
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def write_glb(path: str, mesh: Mesh, texture: Optional[np.ndarray] = None, y_up: bool = True) -> str:
    """Write binary glTF; vertex colours become the COLOR_0 attribute, a texture the base
    colour of a PBR material. Returns the path.

    glTF viewers assume +y up, so by default world (x, y, z) is stored as (x, z, -y);
    ``y_up=False`` stores world coordinates unchanged.
    """
    if not path.lower().endswith(".glb"):
        raise ValueError(f"write_glb: expected a path ending in .glb, got {path!r}")
    scene_mesh = mesh.to_trimesh()
    if texture is not None:
        scene_mesh.visual = _texture_visuals(mesh, texture)
    if y_up:
        scene_mesh.apply_transform(Z_UP_TO_Y_UP)
    with atomic_path(path) as tmp:
        scene_mesh.export(tmp, file_type="glb")
    return path


def _texture_visuals(mesh: Mesh, texture: np.ndarray) -> "trimesh.visual.TextureVisuals":
    import trimesh
    from PIL import Image

    if mesh.v_tex is None:
        raise ValueError("write_glb: a texture needs texture coordinates (mesh.v_tex)")
    material = trimesh.visual.material.PBRMaterial(
        name="material_0",
        baseColorTexture=Image.fromarray(to_uint8(np.asarray(texture))),
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )
    # trimesh keeps OBJ-convention coordinates and flips v for glTF itself
    return trimesh.visual.TextureVisuals(uv=mesh.v_tex.detach().cpu().numpy(), material=material)
