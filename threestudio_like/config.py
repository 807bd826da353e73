"""Typed configs: YAML + dotlist overrides -> validated dataclasses, plus schedules.

Every part declares a ``Config`` dataclass. ``parse_structured`` converts a plain mapping
into it, failing with the full key path on unknown keys (with the closest valid key) and
on wrongly typed values. ``validate_experiment`` walks the whole experiment before any work
starts: every ``X_type`` string is looked up in the registry and its sibling ``X`` mapping is
checked against that class's ``Config``; a mapping with an ``otype`` key (tcnn-style encoding
and network configs) is checked against the registered ``otype``'s ``Config``.

Schedules: a value typed ``Schedule`` is a number, ``[start_step, start_value, end_value,
end_step]`` (``[start_value, end_value, end_step]`` starts at step 0), or a list of
``[step, value]`` pairs interpolated piecewise linearly. Evaluate with ``schedule_value``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import re
import types
import typing
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Iterator, Optional, TypeVar, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.basecontainer import BaseContainer
from omegaconf.errors import (
    InterpolationKeyError,
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    UnsupportedInterpolationType,
)

from threestudio_like.registry import did_you_mean, find, import_extension_modules

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


def schedule_value(spec: Any, step: int) -> float:
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
                f"Unknown config key '{_join(path, key)}'.{hint} Valid keys here: {', '.join(names) or '(none)'}."
            )
    kwargs = {k: _coerce(v, hints[k], _join(path, k)) for k, v in data.items()}
    parsed = cls(**kwargs)
    check = getattr(parsed, "check_config", None)
    if callable(check):  # checks that involve several keys, e.g. min_step_percent <= max_step_percent
        check(path)
    return parsed


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *marks = typing.get_args(tp)
        value = check_schedule(value, path) if SCHEDULE_MARK in marks else _coerce(value, base, path)
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
                return _coerce(value, option, path)
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
            return [_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        item = args[0] if args else Any
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        item = args[1] if args else Any
        return {k: _coerce(v, item, _join(path, k)) for k, v in value.items()}
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# --------------------------------------------------------------------------- experiment
@dataclass
class ExperimentConfig:
    """Top level of a run's YAML; names follow threestudio."""

    name: str = "default"
    description: str = ""
    tag: str = ""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: Optional[str] = None
    exp_root_dir: str = "outputs"
    exp_dir: str = "outputs/default"
    trial_name: str = "exp"
    trial_dir: str = "outputs/default/exp"
    n_gpus: int = 1
    resume: Optional[str] = None
    # modules to import before the parts are looked up, so the parts they register can be named
    # (installed packages can instead list theirs in the "threestudio_like.parts" entry points)
    extensions: list[str] = field(default_factory=list)

    data_type: str = "random-camera-datamodule"
    data: dict = field(default_factory=dict)
    system_type: str = "dreamfusion-system"
    system: dict = field(default_factory=dict)

    trainer: dict = field(default_factory=dict)  # keyword arguments of lightning's Trainer
    checkpoint: dict = field(default_factory=dict)  # keyword arguments of ModelCheckpoint


def load_config(*yamls: str, cli_args: Optional[list[str]] = None, from_string: bool = False) -> DictConfig:
    """Merge YAML files (or strings) and ``key=value`` overrides into one DictConfig."""
    if from_string:
        parts = [_parse_yaml(lambda y=y: OmegaConf.create(y), "the config text") for y in yamls]
    else:
        from threestudio_like.recipes import find_config

        parts = [_parse_yaml(lambda y=y: OmegaConf.load(find_config(y)), y) for y in yamls]
    overrides = []
    for arg in cli_args or []:
        if "=" not in arg:
            raise ConfigError(f"Override '{arg}' is not of the form key=value (for example trainer.max_steps=100).")
        overrides.append(_parse_yaml(lambda arg=arg: OmegaConf.from_dotlist([arg]), f"the override {arg!r}"))
    return OmegaConf.merge(*parts, *overrides)


def _parse_yaml(parse: Any, where: str) -> DictConfig:
    """Run ``parse``; a YAML syntax error becomes one line naming ``where``, line and column."""
    import yaml
    from omegaconf.errors import GrammarParseError

    try:
        return parse()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"YAML syntax error in {where}{at}: {error.problem}. Fix the YAML and run again.") from None
    except (yaml.YAMLError, GrammarParseError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"Cannot parse {where}: {first}. Fix the YAML and run again.") from None


