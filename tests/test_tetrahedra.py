"""DMTet geometry: tetrahedral grid, marching tetrahedra, mesh SDF, the tetrahedra-sdf-grid part."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from threestudio_like.config import ConfigError
from threestudio_like.mesh.types import Mesh
from threestudio_like.mesh import tetgrid
from threestudio_like.mesh.marching_tets import TRIANGLE_COUNT, marching_tetrahedra, remove_outliers
from threestudio_like.mesh.mesh_sdf import (
    grid_signed_distance,
    load_mesh,
    normalize_mesh,
    signed_distance,
    winding_number,
)
from threestudio_like.mesh.tetgrid import generate_tetrahedral_grid, surface_tets, tetrahedral_grid
from threestudio_like.experiment import find_part
from threestudio_like.representations.implicit_volume import ImplicitVolume
from threestudio_like.representations.tetrahedra_sdf_grid import TetrahedraSDFGrid

SMALL_GRID = {
    "otype": "HashGrid",
    "n_levels": 4,
    "n_features_per_level": 2,
    "log2_hashmap_size": 12,
    "base_resolution": 8,
    "per_level_scale": 1.5,
}
SMALL_MLP = {
    "otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 16, "n_hidden_layers": 1
}


def differentiable_volume(mesh: Mesh) -> torch.Tensor:
    a, b, c = (mesh.v_pos[mesh.t_pos_idx[:, i]] for i in range(3))
    return (a * torch.linalg.cross(b, c, dim=-1)).sum() / 6.0


def chamfer(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and max of the symmetric nearest-neighbour distances between point sets."""
    from scipy.spatial import cKDTree

    d_ab, _ = cKDTree(b).query(a)
    d_ba, _ = cKDTree(a).query(b)
    both = np.concatenate([d_ab, d_ba])
    return float(both.mean()), float(both.max())


def surface_samples(mesh: Mesh, n: int = 20000) -> np.ndarray:
    import trimesh

    points, _ = trimesh.sample.sample_surface(mesh.to_trimesh(), n, seed=0)
    return np.asarray(points)


def small(**overrides) -> dict:
    return {"pos_encoding_config": SMALL_GRID, "mlp_network_config": SMALL_MLP, "backend": "torch", **overrides}


# --------------------------------------------------------------------------- grid
def test_grid_is_conforming_positive_and_fills_the_cube():
    r = 3
    vertices, tets = generate_tetrahedral_grid(r)
    assert vertices.shape == ((r + 1) ** 3, 3) and tets.shape == (6 * r**3, 4)
    corners = vertices[tets].double()
    volume = torch.linalg.det(corners[:, 1:] - corners[:, :1]) / 6
    assert (volume > 0).all()
    assert float(volume.sum()) == pytest.approx(8.0)
    faces = torch.cat([tets[:, [0, 1, 2]], tets[:, [0, 1, 3]], tets[:, [0, 2, 3]], tets[:, [1, 2, 3]]])
    faces = faces.sort(dim=1).values
    unique, counts = torch.unique(faces, dim=0, return_counts=True)
    p = vertices[unique]  # [U, 3, 3]
    on_boundary = ((p.abs() == 1).all(dim=1)) & (p == p[:, :1]).all(dim=1)  # all three on one box face
    on_boundary = on_boundary.any(dim=1)
    assert (counts[on_boundary] == 1).all() and (counts[~on_boundary] == 2).all()
    assert int(on_boundary.sum()) == 6 * 2 * r * r  # two triangles per boundary square


def test_grid_is_cached_in_memory():
    tetgrid.clear_memory_cache()
    vertices, tets = tetrahedral_grid(4)
    assert tetrahedral_grid(4)[1] is tets  # the same tensors, not rebuilt
    assert torch.equal(vertices, tetgrid.grid_vertices(4)) and tets.dtype == torch.long


# --------------------------------------------------------------------------- marching tetrahedra
@pytest.mark.parametrize("resolution", [16, 32])
def test_sphere_gives_a_closed_outward_mesh_on_the_sphere(resolution):
    radius = 0.6
    vertices, tets = tetrahedral_grid(resolution)
    sdf = vertices.norm(dim=-1) - radius
    mesh = marching_tetrahedra(vertices, sdf, tets)
    cell = 2.0 / resolution
    assert mesh.n_faces > 1000 and mesh.is_watertight
    assert (mesh.v_pos.norm(dim=-1) - radius).abs().max() < cell
    assert mesh.signed_volume() > 0
    assert mesh.signed_volume() == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)
    # every face points away from the centre
    tri = mesh.v_pos[mesh.t_pos_idx]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    assert ((normal * tri.mean(dim=1)).sum(-1) > 0).all()
    # only the cells around the surface are needed, and give the same mesh
    fast = marching_tetrahedra(vertices, sdf, surface_tets(sdf < 0, resolution))
    assert torch.equal(fast.t_pos_idx, mesh.t_pos_idx) and torch.equal(fast.v_pos, mesh.v_pos)


