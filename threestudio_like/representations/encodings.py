"""Input encodings named by tiny-cuda-nn ``otype`` (HashGrid, SphericalHarmonics, Frequency, Identity).

Inputs are in [0, 1] like tcnn (positions scaled to the bounding box, directions as
``(d + 1) / 2``). Every encoding has a vectorised PyTorch path that runs on any device.
``HashGrid`` follows tcnn's grid encoding exactly (level scales and resolutions, table sizes,
dense vs hashed indexing, hash primes, the flat parameter vector and its initialisation), so its
``params`` tensor moves between this implementation and ``tcnn.Encoding`` unchanged; on CUDA
with tinycudann importable (``backend: auto``) the same tensor is fed to ``tcnn.Encoding``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from threestudio_like.config import ConfigError
from threestudio_like.registry import did_you_mean
from threestudio_like.representations.otype import register_otype, split_otype
from threestudio_like.utils import backends
from threestudio_like.utils.backends import choose_backend
from threestudio_like.utils.base import BaseModule
from threestudio_like.utils.typing import Float, Tensor

# tcnn's coherent prime hash: the first prime is 1 so neighbouring x cells stay close in memory.
# tiny-cuda-nn's hash grid as threestudio configures it: 16 levels from 16 to 4096
DEFAULT_HASH_GRID = {
    "otype": "HashGrid",
    "n_levels": 16,
    "n_features_per_level": 2,
    "log2_hashmap_size": 19,
    "base_resolution": 16,
    "per_level_scale": 1.447269237440378,
}
HASH_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
_UINT32 = 0xFFFFFFFF
_MAX_DENSE_PARAMS = (2**32 - 1) // 2  # tcnn clamps a dense level's size to this
_INTERPOLATIONS = ("Linear", "Nearest", "Smoothstep")
_GRID_TYPES = ("Hash", "Dense", "Tiled")


def _check_choice(value: str, options: tuple[str, ...], what: str) -> str:
    """tcnn matches these option strings case-insensitively; return the canonical spelling."""
    for option in options:
        if option.lower() == str(value).lower():
            return option
    hint = did_you_mean(str(value), options)
    raise ConfigError(f"{what}: {value!r} is not one of {list(options)}.{hint}")


class Encoding(BaseModule):
    """Base of all encodings: built as ``Cls(options, n_input_dims=...)``; sets ``n_output_dims``."""

    @dataclass
    class Config(BaseModule.Config):
        pass

    n_input_dims: int
    n_output_dims: int

    def configure(self, n_input_dims: int = 3, **kwargs: Any) -> None:
        if n_input_dims < 1:
            raise ValueError(f"{type(self).__name__}: n_input_dims must be positive, got {n_input_dims}")
        self.n_input_dims = n_input_dims

    def _flatten(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        if x.shape[-1] != self.n_input_dims:
            raise ValueError(
                f"{type(self).__name__} expects inputs [..., {self.n_input_dims}], got shape {tuple(x.shape)}"
            )
        return x.reshape(-1, self.n_input_dims), tuple(x.shape[:-1])


# --------------------------------------------------------------------------- grid layout
@dataclass(frozen=True)
class GridLayout:
    """Per-level quantities of a tcnn grid encoding (see ``grid_layout``)."""

    scales: tuple[float, ...]  # input in [0,1] maps to scale * x + 0.5
    resolutions: tuple[int, ...]  # grid vertices per axis
    sizes: tuple[int, ...]  # table entries of the level
    offsets: tuple[int, ...]  # first entry of the level in the concatenated table
    hashed: tuple[bool, ...]  # spatial hash (True) or dense / tiled indexing
    n_features_per_level: int

    @property
    def n_levels(self) -> int:
        return len(self.sizes)

    @property
    def n_entries(self) -> int:
        return self.offsets[-1] + self.sizes[-1] if self.sizes else 0

    @property
    def n_params(self) -> int:
        return self.n_entries * self.n_features_per_level


def grid_scale(level: int, per_level_scale: float, base_resolution: int) -> float:
    """tcnn: ``exp2(level * log2(per_level_scale)) * base_resolution - 1`` evaluated in float32.

    The -1 makes ``base_resolution`` count grid vertices rather than cells.
    """
    f32 = np.float32
    log2_scale = np.log2(f32(per_level_scale))
    return float(f32(np.exp2(f32(level) * log2_scale)) * f32(base_resolution) - f32(1.0))


def grid_layout(
    n_dims: int,
    n_levels: int,
    n_features_per_level: int,
    log2_hashmap_size: int,
    base_resolution: int,
    per_level_scale: float,
    grid_type: str = "Hash",
) -> GridLayout:
    """Level sizes exactly as tcnn's GridEncoding constructor computes them."""
    scales, resolutions, sizes, offsets, hashed = [], [], [], [], []
    offset = 0
    for level in range(n_levels):
        scale = grid_scale(level, per_level_scale, base_resolution)
        resolution = math.ceil(np.float32(scale)) + 1
        dense = resolution**n_dims
        size = min(dense, _MAX_DENSE_PARAMS)
        size = (size + 7) // 8 * 8  # tcnn aligns every level to 8 entries
        if grid_type == "Hash":
            size = min(size, 2**log2_hashmap_size)
        elif grid_type == "Tiled":
            size = min(size, base_resolution**n_dims)
        scales.append(scale)
        resolutions.append(resolution)
        sizes.append(size)
        offsets.append(offset)
        hashed.append(grid_type == "Hash" and size < dense)
        offset += size
    return GridLayout(tuple(scales), tuple(resolutions), tuple(sizes), tuple(offsets), tuple(hashed), n_features_per_level)


