"""Where one DreamFusion training step spends its time: render, guidance, backward, optimiser.

Runs the shipped recipe (configs/dreamfusion-sd.yaml) at CPU scale on a tiny random
diffusion model built on the fly, so it needs no downloaded weights.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

import torch

from threestudio_like.experiment import finalize_config, load_config
from threestudio_like.priors.tiny import build_tiny_diffusion_model
from threestudio_like.recipes import RECIPES_DIR
from threestudio_like.experiment import find_part

RECIPE = os.path.join(RECIPES_DIR, "dreamfusion-sd.yaml")


def _timed(fn: Callable[[], object], times: dict[str, float], key: str) -> object:
    start = time.perf_counter()
    result = fn()
    times[key] = times.get(key, 0.0) + time.perf_counter() - start
    return result


def run(resolution: int = 64, samples_per_ray: int = 64, steps: int = 5, warmup: int = 2) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_diffusion_model(os.path.join(tmp, "model"), sample_size=64)
        overrides = [
            f"system.prompt_processor.pretrained_model_name_or_path={model}",
            f"system.guidance.pretrained_model_name_or_path={model}",
            f"system.prompt_processor.cache_dir={tmp}/cache",
            "system.prompt_processor.prompt=a hamburger",
            f"data.width={resolution}",
            f"data.height={resolution}",
            f"system.renderer.num_samples_per_ray={samples_per_ray}",
        ]
        exp = finalize_config(load_config(RECIPE, cli_args=overrides))
        torch.manual_seed(0)
        system = find_part(exp.system_type)(exp.system, save_dir=tmp)
        sampler = find_part(exp.data_type)(exp.data, seed=0).sampler
        optimizer = system.configure_optimizers()["optimizer"]
        system.train()
        times: dict[str, float] = {}
        for step in range(warmup + steps):
            if step == warmup:
                times = {}
            batch = sampler.sample(step)
            system.update_step(step)
            out = _timed(lambda: system(batch), times, "render")
            guidance = _timed(
                lambda: system.guidance(out["comp_rgb"], system.prompt_utils, elevation=batch["elevation"],
                                        azimuth=batch["azimuth"], camera_distances=batch["camera_distances"]),
                times, "guidance",
            )
            losses = {k: v for k, v in guidance.items() if k.startswith("loss_")}
            losses.update(system.regularisers(out))
            loss = sum(system.lambda_(k[5:]) * v for k, v in losses.items())
            _timed(loss.backward, times, "backward")
            _timed(lambda: (optimizer.step(), optimizer.zero_grad()), times, "optimizer")
        return {k: v / steps for k, v in times.items()}


def main() -> None:
    times = run()
    total = sum(times.values())
    print(f"\nOne training step, {64}x{64} render, 64 samples/ray, tiny UNet (mean of 5 steps)")
    print(f"{'phase':<12}{'seconds':>10}{'share':>9}")
    for key, value in times.items():
        print(f"{key:<12}{value:>10.4f}{value / total:>9.1%}")
    print(f"{'total':<12}{total:>10.4f}  ({1 / total:.2f} steps/s)")


if __name__ == "__main__":
    main()
