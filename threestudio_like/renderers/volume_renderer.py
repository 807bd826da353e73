"""NeRF volume renderer: packed ray marching with an occupancy grid, alpha compositing.

Per ray, samples are fixed-size steps through the scene box (``radius``), kept only in
occupied cells of the grid (``grid_prune``) and, optionally, only where visible
(``prune_alpha_threshold``). Colours come from the material, the background fills what
the volume leaves transparent. An ``unbounded`` geometry (scene contraction) is also sampled
beyond the box, ``num_samples_per_ray_outside`` intervals per ray evenly spaced in disparity up
to ``far_plane``: what a real capture shows around the object is drawn there, not by floaters
inside the box.

``backend: auto`` uses nerfacc's occupancy-grid sampler and rendering functions when
nerfacc (0.5 API) imports with its compiled CUDA code and the rays are on CUDA; the built-in
PyTorch path runs anywhere. Moving the renderer to a CUDA device loads (on first use: builds)
nerfacc's kernels, so a slow build or a missing backend shows before training, not in step 0.
The grid state lives in the built-in ``OccupancyGrid`` either way, so checkpoints do not
depend on the backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Optional

import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError, Range
from threestudio_like.registry import register
from threestudio_like.renderers import packed
from threestudio_like.renderers.base import BaseRenderer
from threestudio_like.renderers.occupancy import OccupancyGrid, march_rays, nan_as_opaque, ray_box_intersection
from threestudio_like.renderers.packed import PackedSamples
from threestudio_like.utils import backends
from threestudio_like.utils.backends import choose_backend, optional_import
from threestudio_like.utils.typing import Float, RenderOutput, Tensor

# Fixed in threestudio too: its visibility pruning arguments and nerfacc's grid-update defaults.
PRUNE_ALPHA_THRESHOLD = 0.01
EARLY_STOP_EPS = 1e-4
OCCUPANCY_EMA_DECAY = 0.95
OCCUPANCY_WARMUP_STEPS = 256
BACKENDS = ("auto", "torch", "nerfacc")
NORMAL_PERTURB_STD = 1e-2
PART = "volume renderer"  # as report_backend names it


@register("nerf-volume-renderer")
class NeRFVolumeRenderer(BaseRenderer):
    @dataclass
    class Config(BaseRenderer.Config):
        num_samples_per_ray: Annotated[int, Range(1)] = 512  # marching steps along the box diagonal
        randomized: bool = True  # jitter sample positions in training
        eval_chunk_size: int = 160000  # rays per chunk in eval mode (<= 0: no chunking)
        # and at most this many ray samples per eval chunk (rays x samples per ray), so a 512-px
        # evaluation render at 512 samples per ray stays within a few GB on any machine (<= 0: no bound)
        eval_chunk_samples: int = 1 << 21
        grid_prune: bool = True  # skip empty cells of the occupancy grid
        prune_alpha_threshold: bool = True  # also skip invisible samples (transparent or occluded)
        return_comp_normal: bool = False  # composite normals in training too
        return_normal_perturb: bool = False  # normals at jittered points, for smoothness losses
        radius: float = 1.0  # scene box is [-radius, radius]^3
        occupancy_grid_resolution: Annotated[int, Range(1, why="cells per axis")] = 32
        occupancy_update_every: Annotated[int, Range(1, why="training steps")] = 16  # training steps between grid updates
        occupancy_threshold: float = 0.01  # step opacity below which a cell is empty
        backend: str = "auto"  # auto | torch | nerfacc
        # unbounded geometries only: intervals per ray behind the box (uniform in 1/t) and where they end
        num_samples_per_ray_outside: Annotated[int, Range(1)] = 32
        far_plane: float = 100.0

        def check_config(self, path: str) -> None:
            if self.far_plane <= math.sqrt(3.0) * self.radius:
                where = f"{path}." if path else ""
                raise ConfigError(
                    f"{where}far_plane must lie beyond the scene box (> sqrt(3) * {where}radius = "
                    f"{math.sqrt(3.0) * self.radius:.3g}), got {self.far_plane}."
                )

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        super().configure(geometry=geometry, material=material, background=background)
        if self.cfg.backend not in BACKENDS:
            raise ValueError(f"renderer.backend must be one of {', '.join(BACKENDS)}, got '{self.cfg.backend}'")
        if self.cfg.num_samples_per_ray < 1:
            raise ValueError(f"renderer.num_samples_per_ray must be at least 1, got {self.cfg.num_samples_per_ray}")
        if self.cfg.num_samples_per_ray_outside < 1 or self.cfg.far_plane <= math.sqrt(3.0) * self.cfg.radius:
            raise ValueError(
                "renderer.num_samples_per_ray_outside must be at least 1 and renderer.far_plane beyond the box "
                f"(> sqrt(3) * radius); got {self.cfg.num_samples_per_ray_outside} and {self.cfg.far_plane}"
            )
        if self.cfg.occupancy_update_every < 1:
            raise ValueError(
                f"renderer.occupancy_update_every must be at least 1, got {self.cfg.occupancy_update_every}"
            )
        r = self.cfg.radius
        self.occupancy = OccupancyGrid(torch.tensor([[-r, -r, -r], [r, r, r]]), self.cfg.occupancy_grid_resolution)
        self.render_step_size = math.sqrt(3.0) * 2.0 * r / self.cfg.num_samples_per_ray
        self._nerfacc_cache: dict[str, Any] = {}  # plain dict: never part of the state dict

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "NeRFVolumeRenderer":
        module = super()._apply(fn, *args, **kwargs)
        device = self.occupancy.bbox.device
        if self.cfg.backend != "torch" and backends.is_cuda_device(device):
            # loads nerfacc's compiled code now (a JIT build the first time), or fails now if
            # backend: nerfacc names a library that cannot run; auto reports the fallback
            choose_backend(self.cfg.backend, "nerfacc", device, part=PART)
        return module

    # ------------------------------------------------------------------ training hooks
    def update_step(self, global_step: int) -> None:
        if self.training and self.cfg.grid_prune and global_step % self.cfg.occupancy_update_every == 0:
            self.occupancy.update(
                global_step,
                self.geometry.forward_density,
                self.render_step_size,
                occ_thre=self.cfg.occupancy_threshold,
                ema_decay=OCCUPANCY_EMA_DECAY,
                warmup_steps=OCCUPANCY_WARMUP_STEPS,
            )

    # ------------------------------------------------------------------ rendering
    def forward(
        self,
        rays_o: Float[Tensor, "B H W 3"],
        rays_d: Float[Tensor, "B H W 3"],
        light_positions: Optional[Float[Tensor, "B 3"]] = None,
        bg_color: Optional[Any] = None,
        **kwargs: Any,
    ) -> RenderOutput:
        """Render B images of H x W rays. Extra keyword arguments go to the material.

        ``light_positions`` defaults to the ray origins (a headlight). ``bg_color`` replaces
        the background part: anything broadcastable to [B, H, W, 3], or one colour per view [B, 3].
        """
        if rays_o.shape != rays_d.shape or rays_o.ndim != 4 or rays_o.shape[-1] != 3:
            raise ValueError(
                f"rays_o and rays_d must both be [B, H, W, 3]; got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}"
            )
        batch, height, width, _ = rays_o.shape
        rays_o_flat = rays_o.reshape(-1, 3)
        rays_d_flat = rays_d.reshape(-1, 3)
        if light_positions is None:
            lights_flat = rays_o_flat
        else:
            lights_flat = light_positions.reshape(batch, 1, 1, 3).expand(batch, height, width, 3).reshape(-1, 3)

        if self.training:
            per_ray, per_sample = self._render_rays(rays_o_flat, rays_d_flat, lights_flat, True, **kwargs)
        else:
            per_ray, per_sample = self._render_in_chunks(rays_o_flat, rays_d_flat, lights_flat, **kwargs), {}

        out: dict[str, Tensor] = {k: v.reshape(batch, height, width, -1) for k, v in per_ray.items()}
        comp_rgb_bg = self.background_color(rays_d, bg_color)
        out["comp_rgb_bg"] = comp_rgb_bg
        out["comp_rgb"] = out["comp_rgb_fg"] + comp_rgb_bg * (1.0 - out["opacity"])
        out.update(per_sample)
        return out  # type: ignore[return-value]

    def eval_chunk_rays(self, n_rays: int) -> int:
        """Rays per evaluation chunk: ``eval_chunk_size``, fewer where the sample bound asks for it."""
        chunk = self.cfg.eval_chunk_size if self.cfg.eval_chunk_size > 0 else n_rays
        if self.cfg.eval_chunk_samples > 0:
            outside = self.cfg.num_samples_per_ray_outside if getattr(self.geometry, "unbounded", False) else 0
            chunk = min(chunk, max(1, self.cfg.eval_chunk_samples // (self.cfg.num_samples_per_ray + outside)))
        return chunk

    def _render_in_chunks(self, rays_o: Tensor, rays_d: Tensor, lights: Tensor, **kwargs: Any) -> dict[str, Tensor]:
        chunk = self.eval_chunk_rays(rays_o.shape[0])
        pieces = [
            self._render_rays(rays_o[i : i + chunk], rays_d[i : i + chunk], lights[i : i + chunk], False, **kwargs)[0]
            for i in range(0, rays_o.shape[0], chunk)
        ]
        return {key: torch.cat([p[key] for p in pieces]) for key in pieces[0]}

    def _render_rays(
        self,
        rays_o: Float[Tensor, "N 3"],
        rays_d: Float[Tensor, "N 3"],
        lights: Float[Tensor, "N 3"],
        keep_samples: bool,
        **kwargs: Any,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-ray composites [N, C], and (if ``keep_samples``) packed per-sample values [S, C]."""
        n_rays = rays_o.shape[0]
        backend = choose_backend(self.cfg.backend, "nerfacc", rays_o.device, part=PART)
        samples = self._sample(rays_o, rays_d, backend)
        if getattr(self.geometry, "unbounded", False):
            samples = packed.concat_behind(samples, self._samples_beyond_box(rays_o, rays_d))
        ray_indices = samples.ray_indices
        positions = samples.points(rays_o, rays_d)
        t_dirs = rays_d[ray_indices]
        t_points = samples.t_mids[:, None]
        need_normal = bool(self.material.requires_normal or self.cfg.return_comp_normal)

        if ray_indices.numel() > 0:
            geo_out = self.geometry(positions, output_normal=need_normal)
            rgb = self.material(
                features=geo_out["features"],
                viewdirs=t_dirs,
                positions=positions,
                light_positions=lights[ray_indices],
                shading_normal=geo_out.get("normal"),
                **kwargs,
            )
            density = geo_out["density"]
            normal = geo_out.get("normal")
        else:  # nothing to shade: skip the parts (some accelerated networks reject empty batches)
            rgb = rays_o.new_zeros(0, 3)
            density = rays_o.new_zeros(0, 1)
            normal = rays_o.new_zeros(0, 3) if need_normal else None  # same keys in every eval chunk

        weights = self._weights(samples, density[:, 0], n_rays, backend)
        accumulate = self._accumulator(ray_indices, n_rays, backend)
        opacity = accumulate(weights, None)
        depth = accumulate(weights, t_points)
        per_ray = {
            "comp_rgb_fg": accumulate(weights, rgb),
            "opacity": opacity,
            "depth": depth,
            "z_variance": accumulate(weights, (t_points - depth[ray_indices]) ** 2),
        }
        if normal is not None and (self.cfg.return_comp_normal or not self.training):
            comp_normal = F.normalize(accumulate(weights, normal), dim=-1)
            per_ray["comp_normal"] = (comp_normal + 1.0) / 2.0 * opacity  # [0, 1], blended onto black

        per_sample: dict[str, Tensor] = {}
        if keep_samples:
            per_sample = {
                "weights": weights[:, None],
                "t_points": t_points,
                "t_intervals": (samples.t_ends - samples.t_starts)[:, None],
                "t_dirs": t_dirs,
                "ray_indices": ray_indices,
                "points": positions,
                "density": density,
            }
            if normal is not None:
                per_sample["normal"] = normal
            if self.cfg.return_normal_perturb and ray_indices.numel() > 0:
                jittered = positions + torch.randn_like(positions) * NORMAL_PERTURB_STD
                per_sample["normal_perturb"] = self.geometry(jittered, output_normal=True)["normal"]
        return per_ray, per_sample

    # ------------------------------------------------------------------ sampling
    def _density_for_pruning(self) -> Optional[Callable[[Tensor], Tensor]]:
        if self.cfg.grid_prune and self.cfg.prune_alpha_threshold:
            return self.geometry.forward_density
        return None

    def _sample(self, rays_o: Tensor, rays_d: Tensor, backend: str) -> PackedSamples:
        randomized = self.cfg.randomized and self.training
        if backend == "nerfacc":
            return self._sample_nerfacc(rays_o, rays_d, randomized)
        if not self.cfg.grid_prune:
            return march_rays(rays_o, rays_d, self.occupancy.bbox, self.render_step_size, randomized=randomized)
        return self.occupancy.sample(
            rays_o,
            rays_d,
            self.render_step_size,
            randomized=randomized,
            density_fn=self._density_for_pruning(),
            alpha_thre=PRUNE_ALPHA_THRESHOLD,
            early_stop_eps=EARLY_STOP_EPS,
        )

    def _samples_beyond_box(self, rays_o: Tensor, rays_d: Tensor) -> PackedSamples:
        """``num_samples_per_ray_outside`` intervals per ray from where it leaves the box to
        ``far_plane``, evenly spaced in disparity (what scene contraction resolves equally well);
        edges jittered by up to half an interval in training."""
        n_rays, k = rays_o.shape[0], self.cfg.num_samples_per_ray_outside
        _, t_exit = ray_box_intersection(rays_o, rays_d, self.occupancy.bbox)
        t_start = t_exit.clamp(min=self.render_step_size, max=self.cfg.far_plane * 0.5)  # a miss starts at the camera
        s = torch.linspace(0.0, 1.0, k + 1, device=rays_o.device).expand(n_rays, k + 1)
        if self.cfg.randomized and self.training:
            jitter = (torch.rand(n_rays, k - 1, device=rays_o.device) - 0.5) / k
            s = torch.cat([s[:, :1], s[:, 1:-1] + jitter, s[:, -1:]], dim=1)
        t = 1.0 / ((1.0 - s) / t_start[:, None] + s / self.cfg.far_plane)  # [N, k+1] edges
        ray_indices = torch.arange(n_rays, device=rays_o.device).repeat_interleave(k)
        return PackedSamples(ray_indices, t[:, :-1].reshape(-1), t[:, 1:].reshape(-1))

    def _sample_nerfacc(self, rays_o: Tensor, rays_d: Tensor, randomized: bool) -> PackedSamples:
        estimator = self._nerfacc_estimator(rays_o.device)
        density_fn = self._density_for_pruning()
        sigma_fn = None
        if density_fn is not None:

            def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
                t_mid = (t_starts + t_ends)[:, None] / 2.0
                # NaN as opaque, as in the built-in sampler: a broken field must reach the render
                return nan_as_opaque(density_fn(rays_o[ray_indices] + rays_d[ray_indices] * t_mid)[:, 0])

        with torch.no_grad():
            ray_indices, t_starts, t_ends = estimator.sampling(
                rays_o,
                rays_d,
                sigma_fn=sigma_fn,
                near_plane=0.0,
                far_plane=1e10,
                render_step_size=self.render_step_size,
                alpha_thre=PRUNE_ALPHA_THRESHOLD if sigma_fn is not None else 0.0,
                early_stop_eps=EARLY_STOP_EPS if sigma_fn is not None else 0.0,
                stratified=randomized,
                cone_angle=0.0,
            )
        return PackedSamples(ray_indices.long(), t_starts, t_ends)

    def _nerfacc_estimator(self, device: torch.device) -> Any:
        """nerfacc's OccGridEstimator mirroring the built-in grid (which stays the saved state)."""
        nerfacc = optional_import("nerfacc")
        estimator = self._nerfacc_cache.get("estimator")
        if estimator is None or estimator.binaries.device != device:
            estimator = nerfacc.OccGridEstimator(
                roi_aabb=self.occupancy.bbox.reshape(-1).tolist(),
                resolution=self.occupancy.resolution,
                levels=1,
            ).to(device)
            self._nerfacc_cache["estimator"] = estimator
        with torch.no_grad():
            if self.cfg.grid_prune:
                estimator.binaries.copy_(self.occupancy.occupied[None])
            else:
                estimator.binaries.fill_(True)
            estimator.occs.copy_(self.occupancy.cell_alphas(self.render_step_size))
        return estimator

    # ------------------------------------------------------------------ compositing
    @staticmethod
    def _weights(samples: PackedSamples, sigmas: Tensor, n_rays: int, backend: str) -> Tensor:
        if backend == "nerfacc":
            weights, _, _ = optional_import("nerfacc").render_weight_from_density(
                samples.t_starts, samples.t_ends, sigmas, ray_indices=samples.ray_indices, n_rays=n_rays
            )
            return weights
        weights, _, _ = packed.render_weights_from_density(
            samples.t_starts, samples.t_ends, sigmas, samples.ray_indices, n_rays
        )
        return weights

    @staticmethod
    def _accumulator(ray_indices: Tensor, n_rays: int, backend: str) -> Callable[[Tensor, Optional[Tensor]], Tensor]:
        if backend == "nerfacc":
            accumulate_along_rays = optional_import("nerfacc").accumulate_along_rays
            return lambda weights, values: accumulate_along_rays(
                weights, values, ray_indices=ray_indices, n_rays=n_rays
            )
        return lambda weights, values: packed.composite(weights, values, ray_indices, n_rays)
