"""Every GPU recipe at its real size on this machine: the released architectures with random weights.

``python -m benchmarks.run --only fullsize`` (or ``python -m benchmarks.bench_fullsize``) builds the
full-size model folders once (``threestudio_like.priors.fullsize``; cached in ``--models``), then
runs each GPU recipe as shipped through the real CLI with ``--profile``: 2 training steps, a 2-view
test render and the export. Only model paths, the prompt, the run length and the size of the
evaluation renders are overridden. Each row: exit code, peak memory of the run (the child's peak
resident memory), seconds per step on this CPU, the step's FLOPs by phase (``torch.utils.flop_counter``)
and the time an H100 would take at 40% of its dense fp16 peak.

A recipe phase that cannot fit this machine at its own resolution (ProlificDreamer's 512-px NeRF,
MVDream's 256-px NeRF phase) runs at two smaller render sizes; its peak memory, FLOPs and time are
then projected to the recipe's size linearly in the number of rendered pixels, and the row says so.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from threestudio_like.priors.fullsize import build_fullsize_models
from threestudio_like.profiling import PROJECTION_EFFICIENCY, H100_DENSE_FP16_FLOPS

DEFAULT_MODELS = os.path.join(os.path.expanduser("~"), ".cache", "threestudio_like", "fullsize")
DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
PROMPT = "a red cube"


@dataclass
class Row:
    """One recipe run: its config, overrides (``{models}`` / ``{data}`` / ``{trial:<row>}`` filled in)."""

    name: str
    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    render_sizes: tuple[int, ...] = ()  # run at these render sizes and project to ``full_size``
    full_size: int = 0


TEXT_TO_3D = {"system.prompt_processor.pretrained_model_name_or_path": "{sd21-base}",
              "system.guidance.pretrained_model_name_or_path": "{sd21-base}"}
CRITIC = {"system.guidance.pretrained_model_name_or_path_lora": "{sd21}"}
# a 2-step NeRF is still the initial density blob, below the recipes' hand-over level: mesh it at the automatic level
HANDOVER = {"system.geometry_convert_override.isosurface_threshold": "auto"}
MVDREAM = {"system.prompt_processor.pretrained_model_name_or_path": "{sd21-base}",
           "system.guidance.pretrained_model_name_or_path": "{mvdream-sd21-4view}"}
# evaluation renders of a capture at 1/8 of its photos' size (135 x 240 for the fox), like the others' 64 px
CAPTURE = {"data.dataroot": "{data}/fox", "data.n_test_views": 2, "data.eval_downsample_resolution": 8}
# the first step edits a frame (the recipe's 20 DDIM steps of the full UNet on a 540 x 960 fox frame:
# about 120 TFLOP, 15 minutes or more on a 2-core CPU); the second trains on it
IP2P = {"system.prompt_processor.pretrained_model_name_or_path": "{instruct-pix2pix}",
        "system.guidance.ip2p_name_or_path": "{instruct-pix2pix}",
        "system.prompt_processor.prompt": "make it blue", "system.start_editing_step": 0, "system.per_editing_step": 10}


def rows() -> list[Row]:
    return [
        Row("dreamfusion-sd", "dreamfusion-sd", TEXT_TO_3D),
        Row("magic3d-coarse-sd", "magic3d-coarse-sd", TEXT_TO_3D),
        Row("magic3d-refine-sd", "magic3d-refine-sd",
            {**TEXT_TO_3D, **HANDOVER, "system.geometry_convert_from": "{trial:magic3d-coarse-sd}"}),
        Row("prolificdreamer (64 px)", "prolificdreamer", {**TEXT_TO_3D, **CRITIC}),
        Row("prolificdreamer (512 px)", "prolificdreamer", {**TEXT_TO_3D, **CRITIC}, render_sizes=(96, 128), full_size=512),
        Row("prolificdreamer-geometry", "prolificdreamer-geometry",
            {**TEXT_TO_3D, **HANDOVER, "system.geometry_convert_from": "{trial:prolificdreamer (64 px)}"}),
        Row("prolificdreamer-texture", "prolificdreamer-texture",
            {**TEXT_TO_3D, **CRITIC, "system.geometry_convert_from": "{trial:prolificdreamer-geometry}"}),
        Row("mvdream-sd21 (64 px)", "mvdream-sd21", MVDREAM),
        Row("mvdream-sd21 (256 px)", "mvdream-sd21", MVDREAM, render_sizes=(64, 96), full_size=256),
        Row("mvdream-sd21-shading", "mvdream-sd21-shading", MVDREAM),
        Row("instructnerf2nerf (fox)", "instructnerf2nerf", {**CAPTURE, **IP2P}),
        Row("nerf-capture-gpu (fox)", "nerf-capture-gpu", CAPTURE),
    ]


def run_length(steps: int = 2) -> dict[str, Any]:
    """``steps`` training steps, validation only at the end, a 2-view test turntable at 64 px, a small export."""
    return {
        "trainer.max_steps": steps,
        "trainer.val_check_interval": steps,
        "trainer.num_sanity_val_steps": 0,
        "checkpoint.every_n_train_steps": steps,
        "data.n_val_views": 1,
        "data.n_test_views": 2,
        "data.eval_height": 64,
        "data.eval_width": 64,
        "system.exporter.texture_size": 256,
        "system.exporter.max_faces": 50000,  # a 2-step NeRF's surface is noise: xatlas would take many minutes on it
        "system.prompt_processor.prompt": PROMPT,
    }


def second_phase(size: int, views: Optional[int] = None) -> dict[str, Any]:
    """A recipe's high-resolution phase from the first step, rendering at ``size`` (and ``views`` per step)."""
    phase = {"data.width": f"[64,{size}]", "data.height": f"[64,{size}]", "data.resolution_milestones": "[0]"}
    if views is not None:
        phase["data.batch_size"] = f"[{views},{views}]"
    return phase


