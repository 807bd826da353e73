"""Command line: ``threestudio-like --config X.yaml --train [key=value ...]`` (threestudio's flags)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import lightning.pytorch as pl
import torch

from threestudio_like.config import ConfigError
from threestudio_like.experiment import ExperimentConfig, finalize_config, find_part, load_config
from threestudio_like.export.fidelity import check_export as measure_export
from threestudio_like.mesh.isosurface import EmptyIsosurfaceError
from threestudio_like.interrupts import EXIT_INTERRUPTED, InterruptHandler, RunInterrupted
from threestudio_like.loggers import check_loggers
from threestudio_like.registry import UnknownTypeError
from threestudio_like.systems.divergence import TrainingDivergedError
from threestudio_like.trainer import GracefulInterrupt, build_trainer
from threestudio_like.trials import (
    CheckpointError,
    check_state_matches,
    check_writable,
    create_trial_dir,
    load_checkpoint,
    load_system_weights,
    remove_stale_temporaries,
    resolve_checkpoint,
    trial_dir_of_checkpoint,
    write_trial_config,
)
from threestudio_like.utils.io import disk_full_message, is_disk_full
from threestudio_like.utils.ranks import global_rank, rank_seed

# Mistakes in what the user asked for (bad config, missing file or model, unusable checkpoint):
# a message, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, UnknownTypeError, FileNotFoundError, CheckpointError)
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threestudio-like",
        description="Text-to-3D by score distillation. Any argument of the form key=value overrides the config.",
        epilog='example: threestudio-like --config configs/dreamfusion-sd.yaml --train system.prompt_processor.prompt="a hamburger"',
    )
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--gpu", default="0", help="GPU index or comma-separated indices (ignored without CUDA)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true", help="optimise, then render the test turntable")
    mode.add_argument("--validate", action="store_true", help="render the validation views of resume=<ckpt>")
    mode.add_argument("--test", action="store_true", help="render the test turntable of resume=<ckpt>")
    mode.add_argument("--export", action="store_true", help="export a mesh from resume=<ckpt>")
    parser.add_argument("--check", action="store_true",
                        help="check everything the run would use (config, parts, data, model folders, checkpoints), "
                             "say what it would run, and write nothing (alone: checks --train)")
    parser.add_argument("--profile", action="store_true",
                        help="with --train: count the first step's FLOPs by phase, time the later steps, record peak "
                             "memory; printed and written to <trial>/profile.json")
    parser.add_argument("--verbose", action="store_true", help="show library logs and full tracebacks")
    parser.add_argument("--typecheck", action="store_true", help="accepted for threestudio compatibility")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    unknown_flags = [e for e in extras if e.startswith("--")]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)} (config overrides are written key=value)")
    if not (args.train or args.validate or args.test or args.export):
        if not args.check:
            parser.error("one of the arguments --train --validate --test --export is required")
        args.train = True
    previous_showwarning = warnings.showwarning
    state = RunState()
    try:
        if not args.verbose:
            _quiet_libraries()
            warnings.showwarning = _show_warning
        with InterruptHandler() as handler:
            return run(args, extras, handler, state)
    except (RunInterrupted, KeyboardInterrupt):
        print(f"\n{state.interrupted()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (*USER_ERRORS, EmptyIsosurfaceError, TrainingDivergedError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED if isinstance(e, TrainingDivergedError) else EXIT_USER_ERROR
    except (OSError, RuntimeError) as e:
        if args.verbose or not is_disk_full(e):
            raise
        where = getattr(e, "filename", None) or state.trial_dir or "the output folder"
        print(f"error: {disk_full_message(str(where))}. Free disk space and run again"
              f"{state.resume_hint()}.", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        warnings.showwarning = previous_showwarning


@dataclass
class RunState:
    """Where a run has got to, so an interruption can say what was saved and what was not."""

    phase: str = "start-up"  # start-up | training | the turntable | the export
    trial_dir: Optional[str] = None  # set once this run writes to a trial folder
    checkpoint_io: Any = None  # the trainer's AtomicCheckpointIO (knows the newest checkpoint written)
    resumed_from: Optional[str] = None

    def newest_checkpoint(self) -> Optional[tuple[str, int]]:
        """(path, step) of the newest checkpoint this run wrote, or None."""
        return getattr(self.checkpoint_io, "last_saved", None)

    def resume_hint(self) -> str:
        saved = self.newest_checkpoint()
        path = saved[0] if saved else self.resumed_from
        return f" (resume with resume={path})" if path else ""

    def interrupted(self) -> str:
        if self.trial_dir is None:
            return "Interrupted during start-up: nothing was written."
        saved = self.newest_checkpoint()
        if self.phase == "training":
            if saved is None:
                kept = f"{self.resumed_from} is unchanged" if self.resumed_from else "no checkpoint was written"
                return f"Stopped by Ctrl-C before the first checkpoint of this run: {kept}."
            return (f"Stopped by a second Ctrl-C: the newest checkpoint is {saved[0]} (step {saved[1]}); later steps "
                    f"were not saved. Resume with resume={saved[0]}.")
        ckpt = saved[0] if saved else self.resumed_from
        if self.phase == "the turntable":
            return (f"Interrupted while rendering the turntable: {ckpt} is saved; the turntable video and the mesh "
                    f"were not written. Make them with --test and --export resume={ckpt}.")
        return (f"Interrupted during the export: {ckpt} and the turntable are saved; the mesh was not written. "
                f"Export it with --export resume={ckpt}.")


def run(args: argparse.Namespace, overrides: list[str], handler: InterruptHandler, state: RunState) -> int:
    """One CLI invocation; returns the exit code. Everything that can be checked (devices, config,
    output folder, data, model files, the checkpoint to resume or to start from) is checked before
    the trial folder is created or anything in it is written."""
    accelerator, devices = select_devices(args.gpu)
    if args.typecheck:
        print("--typecheck is accepted for threestudio compatibility and has no effect (tensor shapes are documented, not checked at run time).")
    cfg = load_config(args.config, cli_args=overrides)
    exp = finalize_config(cfg, n_gpus=len(devices) if isinstance(devices, list) else 1)
    check_loggers(exp.system.get("loggers") or {})
    checkpoint = None
    if exp.resume is not None:
        exp.resume = resolve_checkpoint(exp.resume)
        exp.trial_dir = trial_dir_of_checkpoint(exp.resume) or exp.trial_dir
        check_writable(exp.trial_dir, "trial folder", "copy the trial somewhere writable and resume from the copy")
        checkpoint = load_checkpoint(exp.resume)
        state.resumed_from = exp.resume
    elif not args.train:
        raise ConfigError("--validate, --test and --export need a checkpoint: add resume=<trial dir>/ckpts/last.ckpt")
    else:
        check_writable(exp.exp_root_dir)

    # each GPU rank draws its own noise (seed + rank, as threestudio); the camera data module
    # folds the rank into its own stream, so it gets the unranked seed
    pl.seed_everything(rank_seed(exp.seed, global_rank()), workers=True, verbose=False)
    datamodule = find_part(exp.data_type)(exp.data, seed=exp.seed)
    if not args.export:
        datamodule.check()  # the data on disk (e.g. a capture's transforms and images), before anything is written
    system = find_part(exp.system_type)(exp.system, save_dir=os.path.join(exp.trial_dir, "save"), resumed=checkpoint is not None)
    if args.train:
        system.check_models_available()
        if not args.check:  # the guidance (a trainable one holds checkpoint state) is part of what a resume must match
            system.prepare_for_training(training_device(accelerator, devices))
    if checkpoint is not None:
        check_state_matches(system, system.loadable_state(checkpoint["state_dict"]), exp.resume)
    if args.check:
        print(would_run(args, exp))
        return 0

    if args.export:
        load_system_weights(system, exp.resume, checkpoint)
        if accelerator == "gpu":
            system.to(f"cuda:{devices[0]}")
        state.trial_dir, state.phase = exp.trial_dir, "the export"
        paths = system.export()
        for path in paths:
            print(f"Exported {path}")
        check_export(system, paths, exp.data)
        return 0

    mode = "train" if args.train else "validate" if args.validate else "test"
    if args.train:
        exp.trial_dir = prepare_trial_dir(exp.trial_dir, exp, resumed=checkpoint is not None)
        system.save_dir = os.path.join(exp.trial_dir, "save")
    state.trial_dir = exp.trial_dir
    state.phase = "training" if args.train else "the turntable"

    resumed_step = int(checkpoint.get("global_step", 0)) if checkpoint is not None else None
    # several particles: each step trains one, so the others' parameters go unused (DDP must know)
    unused = bool(getattr(system, "leaves_parameters_unused", False))
    trainer, interrupt = build_trainer(
        exp, accelerator, devices, handler, mode, resumed_step, unused_parameters=unused, profile=args.profile
    )
    state.checkpoint_io = trainer.strategy.checkpoint_io
    del checkpoint  # Lightning reads the file again to restore the full training state
    if args.validate:
        trainer.validate(system, datamodule=datamodule, ckpt_path=exp.resume, verbose=False)
        return 0
    if args.test:
        trainer.test(system, datamodule=datamodule, ckpt_path=exp.resume, verbose=False)
        return 0
    return train(trainer, interrupt, system, datamodule, exp, state)


def would_run(args: argparse.Namespace, exp: ExperimentConfig) -> str:
    """What ``--check`` reports: the run the same command without it would start."""
    mode = "train" if args.train else "validate" if args.validate else "test" if args.test else "export"
    where = exp.trial_dir if exp.resume is not None else os.path.join(exp.exp_dir, exp.trial_name)
    steps = f", {exp.trainer.get('max_steps')} steps" if args.train and exp.trainer.get("max_steps") else ""
    source = f" from {exp.resume}" if exp.resume else ""
    return (f"Checked: {mode} {exp.system_type} on {exp.data_type}{steps}{source}, writing to {where}. "
            "Nothing was written.")


TRIAL_DIR_VARIABLE = "THREESTUDIO_LIKE_TRIAL_DIR"  # rank 0's trial, for the ranks a multi-GPU launcher starts


def prepare_trial_dir(trial_dir: str, exp: ExperimentConfig, resumed: bool) -> str:
    """The folder this run writes to, made ready: a new one created exclusively (or the resumed
    one cleaned of partial files) and its config written. A new folder that cannot be made ready
    (a full disk) is removed again. Ranks above 0, which the multi-GPU launcher starts with rank
    0's environment, use rank 0's folder and write nothing here."""
    if global_rank() > 0:
        return os.environ.get(TRIAL_DIR_VARIABLE, trial_dir)
    if not resumed:
        trial_dir = create_trial_dir(trial_dir)  # never shared with another run
    try:
        for path in remove_stale_temporaries(trial_dir):
            print(f"Removed a partial file left by an interrupted write: {path}")
        kept = write_trial_config(trial_dir, exp)
    except BaseException:
        if not resumed:
            shutil.rmtree(trial_dir, ignore_errors=True)
        raise
    if kept:
        print(f"The config differs from the one this run started with; that one is kept as {kept}")
    os.environ[TRIAL_DIR_VARIABLE] = trial_dir
    print(f"Trial directory: {trial_dir}")
    return trial_dir


def train(trainer: Any, interrupt: GracefulInterrupt, system: Any, datamodule: Any, exp: ExperimentConfig, state: RunState) -> int:
    """Optimise, keep the final state, render the turntable and export the mesh."""
    trainer.fit(system, datamodule=datamodule, ckpt_path=exp.resume)
    # the final state is always kept, whether or not max_steps is a multiple of the checkpoint interval
    path = os.path.join(exp.trial_dir, "ckpts", "last.ckpt")
    trainer.save_checkpoint(path, weights_only=False)  # the full state (optimiser, RNG, step): resume continues exactly
    if interrupt.interrupted:
        print(f"Interrupted at step {trainer.global_step}: saved {path}; resume with resume={path}")
    state.phase = "the turntable"
    trainer.test(system, datamodule=datamodule, verbose=False)
    state.phase = "the export"
    try:
        paths = system.export()  # a run ends with a mesh, as well as a checkpoint and a video
    except EmptyIsosurfaceError as error:
        # Training succeeded; only the configured level found no surface. Try the level that does.
        print(f"warning: the end-of-training export found no surface ({error}); exporting at isosurface_threshold=auto instead.")
        try:
            paths = system.export(isosurface_threshold="auto")
        except EmptyIsosurfaceError as again:
            print(f"warning: no mesh exported: {again}. The checkpoint and turntable are saved; "
                  f"export later with --export resume={path}")
            paths = []
    for exported in paths:
        print(f"Exported {exported}")
    check_export(system, paths, exp.data)  # the files against the model: a warning when they differ
    return EXIT_INTERRUPTED if interrupt.interrupted else 0


def check_export(system: Any, paths: list[str], data: Any) -> None:
    """The exported files rendered against the model: PSNR in the log and fidelity.json, a warning when low."""
    if global_rank() > 0 or not paths:
        return
    measure_export(system, paths, data)


def training_device(accelerator: str, devices: Any) -> torch.device:
    """The device this process trains on (under multi-GPU launchers, its local rank's GPU)."""
    if accelerator != "gpu":
        return torch.device("cpu")
    return torch.device("cuda", devices[int(os.environ.get("LOCAL_RANK", 0))])


def select_devices(gpu: str) -> tuple[str, Any]:
    """CUDA devices when present; otherwise the CPU, announced once. ``gpu`` is checked either way."""
    if not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*,?", gpu):
        raise ConfigError(f"--gpu {gpu!r} is not a device list: give GPU indices, e.g. --gpu 0 or --gpu 0,1.")
    if torch.cuda.is_available():
        return "gpu", [int(i) for i in gpu.split(",") if i.strip()]
    print("No CUDA GPU found: running on the CPU with the built-in PyTorch backends.")
    return "cpu", 1


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """Warnings are advice to the user: one line, without the source location."""
    print(f"warning: {message}", file=sys.stderr)


def _quiet_libraries() -> None:
    """Keep the console to our own messages and the progress bar."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero", "diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    try:
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
