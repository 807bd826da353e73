"""Posed photos of a real scene as training rays (``multiview-camera-datamodule``).

Loading: the capture is parsed by ``capture_format``; each photo is decoded once, undistorted at
full resolution (OpenCV model), box-downsampled by the integer factor and cached on disk (uint8,
premultiplied alpha) under ``$THREESTUDIO_LIKE_CACHE/captures`` (default ``~/.cache/threestudio_like``),
so a read-only dataroot works and the second run decodes nothing. Intrinsics are divided by the
factor (pixel-centre convention: a continuous pixel coordinate u becomes u / factor).

Scene normalisation (``camera_layout: around``): the focus is the least-squares point closest
to every camera's optical axis; it moves to the origin, and the scene is scaled so that the
sphere the median camera sees within its smaller half field of view (radius = median focus
distance * tan(min(half fovx, half fovy)), medians over frames) gets radius ``scene_radius``.
No rotation: the capture's up axis stays up. ``x_normalised = scale * (x_capture + offset)``.

Splits: the capture's own val (else test) split when it has one (training = its train split);
otherwise, in file order among the loaded frames, frame p is held out when
``p % holdout_every == 0`` (the LLFF convention; 0 disables it). ``train/eval_data_interval`` then keep every n-th frame.

Training batches are pure functions of ``(seed, step)`` (``step_seed``), streamed from the
trainer's step by ``TrainCameraStream``, so a resumed run sees the same rays at each step.

The training images are state a system may change (Instruct-NeRF2NeRF replaces frames by their
edits): ``replace_frame`` writes a frame, ``state_dict`` / ``load_state_dict`` carry the changed
frames through checkpoints, and a batch's colours are looked up by its ``pixel_index`` when the
batch reaches the system (``on_after_batch_transfer``), not when it is drawn, so a batch drawn
ahead by the loader still sees the images of the step it is trained at.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from threestudio_like.config import ConfigError, parse_structured
from threestudio_like.data import capture_format
from threestudio_like.data.cameras import (
    directions_from_pixels,
    get_mvp_matrix,
    get_rays,
    projection_from_intrinsics,
)
from threestudio_like.data.capture_format import CaptureFrames, load_capture
from threestudio_like.data.random_camera import CameraDataModule, TrainCameraStream, step_seed
from threestudio_like.data.undistort import undistort_image
from threestudio_like.registry import register
from threestudio_like.utils.ranks import rank_seed
from threestudio_like.utils.typing import CameraBatch, Float, Int, Tensor, UInt8

CACHE_VERSION = 1  # bump when the cached pixels change meaning


@dataclass
class CaptureDataConfig:
    """threestudio's multiview-camera-datamodule keys and defaults, plus ours (below the gap)."""

    dataroot: str = ""
    train_downsample_resolution: int = 4
    eval_downsample_resolution: int = 4
    train_data_interval: int = 1
    eval_data_interval: int = 1
    batch_size: int = 1  # patches per step (patch_size > 0)
    eval_batch_size: int = 1  # turntable views per batch (held-out photos come one at a time)
    camera_layout: str = "around"
    rays_d_normalize: bool = True

    holdout_every: int = 8
    rays_per_batch: int = 4096
    patch_size: int = 0
    background_color: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    undistort: bool = True
    scene_radius: float = 1.0
    n_test_views: int = 120
    # random rays pass through a uniformly random point of their pixel (instant-ngp), so the field
    # learns what the photo recorded, the pixel's area average, instead of aliasing at edges
    pixel_jitter: bool = True
    # held-out views are rendered with s x s rays per pixel, box-filtered to the photo's size by the
    # system: a photo's pixel integrates light over its area, a single ray samples one point
    eval_supersample: int = 1


