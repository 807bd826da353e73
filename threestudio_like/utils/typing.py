"""Tensor shape annotations (jaxtyping) and the small typed records passed between parts."""

from __future__ import annotations

from typing import TypedDict

from jaxtyping import Bool, Float, Int, UInt8  # noqa: F401  (re-exported for annotations)
from torch import Tensor


class CameraBatch(TypedDict, total=False):
    """What a camera data module yields and renderers consume. B views of H x W pixels."""

    rays_o: Float[Tensor, "B H W 3"]  # ray origins, world space
    rays_d: Float[Tensor, "B H W 3"]  # unit ray directions, world space
    c2w: Float[Tensor, "B 4 4"]  # camera-to-world, OpenGL axes (x right, y up, camera looks down -z)
    mvp_mtx: Float[Tensor, "B 4 4"]  # world -> clip space
    camera_positions: Float[Tensor, "B 3"]
    light_positions: Float[Tensor, "B 3"]
    elevation: Float[Tensor, "B"]  # degrees
    azimuth: Float[Tensor, "B"]  # degrees
    camera_distances: Float[Tensor, "B"]
    fovy: Float[Tensor, "B"]  # degrees
    height: int
    width: int
    index: Int[Tensor, "B"]  # view index for validation / test orbits


class RenderOutput(TypedDict, total=False):
    """What a renderer returns; per-sample entries are present in training for regularisers."""

    comp_rgb: Float[Tensor, "B H W 3"]
    comp_rgb_fg: Float[Tensor, "B H W 3"]
    comp_rgb_bg: Float[Tensor, "B H W 3"]
    opacity: Float[Tensor, "B H W 1"]
    depth: Float[Tensor, "B H W 1"]
    comp_normal: Float[Tensor, "B H W 3"]  # in [0, 1] for display, background 0
    # packed per-sample quantities (N samples over all rays)
    weights: Float[Tensor, "N 1"]
    normal: Float[Tensor, "N 3"]
    t_dirs: Float[Tensor, "N 3"]
    ray_indices: Int[Tensor, "N"]
    t_points: Float[Tensor, "N 1"]
    t_intervals: Float[Tensor, "N 1"]
    points: Float[Tensor, "N 3"]
    density: Float[Tensor, "N 1"]
    normal_perturb: Float[Tensor, "N 3"]
    z_variance: Float[Tensor, "B H W 1"]  # per-ray depth variance (for the z-variance loss)
