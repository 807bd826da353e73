"""``mesh-exporter``: geometry -> isosurface -> vertex colours -> OBJ(+MTL) / GLB files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from threestudio_like.config import ConfigError
from threestudio_like.export.isosurface import extract_isosurface
from threestudio_like.export.writers import write_glb, write_obj
from threestudio_like.registry import register
from threestudio_like.utils.base import BaseObject

_FORMATS = {"obj": "obj", "obj-mtl": "obj", "glb": "glb"}


@register("mesh-exporter")
class MeshExporter(BaseObject):
    @dataclass
    class Config:
        fmt: Union[str, list[str]] = field(default_factory=lambda: ["obj", "glb"])  # "obj-mtl" | "obj" | "glb"
        save_name: str = "model"
        # None: take the geometry's isosurface_threshold / isosurface_resolution
        isosurface_threshold: Optional[Union[float, str]] = None
        isosurface_resolution: Optional[int] = None

    def configure(self, **kwargs: Any) -> None:
        formats = [self.cfg.fmt] if isinstance(self.cfg.fmt, str) else list(self.cfg.fmt)
        for f in formats:
            if f not in _FORMATS:
                raise ConfigError(f"system.exporter.fmt: unknown format '{f}'; use any of {sorted(_FORMATS)}.")
        self.formats = sorted({_FORMATS[f] for f in formats})

    @torch.no_grad()
    def __call__(self, geometry: Any, material: Any, folder: str) -> list[str]:
        threshold = self.cfg.isosurface_threshold
        if threshold is None:
            threshold = getattr(geometry.cfg, "isosurface_threshold", "auto")
        resolution = self.cfg.isosurface_resolution or getattr(geometry.cfg, "isosurface_resolution", 128)
        mesh = extract_isosurface(geometry.forward_density, geometry.bbox, resolution, threshold)
        features = geometry.export(mesh.v_pos.to(geometry.bbox.device))["features"]
        mesh.v_rgb = material.export(features)["albedo"].clamp(0, 1).float().cpu()
        os.makedirs(folder, exist_ok=True)
        paths = []
        for fmt in self.formats:
            path = os.path.join(folder, f"{self.cfg.save_name}.{fmt}")
            (write_obj if fmt == "obj" else write_glb)(path, mesh)
            paths.append(path)
        return paths
