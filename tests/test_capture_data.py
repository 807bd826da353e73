"""Real-capture data: transforms parsing, lens undistortion, per-frame intrinsics, scene
normalisation, the multiview-camera-datamodule's batches and its image cache."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from capture_fixtures import write_blender_capture, write_nerfstudio_capture
from threestudio_like.config import ConfigError
from threestudio_like.data import capture_format
from threestudio_like.data.cameras import (
    directions_from_pixels,
    get_projection_matrix,
    get_ray_directions,
    get_ray_directions_per_frame,
    projection_from_intrinsics,
    rigid_inverse,
)
from threestudio_like.data.capture import CaptureDataModule, cache_dir, camera_batch, normalise_scene, process_image
from threestudio_like.data.capture_format import load_capture
from threestudio_like.data.random_camera import TrainCameraStream
from threestudio_like.data.undistort import distort_normalized, undistort_image, undistort_points
from threestudio_like.experiment import find_part

K = torch.tensor([0.12, -0.05, 0.004, -0.003, 0.02], dtype=torch.float64)  # k1 k2 p1 p2 k3


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def blender(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("blender")
    return folder, write_blender_capture(folder, n_views=30, size=32, holdout=6)


@pytest.fixture(scope="module")
def nerfstudio(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("nerfstudio")
    return folder, write_nerfstudio_capture(folder)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("THREESTUDIO_LIKE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "capture"))


def module(dataroot: Path, seed: int = 0, **cfg) -> CaptureDataModule:
    """A set-up data module at full resolution unless ``cfg`` says otherwise."""
    options = {"dataroot": str(dataroot), "train_downsample_resolution": 1, "eval_downsample_resolution": 1, **cfg}
    data = CaptureDataModule(options, seed=seed)
    data.setup()
    return data


# --------------------------------------------------------------------------- lens model
def opencv_distort(x: torch.Tensor, y: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: OpenCV's documented radial-tangential model."""
    k1, k2, p1, p2, k3 = k
    r2 = x**2 + y**2
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    return x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x**2), y * radial + p1 * (r2 + 2 * y**2) + 2 * p2 * x * y


