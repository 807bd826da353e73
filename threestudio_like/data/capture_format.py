"""Read a capture folder (posed photos) into ``CaptureFrames``: paths, poses, intrinsics, splits.

Two layouts, both with camera-to-world matrices in OpenGL axes (x right, y up, looking down -z):

- nerfstudio / instant-ngp: one ``transforms.json``; intrinsics (``fl_x fl_y cx cy w h``, or
  ``camera_angle_x`` [``camera_angle_y``], distortion ``k1 k2 p1 p2 [k3]``, ``camera_model``)
  at the top level and / or per frame, per-frame values overriding top-level ones;
- Blender / NeRF-synthetic: ``transforms_{train,val,test}.json`` with ``camera_angle_x`` and
  extension-less ``file_path`` s such as ``./train/r_0``; the files give the splits.

When a folder has both, the split files win (they say which frames are held out). Frames whose
image is missing are skipped with one warning; everything else wrong is a ``ConfigError``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from threestudio_like.config import ConfigError
from threestudio_like.utils.typing import Float, Int, Tensor

SINGLE_FILE = "transforms.json"
SPLIT_FILES = {"train": "transforms_train.json", "val": "transforms_val.json", "test": "transforms_test.json"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".JPG", ".PNG", ".JPEG")
SUPPORTED_MODELS = ("OPENCV", "PINHOLE")
ROTATION_TOLERANCE = 1e-3  # max |R^T R - I|: poses saved as text lose a few digits, not more

_FOCAL_KEYS = ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y")
_OTHER_KEYS = ("cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2", "camera_model")


@dataclass
class CaptureFrames:
    """N posed photos. Intrinsics are in pixels of the full-resolution images."""

    root: Path
    sources: list[Path]  # the transforms file(s) read
    image_paths: list[Path]  # [N]
    names: list[str]  # [N] each frame's file_path as written, for messages
    c2w: Float[Tensor, "N 4 4"]
    fx: Float[Tensor, "N"]
    fy: Float[Tensor, "N"]
    cx: Float[Tensor, "N"]
    cy: Float[Tensor, "N"]
    width: Int[Tensor, "N"]
    height: Int[Tensor, "N"]
    distortion: Optional[Float[Tensor, "N 5"]]  # OpenCV order k1 k2 p1 p2 k3; None: all zero
    aabb_scale: Optional[float] = None
    splits: dict[str, list[int]] = field(default_factory=dict)  # "train" / "val" / "test" -> frame indices; {} = none given

    def __len__(self) -> int:
        return len(self.image_paths)


def load_capture(dataroot: str | Path) -> CaptureFrames:
    """Parse the capture at ``dataroot`` (a folder, or one transforms ``.json`` file)."""
    root, files = find_transforms(dataroot)
    frames: list[dict[str, Any]] = []
    splits: dict[str, list[int]] = {}
    aabb_scale: Optional[float] = None
    n_listed = 0
    for split, path in files.items():
        meta = _read_json(path)
        listed = meta.get("frames")
        if not isinstance(listed, list):
            raise ConfigError(f"{path}: expected a 'frames' list of {{file_path, transform_matrix}} entries.")
        n_listed += len(listed)
        if aabb_scale is None and "aabb_scale" in meta:
            aabb_scale = _number(meta["aabb_scale"], path, "aabb_scale")
        start = len(frames)
        for i, entry in enumerate(listed):
            frame = _parse_frame(root, path, meta, entry, i)
            if frame is not None:
                frames.append(frame)
        if split:
            splits[split] = list(range(start, len(frames)))

    sources = list(files.values())
    where = ", ".join(str(p) for p in sources)
    if len(frames) < n_listed:
        warnings.warn(f"{n_listed - len(frames)} of {n_listed} frames in {where} have no image file; skipping them", stacklevel=2)
    if not frames:
        raise ConfigError(
            f"{where}: none of the {n_listed} frames has an image file (tried file_path as written and with "
            f"{', '.join(IMAGE_EXTENSIONS)}); check that the images sit beside the transforms file."
        )

    def column(key: str, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.tensor([f[key] for f in frames], dtype=dtype)

    distortion = torch.tensor([f["distortion"] for f in frames], dtype=torch.float32)
    return CaptureFrames(
        root=root,
        sources=sources,
        image_paths=[f["image"] for f in frames],
        names=[f["name"] for f in frames],
        c2w=torch.tensor(np.stack([f["c2w"] for f in frames]), dtype=torch.float32),
        fx=column("fx"),
        fy=column("fy"),
        cx=column("cx"),
        cy=column("cy"),
        width=column("w", torch.int64),
        height=column("h", torch.int64),
        distortion=distortion if bool(distortion.abs().sum() > 0) else None,
        aabb_scale=aabb_scale,
        splits=splits,
    )


def find_transforms(dataroot: str | Path) -> tuple[Path, dict[str, Path]]:
    """(folder, {split or "": transforms file}) for a capture folder or a transforms file."""
    path = Path(dataroot).expanduser()
    if path.is_file():
        return path.parent.resolve(), {"": path.resolve()}
    if not path.is_dir():
        raise ConfigError(f"data.dataroot: capture folder '{dataroot}' does not exist; point it at a folder with {SINGLE_FILE} or {SPLIT_FILES['train']}.")
    path = path.resolve()
    if (path / SPLIT_FILES["train"]).is_file():
        return path, {split: path / name for split, name in SPLIT_FILES.items() if (path / name).is_file()}
    if (path / SINGLE_FILE).is_file():
        return path, {"": path / SINGLE_FILE}
    looked = ", ".join([SINGLE_FILE, *SPLIT_FILES.values()])
    raise ConfigError(f"data.dataroot: no transforms file in {path} (looked for {looked}); is this a nerfstudio / instant-ngp / Blender capture?")


def read_image(path: Path) -> Float[Tensor, "H W C"]:
    """An image as float in [0, 1]: RGB, or RGBA when it has transparency (C = 3 or 4)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            array = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        raise ConfigError(f"{path}: cannot read the image ({error}); replace or delete the file.") from error
    return torch.from_numpy(array.copy()).float() / 255.0


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, SyntaxError) as error:
        raise ConfigError(f"{path}: cannot read the image ({error}); replace or delete the file.") from error


