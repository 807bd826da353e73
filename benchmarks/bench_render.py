"""Rays per second of the NeRF volume renderer with and without the occupancy grid.

The scene has lots of empty space: the real ``implicit-volume`` (density blob at the centre,
small hash grid) when it imports, else an analytic ball with a small MLP for colour. Run
``python benchmarks/bench_render.py``; ``run()`` returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn

if __package__ in (None, ""):  # run as a script from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threestudio_like.backgrounds import SolidColorBackground
from threestudio_like.materials import NoMaterial
from threestudio_like.renderers.volume_renderer import NeRFVolumeRenderer

SMALL_IMPLICIT_VOLUME = {
    "radius": 1.0,
    "n_feature_dims": 3,
    "density_bias": "blob_magic3d",
    "density_activation": "softplus",
    "density_blob_scale": 10.0,
    "density_blob_std": 0.5,
    "pos_encoding_config": {
        "otype": "HashGrid",
        "n_levels": 8,
        "n_features_per_level": 2,
        "log2_hashmap_size": 15,
        "base_resolution": 16,
        "per_level_scale": 1.447269237440378,
    },
    "mlp_network_config": {
        "otype": "VanillaMLP",
        "activation": "ReLU",
        "output_activation": "none",
        "n_neurons": 32,
        "n_hidden_layers": 1,
    },
}


class ToyBall(nn.Module):
    """Stand-in geometry: a dense ball of radius 0.3 in the unit box, colours from a small MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(radius=1.0)
        self.register_buffer("bbox", torch.tensor([[-1.0] * 3, [1.0] * 3]))
        self.mlp = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        return 20.0 * torch.sigmoid(50.0 * (0.3 - points.norm(dim=-1, keepdim=True)))

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict[str, torch.Tensor]:
        return {"density": self.forward_density(points), "features": self.mlp(points)}


def build_geometry() -> tuple[nn.Module, str]:
    try:
        from threestudio_like.representations.implicit_volume import ImplicitVolume

        return ImplicitVolume(SMALL_IMPLICIT_VOLUME), "implicit-volume (8-level hash grid)"
    except Exception as e:  # not written yet, or a different config surface
        return ToyBall(), f"toy ball ({type(e).__name__}: implicit-volume unavailable)"


def camera_rays(size: int, distance: float = 2.5, fov: float = 40.0) -> tuple[torch.Tensor, torch.Tensor]:
    s = math.tan(math.radians(fov) / 2)
    u = torch.linspace(-s, s, size)
    yy, zz = torch.meshgrid(u, u, indexing="xy")
    d = torch.nn.functional.normalize(torch.stack([-torch.ones_like(yy), yy, -zz], dim=-1), dim=-1)
    o = torch.tensor([distance, 0.0, 0.0]).expand_as(d)
    return o[None].contiguous(), d[None].contiguous()


def _time(fn, repeats: int) -> float:
    """Best of ``repeats`` runs after a warm-up: the least disturbed by other load on the machine."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(size: int = 32, num_samples_per_ray: int = 256, repeats: int = 3, threads: int | None = None) -> dict[str, Any]:
    """``threads`` pins torch's CPU threads (1 gives stable numbers on a machine shared with other jobs)."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    geometry, geometry_name = build_geometry()
    material = NoMaterial({})
    background = SolidColorBackground({})
    rays_o, rays_d = camera_rays(size)
    light = torch.tensor([[3.0, 3.0, 3.0]])
    n_rays = size * size
    results: dict[str, Any] = {"geometry": geometry_name, "rays": n_rays, "num_samples_per_ray": num_samples_per_ray}
    for name, grid_prune in (("dense", False), ("occupancy grid", True)):
        renderer = NeRFVolumeRenderer(
            {"grid_prune": grid_prune, "num_samples_per_ray": num_samples_per_ray, "backend": "torch"},
            geometry=geometry,
            material=material,
            background=background,
        )
        renderer.train()
        for step in range(0, 64, 16):  # a few warm-up grid updates, as in the first training steps
            renderer.update_step(step)

        def forward() -> dict[str, torch.Tensor]:
            with torch.no_grad():
                return renderer(rays_o, rays_d, light)

        def forward_backward() -> None:
            geometry.zero_grad(set_to_none=True)
            renderer(rays_o, rays_d, light)["comp_rgb"].mean().backward()

        out = forward()
        results[name] = {
            "samples_per_ray": out["ray_indices"].numel() / n_rays,
            "occupied_cells": float(renderer.occupancy.occupied.float().mean()) if grid_prune else 1.0,
            "forward_rays_per_s": n_rays / _time(forward, repeats),
            "train_rays_per_s": n_rays / _time(forward_backward, repeats),
        }
    for key in ("forward_rays_per_s", "train_rays_per_s"):
        results[f"speedup_{key.split('_')[0]}"] = results["occupancy grid"][key] / results["dense"][key]
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--samples", type=int, default=256, help="num_samples_per_ray")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    r = run(args.size, args.samples, threads=args.threads)
    print(f"geometry: {r['geometry']}; {r['rays']} rays, num_samples_per_ray={r['num_samples_per_ray']}")
    print(f"{'sampler':<16}{'samples/ray':>12}{'occupied':>10}{'fwd rays/s':>13}{'fwd+bwd rays/s':>16}")
    for name in ("dense", "occupancy grid"):
        row = r[name]
        print(
            f"{name:<16}{row['samples_per_ray']:>12.1f}{row['occupied_cells']:>10.1%}"
            f"{row['forward_rays_per_s']:>13.0f}{row['train_rays_per_s']:>16.0f}"
        )
    print(f"{'ratio grid/dense':<38}{r['speedup_forward']:>13.1f}x{r['speedup_train']:>15.1f}x")


if __name__ == "__main__":
    main()
