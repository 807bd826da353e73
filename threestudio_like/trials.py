"""Trial folders and checkpoints, owned in one place.

A run writes ``outputs/<name>/<tag>@<timestamp>/`` (its *trial*): ``configs/parsed.yaml``,
``ckpts/*.ckpt``, ``save/`` and the metrics logs. This module creates trial folders (never
shared between two runs), finds checkpoints (``LAST`` picks the newest trial), loads them
with checks that fail with one clear line, and writes them atomically. The CLI, the stage
hand-over (Magic3D's ``geometry_convert_from``) and the evaluators all go through it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional

import torch
from omegaconf import OmegaConf

from threestudio_like.config import ConfigError, config_yaml
from threestudio_like.registry import find
from threestudio_like.utils.io import (
    TEMPORARY_PREFIX,
    atomic_path,
    atomic_write_text,
    disk_full_message,
    is_disk_full,
    tensor_bytes,
)

LAST = "LAST"
CKPT_DIR = "ckpts"
LAST_CKPT = "last.ckpt"
PARSED_CONFIG = os.path.join("configs", "parsed.yaml")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, unsafe, from another recipe, or not writable."""


# --------------------------------------------------------------------------- trial folders
# A trial folder is named <tag>@<timestamp>[-n]; file systems allow 255 bytes per name (eCryptfs
# about 143), so a tag longer than this is cut and given a hash of the whole, to stay unique.
MAX_TAG_BYTES = 100
TAG_HASH_LENGTH = 8


def trial_tag(tag: str) -> str:
    """The trial folder's form of a tag: characters other than letters, digits and ``-@.,+``
    become ``_``, and a tag over ``MAX_TAG_BYTES`` (a long prompt) is cut to fit, ending in
    ``_<hash>`` of the whole tag so two prompts that differ only at the end get two folders.
    The whole prompt stays in the trial's ``configs/parsed.yaml``."""
    tag = re.sub(r"[^\w\-@.,+]", "_", tag)
    raw = tag.encode("utf-8")
    if len(raw) <= MAX_TAG_BYTES:
        return tag
    digest = hashlib.sha1(raw).hexdigest()[:TAG_HASH_LENGTH]
    head = raw[: MAX_TAG_BYTES - TAG_HASH_LENGTH - 1].decode("utf-8", errors="ignore")  # never half a character
    return f"{head}_{digest}"


def check_writable(folder: str, what: str = "output folder", fix: str = "choose another with exp_root_dir=<folder>") -> None:
    """Fail with one line unless files can be created in ``folder`` (or, when it does not exist
    yet, in its nearest existing parent, where it would be made). Leaves nothing behind."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"cannot write to the {what} {folder}: {existing} is a file, not a folder; {fix}.")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=TEMPORARY_PREFIX)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        reason = "read-only" if error.errno == errno.EROFS else (error.strerror or type(error).__name__).lower()
        raise ConfigError(f"cannot write to the {what} {folder} ({existing}: {reason}); {fix}.") from None


def create_trial_dir(path: str) -> str:
    """Create ``path`` exclusively and return it; when it is taken (another run with the same
    name and tag, started in the same second), ``path-1``, ``path-2``, ... instead."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    candidate, n = path, 0
    while True:
        try:
            os.mkdir(candidate)  # atomic: exactly one process succeeds for each name
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}-{n}"


