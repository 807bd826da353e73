"""The multi-view UNet against the plain UNet on the same images: one group of 4 views.

Both UNets hold the same weights (the shipped prior ``builtin:shapes32``; the multi-view one is
``MultiViewUNet2DConditionModel.from_2d`` of it, as ``builtin:shapes32-mv`` was started), so the
difference is what MVDream adds: the camera embedding and self-attention over all 4 views' tokens
instead of each view's own. Two kinds of step, each timed as the best of several after a warm-up,
the two UNets alternating so a change in machine load hits both alike:

- guidance: what the multi-view guidance calls per training step, a no-grad forward over
  [cond; uncond] x 4 views;
- training: forward and backward over 4 views (fine-tuning the prior).

``--sample-size`` runs the same networks on larger images (more tokens per view: the 3D
attention's cost grows with (4 x tokens)^2 against 4 x tokens^2).
Run ``python benchmarks/bench_multiview.py``; ``run()`` returns the numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import torch

if __package__ in (None, ""):  # run as a script from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import best_time
from threestudio_like.guidance.models import load_diffusion_components
from threestudio_like.guidance.multiview_unet import MultiViewUNet2DConditionModel

N_VIEW = 4


def _steps(unet: Any, multiview: bool, size: int, text: torch.Tensor) -> dict[str, Callable[[], None]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_VIEW, unet.config.in_channels, size, size, generator=g)
    camera = torch.randn(N_VIEW, 16, generator=g)
    options = {"camera": camera, "num_frames": N_VIEW} if multiview else {}
    doubled = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in options.items()}

    def guidance() -> None:
        with torch.no_grad():
            unet(torch.cat([x, x]), 500, encoder_hidden_states=torch.cat([text, text]), **doubled)

    def training() -> None:
        unet.zero_grad(set_to_none=True)
        unet(x, 500, encoder_hidden_states=text, **options).sample.square().mean().backward()

    return {"guidance": guidance, "training": training}


def run(sample_size: int | None = None, repeats: int = 5, threads: int | None = None) -> dict[str, dict[str, float]]:
    if threads is not None:
        torch.set_num_threads(threads)
    plain = load_diffusion_components("builtin:shapes32", text_encoder=False).unet
    multiview = MultiViewUNet2DConditionModel.from_2d(plain)
    for unet in (plain, multiview):
        unet.requires_grad_(True)
    size = sample_size or plain.config.sample_size
    text = torch.randn(N_VIEW, 24, plain.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    steps = {"plain": _steps(plain, False, size, text), "multiview": _steps(multiview, True, size, text)}
    results: dict[str, dict[str, float]] = {kind: {} for kind in ("guidance", "training")}
    for kind in results:
        for _ in range(2):  # alternate, keep the best of each
            for name in ("plain", "multiview"):
                seconds = best_time(steps[name][kind], repeats)
                results[kind][name] = min(results[kind].get(name, float("inf")), seconds)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-size", type=int, default=None, help="image size (default: the prior's, 32)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    results = run(args.sample_size, args.repeats, args.threads)
    print(f"{N_VIEW} views, builtin:shapes32 weights, {torch.get_num_threads()} threads")
    print(f"{'step':<10} {'plain UNet':>12} {'multi-view':>12} {'ratio':>7}")
    for kind, times in results.items():
        print(f"{kind:<10} {times['plain'] * 1e3:>10.1f}ms {times['multiview'] * 1e3:>10.1f}ms {times['multiview'] / times['plain']:>6.2f}x")


if __name__ == "__main__":
    main()
