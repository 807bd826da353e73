"""Textured export: UV unwrapping with xatlas, baking the learned appearance into an image,
and dilating the charts so texture filtering at seams never reads background texels."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from threestudio_like.mesh.types import Mesh
from threestudio_like.utils.typing import Bool, Float, Tensor

ColorFn = Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N C"]]
BAKE_CHUNK = 65536  # surface points per appearance query


def unwrap_uv(
    mesh: Mesh, texture_size: int = 1024, chart_options: Optional[dict] = None, pack_options: Optional[dict] = None
) -> Mesh:
    """The mesh with ``v_tex`` in [0, 1]^2 from xatlas; vertices are split along chart seams.

    Charts are packed for ``texture_size`` with 2 texels between them unless ``pack_options``
    say otherwise; both option dicts set fields of ``xatlas.ChartOptions`` / ``PackOptions``
    (e.g. ``{"max_iterations": 2}``, ``{"padding": 4}``).
    """
    try:
        import xatlas
    except ImportError as e:  # a declared dependency, but say what to do if it was skipped
        raise ImportError("UV unwrapping needs xatlas: pip install xatlas") from e
    if mesh.n_faces == 0:
        raise ValueError("cannot unwrap an empty mesh (no faces)")
    atlas = xatlas.Atlas()
    atlas.add_mesh(
        mesh.v_pos.detach().cpu().numpy().astype(np.float32),
        mesh.t_pos_idx.detach().cpu().numpy().astype(np.uint32),
    )
    charts = _options(xatlas.ChartOptions(), chart_options or {}, "xatlas_chart_options")
    pack = _options(xatlas.PackOptions(), {"resolution": texture_size, "padding": 2, **(pack_options or {})}, "xatlas_pack_options")
    atlas.generate(charts, pack)
    vmapping, indices, uvs = atlas[0]
    source = torch.as_tensor(vmapping.astype(np.int64), device=mesh.v_pos.device)
    return Mesh(
        mesh.v_pos[source],
        torch.as_tensor(indices.astype(np.int64), device=mesh.v_pos.device),
        None if mesh.v_rgb is None else mesh.v_rgb[source],
        torch.as_tensor(uvs, dtype=torch.float32, device=mesh.v_pos.device),
    )


def _options(options: Any, values: dict, name: str) -> Any:
    for key, value in values.items():
        if key.startswith("_") or not hasattr(options, key):
            known = [k for k in dir(options) if not k.startswith("_")]
            raise ValueError(f"{name}: unknown option {key!r}; known: {', '.join(known)}")
        setattr(options, key, value)
    return options


@torch.no_grad()
def bake_texture(
    mesh: Mesh, color_fn: ColorFn, size: int, rasterizer: Any
) -> tuple[Float[Tensor, "H W C"], Bool[Tensor, "H W"]]:
    """Rasterise the mesh in UV space and evaluate ``color_fn`` at the surface point of every
    covered texel. Returns the texture (row 0 = v of 1, the top of the image, as image files
    store it) and the mask of covered texels. ``rasterizer`` has the nvdiffrast-shaped API."""
    if mesh.v_tex is None:
        raise ValueError("bake_texture needs texture coordinates: unwrap_uv(mesh) first")
    uv = mesh.v_tex.to(mesh.v_pos)
    uv_clip = torch.cat([uv * 2.0 - 1.0, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], dim=-1)
    faces = mesh.t_pos_idx.to(torch.int32)
    rast, _ = rasterizer.rasterize(uv_clip[None], faces, (size, size))
    points, _ = rasterizer.interpolate(mesh.v_pos[None], rast, faces)
    mask = rast[0, ..., 3] > 0
    surface = points[0][mask]
    colors = torch.cat([color_fn(surface[i : i + BAKE_CHUNK]) for i in range(0, surface.shape[0], BAKE_CHUNK)])
    texture = colors.new_zeros(size, size, colors.shape[-1])
    texture[mask] = colors
    # row 0 of the rasterised image is v = 0 (NDC y = -1); image files put v = 1 on top
    return texture.flip(0), mask.flip(0)


def dilate(texture: Float[Tensor, "H W C"], mask: Bool[Tensor, "H W"]) -> Float[Tensor, "H W C"]:
    """Fill every uncovered texel with its nearest covered texel's colour, so bilinear and
    mipmapped lookups near chart borders only ever mix colours of the surface."""
    from scipy import ndimage

    if not bool(mask.any()):
        raise ValueError("the texture has no covered texels to dilate from")
    _, (rows, cols) = ndimage.distance_transform_edt(~mask.cpu().numpy(), return_indices=True)
    rows_t = torch.as_tensor(rows, device=texture.device)
    cols_t = torch.as_tensor(cols, device=texture.device)
    return texture[rows_t, cols_t]


def sample_texture(texture: Float[Tensor, "H W C"], uv: Float[Tensor, "N 2"]) -> Float[Tensor, "N C"]:
    """Bilinear lookup at OBJ-convention coordinates (v = 0 at the bottom row)."""
    grid = torch.stack([uv[:, 0] * 2.0 - 1.0, 1.0 - uv[:, 1] * 2.0], dim=-1)  # grid_sample: y = -1 is row 0
    image = texture.permute(2, 0, 1)[None]
    sampled = torch.nn.functional.grid_sample(image, grid[None, None], mode="bilinear", align_corners=False)
    return sampled[0, :, 0].T


def textured_mesh(
    mesh: Mesh,
    color_fn: ColorFn,
    rasterizer: Any,
    texture_size: int = 1024,
    chart_options: Optional[dict] = None,
    pack_options: Optional[dict] = None,
) -> tuple[Mesh, Float[Tensor, "H W C"]]:
    """Unwrap, bake and dilate: the UV-mapped mesh and its texture in [0, 1]."""
    unwrapped = unwrap_uv(mesh, texture_size, chart_options, pack_options)
    texture, mask = bake_texture(unwrapped, color_fn, texture_size, rasterizer)
    return unwrapped, dilate(texture, mask).clamp(0.0, 1.0)