def _check_config(cfg: CaptureDataConfig) -> None:
    if not cfg.dataroot:
        raise ConfigError("data.dataroot is empty; set it to a capture folder (with transforms.json or transforms_train.json).")
    positive = ("train_downsample_resolution", "eval_downsample_resolution", "train_data_interval",
                "eval_data_interval", "batch_size", "eval_batch_size", "rays_per_batch", "n_test_views", "eval_supersample")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"data.{name} must be a positive integer, got {getattr(cfg, name)}.")
    if cfg.holdout_every < 0 or cfg.holdout_every == 1:
        raise ConfigError(f"data.holdout_every must be 0 (no held-out frames) or >= 2, got {cfg.holdout_every}.")
    if cfg.patch_size < 0:
        raise ConfigError(f"data.patch_size must be >= 0 (0 = random rays), got {cfg.patch_size}.")
    if len(cfg.background_color) != 3:
        raise ConfigError(f"data.background_color must be 3 numbers (RGB in [0, 1]), got {list(cfg.background_color)}.")
    if not cfg.scene_radius > 0:
        raise ConfigError(f"data.scene_radius must be positive, got {cfg.scene_radius}.")
    if cfg.camera_layout != "around":
        raise ConfigError(f"data.camera_layout '{cfg.camera_layout}' is not supported; only 'around' (cameras around an object) is.")


