"""Patch rendering for full-image losses at a fraction of the cost (threestudio's ``patch-renderer``).

In training, a view larger than ``patch_size`` is rendered twice: whole at 1 / ``global_downsample``
resolution, upsampled, and one random ``patch_size`` square at full resolution pasted over it.
Losses on the image then see full detail in the patch and the whole picture coarsely. Views no
larger than the patch (random-ray batches, small patches from the data module) and every
evaluation render go straight to the base renderer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Optional

import torch
import torch.nn.functional as F

from threestudio_like.config import Range
from threestudio_like.registry import find, register
from threestudio_like.renderers.base import BaseRenderer
from threestudio_like.utils.typing import Float, RenderOutput, Tensor


def _resize(image: Float[Tensor, "B h w C"], size: tuple[int, int]) -> Float[Tensor, "B H W C"]:
    return F.interpolate(image.permute(0, 3, 1, 2), size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


@register("patch-renderer")
class PatchRenderer(BaseRenderer):
    @dataclass
    class Config(BaseRenderer.Config):
        patch_size: Annotated[int, Range(1, why="pixels")] = 128
        base_renderer_type: str = "nerf-volume-renderer"
        base_renderer: dict = field(default_factory=dict)
        global_detach: bool = False  # no gradient through the coarse whole-image render
        global_downsample: Annotated[int, Range(1)] = 4

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        super().configure(geometry=geometry, material=material, background=background)
        if self.cfg.patch_size < 1 or self.cfg.global_downsample < 1:
            raise ValueError(
                f"renderer.patch_size and renderer.global_downsample must be positive, got {self.cfg.patch_size} and {self.cfg.global_downsample}"
            )
        self.base_renderer = find(self.cfg.base_renderer_type)(self.cfg.base_renderer, geometry=geometry, material=material, background=background)

    def update_step(self, global_step: int) -> None:
        self.base_renderer.update_step(global_step)

    def forward(
        self,
        rays_o: Float[Tensor, "B H W 3"],
        rays_d: Float[Tensor, "B H W 3"],
        light_positions: Optional[Float[Tensor, "B 3"]] = None,
        bg_color: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> RenderOutput:
        B, H, W, _ = rays_o.shape
        P = self.cfg.patch_size
        if not self.training or (H <= P and W <= P):
            return self.base_renderer(rays_o, rays_d, light_positions, bg_color, **kwargs)
        d = self.cfg.global_downsample
        coarse = (max(H // d, 1), max(W // d, 1))
        out = self.base_renderer(_resize(rays_o, coarse), _resize(rays_d, coarse), light_positions, bg_color, **kwargs)
        ph, pw = min(P, H), min(P, W)
        top = int(torch.randint(0, H - ph + 1, (1,)))
        left = int(torch.randint(0, W - pw + 1, (1,)))
        window = (slice(None), slice(top, top + ph), slice(left, left + pw))
        patch = self.base_renderer(rays_o[window], rays_d[window], light_positions, bg_color, **kwargs)
        inside = torch.zeros(1, H, W, 1, dtype=torch.bool, device=rays_o.device)
        inside[window] = True
        result: dict[str, Any] = dict(out)  # per-sample outputs (weights, normals, ...) of the coarse render
        for key, value in patch.items():
            if not (torch.is_tensor(value) and value.ndim == 4 and value.shape[:3] == (B, ph, pw)):
                continue
            full = _resize(out[key], (H, W))
            full = full.detach() if self.cfg.global_detach else full
            pasted = F.pad(value.permute(0, 3, 1, 2), (left, W - left - pw, top, H - top - ph)).permute(0, 2, 3, 1)
            result[key] = torch.where(inside, pasted, full)  # no in-place write into a tensor autograd needs
        return result  # type: ignore[return-value]
