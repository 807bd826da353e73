"""Stage hand-over: find a previous stage's checkpoint and rebuild its parts from it.

Coarse-to-fine recipes (Magic3D: NeRF, then DMTet mesh) start the next stage with
``system.geometry_convert_from=<trial dir | checkpoint>``. A path may name the newest
trial with ``LAST`` in place of the timestamp, as threestudio allows, e.g.
``outputs/magic3d-coarse-cpu/a_red_cube@LAST``.

Check a hand-over before training the next stage (renders both from the same cameras):

    python -m threestudio_like.systems.handover outputs/magic3d-coarse-cpu/a_red_cube@LAST \
        --config configs/magic3d-refine-cpu.yaml
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import torch

from threestudio_like.trials import StageCheckpoint, load_trained_system
from threestudio_like.utils.metrics import psnr

def stage_silhouette_level(
    previous: StageCheckpoint, geometry: Any, particle: int = 0, n_views: int = 8, size: int = 64
) -> float:
    """The level of ``geometry``'s field whose surface outlines what the ``previous`` stage
    (its particle ``particle``) renders."""
    parts = {name: previous.build_part(name, particle) for name in ("material", "background")}
    renderer = previous.build_part("renderer", particle, geometry=geometry, **parts)
    return silhouette_matched_level(geometry, renderer, orbit_views(previous.data_config, n_views, size))


SILHOUETTE_LEVELS = 24  # candidate levels tried by silhouette_matched_level
SILHOUETTE_GRID = 64  # marching-cubes resolution while choosing


@torch.no_grad()
def silhouette_matched_level(geometry: Any, renderer: Any, views: Any) -> float:
    """Hand-over level for a volume: the isosurface level whose mesh silhouettes best match
    (IoU) where the volume renders opaque (opacity > 0.5) from ``views``.

    A NeRF's fringe of thin density renders partly transparent; a fixed or mean-density level
    can put the mesh outside or inside what the user saw. Candidates are spaced geometrically
    between the weakest and strongest density inside the box.
    """
    from threestudio_like.export.isosurface import EmptyIsosurfaceError, marching_cubes, sample_grid
    from threestudio_like.mesh.rasterize import make_rasterizer
    from threestudio_like.renderers.mesh_renderer import clip_positions

    target = renderer(**views)["opacity"][..., 0] > 0.5
    if not bool(target.any()):
        raise EmptyIsosurfaceError("the previous stage renders nothing opaque from its eval cameras; was it trained?")
    field = sample_grid(geometry.isosurface_field, geometry.bbox.cpu(), SILHOUETTE_GRID)
    positive = field[field > 1e-3]
    if positive.numel() == 0:
        raise EmptyIsosurfaceError("the previous stage's density is zero everywhere in its box")
    low, high = float(positive.min()), float(positive.max())
    levels = torch.logspace(torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), SILHOUETTE_LEVELS + 2)[1:-1]
    rasterizer = make_rasterizer("auto", views["mvp_mtx"].device)
    height, width = target.shape[1:]
    best_level, best_iou = float(levels[0]), -1.0
    for level in levels.tolist():
        try:
            mesh = marching_cubes(field, geometry.bbox.cpu(), level)
        except EmptyIsosurfaceError:
            continue
        rast, _ = rasterizer.rasterize(clip_positions(mesh.v_pos, views["mvp_mtx"]), mesh.t_pos_idx.int(), (height, width))
        covered = rast[..., 3] > 0
        iou = float((covered & target).sum() / (covered | target).sum())
        if iou > best_iou:
            best_level, best_iou = level, iou
    print(f"Hand-over level {best_level:.4g}: its silhouettes match the previous stage's renders with IoU {best_iou:.3f}")
    return best_level


def orbit_views(data: dict, n_views: int, size: int) -> Any:
    """``n_views`` cameras around the object at the eval elevation / distance / fov of a data config."""
    from threestudio_like.data.random_camera import OrbitCameraDataset, RandomCameraConfig

    cfg = RandomCameraConfig(**{k: v for k, v in data.items() if k in RandomCameraConfig.__dataclass_fields__})
    return OrbitCameraDataset(
        n_views, cfg.eval_elevation_deg, cfg.eval_camera_distance, cfg.eval_fovy_deg, size, size, batch_size=n_views
    )[0]


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
    from threestudio_like.config import finalize_config, load_config
    from threestudio_like.registry import find

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
    following = find(exp.system_type)(exp.system).eval()
    following.update_step(0)
    scores = compare_renders(previous, following, orbit_views(previous_exp.data, args.views, args.size))
    print(
        f"hand-over over {args.views} views at {args.size}x{args.size}: PSNR {scores['psnr']:.2f} dB lit, "
        f"{scores['psnr_albedo']:.2f} dB albedo; silhouette IoU {scores['silhouette_iou']:.3f}"
    )


if __name__ == "__main__":
    main()
