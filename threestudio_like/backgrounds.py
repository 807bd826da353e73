"""Backgrounds: ray direction -> colour behind the volume, ``forward(dirs [B,H,W,3]) -> [B,H,W,C]``.

``random_aug`` replaces the background by a random colour per view (with probability
``random_aug_prob`` per call) so the guidance cannot hide content in the background.
Random draws use torch's global RNG so a resumed run repeats them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn

from threestudio_like.registry import register
from threestudio_like.representations.encodings import get_encoding
from threestudio_like.representations.networks import get_activation, get_mlp
from threestudio_like.utils.base import BaseModule
from threestudio_like.utils.typing import Float, Tensor


class BaseBackground(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        n_output_dims: int = 3
        random_aug: bool = False
        random_aug_prob: float = 0.5
        share_aug_bg: bool = False  # one random colour for the whole batch instead of one per view

    cfg: Config

    def augment(self, color: Float[Tensor, "B H W C"]) -> Float[Tensor, "B H W C"]:
        """In training, with probability ``random_aug_prob``, a random solid colour instead of ``color``."""
        if not (self.training and self.cfg.random_aug and torch.rand(()).item() < self.cfg.random_aug_prob):
            return color
        batch, n = color.shape[0], color.shape[-1]
        random = torch.rand(1 if self.cfg.share_aug_bg else batch, 1, 1, n).to(color)
        # color * 0 keeps the parameters in the graph (zero gradients rather than none)
        return color * 0 + random.expand_as(color)


@register("solid-color-background", "solid-color")
class SolidColorBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        color: tuple[float, ...] = (1.0, 1.0, 1.0)
        learned: bool = False

    cfg: Config

    def configure(self, **kwargs: Any) -> None:
        if len(self.cfg.color) != self.cfg.n_output_dims:
            raise ValueError(
                f"background.color has {len(self.cfg.color)} values but n_output_dims is {self.cfg.n_output_dims}"
            )
        color = torch.tensor(self.cfg.color, dtype=torch.float32)
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:  # not persistent: the config is the source of truth
            self.register_buffer("env_color", color, persistent=False)

    def forward(self, dirs: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B H W C"]:
        color = dirs.new_ones(*dirs.shape[:-1], self.cfg.n_output_dims) * self.env_color.to(dirs.dtype)
        return self.augment(color)


@register("neural-environment-map-background", "neural-environment-map")
class NeuralEnvironmentMapBackground(BaseBackground):
    """A small MLP on an encoding of the ray direction (by default spherical harmonics)."""

    @dataclass
    class Config(BaseBackground.Config):
        color_activation: str = "sigmoid"
        dir_encoding_config: dict = field(default_factory=lambda: {"otype": "SphericalHarmonics", "degree": 3})
        mlp_network_config: dict = field(
            default_factory=lambda: {"otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 16, "n_hidden_layers": 2}
        )
        eval_color: Optional[list[float]] = None  # solid colour used in eval mode instead of the network

    cfg: Config

    def configure(self, **kwargs: Any) -> None:
        if self.cfg.eval_color is not None and len(self.cfg.eval_color) != self.cfg.n_output_dims:
            raise ValueError(
                f"background.eval_color has {len(self.cfg.eval_color)} values "
                f"but n_output_dims is {self.cfg.n_output_dims}"
            )
        self.encoding = get_encoding(3, self.cfg.dir_encoding_config)
        self.network = get_mlp(self.encoding.n_output_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)
        self.color_activation = get_activation(self.cfg.color_activation)

    def forward(self, dirs: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B H W C"]:
        if not self.training and self.cfg.eval_color is not None:
            eval_color = torch.tensor(self.cfg.eval_color, dtype=dirs.dtype, device=dirs.device)
            return dirs.new_ones(*dirs.shape[:-1], self.cfg.n_output_dims) * eval_color
        unit = (dirs.reshape(-1, 3) + 1.0) / 2.0  # encodings take inputs in [0, 1], like tcnn
        color = self.network(self.encoding(unit)).reshape(*dirs.shape[:-1], self.cfg.n_output_dims)
        return self.augment(self.color_activation(color).to(dirs.dtype))
