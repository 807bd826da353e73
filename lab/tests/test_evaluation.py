"""The evaluator's geometry judge and prompt parsing (the classifier is tested with the prior)."""

import pytest
import torch

from lab import evaluation
from lab.evaluation import (
    Score,
    chamfer_to_references,
    default_prompts,
    format_table,
    parse_prompt,
    reference_shapes,
)
from threestudio_like.mesh.isosurface import extract_isosurface
from lab.priors import procedural


def test_default_prompts_cover_every_shape_and_colour():
    prompts = default_prompts()
    parsed = [parse_prompt(p) for p in prompts]
    assert {s for s, _ in parsed} == set(procedural.SHAPE_NAMES)
    assert {c for _, c in parsed} == set(procedural.COLOUR_NAMES)
    assert parse_prompt("A Red Cube, front view") == ("cube", "red")
    assert parse_prompt("a hamburger") == (None, None)


def test_chamfer_matches_each_true_shape_even_when_moved_and_rescaled():
    references = reference_shapes()
    assert set(references) == set(procedural.SHAPE_NAMES)
    bbox = torch.tensor([[-1.0] * 3, [1.0] * 3])
    for name, sdf in procedural.SHAPE_SDFS.items():
        # the same shape, 1.3x larger and off-centre, meshed at another resolution
        moved = lambda p, sdf=sdf: -sdf((p - 0.1) / 1.3)[..., None]
        distances = chamfer_to_references(extract_isosurface(moved, bbox, 72, 0.0))
        assert min(distances, key=distances.get) == name, (name, distances)


def test_table_reports_rates():
    good = Score("a red cube", "cube", "red")
    good.shape_votes.update({"cube": 7, "house": 1})
    good.colour_votes.update({"red": 8})
    good.chamfer = {"cube": 0.05, "sphere": 0.2}
    bad = Score("a blue sphere", "sphere", "blue")
    bad.shape_votes.update({"cube": 8})
    bad.colour_votes.update({"blue": 8})
    bad.chamfer = {"cube": 0.05, "sphere": 0.2}
    table = format_table([good, bad])
    assert good.correct and not bad.correct
    assert "all three 1/2 (50%)" in table and "cube 7/8" in table


def test_overrides_after_prompts_go_to_the_recipe_not_the_prompt_list(monkeypatch):
    calls = []

    def fake_train(prompts, config, overrides, out_root):
        calls.append((list(prompts), list(overrides)))
        raise SystemExit(0)  # stop before scoring: only the parsing is under test

    monkeypatch.setattr(evaluation, "train_prompts", fake_train)
    with pytest.raises(SystemExit):
        evaluation.main(["--train", "--prompts", "a red cube", "data.batch_size=2", "a blue torus", "seed=3"])
    assert calls == [(["a red cube", "a blue torus"], ["data.batch_size=2", "seed=3"])]


def test_evaluation_default_recipe_is_the_shipped_one() -> None:
    import os

    from threestudio_like.recipes import RECIPES_DIR

    assert evaluation.DEFAULT_RECIPE == os.path.join(RECIPES_DIR, "dreamfusion-cpu.yaml")
