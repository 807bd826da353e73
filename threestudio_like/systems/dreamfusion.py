"""DreamFusion: a NeRF optimised by score distillation sampling (SDS)."""

from __future__ import annotations

from dataclasses import dataclass

from threestudio_like.registry import register
from threestudio_like.systems.base import BaseLift3DSystem
from threestudio_like.utils.typing import CameraBatch, Tensor


@register("dreamfusion-system")
class DreamFusion(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        pass

    def training_step(self, batch: CameraBatch, batch_idx: int) -> Tensor:
        out = self(batch)
        return self.guided_loss(out, batch, out["comp_rgb"])

    def extra_loss_names(self) -> list[str]:
        return ["sds", "sds_img"]  # sds_img only with guidance.use_img_loss


