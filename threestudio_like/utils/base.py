"""Base classes shared by every configurable part."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from threestudio_like.config import parse_structured


class BaseModule(nn.Module):
    """An ``nn.Module`` built from a typed ``Config``.

    Subclasses declare ``@dataclass class Config(BaseModule.Config)`` and build their
    layers in ``configure``; ``update_step`` is called once per training step so any
    part can anneal (progressive encodings, schedules, occupancy grids).
    """

    @dataclass
    class Config:
        pass

    cfg: Any

    def __init__(self, cfg: Any = None, **kwargs: Any) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.configure(**kwargs)

    def configure(self, **kwargs: Any) -> None:
        """Build submodules from ``self.cfg``."""

    def update_step(self, global_step: int) -> None:
        """Called at the start of every training step (and after loading a checkpoint)."""


class BaseObject:
    """A configurable part that holds no trainable parameters (e.g. a prompt processor)."""

    @dataclass
    class Config:
        pass

    cfg: Any

    def __init__(self, cfg: Any = None, **kwargs: Any) -> None:
        self.cfg = parse_structured(self.Config, cfg)
        self.configure(**kwargs)

    def configure(self, **kwargs: Any) -> None:
        pass

    def update_step(self, global_step: int) -> None:
        pass
