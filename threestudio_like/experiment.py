"""The experiment layer: a whole run's config, from YAML to validated parts, and back from a trial.

It sits above every part: it imports the explicit list of shipped parts (``parts.py``) and the
installed extensions, so ``find_part`` knows every name. ``load_config`` merges YAML files and
``key=value`` overrides; ``finalize_config`` resolves them, names the trial folder and validates
the whole experiment before anything is written or loaded: every ``X_type`` string is looked up
and its sibling ``X`` mapping is parsed against that class's ``Config``, recursively; a mapping
with an ``otype`` key (tcnn-style encodings and networks) is checked against that ``otype``.
``load_trial_config`` / ``load_trained_system`` rebuild a finished trial.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import os
import re
import types
import typing
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Iterator, Optional, Union

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.basecontainer import BaseContainer
from omegaconf.errors import (
    GrammarParseError,
    InterpolationKeyError,
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    UnsupportedInterpolationType,
)

import threestudio_like.parts  # noqa: F401  (registers every shipped part)
from threestudio_like.config import ConfigError, Range, coerce_value, join_key, parse_structured
from threestudio_like.recipes import find_config
from threestudio_like.registry import UnknownTypeError, did_you_mean, find, registered_names
from threestudio_like.trials import PARSED_CONFIG, load_system_weights, resolve_checkpoint, trial_tag


# --------------------------------------------------------------------------- parts and extensions
ENTRY_POINT_GROUP = "threestudio_like.parts"
"""An installed package adds parts by naming a module in this entry-point group, e.g. in its
pyproject.toml: ``[project.entry-points."threestudio_like.parts"] my_parts = "my_pkg.parts"``."""

_imported_entry_points: set[str] = set()


def find_part(name: str, key_path: str = "") -> type:
    """The class registered as ``name``, among the shipped parts and, when it is not one of them,
    the installed extensions'; ``key_path`` (e.g. ``system.geometry_type``) goes into the error."""
    try:
        return find(name, key_path)
    except UnknownTypeError:
        import_installed_extensions()
    return find(name, key_path)


def all_part_names() -> list[str]:
    """Every registered name, the installed extensions' included."""
    import_installed_extensions()
    return registered_names()


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


# --------------------------------------------------------------------------- the experiment config
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
        parts = [_parse_yaml(lambda y=y: OmegaConf.load(find_config(y)), y) for y in yamls]
    overrides = []
    for arg in cli_args or []:
        if "=" not in arg:
            raise ConfigError(f"Override '{arg}' is not of the form key=value (for example trainer.max_steps=100).")
        overrides.append(_parse_yaml(lambda arg=arg: OmegaConf.from_dotlist([arg]), f"the override {arg!r}"))
    return OmegaConf.merge(*parts, *overrides)


def _parse_yaml(parse: Any, where: str) -> DictConfig:
    """Run ``parse``; a YAML syntax error becomes one line naming ``where``, line and column."""
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
    top = [f.name for f in dataclasses.fields(ExperimentConfig)]
    sections = {"trainer": [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]}
    for section, type_key in (("data", "data_type"), ("system", "system_type")):
        type_name = cfg.get(type_key, getattr(ExperimentConfig, type_key))
        try:
            sections[section] = [f.name for f in dataclasses.fields(find_part(type_name).Config)]
        except Exception:  # an unknown type name is reported by the full validation
            sections[section] = []
    for key in cfg:
        if key in top:
            continue
        homes = [f"{section}.{key}" for section, names in sections.items() if key in names]
        hint = f" Did you mean '{homes[0]}'?" if homes else did_you_mean(str(key), top)
        raise ConfigError(f"Unknown config key '{key}'.{hint} Valid top-level keys: {', '.join(top)}.")


def _validate_part(type_name: str, data: Any, path: str) -> None:
    cls = find_part(type_name, key_path=f"{path}_type")
    validate_against(cls.Config, data, path)


def validate_against(config_cls: type, data: Any, path: str) -> Any:
    """Parse ``data`` as ``config_cls`` and recurse into nested part configs."""
    parsed = parse_structured(config_cls, data, path)
    for f in dataclasses.fields(config_cls):
        value = getattr(parsed, f.name)
        if f.name.endswith("_type") and isinstance(value, str):
            sibling = f.name[: -len("_type")]
            if sibling in {g.name for g in dataclasses.fields(config_cls)}:
                sub_cls = find_part(value, key_path=join_key(path, f.name))
                validate_against(sub_cls.Config, getattr(parsed, sibling), join_key(path, sibling))
        elif isinstance(value, dict) and "otype" in value:
            validate_otype(value, join_key(path, f.name))
    return parsed


def validate_otype(data: dict, path: str) -> Any:
    """Parse a tcnn-style ``{otype: ..., ...}`` mapping against the registered otype's Config."""
    cls = find_part(str(data["otype"]), key_path=join_key(path, "otype"))
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
        checked[key] = coerce_value(value, hints[key], join_key(path, key)) if _is_simple(hints.get(key)) else value
    return checked


def _is_simple(tp: Any) -> bool:
    """int / float / bool / str, or an Optional / Union of only those."""
    if tp in (int, float, bool, str):
        return True
    if typing.get_origin(tp) in (Union, types.UnionType):
        return all(a is type(None) or a in (int, float, bool, str) for a in typing.get_args(tp))
    return False


# --------------------------------------------------------------------------- trials
def load_trial_config(trial_dir: str) -> Any:
    """The experiment config a trial ran with (its ``configs/parsed.yaml``)."""
    path = os.path.join(trial_dir, PARSED_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing, so the trial's parts cannot be rebuilt. "
            "Keep checkpoints inside their trial folder (<trial>/ckpts/*.ckpt)."
        )
    return finalize_config(load_config(path))


def load_trained_system(path: str) -> tuple[Any, Any]:
    """The trained system of a trial folder or checkpoint (LAST allowed), in eval mode at its
    step, and its experiment config."""
    ckpt = resolve_checkpoint(path)
    trial = os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))
    exp = load_trial_config(trial)
    system = find_part(exp.system_type)(exp.system, save_dir=os.path.join(trial, "save"), resumed=True)
    load_system_weights(system, ckpt)
    system.eval()
    system.update_step(system.current_step)
    return system, exp
