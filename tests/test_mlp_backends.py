"""MLP backends: tcnn's parameter layout on the CPU, and which backend each part gets.

No GPU or tinycudann is needed: a fake ``tinycudann`` module (patched into
``backends.optional_import``) stands for the library. Its ``Network`` computes tcnn's function
from tcnn's documented layout (written out here, independently of the package) and, like
tcnn's MLPs, has no second derivative.
"""

from __future__ import annotations

import types

import pytest
import torch

from threestudio_like.config import ConfigError
from threestudio_like.representations.implicit_volume import ImplicitVolume
from threestudio_like.representations.networks import get_mlp
from threestudio_like.utils import backends

SMALL_GRID = {
    "otype": "HashGrid",
    "n_levels": 4,
    "n_features_per_level": 2,
    "log2_hashmap_size": 10,
    "base_resolution": 4,
    "per_level_scale": 1.5,
    "backend": "torch",  # the fake library has no Encoding
}
SMALL_MLP = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 16, "n_hidden_layers": 1}


# --------------------------------------------------------------------------- tcnn's layout, written out
def _pad16(n: int) -> int:
    return (n + 15) // 16 * 16


def tcnn_matrix_shapes(n_in: int, n_out: int, width: int, n_hidden: int) -> list[tuple[int, int]]:
    """tcnn.Network: an Identity encoding pads the input to a multiple of 16 (with ones), the
    output is padded to 16 rows, and every weight matrix is stored row-major [fan_out, fan_in]."""
    if n_hidden == 0:
        return [(_pad16(n_out), _pad16(n_in))]
    return [(width, _pad16(n_in))] + [(width, width)] * (n_hidden - 1) + [(_pad16(n_out), width)]


def tcnn_reference(x: torch.Tensor, flat: torch.Tensor, n_in: int, n_out: int, width: int, n_hidden: int) -> torch.Tensor:
    """What tcnn computes with ReLU hidden activations and no output activation: [N, n_in] -> [N, n_out]."""
    shapes = tcnn_matrix_shapes(n_in, n_out, width, n_hidden)
    h = torch.cat([x, x.new_ones(x.shape[0], shapes[0][1] - n_in)], dim=1)  # padding inputs are 1
    offset = 0
    for i, (rows, cols) in enumerate(shapes):
        w = flat[offset : offset + rows * cols].reshape(rows, cols)
        offset += rows * cols
        h = h @ w.T
        if i < len(shapes) - 1:
            h = torch.relu(h)
    return h[:, :n_out]


class _FirstOrderOnly(torch.autograd.Function):
    """tcnn's MLP kernels: a forward and a backward, whose own backward raises (as tcnn's does)."""

    @staticmethod
    def forward(ctx, x, params, fn):  # type: ignore[override]
        ctx.save_for_backward(x, params)
        ctx.fn = fn
        return fn(x, params)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, params = ctx.saved_tensors
        gx, gp = _Backward.apply(x, params, grad, ctx.fn)
        return gx, gp, None


class _Backward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, params, grad, fn):  # type: ignore[override]
        with torch.enable_grad():
            x_, p_ = x.detach().requires_grad_(True), params.detach().requires_grad_(True)
            return torch.autograd.grad(fn(x_, p_), (x_, p_), grad)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        raise RuntimeError("fake tcnn: this MLP has no second derivative")


