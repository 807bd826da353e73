"""What the wheel holds: the library, its recipes and the built-in priors' run-time files; never the lab.

``lab/`` (the evaluator, classifiers and view heads, the Janus measure, the SDS / VSD comparison,
the prior-training code and their weights) lives beside the package and is not installed.
"""

from __future__ import annotations

import ast
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(ROOT, "threestudio_like")
BUILTIN_PRIORS = ("shapes32", "shapes32-mv", "edit32")
# What guidance/models.py and the prompt processor read from a built-in prior, and all a prior ships.
RUN_TIME_FILES = (
    "model_index.json", "known_words.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
    "scheduler/scheduler_config.json",
)
RUN_TIME_ENTRIES = {"model_index.json", "known_words.json", "unet", "text_encoder", "tokenizer", "scheduler", "vae"}
# The modules that moved to lab/ (issue 30): none may come back into the package under its old name.
LAB_MODULES = {
    "janus", "janus_floor", "comparison", "evaluation", "classifier", "view_head", "train_classifier", "train_view_head",
    "train_prior", "prior_model", "procedural", "edit_pairs", "sample_eval", "edit_eval", "nerf_views", "install_prior",
}


def package_sources() -> list[str]:
    return sorted(glob.glob(os.path.join(PACKAGE_DIR, "**", "*.py"), recursive=True))


def test_the_package_never_imports_the_lab() -> None:
    offenders = []
    for path in package_sources():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{os.path.relpath(path, ROOT)}:{node.lineno} imports {n}" for n in names if n == "lab" or n.startswith("lab.")]
    assert not offenders, offenders


def test_no_lab_module_is_left_in_the_package() -> None:
    left = [os.path.relpath(p, ROOT) for p in package_sources() if os.path.splitext(os.path.basename(p))[0] in LAB_MODULES]
    assert not left, f"lab modules inside the package (they belong in lab/): {left}"


def test_package_data_ships_only_run_time_prior_files() -> None:
    """Everything under priors/weights ships (package-data globs it), so only run-time files may be there."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    assert setuptools["packages"]["find"]["include"] == ["threestudio_like*"]  # lab/ is not a package of the wheel
    assert set(setuptools["package-data"]) == {"threestudio_like"}
    weights = os.path.join(PACKAGE_DIR, "priors", "weights")
    assert sorted(os.listdir(weights)) == sorted(BUILTIN_PRIORS)
    for name in BUILTIN_PRIORS:
        extra = set(os.listdir(os.path.join(weights, name))) - RUN_TIME_ENTRIES
        assert not extra, f"{name}: {sorted(extra)} are read only by the lab: they belong in lab/weights/{name}"


def build_wheel(tmp_path) -> str:
    # Built from a clean copy: setuptools builds in the source tree, and a build/ folder left
    # there by an earlier build keeps modules since deleted, which would then ship too.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "outputs", "*.egg-info", "__pycache__", "node_modules", ".pytest_cache", ".threestudio_cache"))
    # the installed setuptools when there is one (no download); else pip fetches it, as `pip install .` does
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    (wheel,) = glob.glob(str(tmp_path / "dist" / "*.whl"))
    return wheel


@pytest.mark.slow  # builds the real wheel (what `pip install .` installs): ~10 s
def test_wheel_holds_the_library_recipes_and_prior_run_time_files_only(tmp_path) -> None:
    wheel = build_wheel(tmp_path)
    names = [n for n in zipfile.ZipFile(wheel).namelist() if not n.endswith("/")]
    metadata = [n for n in names if n.split("/")[0].endswith(".dist-info")]
    files = [n for n in names if n not in metadata]

    # no lab file, and no module named like the lab's
    assert all(n.startswith("threestudio_like/") for n in files), [n for n in files if not n.startswith("threestudio_like/")]
    assert not [n for n in files if "/lab/" in n or n.startswith("lab/")]
    assert not [n for n in files if n.endswith(".py") and os.path.splitext(os.path.basename(n))[0] in LAB_MODULES]
    assert not [n for n in files if n.endswith((".png", ".csv"))], "sample sheets and training logs are the lab's"

    # every module of the package, and nothing else that is code
    modules = {n for n in files if n.endswith(".py")}
    assert modules == {os.path.relpath(p, ROOT) for p in package_sources()}

    # the recipes
    recipes = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(PACKAGE_DIR, "configs", "*.yaml"))}
    assert recipes and recipes <= set(files)

    # the built-in priors: their run-time files, and no other weights
    weights = [n for n in files if n.startswith("threestudio_like/priors/weights/")]
    for name in BUILTIN_PRIORS:
        for part in RUN_TIME_FILES:
            assert f"threestudio_like/priors/weights/{name}/{part}" in weights, f"{name}/{part} missing from the wheel"
    stray = [n for n in weights if n.split("/")[4] not in RUN_TIME_ENTRIES]
    assert not stray, f"weights the recipes never load: {stray}"

    # nothing but modules, recipes and prior weights
    other = [n for n in files if not (n in modules or n in recipes or n in weights)]
    assert not other, other
