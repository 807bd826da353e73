"""The CUDA path against the built-in PyTorch path (run on a GPU machine: ``pytest -m cuda``).

Every test skips, with the reason, when there is no CUDA device or when the optional library
it compares (tinycudann, nerfacc, nvdiffrast) does not import. Tolerances: tcnn's grid encoding
runs in fp32 here (tight), its MLPs in fp16 (loose); rasterizers may disagree on pixels whose
centre lies on an edge, so coverage is compared as a fraction.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
import torch

from threestudio_like.utils import backends

pytestmark = pytest.mark.cuda

SMALL_GRID = {
    "otype": "HashGrid",
    "n_levels": 8,
    "n_features_per_level": 2,
    "log2_hashmap_size": 15,
    "base_resolution": 16,
    "per_level_scale": 1.3,
}


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda")


def _library(name: str) -> ModuleType:
    _cuda()
    module = backends.optional_import(name)
    if module is None:
        pytest.skip(f"{name} is not installed, or failed to load on this GPU")
    return module


def _mostly_close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float = 0.0, allowed: float = 1e-3) -> None:
    """All but a fraction ``allowed`` of the entries within tolerance (cell boundaries may round apart)."""
    bad = ((a - b).abs() > atol + rtol * b.abs()).float().mean().item()
    assert bad <= allowed, f"{bad:.2%} of entries differ by more than {atol} + {rtol}|b| (max {(a - b).abs().max():.3g})"


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# --------------------------------------------------------------------------- tiny-cuda-nn
@pytest.mark.parametrize("grid", [SMALL_GRID, "default"])
def test_tcnn_hashgrid_matches_the_torch_path(grid: Any) -> None:
    from threestudio_like.representations.encodings import DEFAULT_HASH_GRID, get_encoding

    _library("tinycudann")
    config = dict(DEFAULT_HASH_GRID) if grid == "default" else dict(grid)  # default: hashed levels too
    torch.manual_seed(0)
    enc = get_encoding(3, {**config, "backend": "tinycudann"}).cuda()
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0)  # tcnn's 1e-4 init would hide layout errors
    x = torch.rand(1 << 14, 3, device="cuda", requires_grad=True)
    y_tcnn, y_torch = enc(x), enc.encode_torch(x)
    _mostly_close(y_tcnn, y_torch, atol=1e-4)
    g = torch.randn_like(y_torch)
    dp_tcnn, dx_tcnn = torch.autograd.grad(y_tcnn, (enc.params, x), g)
    dp_torch, dx_torch = torch.autograd.grad(y_torch, (enc.params, x), g)
    assert _relative_error(dp_tcnn, dp_torch) < 1e-4
    assert _relative_error(dx_tcnn, dx_torch) < 1e-2  # tcnn's input gradient is accumulated in lower precision


@pytest.mark.parametrize(
    "n_in, n_out, width, n_hidden",
    [(32, 3, 64, 1), (3, 1, 16, 2), (16, 4, 24, 1), (7, 2, 32, 0)],  # fused / padded input / CUTLASS / no hidden
)
def test_tcnn_mlp_matches_the_torch_path_and_shares_its_checkpoint(n_in: int, n_out: int, width: int, n_hidden: int) -> None:
    from threestudio_like.representations.networks import get_mlp

    _library("tinycudann")
    torch.manual_seed(0)
    config = {"otype": "FullyFusedMLP", "n_neurons": width, "n_hidden_layers": n_hidden, "backend": "tinycudann"}
    mlp = get_mlp(n_in, n_out, config).cuda()
    with torch.no_grad():
        mlp.params.normal_(0.0, 1.0 / math.sqrt(width))  # padding weights non-zero: they act as a bias
    x = torch.rand(4096, n_in, device="cuda")
    y_tcnn, y_torch = mlp(x), mlp.forward_torch(x)
    assert mlp.backend_for(x.device) == "tinycudann"
    assert _relative_error(y_tcnn, y_torch) < 2e-2  # tcnn's MLPs compute in fp16
    g = torch.randn_like(y_torch)
    (dp_tcnn,) = torch.autograd.grad(y_tcnn, mlp.params, g)
    (dp_torch,) = torch.autograd.grad(y_torch, mlp.params, g)
    assert _relative_error(dp_tcnn, dp_torch) < 5e-2
    # the checkpoint of the CUDA model runs unchanged on the CPU
    cpu = get_mlp(n_in, n_out, {**config, "backend": "auto"})
    cpu.load_state_dict(mlp.state_dict())
    assert _relative_error(cpu(x.cpu()), y_tcnn.float().cpu()) < 2e-2


def test_analytic_normals_train_through_the_torch_density_mlp_with_tcnn_present() -> None:
    from threestudio_like.representations.implicit_volume import ImplicitVolume

    _library("tinycudann")
    mlp = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 32, "n_hidden_layers": 1}
    geo = ImplicitVolume({"pos_encoding_config": SMALL_GRID, "mlp_network_config": mlp, "normal_type": "analytic"}).cuda()
    points = torch.rand(2048, 3, device="cuda") - 0.5
    assert geo.density_network.backend_for(points.device) == "torch"
    assert geo.feature_network.backend_for(points.device) == "tinycudann"
    out = geo(points, output_normal=True)
    (out["normal"] * torch.randn_like(out["normal"])).sum().backward()  # an orientation-style loss
    assert geo.density_network.params.grad.abs().sum() > 0 and geo.encoding.params.grad.abs().sum() > 0


# --------------------------------------------------------------------------- nerfacc
def _ball_parts(device: torch.device) -> tuple[Any, Any, Any]:
    from threestudio_like.backgrounds import SolidColorBackground
    from threestudio_like.materials import NoMaterial
    from threestudio_like.representations.base import BaseImplicitGeometry

    class Ball(BaseImplicitGeometry):
        """A hard off-centre ball whose colour varies with position."""

        @dataclass
        class Config(BaseImplicitGeometry.Config):
            isosurface_threshold: float = 500.0

        def configure(self, **kwargs: Any) -> None:
            super().configure(**kwargs)
            self.register_buffer("centre", torch.tensor([0.25, -0.15, 0.1]))

        def forward_density(self, points: torch.Tensor) -> torch.Tensor:
            return 1000.0 * torch.sigmoid((0.45 - (points - self.centre).norm(dim=-1, keepdim=True)) * 400.0)

        def isosurface_field(self, points: torch.Tensor) -> torch.Tensor:
            return self.forward_density(points)

        def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict[str, torch.Tensor]:
            return {"density": self.forward_density(points), "features": 4.0 * (points - self.centre)}

    return Ball({}).to(device), NoMaterial({}).to(device), SolidColorBackground({"color": [1.0, 1.0, 1.0]}).to(device)


def _views(device: torch.device, n: int = 4, size: int = 64) -> dict[str, Any]:
    from threestudio_like.data.random_camera import OrbitCameraDataset

    batch = OrbitCameraDataset(n, elevation_deg=25.0, camera_distance=2.2, fovy_deg=50.0, height=size, width=size, batch_size=n)[0]
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def test_nerfacc_occupancy_sampling_matches_the_torch_grid() -> None:
    from threestudio_like.renderers.volume_renderer import NeRFVolumeRenderer
    from threestudio_like.utils.metrics import psnr

    _library("nerfacc")
    device = _cuda()
    parts = _ball_parts(device)
    config = {"num_samples_per_ray": 256, "randomized": False, "grid_prune": True}
    torch_r = NeRFVolumeRenderer({**config, "backend": "torch"}, geometry=parts[0], material=parts[1], background=parts[2]).to(device)
    torch_r.train()
    torch_r.update_step(0)  # fill the occupancy grid from the ball
    nerfacc_r = NeRFVolumeRenderer({**config, "backend": "nerfacc"}, geometry=parts[0], material=parts[1], background=parts[2]).to(device)
    nerfacc_r.load_state_dict(torch_r.state_dict())
    assert 0 < int(torch_r.occupancy.occupied.sum()) < torch_r.occupancy.n_cells  # the grid really prunes
    batch = _views(device)
    with torch.no_grad():
        a, b = torch_r.eval()(**batch), nerfacc_r.eval()(**batch)
    assert float((a["opacity"] - b["opacity"]).abs().mean()) < 5e-3
    assert psnr(a["comp_rgb"], b["comp_rgb"]) > 35.0
    assert float((a["depth"] - b["depth"]).abs().mean()) < 1e-2


# --------------------------------------------------------------------------- nvdiffrast
def _sphere_clip(device: torch.device, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import trimesh

    from threestudio_like.renderers.mesh_renderer import clip_positions

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    v = torch.tensor(sphere.vertices, dtype=torch.float32, device=device) + torch.tensor([0.1, -0.05, 0.0], device=device)
    tri = torch.tensor(sphere.faces, dtype=torch.int32, device=device)
    return v, tri, clip_positions(v, _views(device, 2, size)["mvp_mtx"])


@pytest.mark.parametrize("context_type", ["cuda", "gl"])
def test_nvdiffrast_matches_the_torch_rasterizer(context_type: str) -> None:
    from threestudio_like.mesh.rasterize import NvdiffrastRasterizer, TorchRasterizer

    _library("nvdiffrast.torch")
    device = _cuda()
    try:
        nv = NvdiffrastRasterizer(device, context_type)
    except Exception as error:  # the GL context needs EGL / a display
        pytest.skip(f"nvdiffrast {context_type} context unavailable: {error}")
    ref = TorchRasterizer()
    size = 96
    v, tri, pos = _sphere_clip(device, size)
    rast_t, _ = ref.rasterize(pos, tri, (size, size))
    rast_n, _ = nv.rasterize(pos, tri, (size, size))
    cov_t, cov_n = rast_t[..., 3] > 0, rast_n[..., 3] > 0
    assert float((cov_t != cov_n).float().mean()) < 2e-3  # pixel centres exactly on the outline may differ
    same = cov_t & cov_n & (rast_t[..., 3] == rast_n[..., 3])
    assert float(same.sum() / (cov_t & cov_n).sum()) > 0.99  # shared edges may go either way
    torch.testing.assert_close(rast_n[same][:, :3], rast_t[same][:, :3], atol=1e-4, rtol=0)

    normals = torch.nn.functional.normalize(v, dim=-1)[None].contiguous()
    attr_t, _ = ref.interpolate(normals, rast_t, tri)
    attr_n, _ = nv.interpolate(normals, rast_n, tri)
    torch.testing.assert_close(attr_n[same], attr_t[same], atol=1e-4, rtol=0)

    # antialiasing: the same images and silhouette gradients pointing the same way
    grads = []
    for r, rast in ((ref, rast_t), (nv, rast_n)):
        p = pos.detach().requires_grad_(True)
        mask = (rast[..., 3:] > 0).float()
        image = r.antialias(mask, rast, p, tri)
        (image * torch.linspace(0, 1, size, device=device)[None, :, None, None]).sum().backward()
        grads.append((image.detach(), p.grad.reshape(-1)))
    assert float((grads[0][0] - grads[1][0]).abs().mean()) < 1e-2
    assert float(torch.nn.functional.cosine_similarity(grads[0][1], grads[1][1], dim=0)) > 0.8

    # an empty mesh (no sign change in DMTet) never reaches the library
    empty = torch.zeros(0, 3, dtype=torch.int32, device=device)
    rast_e, _ = nv.rasterize(pos, empty, (size, size))
    assert torch.all(rast_e == 0)


def test_a_gl_context_request_still_rasterises_on_a_headless_gpu() -> None:
    import warnings

    from threestudio_like.mesh.rasterize import NvdiffrastRasterizer, make_rasterizer

    _library("nvdiffrast.torch")
    device = _cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # gl -> cuda where there is no display
        rasterizer = make_rasterizer("auto", device, "gl")
    assert isinstance(rasterizer, NvdiffrastRasterizer)
    _, tri, pos = _sphere_clip(device, 32)
    rast, _ = rasterizer.rasterize(pos, tri, (32, 32))
    assert float((rast[..., 3] > 0).float().mean()) > 0.05


def test_nerfacc_counts_as_present_only_with_its_compiled_code() -> None:
    _library("nerfacc")
    _cuda()
    problem = backends.library_problem("nerfacc")  # loads (or builds) nerfacc's CUDA code
    if problem:
        pytest.skip(problem)
    assert getattr(backends.optional_import("nerfacc.cuda._backend"), "_C", None) is not None


# --------------------------------------------------------------------------- training
def test_tiny_recipe_trains_in_16_mixed_on_cuda(tmp_path: Any) -> None:
    from threestudio_like.cli import main

    _cuda()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [
        "--config", os.path.join(root, "configs", "dreamfusion-cpu.yaml"), "--train", "--gpu", "0",
        "system.prompt_processor.prompt=a red cube", f"exp_root_dir={tmp_path}", "use_timestamp=false",
        f"system.prompt_processor.cache_dir={tmp_path}/cache", "trainer.precision=16-mixed",
        "trainer.max_steps=40", "trainer.val_check_interval=40", "data.n_test_views=4",
    ]
    assert main(args) == 0  # 1 would mean a TrainingDivergedError (a non-finite loss)
    ckpt = os.path.join(str(tmp_path), "dreamfusion-cpu", "a_red_cube", "ckpts", "last.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())
