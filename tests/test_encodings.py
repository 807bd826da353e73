"""Encodings and MLPs against slow, obviously-correct references written out here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from threestudio_like.config import ConfigError
from threestudio_like.representations.encodings import (
    HashGrid,
    ProgressiveBandHashGrid,
    get_encoding,
)
from threestudio_like.representations.networks import get_activation, get_mlp

PRIMES = [1, 2654435761, 805459861]


# --------------------------------------------------------------------------- reference hash grid
def reference_levels(cfg: dict, n_dims: int = 3) -> list[dict]:
    """tcnn's per-level scale / resolution / table size, written out from its formulas."""
    levels, offset = [], 0
    for level in range(cfg["n_levels"]):
        scale = np.float32(
            np.float32(np.exp2(np.float32(level) * np.log2(np.float32(cfg["per_level_scale"]))))
            * np.float32(cfg["base_resolution"])
            - np.float32(1)
        )
        res = int(math.ceil(scale)) + 1
        size = -(-(res**n_dims) // 8) * 8  # next multiple of 8
        size = min(size, 2 ** cfg["log2_hashmap_size"])
        levels.append({"scale": float(scale), "res": res, "size": size, "offset": offset, "hashed": size < res**n_dims})
        offset += size
    return levels


def reference_corners(x: list[float], lv: dict, smooth: bool = False) -> list[tuple[int, float]]:
    """(table entry, trilinear weight) of the 8 corners of one point at one level, in Python ints."""
    pos = [np.float32(np.float32(xi) * np.float32(lv["scale"]) + np.float32(0.5)) for xi in x]
    cell = [int(math.floor(p)) for p in pos]
    frac = [float(p) - c for p, c in zip(pos, cell)]
    if smooth:
        frac = [f * f * (3 - 2 * f) for f in frac]
    corners = []
    for c in range(8):
        coord = [cell[d] + ((c >> d) & 1) for d in range(3)]
        weight = math.prod(frac[d] if (c >> d) & 1 else 1.0 - frac[d] for d in range(3))
        if lv["hashed"]:
            index = 0
            for d in range(3):
                index ^= (coord[d] * PRIMES[d]) & 0xFFFFFFFF
        else:
            index = (coord[0] + coord[1] * lv["res"] + coord[2] * lv["res"] ** 2) & 0xFFFFFFFF
        corners.append((lv["offset"] + index % lv["size"], weight))
    return corners


def reference_encode(points: torch.Tensor, table: torch.Tensor, cfg: dict, smooth: bool = False) -> torch.Tensor:
    F = cfg["n_features_per_level"]
    table = table.double().view(-1, F)
    levels = reference_levels(cfg)
    out = torch.zeros(points.shape[0], len(levels) * F, dtype=torch.float64)
    for i, x in enumerate(points.tolist()):
        for l, lv in enumerate(levels):
            for entry, weight in reference_corners(x, lv, smooth):
                out[i, l * F : (l + 1) * F] += weight * table[entry]
    return out


# small grid with both dense and hashed levels, and a level whose size is rounded up to 8
SMALL = {
    "otype": "HashGrid",
    "n_levels": 5,
    "n_features_per_level": 2,
    "log2_hashmap_size": 10,
    "base_resolution": 3,
    "per_level_scale": 1.9,
    "backend": "torch",
}


def test_small_grid_mixes_dense_hashed_and_rounded_levels():
    levels = reference_levels(SMALL)
    assert [lv["hashed"] for lv in levels] == [False, False, True, True, True]
    assert levels[0]["res"] == 3 and levels[0]["size"] == 32  # 27 entries rounded up to 8
    enc = get_encoding(3, SMALL)
    assert enc.layout.sizes == tuple(lv["size"] for lv in levels)
    assert enc.layout.hashed == tuple(lv["hashed"] for lv in levels)


def test_default_layout_matches_tcnn_parameter_count():
    enc = get_encoding(3, {"otype": "HashGrid", "backend": "torch"})  # threestudio's default grid
    levels = reference_levels(
        {"n_levels": 16, "log2_hashmap_size": 19, "base_resolution": 16, "per_level_scale": 1.447269237440378}
    )
    assert [lv["res"] for lv in levels[:5]] == [16, 24, 34, 49, 71]
    assert sum(lv["hashed"] for lv in levels) == 11
    assert enc.params.numel() == 2 * sum(lv["size"] for lv in levels) == 12599920
    assert enc.n_output_dims == 32
    # tcnn's init: uniform(-1e-4, 1e-4), one flat vector named `params` (the state_dict tcnn uses)
    assert list(enc.state_dict()) == ["params"]
    assert enc.params.abs().max() <= 1e-4 and enc.params.std() > 3e-5


@pytest.mark.parametrize(("interpolation", "n_features"), [("Linear", 2), ("Smoothstep", 2), ("Linear", 1), ("Linear", 4)])
def test_hashgrid_matches_per_corner_reference(interpolation, n_features):
    torch.manual_seed(0)
    cfg = {**SMALL, "interpolation": interpolation, "n_features_per_level": n_features}
    enc = get_encoding(3, cfg)
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0)  # large values so any wrong index shows
    points = torch.cat([torch.rand(60, 3), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5]])])
    expected = reference_encode(points, enc.params.detach(), cfg, smooth=interpolation == "Smoothstep")
    got = enc(points)
    assert got.shape == (63, 5 * n_features)
    torch.testing.assert_close(got.double(), expected, atol=2e-6, rtol=1e-5)
    # arbitrary batch shapes keep their shape
    assert enc(points.view(7, 9, 3)).shape == (7, 9, 5 * n_features)


