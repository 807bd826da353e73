"""Shipped recipes: they live in the package (so a wheel has them) and are found by bare name."""

from __future__ import annotations

import fnmatch
import glob
import os
import tomllib

import pytest

import threestudio_like
from threestudio_like.config import ConfigError
from threestudio_like.recipes import RECIPES_DIR, find_config, shipped_recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.dirname(os.path.abspath(threestudio_like.__file__))
RECIPES = [
    "dreamfusion-cpu", "dreamfusion-sd", "instructnerf2nerf", "instructnerf2nerf-cpu", "magic3d-coarse-cpu", "magic3d-coarse-sd", "magic3d-refine-cpu", "magic3d-refine-sd",
    "mvdream-cpu", "mvdream-sd21", "mvdream-sd21-shading", "nerf-capture", "nerf-capture-gpu",
    "prolificdreamer", "prolificdreamer-cpu", "prolificdreamer-geometry", "prolificdreamer-geometry-cpu",
    "prolificdreamer-texture", "prolificdreamer-texture-cpu",
]


def test_recipes_live_inside_the_package() -> None:
    assert os.path.dirname(RECIPES_DIR) == PACKAGE_DIR
    assert shipped_recipes() == RECIPES
    # the root configs/ is a link into the package, so documented paths keep working
    assert os.path.samefile(os.path.join(ROOT, "configs"), RECIPES_DIR)


def test_package_data_covers_recipes_and_prior_weights() -> None:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["threestudio_like"]

    def shipped(rel: str) -> bool:
        # setuptools globs "**" across folders; fnmatch's "*" also crosses "/", which is enough here
        return any(fnmatch.fnmatch(rel, p.replace("**/", "")) or fnmatch.fnmatch(rel, p) for p in patterns)

    data = [
        os.path.relpath(p, PACKAGE_DIR)
        for p in glob.glob(os.path.join(PACKAGE_DIR, "configs", "*")) + glob.glob(os.path.join(PACKAGE_DIR, "priors", "weights", "**", "*"), recursive=True)
        if os.path.isfile(p)
    ]
    assert len([d for d in data if d.startswith("configs")]) == len(RECIPES)
    missing = [d for d in data if not shipped(d)]
    assert not missing, f"not covered by package-data: {missing}"


@pytest.mark.parametrize("name", ["dreamfusion-cpu", "dreamfusion-cpu.yaml", "configs/dreamfusion-cpu.yaml"])
def test_find_config_by_name_from_any_directory(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here: as after a non-editable install
    path = find_config(name)
    assert path == os.path.join(RECIPES_DIR, "dreamfusion-cpu.yaml")
    assert os.path.isfile(path)


def test_find_config_returns_an_existing_path_unchanged(tmp_path) -> None:
    own = tmp_path / "dreamfusion-cpu.yaml"  # shadows the shipped name: the user's file wins
    own.write_text("name: mine\n")
    assert find_config(str(own)) == str(own)


def test_unknown_recipe_suggests_close_names_and_lists_all() -> None:
    with pytest.raises(ConfigError) as err:
        find_config("dreamfusion-cuda")
    message = str(err.value)
    assert "Did you mean 'dreamfusion-cpu'" in message
    for recipe in RECIPES:
        assert recipe in message


def test_a_missing_explicit_path_is_not_replaced_by_a_shipped_recipe(tmp_path) -> None:
    with pytest.raises(ConfigError, match="neither an existing file"):
        find_config(str(tmp_path / "experiments" / "dreamfusion-cpu.yaml"))


# The wheel's contents (recipes, the built-in priors' run-time files, no lab file): test_packaging.py
