"""Typed configs, what every part needs: ``ConfigError``, parsing into dataclasses, schedules.

Every part declares a ``Config`` dataclass. ``parse_structured`` converts a plain mapping
into it, failing with the full key path on unknown keys (with the closest valid key) and
on wrongly typed values; ``Range`` bounds a number. Whole experiments (YAML files, overrides,
validating every part) are the experiment layer's job: ``threestudio_like/experiment.py``.

Schedules: a value typed ``Schedule`` is a number, ``[start_step, start_value, end_value,
end_step]`` (``[start_value, end_value, end_step]`` starts at step 0), or a list of
``[step, value]`` pairs interpolated piecewise linearly. Evaluate with ``schedule_value``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Optional, TypeVar, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from threestudio_like.registry import did_you_mean

T = TypeVar("T")


class ConfigError(ValueError):
    """Bad configuration: says which key, what was wrong, and what would be right."""


# --------------------------------------------------------------------------- resolvers
def _register_resolvers() -> None:
    """threestudio's interpolation helpers, so its YAML files parse unchanged."""
    resolvers = {
        "calc_exp_lr_decay_rate": lambda factor, n: factor ** (1.0 / n),
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b,
        "idiv": lambda a, b: a // b,
        "basename": lambda p: os.path.basename(str(p)),
        "rmspace": lambda s, sub: str(s).replace(" ", sub),
        "tuple2": lambda s: [float(s), float(s)],
        "gt0": lambda s: s > 0,
        "not0": lambda s: s != 0,
        "cmaxgt0": lambda s: (max(s) if isinstance(s, (list, ListConfig)) else s) > 0,
        "shsdeg": lambda sh_degree: (sh_degree + 1) ** 2 * 3,
    }
    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            register(name, fn)


_register_resolvers()


# --------------------------------------------------------------------------- schedules
SCHEDULE_MARK = "schedule"
Schedule = Annotated[Any, SCHEDULE_MARK]
"""A number, ``[start_step, start_value, end_value, end_step]`` or ``[[step, value], ...]``."""


def check_schedule(value: Any, path: str) -> Any:
    """Validate a schedule spec; returns it unchanged (numbers as float)."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a number or a schedule list, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) for v in value):
            if not all(len(v) == 2 and all(_is_number(x) for x in v) for v in value):
                raise ConfigError(f"{path}: a piecewise schedule is a list of [step, value] pairs, got {value!r}")
            steps = [v[0] for v in value]
            if steps != sorted(steps):
                raise ConfigError(f"{path}: piecewise schedule steps must increase, got {steps}")
            return [list(v) for v in value]
        if len(value) in (3, 4) and all(_is_number(v) for v in value):
            return list(value)
    raise ConfigError(
        f"{path}: expected a number, [start_step, start_value, end_value, end_step], "
        f"or a list of [step, value] pairs; got {value!r}"
    )


def schedule_value(spec: Any, step: float) -> Optional[float]:
    """The value of a schedule at a global step."""
    if spec is None or _is_number(spec):
        return spec if spec is None else float(spec)
    if all(isinstance(v, (list, tuple)) for v in spec):
        points = [(float(s), float(v)) for s, v in spec]
    else:
        if len(spec) == 3:
            spec = [0, *spec]
        start_step, start_value, end_value, end_step = (float(v) for v in spec)
        points = [(start_step, start_value), (end_step, end_value)]
    if step <= points[0][0]:
        return points[0][1]
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if step <= s1:
            return v0 + (v1 - v0) * (step - s0) / max(s1 - s0, 1e-12)
    return points[-1][1]


def milestone_value(values: Any, milestones: list[int], step: int) -> Any:
    """``values[i]`` once ``step`` passed ``milestones[i-1]``; a scalar is constant."""
    if not isinstance(values, (list, tuple)):
        return values
    index = sum(step >= m for m in milestones)
    return values[min(index, len(values) - 1)]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def schedule_points(spec: Any) -> list[tuple[float, float]]:
    """A (checked) schedule's breakpoints as (step, value); a number is [(0, value)]."""
    if spec is None:
        return []
    if _is_number(spec):
        return [(0.0, float(spec))]
    if all(isinstance(v, (list, tuple)) for v in spec):
        return [(float(s), float(v)) for s, v in spec]
    start_step, start_value, end_value, end_step = (float(v) for v in (spec if len(spec) == 4 else [0, *spec]))
    return [(start_step, start_value), (end_step, end_value)]