def test_triangle_table_and_empty_and_flipped_cases():
    assert TRIANGLE_COUNT.tolist() == [0, 1, 1, 2, 1, 2, 2, 1, 1, 2, 2, 1, 2, 1, 1, 0]
    vertices, tets = tetrahedral_grid(4)
    empty = marching_tetrahedra(vertices, vertices.norm(dim=-1) + 1.0, tets)
    assert empty.n_faces == 0 and empty.n_vertices == 0
    sdf = vertices.norm(dim=-1) - 0.7
    # negatively oriented input tetrahedra still give outward faces
    flipped = marching_tetrahedra(vertices, sdf, tets[:, [1, 0, 2, 3]])
    assert flipped.is_watertight and flipped.signed_volume() > 0


def test_gradients_flow_to_sdf_and_vertices_and_lowering_sdf_grows_the_mesh():
    vertices, tets = tetrahedral_grid(12)
    vertices = vertices.clone().requires_grad_(True)
    sdf = (vertices.detach().norm(dim=-1) - 0.55).requires_grad_(True)
    mesh = marching_tetrahedra(vertices, sdf, tets)
    jac = torch.autograd.grad(mesh.v_pos[:, 0].sum(), sdf, retain_graph=True)[0]
    assert jac.abs().sum() > 0
    volume = differentiable_volume(mesh)
    d_sdf, d_vertices = torch.autograd.grad(volume, [sdf, vertices])
    assert d_vertices.abs().sum() > 0
    assert (d_sdf <= 1e-7).all() and (d_sdf < -1e-4).sum() > 50  # lower sdf (more inside) -> more volume
    # finite-difference check at the vertex with the largest effect (no sign change)
    i = int(d_sdf.argmin())
    eps = 1e-3 * float(sdf[i].detach().abs())
    with torch.no_grad():
        moved = sdf.clone()
        moved[i] -= eps
        grown = differentiable_volume(marching_tetrahedra(vertices, moved, tets))
    volume = volume.detach()
    assert float(grown) > float(volume)
    assert float(grown - volume) == pytest.approx(-eps * float(d_sdf[i]), rel=0.05)


def test_remove_outliers_keeps_large_components():
    vertices, tets = tetrahedral_grid(24)
    big = vertices.norm(dim=-1) - 0.5
    speck = (vertices - torch.tensor([0.85, 0.85, 0.85])).norm(dim=-1) - 0.1
    mesh = marching_tetrahedra(vertices, torch.minimum(big, speck), tets)
    cleaned = remove_outliers(mesh, 0.05)
    assert 0 < cleaned.n_faces < mesh.n_faces and cleaned.is_watertight
    assert cleaned.v_pos.norm(dim=-1).max() < 0.6


# --------------------------------------------------------------------------- mesh SDF
@pytest.fixture(scope="module")
def bunny_path(shared_data) -> str:
    return str(shared_data("bunny.obj"))


@pytest.fixture(scope="module")
def bunny(bunny_path) -> Mesh:
    return normalize_mesh(load_mesh(bunny_path), 0.8, up="+y", front="+z")


def test_normalize_mesh_centres_scales_and_rotates(bunny, bunny_path):
    lo, hi = bunny.v_pos.amin(0), bunny.v_pos.amax(0)
    torch.testing.assert_close((lo + hi) / 2, torch.zeros(3), atol=1e-6, rtol=0)
    assert float(bunny.v_pos.abs().max()) == pytest.approx(0.8)
    raw = load_mesh(bunny_path)
    # the file's y axis (its up) becomes z, scaled like the other axes
    extent_raw, extent = raw.v_pos.amax(0) - raw.v_pos.amin(0), hi - lo
    assert float(extent[2] / extent.max()) == pytest.approx(float(extent_raw[1] / extent_raw.max()), rel=1e-4)