def row_overrides(row: Row, models: dict[str, str], data: str, trials: dict[str, str], size: Optional[int] = None) -> dict[str, str]:
    """A row's CLI overrides, filled in: ``models`` (name -> folder) for ``{name}``, ``data`` for ``{data}``,
    earlier rows' trials for ``{trial:ROW}``; at render ``size`` when given."""
    overrides = {**run_length(), **row.overrides, **(second_phase(size) if size else {})}
    if "data.dataroot" in overrides:  # a capture's views are its photos': no evaluation camera to size
        for key in ("data.eval_height", "data.eval_width", "data.n_val_views"):
            overrides.pop(key)
    places = {"{data}": data, **{f"{{{name}}}": path for name, path in models.items()}}
    return {k: places.get(v, v.replace("{data}", data)) for k, v in resolve_stages(overrides, trials).items()}


def run_recipe(row: Row, models: dict[str, str], data: str, out: str, trials: dict[str, str], size: Optional[int] = None) -> dict[str, Any]:
    """One row's CLI run (at render ``size`` when given); records its trial for later stages."""
    root = os.path.join(out, f"{row.name.replace(' ', '_').replace('(', '').replace(')', '')}-{size or 'own'}")
    result = run_cli(row.config, row_overrides(row, models, data, trials, size), root)
    if result.get("trial"):
        trials[row.name] = result["trial"]
    return result


def run_cli(config: str, overrides: dict[str, str], root: str) -> dict[str, Any]:
    """``threestudio-like --config <config> --train --profile`` in a child process, trials under ``root``:
    its exit code, peak resident memory (the child's own), wall time, log, trial folder and profile."""
    args = [f"{k}={v}" for k, v in {**overrides, "exp_root_dir": root}.items()]
    command = [sys.executable, "-m", "threestudio_like", "--config", config, "--train", "--profile", *args]
    os.makedirs(root, exist_ok=True)
    started = time.perf_counter()
    with open(f"{root}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    result: dict[str, Any] = {
        "exit": os.waitstatus_to_exitcode(status),
        "peak_bytes": usage.ru_maxrss * 1024,
        "wall_seconds": time.perf_counter() - started,
        "log": log.name,
    }
    trial = _newest_trial(root)
    if trial is not None:
        result["trial"] = trial
        profile = os.path.join(trial, "profile.json")
        if os.path.isfile(profile):
            with open(profile) as f:
                result["profile"] = json.load(f)
    return result


def resolve_stages(overrides: dict[str, Any], trials: dict[str, str]) -> dict[str, str]:
    """Overrides as strings, ``{trial:ROW}`` replaced by that earlier row's trial folder."""
    def value(v: Any) -> str:
        v = str(v)
        return trials.get(v[len("{trial:"):-1], "missing-previous-stage") if v.startswith("{trial:") else v

    return {k: value(v) for k, v in overrides.items()}


def _newest_trial(root: str) -> Optional[str]:
    """The newest trial folder under ``root`` (``<root>/<name>/<tag>@<time>``; a recipe's name may differ from its file)."""
    trials = [path for path in glob.glob(os.path.join(root, "*", "*")) if os.path.isdir(path)]
    return max(trials, key=os.path.getmtime) if trials else None


