"""implicit-volume geometry: blob initialisation, normals, configs, update_step, isosurface."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError
from threestudio_like.representations.implicit_volume import ImplicitVolume

# a small grid keeps construction and queries fast; the maths does not depend on the size
SMALL_GRID = {
    "otype": "HashGrid",
    "n_levels": 6,
    "n_features_per_level": 2,
    "log2_hashmap_size": 12,
    "base_resolution": 8,
    "per_level_scale": 1.5,
}
SMALL_MLP = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 16, "n_hidden_layers": 1}


def make(**overrides) -> ImplicitVolume:
    torch.manual_seed(0)
    cfg = {"pos_encoding_config": SMALL_GRID, "mlp_network_config": SMALL_MLP, "backend": "torch", **overrides}
    return ImplicitVolume(cfg)


def shell_points(n: int = 64, r_min: float = 0.15, r_max: float = 0.9) -> torch.Tensor:
    """Points away from the origin (where the blob gradient is undefined) inside radius 1."""
    g = torch.Generator().manual_seed(1)
    dirs = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return dirs * (r_min + (r_max - r_min) * torch.rand(n, 1, generator=g))


def test_magic3d_blob_is_dense_at_centre_and_empty_far_out():
    geo = make(density_bias="blob_magic3d", density_blob_scale=10.0, density_blob_std=0.5)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.25, 0.0, 0.0], [0.0, 0.0, 0.95], [0.6, -0.6, 0.3]])
    density = geo.forward_density(pts)[:, 0]
    r = pts.norm(dim=-1)
    expected = F.softplus(10.0 * (1 - r / 0.5))  # the network adds only ~1e-4 at init
    torch.testing.assert_close(density, expected, atol=1e-2, rtol=1e-3)
    assert density[0] > 9.9 and density[2] < 1e-3


def test_dreamfusion_blob_and_constant_bias():
    geo = make(density_bias="blob_dreamfusion", density_blob_scale=5.0, density_blob_std=0.3)
    pts = shell_points(16)
    expected = F.softplus(5.0 * torch.exp(-(pts**2).sum(-1) / (2 * 0.3**2)))
    torch.testing.assert_close(geo.forward_density(pts)[:, 0], expected, atol=1e-2, rtol=1e-3)
    geo = make(density_bias=-2.0, density_activation="exp")
    torch.testing.assert_close(geo.forward_density(pts)[:, 0], torch.full((16,), math.exp(-2.0)), atol=1e-3, rtol=1e-3)


def test_forward_shapes_and_export():
    geo = make()
    pts = shell_points(12).view(3, 4, 3)
    out = geo(pts, output_normal=True)
    assert out["density"].shape == (3, 4, 1) and out["features"].shape == (3, 4, 3) and out["normal"].shape == (3, 4, 3)
    assert (out["density"] >= 0).all()  # softplus
    torch.testing.assert_close(geo.export(pts)["features"], out["features"])
    assert "normal" not in geo(pts)
    torch.testing.assert_close(geo.forward_field(pts), out["density"])


def test_analytic_normals_of_the_blob_point_outward():
    geo = make(normal_type="analytic")
    pts = shell_points()
    normal = geo(pts, output_normal=True)["normal"]
    torch.testing.assert_close(normal.norm(dim=-1), torch.ones(len(pts)))
    cosine = (normal * F.normalize(pts, dim=-1)).sum(-1)
    assert cosine.min() > 0.999


def test_finite_difference_normals_agree_with_analytic():
    pts = shell_points(r_max=0.85)  # keep the +-eps samples off the box clamp
    analytic = make(normal_type="analytic")(pts, output_normal=True)["normal"]
    for normal_type in ("finite_difference", "finite_difference_laplacian"):
        fd = make(normal_type=normal_type, finite_difference_normal_eps=0.01)(pts, output_normal=True)["normal"]
        assert (fd * analytic).sum(-1).min() > 0.99


@pytest.mark.parametrize("normal_type", ["analytic", "finite_difference"])
def test_normals_of_a_tilted_plane_field(normal_type, monkeypatch):
    # density falls off along a non-axis direction: both normal types must return that direction
    direction = F.normalize(torch.tensor([0.3, -0.5, 0.8]), dim=0)
    geo = make(normal_type=normal_type, density_activation="none")
    monkeypatch.setattr(geo, "density_bias", lambda p: 2.0 - 5.0 * (p @ direction)[..., None])
    normal = geo(shell_points(16, r_max=0.8), output_normal=True)["normal"]
    assert (normal @ direction).min() > 0.999


def test_analytic_normals_are_differentiable_when_grad_is_enabled():
    geo = make(normal_type="analytic")
    pts = shell_points(32)
    normal = geo(pts, output_normal=True)["normal"]
    assert normal.requires_grad
    # an orientation-style loss must reach the encoding and the density network
    (normal * torch.randn_like(normal)).sum().backward()
    assert geo.encoding.params.grad is not None and geo.encoding.params.grad.abs().sum() > 0
    assert geo.density_network.params.grad.abs().sum() > 0
    with torch.no_grad():
        out = geo(pts, output_normal=True)
    assert not any(v.requires_grad for v in out.values())
    assert not pts.requires_grad  # the caller's tensor is left alone


def test_pred_normals_are_unit_vectors():
    geo = make(normal_type="pred")
    normal = geo(shell_points(10), output_normal=True)["normal"]
    torch.testing.assert_close(normal.norm(dim=-1), torch.ones(10))
    assert any(name.startswith("normal_network.") for name, _ in geo.named_parameters())


def test_default_config_matches_threestudio_and_parses_its_yaml_keys():
    cfg = {
        "radius": 2.0,
        "normal_type": None,
        "density_bias": "blob_magic3d",
        "density_activation": "softplus",
        "density_blob_scale": 10.0,
        "density_blob_std": 0.5,
        "isosurface_resolution": 64,
        "isosurface_threshold": "auto",
        "pos_encoding_config": {**SMALL_GRID, "otype": "ProgressiveBandHashGrid", "start_level": 2, "start_step": 0, "update_steps": 10},
        "mlp_network_config": {**SMALL_MLP, "otype": "FullyFusedMLP"},
    }
    geo = ImplicitVolume(cfg)
    assert geo.bbox.tolist() == [[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]]
    assert geo.encoding.current_level == 2
    geo.update_step(25)  # forwarded to the progressive encoding
    assert geo.encoding.current_level == 4
    with pytest.raises(ValueError, match="normal_type"):
        geo(shell_points(4), output_normal=True)
    default = ImplicitVolume({"backend": "torch"})
    assert default.encoding.n_output_dims == 32 and default.cfg.isosurface_threshold == 25.0
    assert default.encoding.params.numel() == 12599920  # tcnn's size for threestudio's default grid


def test_bad_options_say_what_is_valid():
    with pytest.raises(ConfigError, match="blob_magic3d"):
        make(density_bias="blob_magic")
    with pytest.raises(ConfigError, match="analytic"):
        make(normal_type="analytical")
    with pytest.raises(ConfigError, match="density_blob_std"):
        make(density_blob_sdt=0.3)


def test_points_map_to_unit_cube_of_the_bbox():
    geo = make(radius=2.0)
    corners = torch.tensor([[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0], [0.0, 1.0, -1.0]])
    torch.testing.assert_close(geo.to_unit(corners), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.75, 0.25]]))


def test_unbounded_contracts_space_outside_the_box_into_the_encoding():
    """Inside the box the contraction is linear (the box fills the inner half of the encoding's cube);
    any point outside, however far, still lands in the cube, farther points farther out."""
    geo = make(radius=2.0, unbounded=True)
    inside = torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.5, 0.5]])
    torch.testing.assert_close(geo.to_unit(inside), 0.5 + inside / 8.0)
    far = torch.tensor([[3.0, 0.0, 0.0], [30.0, 0.0, 0.0], [3e4, 0.0, 0.0]])
    unit = geo.to_unit(far)
    assert bool(((unit >= 0) & (unit <= 1)).all())
    assert unit[0, 0] < unit[1, 0] < unit[2, 0] <= 1.0
    assert make(radius=2.0).to_unit(far)[1, 0] > 1.0  # bounded: outside the encoding's cube
    assert torch.isfinite(geo(far * 100)["density"]).all()


def test_isosurface_of_the_blob_is_a_sphere():
    geo = make(isosurface_threshold=5.0, isosurface_resolution=40)
    mesh = geo.isosurface()
    # softplus(10 (1 - r / 0.5)) = 5  <=>  r = 0.5 (1 - softplus^-1(5) / 10)
    radius = 0.5 * (1 - math.log(math.expm1(5.0)) / 10)
    r = mesh.v_pos.norm(dim=-1)
    cell = 2.0 / 39
    assert (r - radius).abs().max() < cell
    assert mesh.signed_volume() > 0


@pytest.mark.parametrize("normal_type", ["analytic", "finite_difference", "pred"])
def test_empty_query_is_fine(normal_type):
    # a renderer whose occupancy grid pruned every sample still calls the geometry
    geo = make(normal_type=normal_type)
    out = geo(torch.zeros(0, 3), output_normal=True)
    assert out["density"].shape == (0, 1) and out["features"].shape == (0, 3) and out["normal"].shape == (0, 3)
    (out["density"].sum() + out["normal"].sum()).backward()


def test_ignored_threestudio_isosurface_options_warn_once(monkeypatch):
    from threestudio_like.representations import base

    monkeypatch.setattr(base, "_WARNED", set())
    with pytest.warns(UserWarning, match=r"isosurface_method: mt .*no effect.*marching cubes \(scikit-image"):
        make(isosurface_method="mt")
    with pytest.warns(UserWarning, match=r"isosurface_deformable_grid: true .*no effect.*tetrahedra-sdf-grid"):
        make(isosurface_deformable_grid=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(isosurface_method="mt", isosurface_deformable_grid=True)  # once per process
        make()  # the defaults describe what is done: no warning
    assert make().cfg.isosurface_method == "mc-cpu"


def test_vanilla_mlp_stays_in_pytorch_when_tcnn_is_present_and_reports_it(monkeypatch):
    """threestudio runs otype VanillaMLP in PyTorch; only FullyFusedMLP / CutlassMLP go to tiny-cuda-nn
    (whose fp16 MLPs carry a loss scale of their own, stacking on 16-mixed's GradScaler)."""
    import types

    from threestudio_like.representations.networks import MLPLayout
    from threestudio_like.utils import backends

    built: list[str] = []

    class Network(torch.nn.Module):  # a stand-in tcnn.Network: records what was built and run
        def __init__(self, n_in: int, n_out: int, config: dict) -> None:
            super().__init__()
            built.append(config["otype"])
            self.n_out = n_out
            layout = MLPLayout(n_in, n_out, config["n_neurons"], config["n_hidden_layers"])
            self.params = torch.nn.Parameter(torch.zeros(layout.n_params, dtype=torch.float16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.new_zeros(x.shape[0], self.n_out) + 0.0 * self.params.float().sum()

    fake = types.SimpleNamespace(Network=Network)
    real = backends.optional_import
    monkeypatch.setattr(backends, "optional_import", lambda name: fake if name == "tinycudann" else real(name))
    monkeypatch.setattr(backends, "is_cuda_device", lambda device: True)  # every tensor "on CUDA"
    reports: list[tuple[str, str, str]] = []

    def report(part: str, backend: str, why: str = "") -> None:
        if part.startswith("MLP"):  # the encoding reports too
            reports.append((part, backend, why))

    monkeypatch.setattr(backends, "report_backend", report)
    grid = {**SMALL_GRID, "backend": "torch"}  # the stand-in has no Encoding
    points = shell_points()

    geo = make(backend="auto", pos_encoding_config=grid, normal_type="finite_difference")
    for _ in range(3):
        out = geo(points, output_normal=True)
    assert built == []  # no tcnn.Network was built: the VanillaMLP heads ran in PyTorch
    assert geo.density_network.backend_for("cuda") == geo.feature_network.backend_for("cuda") == "torch"
    torch.testing.assert_close(out["features"], geo.feature_network.forward_torch(geo.encoding(geo.to_unit(points))))
    assert sorted(r[:2] for r in reports) == [("MLP 12->1", "torch"), ("MLP 12->3", "torch")]  # once each
    assert all("VanillaMLP" in why for _, _, why in reports)

    reports.clear()
    fused = make(backend="auto", pos_encoding_config=grid, normal_type="finite_difference",
                 mlp_network_config={**SMALL_MLP, "otype": "FullyFusedMLP"})
    fused(points, output_normal=True)
    assert built == ["FullyFusedMLP", "FullyFusedMLP"]  # density and features
    assert fused.feature_network.backend_for("cuda") == "tinycudann"
    assert sorted(r[:2] for r in reports) == [("MLP 12->1", "tinycudann"), ("MLP 12->3", "tinycudann")]
