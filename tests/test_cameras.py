"""Camera math conventions and the random-camera data module."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError
from threestudio_like.data.cameras import (
    get_mvp_matrix,
    get_projection_matrix,
    get_ray_directions,
    get_rays,
    look_at_c2w,
    make_camera_batch,
    spherical_to_cartesian,
)
from threestudio_like.data.random_camera import RandomCameraDataModule, RandomCameraSampler
from threestudio_like.utils.typing import CameraBatch

Z_UP = torch.tensor([[0.0, 0.0, 1.0]])


def project(mvp: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points [N,3] -> (NDC [N,3], clip w [N]) for one mvp [4,4]."""
    clip = torch.cat([points, torch.ones_like(points[:, :1])], -1) @ mvp.T
    return clip[:, :3] / clip[:, 3:], clip[:, 3]


def random_poses(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    positions = F.normalize(torch.randn(n, 3, generator=g), dim=-1) * (1.5 + torch.rand(n, 1, generator=g))
    targets = 0.3 * torch.randn(n, 3, generator=g)
    return positions, targets, look_at_c2w(positions, targets, Z_UP.expand(n, 3))


# ----------------------------------------------------------------------------- camera math
def test_spherical_to_cartesian_conventions() -> None:
    elevation = torch.tensor([0.0, 0.0, 90.0, -90.0, 0.0])
    azimuth = torch.tensor([0.0, 90.0, 0.0, 0.0, 180.0])
    points = spherical_to_cartesian(elevation, azimuth, torch.full((5,), 2.0))
    expected = torch.tensor([[2.0, 0, 0], [0, 2, 0], [0, 0, 2], [0, 0, -2], [-2, 0, 0]])
    assert torch.allclose(points, expected, atol=1e-5)


def test_ray_directions_pixel_centres_opengl() -> None:
    d = get_ray_directions(2, 4, focal=2.0)
    assert d.shape == (2, 4, 3)
    # top-left pixel centre (0.5, 0.5), principal point (2, 1): left (-x) and up (+y)
    assert torch.allclose(d[0, 0], torch.tensor([-1.5 / 2, 0.5 / 2, -1.0]))
    assert torch.allclose(d[1, 3], torch.tensor([1.5 / 2, -0.5 / 2, -1.0]))
    d2 = get_ray_directions(2, 4, focal=(1.0, 2.0), principal=(0.5, 0.5))
    assert torch.allclose(d2[0, 0], torch.tensor([0.0, 0.0, -1.0]))


def test_look_at_axes_for_camera_on_x_axis() -> None:
    c2w = look_at_c2w(torch.tensor([[2.0, 0, 0]]), torch.zeros(1, 3), Z_UP)
    assert torch.allclose(c2w[0, :3, 2], torch.tensor([1.0, 0, 0]))  # -z looks at origin
    assert torch.allclose(c2w[0, :3, 1], torch.tensor([0.0, 0, 1]))  # y up is world z
    assert torch.allclose(c2w[0, :3, 0], torch.tensor([0.0, 1, 0]))  # x right: right-handed
    assert torch.allclose(c2w[0, :3, 3], torch.tensor([2.0, 0, 0]))
    with pytest.raises(ValueError, match="parallel"):
        look_at_c2w(torch.tensor([[0.0, 0, 2]]), torch.zeros(1, 3), Z_UP)


def test_centre_ray_passes_through_look_at_target() -> None:
    positions, targets, c2w = random_poses(6)
    directions = get_ray_directions(5, 7, focal=4.0)  # odd sizes: a pixel centre on the axis
    rays_o, rays_d = get_rays(directions, c2w)
    o, d = rays_o[:, 2, 3], rays_d[:, 2, 3]
    assert torch.allclose(d.norm(dim=-1), torch.ones(6), atol=1e-6)
    to_target = targets - o
    off_ray = to_target - (to_target * d).sum(-1, keepdim=True) * d
    assert off_ray.norm(dim=-1).max() < 1e-5
    assert ((to_target * d).sum(-1) > 0).all()  # target in front, not behind
    assert torch.allclose(o, positions)


def test_unnormalised_rays_have_unit_depth() -> None:
    _, _, c2w = random_poses(3)
    _, rays_d = get_rays(get_ray_directions(4, 4, focal=3.0), c2w, normalize=False)
    forward = -c2w[:, None, None, :3, 2]
    assert torch.allclose((rays_d * forward).sum(-1), torch.ones(3, 4, 4), atol=1e-5)


def test_mvp_projects_pixel_rays_back_to_their_pixels() -> None:
    """rays, c2w and mvp agree: a point on pixel (row j, col i)'s ray lands on that pixel's NDC."""
    H, W, fovy_deg = 6, 10, 50.0
    positions, targets, c2w = random_poses(4, seed=1)
    batch = make_camera_batch(
        positions, targets, Z_UP.expand(4, 3), torch.full((4,), fovy_deg), positions,
        torch.zeros(4), torch.zeros(4), torch.ones(4), H, W,
    )
    assert torch.allclose(batch["c2w"], c2w, atol=1e-6)
    cols, rows = torch.meshgrid(torch.arange(W) + 0.5, torch.arange(H) + 0.5, indexing="xy")
    ndc_expected = torch.stack([cols / W * 2 - 1, 1 - rows / H * 2], -1).reshape(-1, 2)
    for b in range(4):
        points = (batch["rays_o"][b] + 0.8 * batch["rays_d"][b]).reshape(-1, 3)
        ndc, w = project(batch["mvp_mtx"][b], points)
        assert (w > 0).all()
        assert torch.allclose(ndc[:, :2], ndc_expected, atol=1e-4)
        assert ((ndc[:, 2] > -1) & (ndc[:, 2] < 1)).all()


def test_mvp_rejects_points_behind_or_outside_frustum() -> None:
    c2w = look_at_c2w(torch.tensor([[3.0, 0, 0]]), torch.zeros(1, 3), Z_UP)
    mvp = get_mvp_matrix(c2w, get_projection_matrix(torch.tensor([math.radians(60.0)]), 1.0))[0]
    points = torch.tensor([[0.0, 0, 0], [0.0, 0.5, 0.5], [5.0, 0, 0], [0.0, 3.0, 0], [0.0, 0, -3.0]])
    ndc, w = project(mvp, points)
    visible = (w > 0) & (ndc.abs() <= 1).all(-1)
    assert visible.tolist() == [True, True, False, False, False]
    # the world-right point (+y seen from +x) maps right, the world-up point maps up
    assert ndc[1, 0] > 0 and ndc[1, 1] > 0


def test_projection_depth_range_maps_near_far_to_minus_one_one() -> None:
    proj = get_projection_matrix(torch.tensor([1.0]), 2.0, near=0.5, far=10.0)[0]
    clip = proj @ torch.tensor([[0.0, 0, -0.5, 1], [0, 0, -10.0, 1]]).T
    assert torch.allclose(clip[2] / clip[3], torch.tensor([-1.0, 1.0]), atol=1e-5)


# ----------------------------------------------------------------------------- sampler
SMALL = {"height": 4, "width": 4, "batch_size": 4}


def test_sampler_is_a_pure_function_of_seed_and_step() -> None:
    a, b = RandomCameraSampler(SMALL, seed=3), RandomCameraSampler(SMALL, seed=3)
    first = a.sample(10)
    a.sample(11)  # drawing other steps in between must not matter
    torch.manual_seed(1234)  # nor must global RNG
    again = b.sample(10)
    for key in ("rays_o", "rays_d", "c2w", "mvp_mtx", "light_positions", "elevation", "azimuth", "fovy"):
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["c2w"], a.sample(11)["c2w"])
    assert not torch.equal(first["c2w"], RandomCameraSampler(SMALL, seed=4).sample(10)["c2w"])


