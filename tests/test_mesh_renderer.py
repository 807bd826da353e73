"""The mesh renderer draws what the volume renderer draws, through the same parts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from threestudio_like.backgrounds import SolidColorBackground
from threestudio_like.data.random_camera import OrbitCameraDataset
from threestudio_like.materials import NoMaterial
from threestudio_like.renderers.mesh_renderer import MeshRasterizer
from threestudio_like.renderers.volume_renderer import NeRFVolumeRenderer
from threestudio_like.representations.base import BaseImplicitGeometry
from threestudio_like.utils.metrics import psnr

CENTRE = torch.tensor([0.25, -0.15, 0.1])  # off-centre so a flipped or mirrored image cannot match


class OffCentreBall(BaseImplicitGeometry):
    """A hard ball of radius 0.45 whose colour logits vary with position (asymmetric views)."""

    @dataclass
    class Config(BaseImplicitGeometry.Config):
        isosurface_threshold: float = 500.0
        isosurface_resolution: int = 96

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        return 1000.0 * torch.sigmoid((0.45 - (points - CENTRE).norm(dim=-1, keepdim=True)) * 400.0)

    def isosurface_field(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward_density(points)

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict[str, torch.Tensor]:
        return {"density": self.forward_density(points), "features": 4.0 * (points - CENTRE)}

    def export(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": self(points)["features"]}


def _parts():
    geometry = OffCentreBall({})
    return geometry, NoMaterial({}), SolidColorBackground({"color": [1.0, 1.0, 1.0]})


def _views(n: int = 4, size: int = 64):
    return OrbitCameraDataset(n, elevation_deg=25.0, camera_distance=2.2, fovy_deg=50.0, height=size, width=size, batch_size=n)[0]


@torch.no_grad()
def test_mesh_and_volume_renders_agree() -> None:
    geometry, material, background = _parts()
    volume = NeRFVolumeRenderer({"num_samples_per_ray": 512, "grid_prune": False}, geometry=geometry, material=material, background=background).eval()
    mesh = MeshRasterizer({}, geometry=geometry, material=material, background=background).eval()
    batch = _views()
    a, b = volume(**batch), mesh(**batch)
    inside_a, inside_b = a["opacity"] > 0.5, b["opacity"] > 0.5
    iou = float((inside_a & inside_b).sum() / (inside_a | inside_b).sum())
    value = psnr(a["comp_rgb"], b["comp_rgb"])
    print(f"mesh vs volume: silhouette IoU {iou:.3f}, PSNR {value:.1f} dB")
    assert iou > 0.95
    assert value > 25.0
    # the ball is off-centre: its image moves around the orbit, so agreement is not symmetry
    assert float((a["opacity"][0] - a["opacity"][2]).abs().mean()) > 0.05
    depth_error = (a["depth"] - b["depth"])[inside_a & inside_b].abs().mean()
    assert float(depth_error) < 0.02


@torch.no_grad()
def test_background_shows_where_the_mesh_is_not() -> None:
    geometry, material, background = _parts()
    out = MeshRasterizer({}, geometry=geometry, material=material, background=background).eval()(**_views(1))
    empty = out["opacity"][..., 0] == 0
    assert bool(empty.any()) and bool((~empty).any())
    assert torch.allclose(out["comp_rgb"][empty], torch.ones(3))
    assert torch.all(out["comp_normal"][empty] == 0) and torch.all(out["depth"][empty] == 0)


# --------------------------------------------------------------------------- empty meshes
SMALL_TET = {
    "isosurface_resolution": 8,
    "pos_encoding_config": {"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 8, "base_resolution": 4, "per_level_scale": 1.5},
    "mlp_network_config": {"otype": "VanillaMLP", "n_neurons": 16, "n_hidden_layers": 1},
    "backend": "torch",
}
BG = (0.2, 0.4, 0.6)


def _empty_dmtet():
    from threestudio_like.representations.tetrahedra_sdf_grid import TetrahedraSDFGrid

    torch.manual_seed(0)
    geometry = TetrahedraSDFGrid(SMALL_TET)
    geometry.sdf.data.fill_(1.0)  # outside everywhere: no sign change, no triangle
    return geometry, NoMaterial({}), SolidColorBackground({"color": list(BG), "learned": True})


class RaisingRasterizer:
    """A backend that, like nvdiffrast, rejects triangle arrays without rows; else the torch one."""

    def __init__(self) -> None:
        from threestudio_like.mesh.rasterize import TorchRasterizer

        self.inner = TorchRasterizer()

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)

        def checked(*args, **kwargs):
            tri = kwargs.get("tri", args[2] if name == "interpolate" else args[1] if name == "rasterize" else args[3])
            if tri.shape[0] == 0:
                raise RuntimeError(f"{name}: triangle array has no rows")
            return method(*args, **kwargs)

        return checked


def test_empty_dmtet_renders_the_background_with_zero_opacity_and_gradients() -> None:
    from threestudio_like.mesh.regularisers import laplacian_smoothness_loss, normal_consistency_loss

    geometry, material, background = _empty_dmtet()
    renderer = MeshRasterizer({"backend": "torch"}, geometry=geometry, material=material, background=background)
    out = renderer(**_views(2, 16))
    assert out["mesh"].n_faces == 0
    assert torch.all(out["opacity"] == 0) and torch.all(out["depth"] == 0) and torch.all(out["comp_normal"] == 0)
    torch.testing.assert_close(out["comp_rgb"], torch.tensor(BG).expand(2, 16, 16, 3))
    # the losses a DMTet stage adds stay finite (a NaN would stop training as a divergence)
    mesh = out["mesh"]
    regularisers = laplacian_smoothness_loss(mesh.v_pos, mesh.t_pos_idx) + normal_consistency_loss(mesh.v_pos, mesh.t_pos_idx)
    assert torch.isfinite(regularisers) and regularisers.item() == 0.0
    ((out["comp_rgb"] - 1.0) ** 2).mean().backward()  # a loss pulling the image to white
    assert background.env_color.grad is not None and torch.all(background.env_color.grad < 0)


def test_empty_mesh_never_reaches_the_rasterizer_backend(monkeypatch) -> None:
    geometry, material, background = _empty_dmtet()
    renderer = MeshRasterizer({"backend": "torch"}, geometry=geometry, material=material, background=background)
    monkeypatch.setattr(renderer, "rasterizer", lambda device: RaisingRasterizer())
    out = renderer(**_views(1, 16))
    torch.testing.assert_close(out["comp_rgb"], torch.tensor(BG).expand(1, 16, 16, 3))
    assert torch.all(out["opacity"] == 0)
    # the same backend draws a mesh that has triangles
    geometry.sdf.data.copy_((geometry.grid_vertices.norm(dim=-1) - 0.5).reshape(-1, 1))
    assert renderer(**_views(1, 16))["opacity"].max() > 0.5


def test_nvdiffrast_wrapper_answers_empty_triangle_arrays_itself(monkeypatch) -> None:
    import types

    from threestudio_like.mesh.rasterize import NvdiffrastRasterizer
    from threestudio_like.utils import backends

    raising = RaisingRasterizer()
    fake_dr = types.SimpleNamespace(
        RasterizeCudaContext=lambda device=None: object(),
        RasterizeGLContext=lambda device=None: object(),
        rasterize=lambda ctx, pos, tri, resolution, ranges=None, grad_db=True: raising.rasterize(pos, tri, resolution),
        interpolate=lambda attr, rast, tri, rast_db=None, diff_attrs=None: raising.interpolate(attr, rast, tri),
        antialias=lambda color, rast, pos, tri, topology_hash=None, pos_gradient_boost=1.0: raising.antialias(color, rast, pos, tri),
    )
    real = backends.optional_import
    monkeypatch.setattr(backends, "optional_import", lambda name: fake_dr if name == "nvdiffrast.torch" else real(name))
    r = NvdiffrastRasterizer("cpu", "cuda")
    pos = torch.rand(2, 5, 4) + torch.tensor([0.0, 0.0, 0.0, 1.0])
    no_tri = torch.zeros(0, 3, dtype=torch.int32)
    rast, rast_db = r.rasterize(pos, no_tri, (6, 7))
    assert rast.shape == rast_db.shape == (2, 6, 7, 4) and torch.all(rast == 0)
    attr, _ = r.interpolate(torch.rand(1, 5, 3), rast, no_tri)
    assert attr.shape == (2, 6, 7, 3) and torch.all(attr == 0)
    color = torch.rand(2, 6, 7, 3)
    assert torch.equal(r.antialias(color, rast, pos, no_tri), color)
    rast, _ = r.rasterize(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (6, 7))  # non-empty: the library
    assert rast.shape == (2, 6, 7, 4)


# --------------------------------------------------------------------------- nvdiffrast contexts
def _fake_nvdiffrast(failing: tuple[str, ...], created: list[str]):
    """nvdiffrast.torch whose contexts in ``failing`` cannot be created (a headless machine's GL);
    its rasterize / interpolate / antialias are the built-in rasteriser's."""
    import types

    from threestudio_like.mesh.rasterize import TorchRasterizer

    inner = TorchRasterizer()

    def context(kind: str):
        def make(device=None):
            if kind in failing:
                raise RuntimeError(f"{kind}: eglGetDisplay() failed")
            created.append(kind)
            return kind

        return make

    return types.SimpleNamespace(
        RasterizeCudaContext=context("cuda"),
        RasterizeGLContext=context("gl"),
        rasterize=lambda ctx, pos, tri, resolution, ranges=None, grad_db=True: inner.rasterize(pos, tri, resolution),
        # nvdiffrast gives an empty derivative tensor where the built-in rasteriser gives None
        interpolate=lambda attr, rast, tri, rast_db=None, diff_attrs=None: (inner.interpolate(attr, rast, tri)[0], rast.new_zeros(*rast.shape[:3], 0)),
        antialias=lambda color, rast, pos, tri, topology_hash=None, pos_gradient_boost=1.0: inner.antialias(color, rast, pos, tri),
        antialias_construct_topology_hash=lambda tri: None,
    )


def _patch_nvdiffrast(monkeypatch, failing: tuple[str, ...]) -> list[str]:
    from threestudio_like.utils import backends

    created: list[str] = []
    fake = _fake_nvdiffrast(failing, created)
    real = backends.optional_import
    monkeypatch.setattr(backends, "optional_import", lambda name: fake if name.startswith("nvdiffrast") else real(name))
    monkeypatch.setattr(backends, "is_cuda_device", lambda device: True)  # every tensor "on CUDA"
    monkeypatch.setattr(backends, "_REPORTED", set())
    return created


def test_nvdiffrast_defaults_to_its_cuda_context_everywhere() -> None:
    import glob
    import inspect
    import os

    import yaml

    from threestudio_like.export.exporter import MeshExporter
    from threestudio_like.mesh.rasterize import make_rasterizer

    assert MeshRasterizer.Config().context_type == "cuda"
    assert MeshExporter.Config().context_type == "cuda"
    assert inspect.signature(make_rasterizer).parameters["context_type"].default == "cuda"
    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "threestudio_like", "configs")
    contexts = {}
    for path in glob.glob(os.path.join(configs, "*.yaml")):
        with open(path) as f:
            system = (yaml.safe_load(f) or {}).get("system", {})
        for section in ("renderer", "exporter"):
            if "context_type" in (system.get(section) or {}):
                contexts[f"{os.path.basename(path)}:{section}"] = system[section]["context_type"]
    assert contexts and set(contexts.values()) == {"cuda"}, contexts


