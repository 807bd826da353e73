"""The prepared GPU check: one short run on a fresh H100 / H200 that tries everything CUDA-only.

Run through ``scripts/device_check.sh`` (which installs the carried wheels first); see
docs/development.md, "The GPU check". Stages, each a pass / fail row of one table:

1. the full-size random models (``threestudio_like.priors.fullsize``), built on the GPU;
2. the ``cuda`` tests (``pytest -m cuda``);
3. ``dreamfusion-sd``: 200 steps at ``16-mixed``;
4. one VSD step at 512 px (``prolificdreamer``'s second phase), with its peak memory;
5. one 8-view MVDream step at 256 px;
6. Magic3D: a coarse stage, then a refine step through nvdiffrast with the texture bake.

Each row gives the step time, the peak memory (the GPU's on CUDA, the process's on the CPU) and the
backend each part used (the ``backend:`` lines of the run). ``--dry-run`` does the same on a CPU at
reduced size (models a eighth as wide, small renders, 2 steps) to check the script itself.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from benchmarks.bench_fullsize import resolve_stages, run_cli, run_length, second_phase
from threestudio_like.priors.fullsize import build_fullsize_models

@dataclass
class Scale:
    """How big the check runs: the real sizes on a GPU, reduced ones for ``--dry-run``."""

    dreamfusion_steps: int
    vsd_size: int
    mvdream_size: int
    reduced_models: bool

    @staticmethod
    def for_run(dry_run: bool) -> "Scale":
        return Scale(2, 64, 32, True) if dry_run else Scale(200, 512, 256, False)


def short_run(models: dict[str, str], steps: int = 2) -> dict[str, Any]:
    return {
        "system.prompt_processor.pretrained_model_name_or_path": models["sd21-base"],
        "system.guidance.pretrained_model_name_or_path": models["sd21-base"],
        **run_length(steps),
    }


def recipe_stages(models: dict[str, str], scale: Scale) -> list[tuple[str, str, dict[str, Any]]]:
    """(row, recipe, overrides) of the training stages; ``{trial:ROW}`` names an earlier row's trial."""
    critic = {"system.guidance.pretrained_model_name_or_path_lora": models["sd21"]}
    mvdream = {"system.guidance.pretrained_model_name_or_path": models["mvdream-sd21-4view"]}
    return [
        (f"dreamfusion-sd, {scale.dreamfusion_steps} steps 16-mixed", "dreamfusion-sd",
         {**short_run(models, scale.dreamfusion_steps), "trainer.precision": "16-mixed"}),
        (f"VSD step at {scale.vsd_size} px", "prolificdreamer", {**short_run(models), **critic, **second_phase(scale.vsd_size)}),
        (f"MVDream 8 views at {scale.mvdream_size} px", "mvdream-sd21",
         {**short_run(models), **mvdream, **second_phase(scale.mvdream_size, views=8)}),
        ("magic3d-coarse-sd", "magic3d-coarse-sd", short_run(models)),
        ("magic3d-refine-sd + texture bake", "magic3d-refine-sd",
         {**short_run(models), "system.geometry_convert_from": "{trial:magic3d-coarse-sd}",
          "system.geometry_convert_override.isosurface_threshold": "auto"}),
    ]


def backends_used(log: str) -> str:
    """'part -> backend' of each ``backend:`` line a run printed, once each."""
    seen: dict[str, None] = {}
    with open(log, errors="replace") as f:
        for line in f:
            found = re.search(r"backend: (.+?) -> (\S+)", line)
            if found:
                seen[f"{found.group(1)}: {found.group(2)}"] = None
    return "; ".join(seen) or "-"


def peak_memory(result: dict[str, Any]) -> float:
    profile = result.get("profile") or {}
    device_peak = profile.get("peak_device_memory_bytes")
    return (device_peak if device_peak is not None else result["peak_bytes"]) / 2**30


def run_tests(out: str) -> dict[str, Any]:
    """``pytest -m cuda``: pass when nothing failed (on a CPU every test skips)."""
    started = time.perf_counter()
    log = os.path.join(out, "cuda-tests.log")
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-o", "addopts="],
                               stdout=f, stderr=subprocess.STDOUT)
    with open(log, errors="replace") as f:
        summary = [line.strip() for line in f if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    # exit 5: nothing collected to run, e.g. every test deselected
    return {"ok": code in (0, 5), "seconds": time.perf_counter() - started, "note": summary[-1] if summary else f"exit {code}"}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="on a CPU at reduced size: checks the script, not the GPU")
    parser.add_argument("--out", default=os.path.join("outputs", "device-check"), help="models, trials and logs")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here; on a CPU run the --dry-run", file=sys.stderr)
        return 2
    scale = Scale.for_run(args.dry_run)
    device = "cpu" if args.dry_run else "cuda"
    os.makedirs(args.out, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {gpu}{' (dry run)' if args.dry_run else ''}", flush=True)

    table: list[tuple[str, str, str, str, str]] = []
    started = time.perf_counter()
    models_dir = os.path.join(args.out, "models-reduced" if scale.reduced_models else "models")
    try:
        models = build_fullsize_models(models_dir, reduced=scale.reduced_models, device=device)
        table.append(("full-size models" + (" (reduced)" if scale.reduced_models else ""), "pass", f"{time.perf_counter() - started:.0f} s build", "-", "-"))
    except Exception as e:  # a failed stage is a row of the table, not the end of the check
        table.append(("full-size models", "FAIL", "-", "-", f"{type(e).__name__}: {e}"[:120]))
        _print(table)
        return 1
    tests = run_tests(args.out)
    table.append(("cuda tests", "pass" if tests["ok"] else "FAIL", f"{tests['seconds']:.0f} s", "-", tests["note"]))

    trials: dict[str, str] = {}
    for row, recipe, overrides in recipe_stages(models, scale):
        result = run_cli(recipe, resolve_stages(overrides, trials), os.path.join(args.out, re.sub(r"\W+", "_", row)))
        if result.get("trial"):
            trials[row] = result["trial"]
        seconds = (result.get("profile") or {}).get("seconds_per_step")
        table.append((row, "pass" if result["exit"] == 0 else f"FAIL (exit {result['exit']}, {result['log']})",
                      f"{seconds:.2f} s/step" if seconds else "-", f"{peak_memory(result):.1f} GiB", backends_used(result["log"])))
        print(" | ".join(table[-1]), flush=True)
    _print(table)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0 if all(r[1] == "pass" for r in table) else 1


def _print(table: list[tuple[str, ...]]) -> None:
    header = ("stage", "result", "time", "peak memory", "backends")
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(4)]
    print()
    for r in [header, *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4])


if __name__ == "__main__":
    sys.exit(main())
