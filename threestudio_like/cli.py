"""Command line: ``threestudio-like --config X.yaml --train [key=value ...]`` (threestudio's flags)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Any, Optional

import torch

from threestudio_like.config import ConfigError, dump_config, finalize_config, load_config
from threestudio_like.registry import UnknownTypeError, find
from threestudio_like.systems.handover import find_last_path

# Mistakes in what the user asked for (bad config, missing file or model): a message, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, UnknownTypeError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threestudio-like",
        description="Text-to-3D by score distillation. Any argument of the form key=value overrides the config.",
        epilog='example: threestudio-like --config configs/dreamfusion-sd.yaml --train system.prompt_processor.prompt="a hamburger"',
    )
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--gpu", default="0", help="GPU index or comma-separated indices (ignored without CUDA)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="optimise, then render the test turntable")
    mode.add_argument("--validate", action="store_true", help="render the validation views of resume=<ckpt>")
    mode.add_argument("--test", action="store_true", help="render the test turntable of resume=<ckpt>")
    mode.add_argument("--export", action="store_true", help="export a mesh from resume=<ckpt>")
    parser.add_argument("--verbose", action="store_true", help="show library logs and full tracebacks")
    parser.add_argument("--typecheck", action="store_true", help="accepted for threestudio compatibility")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    unknown_flags = [e for e in extras if e.startswith("--")]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)} (config overrides are written key=value)")
    if not args.verbose:
        _quiet_libraries()
    try:
        run(args, extras)
    except USER_ERRORS as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from threestudio_like.systems.base import TrainingDivergedError

        if isinstance(e, TrainingDivergedError) and not args.verbose:
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    return 0


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    accelerator, devices = select_devices(args.gpu)
    cfg = load_config(args.config, cli_args=overrides)
    exp = finalize_config(cfg, n_gpus=len(devices) if isinstance(devices, list) else 1)
    if exp.resume is not None:
        exp.resume = find_last_path(exp.resume)
        if not os.path.isfile(exp.resume):
            raise FileNotFoundError(f"resume={exp.resume}: no such checkpoint file.")
        exp.trial_dir = trial_dir_of_checkpoint(exp.resume) or exp.trial_dir
    elif not args.train:
        raise ConfigError("--validate, --test and --export need a checkpoint: add resume=<trial dir>/ckpts/last.ckpt")

    import lightning.pytorch as pl

    pl.seed_everything(exp.seed, workers=True, verbose=False)
    save_dir = os.path.join(exp.trial_dir, "save")
    datamodule = find(exp.data_type)(exp.data, seed=exp.seed)
    system = find(exp.system_type)(exp.system, save_dir=save_dir, resumed=exp.resume is not None)

    if args.export:
        load_weights(system, exp.resume)
        if accelerator == "gpu":
            system.to(f"cuda:{devices[0]}")
        for path in system.export():
            print(f"Exported {path}")
        return

    from threestudio_like.trainer import build_trainer

    trainer, interrupt = build_trainer(exp, accelerator, devices)
    if args.train:
        system.check_models_available()
        dump_config(os.path.join(exp.trial_dir, "configs", "parsed.yaml"), exp)
        print(f"Trial directory: {exp.trial_dir}")
        trainer.fit(system, datamodule=datamodule, ckpt_path=exp.resume)
        # the final state is always kept, whether or not max_steps is a multiple of the checkpoint interval
        path = os.path.join(exp.trial_dir, "ckpts", "last.ckpt")
        trainer.save_checkpoint(path, weights_only=False)  # the full state (optimiser, RNG, step): resume continues exactly
        if interrupt.interrupted:
            print(f"Interrupted at step {trainer.global_step}: saved {path}; resume with resume={path}")
        trainer.test(system, datamodule=datamodule, verbose=False)
        for path in system.export():  # a run ends with a mesh, as well as a checkpoint and a video
            print(f"Exported {path}")
    elif args.validate:
        trainer.validate(system, datamodule=datamodule, ckpt_path=exp.resume, verbose=False)
    elif args.test:
        trainer.test(system, datamodule=datamodule, ckpt_path=exp.resume, verbose=False)


def select_devices(gpu: str) -> tuple[str, Any]:
    """CUDA devices when present; otherwise the CPU, announced once."""
    if torch.cuda.is_available():
        return "gpu", [int(i) for i in gpu.split(",") if i.strip()]
    print("No CUDA GPU found: running on the CPU with the built-in PyTorch backends.")
    return "cpu", 1


def trial_dir_of_checkpoint(ckpt: str) -> Optional[str]:
    """``<trial>/ckpts/x.ckpt`` -> ``<trial>`` so a resumed run keeps writing to the same trial."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    return os.path.dirname(folder) if os.path.basename(folder) == "ckpts" else None


def load_weights(system: torch.nn.Module, ckpt: str) -> None:
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    system.load_state_dict(checkpoint["state_dict"])
    system.on_load_checkpoint(checkpoint)


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