def test_hashgrid_gradient_reaches_exactly_the_touched_entries():
    torch.manual_seed(1)
    enc = get_encoding(3, SMALL)
    points = torch.rand(3, 3)
    upstream = torch.randn(3, enc.n_output_dims)
    (enc(points) * upstream).sum().backward()
    F = SMALL["n_features_per_level"]
    expected = torch.zeros(enc.params.numel() // F, F, dtype=torch.float64)
    for i, x in enumerate(points.tolist()):
        for l, lv in enumerate(reference_levels(SMALL)):
            for entry, weight in reference_corners(x, lv):
                expected[entry] += weight * upstream[i, l * F : (l + 1) * F].double()
    grad = enc.params.grad.view(-1, F).double()
    touched = expected.abs().sum(-1) > 0
    assert touched.sum() > 0
    assert (grad[~touched] == 0).all()
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)


def test_hashgrid_input_gradient_matches_finite_differences():
    torch.manual_seed(2)
    enc = get_encoding(3, SMALL)
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0)
    x = torch.tensor([[0.31, 0.52, 0.77]], dtype=torch.float32, requires_grad=True)
    w = torch.randn(1, enc.n_output_dims)
    (grad,) = torch.autograd.grad((enc(x) * w).sum(), x)
    eps = 1e-3
    for d in range(3):
        dx = torch.zeros(1, 3)
        dx[0, d] = eps
        numeric = ((enc(x + dx) - enc(x - dx)) * w).sum() / (2 * eps)
        assert abs(grad[0, d].item() - numeric.item()) < 1e-2 * max(1.0, abs(numeric.item()))


def test_second_order_gradient_through_the_grid():
    """d/dparams of |d enc / dx|^2 (what an analytic-normal loss needs) against finite differences.

    The loss is quadratic in the table, so central differences are exact up to rounding."""
    torch.manual_seed(3)
    enc = get_encoding(3, SMALL)
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0)
    x = torch.rand(4, 3)
    w = torch.randn(enc.n_output_dims)

    def loss() -> torch.Tensor:
        xr = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad((enc(xr) * w).sum(), xr, create_graph=True)
        return (gx**2).sum()

    enc.params.grad = None
    loss().backward()
    grad = enc.params.grad.clone()
    candidates = torch.nonzero(grad.abs() > 1e-3).flatten()
    assert len(candidates) > 10
    def loss_with(i: int, value: float) -> float:
        with torch.no_grad():
            enc.params[i] = value
        return loss().item()

    for i in candidates[torch.randperm(len(candidates))[:6]].tolist():
        original = enc.params[i].item()
        numeric = (loss_with(i, original + 0.01) - loss_with(i, original - 0.01)) / 0.02
        loss_with(i, original)
        assert abs(numeric - grad[i].item()) < 2e-2 * max(1.0, abs(numeric))


