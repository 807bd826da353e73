"""A real text-to-3D run on the built-in prior: the result must have the prompt's colour.

This is the project's end-to-end check that a user gets what they typed, with no downloads.
"""

from __future__ import annotations

import os

import pytest
import torch

from export_checks import assert_export_is_the_object
from threestudio_like.cli import main
from lab.evaluation import evaluate_trials, render_views
from threestudio_like.guidance.models import resolve_model_path
from lab.priors.procedural import COLOURS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "dreamfusion-cpu.yaml")


@pytest.mark.slow
# one prompt: each costs about 5 minutes of CI; `python -m lab.evaluation --train` scores them all
@pytest.mark.parametrize("colour, shape", [("blue", "sphere")])
def test_builtin_recipe_gives_the_prompted_colour(tmp_path, capsys, colour, shape):
    prompt = f"a {colour} {shape}"
    args = [
        "--config", RECIPE, "--train", f"system.prompt_processor.prompt={prompt}",
        f"exp_root_dir={tmp_path}", "use_timestamp=false", f"system.prompt_processor.cache_dir={tmp_path}/cache",
        "trainer.max_steps=200", "data.n_test_views=8", "trainer.val_check_interval=200",
    ]
    assert main(args) == 0
    trial = os.path.join(str(tmp_path), "dreamfusion-cpu", prompt.replace(" ", "_"))
    assert_export_is_the_object(trial, capsys.readouterr().out)
    assert any(f.endswith("-test.mp4") for f in os.listdir(os.path.join(trial, "save")))
    [score] = evaluate_trials([trial], resolve_model_path("builtin:shapes32"))
    assert score.colour == colour, score.colour_votes

    # and independently of the classifier: the object's pixels are nearest the prompted albedo
    from lab.evaluation import load_trial

    system, _ = load_trial(trial)
    images = render_views(system)  # [V, 3, 32, 32] on white
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3)
    foreground = pixels[(pixels < 0.9).any(-1)]
    assert len(foreground) > 0.05 * len(pixels), "no object in the renders"
    mean = foreground.mean(0)
    palette = {name: torch.tensor(rgb) for name, rgb in COLOURS.items()}
    hue = lambda c: c / c.sum().clamp_min(1e-6)  # compare chromaticity: shading darkens, it does not change hue
    nearest = min(palette, key=lambda name: (hue(palette[name]) - hue(mean)).norm())
    assert nearest == colour, (mean, nearest)