def test_distortion_matches_opencv_formula_and_round_trips() -> None:
    xy = (torch.rand(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5) * 1.2
    x_d, y_d = opencv_distort(xy[:, 0], xy[:, 1], K)
    assert torch.allclose(distort_normalized(xy, K), torch.stack([x_d, y_d], -1), atol=1e-12)
    assert torch.allclose(distort_normalized(xy, K[:4]), torch.stack(opencv_distort(xy[:, 0], xy[:, 1], torch.cat([K[:4], K.new_zeros(1)])), -1))
    assert torch.allclose(undistort_points(distort_normalized(xy, K), K), xy, atol=1e-9)


def test_undistort_image_recovers_the_pinhole_image() -> None:
    H, W, fx, fy, cx, cy = 60, 80, 70.0, 72.0, 41.0, 29.0

    def pattern(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # smooth: bilinear sampling is near exact
        return torch.stack([0.5 + 0.4 * torch.sin(12 * x), 0.5 + 0.4 * torch.cos(10 * y), 0.5 + 0.3 * torch.sin(8 * x + 6 * y)], -1)

    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    xy = torch.stack([(cols - cx) / fx, (rows - cy) / fy], -1)
    pinhole = pattern(xy[..., 0], xy[..., 1]).float()
    ideal = undistort_points(xy, K)  # distorted pixel (u, v) shows the scene point at pinhole position `ideal`
    distorted = pattern(ideal[..., 0], ideal[..., 1]).float()
    assert (distorted - pinhole).abs().max() > 0.05  # the lens matters in this test
    for image, channels_last in ((distorted, True), (distorted.permute(2, 0, 1), False)):
        out = undistort_image(image, fx, fy, cx, cy, K)
        out = out if channels_last else out.permute(1, 2, 0)
        inner = (slice(4, -4), slice(4, -4))  # the border repeats edge pixels where the lens saw nothing
        assert (out[inner] - pinhole[inner]).abs().max() < 5e-3


# --------------------------------------------------------------------------- per-frame intrinsics
def test_per_frame_intrinsics_give_each_frame_its_rays() -> None:
    fx, fy = torch.tensor([50.0, 80.0]), torch.tensor([50.0, 82.0])
    cx, cy = torch.tensor([16.0, 19.0]), torch.tensor([12.0, 10.5])
    dirs = get_ray_directions_per_frame(24, 32, fx, fy, cx, cy)
    assert dirs.shape == (2, 24, 32, 3)
    for n in range(2):
        expected = get_ray_directions(24, 32, (float(fx[n]), float(fy[n])), (float(cx[n]), float(cy[n])))
        assert torch.allclose(dirs[n], expected)
    # pixel (row 3, col 5) of frame 1 by hand
    assert torch.allclose(dirs[1, 3, 5], torch.tensor([(5.5 - 19.0) / 80.0, -(3.5 - 10.5) / 82.0, -1.0]))


def test_projection_from_intrinsics_matches_the_fov_projection_when_centred() -> None:
    H, W, f = 48, 64, 55.0
    fovy = 2 * math.atan(0.5 * H / f)
    ours = projection_from_intrinsics(torch.tensor([f]), torch.tensor([f]), torch.tensor([W / 2]), torch.tensor([H / 2]), W, H)
    assert torch.allclose(ours, get_projection_matrix(torch.tensor([fovy]), W / H), atol=1e-6)


def project(point: torch.Tensor, c2w: torch.Tensor, fx, fy, cx, cy) -> tuple[float, float]:
    """Pinhole projection to continuous pixel coordinates (pixel centres at i + 0.5)."""
    p = (rigid_inverse(c2w[None])[0] @ torch.cat([point, point.new_ones(1)]))[:3]
    return float(cx + fx * p[0] / -p[2]), float(cy - fy * p[1] / -p[2])


def ray_distance(o: torch.Tensor, d: torch.Tensor, point: torch.Tensor) -> float:
    d = d / d.norm()
    return float(torch.linalg.cross(point - o, d).norm())


def test_pixel_rays_pass_through_the_point_that_projects_there(nerfstudio) -> None:
    data = module(nerfstudio[0], train_downsample_resolution=2, eval_downsample_resolution=2)
    point_world = torch.tensor([0.12, -0.2, 0.15])  # capture coordinates
    point = (point_world + data.offset) * data.scale
    assert torch.allclose(data.to_capture_world(point), point_world, atol=1e-6)
    checked = 0
    for views in (data.train_set, data.val_dataset.views):
        for k in range(len(views.index)):
            sl = slice(k, k + 1)
            intr = [float(v[k]) for v in (views.fx, views.fy, views.cx, views.cy)]
            W, H = int(views.width[k]), int(views.height[k])
            u, v = project(point, views.c2w[k], *intr)
            exact = camera_batch(views.c2w[sl], views.fx[sl], views.fy[sl], views.cx[sl], views.cy[sl], views.width[sl], views.height[sl],
                                 torch.tensor([[[u]]]), torch.tensor([[[v]]]), views.index[sl])
            assert ray_distance(exact["rays_o"][0, 0, 0], exact["rays_d"][0, 0, 0], point) < 1e-4
            clip = exact["mvp_mtx"][0] @ torch.cat([point, torch.ones(1)])
            ndc = clip[:3] / clip[3]
            assert abs((ndc[0] + 1) / 2 * W - u) < 1e-3 and abs((1 - ndc[1]) / 2 * H - v) < 1e-3
            checked += 1
    # a full held-out image: the ray of the pixel containing (u, v) passes within its footprint
    view = data.val_dataset[0]
    v0 = data.val_dataset.views
    u, v = project(point, v0.c2w[0], float(v0.fx[0]), float(v0.fy[0]), float(v0.cx[0]), float(v0.cy[0]))
    depth = float((view["rays_o"][0, 0, 0] - point).norm())
    footprint = depth / float(v0.fx[0])
    assert ray_distance(view["rays_o"][0, int(v), int(u)], view["rays_d"][0, int(v), int(u)], point) < footprint
    assert checked == 8


def test_random_rays_carry_their_pixel_colour(nerfstudio) -> None:
    data = module(nerfstudio[0])
    batch = data.sampler.sample(3)
    train = data.train_set
    for n in range(0, 4096, 97):
        k = int((train.index == batch["index"][n]).nonzero())
        assert torch.equal(batch["c2w"][n], train.c2w[k])
        far = batch["rays_o"][n, 0, 0] + 2.0 * batch["rays_d"][n, 0, 0]
        u, v = project(far, train.c2w[k], *(float(t[k]) for t in (train.fx, train.fy, train.cx, train.cy)))
        col, row = math.floor(u), math.floor(v)
        assert 0 <= u - col < 1 and 0 <= v - row < 1  # through a point of its pixel (jittered)
        pixel = train.pixels[int(train.offsets[k]) + row * int(train.width[k]) + col]
        assert torch.allclose(batch["rgb"][n, 0, 0], pixel.float() / 255)
        fovy = math.degrees(2 * math.atan(0.5 * float(train.height[k]) / float(train.fy[k])))
        assert abs(float(batch["fovy"][n]) - fovy) < 1e-4
    assert batch["height"] == batch["width"] == 1 and "mask" not in batch
    pos = batch["camera_positions"]
    assert torch.allclose(pos[:, 2], batch["camera_distances"] * torch.sin(torch.deg2rad(batch["elevation"])), atol=1e-5)
    assert torch.allclose(batch["light_positions"], pos)


def test_pixel_jitter_spreads_rays_over_their_pixels(nerfstudio) -> None:
    """Training rays go through random points of their pixels (the photo's pixel is an area
    average); without jitter, and in patches, through the centres."""

    def offsets(**options) -> torch.Tensor:
        data = module(nerfstudio[0], **options)
        batch, train = data.sampler.sample(5), data.train_set
        found = []
        for n in range(0, batch["rays_o"].shape[0], 13):
            k = int((train.index == batch["index"][n].reshape(-1)[0]).nonzero())
            far = batch["rays_o"][n].reshape(-1, 3)[0] + 2.0 * batch["rays_d"][n].reshape(-1, 3)[0]
            u, v = project(far, train.c2w[k], *(float(t[k]) for t in (train.fx, train.fy, train.cx, train.cy)))
            found.append([u - math.floor(u), v - math.floor(v)])
        return torch.tensor(found)

    jittered = offsets()
    assert jittered.min() < 0.2 and jittered.max() > 0.8 and jittered.std() > 0.2
    assert torch.allclose(offsets(pixel_jitter=False), torch.tensor(0.5), atol=1e-3)
    assert torch.allclose(offsets(patch_size=4, batch_size=2), torch.tensor(0.5), atol=1e-3)


def test_supersampled_held_out_views_put_s_by_s_rays_in_each_pixel(nerfstudio) -> None:
    from threestudio_like.systems.reconstruction import box_filter_to

    plain, fine = module(nerfstudio[0], holdout_every=3).val_dataset[0], module(nerfstudio[0], holdout_every=3, eval_supersample=2).val_dataset[0]
    H, W = plain["rgb"].shape[1:3]
    assert (fine["height"], fine["width"]) == (2 * H, 2 * W) and torch.equal(fine["rgb"], plain["rgb"])
    # the four rays of a pixel average to its single central ray's direction
    four = box_filter_to(fine["rays_d"], H)
    assert torch.allclose(torch.nn.functional.normalize(four, dim=-1), plain["rays_d"], atol=1e-4)
    assert not torch.allclose(fine["rays_d"][:, ::2, ::2], plain["rays_d"], atol=1e-4)


def test_images_rendered_through_a_lens_are_undistorted(tmp_path) -> None:
    lens_k = [0.2, 0.05, 0.01, -0.01, 0.0]  # strong enough to move edges by pixels at 64 x 48
    size = {"width": 64, "height": 48, "distance": 1.2}
    write_nerfstudio_capture(tmp_path / "lens", distortion=lens_k, **size)
    pinhole = write_nerfstudio_capture(tmp_path / "pinhole", **size)
    frames = load_capture(tmp_path / "lens")
    assert frames.distortion is not None and torch.allclose(frames.distortion[0], torch.tensor(lens_k))

    def blurred(image: torch.Tensor) -> torch.Tensor:  # compares edge positions, not resampling blur
        return torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None], 4)

    fixed, raw = [], []
    for i in range(len(frames)):
        target = blurred(pinhole["rgb"][i])
        fixed.append(float((blurred(process_image(frames, i, 1, undistort=True).float() / 255) - target).abs().mean()))
        raw.append(float((blurred(process_image(frames, i, 1, undistort=False).float() / 255) - target).abs().mean()))
    assert np.mean(fixed) < 0.35 * np.mean(raw), (fixed, raw)


