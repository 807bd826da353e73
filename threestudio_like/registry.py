"""One string registry for every swappable part (geometry, renderer, guidance, ...).

Configs name parts by string (``geometry_type: implicit-volume``); ``find`` turns the
string back into the class, and an unknown name fails with the closest registered names.
A plain dict that imports nothing of the project: parts register themselves when their module
is imported, and the experiment layer (``experiment.py``) imports them all.
"""

from __future__ import annotations

import difflib
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
    Only imported modules have registered their parts: the experiment layer imports them all."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    where = f" (at {key_path})" if key_path else ""
    hint = did_you_mean(name, sorted(_REGISTRY), n=3)
    raise UnknownTypeError(
        f"Unknown type name '{name}'{where}.{hint} Registered types: {', '.join(sorted(_REGISTRY))}."
    )


def registered_names() -> list[str]:
    return sorted(_REGISTRY)
