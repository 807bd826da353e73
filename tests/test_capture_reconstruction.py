"""NeRF reconstruction of posed photos (``configs/nerf-capture.yaml``) end to end through the CLI:
a procedural capture rendered in the test (known shape, known cameras) and the real fox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import trimesh

from capture_fixtures import write_blender_capture
from threestudio_like.cli import main
from threestudio_like.config import ConfigError
from threestudio_like.data.capture import CaptureDataModule
from threestudio_like.mesh.isosurface import extract_isosurface
from lab.priors import procedural
from threestudio_like.experiment import find_part

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "nerf-capture.yaml")
# An object on a plain background, small images: a bounded box, white behind, a grid for 64 px photos.
OBJECT_ONLY = [
    "system.geometry.unbounded=false",
    "data.train_downsample_resolution=1",
    "data.eval_downsample_resolution=1",
    "system.geometry.pos_encoding_config.n_levels=10",
    "system.geometry.pos_encoding_config.per_level_scale=1.3",
    "system.geometry.isosurface_resolution=64",
    "system.renderer.occupancy_grid_resolution=32",
    "data.n_test_views=4",
    "trainer.enable_progress_bar=false",
    "use_timestamp=false",
]


def reconstruct(capture: Path, out: Path, *overrides: str) -> Path:
    """Train the recipe on ``capture``; returns the trial folder."""
    assert main(["--config", RECIPE, "--train", f"data.dataroot={capture}", f"exp_root_dir={out}", *overrides]) == 0
    return out / "nerf-capture" / capture.name


def held_out_metrics(trial: Path, step: int) -> dict:
    return json.loads((trial / "save" / f"it{step}-val-metrics.json").read_text())


def surface_points(vertices: torch.Tensor, faces: torch.Tensor, n: int = 4000) -> torch.Tensor:
    mesh = trimesh.Trimesh(vertices.numpy(), faces.numpy(), process=False)
    points, _ = trimesh.sample.sample_surface(mesh, n, seed=0)
    return torch.as_tensor(points, dtype=torch.float32)


def true_surface(shape: str) -> torch.Tensor:
    """Points on a procedural shape's surface (its SDF's zero level), in the capture's world."""
    bound = procedural.OBJECT_RADIUS + 0.2
    sdf = procedural.SHAPE_SDFS[shape]
    mesh = extract_isosurface(lambda p: -sdf(p)[..., None], torch.tensor([[-bound] * 3, [bound] * 3]), 96, 0.0)
    return surface_points(mesh.v_pos, mesh.t_pos_idx)