def test_signed_distance_matches_brute_force_and_winding_sign(bunny):
    g = torch.Generator().manual_seed(0)
    points = torch.rand(400, 3, generator=g) * 2 - 1
    sdf = signed_distance(points, bunny)
    # brute force: nearest point over all triangles by dense barycentric sampling (an upper bound)
    tri = bunny.v_pos[bunny.t_pos_idx]
    uv = torch.rand(48, 2, generator=g)
    uv = torch.where(uv.sum(1, keepdim=True) > 1, 1 - uv, uv)
    weights = torch.cat([1 - uv.sum(1, keepdim=True), uv], dim=1)
    samples = torch.cat([(weights[None, :, :, None] * tri[:, None]).sum(2).reshape(-1, 3), bunny.v_pos])
    nearest = torch.cdist(points, samples, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert (sdf.abs() <= nearest + 1e-5).all() and (nearest - sdf.abs()).max() < 0.01
    winding = winding_number(points, bunny)
    clear = (winding - 0.5).abs() > 0.4
    assert clear.sum() > 350 and (winding[clear] > 0.5).sum() > 10
    assert torch.equal(sdf[clear] < 0, winding[clear] > 0.5)


def test_grid_signed_distance_coarse_to_fine_matches_direct_near_the_surface(bunny):
    r = 48
    fine = grid_signed_distance(bunny, r, min_resolution=12)
    direct = signed_distance(tetrahedral_grid(r)[0], bunny)
    near = direct.abs() < 2 * 2.0 / r
    agree = (fine < 0) == (direct < 0)
    assert agree.float().mean() > 0.9999  # only points at a hole's plane may differ
    assert (fine - direct)[near & agree].abs().max() < 1e-6


def test_mesh_init_from_bunny_matches_the_bunny(bunny, bunny_path):
    r = 40
    geo = TetrahedraSDFGrid(
        small(isosurface_resolution=r, shape_init=f"mesh:{bunny_path}", shape_init_params=0.8, shape_init_mesh_up="+y",
              shape_init_mesh_front="+z", geometry_only=True)
    )
    mesh = geo.isosurface()
    cell = 2.0 / r
    assert mesh.is_watertight and mesh.signed_volume() > 0
    mean, _ = chamfer(surface_samples(mesh), surface_samples(bunny))
    assert mean < 0.25 * cell
    # surface points of the DMTet mesh lie near the bunny (holes are capped within a few cells)
    d = signed_distance(mesh.v_pos.detach(), bunny).abs()
    assert float(torch.quantile(d, 0.99)) < 1.5 * cell
    # sign of the stored sdf at clearly inside / outside vertices
    winding = winding_number(geo.grid_vertices[::31], bunny)
    clear = (winding - 0.5).abs() > 0.4
    assert torch.equal(geo.sdf.detach()[::31, 0][clear] < 0, winding[clear] > 0.5)


# --------------------------------------------------------------------------- the geometry part
def test_registry_builds_sphere_and_features():
    geo = find_part("tetrahedra-sdf-grid")(small(isosurface_resolution=16, shape_init="sphere", shape_init_params=0.5))
    assert isinstance(geo, TetrahedraSDFGrid)
    mesh = geo.isosurface()
    assert mesh.is_watertight and (mesh.v_pos.norm(dim=-1) - 0.5).abs().max() < 2.0 / 16
    assert mesh.v_pos.abs().max() <= 1.0
    points = mesh.v_pos.detach()[:10].view(2, 5, 3)
    out = geo(points)
    assert out["features"].shape == (2, 5, 3)
    torch.testing.assert_close(geo.export(points)["features"], out["features"])
    with pytest.raises(ValueError, match="normal"):
        geo(points, output_normal=True)
    # gradients reach both per-vertex tensors through the mesh
    differentiable_volume(geo.isosurface()).backward()
    assert geo.sdf.grad.abs().sum() > 0 and geo.deformation.grad.abs().sum() > 0
    # the deformation moves vertices by at most a quarter cell and keeps them in the box
    with torch.no_grad():
        geo.deformation.fill_(100.0)
    offsets = geo.deformed_vertices() - geo.grid_vertices
    assert offsets.abs().max() <= 0.25 * 2.0 / 16 + 1e-6


def test_ellipsoid_fix_geometry_and_geometry_only():
    geo = TetrahedraSDFGrid(
        small(isosurface_resolution=16, shape_init="ellipsoid", shape_init_params=[0.7, 0.5, 0.3], fix_geometry=True)
    )
    names = dict(geo.named_parameters())
    assert "sdf" not in names and "deformation" not in names and "sdf" in geo.state_dict()
    assert any(n.startswith("feature_network") for n in names)
    mesh = geo.isosurface()
    assert geo.isosurface() is mesh and not mesh.v_pos.requires_grad
    extent = mesh.v_pos.amax(0) - mesh.v_pos.amin(0)
    torch.testing.assert_close(extent, torch.tensor([1.4, 1.0, 0.6]), atol=2.0 / 16, rtol=0)
    geo_only = TetrahedraSDFGrid(small(isosurface_resolution=8, geometry_only=True, isosurface_deformable_grid=False))
    assert not hasattr(geo_only, "feature_network") and geo_only.deformation is None
    assert geo_only(torch.zeros(4, 3)) == {}
    assert geo_only.isosurface().n_faces == 0  # no shape_init: empty until trained


@pytest.mark.parametrize("threshold", [5.0, "auto"])
def test_create_from_implicit_volume_keeps_surface_and_features(threshold):
    torch.manual_seed(0)
    volume = ImplicitVolume(small(isosurface_threshold=threshold, isosurface_resolution=33))
    r = 32
    geo = TetrahedraSDFGrid.create_from(volume, small(isosurface_resolution=r))
    mesh = geo.isosurface()
    reference = volume.isosurface()  # marching cubes on the same 33^3 nodes
    assert mesh.is_watertight and mesh.n_faces > 500
    mean, worst = chamfer(surface_samples(mesh), surface_samples(reference))
    cell = 2.0 / r
    assert mean < 0.2 * cell and worst < 1.0 * cell
    assert mesh.signed_volume() == pytest.approx(reference.signed_volume(), rel=0.03)
    # the stored sdf behaves like a distance near the surface: the blob's radius is where sdf = 0
    blob_radius = float(mesh.v_pos.detach().norm(dim=-1).mean())
    predicted = geo.grid_vertices.norm(dim=-1) - blob_radius
    error = (geo.sdf.detach()[:, 0] - predicted).abs()
    assert float(error[predicted.abs() < cell].max()) < 0.75 * cell  # the rescaled field
    assert float(error[predicted.abs() < 0.5].max()) < 1.0 * cell  # the distance transform
    points = mesh.v_pos.detach()
    torch.testing.assert_close(geo(points)["features"], volume(points)["features"])
    # without copy_net the features start from scratch
    fresh = TetrahedraSDFGrid.create_from(volume, small(isosurface_resolution=8), copy_net=False)
    assert not torch.allclose(fresh(points)["features"], volume(points)["features"])


def test_create_from_takes_a_level_the_caller_resolved():
    """``silhouette`` needs the previous stage's renders: the system resolves it and passes the
    number as ``threshold``, which wins over the configs; alone it is a clear error."""
    torch.manual_seed(0)
    volume = ImplicitVolume(small(isosurface_threshold=5.0, isosurface_resolution=17))
    config = small(isosurface_resolution=16, isosurface_threshold="silhouette")
    with pytest.raises(ConfigError, match="silhouette"):
        TetrahedraSDFGrid.create_from(volume, config)
    passed = TetrahedraSDFGrid.create_from(volume, config, threshold=3.0)
    configured = TetrahedraSDFGrid.create_from(volume, small(isosurface_resolution=16, isosurface_threshold=3.0))
    torch.testing.assert_close(passed.sdf, configured.sdf)
    # the grid is the surface: a level or sampling for a field does not change it
    assert passed.isosurface(threshold=1e9, resolution=4).n_faces == passed.isosurface().n_faces > 0


def test_create_from_another_grid_and_mismatched_network_warns():
    base = TetrahedraSDFGrid(small(isosurface_resolution=16, shape_init="sphere", shape_init_params=0.5))
    with torch.no_grad():
        base.deformation.normal_()
    same = TetrahedraSDFGrid.create_from(base, small(isosurface_resolution=16))
    torch.testing.assert_close(same.isosurface().v_pos, base.isosurface().v_pos)
    finer = TetrahedraSDFGrid.create_from(base, small(isosurface_resolution=24))
    assert (finer.isosurface().v_pos.norm(dim=-1) - 0.5).abs().max() < 2.0 / 16
    other_mlp = {**SMALL_MLP, "n_neurons": 8}
    with pytest.warns(UserWarning, match="not inherited"):
        TetrahedraSDFGrid.create_from(base, small(isosurface_resolution=8, mlp_network_config=other_mlp))
