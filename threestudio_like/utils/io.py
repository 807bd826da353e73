"""Atomic file writes and image / video output."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import numpy as np

TEMPORARY_PREFIX = ".tmp-"  # partial files of atomic writes; stale ones are removed by trials.remove_stale_temporaries


# torch's zip writer reports a short write (a full disk) as a RuntimeError with one of these
_TORCH_SHORT_WRITE = ("unexpected pos", "file write failed", "PytorchStreamWriter failed writing")


def is_disk_full(error: BaseException) -> bool:
    """A full disk or quota, as the OS (ENOSPC, EDQUOT) or torch's checkpoint writer reports it."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, RuntimeError) and any(mark in str(error) for mark in _TORCH_SHORT_WRITE)


def disk_full_message(path: str, needed_bytes: Optional[int] = None) -> str:
    """``no space left writing <path> (needs about N MB, M MB free)``: the start of every full-disk error."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    free = shutil.disk_usage(folder).free
    needs = f"needs about {_megabytes(needed_bytes)}, " if needed_bytes else ""
    return f"no space left writing {path} ({needs}{_megabytes(free)} free)"


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def tensor_bytes(tree: Any) -> int:
    """Bytes of the tensors in a nested dict / list (what a checkpoint of it needs on disk, roughly)."""
    if hasattr(tree, "element_size") and hasattr(tree, "nelement"):
        return int(tree.element_size() * tree.nelement())
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(v) for v in tree)
    return 0


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
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; the file gets the mode open() would give it
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
