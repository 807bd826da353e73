"""Magic3D's two CPU stages on the built-in prior: the refined, textured mesh keeps the prompt."""

from __future__ import annotations

import os

import pytest
import torch

from threestudio_like.cli import main
from threestudio_like.experiment import finalize_config, load_config
from lab.evaluation import evaluate_trials
from threestudio_like.export.fidelity import export_fidelity
from threestudio_like.guidance.models import resolve_model_path
from threestudio_like.experiment import find_part
from threestudio_like.data.cameras import orbit_views
from threestudio_like.systems.handover import compare_renders
from threestudio_like.experiment import load_trained_system

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COARSE = os.path.join(ROOT, "configs", "magic3d-coarse-cpu.yaml")
REFINE = os.path.join(ROOT, "configs", "magic3d-refine-cpu.yaml")


@pytest.mark.slow
def test_builtin_magic3d_refines_a_textured_mesh_of_the_prompt(tmp_path) -> None:
    prompt = "a yellow cylinder"
    common = [f"system.prompt_processor.prompt={prompt}", f"exp_root_dir={tmp_path}",
              f"system.prompt_processor.cache_dir={tmp_path}/cache", "data.n_test_views=8"]
    assert main(["--config", COARSE, "--train", *common, "trainer.max_steps=300", "trainer.val_check_interval=300"]) == 0
    coarse = os.path.join(str(tmp_path), "magic3d-coarse-cpu", "a_yellow_cylinder@LAST")
    refine_args = [*common, f"system.geometry_convert_from={coarse}", "trainer.max_steps=150", "trainer.val_check_interval=150"]

    # the refine stage starts from what the coarse stage rendered
    coarse_system, coarse_exp = load_trained_system(coarse)
    exp = finalize_config(load_config(REFINE, cli_args=refine_args))
    start = find_part(exp.system_type)(exp.system).eval()
    with torch.no_grad():
        handover = compare_renders(coarse_system, start, orbit_views(coarse_exp.data, 8, 64))
    print(f"hand-over: {handover}")
    assert handover["silhouette_iou"] > 0.9 and handover["psnr_albedo"] > 18.0

    assert main(["--config", REFINE, "--train", *refine_args]) == 0
    refine = os.path.join(str(tmp_path), "magic3d-refine-cpu")
    [trial] = [os.path.join(refine, d) for d in os.listdir(refine)]
    [score] = evaluate_trials([trial], resolve_model_path("builtin:shapes32"))
    print(f"refined: shape votes {dict(score.shape_votes)}, colour votes {dict(score.colour_votes)}")
    assert score.colour == "yellow", score.colour_votes

    system, exp = load_trained_system(trial)
    export = os.path.join(trial, "save", "it150-export", "model.glb")
    fidelity, _ = export_fidelity(system, export, orbit_views(exp.data, 8, 96))
    print(f"export fidelity: {fidelity:.1f} dB")
    assert fidelity > 25.0
