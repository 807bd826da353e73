"""The Lightning trainer as this project configures it: atomic checkpoints, step progress bar,
Ctrl-C that saves, CSV metrics, CPU fallback."""

from __future__ import annotations

import os
from typing import Any, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from tqdm import tqdm

from threestudio_like.experiment import ExperimentConfig
from threestudio_like.interrupts import InterruptHandler
from threestudio_like.loggers import build_loggers
from threestudio_like.profiling import StepProfiler
from threestudio_like.trials import load_checkpoint, save_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints through ``trials``: written atomically (a crash never leaves a torn file, a
    full disk keeps the previous one), read with ``weights_only=True`` (a checkpoint cannot run code)."""

    def __init__(self) -> None:
        super().__init__()
        self.last_saved: Optional[tuple[str, int]] = None  # (path, step) of the newest checkpoint written

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        save_checkpoint(checkpoint, str(path))
        self.last_saved = (str(path), int(checkpoint.get("global_step", 0)))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        if not os.path.isfile(str(path)):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return load_checkpoint(str(path))


class StepProgressBar(Callback):
    """One bar over optimisation steps (works with endless camera streams), with steps/s and ETA."""

    def __init__(self) -> None:
        self.bar: Optional[tqdm] = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, desc="train", unit="step", dynamic_ncols=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.bar is None:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.bar.set_postfix(loss=f"{float(loss):.4g}", refresh=False)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)  # the error message starts on a line of its own


class GracefulInterrupt(Callback):
    """Makes the training loop the graceful part of the run's ``InterruptHandler``: there the
    first Ctrl-C lets the current step finish, then stops the loop."""

    def __init__(self, handler: InterruptHandler) -> None:
        self.handler = handler

    @property
    def interrupted(self) -> bool:
        return self.handler.requested

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.handler.graceful = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.handler.requested:
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.handler.graceful = False

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.handler.graceful = False


def device_count(devices: Any) -> int:
    """How many devices (ranks on one node) ``devices`` names: a list of indices or a count."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        return int(devices)
    return 1  # "auto" and the like: Lightning decides, with its default strategy


def choose_strategy(devices: Any, unused_parameters: bool, start_method: str = "popen") -> Optional[DDPStrategy]:
    """The strategy for ``devices``: DDP that tolerates parameters without a gradient in a step
    (``find_unused_parameters``) when several ranks train a system that may leave some unused,
    e.g. particles (each step trains one); None (Lightning's default) otherwise."""
    if device_count(devices) > 1 and unused_parameters:
        return DDPStrategy(find_unused_parameters=True, start_method=start_method)  # type: ignore[arg-type]
    return None


def build_trainer(
    exp: ExperimentConfig,
    accelerator: str,
    devices: Any,
    handler: Optional[InterruptHandler] = None,
    mode: str = "train",
    resumed_step: Optional[int] = None,
    unused_parameters: bool = False,
    profile: bool = False,
) -> tuple[Trainer, GracefulInterrupt]:
    """The trainer of a run in ``mode`` (train | validate | test): its logs, checkpoints and Ctrl-C.
    ``resumed_step``: the step of the checkpoint a training run continues from. ``unused_parameters``:
    the system may leave parameters without a gradient in a step (several devices then need DDP's
    ``find_unused_parameters``; a ``trainer.strategy`` in the config wins). ``profile``: count and time
    the training steps (``profiling.StepProfiler``)."""
    kwargs = dict(exp.trainer)
    if "strategy" not in kwargs:
        strategy = choose_strategy(devices, unused_parameters)
        if strategy is not None:
            kwargs["strategy"] = strategy
    show_progress = kwargs.pop("enable_progress_bar", True)
    if accelerator == "cpu" and str(kwargs.get("precision", "32")) in ("16", "16-mixed", "bf16-mixed", "bf16"):
        # Half precision is a GPU speed-up; on the CPU it is slower and less accurate.
        kwargs["precision"] = "32-true"
    # Analytic normals differentiate density during evaluation too; inference mode would forbid it.
    kwargs.setdefault("inference_mode", False)
    if "val_check_interval" in kwargs:
        kwargs.setdefault("check_val_every_n_epoch", None)
    interrupt = GracefulInterrupt(handler or InterruptHandler())
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=os.path.join(exp.trial_dir, "ckpts"), **exp.checkpoint),
        interrupt,
    ]
    if show_progress:
        callbacks.append(StepProgressBar())
    if profile:
        callbacks.append(StepProfiler(exp.trial_dir))
    trainer = Trainer(
        accelerator=accelerator,
        devices=devices,
        default_root_dir=exp.trial_dir,
        logger=build_loggers(exp.trial_dir, exp.system.get("loggers") or {}, mode, resumed_step),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    return trainer, interrupt
