"""Finding a previous stage: LAST, trial folders, clear errors."""

from __future__ import annotations

import os

import pytest
import torch

from threestudio_like.backgrounds import SolidColorBackground
from threestudio_like.data.cameras import EVAL_ORBIT_DEFAULTS, orbit_views
from threestudio_like.data.random_camera import OrbitCameraDataset, RandomCameraConfig
from threestudio_like.materials import NoMaterial
from threestudio_like.mesh.isosurface import extract_isosurface, silhouette_matched_level
from threestudio_like.mesh.rasterize import TorchRasterizer, clip_positions
from threestudio_like.renderers.volume_renderer import NeRFVolumeRenderer
from threestudio_like.representations.base import BaseImplicitGeometry
from threestudio_like.trials import find_last_path, resolve_checkpoint


def make_trial(root, name: str, with_ckpt: bool = True) -> str:
    trial = root / "outputs" / "magic3d-coarse-cpu" / name
    (trial / "ckpts").mkdir(parents=True)
    if with_ckpt:
        (trial / "ckpts" / "last.ckpt").write_bytes(b"x")
    return str(trial)


def test_last_picks_the_newest_trial_with_the_rest_of_the_path(tmp_path) -> None:
    make_trial(tmp_path, "a_red_cube@20261122-010000")
    newest = make_trial(tmp_path, "a_red_cube@20261122-020000")
    make_trial(tmp_path, "a_red_cube@20261122-030000", with_ckpt=False)  # crashed before a checkpoint
    make_trial(tmp_path, "a_blue_cube@20261122-040000")  # another prompt
    base = str(tmp_path / "outputs" / "magic3d-coarse-cpu")
    assert find_last_path(f"{base}/a_red_cube@LAST/ckpts/last.ckpt") == f"{newest}/ckpts/last.ckpt"
    assert resolve_checkpoint(f"{base}/a red cube@LAST") == os.path.join(newest, "ckpts", "last.ckpt")
    assert find_last_path(f"{base}/a_red_cube@20261122-010000") == f"{base}/a_red_cube@20261122-010000"


def test_missing_stage_errors_say_what_to_check(tmp_path) -> None:
    make_trial(tmp_path, "a_red_cube@20261122-010000")
    base = tmp_path / "outputs" / "magic3d-coarse-cpu"
    with pytest.raises(FileNotFoundError, match="no trial matches"):
        find_last_path(f"{base}/a_green_cone@LAST")
    with pytest.raises(FileNotFoundError, match="no folder"):
        find_last_path(str(tmp_path / "elsewhere" / "x@LAST"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_checkpoint(str(base / "a_red_cube@20261122-010000" / "ckpts" / "epoch=0.ckpt"))


class SoftBall(BaseImplicitGeometry):
    """A ball with a wide fringe of thin density, like a NeRF trained at low resolution."""

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        return 30.0 * torch.sigmoid((0.45 - points.norm(dim=-1, keepdim=True)) * 12.0)

    def isosurface_field(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward_density(points)

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict[str, torch.Tensor]:
        return {"density": self.forward_density(points), "features": torch.zeros_like(points)}


def _outline_iou(geometry, level: float, views, target) -> float:
    mesh = extract_isosurface(geometry.isosurface_field, geometry.bbox, 64, level)
    rast, _ = TorchRasterizer().rasterize(clip_positions(mesh.v_pos, views["mvp_mtx"]), mesh.t_pos_idx.int(), target.shape[1:])
    covered = rast[..., 3] > 0
    return float((covered & target).sum() / (covered | target).sum())


@pytest.mark.slow  # a minute of volume rendering on a shared 2-core CPU
@torch.no_grad()
def test_silhouette_level_outlines_what_the_volume_renders() -> None:
    geometry = SoftBall({"radius": 1.0})
    renderer = NeRFVolumeRenderer(
        {"num_samples_per_ray": 256, "grid_prune": False},
        geometry=geometry, material=NoMaterial({}), background=SolidColorBackground({}),
    ).eval()
    views = OrbitCameraDataset(4, elevation_deg=20.0, camera_distance=2.0, fovy_deg=50.0, height=48, width=48, batch_size=4)[0]
    level = silhouette_matched_level(geometry, renderer, views)
    target = renderer(**views)["opacity"][..., 0] > 0.5
    matched = _outline_iou(geometry, level, views, target)
    mean_density = _outline_iou(geometry, "auto", views, target)  # threestudio's "auto": the mean occupied density
    print(f"outline IoU: silhouette-matched level {level:.3g}: {matched:.3f}; auto level: {mean_density:.3f}")
    assert matched > 0.95 and matched > mean_density + 0.02


def test_orbit_views_are_the_eval_orbit_of_a_data_config() -> None:
    """``orbit_views`` (below the camera datasets) builds the same batch as ``OrbitCameraDataset``,
    with ``RandomCameraConfig``'s eval orbit where the data config sets none."""
    defaults = RandomCameraConfig()
    assert EVAL_ORBIT_DEFAULTS == {key: getattr(defaults, key) for key in EVAL_ORBIT_DEFAULTS}
    data = {"eval_elevation_deg": 20.0, "eval_camera_distance": 2.0, "eval_fovy_deg": 50.0, "width": 7}
    for config, (elevation, distance, fovy) in ((data, (20.0, 2.0, 50.0)), ({}, (15.0, 1.5, 70.0))):
        expected = OrbitCameraDataset(3, elevation, distance, fovy, 16, 16, batch_size=3)[0]
        views = orbit_views(config, 3, 16)
        assert views.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(views[key], value, msg=key)
            else:
                assert views[key] == value, key