# --------------------------------------------------------------------------- hash grid
@register_otype("encoding", "HashGrid", "Grid")
class HashGrid(Encoding):
    """Multiresolution hash encoding (Instant-NGP), tcnn parameter layout.

    ``params`` is the flat vector ``[entries over all levels, n_features_per_level]`` with level
    ``l`` occupying entries ``offsets[l] : offsets[l] + sizes[l]``. Output ``[..., n_levels * F]``,
    level-major. A level whose dense grid fits in its table is indexed densely
    (``x + y * res + z * res^2``, modulo the table size), otherwise by tcnn's prime XOR hash.
    """

    @dataclass
    class Config(Encoding.Config):
        n_levels: int = 16
        n_features_per_level: int = 2
        log2_hashmap_size: int = 19
        base_resolution: int = 16
        per_level_scale: float = 1.447269237440378
        interpolation: str = "Linear"  # Linear | Nearest | Smoothstep
        type: str = "Hash"  # Hash | Dense | Tiled (tcnn's grid "type")
        backend: str = "auto"  # auto | torch | tinycudann

    cfg: Config

    def configure(self, n_input_dims: int = 3, **kwargs: Any) -> None:
        super().configure(n_input_dims)
        cfg = self.cfg
        if cfg.n_features_per_level not in (1, 2, 4, 8):
            raise ConfigError(f"n_features_per_level must be 1, 2, 4 or 8 (as in tcnn), got {cfg.n_features_per_level}")
        if not 1 <= cfg.n_levels <= 32:
            raise ConfigError(f"n_levels must be between 1 and 32 (as in tcnn), got {cfg.n_levels}")
        if n_input_dims > len(HASH_PRIMES):
            raise ConfigError(f"HashGrid hashes at most {len(HASH_PRIMES)} input dims, got {n_input_dims}")
        self.interpolation = _check_choice(cfg.interpolation, _INTERPOLATIONS, "interpolation")
        grid_type = _check_choice(cfg.type, _GRID_TYPES, "type")
        self.layout = grid_layout(
            n_input_dims, cfg.n_levels, cfg.n_features_per_level, cfg.log2_hashmap_size,
            cfg.base_resolution, cfg.per_level_scale, grid_type,
        )  # fmt: skip
        for level, (res, hashed) in enumerate(zip(self.layout.resolutions, self.layout.hashed)):
            if not hashed and res**n_input_dims >= 2**32:
                raise ConfigError(
                    f"level {level} of this grid would be a dense grid of {res}^{n_input_dims} vertices, beyond "
                    "32-bit indexing; use type: Hash or fewer levels / a smaller per_level_scale"
                )
        self.n_output_dims = cfg.n_levels * cfg.n_features_per_level
        self.params = nn.Parameter(torch.empty(self.layout.n_params).uniform_(-1e-4, 1e-4))
        self._register_level_constants()
        self._tcnn_encoding: Optional[nn.Module] = None  # built lazily on the first CUDA forward

    def _register_level_constants(self) -> None:
        """Per-level constants as non-persistent buffers, split into dense and hashed groups.

        The two groups index differently; computing each only for its own levels avoids doing
        both kinds of index arithmetic everywhere and selecting.
        """
        layout, D = self.layout, self.n_input_dims
        dense = [lvl for lvl in range(layout.n_levels) if not layout.hashed[lvl]]
        hashed = [lvl for lvl in range(layout.n_levels) if layout.hashed[lvl]]
        self._n_dense = len(dense)
        order = dense + hashed
        # levels are processed in `order`; restore tcnn's level order afterwards if it differs
        self._restore_order = None if order == sorted(order) else [order.index(lvl) for lvl in range(layout.n_levels)]

        def buffer(name: str, values: Any, dtype: torch.dtype = torch.int64) -> None:
            self.register_buffer(name, torch.tensor(values, dtype=dtype), persistent=False)

        buffer("_scales", [layout.scales[lvl] for lvl in order], torch.float32)
        corner_steps = [0] if self.interpolation == "Nearest" else [0, 1]
        buffer("_corner_steps", corner_steps)
        buffer("_dense_offsets", [layout.offsets[lvl] for lvl in dense])
        buffer("_dense_sizes", [layout.sizes[lvl] for lvl in dense])
        # dense strides res^d, wrapped to uint32 like tcnn's index arithmetic
        buffer("_dense_strides", [[layout.resolutions[lvl] ** d & _UINT32 for d in range(D)] for lvl in dense])
        buffer("_hashed_offsets", [layout.offsets[lvl] for lvl in hashed])
        # hashed levels always have power-of-two tables (size < res^D forces size = 2^log2_hashmap_size)
        buffer("_hashed_masks", [layout.sizes[lvl] - 1 for lvl in hashed])
        buffer("_primes", list(HASH_PRIMES[:D]))

    # ----------------------------------------------------------------- forward
    def forward(self, x: Float[Tensor, "*N D"]) -> Float[Tensor, "*N L"]:
        flat, batch = self._flatten(x)
        if choose_backend(self.cfg.backend, "tinycudann", flat.device, part="hash grid") == "tinycudann":
            out = self._tcnn_forward(flat)
        else:
            out = self.encode_torch(flat)
        return out.reshape(*batch, self.n_output_dims)

    def encode_torch(self, x: Float[Tensor, "N D"]) -> Float[Tensor, "N L"]:
        """The built-in path: all levels and all 2^D corners at once (no loop over points).

        Memory is the cost: backward keeps about 1.5 kB per point of the default grid (2.5 kB
        when gradients w.r.t. the points are needed, e.g. analytic normals).
        """
        x = x.float()
        pos = x[:, None, :] * self._scales[None, :, None] + 0.5  # [N, L, D]; 0.5 staggers the levels
        cell = torch.floor(pos)
        frac = pos - cell  # gradients w.r.t. x flow through here (analytic normals)
        if self.interpolation == "Smoothstep":
            frac = frac * frac * (3.0 - 2.0 * frac)
        corners = cell.long().unsqueeze(-1) + self._corner_steps  # [N, L, D, b] lattice coordinates
        weights = self._corner_weights(frac)  # [N, L, C]
        n_dense = self._n_dense
        outputs = []
        if n_dense:
            index = self._dense_indices(corners[:, :n_dense])
            outputs.append(self._interpolate(index, weights[:, :n_dense]))
        if n_dense < corners.shape[1]:
            index = self._hashed_indices(corners[:, n_dense:])
            outputs.append(self._interpolate(index, weights[:, n_dense:]))
        out = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]  # [N, L, F]
        if self._restore_order is not None:
            out = out[:, self._restore_order]
        return out.reshape(x.shape[0], self.n_output_dims)

    def _corner_weights(self, frac: Float[Tensor, "N L D"]) -> Float[Tensor, "N L C"]:
        if self.interpolation == "Nearest":
            return frac.new_ones(*frac.shape[:2], 1)
        per_dim = torch.stack([1.0 - frac, frac], dim=-1)  # [N, L, D, 2]
        return self._combine_corners(per_dim, torch.mul)

    @staticmethod
    def _combine_corners(per_dim: Tensor, op: Any) -> Tensor:
        """Per-dimension corner values [N, L, D, b] -> all b^D corners [N, L, b^D] under ``op``.

        Corner ``c`` takes step ``(c >> d) & 1`` in dimension ``d`` (dimension 0 varies fastest),
        tcnn's corner order. Broadcasting builds the full tensor in D - 1 passes.
        """
        N, L, D, b = per_dim.shape
        result = None
        for d in range(D):
            shape = [N, L] + [1] * D
            shape[2 + D - 1 - d] = b  # the last axis is dimension 0
            values = per_dim[:, :, d].reshape(shape)
            result = values if result is None else op(result, values)
        return result.reshape(N, L, b**D)

    def _dense_indices(self, corners: Tensor) -> Tensor:
        """``(sum_d coord_d * res^d) mod 2^32 mod size + offset``, tcnn's dense indexing."""
        corners = corners & _UINT32  # tcnn casts a (possibly negative) cell to uint32
        per_dim = corners * self._dense_strides[None, :, :, None]
        index = self._combine_corners(per_dim, torch.add) & _UINT32
        return index % self._dense_sizes[None, :, None] + self._dense_offsets[None, :, None]

    def _hashed_indices(self, corners: Tensor) -> Tensor:
        """``(XOR_d coord_d * prime_d) mod 2^32 mod size + offset``, tcnn's coherent prime hash.

        The power-of-two modulo is a mask, and masking commutes with XOR, so it is applied to
        the small per-dimension terms before they are combined over corners.
        """
        masks = self._hashed_masks[None, :, None, None]
        per_dim = (corners * self._primes[None, None, :, None]) & masks  # int64 products never overflow
        index = self._combine_corners(per_dim, torch.bitwise_xor)
        return index.add_(self._hashed_offsets[None, :, None])

    def _interpolate(self, index: Tensor, weights: Tensor) -> Tensor:
        """``sum_c weights[..., c] * table[index[..., c]]``: [N, L, C] -> [N, L, F]."""
        F = self.cfg.n_features_per_level
        flat = index.reshape(-1)
        if F == 2:
            # one 8-byte gather per corner instead of a row lookup: several times faster on CPU,
            # and gather's backward (scatter_add) beats index_select's (index_add)
            table = torch.view_as_complex(self.params.view(-1, 2))
            features = torch.view_as_real(torch.gather(table, 0, flat))
        elif F == 1:
            features = torch.gather(self.params, 0, flat)
        else:
            features = self.params.view(-1, F).index_select(0, flat)
        features = features.view(*index.shape, F)
        return (weights.unsqueeze(-1) * features).sum(dim=-2)

    # ----------------------------------------------------------------- tinycudann
    def tcnn_config(self) -> dict:
        """This encoding as a tcnn encoding config."""
        cfg = self.cfg
        return {
            "otype": "Grid",
            "type": _check_choice(cfg.type, _GRID_TYPES, "type"),
            "n_levels": cfg.n_levels,
            "n_features_per_level": cfg.n_features_per_level,
            "log2_hashmap_size": cfg.log2_hashmap_size,
            "base_resolution": cfg.base_resolution,
            "per_level_scale": cfg.per_level_scale,
            "interpolation": self.interpolation,
        }

    def _tcnn_forward(self, x: Float[Tensor, "N D"]) -> Float[Tensor, "N L"]:
        if self._tcnn_encoding is None:
            tcnn = backends.optional_import("tinycudann")
            encoding = tcnn.Encoding(self.n_input_dims, self.tcnn_config(), dtype=torch.float32)
            if encoding.params.numel() != self.params.numel():
                raise RuntimeError(
                    f"tcnn.Encoding has {encoding.params.numel()} parameters but this HashGrid has "
                    f"{self.params.numel()}; this tinycudann version lays the grid out differently. "
                    "Set backend: torch to use the built-in path."
                )
            # kept out of the submodules so the state_dict holds `params` once, under the same name
            self.__dict__["_tcnn_encoding"] = encoding
        encoding = self._tcnn_encoding
        encoding.params = self.params  # tcnn reads our parameter: one tensor for optimiser and checkpoint
        if x.shape[0] == 0:  # tcnn kernels reject empty batches (all samples pruned)
            return x.new_zeros(0, self.n_output_dims)
        return encoding(x.float().contiguous()).float()


