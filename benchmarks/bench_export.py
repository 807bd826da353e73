"""Textured export of a many-faced surface, with and without decimation before unwrapping.

A rippled sphere (radius 0.6, +-0.03 ripples, like the bumpy surfaces short SDS runs give) is
meshed at resolution 128 and coloured by a smooth position field. For each ``max_faces`` it
times decimation + xatlas unwrap + baking, and measures the PSNR of the textured result,
rendered from 8 views at 128x128, against the full mesh coloured by the exact field.

``--trial <trial folder>`` runs the same table on a trained model instead: its exporter's
surface, its albedo, and PSNR against its own albedo renders (as ``export.fidelity`` does).

Run ``python benchmarks/bench_export.py [--trial DIR]``; ``run()`` returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

if __package__ in (None, ""):  # run as a script from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threestudio_like.data.random_camera import OrbitCameraDataset
from threestudio_like.export.decimate import decimate
from threestudio_like.export.fidelity import render_textured, render_unlit
from threestudio_like.mesh.isosurface import extract_isosurface
from threestudio_like.mesh.types import Mesh
from threestudio_like.export.texture import textured_mesh
from threestudio_like.mesh.rasterize import TorchRasterizer
from threestudio_like.utils.metrics import psnr

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def rippled_sphere(p: torch.Tensor) -> torch.Tensor:
    ripples = 0.03 * torch.sin(9 * p[..., 0]) * torch.sin(9 * p[..., 1]) * torch.sin(9 * p[..., 2])
    return (0.6 + ripples - p.norm(dim=-1))[..., None] * 10


def colour(points: torch.Tensor) -> torch.Tensor:
    return 0.5 + 0.4 * torch.sin(3 * points)


BUDGETS = (None, 40000, 20000, 10000)


def time_budgets(
    mesh: Mesh, colour_fn: Callable, reference: torch.Tensor, views: dict, texture_size: int, budgets=BUDGETS
) -> dict:
    rasterizer = TorchRasterizer()
    runs = {}
    for budget in budgets:
        start = time.perf_counter()
        surface = mesh if budget is None else decimate(mesh, budget)
        decimated = time.perf_counter()
        textured, texture = textured_mesh(surface, colour_fn, rasterizer, texture_size=texture_size)
        done = time.perf_counter()
        runs[str(budget)] = {
            "faces": surface.n_faces,
            "decimate_s": decimated - start,
            "unwrap_bake_s": done - decimated,
            "total_s": done - start,
            "psnr_db": psnr(reference, render_textured(textured, texture, views, rasterizer)),
        }
    return runs


def run(resolution: int = 128, budgets: tuple[Optional[int], ...] = BUDGETS) -> dict:
    mesh = extract_isosurface(rippled_sphere, BOX, resolution, threshold=0.0)
    views = OrbitCameraDataset(8, 15.0, 2.2, 50.0, 128, 128, batch_size=8)[0]
    reference = render_unlit(mesh, mesh.v_pos, colour, views, TorchRasterizer())  # the exact field per pixel
    title = f"rippled sphere at resolution {resolution}: {mesh.n_faces} faces; texture 1024^2; PSNR vs exact colours"
    return {"title": title, "runs": time_budgets(mesh, colour, reference, views, 1024, budgets)}


@torch.no_grad()
def run_trial(trial: str, budgets: tuple[Optional[int], ...] = BUDGETS) -> dict:
    """The table for a trained model: its exporter's surface and albedo, its own renders as reference."""
    from threestudio_like.export.exporter import MeshExporter, surface_albedo
    from threestudio_like.export.fidelity import WHITE
    from threestudio_like.data.cameras import orbit_views
    from threestudio_like.experiment import load_trained_system

    system, exp = load_trained_system(trial)
    exporter = MeshExporter({**exp.system.get("exporter", {}), "max_faces": None})
    views = orbit_views(exp.data, 8, 128)
    reference = system.renderer(**views, shading="albedo", bg_color=WHITE)["comp_rgb"].clamp(0, 1)
    mesh = exporter.surface(system.geometry)
    albedo = surface_albedo(system.geometry, system.material)
    title = f"{trial}: {mesh.n_faces} faces; texture {exporter.cfg.texture_size}^2; PSNR vs the model's albedo renders"
    return {"title": title, "runs": time_budgets(mesh, albedo, reference, views, exporter.cfg.texture_size, budgets)}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trial", help="a trained trial folder (LAST allowed) or checkpoint")
    args = parser.parse_args(argv)
    results = run_trial(args.trial) if args.trial else run()
    print(results["title"] + " (8 views, 128^2)")
    print(f"{'max_faces':>10} {'faces':>7} {'decimate s':>11} {'unwrap+bake s':>14} {'total s':>8} {'speed-up':>9} {'PSNR dB':>8}")
    full = results["runs"]["None"]["total_s"]
    for budget, r in results["runs"].items():
        print(f"{budget:>10} {r['faces']:>7} {r['decimate_s']:>11.2f} {r['unwrap_bake_s']:>14.2f} {r['total_s']:>8.2f} "
              f"{full / r['total_s']:>8.1f}x {r['psnr_db']:>8.2f}")


if __name__ == "__main__":
    main()