def make_fake_tcnn() -> types.SimpleNamespace:
    calls = {"networks": 0, "forwards": 0}

    class Network(torch.nn.Module):
        def __init__(self, n_in: int, n_out: int, config: dict) -> None:
            super().__init__()
            calls["networks"] += 1
            assert config["activation"] == "ReLU" and config["output_activation"] == "None"
            self.dims = (n_in, n_out, config["n_neurons"], config["n_hidden_layers"])
            n_params = sum(r * c for r, c in tcnn_matrix_shapes(*self.dims))
            self.params = torch.nn.Parameter(torch.zeros(n_params, dtype=torch.float16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls["forwards"] += 1
            return _FirstOrderOnly.apply(x, self.params, lambda a, p: tcnn_reference(a, p, *self.dims))

    return types.SimpleNamespace(Network=Network, calls=calls)


@pytest.fixture
def fake_tcnn(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """tinycudann "installed" (a fake) for every part; the device check is left alone."""
    fake = make_fake_tcnn()
    real = backends.optional_import
    monkeypatch.setattr(backends, "optional_import", lambda name: fake if name == "tinycudann" else real(name))
    return fake


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    "n_in, n_out, width, n_hidden",
    [(32, 1, 64, 1), (3, 3, 16, 2), (5, 4, 24, 1), (7, 2, 16, 0)],  # fully fused / padded / CUTLASS width / no hidden
)
@pytest.mark.parametrize("key", ["tcnn_network.params", "network.params", "params"])  # earlier / threestudio's / ours
def test_state_dict_in_tcnn_layout_loads_on_cpu_and_computes_tcnns_function(n_in, n_out, width, n_hidden, key):
    g = torch.Generator().manual_seed(0)
    n_params = sum(r * c for r, c in tcnn_matrix_shapes(n_in, n_out, width, n_hidden))
    # tcnn keeps fp16 parameters; padding columns and rows are non-zero, as after training
    flat = (torch.randn(n_params, generator=g) * 0.3).half()
    mlp = get_mlp(n_in, n_out, {"otype": "FullyFusedMLP", "n_neurons": width, "n_hidden_layers": n_hidden})
    mlp.load_state_dict({key: flat})  # `tcnn_network.params`: written by the earlier tcnn path
    x = torch.rand(50, n_in, generator=g)
    expected = tcnn_reference(x, flat.float(), n_in, n_out, width, n_hidden)
    torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)
    assert mlp.state_dict().keys() == {"params"}  # and it saves in the same layout


def test_earlier_per_layer_torch_checkpoint_still_loads():
    torch.manual_seed(0)
    w0, w1 = torch.randn(16, 5), torch.randn(2, 16)
    mlp = get_mlp(5, 2, SMALL_MLP)
    mlp.load_state_dict({"layers.0.weight": w0, "layers.2.weight": w1})
    x = torch.randn(9, 5)
    torch.testing.assert_close(mlp(x), torch.relu(x @ w0.T) @ w1.T)


# --------------------------------------------------------------------------- backend choice
def test_cpu_inputs_take_the_torch_path_even_when_cuda_is_available(fake_tcnn, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torch.manual_seed(0)
    geo = ImplicitVolume({"pos_encoding_config": SMALL_GRID, "mlp_network_config": SMALL_MLP, "normal_type": "finite_difference"})
    points = torch.rand(20, 3) - 0.5
    out = geo(points, output_normal=True)
    assert fake_tcnn.calls == {"networks": 0, "forwards": 0}
    assert geo.density_network.backend_for(points.device) == "torch"
    enc = geo.encoding(geo.to_unit(points))
    torch.testing.assert_close(out["features"], geo.feature_network.forward_torch(enc))


def test_analytic_normals_keep_the_density_mlp_in_torch_when_tcnn_is_available(fake_tcnn, monkeypatch):
    monkeypatch.setattr(backends, "is_cuda_device", lambda device: True)  # every tensor "on CUDA"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torch.manual_seed(0)
    cfg = {"pos_encoding_config": SMALL_GRID, "mlp_network_config": SMALL_MLP, "normal_type": "analytic", "backend": "auto"}
    geo = ImplicitVolume(cfg)
    assert geo.density_network.backend_for("cuda") == "torch"
    assert geo.feature_network.backend_for("cuda") == "tinycudann"  # the fake is live for the others

    # an orientation-style loss differentiates the normal (a density gradient) again
    points = torch.rand(32, 3) - 0.5
    out = geo(points, output_normal=True)
    loss = (out["normal"] * torch.randn(32, 3)).sum() + out["features"].sum()
    loss.backward()
    assert fake_tcnn.calls["forwards"] == 1  # the feature network ran on the "tcnn" path
    assert geo.density_network.params.grad.abs().sum() > 0

    # the premise: the fake, like tcnn, cannot do this for the density network
    density = get_mlp(geo.encoding.n_output_dims, 1, {**SMALL_MLP, "backend": "auto"})
    enc = geo.encoding(geo.to_unit(points)).detach().requires_grad_(True)
    grad = torch.autograd.grad(density(enc).sum(), enc, create_graph=True)[0]
    with pytest.raises(RuntimeError, match="no second derivative"):
        grad.sum().backward()


def test_explicit_tcnn_backend_with_analytic_normals_is_a_config_error(fake_tcnn):
    cfg = {"pos_encoding_config": SMALL_GRID, "mlp_network_config": {**SMALL_MLP, "backend": "tinycudann"}, "normal_type": "analytic"}
    with pytest.raises(ConfigError, match="second derivatives"):
        ImplicitVolume(cfg)