@register_otype("encoding", "DenseGrid")
class DenseGrid(HashGrid):
    """tcnn's ``DenseGrid`` otype: the grid encoding with ``type: Dense`` by default."""

    @dataclass
    class Config(HashGrid.Config):
        type: str = "Dense"


@register_otype("encoding", "TiledGrid")
class TiledGrid(HashGrid):
    """tcnn's ``TiledGrid`` otype: the grid encoding with ``type: Tiled`` by default."""

    @dataclass
    class Config(HashGrid.Config):
        type: str = "Tiled"


@register_otype("encoding", "ProgressiveBandHashGrid")
class ProgressiveBandHashGrid(HashGrid):
    """threestudio's coarse-to-fine hash grid: only the first ``current_level`` levels are non-zero.

    ``current_level = min(start_level + max(step - start_step, 0) // update_steps, n_levels)``.
    The mask is derived from the step (not saved), so ``update_step`` after loading a checkpoint
    restores it; the state_dict is identical to a plain ``HashGrid``'s.
    """

    @dataclass
    class Config(HashGrid.Config):
        start_level: int = 8
        start_step: int = 2000
        update_steps: int = 500

    cfg: Config

    def configure(self, n_input_dims: int = 3, **kwargs: Any) -> None:
        super().configure(n_input_dims, **kwargs)
        if self.cfg.update_steps <= 0:
            raise ConfigError(f"update_steps must be positive, got {self.cfg.update_steps}")
        level_of_output = torch.arange(self.n_output_dims) // self.cfg.n_features_per_level
        self.register_buffer("_level_of_output", level_of_output, persistent=False)
        self.register_buffer("mask", torch.zeros(self.n_output_dims), persistent=False)
        self.current_level = 0
        self.update_step(0)

    def update_step(self, global_step: int) -> None:
        cfg = self.cfg
        level = cfg.start_level + max(global_step - cfg.start_step, 0) // cfg.update_steps
        self.current_level = min(level, cfg.n_levels)
        self.mask.copy_((self._level_of_output < self.current_level).to(self.mask.dtype))

    def forward(self, x: Float[Tensor, "*N D"]) -> Float[Tensor, "*N L"]:
        return super().forward(x) * self.mask