def test_nearest_interpolation_takes_one_corner():
    enc = get_encoding(3, {**SMALL, "interpolation": "Nearest"})
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0)
    table = enc.params.detach().view(-1, 2)
    x = [0.3, 0.6, 0.9]
    expected = torch.cat([table[reference_corners(x, lv)[0][0]] for lv in reference_levels(SMALL)])
    torch.testing.assert_close(enc(torch.tensor([x]))[0], expected)


def test_progressive_band_masks_levels_by_step():
    cfg = {**SMALL, "otype": "ProgressiveBandHashGrid", "start_level": 2, "start_step": 10, "update_steps": 5}
    enc = get_encoding(3, cfg)
    assert isinstance(enc, ProgressiveBandHashGrid) and isinstance(enc, HashGrid)
    plain = get_encoding(3, SMALL)
    plain.load_state_dict(enc.state_dict())  # identical state_dict layout
    x = torch.rand(16, 3)
    full = plain(x)

    def active_levels(step: int) -> int:
        enc.update_step(step)
        out = enc(x).view(16, 5, 2)
        nonzero = (out.abs().sum(dim=(0, 2)) > 0).tolist()
        n = sum(nonzero)
        assert nonzero == [True] * n + [False] * (5 - n)  # always a prefix of levels
        torch.testing.assert_close(out[:, :n], full.view(16, 5, 2)[:, :n])
        return n

    assert active_levels(0) == 2
    assert active_levels(14) == 2
    assert active_levels(15) == 3
    assert active_levels(20) == 4
    assert active_levels(1000) == 5  # capped at n_levels
    assert active_levels(0) == 2  # derived from the step, so loading an earlier checkpoint works


# --------------------------------------------------------------------------- spherical harmonics
def closed_form_sh_degree3(d: torch.Tensor) -> torch.Tensor:
    """Real SH bands 0..2 (tcnn's signs), written out by hand."""
    x, y, z = d.unbind(-1)
    c0 = 0.5 / math.sqrt(math.pi)
    c1 = math.sqrt(3 / (4 * math.pi))
    c2 = 0.5 * math.sqrt(15 / math.pi)
    c20 = 0.25 * math.sqrt(5 / math.pi)
    c22 = 0.25 * math.sqrt(15 / math.pi)
    return torch.stack(
        [
            torch.full_like(x, c0),
            -c1 * y,
            c1 * z,
            -c1 * x,
            c2 * x * y,
            -c2 * y * z,
            c20 * (3 * z * z - 1),
            -c2 * x * z,
            c22 * (x * x - y * y),
        ],
        -1,
    )


DIRECTIONS = torch.nn.functional.normalize(
    torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.3, -0.5, 0.8], [-0.7, 0.1, -0.2], [0.2, 0.9, -0.4]]),
    dim=-1,
)


def test_spherical_harmonics_degree3_closed_form():
    enc = get_encoding(3, {"otype": "SphericalHarmonics", "degree": 3})
    assert enc.n_output_dims == 9
    got = enc((DIRECTIONS + 1) / 2)  # tcnn's input convention
    torch.testing.assert_close(got, closed_form_sh_degree3(DIRECTIONS), atol=1e-5, rtol=1e-5)
    got2 = get_encoding(3, {"otype": "SphericalHarmonics", "degree": 2})((DIRECTIONS + 1) / 2)
    torch.testing.assert_close(got2, got[:, :4])


def test_spherical_harmonics_degree8_matches_scipy():
    # sph_harm_y is scipy >= 1.15, which the test extra asks for
    enc = get_encoding(3, {"otype": "SphericalHarmonics", "degree": 8})
    got = enc((DIRECTIONS.double() + 1) / 2).double()
    d = DIRECTIONS.double().numpy()
    theta = np.arccos(np.clip(d[:, 2], -1, 1))
    phi = np.arctan2(d[:, 1], d[:, 0])
    for l in range(8):
        for m in range(-l, l + 1):
            y = special.sph_harm_y(l, abs(m), theta, phi)  # complex, Condon-Shortley phase
            real = y.real if m == 0 else math.sqrt(2) * (y.real if m > 0 else y.imag)
            np.testing.assert_allclose(got[:, l * l + l + m].numpy(), real, atol=1e-4)


