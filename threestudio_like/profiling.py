"""``--profile``: what one training step costs: seconds, peak memory and floating-point operations by phase.

The first step is counted with ``torch.utils.flop_counter`` (forward and backward apart, split at
Lightning's ``on_before_backward``); later steps are timed. FLOPs are attributed through the module
names the counter tracks: the frozen diffusion networks are not submodules of the system, so they
appear under their own class names (``UNet2DConditionModel``, ``AutoencoderKL.encoder``, ...) and
everything else in the step is the render. The counter counts matrix products, convolutions and
attention, not element-wise work or hash-grid lookups, so a render's FLOPs are its MLPs only.

The figures go to ``<trial>/profile.json`` and are printed at the end of training; the projection is
the time an H100 would take at 40% of its dense fp16 peak (989 TFLOP/s), a common planning figure for a
diffusion UNet step.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections import defaultdict
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

H100_DENSE_FP16_FLOPS = 989.4e12
PROJECTION_EFFICIENCY = 0.4
UNET_CLASSES = ("UNet2DConditionModel", "MultiViewUNet2DConditionModel")
VAE_CLASS = "AutoencoderKL"
# ``vae.encode`` / ``vae.decode`` call the VAE's halves without its own forward, so the counter
# names them by their classes
VAE_HALVES = {"Encoder": "vae encode", "Decoder": "vae decode"}
TEXT_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")


# torch counts the GPU attention kernels but not the CPU one (scaled_dot_product_attention on the
# CPU would count 0): the same formulas for it, unless a torch release has them already
_CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _CPU_ATTENTION.default not in flop_registry and _CPU_ATTENTION not in flop_registry:

    @register_flop_formula(_CPU_ATTENTION)
    def _cpu_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_attention_backward_flops(
        grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def phase_of(module_name: str) -> Optional[str]:
    """The phase a top-level module name of the counter belongs to; None for the render (the rest)."""
    root, _, rest = module_name.partition(".")
    if root in UNET_CLASSES:
        return "unet"
    if root in TEXT_CLASSES:
        return "text encoder"
    if root == VAE_CLASS:
        return "vae decode" if rest.startswith(("decoder", "post_quant_conv")) else "vae encode"
    return VAE_HALVES.get(root)


def flops_by_phase(counts: dict[str, dict[Any, int]]) -> dict[str, int]:
    """{phase: FLOPs} from a counter's per-module counts: the networks' outermost modules, the render the rest."""
    totals: dict[str, int] = defaultdict(int)
    for name, ops in counts.items():
        phase = phase_of(name)
        # count each module once: the VAE's halves by their own outermost names, the other networks as a whole
        outermost = name.count(".") == (1 if name.startswith(VAE_CLASS + ".") else 0)
        if phase is not None and outermost:
            totals[phase] += sum(ops.values())
    totals["render"] = sum(counts.get("Global", {}).values()) - sum(totals.values())
    return dict(totals)


def peak_host_memory_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StepProfiler(Callback):
    """Counts the first training step's FLOPs by phase, times the steps after it, records peak memory."""

    def __init__(self, trial_dir: str) -> None:
        self.trial_dir = trial_dir
        self.forward: dict[str, int] = defaultdict(int)
        self.backward: dict[str, int] = defaultdict(int)
        self.step_seconds: list[float] = []
        self._counter: Optional[FlopCounterMode] = None
        self._marked: dict[str, int] = {}
        self._hooks: list[Any] = []
        self._backward_from = self._vae_before = 0
        self._critic_done: Optional[int] = None
        self._started = 0.0
        self._profiled = False

    # -------------------------------------------------------------- FLOP counting (first step)
    # One counter for the whole step (its module tracker follows a module into its backward only
    # within one counter). The backward is split with the counter's running total: the critic's
    # part ends when the last trainable guidance parameter (LoRA, camera embedding) gets its
    # gradient (its graph was built last, so autograd runs it first); the frozen networks' names
    # stay "current" to the tracker after their backward (their inputs need no gradient), so only
    # the VAE's backward is taken by name; the render is the rest.
    def _start_counting(self, pl_module: LightningModule) -> None:
        self._counter, self._marked, self._critic_done = FlopCounterMode(display=False), {}, None
        self._counter.__enter__()
        self._hooks = [
            parameter.register_post_accumulate_grad_hook(self._critic_gradient)
            for name, parameter in pl_module.named_parameters()
            if parameter.requires_grad and name.startswith("guidance.")
        ]

    def _critic_gradient(self, parameter: torch.Tensor) -> None:
        self._critic_done = self._global()

    def _global(self) -> int:
        return sum(self._counter.get_flop_counts().get("Global", {}).values())  # type: ignore[union-attr]

    def _forward_mark(self) -> None:
        """Add what was counted since the last mark to the forward totals."""
        now = flops_by_phase(self._counter.get_flop_counts())  # type: ignore[union-attr]
        for phase, flops in now.items():
            self.forward[phase] += flops - self._marked.get(phase, 0)
        self._marked = now

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if self._counter is not None:
            self._forward_mark()
            self._backward_from, self._vae_before, self._critic_done = self._global(), self._vae_total(), None

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._counter is None:
            return
        total = self._global() - self._backward_from
        critic = (self._critic_done - self._backward_from) if self._critic_done is not None else 0
        vae = self._vae_total() - self._vae_before
        for phase, flops in (("critic unet", critic), ("vae encode", vae), ("render", total - critic - vae)):
            self.backward[phase] += flops
        self._marked = flops_by_phase(self._counter.get_flop_counts())

    def _vae_total(self) -> int:
        phases = flops_by_phase(self._counter.get_flop_counts())  # type: ignore[union-attr]
        return phases.get("vae encode", 0) + phases.get("vae decode", 0)

    def _stop_counting(self) -> None:
        if self._counter is not None:
            self._forward_mark()
            self._counter.__exit__(None, None, None)
            self._counter = None
            for hook in self._hooks:
                hook.remove()

    # -------------------------------------------------------------- timing (later steps)
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._profiled:
            self._start_counting(pl_module)
        _synchronize(pl_module.device)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        _synchronize(pl_module.device)
        if self._profiled:
            self.step_seconds.append(time.perf_counter() - self._started)
        else:
            self._stop_counting()
            self._profiled = True

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop_counting()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        report = self.report(pl_module.device)
        with open(os.path.join(self.trial_dir, "profile.json"), "w") as f:
            json.dump(report, f, indent=2)
        print(format_report(report))

    def report(self, device: torch.device) -> dict[str, Any]:
        total = sum(self.forward.values()) + sum(self.backward.values())
        seconds = sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else None
        return {
            "device": str(device),
            "seconds_per_step": seconds,
            "timed_steps": len(self.step_seconds),
            "peak_host_memory_bytes": peak_host_memory_bytes(),
            "peak_device_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            "forward_flops": dict(self.forward),
            "backward_flops": dict(self.backward),
            "total_flops": total,
            "projected_h100_seconds": total / (PROJECTION_EFFICIENCY * H100_DENSE_FP16_FLOPS),
        }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_report(report: dict[str, Any]) -> str:
    """The printed table of a profile."""
    lines = ["Profile of one training step (FLOPs of the first step; seconds: mean of the later steps)"]
    for direction in ("forward", "backward"):
        for phase, flops in sorted(report[f"{direction}_flops"].items()):
            if flops:
                lines.append(f"  {direction:<9}{phase:<14}{flops / 1e9:>12.1f} GFLOP")
    seconds = report["seconds_per_step"]
    lines.append(f"  total {report['total_flops'] / 1e12:.3f} TFLOP; {report['projected_h100_seconds'] * 1e3:.1f} ms on an H100 "
                 f"at {PROJECTION_EFFICIENCY:.0%} of dense fp16 peak")
    lines.append(f"  {'%.2f s/step' % seconds if seconds is not None else 'no step timed (train 2 steps or more)'} on "
                 f"{report['device']}; peak host memory {report['peak_host_memory_bytes'] / 2**30:.2f} GiB"
                 + (f", peak device memory {report['peak_device_memory_bytes'] / 2**30:.2f} GiB"
                    if report["peak_device_memory_bytes"] is not None else ""))
    return "\n".join(lines)