# --------------------------------------------------------------------------- direction / frequency
def real_spherical_harmonics(dirs: Float[Tensor, "*N 3"], degree: int) -> Float[Tensor, "*N K"]:
    """Real spherical harmonics of bands ``0 .. degree-1`` (``K = degree^2``), tcnn's order and signs.

    Entry ``l*l + l + m`` is band ``l``, order ``m``; ``m > 0`` uses cos(m phi), ``m < 0``
    sin(|m| phi), with the Condon-Shortley phase (so band 1 is ``-c y, c z, -c x``). Evaluated
    as polynomials in x, y, z (no angles), so exact and smooth for unit vectors.
    """
    x, y, z = dirs.unbind(-1)
    out: list[Optional[Tensor]] = [None] * degree * degree
    # (x + i y)^m = A_m + i B_m carries the azimuthal factor sin^m(theta) e^{i m phi}
    cos_m, sin_m = [torch.ones_like(x)], [torch.zeros_like(x)]
    for m in range(1, degree):
        prev_cos, prev_sin = cos_m[-1], sin_m[-1]
        cos_m.append(x * prev_cos - y * prev_sin)
        sin_m.append(x * prev_sin + y * prev_cos)
    for m in range(degree):
        # Q_l^m(z): the associated Legendre function divided by sin^m(theta), by recurrence in l
        q_prev = None
        q = torch.full_like(z, (-1) ** m * _double_factorial(2 * m - 1))
        for l in range(m, degree):  # noqa: E741
            if l == m + 1:
                q_prev, q = q, (2 * m + 1) * z * q
            elif l > m + 1:
                q_prev, q = q, ((2 * l - 1) * z * q - (l + m - 1) * q_prev) / (l - m)
            norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))
            if m == 0:
                out[l * l + l] = norm * q
            else:
                out[l * l + l + m] = math.sqrt(2) * norm * q * cos_m[m]
                out[l * l + l - m] = math.sqrt(2) * norm * q * sin_m[m]
    return torch.stack(out, dim=-1)


