"""Divergence caught before it is saved: NaN / inf in the loss, a render, a gradient, a
parameter or the optimiser state stops training with one error naming the step and the parts.

The checks run inside the optimiser step (Lightning runs ModelCheckpoint's batch-end hook
before the module's), so a step that went bad never reaches a checkpoint. Cleaning such as
``nan_to_num`` elsewhere must never hide what is checked here.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

import torch

from threestudio_like.utils.typing import Bool, RenderOutput, Tensor


class TrainingDivergedError(RuntimeError):
    """The loss, a render, a gradient, a parameter or the optimiser state became NaN / infinite.

    Raised before the step's checkpoint is written, so the checkpoints on disk stay good.
    """


# Render outputs every renderer produces; a NaN field shows up in them (renderers never skip NaN samples).
CHECKED_RENDER_KEYS = ("comp_rgb", "opacity")
MAX_NAMES_IN_MESSAGE = 6


def finite_flags(tensors: Sequence[Tensor]) -> tuple[list[int], Optional[Bool[Tensor, "K"]]]:
    """Which of ``tensors`` hold only finite values, without a host sync: (order, flags), where
    ``flags[k]`` is True when ``tensors[order[k]]`` is finite (empty tensors are). Two fused
    reductions (``torch._foreach_norm``) per device and dtype, not one check per tensor: a NaN shows
    in the 2-norm (a sum), an inf in the max-norm; a huge finite value only overflows the 2-norm to
    inf, which is not taken for a NaN."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        if t.numel() > 0:
            groups.setdefault((t.device, t.dtype), []).append(i)
    if not groups:
        return [], None
    device = next(iter(groups))[0]
    order: list[int] = []
    flags = []
    with torch.no_grad():
        for indices in groups.values():
            group = [tensors[i].detach() for i in indices]
            peak = torch.stack(torch._foreach_norm(group, ord=math.inf))
            l2 = torch.stack(torch._foreach_norm(group, ord=2))
            flags.append((torch.isfinite(peak) & ~torch.isnan(l2)).to(device))
            order += indices
    return order, torch.cat(flags)


def _floating(named: Iterable[tuple[str, Any]]) -> list[tuple[str, Tensor]]:
    return [(n, t) for n, t in named if torch.is_tensor(t) and t.is_floating_point()]


def _bad_names(named: list[tuple[str, Tensor]], order: list[int], finite: list[Any]) -> list[str]:
    """The distinct names whose tensor is not finite, in ``named``'s order."""
    bad = {order[k] for k, ok in enumerate(finite) if not ok}
    return list(dict.fromkeys(n for i, (n, _) in enumerate(named) if i in bad))


