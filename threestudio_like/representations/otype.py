"""tcnn-style ``{"otype": ..., ...}`` configs: one lookup shared by encodings and networks.

Encodings and MLPs are named by tiny-cuda-nn's ``otype`` strings so threestudio YAML files
work unchanged. Each class is registered in the global registry (so experiment validation
finds it) and in a per-kind table here, so building one never needs every other part of the
package to import, and so a typo is reported against the right kind of names.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

from threestudio_like.config import ConfigError, to_container
from threestudio_like.registry import did_you_mean, register

T = TypeVar("T", bound=type)

_TABLES: dict[str, dict[str, type]] = {}


def register_otype(kind: str, *names: str) -> Callable[[T], T]:
    """Class decorator: register ``names`` globally and in the ``kind`` table ("encoding", "network")."""

    def decorate(cls: T) -> T:
        register(*names)(cls)
        table = _TABLES.setdefault(kind, {})
        for name in names:
            table[name] = cls
        return cls

    return decorate


def split_otype(kind: str, config: Any, path: str) -> tuple[type, dict]:
    """``(class, options without otype)`` for a tcnn-style mapping; clear errors on bad input."""
    data = to_container(config)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping like {{otype: ..., ...}}, got {data!r}")
    data = dict(data)
    if "otype" not in data:
        raise ConfigError(f"{path}: missing 'otype' (one of {', '.join(sorted(_TABLES.get(kind, {})))}).")
    name = str(data.pop("otype"))
    table = _TABLES.get(kind, {})
    cls = table.get(name)
    if cls is None:  # tcnn compares otype names case-insensitively
        cls = next((c for n, c in table.items() if n.lower() == name.lower()), None)
    if cls is None:
        hint = did_you_mean(name, sorted(table), n=3)
        raise ConfigError(f"{path}.otype: unknown {kind} '{name}'.{hint} Known: {', '.join(sorted(table))}.")
    return cls, data
