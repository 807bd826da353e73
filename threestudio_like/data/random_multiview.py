"""Random groups of views for multi-view guidance (``mvdream-random-multiview-camera-datamodule``).

MVDream's model denoises the ``n_view`` views of one object together, so training cameras come
in groups. Within a group the views share elevation, distance, field of view, perturbations and
the light's random offset; their azimuths are ``offset + k * span / n_view`` (k = 0..n_view-1,
one random offset per group), i.e. 90 degrees apart for 4 views over the full circle. With
``relative_radius`` the sampled distance is in units of the distance at which the unit sphere
fills the view (divided by ``tan(fovy / 2)``), as in the MVDream extension; ``zoom_range``
then narrows the field of view. The batch is ``batch_size`` views, a whole number of groups,
each group's views adjacent. Evaluation cameras are the single-view module's orbits.

Like the single-view sampler, every batch is a pure function of ``(seed, step)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError, parse_structured
from threestudio_like.data.cameras import make_camera_batch, spherical_to_cartesian
from threestudio_like.data.random_camera import (
    Range,
    RandomCameraConfig,
    RandomCameraDataModule,
    RandomCameraSampler,
    _check_config,
    _uniform,
    step_seed,
)
from threestudio_like.registry import register
from threestudio_like.utils.typing import CameraBatch, Float, Tensor


@dataclass
class MultiviewCameraConfig(RandomCameraConfig):
    """The single-view options plus the MVDream extension's: ``n_view``, ``relative_radius``, ``zoom_range``."""

    n_view: int = 1
    relative_radius: bool = True
    zoom_range: Range = (1.0, 1.0)


class MultiviewCameraSampler(RandomCameraSampler):
    """Draws ``CameraBatch``es of ``batch_size / n_view`` groups; ``sample(step)`` is deterministic."""

    cfg: MultiviewCameraConfig

    def __init__(self, cfg: Any = None, seed: int = 0) -> None:
        self.cfg = _parse(cfg)
        self.seed = int(seed)

    def sample(self, step: int) -> CameraBatch:
        cfg = self.cfg
        height, width, batch = self.resolution(step)
        n_view, groups = cfg.n_view, batch // cfg.n_view
        elevation_range, azimuth_range = self.view_ranges(step)
        g = torch.Generator().manual_seed(step_seed(self.seed, step))

        def per_group(values: Tensor) -> Tensor:
            return values.repeat_interleave(n_view, dim=0)

        elevation_deg = per_group(self._sample_elevation(g, groups, elevation_range))
        offsets = torch.rand(groups, 1, generator=g)
        fractions = (offsets + torch.arange(n_view)) / n_view  # [G, V]: one offset, evenly spaced
        azimuth_deg = (fractions * (azimuth_range[1] - azimuth_range[0]) + azimuth_range[0]).reshape(-1)
        fovy_deg = _uniform(g, (groups,), *cfg.fovy_range)
        camera_distances = _uniform(g, (groups,), *cfg.camera_distance_range)
        if cfg.relative_radius:
            camera_distances = camera_distances / torch.tan(torch.deg2rad(fovy_deg) / 2)
        fovy_deg = fovy_deg * _uniform(g, (groups,), *cfg.zoom_range)
        fovy_deg, camera_distances = per_group(fovy_deg), per_group(camera_distances)
        camera_positions = spherical_to_cartesian(elevation_deg, azimuth_deg, camera_distances)

        camera_positions = camera_positions + per_group(_uniform(g, (groups, 3), -cfg.camera_perturb, cfg.camera_perturb))
        center = per_group(torch.randn(groups, 3, generator=g) * cfg.center_perturb)
        up = torch.tensor([0.0, 0.0, 1.0]) + per_group(torch.randn(groups, 3, generator=g) * cfg.up_perturb)
        light_positions = self._group_lights(g, camera_positions, groups)

        return make_camera_batch(
            camera_positions=camera_positions,
            center=center,
            up=up,
            fovy_deg=fovy_deg,
            light_positions=light_positions,
            elevation_deg=elevation_deg,
            azimuth_deg=azimuth_deg,
            camera_distances=camera_distances,
            height=height,
            width=width,
            normalize_rays=cfg.rays_d_normalize,
        )

    def _group_lights(self, g: torch.Generator, camera_positions: Float[Tensor, "B 3"], groups: int) -> Float[Tensor, "B 3"]:
        """dreamfusion: each view lit from near its own camera, with the group's random offset and
        distance (as the MVDream extension); magic3d: the single-view rule per view."""
        cfg = self.cfg
        if cfg.light_sample_strategy != "dreamfusion":
            return self._sample_lights(g, camera_positions)
        distances = _uniform(g, (groups,), *cfg.light_distance_range).repeat_interleave(cfg.n_view)
        noise = (torch.randn(groups, 3, generator=g) * cfg.light_position_perturb).repeat_interleave(cfg.n_view, dim=0)
        return F.normalize(camera_positions + noise, dim=-1) * distances[:, None]


def _parse(cfg: Any) -> MultiviewCameraConfig:
    parsed = parse_structured(MultiviewCameraConfig, cfg)
    _check_config(parsed)
    if parsed.n_view < 1:
        raise ConfigError(f"data.n_view must be at least 1, got {parsed.n_view}")
    sizes = parsed.batch_size if isinstance(parsed.batch_size, (list, tuple)) else [parsed.batch_size]
    bad = [int(b) for b in sizes if int(b) % parsed.n_view]
    if bad:
        raise ConfigError(
            f"data.batch_size {list(sizes) if len(sizes) > 1 else sizes[0]} must be a multiple of data.n_view={parsed.n_view} "
            f"(whole groups of views); e.g. batch_size: {[max(1, int(b) // parsed.n_view) * parsed.n_view for b in sizes]}."
        )
    low, high = parsed.zoom_range
    if not 0 < low <= high:
        raise ConfigError(f"data.zoom_range: expected [low, high] with 0 < low <= high, got {[low, high]}")
    if parsed.relative_radius and math.tan(math.radians(parsed.fovy_range[1]) / 2) <= 0:
        raise ConfigError(f"data.fovy_range must lie in (0, 180) degrees with relative_radius, got {list(parsed.fovy_range)}")
    return parsed


@register("mvdream-random-multiview-camera-datamodule", "random-multiview-camera-datamodule")
class MultiviewCameraDataModule(RandomCameraDataModule):
    """Training stream of view groups; validation orbit and test turntable as in the single-view module."""

    Config = MultiviewCameraConfig
    Sampler = MultiviewCameraSampler
