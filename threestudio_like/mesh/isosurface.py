"""Density field -> closed triangle mesh by marching cubes, and the levels to mesh it at.

The field is sampled on a regular grid over the bounding box (in chunks, without
gradients), surrounded by one extra layer of "empty" samples so the surface is closed even
where the object touches the box, and triangulated with ``skimage.measure.marching_cubes``.

Levels (``Threshold``): a number; ``"auto"`` (the first of ``auto_levels`` giving a closed
surface); ``"opacity"`` (``opacity_level``: the solid that looks like the volume renders).
``silhouette_matched_level`` finds the level whose outline matches given renders; it needs a
renderer, so a caller (the stage hand-over) resolves it and passes the number on.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Callable, Literal, Optional, Union

import numpy as np
import torch

from threestudio_like.mesh.rasterize import clip_positions, make_rasterizer
from threestudio_like.mesh.types import Mesh
from threestudio_like.utils.typing import CameraBatch, Float, Tensor

DensityFn = Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N ..."]]
Threshold = Union[float, Literal["auto", "opacity"]]
LEVEL_NAMES = ("auto", "opacity")  # the levels found from the field alone

# "auto" ignores samples at or below this density when taking its starting statistic,
# so a mostly empty box does not drag the level to ~0 (which would wrap the noise floor)
EMPTY_DENSITY = 1e-5
AUTO_MAX_TRIES = 8
OPACITY_CANDIDATES = 200  # levels "opacity" compares (quantiles of the occupied densities)


class EmptyIsosurfaceError(ValueError):
    """The field has no surface at the requested (or any tried) level."""


@torch.no_grad()
def sample_grid(
    density_fn: DensityFn,
    bbox: Float[Tensor, "2 3"],
    resolution: int,
    chunk: int = 2**18,
    device: Optional[torch.device | str] = None,
) -> Float[Tensor, "R R R"]:
    """Field values at ``resolution``^3 grid nodes spanning ``bbox`` (corners included), indexed [x, y, z].

    Query points go to ``device``: by default the device of the module behind ``density_fn``
    (a module or its bound method), else CPU. Values come back on the CPU.
    """
    if resolution < 2:
        raise ValueError(f"isosurface resolution must be at least 2 samples per axis, got {resolution}")
    bbox = torch.as_tensor(bbox, dtype=torch.float32)
    if bbox.shape != (2, 3) or bool((bbox[1] <= bbox[0]).any()):
        raise ValueError(f"bbox must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with max > min, got {bbox.tolist()}")
    n = resolution**3
    values = torch.empty(n, dtype=torch.float32)
    steps = (bbox[1] - bbox[0]) / (resolution - 1)
    device = torch.device(device) if device is not None else _fn_device(density_fn)
    for start in range(0, n, chunk):
        flat = torch.arange(start, min(start + chunk, n))
        # build coordinates per chunk: a full 512^3 coordinate grid would not fit in memory
        ijk = torch.stack([flat // (resolution * resolution), (flat // resolution) % resolution, flat % resolution], -1)
        points = bbox[0] + ijk.float() * steps
        out = density_fn(points.to(device))
        values[start : start + flat.numel()] = out.reshape(flat.numel(), -1)[:, 0].float().cpu()
    return values.reshape(resolution, resolution, resolution)


def _fn_device(density_fn: DensityFn) -> torch.device:
    """Device of the module behind ``density_fn`` (bound method or module), else CPU."""
    owner = getattr(density_fn, "__self__", density_fn)
    if isinstance(owner, torch.nn.Module):
        tensor = next(itertools.chain(owner.parameters(), owner.buffers()), None)
        if tensor is not None:
            return tensor.device
    return torch.device("cpu")


def marching_cubes(grid: Float[Tensor, "R R R"], bbox: Float[Tensor, "2 3"], level: float) -> Mesh:
    """Closed surface where ``grid`` crosses ``level`` (inside = above), in world coordinates.

    Raises ``EmptyIsosurfaceError`` when no sample lies above the level.
    """
    from skimage.measure import marching_cubes as skimage_marching_cubes

    values = grid.detach().cpu().numpy().astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError("the density field contains NaN or inf values; cannot extract an isosurface")
    if not (values > level).any():
        raise EmptyIsosurfaceError(f"no sample exceeds level {level:g}")
    outside = min(float(values.min()), level) - 1.0
    padded = np.pad(values, 1, mode="constant", constant_values=outside)
    bbox = torch.as_tensor(bbox, dtype=torch.float64).cpu()
    spacing = (bbox[1] - bbox[0]) / (grid.shape[0] - 1)
    verts, faces, _, _ = skimage_marching_cubes(padded, level=level, spacing=tuple(spacing.tolist()))
    # padding shifted the indices by one node; vertices in the padding layer are pulled
    # back onto the box so the cap stays closed but never leaves bbox
    v_pos = torch.as_tensor(verts, dtype=torch.float64) - spacing + bbox[0]
    v_pos = torch.minimum(torch.maximum(v_pos, bbox[0]), bbox[1])
    # skimage's winding depends on its gradient convention and on our [x, y, z] axis order
    # (for this layout it comes out inward); the surface is closed, so the sign of the
    # enclosed volume tells the orientation reliably whatever skimage version is installed
    mesh = Mesh(v_pos.float(), torch.as_tensor(faces.astype(np.int64)))
    return mesh if mesh.signed_volume() >= 0 else mesh.flip_faces()


def extract_isosurface(
    density_fn: DensityFn,
    bbox: Float[Tensor, "2 3"],
    resolution: int,
    threshold: Threshold = "auto",
    chunk: int = 2**18,
    device: Optional[torch.device | str] = None,
) -> Mesh:
    """Mesh of ``{x : density_fn(x) > threshold}`` inside ``bbox``; see module docstring.

    ``threshold="auto"`` starts from the mean density of the occupied samples (those above
    1e-5) and halves the distance to the lowest occupied value until the level yields a
    non-empty, watertight surface. ``threshold="opacity"`` (for a volume density) first tries
    ``opacity_level``, the level whose solid looks most like the volume renders, then "auto"'s.
    ``device``: where to evaluate, see ``sample_grid``.
    """
    grid = sample_grid(density_fn, bbox, resolution, chunk, device)
    low, high = float(grid.min()), float(grid.max())
    if threshold == "auto":
        return _auto_isosurface(grid, bbox, low, high)
    if threshold == "opacity":  # a volume density: the level that looks like its render, else "auto"'s
        level = opacity_level(grid, bbox)
        return _auto_isosurface(grid, bbox, low, high, ([level] if level is not None else []) + auto_levels(grid, low, high))
    if isinstance(threshold, str):
        raise ValueError(f'isosurface threshold must be a number, "auto" or "opacity", got {threshold!r}')
    try:
        return marching_cubes(grid, bbox, float(threshold))
    except EmptyIsosurfaceError:
        raise EmptyIsosurfaceError(
            f"isosurface threshold {float(threshold):g} gives an empty mesh: the density over the box "
            f"ranges from {low:g} to {high:g}. Use a threshold inside that range, or threshold: auto."
        ) from None


def _auto_isosurface(
    grid: Float[Tensor, "R R R"], bbox: Float[Tensor, "2 3"], low: float, high: float, levels: Optional[list[float]] = None
) -> Mesh:
    tried: list[float] = []
    fallback: Mesh | None = None
    for level in auto_levels(grid, low, high) if levels is None else levels:
        tried.append(level)
        mesh = marching_cubes(grid, bbox, level)
        if mesh.n_faces > 0 and mesh.is_watertight:
            return mesh
        if fallback is None and mesh.n_faces > 0:
            fallback = mesh
    if fallback is not None:
        warnings.warn(f"isosurface: no tried level ({_fmt(tried)}) gave a watertight mesh; returning an open one")
        return fallback
    raise EmptyIsosurfaceError(
        f"the density field is empty: its maximum over the box is {high:g} (minimum {low:g}); "
        f"levels tried: {_fmt(tried) or 'none (no sample above ' + format(EMPTY_DENSITY, 'g') + ')'}. "
        "Check that the geometry was trained (or loaded from the right checkpoint) and that the "
        "export bounding box covers the object, or pass an explicit small threshold."
    )


def auto_levels(grid: Float[Tensor, "R R R"], low: float, high: float) -> list[float]:
    """Candidate levels, best first: the mean occupied density, then halfway steps down to the
    weakest occupied density, then between that and the field minimum (for binary fields)."""
    occupied = grid[grid > EMPTY_DENSITY]
    if occupied.numel() == 0:
        return []
    floor, start = float(occupied.min()), float(occupied.mean())
    candidates = [floor + (start - floor) * 0.5**k for k in range(AUTO_MAX_TRIES - 1)]
    candidates.append(0.5 * (low + floor))
    levels: list[float] = []
    for level in candidates:
        # a level at the maximum has nothing above it; skip repeats of a collapsed range
        if level < high and not any(math.isclose(level, seen) for seen in levels):
            levels.append(level)
    return levels


def opacity_level(grid: Float[Tensor, "R R R"], bbox: Float[Tensor, "2 3"]) -> Optional[float]:
    """The level at which a solid best matches the volume's own renders, for a NeRF density.

    Looking along each axis, a ray through the volume is opaque by ``1 - exp(-sum(density * step))``
    while the solid above a level covers it entirely or not at all; the level chosen minimises
    the total difference over the three axes' rays. A thin haze, which renders nearly clear,
    stays outside the surface, and a wall the renders show solid stays inside, whatever the
    density's scale. None when nothing is occupied.
    """
    density = grid.detach().float().cpu().clamp_min(0)
    occupied = density[density > EMPTY_DENSITY]
    if occupied.numel() == 0:
        return None
    box = torch.as_tensor(bbox, dtype=torch.float32).cpu()
    step = (box[1] - box[0]) / (grid.shape[0] - 1)
    opacity = torch.cat([(1.0 - torch.exp(-density.sum(axis) * float(step[axis]))).flatten() for axis in range(3)])
    peak = torch.cat([density.amax(axis).flatten() for axis in range(3)])  # a ray meets the solid above a level below its peak
    values = np.quantile(occupied.numpy(), np.linspace(0.0, 1.0, OPACITY_CANDIDATES, endpoint=False))
    best, best_error = None, math.inf
    for level in np.unique(values).tolist():
        error = float(((peak > level).float() - opacity).abs().sum())
        if error < best_error:
            best, best_error = level, error
    return best


SILHOUETTE_LEVELS = 24  # candidate levels tried by silhouette_matched_level
SILHOUETTE_GRID = 64  # marching-cubes resolution while choosing


@torch.no_grad()
def silhouette_matched_level(geometry: Any, renderer: Callable[..., dict], views: CameraBatch) -> float:
    """Hand-over level for a volume: the isosurface level whose mesh silhouettes best match
    (IoU) where ``renderer`` draws ``geometry`` opaque (opacity > 0.5) from ``views``.

    A NeRF's fringe of thin density renders partly transparent; a fixed or mean-density level
    can put the mesh outside or inside what the user saw. Candidates are spaced geometrically
    between the weakest and strongest density inside the box. ``geometry``: a
    ``BaseImplicitGeometry`` (its ``isosurface_field`` and ``bbox``), sampled once for all levels.
    """
    target = renderer(**views)["opacity"][..., 0] > 0.5
    if not bool(target.any()):
        raise EmptyIsosurfaceError("the previous stage renders nothing opaque from its eval cameras; was it trained?")
    bbox = geometry.bbox.cpu()
    field = sample_grid(geometry.isosurface_field, bbox, SILHOUETTE_GRID)
    positive = field[field > 1e-3]
    if positive.numel() == 0:
        raise EmptyIsosurfaceError("the previous stage's density is zero everywhere in its box")
    low, high = float(positive.min()), float(positive.max())
    levels = torch.logspace(torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), SILHOUETTE_LEVELS + 2)[1:-1]
    rasterizer = make_rasterizer("auto", views["mvp_mtx"].device)
    height, width = target.shape[1:]
    best_level, best_iou = float(levels[0]), -1.0
    for level in levels.tolist():
        try:
            mesh = marching_cubes(field, bbox, level)
        except EmptyIsosurfaceError:
            continue
        rast, _ = rasterizer.rasterize(clip_positions(mesh.v_pos, views["mvp_mtx"]), mesh.t_pos_idx.int(), (height, width))
        covered = rast[..., 3] > 0
        iou = float((covered & target).sum() / (covered | target).sum())
        if iou > best_iou:
            best_level, best_iou = level, iou
    print(f"Hand-over level {best_level:.4g}: its silhouettes match the previous stage's renders with IoU {best_iou:.3f}")
    return best_level


def _fmt(levels: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in levels)
