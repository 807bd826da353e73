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
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from threestudio_like.utils.metrics import psnr

LAST = "LAST"


def find_last_path(path: str) -> str:
    """Replace ``LAST`` by the newest trial folder whose name matches around it.

    Trial folders end in ``@YYYYMMDD-HHMMSS``, so the newest sorts last. Only trials that
    contain the rest of the path (e.g. ``ckpts/last.ckpt``) are candidates, so a run that
    failed before its first checkpoint is skipped.
    """
    if LAST not in path:
        return path
    path = path.replace(" ", "_")  # trial names replace the prompt's spaces
    head, rest = path.split(LAST, 1)
    folder, name_prefix = os.path.split(head)
    folder = folder or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: there is no folder {folder!r} to look for the newest trial in.")
    candidates = sorted(
        entry
        for entry in os.listdir(folder)
        if entry.startswith(name_prefix) and os.path.exists(os.path.join(folder, entry) + rest)
    )
    if not candidates:
        wanted = os.path.join(folder, name_prefix + "*" + rest)
        raise FileNotFoundError(f"{path}: no trial matches {wanted!r}. Has the previous stage run and saved a checkpoint?")
    return os.path.join(folder, candidates[-1]) + rest


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file from a checkpoint path or a trial folder (its ``ckpts/last.ckpt``)."""
    if LAST in path and not path.endswith(".ckpt"):  # the newest trial that has a checkpoint
        path = os.path.join(path, "ckpts", "last.ckpt")
    path = find_last_path(path)
    if os.path.isdir(path):
        path = os.path.join(path, "ckpts", "last.ckpt")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such checkpoint. Point at the previous stage's trial folder or its ckpts/last.ckpt."
        )
    return path


@dataclass
class StageCheckpoint:
    """A finished stage: its checkpoint file, configs and parameters."""

    path: str
    system_config: Any  # the ``system`` section of the stage's configs/parsed.yaml
    state_dict: dict[str, torch.Tensor]
    data_config: Any = None  # its ``data`` section (cameras)

    @classmethod
    def load(cls, path: str) -> "StageCheckpoint":
        path = resolve_checkpoint(path)
        trial = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        config_path = os.path.join(trial, "configs", "parsed.yaml")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(
                f"{path}: the stage's config {config_path} is missing, so its parts cannot be rebuilt. "
                "Keep the checkpoint inside its trial folder (<trial>/ckpts/*.ckpt)."
            )
        config = OmegaConf.load(config_path)
        system_config = OmegaConf.to_container(config.system, resolve=True)
        data_config = OmegaConf.to_container(config.data, resolve=True) if "data" in config else {}
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        return cls(path, system_config, state, data_config)

    def part_state(self, name: str) -> dict[str, torch.Tensor]:
        prefix = name + "."
        return {k[len(prefix) :]: v for k, v in self.state_dict.items() if k.startswith(prefix)}

    def build_part(self, name: str, **parts: Any) -> Any:
        """The stage's ``geometry`` / ``material`` / ``background`` / ``renderer`` (given the
        other three as keyword arguments) with its trained state, in eval mode."""
        from threestudio_like.registry import find

        part = find(self.system_config[f"{name}_type"])(self.system_config.get(name) or {}, **parts)
        part.load_state_dict(self.part_state(name))
        return part.eval()

    def silhouette_level(self, geometry: Any, n_views: int = 8, size: int = 64) -> float:
        """The level of ``geometry``'s field whose surface outlines what this stage renders."""
        parts = {name: self.build_part(name) for name in ("material", "background")}
        renderer = self.build_part("renderer", geometry=geometry, **parts)
        return silhouette_matched_level(geometry, renderer, orbit_views(self.data_config, n_views, size))


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


def load_trained_system(path: str) -> tuple[Any, Any]:
    """The trained system of a trial folder or checkpoint (LAST allowed), in eval mode at its
    step, and its experiment config."""
    from threestudio_like.cli import load_weights
    from threestudio_like.config import finalize_config, load_config
    from threestudio_like.registry import find

    ckpt = resolve_checkpoint(path)
    trial = os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))
    exp = finalize_config(load_config(os.path.join(trial, "configs", "parsed.yaml")))
    system = find(exp.system_type)(exp.system, save_dir=os.path.join(trial, "save"), resumed=True)
    load_weights(system, ckpt)
    system.eval()
    system.update_step(system.current_step)
    return system, exp


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
