"""MLPs named by tcnn ``otype`` (VanillaMLP, FullyFusedMLP, CutlassMLP) and the activation table.

``get_activation`` is the one place activation names are resolved, for MLP configs
(tcnn's names: ReLU, Sigmoid, ...) and for part configs (threestudio's: softplus, trunc_exp,
scale_-11_01, ...); names are matched case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from threestudio_like.config import ConfigError
from threestudio_like.registry import close_matches
from threestudio_like.representations.otype import register_otype, split_otype
from threestudio_like.utils.backends import choose_backend, optional_import
from threestudio_like.utils.base import BaseModule
from threestudio_like.utils.typing import Float, Tensor

# the feature / density heads of threestudio's geometries
DEFAULT_MLP = {
    "otype": "VanillaMLP",
    "activation": "ReLU",
    "output_activation": "none",
    "n_neurons": 64,
    "n_hidden_layers": 1,
}


# --------------------------------------------------------------------------- activations
class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(clamp(x, -15, 15)): density stays unbounded while
    one large pre-activation cannot blow up the update (Instant-NGP's trick)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(-15.0, 15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


def linear_to_srgb(x: Tensor) -> Tensor:
    """The sRGB transfer curve, clamped to [0, 1]."""
    curve = torch.pow(torch.clamp(x, min=0.0031308), 1.0 / 2.4) * 1.055 - 0.055
    return torch.where(x > 0.0031308, curve, 12.92 * x).clamp(0.0, 1.0)


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda x: x,
    "identity": lambda x: x,
    "relu": F.relu,
    "leakyrelu": lambda x: F.leaky_relu(x, 0.01),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "sine": torch.sin,
    "softplus": F.softplus,
    "exp": torch.exp,
    "exponential": torch.exp,
    "trunc_exp": trunc_exp,
    "shifted_exp": lambda x: torch.exp(x - 1.0),
    "shifted_trunc_exp": lambda x: trunc_exp(x - 1.0),
    "shifted_softplus": lambda x: F.softplus(x - 1.0),
    "scale_-11_01": lambda x: x * 0.5 + 0.5,
    "lin2srgb": linear_to_srgb,
}


def get_activation(name: str | None) -> Callable[[Tensor], Tensor]:
    """An elementwise activation by name; ``None`` or ``"none"`` is the identity."""
    if name is None:
        return _ACTIVATIONS["none"]
    key = str(name).lower()
    if key in _ACTIVATIONS:
        return _ACTIVATIONS[key]
    matches = close_matches(key, sorted(_ACTIVATIONS))
    hint = f" Did you mean '{matches[0]}'?" if matches else ""
    raise ConfigError(f"Unknown activation '{name}'.{hint} Known: {', '.join(sorted(_ACTIVATIONS))}.")


class Activation(nn.Module):
    """``get_activation`` as a module, so it shows in ``print(model)``."""

    def __init__(self, name: str | None) -> None:
        super().__init__()
        self.name = name
        self.fn = get_activation(name)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return str(self.name)


# --------------------------------------------------------------------------- MLP
@register_otype("network", "VanillaMLP", "FullyFusedMLP", "CutlassMLP")
class VanillaMLP(BaseModule):
    """``n_hidden_layers`` hidden layers of ``n_neurons`` without biases (as tcnn and threestudio).

    ``n_hidden_layers: 1`` means input -> hidden -> output (two weight matrices). The torch
    path's layers are ``layers.{0,2,...}.weight`` like threestudio's VanillaMLP. With
    ``backend: auto`` on a machine where CUDA and tinycudann are available at construction, the
    network is a ``tcnn.Network`` instead (its own flat ``tcnn_network.params``; checkpoints then
    only load where tinycudann is available).
    """

    @dataclass
    class Config(BaseModule.Config):
        n_neurons: int = 64
        n_hidden_layers: int = 1
        activation: str = "ReLU"
        output_activation: str = "none"
        backend: str = "auto"  # auto | torch | tinycudann

    cfg: Config

    def configure(self, n_input_dims: int = 3, n_output_dims: int = 1, **kwargs: Any) -> None:
        cfg = self.cfg
        if cfg.n_neurons < 1 or cfg.n_hidden_layers < 0:
            raise ConfigError(
                f"an MLP needs n_neurons >= 1 and n_hidden_layers >= 0, got {cfg.n_neurons} and {cfg.n_hidden_layers}"
            )
        self.n_input_dims, self.n_output_dims = n_input_dims, n_output_dims
        get_activation(cfg.activation)  # validate names now, not at the first forward
        self.output_activation = Activation(cfg.output_activation)
        # the backend is fixed at construction: the two paths hold differently shaped parameters
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.backend = choose_backend(cfg.backend, "tinycudann", device)
        if self.backend == "tinycudann":
            tcnn = optional_import("tinycudann")
            self.tcnn_network = tcnn.Network(n_input_dims, n_output_dims, self.tcnn_config())
        else:
            widths = [n_input_dims] + [cfg.n_neurons] * cfg.n_hidden_layers + [n_output_dims]
            layers: list[nn.Module] = []
            for i, (w_in, w_out) in enumerate(zip(widths, widths[1:])):
                layers.append(nn.Linear(w_in, w_out, bias=False))
                if i < len(widths) - 2:
                    layers.append(Activation(cfg.activation))
            self.layers = nn.Sequential(*layers)

    def tcnn_config(self) -> dict:
        cfg = self.cfg
        # tcnn's fully fused kernels exist for these widths (and >= 1 hidden layer) only; else CUTLASS
        fused = cfg.n_neurons in (16, 32, 64, 128) and cfg.n_hidden_layers >= 1
        otype = "FullyFusedMLP" if fused else "CutlassMLP"
        return {
            "otype": otype,
            "activation": cfg.activation,
            "output_activation": "None",  # applied here, so every name in get_activation works
            "n_neurons": cfg.n_neurons,
            "n_hidden_layers": cfg.n_hidden_layers,
        }

    def forward(self, x: Float[Tensor, "*N Di"]) -> Float[Tensor, "*N Do"]:
        if x.shape[-1] != self.n_input_dims:
            raise ValueError(f"MLP expects inputs [..., {self.n_input_dims}], got shape {tuple(x.shape)}")
        if self.backend == "tinycudann":
            batch = x.shape[:-1]
            out = self.tcnn_network(x.reshape(-1, self.n_input_dims)).float().reshape(*batch, self.n_output_dims)
        else:
            out = self.layers(x)
        return self.output_activation(out)


def get_mlp(n_input_dims: int, n_output_dims: int, config: Any) -> VanillaMLP:
    """Build an MLP from a tcnn-style mapping ``{otype: VanillaMLP, n_neurons: 64, ...}``."""
    cls, options = split_otype("network", config, "network")
    return cls(options, n_input_dims=n_input_dims, n_output_dims=n_output_dims)
