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

import csv
import hashlib
import importlib.util
import os
from collections.abc import Mapping
from typing import Any, Optional

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from threestudio_like.config import ConfigError
from threestudio_like.registry import did_you_mean
from threestudio_like.utils.io import atomic_path

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


class KeptMetricsWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts; this one keeps
    it and appends. Rows at or after ``replace_from_step`` (left by an attempt that went on past
    the checkpoint a run resumes from) are the only ones dropped: the resumed run writes them anew."""

    def __init__(self, log_dir: str, replace_from_step: Optional[int] = None) -> None:
        self._replace_from_step = replace_from_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            rows, keys = list(reader), list(reader.fieldnames or [])
        kept = [row for row in rows if self._keep(row)]
        if len(kept) < len(rows):
            with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=keys)
                writer.writeheader()
                writer.writerows(kept)
        self.metrics_keys = keys

    def _keep(self, row: dict[str, str]) -> bool:
        step = row.get("step")
        return self._replace_from_step is None or not step or int(float(step)) < self._replace_from_step


class KeptCSVLogger(CSVLogger):
    """``CSVLogger`` whose file survives a resume, ``--test`` and ``--validate`` (see ``KeptMetricsWriter``)."""

    def __init__(self, save_dir: str, name: str, version: str, replace_from_step: Optional[int] = None) -> None:
        super().__init__(save_dir, name=name, version=version)
        self._replace_from_step = replace_from_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeptMetricsWriter(self.log_dir, self._replace_from_step)
        return self._experiment


def build_loggers(
    trial_dir: str, loggers_cfg: Mapping[str, Any], mode: str = "train", resumed_step: Optional[int] = None
) -> list[Logger]:
    """Lightning loggers for a trial: CSV always, then TensorBoard / wandb as configured.

    Training logs go to ``csv_logs/metrics.csv`` (and ``tb_logs/``): a resumed run appends,
    replacing only rows after ``resumed_step``. ``--validate`` / ``--test`` (``mode``) never touch
    them: their metrics go beside, to ``csv_logs/<mode>/`` (and ``tb_logs/<mode>/``); wandb
    records training runs only.
    """
    enabled = check_loggers(loggers_cfg)
    version = "" if mode == "train" else mode
    replace_from = resumed_step if mode == "train" else None
    loggers: list[Logger] = [KeptCSVLogger(trial_dir, name="csv_logs", version=version, replace_from_step=replace_from)]
    if "tensorboard" in enabled:
        name = _optional_str(enabled["tensorboard"].get("name")) or "tb_logs"
        # purge_step: TensorBoard hides the earlier attempt's events from the resumed step on
        loggers.append(TensorBoardLogger(trial_dir, name=name, version=version, default_hp_metric=False, purge_step=replace_from))
    if "wandb" in enabled and mode == "train":
        settings = enabled["wandb"]
        loggers.append(
            WandbLogger(
                save_dir=trial_dir,
                project=_optional_str(settings.get("project")),
                name=_optional_str(settings.get("name")),
                entity=_optional_str(settings.get("entity")),
                offline=bool(settings.get("offline", False)),
                # one wandb run per trial: a resumed run continues it
                id=wandb_run_id(trial_dir),
                resume="allow",
            )
        )
    return loggers


def wandb_run_id(trial_dir: str) -> str:
    """A stable wandb run id for a trial folder (wandb ids allow letters, digits, - and _)."""
    return hashlib.sha1(os.path.abspath(trial_dir).encode()).hexdigest()[:16]
