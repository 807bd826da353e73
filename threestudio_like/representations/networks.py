"""MLPs named by tcnn ``otype`` (VanillaMLP, FullyFusedMLP, CutlassMLP) and the activation table.

``get_activation`` is the one place activation names are resolved, for MLP configs
(tcnn's names: ReLU, Sigmoid, ...) and for part configs (threestudio's: softplus, trunc_exp,
scale_-11_01, ...); names are matched case-insensitively.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from threestudio_like.config import ConfigError
from threestudio_like.registry import did_you_mean
from threestudio_like.representations.otype import register_otype, split_otype
from threestudio_like.utils import backends
from threestudio_like.utils.backends import choose_backend
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


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ("cuda", "cpu", ...)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: one flag per device kind
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def trunc_exp(x: Tensor) -> Tensor:
    """``_TruncExp``; under autocast the input is cast to float32 and computed with autocast off
    (threestudio's ``custom_fwd(cast_inputs=torch.float32)``): an fp16 / bf16 exp of a density
    pre-activation near the clamp loses most of its digits, and so would its gradient."""
    device_type = x.device.type
    if autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            return _TruncExp.apply(x.float())
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
    hint = did_you_mean(key, sorted(_ACTIVATIONS))
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
_TCNN_ALIGNMENT = 16  # tcnn pads network inputs (with ones) and outputs to multiples of 16


def _next_multiple(n: int, m: int) -> int:
    return (n + m - 1) // m * m


@dataclass(frozen=True)
class MLPLayout:
    """tiny-cuda-nn's flat parameter vector of an MLP (``tcnn.Network``, Fully fused or CUTLASS).

    ``tcnn.Network`` wraps the MLP in an Identity encoding that pads the input to a multiple of
    16 with **ones** (so the padding columns of the first matrix act as a bias). The output is
    padded to a multiple of 16 rows (ignored); hidden layers are ``n_neurons`` wide. The vector
    holds the weight matrices in order, each row-major ``[fan_out, fan_in]`` (``y = W x``, the
    shape of a ``torch.nn.Linear`` weight): ``[n_neurons, in_pad]``, ``n_hidden_layers - 1`` times
    ``[n_neurons, n_neurons]``, ``[out_pad, n_neurons]``; with no hidden layer ``[out_pad, in_pad]``.
    """

    n_input_dims: int
    n_output_dims: int
    n_neurons: int
    n_hidden_layers: int

    @property
    def padded_input(self) -> int:
        return _next_multiple(self.n_input_dims, _TCNN_ALIGNMENT)

    @property
    def padded_output(self) -> int:
        return _next_multiple(self.n_output_dims, _TCNN_ALIGNMENT)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """``(rows, cols)`` of each weight matrix, first layer first."""
        fan_in = [self.padded_input] + [self.n_neurons] * self.n_hidden_layers
        fan_out = [self.n_neurons] * self.n_hidden_layers + [self.padded_output]
        return list(zip(fan_out, fan_in))

    @property
    def true_shapes(self) -> list[tuple[int, int]]:
        """The unpadded ``(rows, cols)``: the weights a plain bias-free MLP would have."""
        fan_in = [self.n_input_dims] + [self.n_neurons] * self.n_hidden_layers
        fan_out = [self.n_neurons] * self.n_hidden_layers + [self.n_output_dims]
        return list(zip(fan_out, fan_in))

    @property
    def n_params(self) -> int:
        return sum(rows * cols for rows, cols in self.shapes)

    def matrices(self, params: Float[Tensor, "P"]) -> list[Tensor]:
        """Views of ``params`` as the weight matrices ``[rows, cols]``."""
        out, offset = [], 0
        for rows, cols in self.shapes:
            out.append(params[offset : offset + rows * cols].view(rows, cols))
            offset += rows * cols
        return out

    def pack(self, weights: list[Tensor]) -> Float[Tensor, "P"]:
        """Unpadded ``[fan_out, fan_in]`` weights -> the flat vector, zeros in the padding (same function)."""
        if [tuple(w.shape) for w in weights] != self.true_shapes:
            raise ValueError(f"MLP weights {[tuple(w.shape) for w in weights]} do not match {self.true_shapes}")
        params = weights[0].new_zeros(self.n_params)
        for matrix, w in zip(self.matrices(params), weights):
            matrix[: w.shape[0], : w.shape[1]] = w
        return params


@register_otype("network", "VanillaMLP")
class VanillaMLP(BaseModule):
    """``n_hidden_layers`` hidden layers of ``n_neurons`` without biases (as tcnn and threestudio).

    ``n_hidden_layers: 1`` means input -> hidden -> output (two weight matrices). Every otype holds
    one flat ``params`` vector in tcnn's layout (:class:`MLPLayout`), so a checkpoint moves between
    otypes and machines with and without tinycudann; the torch path computes exactly tcnn's
    function (input padding of ones included), in float32 with autocast off (as threestudio's).

    ``VanillaMLP`` always runs in PyTorch, as threestudio's does: tiny-cuda-nn's MLPs compute in
    fp16 with a loss scale of their own, which under Lightning's ``16-mixed`` stacks on the
    GradScaler's. Its ``backend`` key is accepted (a geometry's ``backend`` fills it) and reported
    as not applying. The otypes that may run in tiny-cuda-nn are :class:`FullyFusedMLP` /
    ``CutlassMLP``. Checkpoints of earlier versions and threestudio's (``layers.{0,2,...}.weight``,
    ``tcnn_network.params``, ``network.params``) load too.
    """

    uses_tcnn: ClassVar[bool] = False  # whether this otype may run as a tcnn.Network

    @dataclass
    class Config(BaseModule.Config):
        n_neurons: int = 64
        n_hidden_layers: int = 1
        activation: str = "ReLU"
        output_activation: str = "none"
        backend: str = "auto"  # auto | torch | tinycudann

    cfg: Config

    def configure(
        self, n_input_dims: int = 3, n_output_dims: int = 1, double_backward: bool = False, **kwargs: Any
    ) -> None:
        cfg = self.cfg
        if cfg.n_neurons < 1 or cfg.n_hidden_layers < 0:
            raise ConfigError(
                f"an MLP needs n_neurons >= 1 and n_hidden_layers >= 0, got {cfg.n_neurons} and {cfg.n_hidden_layers}"
            )
        if cfg.backend not in ("auto", "torch", "tinycudann"):
            raise ConfigError(f"backend: {cfg.backend!r} is not one of auto, torch, tinycudann")
        if self.uses_tcnn and double_backward and cfg.backend == "tinycudann":
            raise ConfigError(
                "backend: tinycudann cannot serve this MLP: it needs second derivatives (normal_type: analytic) "
                "and tiny-cuda-nn's MLPs have none. Use backend: auto or torch for it."
            )
        if self.uses_tcnn and cfg.backend == "tinycudann" and backends.optional_import("tinycudann") is None:
            raise backends.unavailable_error("tinycudann", "it is not installed")  # now, not at the first forward
        self.n_input_dims, self.n_output_dims = n_input_dims, n_output_dims
        self.double_backward = double_backward
        self.layout = MLPLayout(n_input_dims, n_output_dims, cfg.n_neurons, cfg.n_hidden_layers)
        self.activation = Activation(cfg.activation)  # validates the names now, not at the first forward
        self.output_activation = Activation(cfg.output_activation)
        # nn.Linear's initialisation, drawn in the same order as the earlier per-layer modules
        weights = []
        for fan_out, fan_in in self.layout.true_shapes:
            w = torch.empty(fan_out, fan_in)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            weights.append(w)
        self.params = nn.Parameter(self.layout.pack(weights))
        self.__dict__["_tcnn_network"] = None  # built on the first CUDA call; not a submodule (one `params`)
        self.__dict__["_reported"] = set()  # the backends already reported (once each)

    def backend_for(self, device: torch.device | str) -> str:
        """``torch`` or ``tinycudann`` for inputs on ``device``."""
        if not self.uses_tcnn or (self.double_backward and self.cfg.backend == "auto"):
            return "torch"
        return choose_backend(self.cfg.backend, "tinycudann", device)

    def backend_reason(self, backend: str, device: torch.device | str) -> str:
        """Why ``backend`` serves inputs on ``device`` (for the backend report)."""
        if backend == "tinycudann":
            return f"tcnn {self.tcnn_config()['otype']}, fp16"
        if not self.uses_tcnn:
            return "otype VanillaMLP runs in PyTorch, as threestudio's (FullyFusedMLP / CutlassMLP for tiny-cuda-nn)"
        if self.double_backward and self.cfg.backend == "auto":
            return "needs second derivatives (normal_type: analytic), which tiny-cuda-nn's MLPs lack"
        if self.cfg.backend == "torch":
            return "backend: torch"
        if not backends.is_cuda_device(device):
            return f"inputs on {torch.device(device).type}, not CUDA"
        return "tinycudann is not installed"

    def _report(self, backend: str, device: torch.device) -> None:
        if backend not in self._reported:
            self._reported.add(backend)
            part = f"MLP {self.n_input_dims}->{self.n_output_dims}"
            backends.report_backend(part, backend, self.backend_reason(backend, device))

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
        backend = self.backend_for(x.device)
        self._report(backend, x.device)
        if backend == "tinycudann":
            batch = x.shape[:-1]
            out = self._tcnn_forward(x.reshape(-1, self.n_input_dims)).reshape(*batch, self.n_output_dims)
        else:
            out = self.forward_torch(x)
        return self.output_activation(out)

    def forward_torch(self, x: Float[Tensor, "*N Di"]) -> Float[Tensor, "*N Do"]:
        """The built-in path on the tcnn layout (differentiable to any order); float32 with autocast
        off under autocast, as threestudio's VanillaMLP."""
        device_type = x.device.type
        if autocast_enabled(device_type):
            with torch.autocast(device_type=device_type, enabled=False):
                return self.forward_torch(x.float())
        matrices = self.layout.matrices(self.params)
        matrices[-1] = matrices[-1][: self.n_output_dims]  # padded output rows are never read
        first = matrices[0]
        h = F.linear(x, first[:, : self.n_input_dims])
        if first.shape[1] > self.n_input_dims:  # tcnn's padding inputs are ones: their columns sum to a bias
            h = h + first[:, self.n_input_dims :].sum(dim=1).to(h.dtype)
        for weight in matrices[1:]:
            h = F.linear(self.activation(h), weight)
        return h

    def _tcnn_forward(self, x: Float[Tensor, "N Di"]) -> Float[Tensor, "N Do"]:
        network = self._tcnn_network
        if network is None:
            network = backends.optional_import("tinycudann").Network(self.n_input_dims, self.n_output_dims, self.tcnn_config())
            if network.params.numel() != self.params.numel():
                raise RuntimeError(
                    f"tcnn.Network has {network.params.numel()} parameters but this MLP has {self.params.numel()}; "
                    "this tinycudann version lays the network out differently. Set backend: torch."
                )
            self.__dict__["_tcnn_network"] = network
        network.params = self.params  # tcnn reads our fp32 vector (cast to its precision, differentiably)
        if x.shape[0] == 0:  # tcnn kernels reject empty batches
            return x.new_zeros(0, self.n_output_dims)
        return network(x.float().contiguous()).float()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # other names of the same flat vector: this package's earlier tcnn module and threestudio's
        # TCNNNetwork (`network.params`); tcnn keeps it in fp16, copied into our fp32 vector
        for name in ("tcnn_network.params", "network.params"):
            flat = state_dict.pop(prefix + name, None)
            if flat is not None and prefix + "params" not in state_dict:
                state_dict[prefix + "params"] = flat
        # per-layer torch weights (earlier versions, threestudio's VanillaMLP): zero padding, same function
        n_matrices = len(self.layout.shapes)
        layer_keys = [f"{prefix}layers.{2 * i}.weight" for i in range(n_matrices)]
        if prefix + "params" not in state_dict and all(k in state_dict for k in layer_keys):
            weights = [state_dict.pop(k).float() for k in layer_keys]
            state_dict[prefix + "params"] = self.layout.pack(weights)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register_otype("network", "FullyFusedMLP", "CutlassMLP")
class FullyFusedMLP(VanillaMLP):
    """The MLP that may run in tiny-cuda-nn (threestudio's ``TCNNNetwork`` otypes): ``backend: auto``
    picks ``tcnn.Network`` per call, for inputs on a CUDA device when tinycudann imports, except
    when ``double_backward`` is set: tcnn's MLPs have no second derivative, which analytic normals
    trained through (orientation loss) need. Elsewhere the torch path computes the same function."""

    uses_tcnn: ClassVar[bool] = True


def get_mlp(n_input_dims: int, n_output_dims: int, config: Any, double_backward: bool = False) -> VanillaMLP:
    """Build an MLP from a tcnn-style mapping ``{otype: VanillaMLP, n_neurons: 64, ...}``.

    ``double_backward``: the caller differentiates the MLP's input gradient again (analytic
    normals in a loss), so ``backend: auto`` keeps it in PyTorch.
    """
    cls, options = split_otype("network", config, "network")
    return cls(options, n_input_dims=n_input_dims, n_output_dims=n_output_dims, double_backward=double_backward)