def test_sampler_does_not_consume_global_rng() -> None:
    sampler = RandomCameraSampler(SMALL)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    sampler.sample(5)
    assert torch.equal(torch.rand(3), expected)


def test_sampled_values_respect_configured_ranges() -> None:
    cfg = {**SMALL, "batch_size": 8, "elevation_range": [-10, 80], "azimuth_range": [-90, 90],
           "camera_distance_range": [2.0, 3.0], "fovy_range": [30, 50], "light_distance_range": [1.0, 2.0]}
    sampler = RandomCameraSampler(cfg, seed=7)
    batches = [sampler.sample(step) for step in range(300)]
    cat = lambda k: torch.cat([b[k] for b in batches])  # noqa: E731
    elevation, azimuth = cat("elevation"), cat("azimuth")
    assert elevation.min() >= -10 and elevation.max() <= 80
    assert azimuth.min() >= -90 and azimuth.max() <= 90
    assert cat("camera_distances").min() >= 2.0 and cat("camera_distances").max() <= 3.0
    assert cat("fovy").min() >= 30 and cat("fovy").max() <= 50
    light_distance = cat("light_positions").norm(dim=-1)
    assert light_distance.min() >= 1.0 - 1e-5 and light_distance.max() <= 2.0 + 1e-5
    # positions = orbit point + uniform noise of at most camera_perturb per axis
    orbit = spherical_to_cartesian(elevation, azimuth, cat("camera_distances"))
    assert (cat("camera_positions") - orbit).abs().max() <= 0.1 + 1e-6
    # stratified azimuth: view b of every batch lies in stratum b of the range
    strata = torch.stack([b["azimuth"] for b in batches])  # [steps, B]
    edges = torch.linspace(-90, 90, 9)
    assert ((strata >= edges[:-1]) & (strata <= edges[1:])).all()
    # elevation is a 50/50 mixture of uniform-in-degrees and uniform-on-sphere (sin-uniform):
    # P(elev > 60) = 0.5 * 20/90 + 0.5 * (sin80 - sin60)/(sin80 + sin10) ~= 0.163
    above = (elevation > 60).float().mean().item()
    assert 0.12 < above < 0.21
    # the two components are distinguishable: sin-uniform rarely exceeds 60, degree-uniform often
    expected_sphere = (math.sin(math.radians(80)) - math.sin(math.radians(60))) / (
        math.sin(math.radians(80)) + math.sin(math.radians(10)))
    assert abs(above - (0.5 * 20 / 90 + 0.5 * expected_sphere)) < 0.04


