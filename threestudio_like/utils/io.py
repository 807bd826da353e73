"""Atomic file writes and image / video output."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

TEMPORARY_PREFIX = ".tmp-"  # partial files of atomic writes; stale ones are removed by trials.remove_stale_temporaries


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds.

    A crash or Ctrl-C mid-write therefore never leaves a truncated file behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMPORARY_PREFIX, suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] (H, W, C) -> uint8."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(path: str, image: np.ndarray) -> None:
    import imageio.v3 as iio

    if image.dtype != np.uint8:
        image = to_uint8(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=os.path.splitext(path)[1])


def save_video(path: str, frames: Sequence[np.ndarray], fps: int = 30) -> str:
    """Write frames as MP4 (ffmpeg from imageio-ffmpeg); falls back to GIF. Returns the path written."""
    import imageio.v2 as imageio

    frames = [f if f.dtype == np.uint8 else to_uint8(f) for f in frames]
    # H.264 wants even sizes
    frames = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]
    try:
        with atomic_path(path) as tmp:
            writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=1)
            for frame in frames:
                writer.append_data(frame)
            writer.close()
        return path
    except Exception:  # ffmpeg missing or broken: a GIF is still a turntable
        gif = os.path.splitext(path)[0] + ".gif"
        with atomic_path(gif) as tmp:
            imageio.mimsave(tmp, frames, format="GIF", duration=1.0 / fps, loop=0)
        return gif
