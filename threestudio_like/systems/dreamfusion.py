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
        guidance_out = self.guidance(
            out["comp_rgb"],
            self.prompt_utils,
            elevation=batch["elevation"],
            azimuth=batch["azimuth"],
            camera_distances=batch["camera_distances"],
        )
        losses = {k: v for k, v in guidance_out.items() if k.startswith("loss_")}
        losses.update(self.regularisers(out))
        for key in ("min_step", "max_step", "grad_norm", "grad_nonfinite"):
            if key in guidance_out:
                self.log(f"train/{key}", float(guidance_out[key]))
        return self.weighted_loss(losses)

    def extra_loss_names(self) -> list[str]:
        return ["sds", "sds_img"]  # sds_img only with guidance.use_img_loss


