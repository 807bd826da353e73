"""``system.loggers``: where training metrics go, through Lightning's own loggers.

CSV (``<trial>/csv_logs/metrics.csv``) is always written. The others follow threestudio's keys::

    system:
      loggers:
        tensorboard: true            # or {enable: true, name: tb_logs}; event files in <trial>/tb_logs
        wandb: {enable: true, project: threestudio, name: None}   # "None" (threestudio's spelling) = no run name

TensorBoard and Weights & Biases are optional extras (``pip install "threestudio-like[tensorboard]"``,
``[wandb]``); asking for one that is not installed is a one-line error naming the extra.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, Optional

from lightning.pytorch.loggers import CSVLogger, Logger

from threestudio_like.config import ConfigError
from threestudio_like.registry import did_you_mean

# Per logger, the keys its section may have: a typo is an error, not a silently ignored setting.
LOGGER_KEYS: dict[str, tuple[str, ...]] = {
    "csv": ("enable",),  # accepted for completeness; CSV is always on (the tests and tools read it)
    "tensorboard": ("enable", "name"),
    "wandb": ("enable", "project", "name", "entity", "offline"),
}
# A bare section (``tensorboard: {}``) turns TensorBoard on; wandb needs ``enable: true``, as in
# threestudio, whose configs carry a disabled wandb section by default.
_ENABLED_BY_DEFAULT = {"csv": True, "tensorboard": True, "wandb": False}
_IMPORT_NAMES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def _section(kind: str, value: Any) -> Optional[dict[str, Any]]:
    """The settings of one logger, or None when it is off. ``value`` may be a bool, None or a mapping."""
    where = f"system.loggers.{kind}"
    if value is None or isinstance(value, bool):
        on = _ENABLED_BY_DEFAULT[kind] if value is None else value
        return {} if on else None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be true/false or a mapping of settings, got {value!r}.")
    for key in value:
        if key not in LOGGER_KEYS[kind]:
            hint = did_you_mean(str(key), LOGGER_KEYS[kind], prefix=f"{where}.")
            raise ConfigError(f"Unknown config key '{where}.{key}'.{hint} Valid keys: {', '.join(LOGGER_KEYS[kind])}.")
    enable = value.get("enable", _ENABLED_BY_DEFAULT[kind])
    if not isinstance(enable, bool):
        raise ConfigError(f"{where}.enable must be true or false, got {enable!r}.")
    return dict(value) if enable else None


def _require(kind: str) -> None:
    if not any(importlib.util.find_spec(m) is not None for m in _IMPORT_NAMES[kind]):
        raise ConfigError(
            f"system.loggers.{kind} is enabled but {kind} is not installed: "
            f"pip install \"threestudio-like[{kind}]\" (or turn it off with system.loggers.{kind}.enable=false)."
        )


def _optional_str(value: Any) -> Optional[str]:
    # threestudio's YAML writes `name: None`, which YAML reads as the string "None".
    return None if value is None or str(value) in ("None", "") else str(value)


def check_loggers(loggers_cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate ``system.loggers`` without creating anything; returns the enabled loggers' settings.

    Cheap, so it can run before a trial folder exists.
    """
    if loggers_cfg is None:
        return {}
    if not isinstance(loggers_cfg, Mapping):
        raise ConfigError(f"system.loggers must be a mapping (e.g. {{tensorboard: true}}), got {loggers_cfg!r}.")
    enabled: dict[str, dict[str, Any]] = {}
    for kind, value in loggers_cfg.items():
        if kind not in LOGGER_KEYS:
            hint = did_you_mean(str(kind), LOGGER_KEYS, prefix="system.loggers.")
            raise ConfigError(f"Unknown logger 'system.loggers.{kind}'.{hint} Available loggers: {', '.join(LOGGER_KEYS)}.")
        settings = _section(kind, value)
        if settings is not None:
            if kind in _IMPORT_NAMES:
                _require(kind)
            enabled[kind] = settings
    return enabled


def build_loggers(trial_dir: str, loggers_cfg: Mapping[str, Any]) -> list[Logger]:
    """Lightning loggers for a trial: CSV always, then TensorBoard / wandb as configured."""
    enabled = check_loggers(loggers_cfg)
    loggers: list[Logger] = [CSVLogger(trial_dir, name="csv_logs", version="")]
    if "tensorboard" in enabled:
        from lightning.pytorch.loggers import TensorBoardLogger

        name = _optional_str(enabled["tensorboard"].get("name")) or "tb_logs"
        # version "" keeps one folder per trial, like csv_logs (a resumed run appends to it)
        loggers.append(TensorBoardLogger(trial_dir, name=name, version="", default_hp_metric=False))
    if "wandb" in enabled:
        from lightning.pytorch.loggers import WandbLogger

        settings = enabled["wandb"]
        loggers.append(
            WandbLogger(
                save_dir=trial_dir,
                project=_optional_str(settings.get("project")),
                name=_optional_str(settings.get("name")),
                entity=_optional_str(settings.get("entity")),
                offline=bool(settings.get("offline", False)),
            )
        )
    return loggers
