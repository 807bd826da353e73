"""Materials: per-sample features (+ normals and a point light) -> colour.

``diffuse-with-point-light`` is DreamFusion's shading model: Lambertian albedo lit by an
ambient term and one point light, with random shading augmentations in training (plain
albedo, textureless, diffuse) that make score distillation recover geometry rather than
paint it. ``no-material`` turns features straight into colour.

Random choices use torch's global RNG so a resumed run repeats them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from threestudio_like.registry import register
from threestudio_like.representations.networks import get_activation, get_mlp
from threestudio_like.utils.base import BaseModule
from threestudio_like.utils.typing import Float, Tensor

SHADINGS = ("albedo", "textureless", "diffuse")


class BaseMaterial(BaseModule):
    """``forward(features, viewdirs, positions, light_positions, shading_normal=None, **kwargs) -> rgb``."""

    requires_normal: bool = False

    def export(self, features: Float[Tensor, "... F"], **kwargs: Any) -> dict[str, Tensor]:
        """Textures to bake into an exported mesh."""
        raise NotImplementedError


@register("diffuse-with-point-light-material", "diffuse-with-point-light")
class DiffuseWithPointLightMaterial(BaseMaterial):
    @dataclass
    class Config(BaseModule.Config):
        ambient_light_color: tuple[float, float, float] = (0.1, 0.1, 0.1)
        diffuse_light_color: tuple[float, float, float] = (0.9, 0.9, 0.9)
        ambient_only_steps: int = 1000  # training steps rendered with albedo only (no point light)
        diffuse_prob: float = 0.75  # afterwards: chance of shading with the light (else albedo only)
        textureless_prob: float = 0.5  # chance that a lit render drops the albedo (white material)
        albedo_activation: str = "sigmoid"
        soft_shading: bool = False  # random ambient / diffuse split in training

    cfg: Config
    requires_normal = True

    def configure(self, **kwargs: Any) -> None:
        # buffers follow the module's device; not persistent, the config is their source of truth
        for name in ("ambient_light_color", "diffuse_light_color"):
            color = torch.tensor(getattr(self.cfg, name), dtype=torch.float32)
            self.register_buffer(name, color, persistent=False)
        self.albedo_activation = get_activation(self.cfg.albedo_activation)
        self.ambient_only = self.cfg.ambient_only_steps > 0

    def update_step(self, global_step: int) -> None:
        self.ambient_only = global_step < self.cfg.ambient_only_steps

    def forward(
        self,
        features: Float[Tensor, "... F"],
        viewdirs: Optional[Float[Tensor, "... 3"]] = None,
        positions: Optional[Float[Tensor, "... 3"]] = None,
        light_positions: Optional[Float[Tensor, "... 3"]] = None,
        shading_normal: Optional[Float[Tensor, "... 3"]] = None,
        ambient_ratio: Optional[float] = None,
        shading: Optional[str] = None,
        **kwargs: Any,
    ) -> Float[Tensor, "... 3"]:
        """rgb = albedo * (ambient + diffuse * max(n . l, 0)).

        ``ambient_ratio`` a sets ambient = a and diffuse = 1 - a (white light);
        ``shading`` forces one of albedo | textureless | diffuse (else drawn in training).
        """
        albedo = self.albedo_activation(features[..., :3])
        shading = shading or self._draw_shading()
        if shading not in SHADINGS:
            raise ValueError(f"unknown shading '{shading}': use one of {', '.join(SHADINGS)}")
        if shading == "albedo":
            return albedo
        if shading_normal is None or positions is None or light_positions is None:
            raise ValueError(
                "diffuse-with-point-light needs positions, light_positions and shading_normal to shade; "
                "the geometry must output normals (the renderer asks for them when material.requires_normal)"
            )
        ambient, diffuse_color = self._light_colors(ambient_ratio, features)
        light_dirs = F.normalize(light_positions - positions, dim=-1)
        n_dot_l = (shading_normal * light_dirs).sum(dim=-1, keepdim=True)
        textureless = ambient + n_dot_l.clamp_min(0.0) * diffuse_color  # white material under the lights
        if shading == "textureless":
            return textureless
        return albedo.clamp(0.0, 1.0) * textureless

    def _light_colors(self, ambient_ratio: Optional[float], like: Tensor) -> tuple[Tensor, Tensor]:
        ones = torch.ones(3, dtype=like.dtype, device=like.device)
        if ambient_ratio is not None:
            return ambient_ratio * ones, (1.0 - ambient_ratio) * ones
        if self.training and self.cfg.soft_shading:
            diffuse = torch.rand(()).item()
            return (1.0 - diffuse) * ones, diffuse * ones
        return self.ambient_light_color.to(like.dtype), self.diffuse_light_color.to(like.dtype)

    def _draw_shading(self) -> str:
        """One shading for the whole batch: eval is always diffuse."""
        if not self.training:
            return "diffuse"
        if self.ambient_only or torch.rand(()).item() >= self.cfg.diffuse_prob:
            return "albedo"
        return "textureless" if torch.rand(()).item() < self.cfg.textureless_prob else "diffuse"

    def export(self, features: Float[Tensor, "... F"], **kwargs: Any) -> dict[str, Tensor]:
        return {"albedo": self.albedo_activation(features[..., :3]).clamp(0.0, 1.0)}


@register("no-material")
class NoMaterial(BaseMaterial):
    """Colour = activation(features), or activation(MLP(features)) when a network is configured."""

    @dataclass
    class Config(BaseModule.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        input_feature_dims: Optional[int] = None
        mlp_network_config: Optional[dict] = None
        requires_normal: bool = False

    cfg: Config

    def configure(self, **kwargs: Any) -> None:
        self.requires_normal = self.cfg.requires_normal
        self.color_activation = get_activation(self.cfg.color_activation)
        self.network = None
        if self.cfg.input_feature_dims is not None and self.cfg.mlp_network_config is not None:
            self.network = get_mlp(self.cfg.input_feature_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)

    def forward(self, features: Float[Tensor, "... F"], **kwargs: Any) -> Float[Tensor, "... C"]:
        if self.network is None:
            if features.shape[-1] != self.cfg.n_output_dims:
                raise ValueError(
                    f"no-material got {features.shape[-1]} feature channels but outputs {self.cfg.n_output_dims}: "
                    "set the geometry's n_feature_dims to match, or give material.input_feature_dims and "
                    "material.mlp_network_config to map features through a network"
                )
            return self.color_activation(features)
        flat = self.network(features.reshape(-1, features.shape[-1]))
        return self.color_activation(flat.reshape(*features.shape[:-1], self.cfg.n_output_dims))

    def export(self, features: Float[Tensor, "... F"], **kwargs: Any) -> dict[str, Tensor]:
        color = self(features, **kwargs).clamp(0.0, 1.0)
        if color.shape[-1] < 3:
            raise ValueError(f"no-material outputs {color.shape[-1]} channels; exporting an albedo needs at least 3")
        return {"albedo": color[..., :3]}