def nonfinite_names(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    """The distinct names whose tensor holds a NaN or inf, in order; one device sync for all."""
    named = _floating(named)
    order, flags = finite_flags([t for _, t in named])
    if flags is None:
        return []
    return _bad_names(named, order, flags.tolist())


class _StepChecks:
    """What one optimiser step found, still on the device: read back with one sync after the step."""

    def __init__(self) -> None:
        self.renders: list[tuple[list[tuple[str, Tensor]], list[int], Tensor]] = []
        self.losses: list[tuple[Tensor, dict[str, Tensor]]] = []
        self.grads: Optional[tuple[list[tuple[str, Tensor]], list[int], Tensor]] = None
        # every parameter's largest |x| before the step: the hint when a render went bad
        self.peaks: Optional[tuple[list[str], Tensor]] = None


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
    (a ``LightningModule``, whose ``global_step``, ``trainer`` and parameters it reads).

    Inside an optimiser step the render, loss and gradient checks only queue their verdicts on the
    device; ``check_state_after_step`` reads everything back with one host sync, before the step's
    checkpoint, and raises for the first thing that went bad (render, loss, gradients, state).
    Called outside a step (a test driving the system), each check syncs and raises at once."""

    _step_checks: Optional[_StepChecks] = None  # set while Lightning runs an optimiser step

    def check_render(self, out: RenderOutput) -> None:
        """A training render must be finite: a NaN here is a broken field, not noise to clean."""
        named = _floating((k, out[k]) for k in CHECKED_RENDER_KEYS if k in out)
        order, flags = finite_flags([t for _, t in named])
        if flags is None:
            return
        if self._step_checks is not None:
            self._step_checks.renders.append((named, order, flags))
            return
        bad = _bad_names(named, order, flags.tolist())
        if bad:
            raise self._render_error(bad, self._parameter_hint())

    def _render_error(self, bad: list[str], hint: str) -> TrainingDivergedError:
        return diverged(self.global_step, f"the render's {', '.join(bad)} became NaN/inf{hint}")

    def check_loss(self, total: Tensor, losses: dict[str, Tensor]) -> None:
        """The weighted loss must be finite; ``losses`` are its terms, named in the error."""
        if self._step_checks is not None:
            self._step_checks.losses.append((total.detach(), {k: v.detach() for k, v in losses.items()}))
            return
        if not torch.isfinite(total):
            raise self._loss_error(total, losses)

    def _loss_error(self, total: Tensor, losses: dict[str, Tensor]) -> TrainingDivergedError:
        terms = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        return diverged(self.global_step, f"the loss became {total.item()} ({terms})")

    def _parameter_hint(self, peaks: Optional[tuple[list[str], list[float]]] = None) -> str:
        """Which parameter to suspect when everything stored is finite: the largest in magnitude.
        ``peaks``: (names, largest |x| of each), read before the step; else the parameters now."""
        if peaks is None:
            named = [(n, p) for n, p in self.named_parameters() if p.numel() > 0]
            if not named:
                return ""
            values = torch.stack(torch._foreach_norm([p.detach().float() for _, p in named], ord=math.inf)).tolist()
            peaks = ([n for n, _ in named], values)
        names, values = peaks
        if not names or not all(math.isfinite(v) for v in values):
            return ""
        size, name = max(zip(values, names))
        return f"; the parameters are finite, the largest is {name} (|x| up to {size:.3g})"

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after a mixed-precision plugin unscaled the gradients.
        checks = self._step_checks
        if checks is not None and checks.renders:  # the hint for a bad render needs the weights before the step
            named = [(n, p) for n, p in self.named_parameters() if p.numel() > 0]
            if named:
                with torch.no_grad():
                    peaks = torch._foreach_norm([p.detach().float() for _, p in named], ord=math.inf)
                checks.peaks = ([n for n, _ in named], torch.stack(peaks))
        if self._grad_scaler() is not None:
            # With a GradScaler, inf gradients are its normal overflow signal: it skips this step
            # and lowers the loss scale. A real divergence still shows in the loss, renders or parameters.
            return
        grads = _floating((name, p.grad) for name, _, p in self._optimised_parameters(optimizer) if p.grad is not None)
        order, flags = finite_flags([t for _, t in grads])
        if flags is None:
            return
        if checks is not None:
            checks.grads = (grads, order, flags)
            return
        bad = _bad_names(grads, order, flags.tolist())
        if bad:
            raise self._grad_error(bad)

    def _grad_error(self, bad: list[str]) -> TrainingDivergedError:
        return diverged(self.global_step, f"the gradients of {_list_names(bad)} became NaN/inf")

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        self._step_checks = _StepChecks()
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # type: ignore[misc]
            # Here, not in on_train_batch_end: Lightning runs ModelCheckpoint's batch-end hook first.
            self.check_state_after_step(optimizer)
        finally:
            self._step_checks = None

    def check_state_after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Parameters and optimiser state must be finite after a step; inside an optimiser step the
        render, loss and gradient verdicts queued by then are read in the same single device sync."""
        optimised = self._optimised_parameters(optimizer)
        state = getattr(optimizer, "optimizer", optimizer).state
        named = [(name, p) for name, _, p in optimised]
        for _, group, param in optimised:
            named += [(f"optimizer state of group {group}", t) for t in state.get(param, {}).values()]
        named = _floating(named)
        order, flags = finite_flags([t for _, t in named])
        checks, self._step_checks = self._step_checks, None
        queued: list[Tensor] = [] if flags is None else [flags.float()]
        if checks is not None:
            queued += [f.float() for _, _, f in checks.renders]
            queued += [torch.isfinite(total).float().reshape(1) for total, _ in checks.losses]
            queued += [checks.grads[2].float()] if checks.grads is not None else []
            queued += [checks.peaks[1].float()] if checks.peaks is not None else []
        if not queued:
            return
        device = queued[0].device
        values = iter(torch.cat([q.to(device) for q in queued]).tolist())  # the one host sync

        def take(n: int) -> list[float]:
            return [next(values) for _ in range(n)]

        state_bad = _bad_names(named, order, take(len(order))) if flags is not None else []
        if checks is not None:
            renders = [_bad_names(n, o, take(len(o))) for n, o, _ in checks.renders]
            losses = [(total, terms, take(1)[0]) for total, terms in checks.losses]
            grads_bad = _bad_names(checks.grads[0], checks.grads[1], take(len(checks.grads[1]))) if checks.grads else []
            peaks = (checks.peaks[0], take(len(checks.peaks[0]))) if checks.peaks is not None else None
            bad_render = list(dict.fromkeys(name for names in renders for name in names))
            if bad_render:
                raise self._render_error(bad_render, self._parameter_hint(peaks) if peaks is not None else "")
            for total, terms, ok in losses:
                if not ok:
                    raise self._loss_error(total, terms)
            if grads_bad:
                raise self._grad_error(grads_bad)
        if state_bad:
            raise diverged(self.global_step, f"after the optimiser step these hold NaN/inf: {_list_names(state_bad)}")

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
