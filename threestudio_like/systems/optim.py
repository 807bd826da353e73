"""Optimiser and learning-rate schedule construction from threestudio-style configs.

``optimizer: {name: Adam, args: {lr: 0.01, betas: [0.9, 0.99]}, params: {geometry: {lr: 0.01}}}``
builds one parameter group per listed submodule (dotted names allowed; with several particles a
group holds that part of every particle). A group's ``lr`` may
be a schedule (``[start_step, start_value, end_value, end_step]``); such groups follow it
through a ``LambdaLR`` stepped every training step.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Optional

import torch
from torch import nn

from threestudio_like.config import ConfigError, check_schedule, parse_structured, schedule_value
from threestudio_like.registry import did_you_mean


@dataclass
class OptimizerConfig:
    name: str = "Adam"
    args: dict = field(default_factory=dict)
    params: Optional[dict[str, dict]] = None


@dataclass
class SchedulerConfig:
    name: str = "ExponentialLR"
    interval: str = "step"
    args: dict = field(default_factory=dict)


def _optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    names = [n for n, c in vars(torch.optim).items() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)]
    if name not in names:
        hint = did_you_mean(name, names)
        raise ConfigError(f"system.optimizer.name: unknown optimizer '{name}'.{hint} Use one of torch.optim: {', '.join(sorted(names))}.")
    return getattr(torch.optim, name)


def _check_args(cls: type, args: dict, path: str, ignore: tuple[str, ...] = ()) -> None:
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("self", "params", "optimizer", *ignore)]
    for key in args:
        if key not in allowed:
            hint = did_you_mean(key, allowed, prefix=f"{path}.")
            raise ConfigError(f"Unknown config key '{path}.{key}' for {cls.__name__}.{hint}")


def build_optimizer(
    module: nn.Module, cfg: Any, later_parts: Collection[str] = ()
) -> tuple[torch.optim.Optimizer, Optional[list[Callable[[int], float]]]]:
    """The optimiser, plus per-group lr multipliers when any lr is a schedule (else None).

    ``later_parts``: parts built only for training (the guidance); a group naming one that is
    not built yet is accepted and left out, so the config can be checked before it exists.
    """
    cfg = parse_structured(OptimizerConfig, cfg, "system.optimizer")
    cls = _optimizer_class(cfg.name)
    _check_args(cls, cfg.args, "system.optimizer.args")
    for key in ("lr",):
        if key in cfg.args:
            check_schedule(cfg.args[key], f"system.optimizer.args.{key}")

    if cfg.params is None:
        groups = [{"params": [p for p in module.parameters() if p.requires_grad], "name": "all"}]
    else:
        module_names = [n for n, _ in module.named_modules() if n]
        groups = []
        for name, options in cfg.params.items():
            path = f"system.optimizer.params.{name}"
            if name.split(".")[0] in later_parts and name not in module_names:
                continue
            if name not in module_names:
                hint = did_you_mean(name, module_names)
                raise ConfigError(f"{path}: this system has no part named '{name}'.{hint}")
            _check_args(cls, options or {}, path)
            # the same part of every further particle (particles.<k>.<name>) joins the group
            copies = [n for n in module_names if n.startswith("particles.") and n.split(".", 2)[-1] == name]
            params = [p for n in [name, *copies] for p in module.get_submodule(n).parameters() if p.requires_grad]
            if params:  # e.g. a solid-colour background has nothing to learn
                groups.append({"params": params, "name": name, **(options or {})})
    if not any(g["params"] for g in groups):
        raise ConfigError("system.optimizer: no trainable parameters were selected; check system.optimizer.params.")
    _warn_if_default_lr_unused(cfg)

    default_lr = cfg.args.get("lr", 1e-3)
    lambdas: list[Callable[[int], float]] = []
    scheduled = False
    for group in groups:
        spec = group.get("lr", default_lr)
        if isinstance(spec, (list, tuple)):
            scheduled = True
            group["lr"] = 1.0  # LambdaLR multiplies this by the schedule's value
            lambdas.append(lambda step, spec=spec: schedule_value(spec, step))
        else:
            lambdas.append(lambda step: 1.0)
    args = {k: (1.0 if k == "lr" and isinstance(v, (list, tuple)) else v) for k, v in cfg.args.items()}
    optimizer = cls(groups, **args)
    return optimizer, (lambdas if scheduled else None)


def _warn_if_default_lr_unused(cfg: OptimizerConfig) -> None:
    """threestudio users tune ``args.lr``; say so when no group falls back to it (Python shows it once)."""
    if cfg.params is None or "lr" not in cfg.args or not all("lr" in (o or {}) for o in cfg.params.values()):
        return
    warnings.warn(
        f"system.optimizer.args.lr ({cfg.args['lr']}) is unused: every group in system.optimizer.params sets its own "
        f"lr ({', '.join(cfg.params)}); change system.optimizer.params.<group>.lr instead.",
        UserWarning,
        stacklevel=2,  # one location whoever calls: Python then shows it once per run
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Any, lr_lambdas: Optional[list[Callable[[int], float]]]
) -> Optional[dict[str, Any]]:
    """A Lightning lr-scheduler dict from ``system.scheduler`` or from scheduled lrs."""
    if cfg is not None and lr_lambdas is not None:
        raise ConfigError("Use either schedule-valued learning rates or system.scheduler, not both.")
    if lr_lambdas is not None:
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas), "interval": "step"}
    if cfg is None:
        return None
    cfg = parse_structured(SchedulerConfig, cfg, "system.scheduler")
    names = [n for n, c in vars(torch.optim.lr_scheduler).items() if isinstance(c, type) and n[0].isupper()]
    if cfg.name not in names:
        hint = did_you_mean(cfg.name, names)
        raise ConfigError(f"system.scheduler.name: unknown scheduler '{cfg.name}'.{hint}")
    cls = getattr(torch.optim.lr_scheduler, cfg.name)
    _check_args(cls, cfg.args, "system.scheduler.args")
    if cfg.interval not in ("step", "epoch"):
        raise ConfigError(f"system.scheduler.interval: expected 'step' or 'epoch', got '{cfg.interval}'.")
    return {"scheduler": cls(optimizer, **cfg.args), "interval": cfg.interval}