def one_way_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean distance from each point of ``a`` to the nearest point of ``b``."""
    return float(torch.cdist(a, b).min(dim=1).values.mean())


@pytest.mark.slow  # trains through the CLI (about 3 minutes)
def test_procedural_capture_reconstructs_held_out_views_and_the_shape(tmp_path) -> None:
    capture = tmp_path / "house"
    write_blender_capture(capture, shape="house", colour="red", n_views=30, size=64, holdout=6)
    steps = 700
    trial = reconstruct(
        capture, tmp_path / "outputs", *OBJECT_ONLY, f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
        "data.eval_supersample=2",  # the photos are supersampled renders: compare like with like
    )
    metrics = held_out_metrics(trial, steps)
    assert len(metrics["views"]) == 6
    assert metrics["psnr"] >= 28.0, metrics
    assert (trial / "save" / f"it{steps}-val" / "24.png").is_file()  # render | photo | error
    assert (trial / "save" / f"it{steps}-test.mp4").is_file()  # the turntable along the capture path

    # the exported mesh, mapped back to the capture's world, is the house: within 4% of its size both
    # ways, and nearer to it than to the closest other shape (the cube scores 0.050 / 0.041 against it)
    mesh = trimesh.load(trial / "save" / f"it{steps}-export" / "model.obj", force="mesh")
    data = CaptureDataModule({"dataroot": str(capture)})
    found = surface_points(data.to_capture_world(torch.as_tensor(mesh.vertices, dtype=torch.float32)), torch.as_tensor(mesh.faces))
    house, cube = true_surface("house"), true_surface("cube")
    accuracy, completeness = one_way_distance(found, house), one_way_distance(house, found)
    assert accuracy < 0.04 and completeness < 0.04, (accuracy, completeness)  # the house is 1.2 units across
    assert accuracy + completeness < one_way_distance(found, cube) + one_way_distance(cube, found)


@pytest.mark.slow  # two short runs through the CLI
def test_resumed_reconstruction_matches_the_uninterrupted_run(tmp_path, on_the_cpu) -> None:
    capture = tmp_path / "cube"
    write_blender_capture(capture, shape="cube", colour="blue", n_views=8, size=16, holdout=2)
    tiny = [*OBJECT_ONLY, "data.rays_per_batch=128", "system.renderer.num_samples_per_ray=32",
            "system.geometry.isosurface_resolution=16", "checkpoint.every_n_train_steps=2", "trainer.val_check_interval=2"]
    straight = reconstruct(capture, tmp_path / "straight", *tiny, "trainer.max_steps=4")
    first = reconstruct(capture, tmp_path / "resumed", *tiny, "trainer.max_steps=2")
    reconstruct(capture, tmp_path / "resumed", *tiny, "trainer.max_steps=4", f"resume={first / 'ckpts' / 'last.ckpt'}")
    a = torch.load(straight / "ckpts" / "last.ckpt", weights_only=True)
    b = torch.load(first / "ckpts" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resume"


def test_both_capture_recipes_build(tmp_path) -> None:
    from threestudio_like.experiment import finalize_config, load_config

    capture = tmp_path / "cube"
    write_blender_capture(capture, shape="cube", colour="blue", n_views=4, size=16, holdout=1)
    for recipe in ("nerf-capture", "nerf-capture-gpu"):
        exp = finalize_config(load_config(str(ROOT / "configs" / f"{recipe}.yaml"), cli_args=[f"data.dataroot={capture}"]))
        data = find_part(exp.data_type)(exp.data, seed=0)
        data.setup()
        system = find_part(exp.system_type)(exp.system, save_dir=str(tmp_path / recipe))
        assert system.geometry.unbounded and data.cfg.scene_radius == system.renderer.cfg.radius
        assert "rgb" in data.sampler.sample(0)


def test_ssim_loss_needs_patches(tmp_path) -> None:
    """SSIM compares neighbouring pixels: asked for on random rays, the run stops with the fix."""
    capture = tmp_path / "cube"
    write_blender_capture(capture, shape="cube", colour="blue", n_views=4, size=16, holdout=1)
    system = find_part("nerf-reconstruction-system")({"loss": {"lambda_mse": 1.0, "lambda_ssim": 1.0}, "geometry": {"backend": "torch"}})
    data = CaptureDataModule({"dataroot": str(capture), "rays_per_batch": 16, "train_downsample_resolution": 1})
    data.setup()
    with pytest.raises(ConfigError, match="patch_size"):
        system.training_step(data.sampler.sample(0), 0)
    patches = CaptureDataModule({"dataroot": str(capture), "patch_size": 12, "batch_size": 2, "train_downsample_resolution": 1})
    patches.setup()
    loss = system.training_step(patches.sampler.sample(0), 0)
    assert torch.isfinite(loss) and loss > 0


@pytest.mark.slow  # about 2.5 minutes of training on the real capture
def test_fox_capture_trains_to_a_held_out_psnr(shared_data, tmp_path) -> None:
    """The real phone capture: 17 of its 67 frames have no image; the rest reconstruct, with the
    room around the fox outside the box (unbounded), a turntable and a mesh. (The README's figure
    is the recipe's own ten minutes; this is a shorter run of it.)"""
    fox = shared_data("fox")
    steps = 150
    trial = reconstruct(
        Path(fox), tmp_path / "outputs", "use_timestamp=false", "trainer.enable_progress_bar=false",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "data.n_test_views=2",
        "data.eval_downsample_resolution=16", "data.rays_per_batch=1024", "system.geometry.isosurface_resolution=64",
    )
    metrics = held_out_metrics(trial, steps)
    assert len(metrics["views"]) == 7  # every 8th of the 50 frames with an image
    assert metrics["psnr"] >= 17.0 and metrics["ssim"] >= 0.45, metrics
    assert (trial / "save" / f"it{steps}-test.mp4").is_file()
    assert any((trial / "save" / f"it{steps}-export").glob("model.obj"))
