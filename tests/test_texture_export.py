"""Textured export: xatlas UVs, baking, seam dilation, OBJ+MTL+PNG and GLB (validated)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from gltf_validation import gltf_report
from threestudio_like.mesh.types import Mesh
from threestudio_like.export.texture import bake_texture, dilate, sample_texture, textured_mesh, unwrap_uv
from threestudio_like.export.writers import write_glb, write_obj
from threestudio_like.mesh.rasterize import TorchRasterizer


@pytest.fixture(scope="module")
def surface(bumpy_sphere) -> Mesh:
    """A generated closed, bumpy mesh of 5,120 faces (the bunny's size): unwrapping and baking need
    some real-sized surface, not a particular scan, so these tests run without ../shared/data."""
    mesh = bumpy_sphere(subdivisions=4)
    v = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    v = (v - (v.amax(0) + v.amin(0)) / 2) / (v.amax(0) - v.amin(0)).max() * 1.6  # centred, size 1.6
    return Mesh(v, torch.as_tensor(np.asarray(mesh.faces)))


def position_colour(points: torch.Tensor) -> torch.Tensor:
    """A smooth colour field over the box: what a learned albedo looks like to the baker."""
    return ((points / 0.8 + 1.0) / 2.0).clamp(0, 1)


@pytest.fixture(scope="module")
def baked(surface: Mesh) -> tuple[Mesh, torch.Tensor]:
    return textured_mesh(surface, position_colour, TorchRasterizer(), texture_size=512)


def test_unwrap_splits_seams_and_keeps_the_surface(surface: Mesh) -> None:
    unwrapped = unwrap_uv(surface, texture_size=256)
    assert unwrapped.v_tex is not None and unwrapped.n_faces == surface.n_faces
    assert unwrapped.n_vertices > surface.n_vertices  # split along chart seams
    assert float(unwrapped.v_tex.min()) >= 0.0 and float(unwrapped.v_tex.max()) <= 1.0
    # same triangles in space
    a = surface.v_pos[surface.t_pos_idx].sum(1).sort(0).values
    b = unwrapped.v_pos[unwrapped.t_pos_idx].sum(1).sort(0).values
    assert torch.allclose(a, b, atol=1e-5)


def test_baked_texture_reproduces_the_colour_field(baked: tuple[Mesh, torch.Tensor]) -> None:
    mesh, texture = baked
    at_vertices = sample_texture(texture, mesh.v_tex)
    error = (at_vertices - position_colour(mesh.v_pos)).abs()
    print(f"baked texture vs field at vertices: mean {error.mean():.4f}, max {error.max():.4f}")
    assert float(error.mean()) < 0.01
    assert float(error.max()) < 0.08  # seam vertices read dilated texels: still the surface's colour


def test_dilation_leaves_no_background_texel(surface: Mesh) -> None:
    unwrapped = unwrap_uv(surface, texture_size=128)
    texture, mask = bake_texture(unwrapped, lambda p: torch.ones(p.shape[0], 3), 128, TorchRasterizer())
    assert 0.2 < float(mask.float().mean()) < 1.0  # charts cover part of the image
    assert float(texture[~mask].abs().max()) == 0.0  # before dilation the gaps are empty
    assert torch.equal(dilate(texture, mask), torch.ones_like(texture))


def _vertex_colours_after_loading(path: Path) -> tuple[np.ndarray, np.ndarray]:
    loaded = trimesh.load(str(path), force="mesh", process=False)
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    colours = loaded.visual.to_color().vertex_colors[:, :3] / 255.0
    return np.asarray(loaded.vertices), colours


def test_obj_mtl_png_load_with_their_texture(tmp_path: Path, baked: tuple[Mesh, torch.Tensor]) -> None:
    mesh, texture = baked
    path = write_obj(str(tmp_path / "model.obj"), mesh, texture.numpy())
    assert (tmp_path / "model.mtl").read_text().count("map_Kd model_albedo.png") == 1
    assert (tmp_path / "model_albedo.png").is_file()
    vertices, colours = _vertex_colours_after_loading(Path(path))
    expected = position_colour(torch.as_tensor(vertices, dtype=torch.float32)).numpy()
    assert np.abs(colours - expected).mean() < 0.02


def test_glb_has_a_pbr_texture_and_is_valid_gltf(tmp_path: Path, baked: tuple[Mesh, torch.Tensor]) -> None:
    mesh, texture = baked
    path = write_glb(str(tmp_path / "model.glb"), mesh, texture.numpy(), y_up=False)
    loaded = trimesh.load(path, force="mesh", process=False)
    assert isinstance(loaded.visual.material, trimesh.visual.material.PBRMaterial)
    assert loaded.visual.material.baseColorTexture is not None
    vertices, colours = _vertex_colours_after_loading(Path(path))
    expected = position_colour(torch.as_tensor(vertices, dtype=torch.float32)).numpy()
    assert np.abs(colours - expected).mean() < 0.02
    report = gltf_report(path)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    assert report["issues"]["numWarnings"] == 0, report["issues"]["messages"]
