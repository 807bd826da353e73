"""Parts from outside the package: an installed extension registers a background through the
``threestudio_like.parts`` entry points, or a config names its module under ``extensions:``, and a
recipe that names the part trains with it."""

from __future__ import annotations

import os
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from recipe_overrides import RECIPE, tiny_recipe
from threestudio_like.cli import main
from threestudio_like.experiment import ENTRY_POINT_GROUP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GREEN = (0.0, 1.0, 0.0)


def write_extension(site: str, package: str, entry_point: bool) -> None:
    """A package with a registered background in ``site``, installed as pip would leave it
    (with a ``.dist-info`` holding its entry points) when ``entry_point``."""
    os.makedirs(os.path.join(site, package))
    open(os.path.join(site, package, "__init__.py"), "w").close()
    with open(os.path.join(site, package, "parts.py"), "w") as f:
        f.write(textwrap.dedent(f"""
            from dataclasses import dataclass, field
            from typing import Optional

            from threestudio_like.backgrounds import NeuralEnvironmentMapBackground
            from threestudio_like.registry import register


            @register("{package}-green-background")
            class GreenBackground(NeuralEnvironmentMapBackground):
                # the recipe's learned background, seen as plain green in the test views

                @dataclass
                class Config(NeuralEnvironmentMapBackground.Config):
                    eval_color: Optional[list] = field(default_factory=lambda: {list(GREEN)})
        """))
    if entry_point:
        info = os.path.join(site, f"{package}-0.1.dist-info")
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
        with open(os.path.join(info, "entry_points.txt"), "w") as f:
            f.write(f"[{ENTRY_POINT_GROUP}]\nparts = {package}.parts\n")


def background_of_test_views(out: str) -> np.ndarray:
    save = os.path.join(out, "outputs", "dreamfusion-sd", "a_red_cube", "save")
    folder = os.path.join(save, next(f for f in os.listdir(save) if f.endswith("-test") and os.path.isdir(os.path.join(save, f))))
    image = np.asarray(Image.open(os.path.join(folder, "0.png")).convert("RGB"), dtype=np.float32) / 255.0
    return image[0, : image.shape[0]].reshape(-1, 3).mean(0)  # the top row of the rgb tile: background only


@pytest.mark.slow
@pytest.mark.parametrize("how", ["entry point", "extensions key"])
def test_a_part_from_an_extension_trains(tiny_model_dir, tmp_path, monkeypatch, how) -> None:
    package = "tsl_demo_" + how.split()[0]
    write_extension(str(tmp_path / "site"), package, entry_point=how == "entry point")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    extra = {"system.background_type": f"{package}-green-background", "trainer.max_steps": 2}
    if how == "extensions key":
        extra["extensions"] = f"[{package}.parts]"
    out = str(tmp_path / "run")
    assert main(["--config", os.path.join(ROOT, RECIPE), "--train", *tiny_recipe(tiny_model_dir, out, **extra)]) == 0
    assert np.allclose(background_of_test_views(out), GREEN, atol=0.05)
    sys.modules.pop(f"{package}.parts", None)


def test_an_extension_module_that_does_not_import_is_one_line(tmp_path, capsys) -> None:
    args = tiny_recipe("unused", str(tmp_path), extensions="[no_such_pkg.parts]")
    assert main(["--config", os.path.join(ROOT, RECIPE), "--train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "extensions: cannot import the module 'no_such_pkg.parts'" in err and len(err.splitlines()) == 1
