"""Divergence caught before it is saved: NaN / inf in the loss, a render, a gradient, a
parameter or the optimiser state stops training with one error naming the step and the parts.

The checks run inside the optimiser step (Lightning runs ModelCheckpoint's batch-end hook
before the module's), so a step that went bad never reaches a checkpoint. Cleaning such as
``nan_to_num`` elsewhere must never hide what is checked here.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch

from threestudio_like.utils.typing import RenderOutput, Tensor


class TrainingDivergedError(RuntimeError):
    """The loss, a render, a gradient, a parameter or the optimiser state became NaN / infinite.

    Raised before the step's checkpoint is written, so the checkpoints on disk stay good.
    """


# Render outputs every renderer produces; a NaN field shows up in them (renderers never skip NaN samples).
CHECKED_RENDER_KEYS = ("comp_rgb", "opacity")
MAX_NAMES_IN_MESSAGE = 6


def nonfinite_names(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    """The distinct names whose tensor holds a NaN or inf, in order; one device sync for all."""
    named = [(n, t) for n, t in named if torch.is_tensor(t) and t.is_floating_point()]
    if not named:
        return []
    device = named[0][1].device
    finite = torch.stack([torch.isfinite(t).all().to(device) for _, t in named]).tolist()
    return list(dict.fromkeys(n for (n, _), ok in zip(named, finite) if not ok))


def _list_names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    more = len(names) - MAX_NAMES_IN_MESSAGE
    return shown + (f" and {more} more" if more > 0 else "")


def diverged(step: int, what: str) -> TrainingDivergedError:
    """The error for a divergence found at ``step``; ``what`` says which values went bad."""
    return TrainingDivergedError(
        f"training diverged at step {step}: {what}. Checkpoints written before step {step} are untouched; "
        f"resume from one with a lower learning rate or loss weight."
    )


class DivergenceGuard:
    """The finite checks, hooked into Lightning's optimiser step; mixed into the base system
    (a ``LightningModule``, whose ``global_step``, ``trainer`` and parameters it reads)."""

    def check_render(self, out: RenderOutput) -> None:
        """A training render must be finite: a NaN here is a broken field, not noise to clean."""
        bad = nonfinite_names((k, out[k]) for k in CHECKED_RENDER_KEYS if k in out)
        if bad:
            raise diverged(self.global_step, f"the render's {', '.join(bad)} became NaN/inf{self._parameter_hint()}")

    def _parameter_hint(self) -> str:
        """Which parameter to suspect when everything stored is finite: the largest in magnitude."""
        named = [(n, p.detach().abs().max().item()) for n, p in self.named_parameters() if p.numel() > 0]
        if not named or nonfinite_names(self.named_parameters()):
            return ""
        name, size = max(named, key=lambda item: item[1])
        return f"; the parameters are finite, the largest is {name} (|x| up to {size:.3g})"

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after a mixed-precision plugin unscaled the gradients.
        grads = [(name, p.grad) for name, _, p in self._optimised_parameters(optimizer) if p.grad is not None]
        bad = nonfinite_names(grads)
        if bad and self._grad_scaler() is None:
            raise diverged(self.global_step, f"the gradients of {_list_names(bad)} became NaN/inf")
        # With a GradScaler, inf gradients are its normal overflow signal: it skips this step
        # and lowers the loss scale. A real divergence still shows in the loss, renders or parameters.

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Here, not in on_train_batch_end: Lightning runs ModelCheckpoint's batch-end hook first.
        self.check_state_after_step(optimizer)

    def check_state_after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Parameters and optimiser state must be finite after a step (one device sync)."""
        optimised = self._optimised_parameters(optimizer)
        state = getattr(optimizer, "optimizer", optimizer).state
        named = [(name, p) for name, _, p in optimised]
        for _, group, param in optimised:
            named += [(f"optimizer state of group {group}", t) for t in state.get(param, {}).values()]
        bad = nonfinite_names(named)
        if bad:
            raise diverged(self.global_step, f"after the optimiser step these hold NaN/inf: {_list_names(bad)}")

    def _optimised_parameters(self, optimizer: torch.optim.Optimizer) -> list[tuple[str, str, Tensor]]:
        """(parameter name, group name, parameter) for every parameter the optimiser steps."""
        names = {id(p): n for n, p in self.named_parameters()}
        found = []
        for index, group in enumerate(optimizer.param_groups):  # LightningOptimizer exposes them too
            label = str(group.get("name", index))
            found += [(names.get(id(p), f"a parameter of group {label}"), label, p) for p in group["params"]]
        return found

    def _grad_scaler(self) -> Optional[Any]:
        """The mixed-precision GradScaler of the running trainer, if any (16-mixed on GPU)."""
        if self._trainer is None:
            return None
        return getattr(self.trainer.precision_plugin, "scaler", None)
