"""MVDream: a NeRF optimised by multi-view score distillation.

The training step is DreamFusion's: render, guidance on the renders, shared regularisers. What
makes it MVDream is config: each batch is whole groups of views
(``mvdream-random-multiview-camera-datamodule``) and the guidance
(``multiview-diffusion-guidance``) judges every group jointly. Regularisers (the shading
recipe's ``lambda_orient``), particles, saving and export are the base system's.
"""

from __future__ import annotations

from dataclasses import dataclass

from threestudio_like.registry import register
from threestudio_like.systems.dreamfusion import DreamFusion


@register("mvdream-system")
class MVDream(DreamFusion):
    @dataclass
    class Config(DreamFusion.Config):
        pass

    def extra_loss_names(self) -> list[str]:
        return ["sds"]  # the x0-reconstruction loss is reported as loss_sds, as in the extension
