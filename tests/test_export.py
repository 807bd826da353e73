"""Isosurface extraction, the Mesh record and the OBJ / GLB writers."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

from threestudio_like.config import ConfigError
from threestudio_like.export import EmptyIsosurfaceError, extract_isosurface, write_glb, write_obj
from threestudio_like.export.decimate import decimate
from threestudio_like.export.exporter import MeshExporter
from threestudio_like.mesh.isosurface import sample_grid
from threestudio_like.mesh.marching_tets import face_components
from threestudio_like.mesh.types import Mesh
from threestudio_like.representations.base import BaseImplicitGeometry

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def sphere_density(radius: float, center: tuple[float, float, float] = (0.0, 0.0, 0.0)):
    c = torch.tensor(center)
    return lambda p: 10.0 * (radius - (p - c).norm(dim=-1, keepdim=True))  # [N,1], > 0 inside


def blob_density(p: torch.Tensor) -> torch.Tensor:
    """A NeRF-like density: a Gaussian bump of peak 50 centred at (0.2, -0.1, 0.1)."""
    return 50.0 * torch.exp(-((p - torch.tensor([0.2, -0.1, 0.1])) ** 2).sum(-1) / (2 * 0.25**2))


def assert_outward(mesh: Mesh, center: torch.Tensor) -> None:
    tri = mesh.v_pos[mesh.t_pos_idx]  # [F,3,3]
    normals = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    outward = ((tri.mean(1) - center) * normals).sum(-1)
    assert (outward > 0).float().mean() > 0.999
    assert mesh.signed_volume() > 0


def test_sphere_mesh_is_closed_on_the_surface_and_faces_outward() -> None:
    resolution, radius = 40, 0.6
    mesh = extract_isosurface(sphere_density(radius), BOX, resolution, threshold=0.0)
    cell = 2.0 / (resolution - 1)
    assert mesh.n_faces > 500
    assert (mesh.v_pos.norm(dim=-1) - radius).abs().max() < cell
    assert mesh.is_watertight
    assert_outward(mesh, torch.zeros(3))
    assert mesh.signed_volume() == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)


def test_object_touching_the_box_still_gives_a_closed_mesh_inside_the_box() -> None:
    # a sphere of radius 1.3 overflows the [-1, 1]^3 box: the cut faces must be capped
    mesh = extract_isosurface(sphere_density(1.3), BOX, 16, threshold=0.0)
    assert mesh.is_watertight
    assert mesh.v_pos.abs().max() <= 1.0 + 1e-6
    assert mesh.signed_volume() > 0.9 * 8.0 - 1.0  # nearly the whole box


def test_auto_threshold_on_a_blob_gives_a_closed_surface_at_one_level() -> None:
    mesh = extract_isosurface(blob_density, BOX, 32, threshold="auto")
    assert mesh.is_watertight and mesh.n_faces > 100
    assert_outward(mesh, torch.tensor([0.2, -0.1, 0.1]))
    # every vertex lies on one isosurface of the field (up to linear interpolation error)
    values = blob_density(mesh.v_pos)
    assert 0.0 < values.mean() < 50.0
    assert values.std() / values.mean() < 0.1
    assert torch.allclose(mesh.v_pos.mean(0), torch.tensor([0.2, -0.1, 0.1]), atol=0.03)


def test_auto_threshold_handles_a_binary_occupancy_field() -> None:
    """Occupied samples all equal the maximum: the level must back off below it."""
    cube = lambda p: (p.abs().max(-1).values < 0.5).float()  # noqa: E731
    mesh = extract_isosurface(cube, BOX, 21, threshold="auto")
    assert mesh.is_watertight
    assert (mesh.v_pos.abs().max(-1).values - 0.5).abs().max() <= 0.1 + 1e-6  # one cell


def test_empty_field_is_a_clear_error() -> None:
    with pytest.raises(EmptyIsosurfaceError, match=r"empty.*maximum over the box is 0"):
        extract_isosurface(lambda p: torch.zeros(p.shape[0], 1), BOX, 8, threshold="auto")
    message = r"threshold 100 gives an empty mesh.*ranges from .* to 4\d\.\d+.*auto"  # grid misses the peak 50
    with pytest.raises(EmptyIsosurfaceError, match=message):
        extract_isosurface(blob_density, BOX, 8, threshold=100.0)


def test_grid_sampling_is_chunk_independent_and_axis_ordered() -> None:
    field = lambda p: p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2]  # noqa: E731
    small, large = sample_grid(field, BOX, 5, chunk=7), sample_grid(field, BOX, 5)
    assert torch.equal(small, large)
    axis = torch.linspace(-1, 1, 5)
    assert torch.allclose(small[:, 0, 0] - small[0, 0, 0], axis + 1)  # index 0 is x
    assert torch.allclose(small[0, :, 0] - small[0, 0, 0], 10 * (axis + 1))
    assert torch.allclose(small[0, 0, :] - small[0, 0, 0], 100 * (axis + 1))


def test_mesh_cleanup_helpers() -> None:
    # two triangles as a soup (6 vertices) sharing an edge, plus one stray vertex
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [5, 5, 5]])
    rgb = torch.rand(7, 3)
    soup = Mesh(v, torch.tensor([[0, 1, 2], [3, 4, 5]]), rgb)
    welded = soup.merge_duplicate_vertices()
    assert welded.n_vertices == 5 and welded.n_faces == 2
    assert torch.equal(welded.v_pos[welded.t_pos_idx], soup.v_pos[soup.t_pos_idx])  # same triangles
    compact = welded.remove_unreferenced()
    assert compact.n_vertices == 4
    assert torch.equal(compact.v_pos[compact.t_pos_idx], soup.v_pos[soup.t_pos_idx])
    assert torch.equal(compact.v_rgb, rgb[[0, 1, 2, 4]])
    with pytest.raises((ValueError, TypeError), match="v_rgb"):  # TypeError: the shape checks in tests
        Mesh(v, torch.tensor([[0, 1, 2]]), torch.rand(3, 3))


@pytest.fixture(scope="module")
def colored_sphere() -> Mesh:
    mesh = extract_isosurface(sphere_density(0.5), BOX, 16, threshold=0.0)
    return mesh.with_colors((mesh.v_pos + 1.0) / 2.0)


def test_obj_roundtrip_keeps_vertices_and_colours(tmp_path, colored_sphere: Mesh) -> None:
    path = write_obj(str(tmp_path / "model.obj"), colored_sphere, material_name="skin")
    assert sorted(os.listdir(tmp_path)) == ["model.mtl", "model.obj"]  # no temp files left
    assert open(path).readline().strip() == "mtllib model.mtl"
    assert "newmtl skin" in (tmp_path / "model.mtl").read_text()
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) == colored_sphere.n_vertices
    assert len(loaded.faces) == colored_sphere.n_faces
    assert np.allclose(loaded.vertices, colored_sphere.v_pos.numpy(), atol=1e-5)
    assert np.abs(loaded.visual.vertex_colors[:, :3] / 255.0 - colored_sphere.v_rgb.numpy()).max() <= 1 / 255
    assert loaded.is_watertight and loaded.volume > 0


def test_glb_roundtrip_keeps_colours_and_converts_to_y_up(tmp_path, colored_sphere: Mesh) -> None:
    path = write_glb(str(tmp_path / "model.glb"), colored_sphere)
    assert os.listdir(tmp_path) == ["model.glb"]
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) == colored_sphere.n_vertices
    x, y, z = colored_sphere.v_pos.numpy().T
    assert np.allclose(loaded.vertices, np.stack([x, z, -y], -1), atol=1e-5)
    assert np.abs(loaded.visual.vertex_colors[:, :3] / 255.0 - colored_sphere.v_rgb.numpy()).max() <= 1 / 255
    assert loaded.volume > 0  # a rotation keeps faces outward
    raw = trimesh.load(write_glb(str(tmp_path / "raw.glb"), colored_sphere, y_up=False), force="mesh")
    assert np.allclose(raw.vertices, colored_sphere.v_pos.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"\.glb"):
        write_glb(str(tmp_path / "model.gltf"), colored_sphere)


class FieldGeometry(BaseImplicitGeometry):
    """An implicit geometry with a given field and features = positions (no networks)."""

    def configure(self, field=None, **kwargs) -> None:
        super().configure(**kwargs)
        self.field = field

    def isosurface_field(self, points: torch.Tensor) -> torch.Tensor:
        return self.field(points)

    def export(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": points}


def ball_and_floater(p: torch.Tensor) -> torch.Tensor:
    ball = 0.5 - p.norm(dim=-1)
    floater = 0.08 - (p - torch.tensor([0.8, 0.0, 0.0])).norm(dim=-1)
    return torch.maximum(ball, floater)[..., None] * 10


def test_exporter_drops_floaters_when_the_geometry_asks() -> None:
    """A ball with a small detached blob: by default both are meshed; with
    ``isosurface_remove_outliers`` only the ball is (floaters would become UV charts)."""

    def geometry(remove: bool) -> FieldGeometry:
        cfg = {"isosurface_threshold": 0.0, "isosurface_resolution": 48,
               "isosurface_remove_outliers": remove, "isosurface_outlier_n_faces_threshold": 0.05}
        return FieldGeometry(cfg, field=ball_and_floater)

    exporter = MeshExporter(MeshExporter.Config())
    kept, cleaned = exporter.surface(geometry(False)), exporter.surface(geometry(True))
    assert face_components(kept)[1] == 2
    assert face_components(cleaned)[1] == 1
    assert cleaned.v_pos.norm(dim=-1).max() < 0.6  # the ball stayed, the blob at x = 0.8 went


def test_exporter_meshes_through_the_geometry_at_its_own_or_the_exporters_level() -> None:
    """One path: the export is ``geometry.isosurface(threshold, resolution)``, the mesh the
    renderer draws when the exporter sets neither; the exporter's level / grid override."""
    geometry = FieldGeometry({"isosurface_threshold": 0.0, "isosurface_resolution": 24}, field=sphere_density(0.6))
    own = MeshExporter(MeshExporter.Config()).surface(geometry)
    torch.testing.assert_close(own.v_pos, geometry.isosurface().v_pos)
    finer = MeshExporter(MeshExporter.Config(isosurface_resolution=40)).surface(geometry)
    assert finer.n_faces > own.n_faces
    smaller = MeshExporter(MeshExporter.Config(isosurface_threshold=2.0)).surface(geometry)  # radius 0.4
    assert float(smaller.v_pos.norm(dim=-1).mean()) == pytest.approx(0.4, abs=0.02)
    for level in ("auto", "opacity"):
        assert geometry.isosurface(level).n_faces > 0
    with pytest.raises(ConfigError, match="isosurface_threshold"):
        MeshExporter(MeshExporter.Config(isosurface_threshold="silhouette"))


