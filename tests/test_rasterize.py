"""The built-in PyTorch rasterizer: coverage, interpolation, depth test, gradients, silhouette fitting."""

from __future__ import annotations

import math
import time

import pytest
import torch
import trimesh

from threestudio_like.mesh.rasterize import NvdiffrastRasterizer, TorchRasterizer, make_rasterizer, vertex_transform
from threestudio_like.mesh.regularisers import laplacian_smoothness_loss


def pixel_centres(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NDC x, y of every pixel centre, float64, [H, W] (row 0 at NDC y = -1)."""
    ys = (2 * torch.arange(height, dtype=torch.float64) + 1) / height - 1
    xs = (2 * torch.arange(width, dtype=torch.float64) + 1) / width - 1
    return torch.meshgrid(xs, ys, indexing="xy")


def reference_rasterize(pos: torch.Tensor, tri: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Naive reference (one view): loop over triangles, perspective-correct barycentrics in float64 at
    every pixel centre, keep the nearest fragment with z/w in [-1, 1]. Returns [H, W, 4] like rast."""
    x, y = pixel_centres(height, width)
    out = torch.zeros(height, width, 4, dtype=torch.float64)
    best = torch.full((height, width), math.inf, dtype=torch.float64)
    for f, (i0, i1, i2) in enumerate(tri.tolist()):
        v = pos[[i0, i1, i2]].double()
        if bool((v[:, 3] <= 0).any()):
            continue
        qx = v[:, 0, None, None] - x * v[:, 3, None, None]
        qy = v[:, 1, None, None] - y * v[:, 3, None, None]
        c = torch.stack([qx[(k + 1) % 3] * qy[(k + 2) % 3] - qx[(k + 2) % 3] * qy[(k + 1) % 3] for k in range(3)])
        s = c.sum(0)
        b = c / s
        inside = (b >= 0).all(0)
        z = (b * v[:, 2, None, None]).sum(0) / (b * v[:, 3, None, None]).sum(0)
        win = inside & (z >= -1) & (z <= 1) & (z < best)
        best = torch.where(win, z, best)
        out[win] = torch.stack([b[0], b[1], z, torch.full_like(z, f + 1.0)], -1)[win]
    return out


def test_single_triangle_coverage_matches_the_inside_test_at_pixel_centres():
    r = TorchRasterizer()
    gen = torch.Generator().manual_seed(0)
    height, width = 19, 23  # not square, odd sizes: catches row / column mix-ups
    x, y = pixel_centres(height, width)
    for _ in range(6):
        xy = torch.rand(3, 2, generator=gen, dtype=torch.float64) * 2.4 - 1.2  # may stick out of the screen
        pos = torch.cat([xy, torch.full((3, 1), 0.5, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64)], 1)
        rast, rast_db = r.rasterize(pos[None].float(), torch.tensor([[0, 1, 2]]), (height, width))
        assert rast_db is None
        (ax, ay), (bx, by), (cx, cy) = xy.tolist()
        e0 = (bx - x) * (cy - y) - (cx - x) * (by - y)
        e1 = (cx - x) * (ay - y) - (ax - x) * (cy - y)
        e2 = (ax - x) * (by - y) - (bx - x) * (ay - y)
        inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))  # either winding
        assert inside.any()
        assert torch.equal(rast[0, ..., 3] > 0, inside)
        assert torch.equal(rast[0, ..., 3][inside], torch.ones(int(inside.sum())))  # id 0 -> channel value 1


def test_interpolated_vertex_colours_are_the_exact_barycentric_mix():
    r = TorchRasterizer()
    xy = torch.tensor([[-0.9, -0.8], [0.85, -0.6], [-0.1, 0.9]], dtype=torch.float64)
    pos = torch.cat([xy, torch.zeros(3, 1, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64)], 1)[None]
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    rast, _ = r.rasterize(pos, torch.tensor([[0, 1, 2]]), (16, 16))
    img, db = r.interpolate(colours, rast, torch.tensor([[0, 1, 2]]))
    assert db is None
    x, y = pixel_centres(16, 16)
    # analytic barycentrics of the pixel centre (affine case, w = 1)
    (ax, ay), (bx, by), (cx, cy) = xy.tolist()
    area = (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)
    l0 = ((bx - x) * (cy - y) - (cx - x) * (by - y)) / area
    l1 = ((cx - x) * (ay - y) - (ax - x) * (cy - y)) / area
    expected = torch.stack([l0, l1, 1 - l0 - l1], -1)
    inside = (expected >= 0).all(-1)
    assert inside.sum() > 50
    torch.testing.assert_close(img[0][inside], expected[inside], atol=1e-9, rtol=0)
    assert torch.equal(img[0][~inside], torch.zeros_like(img[0][~inside]))  # background is 0
    assert torch.equal(rast[0][~inside], torch.zeros_like(rast[0][~inside]))