def test_frequency_and_identity_layouts():
    enc = get_encoding(2, {"otype": "Frequency", "n_frequencies": 3})
    x = torch.tensor([[0.1, 0.7]])
    expected = []
    for value in x[0].tolist():
        for i in range(3):
            expected += [math.sin(2**i * math.pi * value), math.cos(2**i * math.pi * value)]
    torch.testing.assert_close(enc(x)[0], torch.tensor(expected), atol=1e-5, rtol=1e-5)
    ident = get_encoding(3, {"otype": "Identity", "scale": 2.0, "offset": -1.0})
    torch.testing.assert_close(ident(torch.tensor([[0.0, 0.5, 1.0]])), torch.tensor([[-1.0, 0.0, 1.0]]))


def test_bad_configs_name_the_problem():
    with pytest.raises(ConfigError, match="HashGrid"):
        get_encoding(3, {"otype": "HashGird"})
    with pytest.raises(ConfigError, match="n_levels"):
        get_encoding(3, {"otype": "HashGrid", "n_level": 8})
    with pytest.raises(ConfigError, match="otype"):
        get_encoding(3, {"n_levels": 8})
    with pytest.raises(ConfigError, match="Linear"):
        get_encoding(3, {"otype": "HashGrid", "interpolation": "Linaer"})
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        get_encoding(3, {"otype": "HashGrid", "n_levels": 2})(torch.rand(4, 2))


# --------------------------------------------------------------------------- MLP and activations
def test_vanilla_mlp_structure_and_aliases():
    for otype in ("VanillaMLP", "FullyFusedMLP", "CutlassMLP"):
        mlp = get_mlp(8, 3, {"otype": otype, "n_neurons": 16, "n_hidden_layers": 2, "backend": "torch"})
        assert [name for name, _ in mlp.named_parameters()] == ["params"]  # one flat vector, as tcnn
        # tcnn's layout: input padded to 16, output to 16, row-major [fan_out, fan_in] matrices
        assert mlp.layout.shapes == [(16, 16), (16, 16), (16, 16)]
        assert mlp.params.numel() == 3 * 16 * 16
    mlp = get_mlp(4, 2, {"otype": "VanillaMLP", "n_neurons": 5, "n_hidden_layers": 1, "output_activation": "sigmoid"})
    x = torch.randn(7, 4)
    w0, w1 = mlp.layout.matrices(mlp.params.detach())
    # at initialisation the padding weights are zero: a plain bias-free MLP
    assert w0[:, 4:].abs().sum() == 0 and w1[2:].abs().sum() == 0
    expected = torch.sigmoid(torch.relu(x @ w0[:, :4].T) @ w1[:2].T)
    torch.testing.assert_close(mlp(x), expected)
    assert mlp(torch.randn(2, 3, 4)).shape == (2, 3, 2)


def test_activations():
    x = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(get_activation("none")(x), x)
    torch.testing.assert_close(get_activation(None)(x), x)
    torch.testing.assert_close(get_activation("scale_-11_01")(x), x * 0.5 + 0.5)
    torch.testing.assert_close(get_activation("shifted_softplus")(x), torch.log1p(torch.exp(x - 1)))
    torch.testing.assert_close(get_activation("ReLU")(x), torch.tensor([0.0, 0.0, 3.0]))
    srgb = get_activation("lin2srgb")(torch.tensor([0.0, 0.001, 0.5, 1.0, 2.0]))
    torch.testing.assert_close(srgb, torch.tensor([0.0, 0.01292, 0.735357, 1.0, 1.0]), atol=1e-4, rtol=1e-4)
    # trunc_exp: exact exp forward, gradient computed at min(x, 15)
    big = torch.tensor([1.0, 30.0], requires_grad=True)
    y = get_activation("trunc_exp")(big)
    torch.testing.assert_close(y.detach(), torch.exp(big.detach()))
    y.sum().backward()
    torch.testing.assert_close(big.grad, torch.tensor([math.e, math.exp(15.0)]))
    with pytest.raises(ConfigError, match="softplus"):
        get_activation("sofplus")
