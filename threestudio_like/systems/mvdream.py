"""MVDream: a NeRF optimised by multi-view score distillation.

Each training batch is whole groups of views (``mvdream-random-multiview-camera-datamodule``)
and the guidance (``multiview-diffusion-guidance``) judges every group jointly. Everything else
(regularisers such as the shading recipe's ``lambda_orient``, particles, saving, export) is the
base system's, so the recipe is the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from threestudio_like.registry import register
from threestudio_like.systems.base import BaseLift3DSystem
from threestudio_like.utils.typing import CameraBatch, Tensor


@register("mvdream-system")
class MVDream(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        pass

    def training_step(self, batch: CameraBatch, batch_idx: int) -> Tensor:
        out = self(batch)
        return self.guided_loss(out, batch, out["comp_rgb"])

    def extra_loss_names(self) -> list[str]:
        return ["sds"]