def test_a_gl_context_that_cannot_be_created_falls_back_to_cuda_with_one_warning(monkeypatch, capsys) -> None:
    import warnings

    from threestudio_like.mesh.rasterize import NvdiffrastRasterizer

    created = _patch_nvdiffrast(monkeypatch, failing=("gl",))
    geometry, material, background = _parts()
    renderer = MeshRasterizer({"context_type": "gl", "backend": "auto"}, geometry=geometry, material=material, background=background)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = renderer(**_views(2, 32))
        renderer(**_views(2, 32))  # the rasteriser is kept: no second warning
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == [
        "nvdiffrast: gl context: RuntimeError: gl: eglGetDisplay() failed; using its cuda context instead."
    ]
    assert isinstance(renderer.rasterizer(torch.device("cpu")), NvdiffrastRasterizer) and created == ["cuda"]
    assert 0.05 < float(out["opacity"].mean()) < 0.95  # it still draws the ball
    reports = [line for line in capsys.readouterr().err.splitlines() if line.startswith("backend: ")]
    assert reports == ["backend: mesh rasteriser -> nvdiffrast (cuda context; gl context: RuntimeError: gl: eglGetDisplay() failed)"]


def test_no_nvdiffrast_context_falls_back_to_the_torch_rasteriser_under_auto_only(monkeypatch) -> None:
    from threestudio_like.mesh.rasterize import TorchRasterizer, make_rasterizer

    _patch_nvdiffrast(monkeypatch, failing=("gl", "cuda"))
    with pytest.warns(RuntimeWarning, match="gl context: .*cuda context: .*using the built-in PyTorch rasteriser") as caught:
        rasterizer = make_rasterizer("auto", "cpu", "gl")
    assert len(caught) == 1 and isinstance(rasterizer, TorchRasterizer)
    pos = torch.tensor([[[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 1.0]]])
    rast, _ = rasterizer.rasterize(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (16, 16))
    assert int((rast[..., 3] > 0).sum()) > 20
    with pytest.raises(RuntimeError, match="backend 'nvdiffrast' was requested but no nvdiffrast context could be created"):
        make_rasterizer("nvdiffrast", "cpu", "cuda")


def test_the_mesh_renderer_sets_nvdiffrast_up_when_moved_to_cuda(monkeypatch) -> None:
    created = _patch_nvdiffrast(monkeypatch, failing=())
    geometry, material, background = _parts()
    renderer = MeshRasterizer({"backend": "auto"}, geometry=geometry, material=material, background=background)
    assert created == []
    renderer.to("cpu")  # stands for .to("cuda"): every device counts as CUDA here
    assert created == ["cuda"]  # the context (and nvdiffrast's plugin build) exists before the first step
    assert "_device_probe" not in renderer.state_dict()
