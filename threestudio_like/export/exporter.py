"""``mesh-exporter``: geometry -> surface mesh -> appearance (baked texture or vertex colours)
-> OBJ (+MTL, texture image) / GLB files.

The surface is ``geometry.isosurface(threshold, resolution)``, the mesh the renderers and the
stage hand-over take too; the exporter only chooses its level and resolution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Optional, Union

import torch

from threestudio_like.config import ConfigError, Range
from threestudio_like.export.decimate import decimate
from threestudio_like.export.texture import textured_mesh
from threestudio_like.export.writers import write_glb, write_obj
from threestudio_like.mesh.isosurface import LEVEL_NAMES
from threestudio_like.mesh.rasterize import CONTEXT_TYPES, make_rasterizer
from threestudio_like.mesh.types import Mesh
from threestudio_like.registry import register
from threestudio_like.representations.base import BaseGeometry
from threestudio_like.utils.base import BaseObject
from threestudio_like.utils.typing import Float, Tensor


def surface_albedo(geometry: Any, material: Any) -> Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N 3"]]:
    """The learned base colour in [0, 1] at surface points: what textures bake."""

    def albedo(points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        return material.export(geometry.export(points)["features"])["albedo"].clamp(0, 1).float()

    return albedo


_FORMATS = {"obj": "obj", "obj-mtl": "obj", "glb": "glb"}
_TEXTURE_FORMATS = ("png", "jpg")


@register("mesh-exporter")
class MeshExporter(BaseObject):
    @dataclass
    class Config:
        fmt: Union[str, list[str]] = field(default_factory=lambda: ["obj", "glb"])  # "obj-mtl" | "obj" | "glb"
        save_name: str = "model"
        save_texture: bool = True  # bake a UV texture (xatlas unwrap); false: per-vertex colours
        save_uv: bool = True  # threestudio's switch; a texture needs UVs
        texture_size: Annotated[int, Range(16, why="pixels per side of the baked texture")] = 1024
        texture_format: str = "png"  # png | jpg (the OBJ's map_Kd; the GLB always embeds PNG)
        xatlas_chart_options: dict = field(default_factory=dict)
        xatlas_pack_options: dict = field(default_factory=dict)
        context_type: str = "cuda"  # nvdiffrast context for baking on CUDA: cuda | gl (falls back to cuda, then torch)
        backend: str = "auto"  # rasteriser for baking: auto | torch | nvdiffrast
        # the level / grid geometry.isosurface meshes a field at; None: the geometry's own
        # (isosurface_threshold / isosurface_resolution); "opacity": the level whose solid looks
        # most like the volume renders (mesh.isosurface.opacity_level); no effect on DMTet
        isosurface_threshold: Optional[Union[float, str]] = None
        isosurface_resolution: Optional[Annotated[int, Range(2, why="samples per axis of the marching-cubes grid")]] = None
        # decimate larger surfaces to about this many faces before colouring / unwrapping
        # (quadric edge collapse); None keeps every face
        max_faces: Optional[int] = None

    def configure(self, **kwargs: Any) -> None:
        formats = [self.cfg.fmt] if isinstance(self.cfg.fmt, str) else list(self.cfg.fmt)
        for f in formats:
            if f not in _FORMATS:
                raise ConfigError(f"system.exporter.fmt: unknown format '{f}'; use any of {sorted(_FORMATS)}.")
        self.formats = sorted({_FORMATS[f] for f in formats})
        if self.cfg.save_texture and not self.cfg.save_uv:
            raise ConfigError("system.exporter: save_texture needs save_uv: true (a texture is addressed by UVs).")
        if self.cfg.context_type not in CONTEXT_TYPES:
            raise ConfigError(f"system.exporter.context_type: expected one of {CONTEXT_TYPES}, got {self.cfg.context_type!r}")
        if self.cfg.texture_format not in _TEXTURE_FORMATS:
            raise ConfigError(f"system.exporter.texture_format: expected one of {_TEXTURE_FORMATS}, got {self.cfg.texture_format!r}")
        if isinstance(self.cfg.isosurface_threshold, str) and self.cfg.isosurface_threshold not in LEVEL_NAMES:
            raise ConfigError(f"system.exporter.isosurface_threshold: expected null, a number, 'auto' or 'opacity', "
                              f"got {self.cfg.isosurface_threshold!r}")
        if self.cfg.max_faces is not None and self.cfg.max_faces < 1:
            raise ConfigError(f"system.exporter.max_faces: expected a positive face count or null, got {self.cfg.max_faces}")

    def surface(self, geometry: BaseGeometry) -> Mesh:
        """The surface to export: the geometry's own mesh at this exporter's level / resolution."""
        return geometry.isosurface(self.cfg.isosurface_threshold, self.cfg.isosurface_resolution)

    @torch.no_grad()
    def __call__(self, geometry: BaseGeometry, material: Any, folder: str) -> list[str]:
        mesh = self.surface(geometry)
        if self.cfg.max_faces is not None:
            mesh = decimate(mesh, self.cfg.max_faces)
        device = geometry.bbox.device if hasattr(geometry, "bbox") else mesh.v_pos.device
        mesh = mesh.to(device)
        albedo = surface_albedo(geometry, material)

        texture = None
        if not geometry.has_features:
            pass  # a geometry-only stage has no colour: the bare surface
        elif self.cfg.save_texture:
            rasterizer = make_rasterizer(self.cfg.backend, device, self.cfg.context_type, part="texture-bake rasteriser")
            mesh, texture_t = textured_mesh(
                mesh, albedo, rasterizer, self.cfg.texture_size, self.cfg.xatlas_chart_options, self.cfg.xatlas_pack_options
            )
            texture = texture_t.cpu().numpy()
        else:
            mesh.v_rgb = albedo(mesh.v_pos)
        mesh = mesh.to("cpu")
        os.makedirs(folder, exist_ok=True)
        paths = []
        for fmt in self.formats:
            path = os.path.join(folder, f"{self.cfg.save_name}.{fmt}")
            if fmt == "obj":
                write_obj(path, mesh, texture, self.cfg.texture_format)
            else:
                write_glb(path, mesh, texture)
            paths.append(path)
        return paths