# --------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: invalid JSON ({error}); fix or regenerate the transforms file.") from error
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: expected a JSON object with a 'frames' list, got {type(meta).__name__}.")
    return meta


def _number(value: Any, path: Path, key: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ConfigError(f"{path}: '{key}' must be a finite number, got {value!r}.")
    return number


def _resolve_image(root: Path, file_path: str) -> Optional[Path]:
    path = root / file_path
    if path.is_file():
        return path
    for ext in IMAGE_EXTENSIONS:
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return candidate
    return None


def _parse_frame(root: Path, path: Path, meta: dict[str, Any], entry: Any, i: int) -> Optional[dict[str, Any]]:
    """One frame's image, pose and intrinsics; None when its image is missing."""
    if not isinstance(entry, dict) or "file_path" not in entry or "transform_matrix" not in entry:
        raise ConfigError(f"{path}: frame {i} needs 'file_path' and 'transform_matrix'.")
    name = str(entry["file_path"])
    image = _resolve_image(path.parent, name)
    if image is None:
        return None
    where = f"{path} (frame '{name}')"
    # per-frame focal keys replace the top-level ones as a group: a frame's camera_angle_x
    # must not lose to a top-level fl_x
    focal_source = entry if any(k in entry for k in _FOCAL_KEYS) else meta
    intr = {k: focal_source[k] for k in _FOCAL_KEYS if k in focal_source}
    intr.update({k: meta[k] for k in _OTHER_KEYS if k in meta})
    intr.update({k: entry[k] for k in _OTHER_KEYS if k in entry})
    num = {k: _number(v, path, k) for k, v in intr.items() if k != "camera_model"}

    if "w" in num and "h" in num:
        w, h = int(round(num["w"])), int(round(num["h"]))
    else:
        w, h = image_size(image)
    if w <= 0 or h <= 0:
        raise ConfigError(f"{where}: image size w={w}, h={h} must be positive.")
    if "fl_x" in num:
        fx = num["fl_x"]
    elif "camera_angle_x" in num:
        fx = 0.5 * w / math.tan(0.5 * num["camera_angle_x"])
    else:
        raise ConfigError(f"{where}: no focal length; give 'fl_x' (pixels) or 'camera_angle_x' (radians).")
    if "fl_y" in num:
        fy = num["fl_y"]
    elif "camera_angle_y" in num and "fl_x" not in num:
        fy = 0.5 * h / math.tan(0.5 * num["camera_angle_y"])
    else:
        fy = fx  # square pixels
    if fx <= 0 or fy <= 0:
        raise ConfigError(f"{where}: focal lengths must be positive, got fl_x={fx}, fl_y={fy}.")

    model = str(intr.get("camera_model", "OPENCV")).upper()
    if model not in SUPPORTED_MODELS:
        raise ConfigError(f"{where}: camera_model {model} is not supported; only {' / '.join(SUPPORTED_MODELS)} are (undistort the images first, e.g. with COLMAP's image_undistorter).")
    if model == "OPENCV" and num.get("k4", 0.0) != 0.0:
        raise ConfigError(f"{where}: k4 belongs to the fisheye / rational models; only OPENCV's k1 k2 p1 p2 k3 are supported.")
    distortion = [num.get(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3")] if model == "OPENCV" else [0.0] * 5

    return {
        "image": image,
        "name": name,
        "c2w": _pose(entry["transform_matrix"], where),
        "fx": fx,
        "fy": fy,
        "cx": num.get("cx", w / 2.0),
        "cy": num.get("cy", h / 2.0),
        "w": w,
        "h": h,
        "distortion": distortion,
    }


def _pose(value: Any, where: str) -> np.ndarray:
    """A validated 4 x 4 camera-to-world matrix (rotation + translation)."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: transform_matrix must be a 4x4 (or 3x4) list of numbers.") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise ConfigError(f"{where}: transform_matrix must be 4x4 (or 3x4), got shape {m.shape}.")
    if not np.isfinite(m).all():
        raise ConfigError(f"{where}: transform_matrix has non-finite entries.")
    if np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6:
        raise ConfigError(f"{where}: transform_matrix's last row must be [0, 0, 0, 1], got {m[3].tolist()}.")
    rotation = m[:3, :3]
    error = np.abs(rotation.T @ rotation - np.eye(3)).max()
    if error > ROTATION_TOLERANCE or np.linalg.det(rotation) < 0:
        raise ConfigError(
            f"{where}: transform_matrix's rotation is not orthonormal (max |R^T R - I| = {error:.3g}, det = "
            f"{np.linalg.det(rotation):.3g}); expected a camera-to-world rotation + translation without scale."
        )
    return m
