"""Reconstruction throughput on a real capture: training rays per second (forward + backward)
of the ``nerf-capture`` recipe with and without its occupancy grid, in one run.

The fox (``../shared/data/fox``, or ``--capture DIR``) at the recipe's 1/8 resolution. The field
first trains ``--warm-steps`` steps with the grid, so that the grid has something to skip (a
fresh field is occupied everywhere); then the same field is timed both ways on the same batches.
Run ``python -m benchmarks.bench_capture``; ``run()`` returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch

if __package__ in (None, ""):  # run as a script from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import best_time
from threestudio_like.experiment import finalize_config, load_config
from threestudio_like.experiment import find_part

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CAPTURE = Path(os.environ.get("THREESTUDIO_LIKE_TEST_DATA", ROOT.parent / "shared" / "data")) / "fox"


def build(capture: Path, overrides: list[str], recipe: str = "nerf-capture") -> tuple[Any, Any]:
    """The recipe's system and data module (set up) for ``capture``."""
    cfg = load_config(str(ROOT / "configs" / f"{recipe}.yaml"), cli_args=[f"data.dataroot={capture}", *overrides])
    exp = finalize_config(cfg)
    data = find_part(exp.data_type)(exp.data, seed=0)
    data.setup()
    system = find_part(exp.system_type)(exp.system, save_dir="/tmp")
    return system, data


def run(capture: Path = DEFAULT_CAPTURE, warm_steps: int = 100, repeats: int = 3, threads: Optional[int] = None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    system, data = build(capture, [])
    optimizer = torch.optim.Adam(system.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-15)
    system.train()
    renderer = system.renderer

    def step(batch: dict[str, Any], global_step: int) -> None:
        renderer.update_step(global_step)
        out = system(batch)
        loss = torch.nn.functional.mse_loss(out["comp_rgb"], batch["rgb"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for k in range(warm_steps):
        step(data.sampler.sample(k), k)
    batches = [data.sampler.sample(warm_steps + k) for k in range(4)]
    rays = sum(b["rays_o"].shape[0] for b in batches)
    result: dict[str, Any] = {
        "capture": str(capture), "rays_per_batch": int(batches[0]["rays_o"].shape[0]),
        "image_size": f"{data.train_set.width[0]}x{data.train_set.height[0]}", "warm_steps": warm_steps,
        "occupied_cells": float(renderer.occupancy.occupied.float().mean()),
    }
    state = {k: v.clone() for k, v in system.state_dict().items()}  # both timings start from the same field
    for name, prune in (("occupancy grid", True), ("no grid", False)):
        renderer.cfg.grid_prune = prune
        system.load_state_dict(state)

        def forward_backward() -> None:
            for batch in batches:
                out = system(batch)
                torch.nn.functional.mse_loss(out["comp_rgb"], batch["rgb"]).backward()

        with torch.no_grad():
            samples = sum(int(system(b)["weights"].shape[0]) for b in batches)
        seconds = best_time(forward_backward, repeats)
        result[name] = {"samples_per_ray": samples / rays, "train_rays_per_s": rays / seconds}
    result["speedup"] = result["occupancy grid"]["train_rays_per_s"] / result["no grid"]["train_rays_per_s"]
    return result


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE, help="a capture folder (default: the fox)")
    parser.add_argument("--warm-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.capture.exists():
        print(f"skipped: no capture at {args.capture} (see ../shared/data/README.md, or pass --capture DIR)")
        return
    r = run(args.capture, args.warm_steps, args.repeats, args.threads)
    print(f"capture: {r['capture']} at {r['image_size']}; {r['rays_per_batch']} rays per batch; "
          f"grid after {r['warm_steps']} steps: {r['occupied_cells']:.1%} of cells occupied")
    print(f"{'sampler':<16}{'samples/ray':>12}{'fwd+bwd rays/s':>16}")
    for name in ("occupancy grid", "no grid"):
        print(f"{name:<16}{r[name]['samples_per_ray']:>12.1f}{r[name]['train_rays_per_s']:>16.0f}")
    print(f"{'ratio grid/no grid':<28}{r['speedup']:>15.2f}x")


if __name__ == "__main__":
    main()
