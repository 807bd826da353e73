"""The DreamFusion recipe end to end through the CLI, on a tiny random model built in the test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import trimesh

from cpu_only import cuda_hidden
from recipe_overrides import RECIPE, tiny_recipe
from threestudio_like.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(model_dir: str, out_dir: str, **extra: object) -> str:
    """Run ``--train`` on the CPU (runs here are compared bit for bit: ``cuda_hidden``); returns the trial directory."""
    args = tiny_recipe(model_dir, out_dir, **extra)
    with cuda_hidden():
        assert main(["--config", os.path.join(ROOT, RECIPE), "--train", *args]) == 0
    return os.path.join(out_dir, "outputs", "dreamfusion-sd", "a_red_cube")


def load_ckpt(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train"))
    return train(tiny_model_dir, out, **{"trainer.max_steps": 4})


@pytest.mark.slow  # trains through the CLI
def test_training_writes_run_outputs(trained):
    assert os.path.isfile(os.path.join(trained, "configs", "parsed.yaml"))
    assert os.path.isfile(os.path.join(trained, "ckpts", "last.ckpt"))
    save = os.path.join(trained, "save")
    assert {"it2-0.png", "it4-0.png"} <= set(os.listdir(save))  # validation every 2 steps
    assert any(f.startswith("it4-test.") for f in os.listdir(save))  # turntable video
    assert len(os.listdir(os.path.join(save, "it4-test"))) == 4
    with open(os.path.join(trained, "csv_logs", "metrics.csv")) as f:
        header = f.readline()
    assert "train/loss_sds" in header and "train/loss" in header
    ckpt = load_ckpt(os.path.join(trained, "ckpts", "last.ckpt"))
    assert ckpt["global_step"] == 4
    # frozen diffusion weights never enter checkpoints
    assert not any(k.startswith(("guidance", "_guidance")) for k in ckpt["state_dict"]), list(ckpt["state_dict"])[:5]
    assert all(k.split(".")[0] in {"geometry", "material", "background", "renderer"} for k in ckpt["state_dict"])


@pytest.mark.slow  # trains through the CLI
def test_resume_matches_uninterrupted_run(tiny_model_dir, trained, tmp_path):
    first = train(tiny_model_dir, str(tmp_path), **{"trainer.max_steps": 2})
    ckpt = os.path.join(first, "ckpts", "last.ckpt")
    assert load_ckpt(ckpt)["global_step"] == 2
    train(tiny_model_dir, str(tmp_path), **{"trainer.max_steps": 4, "resume": ckpt})
    resumed = load_ckpt(os.path.join(first, "ckpts", "last.ckpt"))  # same trial folder
    straight = load_ckpt(os.path.join(trained, "ckpts", "last.ckpt"))
    assert resumed["global_step"] == straight["global_step"] == 4
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), f"{key} differs after resume"
    adam_a = straight["optimizer_states"][0]["state"]
    adam_b = resumed["optimizer_states"][0]["state"]
    for index in adam_a:
        assert torch.equal(adam_a[index]["exp_avg_sq"], adam_b[index]["exp_avg_sq"])


@pytest.mark.slow  # trains through the CLI
def test_export_writes_loadable_meshes(tiny_model_dir, trained, tmp_path):
    args = tiny_recipe(tiny_model_dir, str(tmp_path), resume=os.path.join(trained, "ckpts", "last.ckpt"))
    assert main(["--config", os.path.join(ROOT, RECIPE), "--export", *args]) == 0
    folder = os.path.join(trained, "save", "it4-export")
    obj = trimesh.load(os.path.join(folder, "model.obj"), force="mesh")
    glb = trimesh.load(os.path.join(folder, "model.glb"), force="mesh")
    assert len(obj.faces) > 0 and len(glb.faces) == len(obj.faces)
    obj.merge_vertices(merge_tex=True)  # vertices are split along UV seams; welded, the surface is closed
    assert obj.is_watertight
    assert os.path.isfile(os.path.join(folder, "model.mtl")) and os.path.isfile(os.path.join(folder, "model_albedo.png"))
    assert isinstance(glb.visual, trimesh.visual.TextureVisuals) and glb.visual.material.baseColorTexture is not None


@pytest.mark.slow  # trains through the CLI
def test_export_without_texture_writes_vertex_colours(tiny_model_dir, trained, tmp_path):
    args = tiny_recipe(
        tiny_model_dir, str(tmp_path), resume=os.path.join(trained, "ckpts", "last.ckpt"),
        **{"system.exporter.save_texture": "false", "system.exporter.save_name": "plain"},
    )
    assert main(["--config", os.path.join(ROOT, RECIPE), "--export", *args]) == 0
    glb = trimesh.load(os.path.join(trained, "save", "it4-export", "plain.glb"), force="mesh")
    assert glb.is_watertight and glb.visual.kind == "vertex"
    assert glb.visual.vertex_colors.shape[0] == len(glb.vertices)


@pytest.mark.slow  # trains through the CLI
def test_validate_and_test_modes_render_from_checkpoint(tiny_model_dir, trained, tmp_path):
    args = tiny_recipe(tiny_model_dir, str(tmp_path), resume=os.path.join(trained, "ckpts", "last.ckpt"))
    assert main(["--config", os.path.join(ROOT, RECIPE), "--validate", *args]) == 0
    assert os.path.isfile(os.path.join(trained, "save", "it4-0.png"))


@pytest.mark.slow  # trains through the CLI
def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tiny_model_dir, tmp_path, capsys):
    # the SDS weight turns NaN at step 4; checkpoints were written at steps 2 and 4
    args = tiny_recipe(
        tiny_model_dir, str(tmp_path), **{"trainer.max_steps": 8, "system.loss.lambda_sds": "[[0,1.0],[3,1.0],[4,.nan]]"}
    )
    assert main(["--config", os.path.join(ROOT, RECIPE), "--train", *args]) == 1
    err = capsys.readouterr().err
    assert "nan" in err.lower() and "step 4" in err
    ckpt = load_ckpt(os.path.join(str(tmp_path), "outputs", "dreamfusion-sd", "a_red_cube", "ckpts", "last.ckpt"))
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_missing_model_fails_fast_with_advice(tmp_path, capsys):
    args = tiny_recipe("no-such-org/no-such-model", str(tmp_path))
    start = time.time()
    assert main(["--config", os.path.join(ROOT, RECIPE), "--train", *args]) == 2
    err = capsys.readouterr().err
    assert "no-such-org/no-such-model" in err and "download" in err.lower()
    assert time.time() - start < 60
    assert not os.path.exists(os.path.join(str(tmp_path), "outputs", "dreamfusion-sd", "a_red_cube", "ckpts"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("system.guidance.guidance_scal=7", "Did you mean 'system.guidance.guidance_scale'"),
        ("system.renderer_type=nerf-volume-render", "Did you mean 'nerf-volume-renderer'"),
        ("trainer.max_steps=many", "trainer"),
    ],
)
def test_cli_reports_config_errors(tmp_path, capsys, override, message):
    args = tiny_recipe("unused", str(tmp_path))
    code = main(["--config", os.path.join(ROOT, RECIPE), "--train", *args, override])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_saves_checkpoint_and_runs_test_stage(tiny_model_dir, tmp_path):
    args = tiny_recipe(tiny_model_dir, str(tmp_path), **{"trainer.max_steps": 100000, "trainer.val_check_interval": 100000})
    log = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "threestudio_like.cli", "--config", os.path.join(ROOT, RECIPE), "--train", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
    )
    deadline = time.time() + 180
    steps = 0
    while time.time() < deadline and steps < 3:
        time.sleep(0.5)
        found = re.findall(r"(\d+)/100000", open(tmp_path / "stderr.txt").read())
        steps = int(found[-1]) if found else 0
    assert steps >= 3, "training did not start"
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, stdout  # interrupted, not finished: scripts can tell
    trial = os.path.join(str(tmp_path), "outputs", "dreamfusion-sd", "a_red_cube")
    ckpt = load_ckpt(os.path.join(trial, "ckpts", "last.ckpt"))
    assert 3 <= ckpt["global_step"] < 100000
    assert any(f.endswith("-test.mp4") or f.endswith("-test.gif") for f in os.listdir(os.path.join(trial, "save")))
    assert "Interrupted at step" in stdout


@pytest.mark.slow  # trains through the CLI
def test_system_weights_initialise_a_fresh_run(tiny_model_dir, trained, tmp_path):
    from threestudio_like.experiment import finalize_config, load_config
    from threestudio_like.experiment import find_part

    ckpt = os.path.join(trained, "ckpts", "last.ckpt")
    args = tiny_recipe(tiny_model_dir, str(tmp_path), **{"system.weights": ckpt, "system.weights_ignore_modules": "[background]"})
    exp = finalize_config(load_config(os.path.join(ROOT, RECIPE), cli_args=args))
    system = find_part(exp.system_type)(exp.system)
    saved = load_ckpt(ckpt)["state_dict"]
    assert torch.equal(system.state_dict()["geometry.encoding.params"], saved["geometry.encoding.params"])
    background = [k for k in saved if k.startswith("background.")]
    assert background and not all(torch.equal(system.state_dict()[k], saved[k]) for k in background)


@pytest.mark.slow  # trains through the CLI
def test_last_checkpoint_holds_the_final_step(tiny_model_dir, tmp_path):
    """max_steps need not be a multiple of the checkpoint interval: the last steps are kept."""
    trial = train(tiny_model_dir, str(tmp_path), **{"trainer.max_steps": 3, "checkpoint.every_n_train_steps": 2})
    assert load_ckpt(os.path.join(trial, "ckpts", "last.ckpt"))["global_step"] == 3