def finalize_config(cfg: DictConfig, n_gpus: int = 1) -> ExperimentConfig:
    """Resolve interpolations, fill run directories, validate every part; returns the typed config."""
    with _interpolation_errors(cfg):
        missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"Required config value{'s' if len(missing) > 1 else ''} not set: {', '.join(missing)}. "
            f"Add it on the command line, e.g. {missing[0]}=\"...\"."
        )
    with _interpolation_errors(cfg):
        OmegaConf.resolve(cfg)
    extensions = cfg.get("extensions") or []
    if not isinstance(extensions, (list, ListConfig)) or not all(isinstance(m, str) for m in extensions):
        raise ConfigError(f"extensions: expected a list of module names, e.g. [my_pkg.parts]; got {extensions!r}.")
    import_extension_modules(extensions)
    _check_top_level_keys(cfg)
    if "n_gpus" in cfg and cfg.n_gpus != n_gpus:
        warnings.warn(
            f"n_gpus: {cfg.n_gpus} is accepted for threestudio compatibility and has no effect; "
            f"--gpu chooses the devices ({n_gpus} here)."
        )
    exp = parse_structured(ExperimentConfig, cfg)
    exp.n_gpus = n_gpus
    if exp.use_timestamp and exp.timestamp is None:
        exp.timestamp = datetime.now().strftime("@%Y%m%d-%H%M%S")
    exp.trial_name = trial_tag(exp.tag) + (exp.timestamp or "")
    exp.exp_dir = os.path.join(exp.exp_root_dir, exp.name)
    exp.trial_dir = os.path.join(exp.exp_dir, exp.trial_name)
    validate_experiment(exp)
    return exp


# A trial folder is named <tag>@<timestamp>[-n]; file systems allow 255 bytes per name (eCryptfs
# about 143), so a tag longer than this is cut and given a hash of the whole, to stay unique.
MAX_TAG_BYTES = 100
TAG_HASH_LENGTH = 8


def trial_tag(tag: str) -> str:
    """The trial folder's form of a tag: characters other than letters, digits and ``-@.,+``
    become ``_``, and a tag over ``MAX_TAG_BYTES`` (a long prompt) is cut to fit, ending in
    ``_<hash>`` of the whole tag so two prompts that differ only at the end get two folders.
    The whole prompt stays in the trial's ``configs/parsed.yaml``."""
    tag = re.sub(r"[^\w\-@.,+]", "_", tag)
    raw = tag.encode("utf-8")
    if len(raw) <= MAX_TAG_BYTES:
        return tag
    digest = hashlib.sha1(raw).hexdigest()[:TAG_HASH_LENGTH]
    head = raw[: MAX_TAG_BYTES - TAG_HASH_LENGTH - 1].decode("utf-8", errors="ignore")  # never half a character
    return f"{head}_{digest}"


@contextmanager
def _interpolation_errors(cfg: DictConfig) -> Iterator[None]:
    """Turn omegaconf's interpolation errors (a missing key, an unknown resolver, a resolver that
    fails) into one line naming the key that holds the interpolation and what it refers to."""
    try:
        yield
    except InterpolationResolutionError as error:
        where = getattr(error, "full_key", None) or "the config"
        raw = _raw_value(cfg, where)
        used = f"{where}: {raw}" if raw is not None else where
        if isinstance(error, InterpolationKeyError):
            match = re.search(r"Interpolation key '([^']*)'", str(error))
            target = match.group(1) if match else "?"
            message = (
                f"{used} refers to '{target}', which is not in the config.{_closest_key(cfg, target)} "
                "Set it, or fix the interpolation."
            )
        elif isinstance(error, UnsupportedInterpolationType):
            match = re.search(r"Unsupported interpolation type (\S+)", str(error))
            name = match.group(1) if match else "?"
            known = _known_resolvers()
            message = f"{used} uses the unknown resolver '{name}'.{did_you_mean(name, known)} Known resolvers: {', '.join(known)}."
        elif isinstance(error, InterpolationToMissingValueError):
            message = f"{used} refers to a value that is not set (???). Set it on the command line."
        else:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            message = f"{used} cannot be resolved: {first}."
        raise ConfigError(message) from None


def _known_resolvers() -> list[str]:
    return sorted(getattr(BaseContainer, "_resolvers", {}))


def _raw_value(cfg: DictConfig, key: str) -> Optional[str]:
    """The text of ``key`` before interpolation (``${system.nope}``), or None if not found."""
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in re.findall(r"[^.\[\]]+", key):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node if isinstance(node, str) else None


def _closest_key(cfg: DictConfig, target: str) -> str:
    """`` Did you mean 'system.x'?`` for a dotted key that is not in the config, from its siblings."""
    parent, _, last = target.rpartition(".")
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in parent.split(".") if parent else []:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return ""
    return did_you_mean(last, [str(k) for k in node], prefix=f"{parent}." if parent else "")