def project(results: list[dict[str, Any]], sizes: tuple[int, ...], full_size: int) -> dict[str, Any]:
    """Peak memory, FLOPs and seconds at ``full_size`` from runs at two sizes, linear in pixels."""
    (a, b), (pa, pb) = (s * s for s in sizes[:2]), results[:2]

    def line(fa: float, fb: float) -> float:
        return fa + (fb - fa) * (full_size * full_size - a) / (b - a)

    flops = {
        direction: {phase: line(pa["profile"][f"{direction}_flops"].get(phase, 0), pb["profile"][f"{direction}_flops"].get(phase, 0))
                    for phase in {**pa["profile"][f"{direction}_flops"], **pb["profile"][f"{direction}_flops"]}}
        for direction in ("forward", "backward")
    }
    total = sum(flops["forward"].values()) + sum(flops["backward"].values())
    return {
        "exit": max(pa["exit"], pb["exit"]),
        "peak_bytes": line(pa["peak_bytes"], pb["peak_bytes"]),
        "profile": {
            "seconds_per_step": line(pa["profile"]["seconds_per_step"], pb["profile"]["seconds_per_step"]),
            "forward_flops": flops["forward"],
            "backward_flops": flops["backward"],
            "total_flops": total,
            "projected_h100_seconds": total / (PROJECTION_EFFICIENCY * H100_DENSE_FP16_FLOPS),
        },
        "projected_from": sizes,
    }


PHASES = (("forward", "render"), ("backward", "render"), ("forward", "vae encode"), ("backward", "vae encode"),
          ("forward", "vae decode"), ("forward", "unet"), ("backward", "critic unet"))
HEADER = ("recipe", "exit", "peak GiB", "s/step", "render f+b", "VAE enc f+b", "VAE dec", "UNet fwd", "critic bwd", "H100 ms", "note")


def table_row(name: str, result: dict[str, Any]) -> tuple[str, ...]:
    profile = result.get("profile")
    if profile is None:
        return (name, str(result["exit"]), f"{result['peak_bytes'] / 2**30:.1f}", "-", "-", "-", "-", "-", "-", "-",
                f"no profile: see {result.get('log')}")
    g = lambda direction, phase: profile[f"{direction}_flops"].get(phase, 0) / 1e9  # noqa: E731
    note = (f"projected from {result['projected_from'][0]} and {result['projected_from'][1]} px renders"
            if "projected_from" in result else "")
    seconds = profile["seconds_per_step"]
    return (
        name, str(result["exit"]), f"{result['peak_bytes'] / 2**30:.1f}", f"{seconds:.1f}" if seconds else "-",
        f"{g('forward', 'render') + g('backward', 'render'):.0f}", f"{g('forward', 'vae encode') + g('backward', 'vae encode'):.0f}",
        f"{g('forward', 'vae decode'):.0f}", f"{g('forward', 'unet'):.0f}", f"{g('backward', 'critic unet'):.0f}",
        f"{profile['projected_h100_seconds'] * 1e3:.0f}", note,
    )


def print_table(table: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [HEADER, *table]) for i in range(len(HEADER))]
    print("FLOPs in GFLOP per step (forward + backward where both)")
    for r in [HEADER, *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(r, widths)))


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_fullsize", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"where the full-size folders are built once (default {DEFAULT_MODELS})")
    parser.add_argument("--data", default=os.path.normpath(DEFAULT_DATA), help="folder holding the fox capture (default ../shared/data)")
    parser.add_argument("--out", default=os.path.join("outputs", "bench-fullsize"), help="where the trials and logs go")
    parser.add_argument("--rows", nargs="+", default=None, help="only these rows (names as printed); later stages need their earlier ones")
    parser.add_argument("--results", default=None, help="JSON file to write the results to")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print(f"models: {args.models}")
    models = build_fullsize_models(args.models)
    trials: dict[str, str] = {}
    table, results = [], {}
    for row in rows():
        if args.rows is not None and row.name not in args.rows:
            continue
        if row.render_sizes:
            runs = [run_recipe(row, models, args.data, args.out, trials, size) for size in row.render_sizes]
            result = project(runs, row.render_sizes, row.full_size) if all("profile" in r for r in runs) else runs[-1]
        else:
            result = run_recipe(row, models, args.data, args.out, trials)
        results[row.name] = result
        table.append(table_row(row.name, result))
        print("  ".join(table[-1]), flush=True)
        if args.results:  # after every row: an hour's run stopped midway keeps what it measured
            with open(args.results, "w") as f:
                json.dump(results, f, indent=2)
    print()
    print_table(table)


if __name__ == "__main__":
    main()
