"""Checkpoints written before the restructuring (tests/data/old_checkpoints, commit 3e885bd) still
load, render what they rendered then, and resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from threestudio_like.cli import main
from threestudio_like.experiment import load_trained_system
from threestudio_like.trials import load_checkpoint

OLD = Path(__file__).resolve().parent / "data" / "old_checkpoints"
RECIPES = ("dreamfusion-cpu", "prolificdreamer-cpu")
# the resumed run's closing test renders and export, kept small (none of them is in the checkpoint)
SMALL_EVALUATION = ("data.eval_width=16", "data.eval_height=16", "data.n_test_views=2", "data.n_val_views=1",
                    "system.geometry.isosurface_resolution=24")


def recorded_views(expected: np.lib.npyio.NpzFile) -> dict:
    views = {k[len("view_"):]: torch.from_numpy(expected[k]) for k in expected.files if k.startswith("view_")}
    views["height"] = views["width"] = 24
    return views


@pytest.mark.parametrize("recipe", RECIPES)
def test_an_old_checkpoint_renders_what_it_rendered(recipe: str, tmp_path: Path) -> None:
    trial = shutil.copytree(OLD / recipe, tmp_path / recipe)
    expected = np.load(trial / "expected_renders.npz")
    system, _ = load_trained_system(str(trial))
    views = recorded_views(expected)
    n_particles = sum(k.startswith("particle") for k in expected.files)
    assert system.cfg.n_particles == n_particles
    with torch.no_grad():
        for k in range(n_particles):
            rgb = system.particle(k).renderer(**views)["comp_rgb"].numpy()
            np.testing.assert_allclose(rgb, expected[f"particle{k}"], atol=1e-5)


def test_an_old_checkpoint_resumes(tmp_path: Path) -> None:
    trial = shutil.copytree(OLD / "prolificdreamer-cpu", tmp_path / "old")
    ckpt = trial / "ckpts" / "last.ckpt"
    before = load_checkpoint(str(ckpt))
    rc = main(["--config", str(trial / "configs" / "parsed.yaml"), "--train", f"resume={ckpt}", "trainer.max_steps=3",
               f"exp_root_dir={tmp_path}",])
    assert rc == 0
    after = load_checkpoint(str(ckpt))
    assert (before["global_step"], after["global_step"]) == (2, 3)
    changed = [k for k, v in before["state_dict"].items() if not torch.equal(v, after["state_dict"][k])]
    assert any(k.startswith("guidance.lora") for k in changed) and any(k.startswith("particles.1.") for k in changed)