# --------------------------------------------------------------------------- formats and errors
def test_blender_rgba_is_composited_over_the_background(blender) -> None:
    folder, cap = blender
    data = module(folder, background_color=[0.0, 0.0, 1.0])
    assert data.val_indices == list(range(24, 30)) and len(data.val_dataset) == 6
    view = data.val_dataset[2]
    rgba = torch.from_numpy(cap["rgba"][cap["val"][2]]).float() / 255
    expected = rgba[..., :3] * rgba[..., 3:] + torch.tensor([0.0, 0.0, 1.0]) * (1 - rgba[..., 3:])
    assert torch.allclose(view["rgb"][0], expected, atol=2.5 / 255)
    assert torch.allclose(view["mask"][0], rgba[..., 3:], atol=1 / 255)
    assert 0.05 < float(view["mask"].mean()) < 0.95
    assert int(view["index"]) == 26 and view["height"] == view["width"] == 32
    assert "mask" in data.sampler.sample(0)
    frames = data.frames
    assert torch.allclose(frames.fx, torch.full((30,), cap["focal"]), rtol=1e-5)


def test_missing_images_are_skipped_with_one_warning(nerfstudio, tmp_path) -> None:
    folder = copy_of(nerfstudio[0], tmp_path)
    for k in (2, 5):
        (folder / "images" / f"frame_{k:03d}.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = load_capture(folder)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("2 of 8 frames") and "transforms.json" in messages[0]
    assert len(frames) == 6 and frames.names[2] == "images/frame_003.png"


def test_file_paths_without_extension_resolve(tmp_path) -> None:
    write_nerfstudio_capture(tmp_path / "cap", n_views=3, with_extension=False)
    assert [p.name for p in load_capture(tmp_path / "cap").image_paths] == ["frame_000.png", "frame_001.png", "frame_002.png"]


def test_fox_capture(shared_data) -> None:
    fox = shared_data("fox")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = load_capture(fox)
    assert [str(w.message).split(" frames")[0] for w in caught] == ["17 of 67"]
    assert len(frames) == 50 and frames.aabb_scale == 4
    assert frames.distortion is not None and float(frames.fy[0]) == pytest.approx(1374.49)
    assert int(frames.width[0]) == 1080 and int(frames.height[0]) == 1920
    norm = normalise_scene(frames)
    assert float(norm.offset.norm()) < 0.5  # the fox's focus is near its world origin
    image = process_image(frames, 0, 8, undistort=True)
    assert tuple(image.shape) == (240, 135, 3)


def write_json(folder: Path, name: str, meta: dict) -> Path:
    path = folder / name
    path.write_text(json.dumps(meta))
    return path


def test_errors_name_the_file(nerfstudio, tmp_path) -> None:
    folder = copy_of(nerfstudio[0], tmp_path)
    meta = json.loads((folder / "transforms.json").read_text())
    bad_matrices = {
        "shape": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "non-finite": [[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        "scaled": [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]],
    }
    for why, matrix in bad_matrices.items():
        broken = json.loads(json.dumps(meta))
        broken["frames"][3]["transform_matrix"] = matrix
        path = write_json(folder, "transforms.json", broken)
        with pytest.raises(ConfigError, match="transform_matrix") as error:
            load_capture(folder)
        assert str(path) in str(error.value) and "images/frame_003.png" in str(error.value), why

    path = write_json(folder, "transforms.json", meta)
    path.write_text(path.read_text()[:-5])
    with pytest.raises(ConfigError, match="invalid JSON") as error:
        load_capture(folder)
    assert str(path) in str(error.value)

    fisheye = {**meta, "camera_model": "OPENCV_FISHEYE"}
    write_json(folder, "transforms.json", fisheye)
    with pytest.raises(ConfigError, match="only OPENCV / PINHOLE"):
        load_capture(folder)

    nothing = {**meta, "frames": [{**f, "file_path": "gone/" + f["file_path"]} for f in meta["frames"]]}
    path = write_json(folder, "transforms.json", nothing)
    with pytest.raises(ConfigError, match="none of the 8 frames") as error, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_capture(folder)
    assert str(path) in str(error.value)

    write_json(folder, "transforms.json", meta)
    not_an_image = folder / "images" / "frame_004.png"
    not_an_image.write_bytes(b"this is not a png")
    with pytest.raises(ConfigError, match="cannot read the image") as error:
        module(folder, holdout_every=0)
    assert str(not_an_image) in str(error.value)

    with pytest.raises(ConfigError, match="transforms.json, transforms_train.json"):
        load_capture(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_capture(tmp_path / "nowhere")


def test_unreadable_image_without_size_fails_while_parsing(blender, tmp_path) -> None:
    folder = copy_of(blender[0], tmp_path)
    (folder / "train" / "r_1.png").write_bytes(b"GIF89a-but-not-really")
    with pytest.raises(ConfigError, match="r_1.png"):
        load_capture(folder)


# --------------------------------------------------------------------------- batches
def test_batches_are_a_pure_function_of_seed_and_step(blender) -> None:
    folder = blender[0]
    for cfg in ({}, {"patch_size": 8, "batch_size": 3}):
        a, b = module(folder, **cfg), module(folder, **cfg)
        first, again = a.sampler.sample(7), b.sampler.sample(7)
        assert all(torch.equal(first[k], again[k]) for k in ("rays_o", "rays_d", "rgb", "index", "mvp_mtx"))
        assert not torch.equal(first["rays_d"], a.sampler.sample(8)["rays_d"])
        other = module(folder, seed=1, **cfg)
        assert not torch.equal(first["rays_d"], other.sampler.sample(7)["rays_d"])
        stream = iter(TrainCameraStream(a.sampler, start_step=lambda: 7))
        assert torch.equal(next(stream)["rays_d"], first["rays_d"])
    patches = a.sampler.sample(0)
    assert patches["rgb"].shape == (3, 8, 8, 3) and patches["rays_o"].shape == (3, 8, 8, 3) and patches["height"] == 8


def test_random_rays_only_come_from_training_frames(blender) -> None:
    data = module(blender[0], rays_per_batch=512)
    seen = torch.cat([data.sampler.sample(s)["index"] for s in range(20)]).unique().tolist()
    assert set(seen) <= set(data.train_indices) and len(seen) == len(data.train_indices)
    patches = module(blender[0], patch_size=4, batch_size=8)
    seen = torch.cat([patches.sampler.sample(s)["index"] for s in range(20)]).unique().tolist()
    assert set(seen) <= set(patches.train_indices)


def test_holdout_every_nth_frame_without_a_val_file(nerfstudio) -> None:
    data = module(nerfstudio[0], holdout_every=3)
    assert data.val_indices == [0, 3, 6] and data.train_indices == [1, 2, 4, 5, 7]
    assert module(nerfstudio[0], holdout_every=0).val_indices == []
    assert module(nerfstudio[0], holdout_every=0, train_data_interval=2).train_indices == [0, 2, 4, 6]


def test_normalisation_centres_the_focus_and_scales_the_view_sphere(tmp_path) -> None:
    origin = torch.tensor([3.0, -2.0, 1.0])
    write_blender_capture(tmp_path / "cap", n_views=12, size=16, holdout=2, distance=2.0, fovy_deg=40.0, origin=origin.tolist())
    data = module(tmp_path / "cap", scene_radius=0.8)
    assert torch.allclose(data.offset, -origin, atol=1e-4)
    distances = data.train_set.c2w[:, :3, 3].norm(dim=-1)
    assert torch.allclose(distances, torch.full_like(distances, 0.8 / math.tan(math.radians(20.0))), rtol=1e-4)
    assert data.scale == pytest.approx(0.8 / (2.0 * math.tan(math.radians(20.0))), rel=1e-4)
    assert torch.allclose(data.to_capture_world(torch.zeros(3)), origin, atol=1e-4)
    # rotations are untouched: the world's up axis stays up
    assert torch.allclose(data.train_set.c2w[:, :3, :3], data.frames.c2w[data.train_indices][:, :3, :3])


def test_turntable_follows_the_capture_path(blender) -> None:
    data = module(blender[0], n_test_views=12, eval_batch_size=4)
    assert len(data.test_dataset) == 3
    batch = data.test_dataset[1]
    assert batch["index"].tolist() == [4, 5, 6, 7] and "rgb" not in batch and batch["rays_o"].shape == (4, 32, 32, 3)
    first = data.test_dataset[0]["c2w"][0]
    cameras = data.normalisation.apply_c2w(data.frames.c2w)
    assert torch.allclose(first, cameras[0], atol=1e-5)  # the path starts at the first camera
    radius = cameras[:, :3, 3].norm(dim=-1).mean()
    assert torch.allclose(batch["camera_positions"].norm(dim=-1), radius.expand(4), rtol=0.1)
    assert len(data.predict_dataloader()) == 3


def test_downsample_cache_is_reused_and_keyed_on_the_factor(blender, monkeypatch) -> None:
    data = module(blender[0], train_downsample_resolution=2, eval_downsample_resolution=2)
    assert data.train_set.width[0] == 16 and float(data.train_set.fx[0]) == pytest.approx(blender[1]["focal"] / 2, rel=1e-5)

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although it is cached")

    monkeypatch.setattr(capture_format, "read_image", no_decoding)
    again = module(blender[0], train_downsample_resolution=2, eval_downsample_resolution=2)
    assert torch.equal(again.train_set.pixels, data.train_set.pixels)
    assert cache_dir(data.frames, 2, True) != cache_dir(data.frames, 4, True)
    with pytest.raises(AssertionError, match="decoded"):
        module(blender[0], train_downsample_resolution=4, eval_downsample_resolution=4)


def test_module_is_registered_and_checks_its_config(blender) -> None:
    assert find_part("multiview-camera-datamodule") is CaptureDataModule
    with pytest.raises(ConfigError, match="data.dataroot"):
        CaptureDataModule({})
    with pytest.raises(ConfigError, match="holdout_every"):
        CaptureDataModule({"dataroot": str(blender[0]), "holdout_every": 1})
    with pytest.raises(ConfigError, match="patch_size 64"):
        module(blender[0], patch_size=64)
