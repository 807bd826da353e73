"""Laplacian smoothness and normal consistency: zero on flat meshes, larger on bumps / noise, and
gradient descent on them smooths a noisy mesh."""

from __future__ import annotations

import pytest
import torch
import trimesh

from threestudio_like.mesh.regularisers import laplacian_smoothness_loss, normal_consistency_loss


def grid_mesh(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat n x n vertex grid in the z = 0 plane, two consistently wound triangles per cell."""
    xs = torch.linspace(-1, 1, n)
    yy, xx = torch.meshgrid(xs, xs, indexing="ij")
    v = torch.stack([xx, yy, torch.zeros_like(xx)], -1).reshape(-1, 3)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1), idx[1:, 1:].reshape(-1), idx[1:, :-1].reshape(-1)
    f = torch.cat([torch.stack([a, b, c], -1), torch.stack([a, c, d], -1)])
    return v, f


def sphere(subdivisions: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    return torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.int64)


def test_flat_grid_has_zero_normal_consistency_and_a_bump_raises_both_losses():
    v, f = grid_mesh(6)
    assert normal_consistency_loss(v, f).item() == pytest.approx(0.0, abs=1e-6)
    w = v.clone()
    w[:, 2] = 0.3 * w[:, 0] - 0.2 * w[:, 1]  # a tilted plane is still flat
    assert normal_consistency_loss(w, f).item() == pytest.approx(0.0, abs=1e-6)
    # the uniform Laplacian of a regular grid is 0 at interior vertices; boundary vertices of an open
    # grid are not at their neighbours' mean, but only in-plane: nothing points out of the surface
    lap_flat = laplacian_smoothness_loss(v, f).item()
    assert laplacian_smoothness_loss(v + torch.tensor([0.3, -0.2, 0.7]), f).item() == pytest.approx(lap_flat, rel=1e-5)
    bumped = v.clone()
    bumped[14, 2] = 0.5  # interior vertex (row 2, col 2) lifted out of the plane; its 6 neighbours are interior
    assert normal_consistency_loss(bumped, f).item() > 0.01
    # out-of-plane Laplacian: 0.5 at the vertex, -0.5 / 6 at each of its 6 neighbours; mean over 36 vertices
    expected_increase = (0.5**2 + 6 * (0.5 / 6) ** 2) / 36
    assert laplacian_smoothness_loss(bumped, f).item() - lap_flat == pytest.approx(expected_increase, rel=1e-4)
    # the same grid bent everywhere (noise in z) scores far worse on both
    noisy = v.clone()
    noisy[:, 2] = 0.2 * torch.randn(36, generator=torch.Generator().manual_seed(0))
    assert laplacian_smoothness_loss(noisy, f).item() > lap_flat + 0.01
    assert normal_consistency_loss(noisy, f).item() > 0.05


def test_laplacian_is_exact_on_a_tiny_example():
    # a fan: centre vertex 0 with four neighbours at (+-1, 0), (0, +-1); lifting the centre by h
    v = torch.tensor([[0.0, 0.0, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    # centre: (0, 0, 0.5) - mean of rim = (0, 0, 0.5) -> 0.25
    # rim vertex 1: neighbours 0, 2, 4 -> mean (0, 0, 0.5/3); v1 - mean = (1, 0, -1/6) -> 1 + 1/36
    expected = (0.25 + 4 * (1 + 1 / 36)) / 5
    assert laplacian_smoothness_loss(v, f).item() == pytest.approx(expected, rel=1e-6)


def test_noisy_sphere_scores_worse_than_a_smooth_one():
    v, f = sphere(2)
    noisy = v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0))
    assert normal_consistency_loss(noisy, f) > 2 * normal_consistency_loss(v, f)
    assert laplacian_smoothness_loss(noisy, f) > 2 * laplacian_smoothness_loss(v, f)


@pytest.mark.parametrize("loss_fn", [laplacian_smoothness_loss, normal_consistency_loss])
def test_gradient_descent_on_the_loss_smooths_a_noisy_mesh(loss_fn):
    v, f = sphere(2)
    noise = 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
    x = (v + noise).requires_grad_()
    opt = torch.optim.Adam([x], lr=2e-3)
    start_nc = normal_consistency_loss(x, f).item()
    start_err = (x.detach().norm(dim=-1) - 1).abs().mean().item()  # distance from the true sphere
    first = loss_fn(x, f).item()
    for _ in range(150):
        loss = loss_fn(x, f)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn(x, f).item() < 0.3 * first
    assert normal_consistency_loss(x, f).item() < 0.5 * start_nc  # the surface got smoother
    # and it is still a closed blob near the sphere, not collapsed to a point
    radius = x.detach().norm(dim=-1)
    assert radius.mean().item() > 0.7
    assert (radius - radius.mean()).abs().mean().item() < start_err


def test_losses_are_vectorised_and_fast_enough_for_big_meshes():
    v, f = sphere(5)  # 10k vertices, 20k faces
    v = v.clone().requires_grad_()
    total = laplacian_smoothness_loss(v, f) + normal_consistency_loss(v, f)
    total.backward()
    assert torch.isfinite(v.grad).all()
