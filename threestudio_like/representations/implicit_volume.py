"""``implicit-volume``: a NeRF density + feature field (hash grid -> two small MLPs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError
from threestudio_like.registry import did_you_mean, register
from threestudio_like.representations.base import BaseImplicitGeometry
from threestudio_like.representations.encodings import DEFAULT_HASH_GRID, get_encoding
from threestudio_like.representations.networks import DEFAULT_MLP, get_activation, get_mlp
from threestudio_like.utils.typing import Float, Tensor

_DENSITY_BLOBS = ("blob_magic3d", "blob_dreamfusion")
_NORMAL_TYPES = ("finite_difference", "finite_difference_laplacian", "analytic", "pred")


@register("implicit-volume")
class ImplicitVolume(BaseImplicitGeometry):
    """Density and features at world points inside ``[-radius, radius]^3``.

    density = activation(MLP_density(enc(x)) + bias(x)), features = MLP_feature(enc(x)), where the
    bias is a blob that starts the optimisation from a ball instead of empty space:
    ``blob_magic3d``: ``scale * (1 - |x| / std)``; ``blob_dreamfusion``: ``scale * exp(-|x|^2 / (2 std^2))``.

    Normals (``output_normal=True``) point outward, ``-grad(density) / |grad(density)|``:
    ``analytic`` by autograd (differentiable whenever grad is enabled, so an orientation loss can
    train through them), ``finite_difference`` by central differences with step
    ``finite_difference_normal_eps`` (``finite_difference_laplacian`` is the same, threestudio's
    older name), ``pred`` by a third MLP head.
    """

    @dataclass
    class Config(BaseImplicitGeometry.Config):
        n_input_dims: int = 3
        n_feature_dims: int = 3
        density_activation: Optional[str] = "softplus"
        density_bias: Union[float, str] = "blob_magic3d"
        density_blob_scale: float = 10.0
        density_blob_std: float = 0.5
        pos_encoding_config: dict = field(default_factory=lambda: dict(DEFAULT_HASH_GRID))
        mlp_network_config: dict = field(default_factory=lambda: dict(DEFAULT_MLP))
        normal_type: Optional[str] = "finite_difference"
        finite_difference_normal_eps: float = 0.01
        detach_blob_points: bool = False  # blob bias without gradient w.r.t. the query points
        isosurface_threshold: Union[float, str] = 25.0
        backend: str = "auto"  # auto | torch | tinycudann; fills `backend` of the encoding / MLP configs
        # scene contraction (mip-NeRF 360): the box fills the inner half of the encoding and all space
        # outside is squashed into the rest, so a real capture's surroundings have somewhere to go
        unbounded: bool = False

    cfg: Config

    def configure(self, **kwargs: Any) -> None:
        super().configure(**kwargs)
        cfg = self.cfg
        if isinstance(cfg.density_bias, str) and cfg.density_bias not in _DENSITY_BLOBS:
            hint = did_you_mean(cfg.density_bias, _DENSITY_BLOBS)
            raise ConfigError(f"density_bias: {cfg.density_bias!r} is not a number or one of {list(_DENSITY_BLOBS)}.{hint}")
        if cfg.normal_type is not None and cfg.normal_type not in _NORMAL_TYPES:
            hint = did_you_mean(cfg.normal_type, _NORMAL_TYPES)
            raise ConfigError(f"normal_type: {cfg.normal_type!r} is not null or one of {list(_NORMAL_TYPES)}.{hint}")
        self.density_activation = get_activation(cfg.density_activation)
        self.unbounded = cfg.unbounded

        self.encoding = get_encoding(cfg.n_input_dims, self._with_backend(cfg.pos_encoding_config))
        mlp_config = self._with_backend(cfg.mlp_network_config)
        enc_dims = self.encoding.n_output_dims
        # analytic normals are a gradient of the density that losses differentiate again: tcnn's
        # MLPs have no second derivative, so this one stays in PyTorch under backend: auto
        self.density_network = get_mlp(enc_dims, 1, mlp_config, double_backward=cfg.normal_type == "analytic")
        self.feature_network = get_mlp(enc_dims, cfg.n_feature_dims, mlp_config)
        if cfg.normal_type == "pred":
            self.normal_network = get_mlp(enc_dims, 3, mlp_config)

    def _with_backend(self, config: dict) -> dict:
        # the geometry's backend choice applies to its parts unless a part config sets its own
        return {"backend": self.cfg.backend, **config}

    # ----------------------------------------------------------------- density
    def density_bias(self, points: Float[Tensor, "*N 3"]) -> Union[float, Float[Tensor, "*N 1"]]:
        cfg = self.cfg
        if not isinstance(cfg.density_bias, str):
            return float(cfg.density_bias)
        if cfg.detach_blob_points:
            points = points.detach()
        squared = (points**2).sum(dim=-1, keepdim=True)
        if cfg.density_bias == "blob_magic3d":
            return cfg.density_blob_scale * (1.0 - torch.sqrt(squared) / cfg.density_blob_std)
        return cfg.density_blob_scale * torch.exp(-0.5 * squared / cfg.density_blob_std**2)

    def _raw_density_and_encoding(
        self, points: Float[Tensor, "*N 3"]
    ) -> tuple[Float[Tensor, "*N 1"], Float[Tensor, "*N E"]]:
        """Pre-activation density (network output + blob bias) and the shared encoding."""
        enc = self.encoding(self.to_unit(points))
        raw = self.density_network(enc) + self.density_bias(points)
        return raw, enc

    def forward_density(self, points: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N 1"]:
        raw, _ = self._raw_density_and_encoding(points)
        return self.density_activation(raw)

    def forward_field(self, points: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N 1"]:
        return self.forward_density(points)

    def isosurface_field(self, points: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N 1"]:
        return self.forward_density(points)

    # ----------------------------------------------------------------- full query
    def forward(self, points: Float[Tensor, "*N 3"], output_normal: bool = False) -> dict[str, Tensor]:
        """``{"density": [*N,1], "features": [*N,F]}`` plus ``"normal": [*N,3]`` (unit, outward) if asked."""
        grad_enabled = torch.is_grad_enabled()
        analytic = output_normal and self.cfg.normal_type == "analytic"
        if output_normal and self.cfg.normal_type is None:
            raise ValueError("normals were requested but normal_type is null; set geometry.normal_type")
        with torch.set_grad_enabled(grad_enabled or analytic):
            if analytic and not points.requires_grad:
                points = points.detach().requires_grad_(True)
            raw, enc = self._raw_density_and_encoding(points)
            output = {
                "density": self.density_activation(raw),
                "features": self.feature_network(enc),
            }
            if output_normal:
                if analytic:
                    # the gradient of the raw density has the same direction and is better conditioned
                    # (softplus / exp saturate); keep the graph only if the caller can backpropagate
                    grad = torch.autograd.grad(raw, points, torch.ones_like(raw), create_graph=grad_enabled)[0]
                    normal = F.normalize(-grad, dim=-1)
                elif self.cfg.normal_type == "pred":
                    normal = F.normalize(self.normal_network(enc), dim=-1)
                else:
                    normal = self._finite_difference_normal(points)
                output["normal"] = normal
        if not grad_enabled:
            output = {k: v.detach() for k, v in output.items()}
        return output

    def _finite_difference_normal(self, points: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N 3"]:
        """Central differences of the density, samples clamped to the box (unless unbounded)."""
        eps = self.cfg.finite_difference_normal_eps
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps  # [3, 3]
        offsets = torch.stack([offsets, -offsets], dim=1).reshape(6, 3)  # +x, -x, +y, -y, +z, -z
        shifted = points[..., None, :] + offsets
        if not self.unbounded:
            shifted = shifted.clamp(-self.cfg.radius, self.cfg.radius)
        density = self.forward_density(shifted)[..., 0]  # [*N, 6]
        grad = (density[..., 0::2] - density[..., 1::2]) / (2.0 * eps)
        return F.normalize(-grad, dim=-1)

    def export(self, points: Float[Tensor, "*N 3"]) -> dict[str, Tensor]:
        """Features at surface points, for texture baking."""
        return {"features": self.forward(points)["features"]}

    def update_step(self, global_step: int) -> None:
        self.encoding.update_step(global_step)
