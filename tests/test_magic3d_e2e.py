"""Magic3D's two stages through the CLI on a tiny model: NeRF -> DMTet hand-over -> textured mesh."""

from __future__ import annotations

import os

import pytest
import torch
import trimesh

from gltf_validation import gltf_report
from recipe_overrides import tiny_recipe
from threestudio_like.cli import main
from threestudio_like.experiment import finalize_config, load_config
from threestudio_like.data.random_camera import OrbitCameraDataset
from threestudio_like.export.fidelity import export_fidelity
from threestudio_like.experiment import find_part
from threestudio_like.data.cameras import orbit_views
from threestudio_like.experiment import load_trained_system
from threestudio_like.utils.metrics import psnr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COARSE = os.path.join(ROOT, "configs", "magic3d-coarse-sd.yaml")
REFINE = os.path.join(ROOT, "configs", "magic3d-refine-sd.yaml")


def stage_args(model_dir: str, out_dir: str, refine: bool, **extra: object) -> list[str]:
    if not refine:
        # a sharp density, as a trained NeRF has: its surface at level 25 is where it renders opaque
        extra = {"system.geometry.density_blob_scale": 1000.0, "system.geometry.isosurface_threshold": 25.0, **extra}
    args = tiny_recipe(model_dir, out_dir, **{"system.geometry.radius": 1.0, **extra})
    if refine:  # the mesh stage has no ray samples; its grid resolution is its mesh resolution
        args = [a for a in args if not a.startswith("system.renderer.num_samples_per_ray=")]
    return args


@pytest.fixture(scope="module")
def coarse(tiny_model_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("magic3d"))
    args = stage_args(tiny_model_dir, out, refine=False, use_timestamp="true", **{"trainer.max_steps": 4})
    assert main(["--config", COARSE, "--train", *args]) == 0
    return out


def build_system(config: str, args: list[str], resumed: bool):
    exp = finalize_config(load_config(config, cli_args=args))
    return find_part(exp.system_type)(exp.system, resumed=resumed).eval()


@pytest.mark.slow  # trains both stages through the CLI
@torch.no_grad()
def test_refine_starts_from_the_coarse_result(tiny_model_dir, coarse) -> None:
    last = os.path.join(coarse, "outputs", "magic3d-coarse-sd", "a_red_cube@LAST")
    coarse_system = build_system(COARSE, stage_args(tiny_model_dir, coarse, refine=False), resumed=True)
    ckpt = torch.load(os.path.join(_newest_trial(coarse), "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)
    coarse_system.load_state_dict(ckpt["state_dict"])
    refine_args = stage_args(tiny_model_dir, coarse, refine=True, **{"system.geometry_convert_from": last})
    refine_system = build_system(REFINE, refine_args, resumed=False)
    assert type(refine_system.geometry).__name__ == "TetrahedraSDFGrid"
    views = OrbitCameraDataset(4, elevation_deg=20.0, camera_distance=2.0, fovy_deg=60.0, height=48, width=48, batch_size=4)[0]
    a = coarse_system(views)
    b = refine_system(views)
    value = psnr(a["comp_rgb"], b["comp_rgb"])
    inside_a, inside_b = a["opacity"] > 0.5, b["opacity"] > 0.5
    iou = float((inside_a & inside_b).sum() / (inside_a | inside_b).sum().clamp_min(1))
    print(f"hand-over: PSNR {value:.1f} dB, silhouette IoU {iou:.3f}")
    assert iou > 0.85 and value > 20.0
    # the texture came along: the same features at the surface, and the same material / background
    points = refine_system.geometry.isosurface().v_pos
    assert torch.equal(refine_system.geometry(points)["features"], coarse_system.geometry(points)["features"])
    for name in ("material", "background"):
        ours, theirs = getattr(refine_system, name).state_dict(), getattr(coarse_system, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    fresh = build_system(REFINE, refine_args + ["system.geometry_convert_inherit_texture=false"], resumed=False)
    assert not torch.equal(fresh.geometry(points)["features"], coarse_system.geometry(points)["features"])


def _newest_trial(out: str) -> str:
    folder = os.path.join(out, "outputs", "magic3d-coarse-sd")
    return os.path.join(folder, sorted(os.listdir(folder))[-1])


@pytest.mark.slow  # trains both stages through the CLI
def test_refine_trains_and_exports_a_textured_mesh(tiny_model_dir, coarse) -> None:
    last = os.path.join(coarse, "outputs", "magic3d-coarse-sd", "a_red_cube@LAST")
    args = stage_args(
        tiny_model_dir,
        coarse,
        refine=True,
        **{
            "system.geometry_convert_from": last,
            "system.loss.lambda_laplacian_smoothness": 1.0,
            "system.exporter.texture_size": 128,
        },
    )
    assert main(["--config", REFINE, "--train", *args]) == 0
    trial = os.path.join(coarse, "outputs", "magic3d-refine-sd", "a_red_cube")
    with open(os.path.join(trial, "csv_logs", "metrics.csv")) as f:
        header = f.readline()
    assert "train/loss_normal_consistency" in header and "train/loss_laplacian_smoothness" in header
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4 and "geometry.sdf" in ckpt["state_dict"]

    export = os.path.join(trial, "save", "it4-export")
    assert {"model.obj", "model.mtl", "model_albedo.png", "model.glb"} <= set(os.listdir(export))
    obj = trimesh.load(os.path.join(export, "model.obj"), force="mesh")
    glb = trimesh.load(os.path.join(export, "model.glb"), force="mesh")
    assert isinstance(obj.visual, trimesh.visual.TextureVisuals) and len(obj.faces) > 0
    assert glb.visual.material.baseColorTexture is not None and len(glb.faces) == len(obj.faces)
    # the files, as loaded back, render like the trained model
    system, exp = load_trained_system(trial)
    views = orbit_views(exp.data, 4, 48)
    for name in ("model.obj", "model.glb"):
        mean, _ = export_fidelity(system, os.path.join(export, name), views)
        print(f"export fidelity {name}: PSNR {mean:.1f} dB")
        assert mean > 25.0

    # resuming the refine stage reuses its checkpoint; the coarse stage is not converted again
    resumed = stage_args(
        tiny_model_dir, coarse, refine=True,
        **{"system.geometry_convert_from": last, "resume": os.path.join(trial, "ckpts", "last.ckpt"), "trainer.max_steps": 6},
    )
    assert main(["--config", REFINE, "--train", *resumed]) == 0
    assert torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)["global_step"] == 6
    # last: without the validator (outside CI) this skips, and must not skip the checks above
    report = gltf_report(os.path.join(export, "model.glb"))
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]


def test_missing_previous_stage_is_a_clear_error(tiny_model_dir, tmp_path, capsys) -> None:
    args = stage_args(tiny_model_dir, str(tmp_path), refine=True, **{"system.geometry_convert_from": str(tmp_path / "nope@LAST")})
    assert main(["--config", REFINE, "--train", *args]) == 2
    assert "no trial matches" in capsys.readouterr().err