def _double_factorial(n: int) -> int:
    return math.prod(range(n, 0, -2)) if n > 0 else 1


@register_otype("encoding", "SphericalHarmonics")
class SphericalHarmonics(Encoding):
    """Real SH of a direction given as ``(d + 1) / 2`` in [0,1]^3 (tcnn's input convention).

    ``degree`` counts bands as in tcnn: ``degree: 4`` gives 16 outputs (bands 0..3).
    """

    @dataclass
    class Config(Encoding.Config):
        degree: int = 4

    cfg: Config

    def configure(self, n_input_dims: int = 3, **kwargs: Any) -> None:
        super().configure(n_input_dims)
        if n_input_dims != 3:
            raise ConfigError(f"SphericalHarmonics encodes 3D directions, got n_input_dims={n_input_dims}")
        if not 1 <= self.cfg.degree <= 8:
            raise ConfigError(f"SphericalHarmonics degree must be between 1 and 8 (as in tcnn), got {self.cfg.degree}")
        self.n_output_dims = self.cfg.degree**2

    def forward(self, x: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N K"]:
        flat, batch = self._flatten(x)
        out = real_spherical_harmonics(flat.float() * 2.0 - 1.0, self.cfg.degree)
        return out.reshape(*batch, self.n_output_dims)


@register_otype("encoding", "Frequency")
class Frequency(Encoding):
    """NeRF positional encoding as tcnn lays it out: per input dim, ``sin(2^i pi x), cos(2^i pi x)`` for i < n."""

    @dataclass
    class Config(Encoding.Config):
        n_frequencies: int = 12

    cfg: Config

    def configure(self, n_input_dims: int = 3, **kwargs: Any) -> None:
        super().configure(n_input_dims)
        if self.cfg.n_frequencies < 1:
            raise ConfigError(f"n_frequencies must be positive, got {self.cfg.n_frequencies}")
        self.n_output_dims = n_input_dims * self.cfg.n_frequencies * 2
        freqs = math.pi * 2.0 ** torch.arange(self.cfg.n_frequencies, dtype=torch.float32)
        self.register_buffer("_freqs", freqs, persistent=False)

    def forward(self, x: Float[Tensor, "*N D"]) -> Float[Tensor, "*N K"]:
        flat, batch = self._flatten(x)
        angles = flat.float()[..., None] * self._freqs  # [N, D, n]
        out = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1)  # [N, D, n, 2]
        return out.reshape(*batch, self.n_output_dims)


@register_otype("encoding", "Identity")
class Identity(Encoding):
    """``x * scale + offset`` (tcnn's Identity)."""

    @dataclass
    class Config(Encoding.Config):
        scale: float = 1.0
        offset: float = 0.0

    cfg: Config

    def configure(self, n_input_dims: int = 3, **kwargs: Any) -> None:
        super().configure(n_input_dims)
        self.n_output_dims = n_input_dims

    def forward(self, x: Float[Tensor, "*N D"]) -> Float[Tensor, "*N D"]:
        return x * self.cfg.scale + self.cfg.offset


def get_encoding(n_input_dims: int, config: Any) -> Encoding:
    """Build an encoding from a tcnn-style mapping ``{otype: HashGrid, n_levels: 16, ...}``."""
    cls, options = split_otype("encoding", config, "encoding")
    return cls(options, n_input_dims=n_input_dims)
