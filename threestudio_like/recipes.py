"""The recipes shipped inside the package (``threestudio_like/configs/*.yaml``), found by name.

They live in the package, not beside it, so a non-editable install (``pip install .``) has them
too; ``--config dreamfusion-cpu`` then works from any directory.
"""

from __future__ import annotations

import os

from threestudio_like.config import ConfigError
from threestudio_like.registry import did_you_mean

RECIPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def shipped_recipes() -> list[str]:
    """Names (without ``.yaml``) of the recipes that ship with the package, sorted."""
    if not os.path.isdir(RECIPES_DIR):
        return []
    return sorted(f[: -len(".yaml")] for f in os.listdir(RECIPES_DIR) if f.endswith(".yaml"))


def find_config(name: str) -> str:
    """``name`` itself when that path exists; otherwise the shipped recipe it names.

    A bare name may carry ``.yaml`` or not (``dreamfusion-cpu``, ``dreamfusion-cpu.yaml``);
    ``configs/<name>.yaml``, the form the README uses, also finds it outside a checkout.
    Anything else is a ``ConfigError`` that suggests close names and lists the shipped recipes.
    """
    if os.path.exists(name):
        return name
    recipes = shipped_recipes()
    stem = os.path.basename(name)
    if stem.endswith(".yaml"):
        stem = stem[: -len(".yaml")]
    # Only a bare name (or the documented configs/ form) is looked up: a missing
    # "some/dir/dreamfusion-cpu.yaml" is a wrong path, and running the shipped recipe would hide it.
    if os.path.dirname(os.path.normpath(name)) in ("", "configs") and stem in recipes:
        return os.path.join(RECIPES_DIR, stem + ".yaml")
    hint = did_you_mean(stem, recipes, n=3)
    raise ConfigError(
        f"Config '{name}' is neither an existing file nor a shipped recipe.{hint} "
        f"Shipped recipes: {', '.join(recipes) or '(none found)'}."
    )
