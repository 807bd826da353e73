"""The mesh renderer draws what the volume renderer draws, through the same parts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from threestudio_like.backgrounds import SolidColorBackground
from threestudio_like.data.random_camera import OrbitCameraDataset
from threestudio_like.materials import NoMaterial
from threestudio_like.renderers.mesh_renderer import MeshRasterizer
from threestudio_like.renderers.volume_renderer import NeRFVolumeRenderer
from threestudio_like.representations.base import BaseImplicitGeometry
from threestudio_like.utils.metrics import psnr

CENTRE = torch.tensor([0.25, -0.15, 0.1])  # off-centre so a flipped or mirrored image cannot match


class OffCentreBall(BaseImplicitGeometry):
    """A hard ball of radius 0.45 whose colour logits vary with position (asymmetric views)."""

    @dataclass
    class Config(BaseImplicitGeometry.Config):
        isosurface_threshold: float = 500.0
        isosurface_resolution: int = 96

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        return 1000.0 * torch.sigmoid((0.45 - (points - CENTRE).norm(dim=-1, keepdim=True)) * 400.0)

    def isosurface_field(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward_density(points)

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict[str, torch.Tensor]:
        return {"density": self.forward_density(points), "features": 4.0 * (points - CENTRE)}

    def export(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": self(points)["features"]}


def _parts():
    geometry = OffCentreBall({})
    return geometry, NoMaterial({}), SolidColorBackground({"color": [1.0, 1.0, 1.0]})


def _views(n: int = 4, size: int = 64):
    return OrbitCameraDataset(n, elevation_deg=25.0, camera_distance=2.2, fovy_deg=50.0, height=size, width=size, batch_size=n)[0]


@torch.no_grad()
def test_mesh_and_volume_renders_agree() -> None:
    geometry, material, background = _parts()
    volume = NeRFVolumeRenderer({"num_samples_per_ray": 512, "grid_prune": False}, geometry=geometry, material=material, background=background).eval()
    mesh = MeshRasterizer({}, geometry=geometry, material=material, background=background).eval()
    batch = _views()
    a, b = volume(**batch), mesh(**batch)
    inside_a, inside_b = a["opacity"] > 0.5, b["opacity"] > 0.5
    iou = float((inside_a & inside_b).sum() / (inside_a | inside_b).sum())
    value = psnr(a["comp_rgb"], b["comp_rgb"])
    print(f"mesh vs volume: silhouette IoU {iou:.3f}, PSNR {value:.1f} dB")
    assert iou > 0.95
    assert value > 25.0
    # the ball is off-centre: its image moves around the orbit, so agreement is not symmetry
    assert float((a["opacity"][0] - a["opacity"][2]).abs().mean()) > 0.05
    depth_error = (a["depth"] - b["depth"])[inside_a & inside_b].abs().mean()
    assert float(depth_error) < 0.02


@torch.no_grad()
def test_background_shows_where_the_mesh_is_not() -> None:
    geometry, material, background = _parts()
    out = MeshRasterizer({}, geometry=geometry, material=material, background=background).eval()(**_views(1))
    empty = out["opacity"][..., 0] == 0
    assert bool(empty.any()) and bool((~empty).any())
    assert torch.allclose(out["comp_rgb"][empty], torch.ones(3))
    assert torch.all(out["comp_normal"][empty] == 0) and torch.all(out["depth"][empty] == 0)