def test_perspective_correct_barycentrics_reproduce_the_pixel_centre():
    """Interpolating clip-space x, y, w must give x / w, y / w = the pixel's NDC centre."""
    r = TorchRasterizer()
    pos = torch.tensor([[[-2.0, -1.5, 0.2, 3.0], [1.0, -0.5, 0.5, 1.2], [0.2, 1.6, 0.1, 2.0]]], dtype=torch.float64)
    rast, _ = r.rasterize(pos, torch.tensor([[0, 1, 2]]), (12, 14))
    interp, _ = r.interpolate(pos[0, :, [0, 1, 3]], rast, torch.tensor([[0, 1, 2]]))
    covered = rast[0, ..., 3] > 0
    x, y = pixel_centres(12, 14)
    assert covered.sum() > 20
    torch.testing.assert_close(interp[0, ..., 0][covered] / interp[0, ..., 2][covered], x[covered], atol=1e-9, rtol=0)
    torch.testing.assert_close(interp[0, ..., 1][covered] / interp[0, ..., 2][covered], y[covered], atol=1e-9, rtol=0)


def test_nearer_triangle_wins_whatever_the_order_and_depth_channel_is_z_over_w():
    r = TorchRasterizer()
    near = [[-0.8, -0.8, -0.2, 1.0], [0.8, -0.8, -0.2, 1.0], [0.0, 0.8, -0.2, 1.0]]
    far = [[-0.9, -0.6, 0.4, 1.0], [0.9, -0.6, 0.4, 1.0], [0.0, 0.9, 0.4, 1.0]]
    for first, second, near_id in ((near, far, 1), (far, near, 2)):
        pos = torch.tensor([first + second])
        rast, _ = r.rasterize(pos, torch.tensor([[0, 1, 2], [3, 4, 5]]), (32, 32))
        ids = rast[0, ..., 3]
        both = torch.tensor([[16, 16], [10, 12]])
        for i, j in both.tolist():
            assert ids[i, j] == near_id
            assert rast[0, i, j, 2].item() == pytest.approx(-0.2, abs=1e-6)
        assert set(ids.unique().tolist()) == {0.0, 1.0, 2.0}  # the far one still shows around the near one


def test_matches_a_naive_reference_rasterizer_on_random_triangles_in_perspective():
    gen = torch.Generator().manual_seed(1)
    n = 30
    centre = torch.rand(n, 1, 3, generator=gen) * torch.tensor([1.6, 1.6, 3.0]) - torch.tensor([0.8, 0.8, 4.5])
    verts = (centre + 0.8 * torch.randn(n, 3, 3, generator=gen)).reshape(-1, 3)
    proj = torch.tensor([[1.2, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, -1.02, -0.2], [0, 0, -1.0, 0]])
    pos = vertex_transform(verts, proj[None])
    tri = torch.arange(3 * n).reshape(n, 3)
    rast, _ = TorchRasterizer().rasterize(pos, tri, (20, 26))
    ref = reference_rasterize(pos[0], tri, 20, 26)
    same = rast[0, ..., 3] == ref[..., 3]
    assert same.float().mean() > 0.995  # only exact ties / pixel centres on edges may differ
    assert (ref[..., 3] > 0).sum() > 200 and len(ref[..., 3].unique()) > 10
    torch.testing.assert_close(rast[0][same].double(), ref[same], atol=2e-4, rtol=0)