def test_dreamfusion_lights_follow_camera_and_magic3d_lights_stay_within_60_degrees() -> None:
    for strategy, max_angle in (("dreamfusion", 180.0), ("magic3d", 60.0)):
        sampler = RandomCameraSampler({**SMALL, "light_sample_strategy": strategy, "light_position_perturb": 0.5})
        batches = [sampler.sample(s) for s in range(50)]
        cams = torch.cat([b["camera_positions"] for b in batches])
        lights = torch.cat([b["light_positions"] for b in batches])
        cos = F.cosine_similarity(cams, lights, dim=-1)
        assert cos.min() >= math.cos(math.radians(max_angle)) - 1e-4
        assert cos.mean() > 0.6  # lights sit on the camera's side of the object
    with pytest.raises(ConfigError, match="light_sample_strategy"):
        RandomCameraSampler({"light_sample_strategy": "sun"})


def test_resolution_milestones_switch_size_and_batch() -> None:
    sampler = RandomCameraSampler(
        {"height": [8, 16], "width": [6, 12], "batch_size": [3, 1], "resolution_milestones": [5]}
    )
    early, late = sampler.sample(4), sampler.sample(5)
    assert early["rays_o"].shape == (3, 8, 6, 3) and (early["height"], early["width"]) == (8, 6)
    assert late["rays_o"].shape == (1, 16, 12, 3) and (late["height"], late["width"]) == (16, 12)
    with pytest.raises(ConfigError, match="one value per stage"):
        RandomCameraSampler({"height": [8, 16, 32], "resolution_milestones": [5]})


def test_progressive_views_open_from_the_eval_view() -> None:
    sampler = RandomCameraSampler({**SMALL, "progressive_until": 100, "eval_elevation_deg": 15.0})
    start = sampler.sample(0)
    assert torch.allclose(start["elevation"], torch.full((4,), 15.0), atol=1e-4)
    assert torch.allclose(start["azimuth"], torch.zeros(4), atol=1e-5)
    assert sampler.view_ranges(50) == ((2.5, 52.5), (-90.0, 90.0))
    assert sampler.view_ranges(500) == ((-10.0, 90.0), (-180.0, 180.0))