@dataclass(frozen=True)
class Range:
    """``Annotated[int, Range(1)]``: the interval a number (or every value of a schedule) must lie
    in, checked where the config is parsed, so ``lora_rank=0`` fails naming
    ``system.guidance.lora_rank`` instead of deep inside the library the value is handed to."""

    min: Optional[float] = None
    max: Optional[float] = None
    above: bool = False  # min itself is not allowed (> min)
    why: str = ""  # what the number is, for the message

    def check(self, value: Any, path: str) -> None:
        if value is None:
            return
        values = [v for _, v in schedule_points(value)] if isinstance(value, list) else [value]
        for v in values:
            if not _is_number(v):
                continue
            if self.min is not None and (v <= self.min if self.above else v < self.min):
                bound = f"greater than {_plain(self.min)}" if self.above else f"at least {_plain(self.min)}"
            elif self.max is not None and v > self.max:
                bound = f"at most {_plain(self.max)}"
            else:
                continue
            if self.min is not None and self.max is not None:
                bound = f"between {_plain(self.min)} and {_plain(self.max)}"
            why = f" ({self.why})" if self.why else ""
            raise ConfigError(f"{path} must be {bound}{why}, got {_plain(v)}.")


def _plain(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


# --------------------------------------------------------------------------- typed parsing
def to_container(data: Any) -> Any:
    if isinstance(data, (DictConfig, ListConfig)):
        return OmegaConf.to_container(data, resolve=True)
    return data


def parse_structured(cls: type[T], data: Any = None, path: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping, validating keys and value types."""
    if isinstance(data, cls):
        return data
    data = to_container(data) or {}
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            hint = did_you_mean(str(key), names, prefix=f"{path}." if path else "")
            raise ConfigError(
                f"Unknown config key '{join_key(path, key)}'.{hint} Valid keys here: {', '.join(names) or '(none)'}."
            )
    kwargs = {k: coerce_value(v, hints[k], join_key(path, k)) for k, v in data.items()}
    parsed = cls(**kwargs)
    check = getattr(parsed, "check_config", None)
    if callable(check):  # checks that involve several keys, e.g. min_step_percent <= max_step_percent
        check(path)
    return parsed


def join_key(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def coerce_value(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *marks = typing.get_args(tp)
        value = check_schedule(value, path) if SCHEDULE_MARK in marks else coerce_value(value, base, path)
        for mark in marks:
            if isinstance(mark, Range):
                mark.check(value, path)
        return value
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce_value(value, option, path)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # Optional[X]: X's own message (a range, an expected type) says more
            raise ConfigError(errors[0])
        raise ConfigError(f"{path}: {value!r} matches none of {_type_name(tp)}")
    if typing.get_origin(tp) is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            hint = did_you_mean(str(value), allowed)
            raise ConfigError(f"{path}: {value!r} is not one of {list(allowed)}.{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        return parse_structured(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if _is_number(value) and float(value).is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if _is_number(value):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected a list of {len(args)} values, got {value!r}")
            return tuple(coerce_value(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [coerce_value(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if tuple in (origin, tp) else items  # a YAML list becomes the declared type
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        item = args[1] if args else Any
        return {k: coerce_value(v, item, join_key(path, k)) for k, v in value.items()}
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def config_yaml(cfg: Any) -> str:
    """A (parsed) config as the YAML text ``dump_config`` writes."""
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    return OmegaConf.to_yaml(OmegaConf.create(to_container(cfg)))
