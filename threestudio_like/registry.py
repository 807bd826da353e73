"""One string registry for every swappable part (geometry, renderer, guidance, ...).

Configs name parts by string (``geometry_type: implicit-volume``); ``find`` turns the
string back into the class, and an unknown name fails with the closest registered names.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import warnings
from typing import Callable, Iterable, TypeVar

T = TypeVar("T", bound=type)

_REGISTRY: dict[str, type] = {}


class UnknownTypeError(KeyError):
    """A config named a part type that nothing registered."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def register(*names: str) -> Callable[[T], T]:
    """Class decorator: ``@register("implicit-volume", "alias")``."""

    def decorate(cls: T) -> T:
        for name in names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise ValueError(f"type name '{name}' is registered twice ({_REGISTRY[name]} and {cls})")
            _REGISTRY[name] = cls
        return cls

    return decorate


def close_matches(word: str, options: list[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, options, n=n, cutoff=0.5)


def did_you_mean(word: str, options: Iterable[str], prefix: str = "", n: int = 1) -> str:
    """`` Did you mean 'prefix.option'?`` for the closest of ``options`` (up to ``n``), or ``""``;
    every "unknown name" message builds its hint here."""
    matches = close_matches(str(word), [str(o) for o in options], n=n)
    if not matches:
        return ""
    named = " or ".join(f"'{prefix}{m}'" for m in matches)
    return f" Did you mean {named}?"


def find(name: str, key_path: str = "") -> type:
    """The class registered as ``name``; ``key_path`` (e.g. ``system.geometry_type``) goes into the error.
    A name not registered yet is looked for in the installed extensions too."""
    _import_all_parts()
    if name not in _REGISTRY:
        import_installed_extensions()
    if name in _REGISTRY:
        return _REGISTRY[name]
    where = f" (at {key_path})" if key_path else ""
    hint = did_you_mean(name, sorted(_REGISTRY), n=3)
    raise UnknownTypeError(
        f"Unknown type name '{name}'{where}.{hint} Registered types: {', '.join(sorted(_REGISTRY))}."
    )


def registered_names() -> list[str]:
    _import_all_parts()
    import_installed_extensions()
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------- extensions
ENTRY_POINT_GROUP = "threestudio_like.parts"
"""An installed package adds parts by naming a module in this entry-point group, e.g. in its
pyproject.toml: ``[project.entry-points."threestudio_like.parts"] my_parts = "my_pkg.parts"``."""

_imported_entry_points: set[str] = set()


def import_installed_extensions() -> None:
    """Import the modules installed packages list under ``ENTRY_POINT_GROUP`` (their
    ``@register`` decorators run); each once. A broken one is a warning, not a failure of every run."""
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.value in _imported_entry_points:
            continue
        _imported_entry_points.add(entry_point.value)
        try:
            entry_point.load()
        except Exception as error:  # an extension's bug must not stop runs that do not use it
            warnings.warn(f"the extension {entry_point.name} ({entry_point.value}) failed to import and is skipped: "
                          f"{type(error).__name__}: {error}")


def import_extension_modules(modules: Iterable[str], key_path: str = "extensions") -> None:
    """Import the modules a config names (``extensions: [my_pkg.parts]``) so their parts register."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise UnknownTypeError(
                f"{key_path}: cannot import the module '{module}' ({error}); install the package that has it "
                "or fix the name."
            ) from None


def _import_all_parts() -> None:
    # Importing the package modules runs their @register decorators.
    import threestudio_like.parts  # noqa: F401
