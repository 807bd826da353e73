"""One VSD training step against one SDS training step on the same recipe: wall time and peak memory.

SDS is the shipped CPU recipe (configs/dreamfusion-cpu.yaml, on the built-in prior builtin:shapes32).
VSD is that same config as a ProlificDreamer coarse stage: ``stable-diffusion-vsd-guidance`` at CFG
7.5 with its LoRA critic on the prior's own UNet, losses ``lambda_vsd = lambda_lora = 1`` (no
``lambda_sds``), and the critic trained in an optimiser group ``guidance`` at lr 1e-4 beside the
recipe's parts at the recipe's lr. Everything else (cameras, resolution, NeRF, renderer, Adam) is
the recipe's.

A step is the whole of a training step: render, guidance (VSD: frozen UNet with CFG, critic with
and without the camera, the critic's own diffusion loss), backward, optimiser step. Time is the
best of a few steps after a warm-up one (the least disturbed by other load on the machine), the
two systems' steps alternating so that a change in that load hits both alike. Peak
memory is the most memory the step holds above what lives between steps (weights, optimiser
state): on CUDA ``torch.cuda.max_memory_allocated``; on CPU the tensor allocations the profiler
records during one further, untimed step (the process's peak RSS would mostly count the Python,
torch and model footprint, the same for both, and cannot be reset between the two recipes).

Run ``python benchmarks/bench_vsd.py`` (``--help`` for the options); ``run()`` returns the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

if __package__ in (None, ""):  # run as a script from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import best_time
from threestudio_like.experiment import finalize_config, load_config
from threestudio_like.recipes import RECIPES_DIR
from threestudio_like.experiment import find_part

RECIPE = os.path.join(RECIPES_DIR, "dreamfusion-cpu.yaml")
PROMPT = "a red cube"  # the prior's prompts are "a <colour> <shape>"
GUIDANCE_LR = 1e-4

# The recipe as ProlificDreamer's coarse stage with VSD; the optimiser groups are set in vsd_config.
VSD_OVERRIDES = [
    "system_type=prolificdreamer-system",
    "system.stage=coarse",
    "system.guidance_type=stable-diffusion-vsd-guidance",
    "system.guidance.guidance_scale=7.5",
    "system.loss.lambda_vsd=1",
    "system.loss.lambda_lora=1",
]


def recipe_config(method: str, tmp: str, overrides: list[str]) -> Any:
    """The experiment config of ``method`` ("sds" or "vsd") on the CPU recipe, validated."""
    common = [f"system.prompt_processor.cache_dir={tmp}/cache", f"system.prompt_processor.prompt={PROMPT}",
              f"exp_root_dir={tmp}/outputs", *overrides]
    if method == "sds":
        return finalize_config(load_config(RECIPE, cli_args=common))
    cfg = load_config(RECIPE, cli_args=[*VSD_OVERRIDES, *common])
    # dotlist overrides cannot delete a key (load_config wants key=value): edit the merged config
    del cfg.system.loss["lambda_sds"]
    # One group per part the SDS recipe trains in its single group (each at the recipe's lr), plus the
    # critic. Parts with nothing to learn (the solid-colour background) are skipped by build_optimizer.
    cfg.system.optimizer.params = {"geometry": {}, "material": {}, "background": {}, "renderer": {},
                                   "guidance": {"lr": GUIDANCE_LR}}
    return finalize_config(cfg)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_step_memory(step: Callable[[], None], device: torch.device) -> float:
    """Bytes one call of ``step`` holds at its peak above what was allocated when it started."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return float(torch.cuda.max_memory_allocated(device) - start)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # allocations (+) and frees (-) in time order: the running sum is what the step holds
    records = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events = sorted(records, key=lambda event: event[0])
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return float(peak)


def training_step(method: str, tmp: str, device: torch.device, overrides: list[str]) -> tuple[Callable[[], None], int]:
    """A function running one full training step of ``method``'s system (each call the next batch),
    and the number of parameters its optimiser trains."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    exp = recipe_config(method, tmp, overrides)
    torch.manual_seed(exp.seed)
    system = find_part(exp.system_type)(exp.system, save_dir=os.path.join(tmp, method)).to(device)
    system.prepare_for_training(device)  # the guidance (with a VSD critic) before the optimiser, as a fit does
    system.prompt_utils  # text embeddings once, outside the timed steps
    sampler = find_part(exp.data_type)(exp.data, seed=exp.seed).sampler
    optimizer = system.configure_optimizers()["optimizer"]
    system.train()
    counter = iter(range(10**9))

    def step() -> None:
        index = next(counter)
        batch = move_data_to_device(sampler.sample(index), device)
        system.update_step(index)
        loss = system.training_step(batch, index)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)

    return step, sum(p.numel() for group in optimizer.param_groups for p in group["params"])


def run(steps: int = 3, warmup: int = 1, device: str | None = None, threads: int | None = None,
        overrides: list[str] | None = None) -> dict[str, Any]:
    """``{"sds": {...}, "vsd": {...}, "ratio": {"seconds": vsd/sds, "peak_bytes": vsd/sds}}``.

    The two systems live side by side and their timed steps alternate, so a change in the
    machine's other load during the run hits both alike; each reports its best step."""
    import warnings

    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results: dict[str, Any] = {"device": str(dev), "threads": torch.get_num_threads(), "steps": steps}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.filterwarnings("ignore", message=".*self.log.*")  # self.log() without a Trainer warns at every value
        methods = {m: training_step(m, tmp, dev, overrides or []) for m in ("sds", "vsd")}
        seconds = {m: float("inf") for m in methods}
        for _ in range(warmup):
            for step, _ in methods.values():
                step()
        for _ in range(steps):
            for m, (step, _) in methods.items():
                seconds[m] = min(seconds[m], best_time(step, 1, warmup=False))
        for m, (step, trained) in methods.items():
            peak = peak_step_memory(step, dev)
            results[m] = {"seconds": seconds[m], "peak_bytes": peak, "trained_parameters": float(trained)}
    results["ratio"] = {k: results["vsd"][k] / results["sds"][k] for k in ("seconds", "peak_bytes")}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method (the best is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 gives stable numbers on a shared machine)")
    parser.add_argument("overrides", nargs="*", help="config overrides for both recipes, e.g. data.batch_size=1")
    args = parser.parse_args(argv)
    r = run(args.steps, args.warmup, args.device, args.threads, args.overrides)
    memory = "max_memory_allocated" if r["device"].startswith("cuda") else "profiler-recorded tensor allocations"
    print(f"One training step (render + guidance + backward + optimiser), {os.path.basename(RECIPE)} on "
          f"builtin:shapes32, device {r['device']}, {r['threads']} thread(s); best of {r['steps']} alternating steps")
    print(f"peak memory: the most a step holds above what lives between steps ({memory})")
    print(f"{'':<8}{'s/step':>10}{'steps/s':>10}{'peak MiB':>11}{'trained params':>16}")
    for method in ("sds", "vsd"):
        row = r[method]
        print(f"{method.upper():<8}{row['seconds']:>10.3f}{1 / row['seconds']:>10.2f}"
              f"{row['peak_bytes'] / 2**20:>11.1f}{row['trained_parameters']:>16,.0f}")
    print(f"{'VSD/SDS':<8}{r['ratio']['seconds']:>9.2f}x{'':>10}{r['ratio']['peak_bytes']:>10.2f}x")


if __name__ == "__main__":
    main()