def trial_dir_of_checkpoint(ckpt: str) -> Optional[str]:
    """``<trial>/ckpts/x.ckpt`` -> ``<trial>``; None for a checkpoint outside a trial folder."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    return os.path.dirname(folder) if os.path.basename(folder) == CKPT_DIR else None


def remove_stale_temporaries(trial_dir: str) -> list[str]:
    """Delete the partial ``.tmp-*`` files an interrupted write (kill -9, power loss) left in a
    trial folder; an atomic write never leaves one behind otherwise. Returns what was removed."""
    removed = []
    for folder, _, files in os.walk(trial_dir):
        for name in files:
            if name.startswith(TEMPORARY_PREFIX):
                path = os.path.join(folder, name)
                os.remove(path)
                removed.append(path)
    return removed


# What says how a run is launched, not what it computes: a resume that changes only these has
# the config it started with.
RUN_CONTROL_KEYS = ("resume", "timestamp", "exp_root_dir", "exp_dir", "trial_name", "trial_dir", "n_gpus")


def write_trial_config(trial_dir: str, exp: Any) -> Optional[str]:
    """Write ``configs/parsed.yaml``. A config already there that differs in more than the
    run-control keys (a resume with other settings) is kept as ``parsed-<time>.yaml``; returns
    that path, or None (an equal one is left as it is)."""
    path = os.path.join(trial_dir, PARSED_CONFIG)
    text, kept = config_yaml(exp), None
    if os.path.isfile(path):
        if _settings(OmegaConf.load(path)) == _settings(OmegaConf.create(text)):
            return None
        kept = os.path.join(os.path.dirname(path), f"parsed-{datetime.now():%Y%m%d-%H%M%S}.yaml")
        os.replace(path, kept)
    atomic_write_text(path, text)
    return kept


def _settings(config: Any) -> dict[str, Any]:
    return {k: v for k, v in OmegaConf.to_container(config).items() if k not in RUN_CONTROL_KEYS}


# --------------------------------------------------------------------------- finding checkpoints
def find_last_path(path: str) -> str:
    """Replace ``LAST`` by the newest trial folder whose name matches around it.

    Trial folders end in ``@YYYYMMDD-HHMMSS`` (and ``-<n>`` when a name was taken), so the
    newest sorts last. Only trials that contain the rest of the path (e.g.
    ``ckpts/last.ckpt``) are candidates, so a run that failed before its first checkpoint is skipped.
    """
    if LAST not in path:
        return path
    path = path.replace(" ", "_")  # trial names replace the prompt's spaces
    head, rest = path.split(LAST, 1)
    folder, name_prefix = os.path.split(head)
    if name_prefix.endswith("@"):  # <tag>@LAST: the tag as trial folders spell it (a long prompt's is shortened)
        name_prefix = trial_tag(name_prefix[:-1]) + "@"
    folder = folder or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: there is no folder {folder!r} to look for the newest trial in.")
    candidates = sorted(
        (entry for entry in os.listdir(folder)
         if entry.startswith(name_prefix) and os.path.exists(os.path.join(folder, entry) + rest)),
        key=_trial_order,
    )
    if not candidates:
        wanted = os.path.join(folder, name_prefix + "*" + rest)
        raise FileNotFoundError(f"{path}: no trial matches {wanted!r}. Has the previous stage run and saved a checkpoint?")
    return os.path.join(folder, candidates[-1]) + rest


def _trial_order(name: str) -> tuple[str, int]:
    """``tag@time`` < ``tag@time-1`` < ``tag@time-2`` < ``tag@time-10``."""
    stem, _, suffix = name.rpartition("-")
    if stem and suffix.isdigit() and "@" in stem and len(suffix) < 4:
        return stem, int(suffix)
    return name, 0


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file from a checkpoint path or a trial folder (its ``ckpts/last.ckpt``)."""
    if LAST in path and not path.endswith(".ckpt"):  # the newest trial that has a checkpoint
        path = os.path.join(path, CKPT_DIR, LAST_CKPT)
    path = find_last_path(path)
    if os.path.isdir(path):
        path = os.path.join(path, CKPT_DIR, LAST_CKPT)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such checkpoint. Point at a trial folder or one of its ckpts/*.ckpt files."
        )
    return path


# --------------------------------------------------------------------------- loading
def safe_torch_load(path: str, damaged: Callable[[str], str], unsafe: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code.
    Whatever cannot be read is one :class:`CheckpointError` line, never torch's advice to retry
    with ``weights_only=False``: a file holding other objects (a pickled object, a checkpoint
    with custom classes) is refused as one that could run code, followed by ``unsafe`` (what to
    use instead); other bytes (truncated, a text file, random data) give ``damaged(why)``. Shared
    by the training paths and the MVDream converter, which phrase ``damaged`` / ``unsafe`` for their users."""
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols is noise before our own message
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as error:  # unpickling bytes that are not a checkpoint can raise almost anything
        failure = error
    head = _file_head(path)
    refused = isinstance(failure, pickle.UnpicklingError) and "unsupported global" in str(failure).lower()
    if refused or (head[:1] == b"\x80" and isinstance(failure, pickle.UnpicklingError)):
        what = "holds objects other than tensors and plain values" if refused else "is a Python pickle, not a PyTorch checkpoint"
        raise CheckpointError(f"{path} {what}; such a file can run code when loaded, so it was not loaded. {unsafe}") from None
    if not head:
        why = "the file is empty"
    elif head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        why = f"{type(failure).__name__} while reading it"
    elif _looks_like_text(head):
        why = "it is a text file, not PyTorch's format"
    else:
        why = "unreadable data, not PyTorch's format"
    raise CheckpointError(damaged(why)) from None


def _file_head(path: str, size: int = 512) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\n\r\t" for c in text)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint safely (tensors and plain containers only: ``weights_only=True``)."""
    checkpoint = safe_torch_load(
        path,
        damaged=lambda why: (
            f"{path}: checkpoint is truncated or corrupt ({why}). "
            f"Resume from another checkpoint in {os.path.dirname(path) or '.'}."
        ),
        unsafe="Use a checkpoint written by this program.",
    )
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a checkpoint of this program (it has no state_dict).")
    return checkpoint


def check_state_matches(
    module: torch.nn.Module, state_dict: dict[str, Any], path: str, ignore: tuple[str, ...] = ()
) -> None:
    """Fail, naming the first differences, unless ``state_dict`` fits ``module`` exactly (entries
    under the module prefixes ``ignore`` left out on both sides)."""

    def kept(key: str) -> bool:
        return not any(key.startswith(prefix + ".") for prefix in ignore)

    expected = {k: v for k, v in module.state_dict().items() if kept(k)}
    state_dict = {k: v for k, v in state_dict.items() if kept(k)}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{label} {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape of", wrong_shape))
        if items
    ]
    if problems:
        raise CheckpointError(
            f"{path} does not match this config: {'; '.join(problems)}. Was it written by another recipe "
            "or with other geometry settings? Use that run's config (its configs/parsed.yaml)."
        )


def load_system_weights(system: Any, path: str, checkpoint: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Checked load of a checkpoint's weights into ``system`` (then its ``on_load_checkpoint``)."""
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(path)
    system.on_load_checkpoint(checkpoint)  # first, as Lightning does: it may drop parts not built
    check_state_matches(system, checkpoint["state_dict"], path)
    system.load_state_dict(checkpoint["state_dict"])
    return checkpoint


@dataclass
class StageCheckpoint:
    """A finished stage, for the next one to start from: its checkpoint, configs and parameters."""

    path: str
    system_config: dict  # the ``system`` section of the stage's configs/parsed.yaml
    state_dict: dict[str, torch.Tensor]
    data_config: dict  # its ``data`` section (cameras)

    @classmethod
    def load(cls, path: str) -> "StageCheckpoint":
        path = resolve_checkpoint(path)
        trial = trial_dir_of_checkpoint(path) or os.path.dirname(path)
        config_path = os.path.join(trial, PARSED_CONFIG)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(
                f"{path}: the stage's config {config_path} is missing, so its parts cannot be rebuilt. "
                "Keep the checkpoint inside its trial folder (<trial>/ckpts/*.ckpt)."
            )
        config = OmegaConf.load(config_path)
        system_config = OmegaConf.to_container(config.system, resolve=True)
        data_config = OmegaConf.to_container(config.data, resolve=True) if "data" in config else {}
        return cls(path, system_config, load_checkpoint(path)["state_dict"], data_config)

    @property
    def n_particles(self) -> int:
        return int(self.system_config.get("n_particles", 1))

    def part_state(self, name: str, particle: int = 0) -> dict[str, torch.Tensor]:
        """The saved state of ``name`` (of particle ``particle``: k > 0 are under ``particles.<k>.``)."""
        prefix = (f"particles.{particle}." if particle else "") + name + "."
        return {k[len(prefix) :]: v for k, v in self.state_dict.items() if k.startswith(prefix)}

    def build_part(self, name: str, particle: int = 0, **parts: Any) -> Any:
        """The stage's ``geometry`` / ``material`` / ``background`` / ``renderer`` (given the
        other three as keyword arguments) of particle ``particle``, with its trained state, in eval mode."""
        part = find(self.system_config[f"{name}_type"])(self.system_config.get(name) or {}, **parts)
        state = self.part_state(name, particle)
        check_state_matches(part, state, f"{self.path} ({name}{f' of particle {particle}' if particle else ''})")
        part.load_state_dict(state)
        return part.eval()


# --------------------------------------------------------------------------- saving
def save_checkpoint(checkpoint: dict[str, Any], path: str) -> None:
    """Write atomically: the previous file at ``path`` stays until the new one is complete,
    and a full disk is one clear error, not a traceback and a torn file."""
    try:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        return
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error):
            raise
    # out of the except block: its traceback, which holds torch's open writer, is gone, so the
    # partial file's space is free again when the message measures what is left
    raise CheckpointError(
        f"{disk_full_message(path, tensor_bytes(checkpoint))}; the previous checkpoint is kept. "
        f"Free disk space and resume from the last checkpoint in {os.path.dirname(path)}."
    )