def test_behind_camera_triangles_are_skipped_and_depth_is_clipped_to_minus_one_one():
    r = TorchRasterizer()
    tri = torch.tensor([[0, 1, 2]])
    base = torch.tensor([[-0.8, -0.8, 0.0, 1.0], [0.8, -0.8, 0.0, 1.0], [0.0, 0.8, 0.0, 1.0]])
    behind = base.clone()
    behind[2, 3] = -1.0  # one vertex behind the camera: the whole triangle is skipped
    assert (r.rasterize(behind[None], tri, (16, 16))[0][..., 3] == 0).all()
    slanted = base.clone()
    slanted[:, 2] = torch.tensor([-1.5, -1.5, 1.5])  # z/w from -1.5 (bottom) to 1.5 (top)
    rast = r.rasterize(slanted[None], tri, (16, 16))[0][0]
    covered = rast[..., 3] > 0
    assert covered.any()
    assert (rast[..., 2][covered].abs() <= 1).all()
    full = r.rasterize(base[None], tri, (16, 16))[0][0, ..., 3] > 0
    assert covered.sum() < full.sum()  # the parts in front of the near / beyond the far plane are gone


def test_chunking_of_candidate_pairs_does_not_change_the_result():
    gen = torch.Generator().manual_seed(2)
    verts = torch.rand(60, 3, generator=gen) * 2 - 1
    pos = torch.cat([verts, torch.ones(60, 1)], 1)[None].repeat(2, 1, 1)
    pos[1, :, :2] *= 1.3
    tri = torch.randint(0, 60, (40, 3), generator=gen)
    big, _ = TorchRasterizer().rasterize(pos, tri, (24, 24))
    small, _ = TorchRasterizer(max_pairs=97).rasterize(pos, tri, (24, 24))
    assert torch.equal(big, small)


