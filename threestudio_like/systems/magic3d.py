"""Magic3D: coarse-to-fine text-to-3D. A NeRF first (``refinement: false``), then the NeRF's
surface as a DMTet mesh refined through a rasteriser (``refinement: true``).

Both stages optimise the same SDS objective as DreamFusion; what changes between them is
config: the geometry (``implicit-volume`` -> ``tetrahedra-sdf-grid``), the renderer
(``nerf-volume-renderer`` -> ``nvdiff-rasterizer``) and the regularisers (orientation and
sparsity -> normal consistency and Laplacian smoothness, all in the base system). The refine
stage starts from the coarse one with ``system.geometry_convert_from``.
"""

from __future__ import annotations

from dataclasses import dataclass

from threestudio_like.config import ConfigError
from threestudio_like.registry import register
from threestudio_like.systems.dreamfusion import DreamFusion

MESH_RENDERERS = ("nvdiff-rasterizer", "mesh-rasterizer")


@register("magic3d-system")
class Magic3D(DreamFusion):
    @dataclass
    class Config(DreamFusion.Config):
        refinement: bool = False  # the mesh stage

    cfg: Config

    def configure(self) -> None:
        mesh_renderer = self.cfg.renderer_type in MESH_RENDERERS
        if self.cfg.refinement and not mesh_renderer:
            raise ConfigError(
                f"system.refinement is true (the mesh stage) but system.renderer_type is {self.cfg.renderer_type!r}; "
                "the refine stage renders a mesh: use renderer_type: nvdiff-rasterizer."
            )
        if not self.cfg.refinement and mesh_renderer:
            raise ConfigError(
                "system.renderer_type is a mesh rasterizer but system.refinement is false; "
                "the coarse stage is a NeRF (nerf-volume-renderer), or set refinement: true."
            )