def bumpy_sphere_density(p: torch.Tensor) -> torch.Tensor:
    """A sphere of radius 0.6 with +-0.03 ripples: the many-faced surface a short SDS run gives."""
    ripples = 0.03 * torch.sin(9 * p[..., 0]) * torch.sin(9 * p[..., 1]) * torch.sin(9 * p[..., 2])
    return (0.6 + ripples - p.norm(dim=-1))[..., None] * 10


def test_decimation_keeps_a_closed_surface_within_its_ripples() -> None:
    mesh = extract_isosurface(bumpy_sphere_density, BOX, 96, threshold=0.0)
    assert mesh.n_faces > 30000
    small = decimate(mesh, 5000)
    assert 4000 <= small.n_faces <= 5000
    assert small.is_watertight and small.signed_volume() > 0
    assert small.signed_volume() == pytest.approx(mesh.signed_volume(), rel=0.02)
    # decimated vertices stay on the rippled surface: the field there is ~0 (|field| < 0.1 = 1 cm)
    assert bumpy_sphere_density(small.v_pos).abs().max() < 0.1
    assert decimate(small, 10000) is small  # small enough already: untouched
    with pytest.raises(ValueError, match="before colouring"):
        decimate(mesh.with_colors(torch.rand(mesh.n_vertices, 3)), 5000)


def test_exporter_decimates_above_max_faces(tmp_path) -> None:
    geometry = FieldGeometry({"isosurface_threshold": 0.0, "isosurface_resolution": 96}, field=bumpy_sphere_density)
    material = SimpleNamespace(export=lambda features: {"albedo": (features + 1) / 2})
    exporter = MeshExporter(MeshExporter.Config(fmt="obj", save_texture=False, max_faces=3000))
    (path,) = exporter(geometry, material, str(tmp_path))
    loaded = trimesh.load(path, force="mesh", process=False)
    assert 2500 <= len(loaded.faces) <= 3000 and loaded.is_watertight
    colours = loaded.visual.vertex_colors[:, :3] / 255.0
    assert np.abs(colours - (loaded.vertices + 1) / 2).max() < 2 / 255  # coloured after decimating
    with pytest.raises(ConfigError, match="max_faces"):
        MeshExporter(MeshExporter.Config(max_faces=0))
