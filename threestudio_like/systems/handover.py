"""Stage hand-over: find a previous stage's checkpoint and rebuild its parts from it.

Coarse-to-fine recipes (Magic3D: NeRF, then DMTet mesh) start the next stage with
``system.geometry_convert_from=<trial dir | checkpoint>``. A path may name the newest
trial with ``LAST`` in place of the timestamp, as threestudio allows, e.g.
``outputs/magic3d-coarse-cpu/a_red_cube@LAST``.

The system converts the previous geometry (``BaseLift3DSystem.convert_from_previous_stage``);
a ``silhouette`` level is resolved there from the previous stage's renders
(``mesh.isosurface.silhouette_matched_level``) and handed to ``create_from`` as a number.

Check a hand-over before training the next stage (renders both from the same cameras):

    python -m threestudio_like.systems.handover outputs/magic3d-coarse-cpu/a_red_cube@LAST \
        --config configs/magic3d-refine-cpu.yaml
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import torch

from threestudio_like.data.cameras import orbit_views
from threestudio_like.experiment import finalize_config, find_part, load_config, load_trained_system
from threestudio_like.utils.metrics import psnr


@torch.no_grad()
def compare_renders(a: Any, b: Any, views: Any) -> dict[str, float]:
    """PSNR of lit and of albedo renders, and silhouette IoU, between two systems."""
    lit_a, lit_b = a(views), b(views)
    albedo_a = a.renderer(**views, shading="albedo")["comp_rgb"]
    albedo_b = b.renderer(**views, shading="albedo")["comp_rgb"]
    inside_a, inside_b = lit_a["opacity"] > 0.5, lit_b["opacity"] > 0.5
    return {
        "psnr": psnr(lit_a["comp_rgb"], lit_b["comp_rgb"]),
        "psnr_albedo": psnr(albedo_a, albedo_b),
        "silhouette_iou": float((inside_a & inside_b).sum() / (inside_a | inside_b).sum().clamp_min(1)),
    }


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Compare a finished stage with the start of the next one.")
    parser.add_argument("previous", help="trial folder or checkpoint of the finished stage (LAST allowed)")
    parser.add_argument("--config", required=True, help="the next stage's config")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    args, overrides = parser.parse_known_args(argv)

    previous, previous_exp = load_trained_system(args.previous)
    prompt = previous_exp.system["prompt_processor"]["prompt"]
    cli = [f"system.prompt_processor.prompt={prompt}", f"system.geometry_convert_from={args.previous}", *overrides]
    exp = finalize_config(load_config(args.config, cli_args=cli))
    following = find_part(exp.system_type)(exp.system).eval()
    following.update_step(0)
    scores = compare_renders(previous, following, orbit_views(previous_exp.data, args.views, args.size))
    print(
        f"hand-over over {args.views} views at {args.size}x{args.size}: PSNR {scores['psnr']:.2f} dB lit, "
        f"{scores['psnr_albedo']:.2f} dB albedo; silhouette IoU {scores['silhouette_iou']:.3f}"
    )


if __name__ == "__main__":
    main()
