"""Stage hand-over: find a previous stage's checkpoint and rebuild its parts from it.

Coarse-to-fine recipes (Magic3D: NeRF, then DMTet mesh) start the next stage with
``system.geometry_convert_from=<trial dir | checkpoint>``. A path may name the newest
trial with ``LAST`` in place of the timestamp, as threestudio allows, e.g.
``outputs/magic3d-coarse-cpu/a_red_cube@LAST``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import OmegaConf

LAST = "LAST"


def find_last_path(path: str) -> str:
    """Replace ``LAST`` by the newest trial folder whose name matches around it.

    Trial folders end in ``@YYYYMMDD-HHMMSS``, so the newest sorts last. Only trials that
    contain the rest of the path (e.g. ``ckpts/last.ckpt``) are candidates, so a run that
    failed before its first checkpoint is skipped.
    """
    if LAST not in path:
        return path
    path = path.replace(" ", "_")  # trial names replace the prompt's spaces
    head, rest = path.split(LAST, 1)
    folder, name_prefix = os.path.split(head)
    folder = folder or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: there is no folder {folder!r} to look for the newest trial in.")
    candidates = sorted(
        entry
        for entry in os.listdir(folder)
        if entry.startswith(name_prefix) and os.path.exists(os.path.join(folder, entry) + rest)
    )
    if not candidates:
        wanted = os.path.join(folder, name_prefix + "*" + rest)
        raise FileNotFoundError(f"{path}: no trial matches {wanted!r}. Has the previous stage run and saved a checkpoint?")
    return os.path.join(folder, candidates[-1]) + rest


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file from a checkpoint path or a trial folder (its ``ckpts/last.ckpt``)."""
    path = find_last_path(path)
    if os.path.isdir(path):
        path = os.path.join(path, "ckpts", "last.ckpt")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such checkpoint. Point at the previous stage's trial folder or its ckpts/last.ckpt."
        )
    return path


@dataclass
class StageCheckpoint:
    """A finished stage: its checkpoint file, system config and parameters."""

    path: str
    system_config: Any  # the ``system`` section of the stage's configs/parsed.yaml
    state_dict: dict[str, torch.Tensor]

    @classmethod
    def load(cls, path: str) -> "StageCheckpoint":
        path = resolve_checkpoint(path)
        trial = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        config_path = os.path.join(trial, "configs", "parsed.yaml")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(
                f"{path}: the stage's config {config_path} is missing, so its parts cannot be rebuilt. "
                "Keep the checkpoint inside its trial folder (<trial>/ckpts/*.ckpt)."
            )
        system_config = OmegaConf.to_container(OmegaConf.load(config_path).system, resolve=True)
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        return cls(path, system_config, state)

    def part_state(self, name: str) -> dict[str, torch.Tensor]:
        prefix = name + "."
        return {k[len(prefix) :]: v for k, v in self.state_dict.items() if k.startswith(prefix)}

    def build_part(self, name: str) -> Any:
        """The stage's ``geometry`` / ``material`` / ``background`` with its trained state."""
        from threestudio_like.registry import find

        part = find(self.system_config[f"{name}_type"])(self.system_config.get(name) or {})
        part.load_state_dict(self.part_state(name))
        return part
