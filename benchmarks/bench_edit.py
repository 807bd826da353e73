"""Instruct-NeRF2NeRF's cost: one edit (render a training frame, edit it with InstructPix2Pix)
against one training step of the ``instructnerf2nerf-cpu`` recipe, in one run.

The fox (``../shared/data/fox``, or ``--capture DIR``) at the recipe's 1/8 resolution with the
built-in editor ``builtin:edit32`` (20 DDIM steps at 32 x 32, three-way guidance in one batched
UNet call a step). Run ``python -m benchmarks.bench_edit``; ``run()`` returns the numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import torch

if __package__ in (None, ""):  # run as a script from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_capture import DEFAULT_CAPTURE, build
from benchmarks.timing import best_time


def run(capture: Path = DEFAULT_CAPTURE, repeats: int = 3, threads: Optional[int] = None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    system, data = build(capture, [], recipe="instructnerf2nerf-cpu")
    system.prepare_for_training("cpu")
    optimizer = torch.optim.Adam(system.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-15)
    system.train()
    batch = data.on_after_batch_transfer(data.sampler.sample(0), 0)

    def training_step() -> None:
        out = system(batch)
        loss = torch.nn.functional.mse_loss(out["comp_rgb"], batch["rgb"]) + 0.1 * system.perceptual_term(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    frame = data.training_frame(0, system.cfg.edit_downsample)
    view = {k: v for k, v in frame.items() if k not in ("rgb", "original_rgb")}

    def render() -> torch.Tensor:
        system.eval()
        with torch.no_grad():
            image = system(view)["comp_rgb"]
        system.train()
        return image

    image = render()

    def edit() -> None:
        system.guidance(image, frame["original_rgb"], system.prompt_utils, generator=torch.Generator().manual_seed(0))

    step_s, render_s, edit_s = (best_time(f, repeats) for f in (training_step, render, edit))
    every = system.cfg.per_editing_step
    return {
        "capture": str(capture), "frame": f"{frame['width']}x{frame['height']} rays (edit_downsample {system.cfg.edit_downsample})",
        "rays_per_step": int(batch["rays_o"].shape[:3].numel()), "step_s": step_s, "render_s": render_s, "edit_s": edit_s,
        "edit_over_step": (render_s + edit_s) / step_s, "per_editing_step": every,
        "overhead": (render_s + edit_s) / (every * step_s),
    }


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE, help="a capture folder (default: the fox)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.capture.exists():
        print(f"skipped: no capture at {args.capture} (see ../shared/data/README.md, or pass --capture DIR)")
        return
    r = run(args.capture, args.repeats, args.threads)
    print(f"capture: {r['capture']}; frame rendered for editing: {r['frame']}; {r['rays_per_step']} rays per training step")
    print(f"{'training step':<34}{r['step_s'] * 1000:>10.0f} ms")
    print(f"{'render a frame for editing':<34}{r['render_s'] * 1000:>10.0f} ms")
    print(f"{'edit it (20 DDIM steps)':<34}{r['edit_s'] * 1000:>10.0f} ms")
    print(f"{'ratio (render + edit) / step':<34}{r['edit_over_step']:>12.2f}x")
    print(f"{'added per step (1 edit / ' + str(r['per_editing_step']) + ' steps)':<34}{r['overhead']:>12.1%}")


if __name__ == "__main__":
    main()
