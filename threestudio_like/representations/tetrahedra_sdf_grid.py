"""``tetrahedra-sdf-grid``: DMTet, an SDF on a deformable tetrahedral grid meshed by marching tetrahedra.

Geometry is a value per grid vertex, not a network: ``sdf [N, 1]`` and, with
``isosurface_deformable_grid``, ``deformation [N, 3]``, on the ``(R+1)^3`` vertices of
``mesh.tetgrid.tetrahedral_grid(R)`` scaled to ``[-radius, radius]^3`` (``R`` =
``isosurface_resolution`` cells per axis). ``isosurface()`` runs marching tetrahedra on the
deformed grid and returns a mesh that is differentiable with respect to both, for a
rasterizer to render. Colour comes from a separate field: ``forward(points)`` evaluates a hash
grid + MLP (as ``implicit-volume``) at surface points and returns ``{"features": ...}``.

The stored SDF: **negative inside**, in **world units** (the same units as the box; a sphere
initialisation stores ``|x| - r``). Only its zero level and sign matter to the mesh; away from
the surface the values are a distance where the initialisation could give one (sphere,
ellipsoid, mesh) and a distance-scaled copy of the previous stage's field otherwise.
A vertex's deformation is ``isosurface_deformation_scale * tanh(deformation)`` grid cells per
axis (a quarter of a cell by default, which keeps neighbouring tetrahedra from inverting).

Initialisation (``shape_init``): ``sphere`` (``shape_init_params``: radius, default 0.5),
``ellipsoid`` (``[a, b, c]`` semi-axes), ``mesh:<path>`` (any file trimesh reads, centred,
rotated by ``shape_init_mesh_up`` / ``shape_init_mesh_front`` to +z up / +x front, and scaled so
its largest coordinate is ``shape_init_params``, default 0.9; world units), or null (all zero:
empty until trained or created from another stage). ``create_from`` hands over from a previous
stage: from any implicit geometry at a level of its field (``"auto"`` included), or from
another tetrahedra grid; ``copy_net`` also copies the encoding and feature network so the texture
carries over; a level that needs more than ``other`` (``silhouette``: the previous stage's
renders) is resolved by the caller and passed as ``threshold``. ``fix_geometry`` stores
``sdf`` / ``deformation`` as buffers (texture-only stage) and caches the mesh;
``geometry_only`` has no feature network.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from threestudio_like.config import ConfigError, parse_structured
from threestudio_like.mesh.isosurface import EmptyIsosurfaceError, Threshold, auto_levels, sample_grid
from threestudio_like.mesh.marching_tets import empty_mesh, marching_tetrahedra, remove_outliers
from threestudio_like.mesh.mesh_sdf import grid_signed_distance, load_mesh, normalize_mesh
from threestudio_like.mesh.tetgrid import grid_vertices as unit_grid_vertices
from threestudio_like.mesh.tetgrid import surface_cells, surface_tets
from threestudio_like.mesh.types import Mesh
from threestudio_like.registry import register
from threestudio_like.representations.base import BaseGeometry, BaseImplicitGeometry, contract_to_unisphere
from threestudio_like.representations.encodings import DEFAULT_HASH_GRID, get_encoding
from threestudio_like.representations.networks import DEFAULT_MLP, get_mlp
from threestudio_like.utils.typing import Float, Tensor

_SHAPES = ("sphere", "ellipsoid", "mesh:<path>")


@register("tetrahedra-sdf-grid")
class TetrahedraSDFGrid(BaseGeometry):
    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0
        isosurface_resolution: int = 128  # grid cells per axis; (R+1)^3 vertices, 6 R^3 tetrahedra
        isosurface_deformable_grid: bool = True
        isosurface_deformation_scale: float = 0.25  # largest offset per axis, in grid cells
        # level of the previous stage's field used by create_from; null = that geometry's own
        # isosurface_threshold (a number or "auto"); "silhouette": the level whose outline matches
        # the previous stage's renders, chosen by the system at hand-over (geometry_convert_from)
        isosurface_threshold: Optional[Union[float, str]] = None
        n_input_dims: int = 3
        n_feature_dims: int = 3
        pos_encoding_config: dict = field(default_factory=lambda: dict(DEFAULT_HASH_GRID))
        mlp_network_config: dict = field(default_factory=lambda: dict(DEFAULT_MLP))
        shape_init: Optional[str] = None  # null | sphere | ellipsoid | mesh:<path>
        shape_init_params: Optional[Any] = None
        shape_init_mesh_up: str = "+z"
        shape_init_mesh_front: str = "+x"
        force_shape_init: bool = False  # create_from: use shape_init instead of the previous geometry
        geometry_only: bool = False
        fix_geometry: bool = False
        backend: str = "auto"  # auto | torch | tinycudann, for the encoding / MLP

    cfg: Config
    bbox: Float[Tensor, "2 3"]
    grid_vertices: Float[Tensor, "N 3"]
    sdf: Float[Tensor, "N 1"]
    deformation: Optional[Float[Tensor, "N 3"]]

    def configure(self, skip_shape_init: bool = False, **kwargs: Any) -> None:
        cfg = self.cfg
        if cfg.radius <= 0:
            raise ConfigError(f"radius must be positive, got {cfg.radius}")
        if cfg.isosurface_resolution < 1:
            raise ConfigError(
                f"isosurface_resolution must be a positive number of cells, got {cfg.isosurface_resolution}"
            )
        if isinstance(cfg.isosurface_threshold, str) and cfg.isosurface_threshold not in ("auto", "silhouette"):
            raise ConfigError(
                f"isosurface_threshold: expected null, a number, 'auto' or 'silhouette', got {cfg.isosurface_threshold!r}"
            )
        if cfg.shape_init is not None and not (
            cfg.shape_init in ("sphere", "ellipsoid") or cfg.shape_init.startswith("mesh:")
        ):
            raise ConfigError(f"shape_init: {cfg.shape_init!r} is not null or one of {list(_SHAPES)}")
        r = float(cfg.radius)
        self.register_buffer("bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))
        # only the vertices are stored: the tetrahedra of the cells that hold surface are built
        # on the fly (tetgrid.surface_tets), never the full 6 R^3 table
        unit_vertices = unit_grid_vertices(cfg.isosurface_resolution)
        # derived from the config, so kept out of checkpoints
        self.register_buffer("grid_vertices", unit_vertices * r, persistent=False)
        n = unit_vertices.shape[0]
        sdf = torch.zeros(n, 1)
        deformation = torch.zeros(n, 3) if cfg.isosurface_deformable_grid else None
        if cfg.fix_geometry:
            self.register_buffer("sdf", sdf)
            self.register_buffer("deformation", deformation)
        else:
            self.sdf = nn.Parameter(sdf)
            self.deformation = nn.Parameter(deformation) if deformation is not None else None
        self._fixed_mesh: Optional[Mesh] = None

        if not cfg.geometry_only:
            self.encoding = get_encoding(cfg.n_input_dims, {"backend": cfg.backend, **cfg.pos_encoding_config})
            self.feature_network = get_mlp(
                self.encoding.n_output_dims, cfg.n_feature_dims, {"backend": cfg.backend, **cfg.mlp_network_config}
            )
        if cfg.shape_init is not None and not skip_shape_init:
            self.initialize_shape()

    # ------------------------------------------------------------------ shape
    @property
    def has_features(self) -> bool:
        return not self.cfg.geometry_only

    @property
    def cell_size(self) -> float:
        return 2.0 * self.cfg.radius / self.cfg.isosurface_resolution

    @torch.no_grad()
    def initialize_shape(self) -> None:
        """Set ``sdf`` from ``shape_init`` (and zero the deformation)."""
        cfg = self.cfg
        points = self.grid_vertices
        params = cfg.shape_init_params
        if cfg.shape_init is None:
            return
        if cfg.shape_init == "sphere":
            radius = 0.5 if params is None else params
            if not isinstance(radius, (int, float)):
                raise ConfigError(f"shape_init_params: a sphere takes its radius (a number), got {params!r}")
            sdf = points.norm(dim=-1) - float(radius)
        elif cfg.shape_init == "ellipsoid":
            if not (isinstance(params, (list, tuple)) and len(params) == 3 and all(float(p) > 0 for p in params)):
                raise ConfigError(
                    f"shape_init_params: an ellipsoid takes three positive semi-axes [a, b, c], got {params!r}"
                )
            axes = torch.tensor([float(p) for p in params], device=points.device)
            # |x / axes| - 1 is zero on the ellipsoid; times the smallest axis it is a distance
            # to first order there (exact for a sphere)
            sdf = ((points / axes).norm(dim=-1) - 1.0) * axes.min()
        else:
            scale = 0.9 if params is None else params
            if not isinstance(scale, (int, float)):
                raise ConfigError(f"shape_init_params: a mesh takes its scale (a number), got {params!r}")
            if scale >= cfg.radius:
                warnings.warn(
                    f"shape_init_params {scale} puts the mesh outside the box of radius {cfg.radius}; it will be cut"
                )
            path = cfg.shape_init[len("mesh:") :]
            mesh = normalize_mesh(load_mesh(path), float(scale), cfg.shape_init_mesh_up, cfg.shape_init_mesh_front)
            sdf = grid_signed_distance(mesh, cfg.isosurface_resolution, cfg.radius).to(points.device)
        self.sdf.data.copy_(sdf.reshape(-1, 1))
        if self.deformation is not None:
            self.deformation.data.zero_()
        self._fixed_mesh = None

    # ------------------------------------------------------------------ mesh
    def deformed_vertices(self, index: Optional[Tensor] = None) -> Float[Tensor, "N 3"]:
        """World positions of the grid vertices (all, or ``index``), deformation applied, inside the box."""
        points = self.grid_vertices if index is None else self.grid_vertices[index]
        if self.deformation is None:
            return points
        deformation = self.deformation if index is None else self.deformation[index]
        offset = torch.tanh(deformation) * (self.cfg.isosurface_deformation_scale * self.cell_size)
        return (points + offset).clamp(-self.cfg.radius, self.cfg.radius)

    def isosurface(self, threshold: Optional[Threshold] = None, resolution: Optional[int] = None) -> Mesh:
        """The zero level of ``sdf`` on the deformed grid, in world coordinates; outward faces.

        Differentiable with respect to ``sdf`` and ``deformation`` (unless ``fix_geometry``, where
        the mesh is computed once and cached). Empty (0 faces) when no edge changes sign.
        ``threshold`` / ``resolution`` choose a level and sampling of a field; this surface is the
        grid itself (what is rendered and trained), so they are accepted and have no effect: an
        exporter configured for a NeRF stage exports the mesh this stage renders.
        """
        if self.cfg.fix_geometry:
            if self._fixed_mesh is None:
                with torch.no_grad():
                    self._fixed_mesh = self._isosurface()
            return self._fixed_mesh
        return self._isosurface()

    def _isosurface(self) -> Mesh:
        sdf = self.sdf[:, 0]
        with torch.no_grad():
            tets = surface_tets(sdf.detach() < 0, self.cfg.isosurface_resolution)
            if tets.shape[0] == 0:
                return empty_mesh(self.grid_vertices)
            # only the vertices of tetrahedra that can hold surface are deformed and meshed
            used, local_tets = torch.unique(tets, return_inverse=True)
        mesh = marching_tetrahedra(self.deformed_vertices(used), sdf[used], local_tets)
        if self.cfg.isosurface_remove_outliers:
            mesh = remove_outliers(mesh, self.cfg.isosurface_outlier_n_faces_threshold)
        return mesh

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._fixed_mesh = None  # the cached mesh of fix_geometry belongs to the old values
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "TetrahedraSDFGrid":
        self._fixed_mesh = None  # .to(device) / .half(): recompute on the new tensors
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ features
    def forward(self, points: Float[Tensor, "*N 3"], output_normal: bool = False) -> dict[str, Tensor]:
        """``{"features": [*N, F]}`` at world points (``{}`` when ``geometry_only``).

        There is no normal field: normals come from the mesh (``isosurface()``).
        """
        if output_normal:
            raise ValueError("tetrahedra-sdf-grid has no normal field; take normals from the mesh (isosurface())")
        if self.cfg.geometry_only:
            return {}
        enc = self.encoding(contract_to_unisphere(points, self.bbox))
        return {"features": self.feature_network(enc)}

    def export(self, points: Float[Tensor, "*N 3"]) -> dict[str, Tensor]:
        """Features at surface points, for texture baking."""
        return self.forward(points)

    def update_step(self, global_step: int) -> None:
        if not self.cfg.geometry_only:
            self.encoding.update_step(global_step)

    # ------------------------------------------------------------------ stage hand-over
    @staticmethod
    def create_from(
        other: BaseGeometry,
        cfg: Any = None,
        copy_net: bool = True,
        *,
        threshold: Optional[Threshold] = None,
        **kwargs: Any,
    ) -> "TetrahedraSDFGrid":
        """A grid whose surface is ``other``'s.

        - implicit geometry (``implicit-volume`` and other ``BaseImplicitGeometry``): its
          ``isosurface_field`` sampled at the grid vertices, at level ``threshold`` (resolved by
          the caller, e.g. ``silhouette``), else ``cfg.isosurface_threshold``, else
          ``other.cfg.isosurface_threshold`` (``"auto"`` picks a level as the
          marching-cubes export does, the first giving a closed surface). The stored SDF is, at
          the vertices of cells the surface crosses, ``(level - field) / g`` with ``g`` the
          median gradient magnitude of the field there (same zero crossings as interpolating
          the field, distances to first order), and elsewhere a Euclidean distance transform
          of the inside mask; both in world units, negative inside. Vertices on the box
          boundary are kept outside so the mesh is closed.
        - another ``tetrahedra-sdf-grid``: its sdf (trilinearly resampled if the resolution
          differs) and deformation (if the resolution matches).

        ``copy_net``: copy the encoding and feature network when their configs match (a
        warning otherwise), so features at a point are the same as ``other``'s. ``cfg`` null:
        the network configs and radius are taken from ``other``.
        """
        if cfg is None:
            inherited = (
                "radius", "n_input_dims", "n_feature_dims", "pos_encoding_config", "mlp_network_config", "backend"
            )
            cfg = {k: getattr(other.cfg, k) for k in inherited if hasattr(other.cfg, k)}
        cfg = parse_structured(TetrahedraSDFGrid.Config, cfg)
        use_shape_init = cfg.force_shape_init and cfg.shape_init is not None
        instance = TetrahedraSDFGrid(cfg, skip_shape_init=not use_shape_init, **kwargs)
        device = next(iter(other.buffers()), torch.empty(0)).device
        instance = instance.to(device)
        if not use_shape_init:
            with torch.no_grad():
                if isinstance(other, TetrahedraSDFGrid):
                    instance._copy_grid_from(other)
                elif isinstance(other, BaseImplicitGeometry):
                    level = threshold if threshold is not None else cfg.isosurface_threshold
                    if level is None:
                        level = other.cfg.isosurface_threshold
                    if level == "silhouette":
                        raise ConfigError(
                            "isosurface_threshold: silhouette is chosen from the previous stage's renders; "
                            "it works through system.geometry_convert_from (or pass the level as threshold)"
                        )
                    instance.sdf.data.copy_(instance._sdf_from_field(other, level).reshape(-1, 1).to(device))
                    if instance.deformation is not None:
                        instance.deformation.data.zero_()
                else:
                    raise TypeError(f"Cannot create {TetrahedraSDFGrid.__name__} from {type(other).__name__}")
            instance._fixed_mesh = None
        if copy_net and not cfg.geometry_only:
            instance._copy_networks_from(other)
        return instance

    def _copy_grid_from(self, other: "TetrahedraSDFGrid") -> None:
        r, r_other = self.cfg.isosurface_resolution, other.cfg.isosurface_resolution
        if r == r_other and math.isclose(self.cfg.radius, other.cfg.radius):
            self.sdf.data.copy_(other.sdf.data)
            if self.deformation is not None and other.deformation is not None:
                self.deformation.data.copy_(other.deformation.data)
            return
        # resample on the undeformed grids: world point -> other's normalised grid coordinates
        n = r_other + 1
        volume = other.sdf.data.reshape(1, 1, n, n, n)  # [x, y, z]; grid_sample wants (x, y, z) = (W, H, D)
        coords = (self.grid_vertices / other.cfg.radius).clamp(-1, 1).flip(-1).reshape(1, -1, 1, 1, 3)
        sampled = F.grid_sample(volume, coords.to(volume), mode="bilinear", align_corners=True)
        self.sdf.data.copy_(sampled.reshape(-1, 1))

    def _sdf_from_field(self, other: BaseImplicitGeometry, level: Union[float, str]) -> Tensor:
        r = self.cfg.isosurface_resolution
        field = sample_grid(other.isosurface_field, self.bbox.cpu(), r + 1)  # same vertex order as the grid
        h = self.cell_size
        boundary = torch.zeros_like(field, dtype=torch.bool)
        boundary[[0, -1]] = boundary[:, [0, -1]] = boundary[:, :, [0, -1]] = True

        gradient = torch.stack(torch.gradient(field, spacing=h), dim=-1).norm(dim=-1)

        def to_sdf(lv: float) -> Tensor:
            inside = field > lv
            inside[boundary] = False  # close the surface at the box
            near = _near_surface(inside, r)
            g = float(gradient[near].median()) if bool(near.any()) else 1.0
            g = g if math.isfinite(g) and g > 0 else 1.0
            # at the vertices of cells the surface crosses: the field rescaled by its typical
            # slope there, so edge crossings sit exactly where linear interpolation of the field
            # (as marching cubes) puts them, and values are distances to first order; elsewhere
            # a Euclidean distance transform of the inside mask (a density flattens out away
            # from the object, so a rescaled field would not be a distance there)
            sdf = _distance_transform(inside, h)
            sdf[near] = ((lv - field[near]) / g).clamp(-2 * h, 2 * h)
            sdf[boundary] = sdf[boundary].clamp_min(0.5 * h)
            return sdf.reshape(-1)

        low, high = float(field.min()), float(field.max())
        if level != "auto":
            sdf = to_sdf(float(level))
            if not bool((sdf < 0).any()):
                raise EmptyIsosurfaceError(
                    f"create_from: level {float(level):g} gives an empty grid: the field over the box ranges "
                    f"from {low:g} to {high:g}. Set geometry.isosurface_threshold inside that range, or 'auto'."
                )
            return sdf
        fallback = None
        tried = []
        for lv in auto_levels(field, low, high):
            tried.append(lv)
            sdf = to_sdf(lv)
            mesh = marching_tetrahedra(self.grid_vertices.cpu(), sdf, surface_tets(sdf < 0, r))
            if mesh.n_faces > 0 and mesh.is_watertight:
                return sdf
            if fallback is None and mesh.n_faces > 0:
                fallback = sdf
        if fallback is None:
            raise EmptyIsosurfaceError(
                f"create_from: the field is empty (max {high:g}, min {low:g}; levels tried: {tried}); "
                "was the previous stage trained, and does the box cover it?"
            )
        warnings.warn("create_from: no automatic level gave a closed surface; using an open one")
        return fallback

    def _copy_networks_from(self, other: BaseGeometry) -> None:
        enc, net = getattr(other, "encoding", None), getattr(other, "feature_network", None)
        if enc is None or net is None:
            warnings.warn(f"create_from: {type(other).__name__} has no encoding / feature network to copy")
            return
        try:
            self.encoding.load_state_dict(enc.state_dict())
            self.feature_network.load_state_dict(net.state_dict())
        except RuntimeError as error:
            warnings.warn(
                "create_from: the encoding / feature network configs differ from the previous stage's, "
                f"so the texture is not inherited ({str(error).splitlines()[0]})"
            )
            return
        other_radius = getattr(other.cfg, "radius", self.cfg.radius)
        if not math.isclose(other_radius, self.cfg.radius) or getattr(other, "unbounded", False):
            warnings.warn(
                "create_from: the previous stage maps points into its encoding differently (radius or "
                "unbounded contraction), so copied features land at other places"
            )


def _near_surface(inside: Tensor, resolution: int) -> Tensor:
    """Vertices of the grid cells that hold surface, as a ``[R+1]^3`` mask."""
    n = resolution + 1
    cells = surface_cells(inside.reshape(-1), resolution)
    i, j, k = cells // (resolution * resolution), (cells // resolution) % resolution, cells % resolution
    mask = torch.zeros(n, n, n, dtype=torch.bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                mask[i + dx, j + dy, k + dz] = True
    return mask


def _distance_transform(inside: Tensor, spacing: float) -> Tensor:
    """Signed distance (negative inside) from a voxel mask, measured between node centres and
    shifted by half a cell so that neighbouring inside / outside nodes get -h/2 and +h/2."""
    from scipy import ndimage

    mask = inside.cpu().numpy()
    outside_dist = ndimage.distance_transform_edt(~mask) if mask.any() else np.full(mask.shape, mask.size, float)
    inside_dist = ndimage.distance_transform_edt(mask)
    signed = np.where(mask, -(inside_dist - 0.5), outside_dist - 0.5) * spacing
    return torch.from_numpy(signed.astype(np.float32))