def validate_experiment(exp: ExperimentConfig) -> None:
    """Check every part's config now, so mistakes fail before any model loads."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    _validate_part(exp.data_type, exp.data, "data")
    _validate_part(exp.system_type, exp.system, "system")
    exp.trainer = _validate_kwargs(exp.trainer, "trainer", Trainer.__init__)
    exp.checkpoint = _validate_kwargs(exp.checkpoint, "checkpoint", ModelCheckpoint.__init__)
    max_steps = exp.trainer.get("max_steps")
    if max_steps is not None and max_steps <= 0:
        raise ConfigError(f"trainer.max_steps must be a positive number of optimisation steps, got {max_steps}.")
    for section, values in (("trainer", exp.trainer), ("checkpoint", exp.checkpoint)):
        for key, allowed in LIGHTNING_RANGES[section].items():
            allowed.check(values.get(key), f"{section}.{key}")
    interval = exp.trainer.get("val_check_interval")
    if isinstance(interval, float) and not interval.is_integer() and interval > 1:
        raise ConfigError(
            f"trainer.val_check_interval must be a whole number of steps or a fraction of an epoch up to 1.0, got {interval}."
        )


# Numbers handed to Lightning that it does not check itself (0 ends in a ZeroDivisionError
# mid-run) or checks only after the trial folder exists; None (Lightning's default) passes.
LIGHTNING_RANGES: dict[str, dict[str, Range]] = {
    "trainer": {
        "val_check_interval": Range(0, above=True, why="steps between validations, or a fraction of an epoch"),
        "check_val_every_n_epoch": Range(1),
        "accumulate_grad_batches": Range(1),
        "log_every_n_steps": Range(0),
        "num_sanity_val_steps": Range(-1, why="-1: all"),
        "max_epochs": Range(-1, why="-1: no limit"),
        "gradient_clip_val": Range(0),
    },
    "checkpoint": {
        "every_n_train_steps": Range(0, why="0: no step checkpoints"),
        "every_n_epochs": Range(0),
        "save_top_k": Range(-1, why="-1: keep all"),
    },
}


def _check_top_level_keys(cfg: DictConfig) -> None:
    """An unknown top-level key that is a known key one level down (``max_steps=5``) gets
    pointed there (``trainer.max_steps``); others get the closest top-level key."""
    from lightning.pytorch import Trainer

    top = [f.name for f in dataclasses.fields(ExperimentConfig)]
    sections = {"trainer": [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]}
    for section, type_key in (("data", "data_type"), ("system", "system_type")):
        type_name = cfg.get(type_key, getattr(ExperimentConfig, type_key))
        try:
            sections[section] = [f.name for f in dataclasses.fields(find(type_name).Config)]
        except Exception:  # an unknown type name is reported by the full validation
            sections[section] = []
    for key in cfg:
        if key in top:
            continue
        homes = [f"{section}.{key}" for section, names in sections.items() if key in names]
        hint = f" Did you mean '{homes[0]}'?" if homes else did_you_mean(str(key), top)
        raise ConfigError(f"Unknown config key '{key}'.{hint} Valid top-level keys: {', '.join(top)}.")


def _validate_part(type_name: str, data: Any, path: str) -> None:
    cls = find(type_name, key_path=f"{path}_type")
    validate_against(cls.Config, data, path)


def validate_against(config_cls: type, data: Any, path: str) -> Any:
    """Parse ``data`` as ``config_cls`` and recurse into nested part configs."""
    parsed = parse_structured(config_cls, data, path)
    for f in dataclasses.fields(config_cls):
        value = getattr(parsed, f.name)
        if f.name.endswith("_type") and isinstance(value, str):
            sibling = f.name[: -len("_type")]
            if sibling in {g.name for g in dataclasses.fields(config_cls)}:
                sub_cls = find(value, key_path=_join(path, f.name))
                validate_against(sub_cls.Config, getattr(parsed, sibling), _join(path, sibling))
        elif isinstance(value, dict) and "otype" in value:
            validate_otype(value, _join(path, f.name))
    return parsed


def validate_otype(data: dict, path: str) -> Any:
    """Parse a tcnn-style ``{otype: ..., ...}`` mapping against the registered otype's Config."""
    cls = find(str(data["otype"]), key_path=_join(path, "otype"))
    rest = {k: v for k, v in data.items() if k != "otype"}
    return validate_against(cls.Config, rest, path)


def _validate_kwargs(data: dict, path: str, fn: Any) -> dict:
    """Check keyword arguments of a library callable by name and, where annotated simply, by type."""
    allowed = [p for p in inspect.signature(fn).parameters if p != "self"]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations in the library: check names only
        hints = {}
    checked = {}
    for key, value in data.items():
        if key not in allowed:
            hint = did_you_mean(key, allowed, prefix=f"{path}.")
            raise ConfigError(f"Unknown config key '{path}.{key}'.{hint}")
        checked[key] = _coerce(value, hints[key], _join(path, key)) if _is_simple(hints.get(key)) else value
    return checked


def _is_simple(tp: Any) -> bool:
    """int / float / bool / str, or an Optional / Union of only those."""
    if tp in (int, float, bool, str):
        return True
    if typing.get_origin(tp) in (Union, types.UnionType):
        return all(a is type(None) or a in (int, float, bool, str) for a in typing.get_args(tp))
    return False


def config_yaml(cfg: Any) -> str:
    """A (parsed) config as the YAML text ``dump_config`` writes."""
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    return OmegaConf.to_yaml(OmegaConf.create(to_container(cfg)))


def dump_config(path: str, cfg: Any) -> None:
    """Write the parsed config as YAML (atomically)."""
    from threestudio_like.utils.io import atomic_write_text

    atomic_write_text(path, config_yaml(cfg))

