"""ProlificDreamer's three CPU stages on the built-in prior: VSD NeRF -> DMTet geometry -> VSD texture,
ending in a textured mesh of the prompted shape and colour."""

from __future__ import annotations

import os

import pytest
import trimesh

from threestudio_like.cli import main
from lab.evaluation import evaluate_trials
from threestudio_like.guidance.models import resolve_model_path


@pytest.mark.slow
def test_builtin_prolificdreamer_three_stages_give_a_textured_mesh_of_the_prompt(tmp_path) -> None:
    prompt, tag = "a yellow cylinder", "a_yellow_cylinder"
    common = [f"system.prompt_processor.prompt={prompt}", f"exp_root_dir={tmp_path}", "use_timestamp=false",
              f"system.prompt_processor.cache_dir={tmp_path}/cache", "data.n_test_views=4"]
    stages = [
        ("prolificdreamer-cpu", ["trainer.max_steps=300", "trainer.val_check_interval=300"]),
        ("prolificdreamer-geometry-cpu", [f"system.geometry_convert_from={tmp_path}/prolificdreamer-cpu/{tag}"]),
        ("prolificdreamer-texture-cpu", [f"system.geometry_convert_from={tmp_path}/prolificdreamer-geometry-cpu/{tag}"]),
    ]
    for recipe, extra in stages:
        assert main(["--config", recipe, "--train", *common, *extra]) == 0, recipe

    trial = os.path.join(str(tmp_path), "prolificdreamer-texture-cpu", tag)
    [score] = evaluate_trials([trial], resolve_model_path("builtin:shapes32"))
    print(f"textured: shape votes {dict(score.shape_votes)}, colour votes {dict(score.colour_votes)}, "
          f"nearest shape {score.nearest_shape}")
    assert score.colour == "yellow", score.colour_votes
    assert score.nearest_shape == "cylinder", score.chamfer  # the exported mesh's shape
    assert score.shape == "cylinder", score.shape_votes  # and what the classifier sees in its renders

    glb = trimesh.load(os.path.join(trial, "save", "it200-export", "model.glb"), force="mesh")
    assert glb.visual.kind == "texture" and len(glb.faces) > 100