# --------------------------------------------------------------------------- normalisation
@dataclass
class SceneNormalisation:
    """``x_normalised = scale * (x_capture + offset)``; rotations are unchanged."""

    scale: float
    offset: Float[Tensor, "3"]

    def from_capture_world(self, points: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
        return (points + self.offset.to(points)) * self.scale

    def to_capture_world(self, points: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
        return points / self.scale - self.offset.to(points)

    def apply_c2w(self, c2w: Float[Tensor, "N 4 4"]) -> Float[Tensor, "N 4 4"]:
        out = c2w.clone()
        out[:, :3, 3] = self.from_capture_world(c2w[:, :3, 3])
        return out


def focus_point(c2w: Float[Tensor, "N 4 4"]) -> Float[Tensor, "3"]:
    """The point closest (least squares) to every camera's optical axis (the -z of c2w)."""
    c2w = c2w.double()
    d = F.normalize(-c2w[:, :3, 2], dim=-1)
    origins = c2w[:, :3, 3]
    projector = torch.eye(3, dtype=d.dtype) - d[:, :, None] * d[:, None, :]  # removes the along-axis part
    a, b = projector.sum(0), (projector @ origins[..., None]).sum(0)[:, 0]
    # parallel axes (one camera, a forward-facing rig) leave a direction free: pull it weakly
    # towards the cameras' centroid instead of failing
    eps = 1e-6 * float(a.diagonal().sum())
    a = a + eps * torch.eye(3, dtype=a.dtype)
    b = b + eps * origins.mean(0)
    return torch.linalg.solve(a, b).float()


def normalise_scene(frames: CaptureFrames, scene_radius: float = 1.0) -> SceneNormalisation:
    """The module docstring's rule (focus to the origin, median view sphere to ``scene_radius``)."""
    if len(frames) < 2:  # one camera has no focus point to find: its axis is all there is
        raise ConfigError(
            f"{frames.sources[0]}: a capture needs at least two views (photos of the object from different "
            f"places), this one has {len(frames)}; add frames to the transforms file."
        )
    focus = focus_point(frames.c2w)
    distance = (frames.c2w[:, :3, 3] - focus).norm(dim=-1).median()
    tan_half = torch.minimum(0.5 * frames.width / frames.fx, 0.5 * frames.height / frames.fy).median()
    radius = float(distance * tan_half)
    if not radius > 0:
        raise ConfigError(f"{frames.sources[0]}: all cameras sit at their focus point; cannot normalise the scene.")
    return SceneNormalisation(scale=scene_radius / radius, offset=-focus)


# --------------------------------------------------------------------------- images + cache
def cache_root() -> Path:
    root = os.environ.get("THREESTUDIO_LIKE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "threestudio_like"))
    return Path(root) / "captures"


def cache_dir(frames: CaptureFrames, factor: int, undistort: bool) -> Path:
    """One folder per (capture folder, factor, undistortion); files inside are per frame."""
    key = json.dumps([CACHE_VERSION, str(frames.root), int(factor), bool(undistort)])
    return cache_root() / hashlib.sha256(key.encode()).hexdigest()[:16]


def _frame_key(frames: CaptureFrames, i: int, undistort: bool) -> str:
    stat = frames.image_paths[i].stat()
    distortion = None if frames.distortion is None or not undistort else frames.distortion[i].tolist()
    intrinsics = [float(v[i]) for v in (frames.fx, frames.fy, frames.cx, frames.cy)]
    key = json.dumps([str(frames.image_paths[i]), stat.st_size, stat.st_mtime_ns, intrinsics, distortion])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def check_image(frames: CaptureFrames, i: int, factor: int, size: Optional[tuple[int, int]] = None) -> None:
    """Frame ``i``'s image is as large as its transforms file says (``size``, else read from the
    header) and at least ``factor`` pixels each way."""
    path, W, H = frames.image_paths[i], int(frames.width[i]), int(frames.height[i])
    width, height = size if size is not None else capture_format.image_size(path)
    if (width, height) != (W, H):
        raise ConfigError(f"{path}: image is {width}x{height} but its transforms file says {W}x{H}; fix w / h or the image.")
    if H // factor == 0 or W // factor == 0:
        raise ConfigError(f"{path}: {W}x{H} image is smaller than the downsample factor {factor}; lower data.*_downsample_resolution.")


def process_image(frames: CaptureFrames, i: int, factor: int, undistort: bool) -> UInt8[Tensor, "h w C"]:
    """Decode, premultiply alpha, undistort, box-downsample: uint8 ``[h,w,C]`` (C = 3 or 4)."""
    path = frames.image_paths[i]
    image = capture_format.read_image(path)
    H, W = int(frames.height[i]), int(frames.width[i])
    check_image(frames, i, factor, (image.shape[1], image.shape[0]))
    if image.shape[-1] == 4:
        # premultiplied: resampling must not blend in the colour of transparent pixels
        image = torch.cat([image[..., :3] * image[..., 3:], image[..., 3:]], dim=-1)
    if undistort and frames.distortion is not None and bool(frames.distortion[i].abs().sum() > 0):
        image = undistort_image(image, float(frames.fx[i]), float(frames.fy[i]), float(frames.cx[i]), float(frames.cy[i]), frames.distortion[i], channels_last=True)
    if factor > 1:
        h, w = H // factor, W // factor
        chw = image[: h * factor, : w * factor].permute(2, 0, 1)
        image = F.avg_pool2d(chw[None], factor)[0].permute(1, 2, 0)
    return (image * 255.0).round().clamp(0, 255).to(torch.uint8)


def load_images(frames: CaptureFrames, indices: list[int], factor: int, undistort: bool) -> list[UInt8[Tensor, "h w C"]]:
    """Processed images of ``indices``, from the disk cache where present (and written there when not)."""
    folder = cache_dir(frames, factor, undistort)
    images: list[Optional[Tensor]] = []
    missing: list[int] = []
    for n, i in enumerate(indices):
        path = folder / f"{_frame_key(frames, i, undistort)}.pt"
        image = None
        if path.is_file():
            try:
                image = torch.load(path, weights_only=True)
            except Exception:  # a truncated or foreign file: decode again
                image = None
        images.append(image)
        if image is None:
            missing.append(n)
    if missing:
        print(f"capture: decoding {len(missing)} of {len(indices)} images of {frames.root} (downsample {factor}x, cache {folder})")
    writable = True
    for n in missing:
        i = indices[n]
        images[n] = process_image(frames, i, factor, undistort)
        if writable:
            writable = _save_atomic(images[n], folder / f"{_frame_key(frames, i, undistort)}.pt")
    return images  # type: ignore[return-value]


def _save_atomic(tensor: Tensor, path: Path) -> bool:
    """Write via a temporary file (a killed run leaves no half file); False if the cache is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(tensor, tmp)
        os.replace(tmp, path)
        return True
    except OSError as error:
        warnings.warn(f"capture: cannot write the image cache under {path.parent} ({error}); images will be decoded again next run", stacklevel=3)
        return False


# --------------------------------------------------------------------------- views
@dataclass
class FrameSet:
    """Frames of one split at one resolution: normalised poses, scaled intrinsics, pixels.

    ``pixels`` concatenates every image's pixels row-major (``offsets[k]`` is image k's first);
    one flat array lets random rays pick uniformly among all pixels of all frames at once.
    """

    index: Int[Tensor, "N"]  # frame indices into CaptureFrames
    c2w: Float[Tensor, "N 4 4"]
    fx: Float[Tensor, "N"]
    fy: Float[Tensor, "N"]
    cx: Float[Tensor, "N"]
    cy: Float[Tensor, "N"]
    width: Int[Tensor, "N"]
    height: Int[Tensor, "N"]
    pixels: UInt8[Tensor, "P C"]  # premultiplied alpha when C = 4
    offsets: Int[Tensor, "N+1"]

    @property
    def has_alpha(self) -> bool:
        return self.pixels.shape[-1] == 4


def build_frame_set(frames: CaptureFrames, indices: list[int], c2w: Float[Tensor, "M 4 4"], factor: int, undistort: bool) -> FrameSet:
    images = load_images(frames, indices, factor, undistort)
    if any(im.shape[-1] == 4 for im in images):  # mixed captures: opaque images get alpha 1
        images = [im if im.shape[-1] == 4 else torch.cat([im, torch.full_like(im[..., :1], 255)], -1) for im in images]
    idx = torch.tensor(indices, dtype=torch.int64)
    sizes = torch.tensor([im.shape[0] * im.shape[1] for im in images], dtype=torch.int64)
    return FrameSet(
        index=idx,
        c2w=c2w[idx],
        fx=frames.fx[idx] / factor,
        fy=frames.fy[idx] / factor,
        cx=frames.cx[idx] / factor,
        cy=frames.cy[idx] / factor,
        width=torch.tensor([im.shape[1] for im in images], dtype=torch.int64),
        height=torch.tensor([im.shape[0] for im in images], dtype=torch.int64),
        pixels=torch.cat([im.reshape(-1, im.shape[-1]) for im in images]),
        offsets=torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]),
    )


def camera_batch(
    c2w: Float[Tensor, "B 4 4"],
    fx: Float[Tensor, "B"],
    fy: Float[Tensor, "B"],
    cx: Float[Tensor, "B"],
    cy: Float[Tensor, "B"],
    width: Int[Tensor, "B"],
    height: Int[Tensor, "B"],
    cols: Float[Tensor, "B h w"],
    rows: Float[Tensor, "B h w"],
    index: Int[Tensor, "B"],
    normalize: bool = True,
) -> CameraBatch:
    """A ``CameraBatch`` of rays through continuous pixel positions ``(cols, rows)`` of frames with
    the given intrinsics; ``mvp_mtx`` / ``fovy`` describe each whole frame (``width x height``)."""
    col = lambda v: v[:, None, None]  # noqa: E731  per-frame values against per-pixel grids
    directions = directions_from_pixels(cols, rows, col(fx), col(fy), col(cx), col(cy))
    rays_o, rays_d = get_rays(directions, c2w, normalize=normalize)
    proj = projection_from_intrinsics(fx, fy, cx, cy, width, height)
    positions = c2w[:, :3, 3]
    distances = positions.norm(dim=-1)
    return CameraBatch(
        rays_o=rays_o,
        rays_d=rays_d,
        c2w=c2w,
        mvp_mtx=get_mvp_matrix(c2w, proj),
        camera_positions=positions,
        light_positions=positions.clone(),  # headlight
        elevation=torch.rad2deg(torch.asin((positions[:, 2] / distances.clamp_min(1e-12)).clamp(-1, 1))),
        azimuth=torch.rad2deg(torch.atan2(positions[:, 1], positions[:, 0])),
        camera_distances=distances,
        fovy=torch.rad2deg(2 * torch.atan(0.5 * height.float() / fy)),
        height=int(rows.shape[1]),
        width=int(rows.shape[2]),
        index=index,
    )


def _colours(pixels: UInt8[Tensor, "... C"], background: Float[Tensor, "3"]) -> dict[str, Tensor]:
    """``rgb`` (composited over ``background``) and, with alpha, ``mask``."""
    values = pixels.float() / 255.0
    if values.shape[-1] == 3:
        return {"rgb": values}
    alpha = values[..., 3:]
    return {"rgb": (values[..., :3] + background * (1 - alpha)).clamp(0, 1), "mask": alpha}


class CaptureRaySampler:
    """Training batches from a ``FrameSet``; ``sample(step)`` is a pure function of (seed, step)."""

    def __init__(self, train: FrameSet, cfg: CaptureDataConfig, seed: int = 0) -> None:
        self.train, self.cfg, self.seed = train, cfg, int(seed)
        self.background = torch.tensor(cfg.background_color, dtype=torch.float32)
        p = cfg.patch_size
        if p > 0 and bool(((train.width < p) | (train.height < p)).any()):
            raise ConfigError(f"data.patch_size {p} exceeds a training image ({int(train.width.min())}x{int(train.height.min())} at this downsample); lower it.")

    def sample(self, step: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(step_seed(self.seed, step))
        t = self.train
        if self.cfg.patch_size > 0:
            p = self.cfg.patch_size
            frame = torch.randint(len(t.index), (self.cfg.batch_size,), generator=g)
            top = (torch.rand(frame.shape, generator=g) * (t.height[frame] - p + 1)).long()
            left = (torch.rand(frame.shape, generator=g) * (t.width[frame] - p + 1)).long()
            grid = torch.arange(p)
            rows = top[:, None, None] + grid[None, :, None].expand(-1, p, p)
            cols = left[:, None, None] + grid[None, None, :].expand(-1, p, p)
            flat = t.offsets[frame][:, None, None] + rows * t.width[frame][:, None, None] + cols
        else:
            # uniform over all training pixels: bigger photos get proportionally more rays
            flat = torch.randint(int(t.offsets[-1]), (self.cfg.rays_per_batch,), generator=g)
            frame = torch.searchsorted(t.offsets, flat, right=True) - 1
            local = flat - t.offsets[frame]
            rows, cols = (local // t.width[frame])[:, None, None], (local % t.width[frame])[:, None, None]
            flat = flat[:, None, None]
        if self.cfg.pixel_jitter and self.cfg.patch_size == 0:
            within = torch.rand(2, *rows.shape, generator=g)
        else:
            within = torch.full((2, *rows.shape), 0.5)  # pixel centres: patches stay a regular grid
        batch = camera_batch(
            t.c2w[frame], t.fx[frame], t.fy[frame], t.cx[frame], t.cy[frame], t.width[frame], t.height[frame],
            cols.float() + within[0], rows.float() + within[1], t.index[frame], normalize=self.cfg.rays_d_normalize,
        )
        return {**batch, **_colours(t.pixels[flat], self.background), "pixel_index": flat}


class HeldOutViews(Dataset):
    """Each held-out photo as one full-image batch (B = 1) with ``rgb`` (and ``mask``)."""

    def __init__(self, views: FrameSet, background: list[float], normalize: bool = True, supersample: int = 1) -> None:
        super().__init__()
        self.views, self.normalize, self.supersample = views, normalize, supersample
        self.background = torch.tensor(background, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.views.index)

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not 0 <= k < len(self):
            raise IndexError(f"held-out view {k} out of range (0..{len(self) - 1})")
        v = self.views
        H, W, s = int(v.height[k]), int(v.width[k]), self.supersample
        # s x s sub-pixel centres per pixel (rays rows * s .. rows * s + s - 1 belong to photo row `rows`)
        rows, cols = torch.meshgrid((torch.arange(H * s) + 0.5) / s, (torch.arange(W * s) + 0.5) / s, indexing="ij")
        sl = slice(k, k + 1)
        batch = camera_batch(v.c2w[sl], v.fx[sl], v.fy[sl], v.cx[sl], v.cy[sl], v.width[sl], v.height[sl], cols[None], rows[None], v.index[sl], self.normalize)
        pixels = v.pixels[int(v.offsets[k]) : int(v.offsets[k + 1])].reshape(1, H, W, -1)
        return {**batch, **_colours(pixels, self.background)}


# --------------------------------------------------------------------------- turntable path
def _quaternions(rotation: Float[Tensor, "N 3 3"]) -> Float[Tensor, "N 4"]:
    """Unit quaternions (w, x, y, z) of rotation matrices, from the largest of the four
    candidate components (numerically safe for every rotation)."""
    m = rotation.double()
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    candidates = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    s = 2 * candidates.clamp_min(1e-12).sqrt()  # [N,4]: 4 * the chosen component, per case
    d21, d02, d10 = m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]
    s01, s02, s12 = m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1]
    cases = torch.stack(
        [
            torch.stack([s[:, 0] / 4, d21 / s[:, 0], d02 / s[:, 0], d10 / s[:, 0]], -1),
            torch.stack([d21 / s[:, 1], s[:, 1] / 4, s01 / s[:, 1], s02 / s[:, 1]], -1),
            torch.stack([d02 / s[:, 2], s01 / s[:, 2], s[:, 2] / 4, s12 / s[:, 2]], -1),
            torch.stack([d10 / s[:, 3], s02 / s[:, 3], s12 / s[:, 3], s[:, 3] / 4], -1),
        ],
        1,
    )  # [N, case, 4]
    q = cases[torch.arange(len(m)), candidates.argmax(-1)]
    return F.normalize(q, dim=-1)


def _rotations(q: Float[Tensor, "N 4"]) -> Float[Tensor, "N 3 3"]:
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def _slerp(q0: Float[Tensor, "N 4"], q1: Float[Tensor, "N 4"], t: Float[Tensor, "N"]) -> Float[Tensor, "N 4"]:
    dot = (q0 * q1).sum(-1)
    q1 = torch.where(dot[:, None] < 0, -q1, q1)  # the shorter of the two arcs
    dot = dot.abs().clamp(max=1.0)
    angle = torch.acos(dot)
    sin = torch.sin(angle)
    near = sin < 1e-6  # nearly equal rotations: linear blend is exact enough
    w0 = torch.where(near, 1 - t, torch.sin((1 - t) * angle) / sin.clamp_min(1e-12))
    w1 = torch.where(near, t, torch.sin(t * angle) / sin.clamp_min(1e-12))
    return F.normalize(w0[:, None] * q0 + w1[:, None] * q1, dim=-1)


def capture_path(c2w: Float[Tensor, "N 4 4"], n_views: int) -> Float[Tensor, "V 4 4"]:
    """``n_views`` poses evenly spaced (by arc length) along the path through the cameras in
    file order: positions lerped, rotations slerped. The path is closed (last camera back to
    the first) when that gap is at most twice the median step between consecutive cameras."""
    positions = c2w[:, :3, 3].double()
    quats = _quaternions(c2w[:, :3, :3])
    steps = (positions[1:] - positions[:-1]).norm(dim=-1)
    closed = len(c2w) > 2 and float((positions[-1] - positions[0]).norm()) <= 2 * float(steps.median())
    if closed:
        positions, quats = torch.cat([positions, positions[:1]]), torch.cat([quats, quats[:1]])
        steps = torch.cat([steps, (positions[-1] - positions[-2]).norm()[None]])
    if len(positions) == 1:
        return c2w[:1].repeat(n_views, 1, 1)
    if float(steps.sum()) <= 1e-9:  # cameras turning on the spot: space by frame instead
        steps = torch.ones_like(steps)
    knots = torch.cat([torch.zeros(1, dtype=steps.dtype), steps.cumsum(0)])
    total = float(knots[-1])
    t = torch.arange(n_views, dtype=knots.dtype) * (total / n_views) if closed else torch.linspace(0, total, n_views, dtype=knots.dtype)
    segment = (torch.searchsorted(knots, t, right=True) - 1).clamp(0, len(steps) - 1)
    frac = ((t - knots[segment]) / steps[segment].clamp_min(1e-12)).clamp(0, 1)
    out = torch.zeros(n_views, 4, 4, dtype=torch.float32)
    out[:, :3, :3] = _rotations(_slerp(quats[segment], quats[segment + 1], frac)).float()
    out[:, :3, 3] = ((1 - frac[:, None]) * positions[segment] + frac[:, None] * positions[segment + 1]).float()
    out[:, 3, 3] = 1.0
    return out


class CapturePathViews(Dataset):
    """The turntable: item i holds views ``[i * batch_size, (i + 1) * batch_size)`` of ``poses``
    with one frame's intrinsics; ``index`` is the view number; no ``rgb``."""

    def __init__(self, poses: Float[Tensor, "V 4 4"], intrinsics: tuple[float, float, float, float], width: int, height: int, batch_size: int = 1, normalize: bool = True) -> None:
        super().__init__()
        self.poses, self.intrinsics = poses, intrinsics
        self.width, self.height, self.batch_size, self.normalize = width, height, batch_size, normalize

    def __len__(self) -> int:
        return math.ceil(len(self.poses) / self.batch_size)

    def __getitem__(self, item: int) -> CameraBatch:
        if not 0 <= item < len(self):
            raise IndexError(f"turntable batch {item} out of range (0..{len(self) - 1})")
        views = torch.arange(item * self.batch_size, min((item + 1) * self.batch_size, len(self.poses)))
        B, H, W = len(views), self.height, self.width
        fx, fy, cx, cy = (torch.full((B,), v, dtype=torch.float32) for v in self.intrinsics)
        rows, cols = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        size = lambda v: torch.full((B,), v, dtype=torch.int64)  # noqa: E731
        return camera_batch(self.poses[views], fx, fy, cx, cy, size(W), size(H), cols.expand(B, H, W), rows.expand(B, H, W), views, self.normalize)


# --------------------------------------------------------------------------- the data module
def split_frames(frames: CaptureFrames, cfg: CaptureDataConfig) -> tuple[list[int], list[int]]:
    """(training, held-out) frame indices by the module docstring's rule."""
    given = frames.splits.get("val") or frames.splits.get("test")
    if given:
        held_out = list(given)
        train = frames.splits.get("train") or [p for p in range(len(frames)) if p not in set(given)]
    else:
        every = cfg.holdout_every
        held_out = [p for p in range(len(frames)) if every and p % every == 0]
        train = [p for p in range(len(frames)) if not (every and p % every == 0)]
    train, held_out = train[:: cfg.train_data_interval], held_out[:: cfg.eval_data_interval]
    if not train:
        raise ConfigError(f"{frames.sources[0]}: no training frames left of {len(frames)} (holdout_every={cfg.holdout_every}, train_data_interval={cfg.train_data_interval}); hold out fewer frames.")
    return train, held_out


@register("multiview-camera-datamodule")
class CaptureDataModule(CameraDataModule):
    """Random rays (or patches) of the training photos; held-out photos for validation; a
    turntable along the capture path for test / predict."""

    Config = CaptureDataConfig

    def __init__(self, cfg: Any = None, seed: int = 0) -> None:
        super().__init__()
        self.cfg: CaptureDataConfig = parse_structured(CaptureDataConfig, cfg, "data")
        _check_config(self.cfg)
        self.seed = int(seed)
        self._frames: Optional[CaptureFrames] = None
        self._normalisation: Optional[SceneNormalisation] = None
        self._pending_state: Optional[dict[str, Any]] = None

    # ------------------------------------------------------------------ capture geometry
    @property
    def frames(self) -> CaptureFrames:
        if self._frames is None:
            self._frames = load_capture(self.cfg.dataroot)
        return self._frames

    @property
    def normalisation(self) -> SceneNormalisation:
        if self._normalisation is None:
            self._normalisation = normalise_scene(self.frames, self.cfg.scene_radius)
        return self._normalisation

    @property
    def scale(self) -> float:
        return self.normalisation.scale

    @property
    def offset(self) -> Float[Tensor, "3"]:
        return self.normalisation.offset

    def to_capture_world(self, points: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
        """Normalised (renderer) coordinates back to the capture's world coordinates."""
        return self.normalisation.to_capture_world(points)

    def check(self) -> None:
        """The transforms parse, the cameras normalise, the split is possible, and every image's
        header reads with the size its transforms give (without decoding the pixels)."""
        frames, cfg = self.frames, self.cfg
        _ = self.normalisation  # cameras that cannot be normalised fail here
        train, held_out = split_frames(frames, cfg)
        for indices, factor in ((train, cfg.train_downsample_resolution), (held_out, cfg.eval_downsample_resolution)):
            for i in indices:
                check_image(frames, i, factor)

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: Optional[str] = None) -> None:
        if not hasattr(self, "train_set"):
            cfg, frames = self.cfg, self.frames
            c2w = self.normalisation.apply_c2w(frames.c2w)
            self.train_indices, self.val_indices = split_frames(frames, cfg)
            self.train_set = build_frame_set(frames, self.train_indices, c2w, cfg.train_downsample_resolution, cfg.undistort)
            self.sampler = CaptureRaySampler(self.train_set, cfg, seed=self.seed)
            self.val_dataset = HeldOutViews(
                build_frame_set(frames, self.val_indices, c2w, cfg.eval_downsample_resolution, cfg.undistort) if self.val_indices else _empty(),
                cfg.background_color, cfg.rays_d_normalize, cfg.eval_supersample,
            )
            f = cfg.eval_downsample_resolution
            self.test_dataset = CapturePathViews(
                capture_path(c2w, cfg.n_test_views),
                (float(frames.fx[0]) / f, float(frames.fy[0]) / f, float(frames.cx[0]) / f, float(frames.cy[0]) / f),
                int(frames.width[0]) // f, int(frames.height[0]) // f, cfg.eval_batch_size, cfg.rays_d_normalize,
            )
            self.original_pixels = self.train_set.pixels.clone()
            self.edit_step = torch.full((len(self.train_indices),), -1, dtype=torch.int64)
            if self._pending_state is not None:
                self.load_state_dict(self._pending_state)
        # every training process its own ray stream, resumed at the trainer's step
        self.sampler.seed = rank_seed(self.seed, self._global_rank())
        self.train_dataset = TrainCameraStream(self.sampler, start_step=self._trainer_step)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ the training images as state
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches take their colours from the current images, at the step they train."""
        if isinstance(batch, dict) and "pixel_index" in batch and hasattr(self, "train_set"):
            pixels = self.train_set.pixels[batch["pixel_index"].cpu()]
            background = self.sampler.background
            batch.update({k: v.to(batch["rays_o"].device) for k, v in _colours(pixels, background).items()})
        return batch

    def _frame_pixels(self, k: int) -> slice:
        return slice(int(self.train_set.offsets[k]), int(self.train_set.offsets[k + 1]))

    def training_frame(self, k: int, downsample: int = 1) -> dict[str, Any]:
        """Training frame ``k`` (its position in the training split) as one image batch: rays through
        the centres of ``downsample`` x ``downsample`` pixel blocks, the frame's current ``rgb`` and its
        ``original_rgb`` (the photo as loaded), both at full resolution."""
        t, d = self.train_set, int(downsample)
        H, W = int(t.height[k]), int(t.width[k])
        rows, cols = torch.meshgrid((torch.arange(H // d) + 0.5) * d, (torch.arange(W // d) + 0.5) * d, indexing="ij")
        sl = slice(k, k + 1)
        batch = camera_batch(t.c2w[sl], t.fx[sl], t.fy[sl], t.cx[sl], t.cy[sl], t.width[sl], t.height[sl], cols[None], rows[None], t.index[sl], self.cfg.rays_d_normalize)
        region = self._frame_pixels(k)
        current, original = (pixels[region].reshape(1, H, W, -1) for pixels in (t.pixels, self.original_pixels))
        background = self.sampler.background
        return {**batch, "rgb": _colours(current, background)["rgb"], "original_rgb": _colours(original, background)["rgb"]}

    def replace_frame(self, k: int, rgb: Float[Tensor, "H W 3"], step: int) -> None:
        """Train on ``rgb`` (in [0, 1]) instead of training frame ``k`` from now on; ``step``
        records when (``edit_step``). A frame with alpha keeps it: only its colours change."""
        t, region = self.train_set, self._frame_pixels(k)
        colours = rgb.detach().float().cpu().clamp(0, 1).reshape(-1, 3)
        if t.has_alpha:  # premultiplied, like the photos: transparent pixels stay background
            colours = colours * (self.original_pixels[region, 3:].float() / 255.0)
        t.pixels[region, :3] = (colours * 255.0).round().to(torch.uint8)
        self.edit_step[k] = int(step)

    def state_dict(self) -> dict[str, Any]:
        """The replaced frames (with when each was replaced); empty while none is."""
        if not hasattr(self, "edit_step") or not bool((self.edit_step >= 0).any()):
            return {}
        frames = (self.edit_step >= 0).nonzero().flatten()
        return {
            "frame_index": self.train_set.index.clone(),  # which capture frames the positions mean
            "edit_step": self.edit_step.clone(),
            "pixels": torch.cat([self.train_set.pixels[self._frame_pixels(int(k))] for k in frames]),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if not hasattr(self, "train_set"):
            self._pending_state = state  # applied by setup()
            return
        self._pending_state = None
        if not torch.equal(state["frame_index"], self.train_set.index):
            raise ConfigError(
                "The checkpoint's edited training frames belong to another split of the capture "
                "(data.dataroot, holdout_every or train_data_interval changed); resume with the data settings it was trained with."
            )
        self.train_set.pixels.copy_(self.original_pixels)
        self.edit_step.copy_(state["edit_step"])
        start = 0
        for k in (self.edit_step >= 0).nonzero().flatten().tolist():
            region = self._frame_pixels(k)
            size = region.stop - region.start
            self.train_set.pixels[region] = state["pixels"][start : start + size]
            start += size


def _empty() -> FrameSet:
    """No held-out frames (holdout_every: 0): an empty validation set."""
    none = torch.zeros(0, dtype=torch.int64)
    return FrameSet(none, torch.zeros(0, 4, 4), *(torch.zeros(0) for _ in range(4)), none, none, torch.zeros(0, 3, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64))
