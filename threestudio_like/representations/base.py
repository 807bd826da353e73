"""Geometry base classes: bounding box, mapping world points into it, and the one meshing path.

``geometry.isosurface(threshold, resolution)`` is the surface mesh every caller takes: the mesh
renderer (no arguments: the geometry's own level), the exporter (its ``isosurface_threshold`` /
``isosurface_resolution``, null = the geometry's) and the stage hand-over (which resolves levels
that need more than the geometry, e.g. ``silhouette``, and passes the number on).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Optional, Union

import torch

from threestudio_like.config import ConfigError, Range
from threestudio_like.mesh.isosurface import Threshold, extract_isosurface
from threestudio_like.mesh.marching_tets import remove_outliers
from threestudio_like.mesh.types import Mesh
from threestudio_like.utils.base import BaseModule
from threestudio_like.utils.typing import Float, Tensor


def scale_to_unit(x: Float[Tensor, "... 3"], bbox: Float[Tensor, "2 3"]) -> Float[Tensor, "... 3"]:
    """World points -> [0, 1]^3 of the box (the input range of tcnn-style encodings)."""
    return (x - bbox[0]) / (bbox[1] - bbox[0])


def contract_to_unisphere(
    x: Float[Tensor, "... 3"], bbox: Float[Tensor, "2 3"], unbounded: bool = False
) -> Float[Tensor, "... 3"]:
    """World points -> [0, 1]^3. Bounded: the box maps linearly. Unbounded (mip-NeRF 360 style):
    the box maps to the inner half and everything outside is squashed into the rest."""
    x = scale_to_unit(x, bbox)
    if not unbounded:
        return x
    x = x * 2.0 - 1.0  # box -> [-1, 1]
    magnitude = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    contracted = (2.0 - 1.0 / magnitude) * (x / magnitude)
    x = torch.where(magnitude > 1.0, contracted, x)
    return x / 4.0 + 0.5  # [-2, 2] -> [0, 1]


_WARNED: set[str] = set()  # ignored options already reported in this process


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=4)


class BaseGeometry(BaseModule):
    """Anything the renderer queries for geometry; ``create_from`` hands a stage over to the next."""

    @dataclass
    class Config(BaseModule.Config):
        # drop floaters from the extracted mesh: they would become UV charts (slow unwrapping) and islands
        isosurface_remove_outliers: bool = False
        isosurface_outlier_n_faces_threshold: Union[int, float] = 0.01  # < 1: fraction of faces; else a count

    def isosurface(self, threshold: Optional[Threshold] = None, resolution: Optional[int] = None) -> Mesh:
        """The surface mesh, in world coordinates, outward faces.

        ``threshold``: the level of the geometry's field (a number, or ``"auto"`` / ``"opacity"``,
        found from the field alone); ``resolution``: samples per axis. None: the geometry's own
        (``isosurface_threshold`` / ``isosurface_resolution``). Geometries whose surface is
        explicit (DMTet) have no level to choose and document what they do with these.
        """
        raise NotImplementedError(f"{type(self).__name__} has no surface mesh")

    @property
    def has_features(self) -> bool:
        """Whether ``export(points)`` gives features to colour a surface with (a geometry-only stage has none)."""
        return True

    @staticmethod
    def create_from(
        other: "BaseGeometry", cfg: Any = None, *, threshold: Optional[Threshold] = None, **kwargs: Any
    ) -> "BaseGeometry":
        """A geometry of this type with ``other``'s shape (a stage hand-over); ``threshold``: the
        level of ``other``'s field to take, when the caller resolved it (None: ``cfg``'s)."""
        raise TypeError(f"Cannot create {BaseGeometry.__name__} from {type(other).__name__}")


class BaseImplicitGeometry(BaseGeometry):
    """A field on the box ``[-radius, radius]^3`` (buffer ``bbox``) that can be meshed.

    The isosurface options keep threestudio's names. Extraction is marching cubes on the CPU
    (scikit-image) on a regular grid: ``isosurface_method: mt`` (marching tetrahedra) and
    ``isosurface_deformable_grid: true`` are accepted for threestudio configs, have no effect,
    and say so once per process. Subclasses implement ``isosurface_field`` (larger = more inside).
    """

    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0
        isosurface: bool = True
        isosurface_method: str = "mc-cpu"  # what is done; "mt" is accepted (threestudio's default) and warns
        isosurface_resolution: Annotated[int, Range(2, why="samples per axis of the marching-cubes grid")] = 128
        isosurface_threshold: Union[float, str] = 0.0
        isosurface_chunk: int = 0  # points per field evaluation; 0 = the extractor's default
        isosurface_coarse_to_fine: bool = False
        isosurface_deformable_grid: bool = False  # accepted for compatibility (warns); fields have no grid to deform

    cfg: Config
    bbox: Float[Tensor, "2 3"]
    unbounded: bool = False

    def configure(self, **kwargs: Any) -> None:
        cfg = self.cfg
        if cfg.radius <= 0:
            raise ConfigError(f"radius must be positive, got {cfg.radius}")
        if cfg.isosurface_method not in ("mt", "mc-cpu"):
            raise ConfigError(f"isosurface_method: {cfg.isosurface_method!r} is not one of ['mt', 'mc-cpu']")
        name = type(self).__name__
        if cfg.isosurface_method == "mt":
            _warn_once(
                "isosurface_method",
                f"isosurface_method: mt is accepted for threestudio compatibility and has no effect on {name}: "
                "its isosurface is extracted by marching cubes (scikit-image, on the CPU), as with mc-cpu.",
            )
        if cfg.isosurface_deformable_grid:
            _warn_once(
                "isosurface_deformable_grid",
                f"isosurface_deformable_grid: true is accepted for threestudio compatibility and has no effect on "
                f"{name}: marching cubes runs on a regular grid. Only tetrahedra-sdf-grid deforms its grid.",
            )
        # "opacity" is the exporter's choice (system.exporter.isosurface_threshold), not a geometry setting
        if isinstance(cfg.isosurface_threshold, str) and cfg.isosurface_threshold != "auto":
            raise ConfigError(
                f"isosurface_threshold: expected a number or 'auto', got {cfg.isosurface_threshold!r}"
            )
        r = float(cfg.radius)
        self.register_buffer("bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))

    def to_unit(self, points: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3"]:
        """World points -> encoding input in [0, 1]^3."""
        return contract_to_unisphere(points, self.bbox, self.unbounded)

    def isosurface_field(self, points: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N 1"]:
        """The scalar field that is meshed at ``isosurface_threshold`` (larger = inside)."""
        raise NotImplementedError

    def isosurface(self, threshold: Optional[Threshold] = None, resolution: Optional[int] = None) -> Mesh:
        """Marching cubes of ``isosurface_field`` inside ``bbox`` (tightened around a first pass if
        coarse-to-fine) at ``threshold`` (None: ``isosurface_threshold``; numbers, ``"auto"`` and
        ``"opacity"`` as ``extract_isosurface``) with ``resolution`` samples per axis (None:
        ``isosurface_resolution``); floaters dropped if ``isosurface_remove_outliers``."""
        if not self.cfg.isosurface:
            raise RuntimeError("isosurface extraction is disabled (isosurface: false in the geometry config)")
        level = self.cfg.isosurface_threshold if threshold is None else threshold
        resolution = resolution or self.cfg.isosurface_resolution
        bbox = self.bbox
        if self.cfg.isosurface_coarse_to_fine:
            coarse = self._extract(bbox, level, resolution)
            vmin, vmax = coarse.v_pos.amin(dim=0).to(bbox), coarse.v_pos.amax(dim=0).to(bbox)
            margin = (vmax - vmin) * 0.1
            bbox = torch.stack([torch.maximum(vmin - margin, bbox[0]), torch.minimum(vmax + margin, bbox[1])])
        mesh = self._extract(bbox, level, resolution)
        if self.cfg.isosurface_remove_outliers:
            mesh = remove_outliers(mesh, self.cfg.isosurface_outlier_n_faces_threshold)
        return mesh

    def _extract(self, bbox: Float[Tensor, "2 3"], level: Threshold, resolution: int) -> Mesh:
        options = {"chunk": self.cfg.isosurface_chunk} if self.cfg.isosurface_chunk > 0 else {}
        return extract_isosurface(self.isosurface_field, bbox, resolution, level, **options)