def test_uv_and_depth_gradients_match_finite_differences():
    r = TorchRasterizer()
    pos = torch.tensor([[[-0.7, -0.6, 0.1, 1.3], [0.8, -0.4, 0.3, 0.9], [0.1, 0.75, -0.2, 1.1]]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]])

    # (10 x 10: no pixel centre within the finite-difference step of an edge, so visibility stays fixed)
    def f(p: torch.Tensor) -> torch.Tensor:
        return r.rasterize(p, tri, (10, 10))[0][..., :3]

    assert (f(pos)[..., 0] > 0).sum() > 10
    assert torch.autograd.gradcheck(f, (pos.clone().requires_grad_(),), eps=1e-6, atol=1e-6)
    # and through interpolate, with a per-vertex attribute that also gets gradients
    attr = torch.tensor([[0.3, 1.0], [0.9, -2.0], [0.1, 0.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda p, a: r.interpolate(a, r.rasterize(p, tri, (10, 10))[0], tri)[0], (pos.clone().requires_grad_(), attr), eps=1e-6, atol=1e-6
    )


def _coverage_sum(r: TorchRasterizer, pos: torch.Tensor, tri: torch.Tensor, size: int) -> torch.Tensor:
    rast, _ = r.rasterize(pos, tri, (size, size))
    mask = (rast[..., 3:] > 0).to(pos.dtype)
    return r.antialias(mask, rast, pos, tri).sum()


def test_antialias_gives_silhouette_gradients_with_the_right_sign_and_size():
    r = TorchRasterizer()
    tri = torch.tensor([[0, 1, 2]])
    size = 32
    pos = torch.tensor([[[-0.71, -0.63, 0.0, 1.0], [0.67, -0.52, 0.0, 1.0], [0.13, 0.77, 0.0, 1.0]]], dtype=torch.float64)
    # the antialiased coverage sums to the analytic area in pixels
    (ax, ay), (bx, by), (cx, cy) = pos[0, :, :2].tolist()
    area_px = 0.5 * abs((bx - ax) * (cy - ay) - (cx - ax) * (by - ay)) * (size / 2) ** 2
    p = pos.clone().requires_grad_()
    total = _coverage_sum(r, p, tri, size)
    assert total.item() == pytest.approx(area_px, rel=0.02)
    total.backward()
    grad = p.grad[0]
    # vertex 1 is the rightmost: moving it right (outward) grows the silhouette; vertex 0 the leftmost
    assert grad[1, 0] > 0 and grad[0, 0] < 0 and grad[2, 1] > 0
    # the analytic d(area)/dx of vertex 1, in pixels per NDC unit
    d_area = 0.5 * (cy - ay) * (size / 2) ** 2
    assert grad[1, 0].item() == pytest.approx(d_area, rel=0.25)
    # finite difference of the antialiased image sum (a step small enough to keep visibility fixed)
    h = 1e-4
    plus, minus = pos.clone(), pos.clone()
    plus[0, 1, 0] += h
    minus[0, 1, 0] -= h
    fd = (_coverage_sum(r, plus, tri, size) - _coverage_sum(r, minus, tri, size)) / (2 * h)
    assert grad[1, 0].item() == pytest.approx(fd.item(), rel=1e-3)


def test_antialias_leaves_shared_interior_edges_alone_and_moves_the_outline():
    """A quad of two triangles: the diagonal is no silhouette, so constant colour stays exact inside."""
    r = TorchRasterizer()
    pos = torch.tensor([[[-0.61, -0.57, 0, 1], [0.58, -0.63, 0, 1], [0.62, 0.59, 0, 1], [-0.55, 0.6, 0, 1]]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    p = pos.clone().requires_grad_()
    rast, _ = r.rasterize(p, tri, (24, 24))
    mask = (rast[..., 3:] > 0).double()
    out = r.antialias(mask, rast, p, tri)
    interior = torch.nn.functional.max_pool2d(1 - mask[..., 0][None], 3, 1, 1)[0] == 0  # 1-pixel inset of the quad
    assert (rast[0, ..., 3][interior[0]] == 1).any() and (rast[0, ..., 3][interior[0]] == 2).any()
    assert torch.equal(out[0, ..., 0][interior[0]], torch.ones(int(interior.sum()), dtype=torch.float64))
    out.sum().backward()
    # shared vertices 0 and 2 are corners of the outline; the gradient pushes each corner outward
    assert p.grad[0, 2, 0] > 0 and p.grad[0, 2, 1] > 0 and p.grad[0, 0, 0] < 0 and p.grad[0, 0, 1] < 0


def test_make_rasterizer_and_vertex_transform():
    assert isinstance(make_rasterizer("auto", "cpu"), TorchRasterizer)
    assert isinstance(make_rasterizer("torch", "cpu"), TorchRasterizer)
    with pytest.raises(RuntimeError, match="nvdiffrast"):
        make_rasterizer("nvdiffrast", "cpu")
    with pytest.raises(ValueError):
        make_rasterizer("opengl", "cpu")
    assert hasattr(NvdiffrastRasterizer, "rasterize") and hasattr(NvdiffrastRasterizer, "antialias")
    v = torch.randn(5, 3)
    mvp = torch.randn(2, 4, 4)
    expected = torch.stack([(m @ torch.cat([v, torch.ones(5, 1)], 1).T).T for m in mvp])
    torch.testing.assert_close(vertex_transform(v, mvp), expected)


def _orbit_mvp(n_views: int) -> torch.Tensor:
    from threestudio_like.data.cameras import get_mvp_matrix, get_projection_matrix, look_at_c2w, spherical_to_cartesian

    azimuth = torch.arange(n_views) * (360.0 / n_views)
    elevation = torch.tensor([20.0, -20.0]).repeat(n_views // 2)
    eye = spherical_to_cartesian(elevation, azimuth, torch.full((n_views,), 3.0))
    c2w = look_at_c2w(eye, torch.zeros_like(eye), torch.tensor([[0.0, 0.0, 1.0]]).expand_as(eye))
    return get_mvp_matrix(c2w, get_projection_matrix(torch.full((n_views,), math.radians(45.0)), 1.0, 0.1, 10.0))


def test_silhouette_fitting_from_a_sphere_reaches_bunny_iou_above_0_9(shared_data):
    path = shared_data("bunny.obj")
    torch.manual_seed(0)
    bunny = trimesh.load(str(path), process=False, force="mesh")
    vb = torch.tensor(bunny.vertices, dtype=torch.float32)
    fb = torch.tensor(bunny.faces, dtype=torch.int64)
    lo, hi = vb.min(0).values, vb.max(0).values
    vb = (vb - (lo + hi) / 2) * (2.0 / float((hi - lo).max()))  # unit box [-1, 1]^3
    mvp = _orbit_mvp(8)
    size = 96
    r = TorchRasterizer()

    def silhouette(v: torch.Tensor, f: torch.Tensor, topology=None) -> tuple[torch.Tensor, torch.Tensor]:
        pos = vertex_transform(v, mvp)
        rast, _ = r.rasterize(pos, f, (size, size))
        covered = rast[..., 3:] > 0
        return r.antialias(covered.to(pos.dtype), rast, pos, f, topology_hash=topology), covered[..., 0]

    with torch.no_grad():
        target, target_mask = silhouette(vb, fb)

    def mean_iou(mask: torch.Tensor) -> float:
        inter = (mask & target_mask).flatten(1).sum(1).float()
        union = (mask | target_mask).flatten(1).sum(1).float()
        return float((inter / union).mean())

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    v0 = torch.tensor(sphere.vertices, dtype=torch.float32)
    f0 = torch.tensor(sphere.faces, dtype=torch.int64)
    topology = r.construct_topology_hash(f0)
    offsets = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([offsets], lr=0.01)
    with torch.no_grad():
        iou_before = mean_iou(silhouette(v0, f0)[1])
    start = time.perf_counter()
    for _ in range(120):
        v = v0 + offsets
        image, _ = silhouette(v, f0, topology)
        loss = (image - target).square().mean() + 10.0 * laplacian_smoothness_loss(v, f0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        iou_after = mean_iou(silhouette(v0 + offsets, f0)[1])
    print(f"silhouette IoU over 8 views: {iou_before:.3f} -> {iou_after:.3f} ({time.perf_counter() - start:.1f} s)")
    assert iou_before < 0.6
    assert iou_after > 0.9


def test_clip_space_is_float32_under_autocast_and_keeps_the_depth_order_of_nearby_surfaces():
    from threestudio_like.data.cameras import get_mvp_matrix, get_projection_matrix, look_at_c2w
    from threestudio_like.renderers.mesh_renderer import clip_positions

    # two facing triangles 2 mm apart, 2 m from the camera, near 0.01 / far 100 (threestudio's planes);
    # the farther one has the smaller id, so a depth tie would wrongly show it
    far = [[0.0, -0.5, -0.5], [0.0, 0.5, -0.5], [0.0, 0.0, 0.5]]
    near = [[0.002, -0.5, -0.5], [0.002, 0.5, -0.5], [0.002, 0.0, 0.5]]
    v_pos = torch.tensor(far + near)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]])
    eye = torch.tensor([[2.0, 0.0, 0.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c2w = look_at_c2w(eye, torch.zeros_like(eye), torch.tensor([[0.0, 0.0, 1.0]]))
        mvp = get_mvp_matrix(c2w, get_projection_matrix(torch.tensor([math.radians(40.0)]), 1.0, 0.01, 100.0))
        pos = clip_positions(v_pos, mvp)
        assert mvp.dtype == torch.float32 and pos.dtype == torch.float32
        assert vertex_transform(v_pos.half(), mvp.half()).dtype == torch.float32
        rast, _ = TorchRasterizer().rasterize(pos, tri, (16, 16))
    torch.testing.assert_close(pos, clip_positions(v_pos, mvp))  # the same numbers as without autocast
    ids = rast[0, ..., 3]
    assert (ids == 2.0).sum() > 30 and not (ids == 1.0).any()  # the nearer triangle wherever they overlap


def test_no_triangles_draws_nothing_and_antialias_is_the_identity():
    r = TorchRasterizer()
    pos = torch.rand(2, 5, 4) + torch.tensor([0.0, 0.0, 0.0, 1.0])
    no_tri = torch.zeros(0, 3, dtype=torch.int32)
    rast, _ = r.rasterize(pos, no_tri, (6, 7))
    assert rast.shape == (2, 6, 7, 4) and torch.all(rast == 0)
    attr, _ = r.interpolate(torch.rand(5, 3), rast, no_tri)
    assert torch.all(attr == 0)
    color = torch.rand(2, 6, 7, 3)
    torch.testing.assert_close(r.antialias(color, rast, pos, no_tri), color)