# ----------------------------------------------------------------------------- data module
def test_train_loader_resumes_at_trainer_global_step() -> None:
    dm = RandomCameraDataModule(SMALL, seed=2)
    dm.setup("fit")
    fresh = iter(dm.train_dataloader())
    assert torch.equal(next(fresh)["c2w"], dm.sampler.sample(0)["c2w"])
    assert torch.equal(next(fresh)["c2w"], dm.sampler.sample(1)["c2w"])
    dm.trainer = SimpleNamespace(global_step=7)  # what a resumed Trainer exposes
    resumed = iter(dm.train_dataloader())
    assert torch.equal(next(resumed)["c2w"], dm.sampler.sample(7)["c2w"])
    assert torch.equal(next(resumed)["c2w"], dm.sampler.sample(8)["c2w"])


def test_val_and_test_orbits() -> None:
    cfg = {**SMALL, "eval_height": 4, "eval_width": 6, "n_val_views": 3, "n_test_views": 10, "eval_batch_size": 4,
           "eval_elevation_deg": 20.0, "eval_camera_distance": 2.0, "eval_fovy_deg": 45.0}
    dm = RandomCameraDataModule(cfg)
    dm.setup()
    val = list(dm.val_dataloader())
    assert [len(b["index"]) for b in val] == [3]
    assert torch.allclose(val[0]["azimuth"], torch.tensor([0.0, 120.0, 240.0]))
    test = list(dm.test_dataloader())
    assert [len(b["index"]) for b in test] == [4, 4, 2]
    assert torch.cat([b["index"] for b in test]).tolist() == list(range(10))
    azimuth = torch.cat([b["azimuth"] for b in test])
    assert torch.allclose(azimuth, torch.arange(10) * 36.0)
    for batch in test:
        assert set(batch) == set(CameraBatch.__annotations__)
        assert batch["rays_o"].shape[1:] == (4, 6, 3) and (batch["height"], batch["width"]) == (4, 6)
        assert torch.allclose(batch["camera_positions"].norm(dim=-1), torch.tensor(2.0))
        assert torch.allclose(batch["elevation"], torch.tensor(20.0))
        assert torch.allclose(batch["light_positions"], batch["camera_positions"])
        assert torch.allclose(batch["fovy"], torch.tensor(45.0))
    assert len(list(dm.predict_dataloader())) == 3
    assert len(RandomCameraDataModule({"eval_height": 2, "eval_width": 2}).test_dataloader()) == 120


def test_train_batch_has_every_camera_batch_key() -> None:
    batch = RandomCameraSampler(SMALL).sample(0)
    assert set(batch) == set(CameraBatch.__annotations__)
    assert torch.allclose(batch["rays_d"].norm(dim=-1), torch.ones(4, 4, 4), atol=1e-5)
    assert torch.allclose(batch["rays_o"][:, 0, 0], batch["camera_positions"])


def test_lightning_resume_sees_the_same_cameras_per_step(tmp_path) -> None:
    """Through a real Trainer (which prefetches): step N gets sample(N), also after resuming."""
    import lightning.pytorch as pl

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, torch.Tensor] = {}

        def training_step(self, batch: CameraBatch, batch_idx: int) -> torch.Tensor:
            self.seen[self.global_step] = batch["c2w"].clone()
            return (self.weight**2).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    options = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                   accelerator="cpu", limit_val_batches=0, default_root_dir=str(tmp_path))
    first, resumed = Recorder(), Recorder()
    trainer = pl.Trainer(max_steps=3, **options)
    trainer.fit(first, datamodule=RandomCameraDataModule(SMALL, seed=5))
    trainer.save_checkpoint(str(tmp_path / "last.ckpt"))
    pl.Trainer(max_steps=5, **options).fit(
        resumed, datamodule=RandomCameraDataModule(SMALL, seed=5), ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert sorted(first.seen) == [0, 1, 2] and sorted(resumed.seen) == [3, 4]
    reference = RandomCameraSampler(SMALL, seed=5)
    for step, c2w in {**first.seen, **resumed.seen}.items():
        assert torch.equal(c2w, reference.sample(step)["c2w"]), step
