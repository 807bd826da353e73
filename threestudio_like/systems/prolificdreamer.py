"""ProlificDreamer: variational score distillation in three stages, driven by config.

``stage: coarse`` optimises a NeRF with VSD (``stable-diffusion-vsd-guidance``); ``geometry``
refines a DMTet mesh converted from it with SDS on the rendered normals (no colour is rendered);
``texture`` fixes that mesh and learns a new texture with VSD. What differs between the stages
beyond the image the guidance sees is config: geometry, renderer, guidance and loss weights.
Regularisers and particles (``system.n_particles``) come from the base system.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from threestudio_like.config import ConfigError
from threestudio_like.registry import register
from threestudio_like.systems.base import BaseLift3DSystem
from threestudio_like.systems.magic3d import MESH_RENDERERS
from threestudio_like.utils.typing import CameraBatch, RenderOutput, Tensor


@register("prolificdreamer-system")
class ProlificDreamer(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        stage: Literal["coarse", "geometry", "texture"] = "coarse"

    cfg: Config

    def configure(self) -> None:
        mesh_renderer = self.cfg.renderer_type in MESH_RENDERERS
        if self.cfg.stage != "coarse" and not mesh_renderer:
            raise ConfigError(
                f"system.stage is {self.cfg.stage!r}, a mesh stage, but system.renderer_type is {self.cfg.renderer_type!r}; "
                "use renderer_type: nvdiff-rasterizer (or stage: coarse for a NeRF)."
            )

    def forward(self, batch: CameraBatch, **render_options: Any) -> RenderOutput:
        if self.cfg.stage == "geometry":  # geometry only: the material has no colour to give
            render_options.setdefault("render_rgb", False)
        return super().forward(batch, **render_options)

    def training_step(self, batch: CameraBatch, batch_idx: int) -> Tensor:
        out = self(batch)
        image = out["comp_normal"] if self.cfg.stage == "geometry" else out["comp_rgb"]
        return self.guided_loss(out, batch, image)

    def extra_loss_names(self) -> list[str]:
        return ["vsd", "lora", "sds", "sds_img"]
