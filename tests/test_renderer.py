"""Volume renderer, occupancy grid and packed compositing against closed forms and simple references."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from threestudio_like.renderers.occupancy import OccupancyGrid, march_rays, ray_box_intersection
from threestudio_like.renderers.packed import exclusive_segment_cumsum, render_weights_from_density
from threestudio_like.renderers.volume_renderer import NeRFVolumeRenderer


# --------------------------------------------------------------------------- toy parts
class ToyGeometry(nn.Module):
    """Analytic density field with the implicit-volume interface; counts evaluated points."""

    def __init__(self, density_fn, radius: float = 1.0) -> None:
        super().__init__()
        self.density_fn = density_fn
        self.cfg = SimpleNamespace(radius=radius)
        self.register_buffer("bbox", torch.tensor([[-radius] * 3, [radius] * 3]))
        self.scale = nn.Parameter(torch.ones(()))  # something for gradients to reach
        self.n_evaluated = 0

    def forward_density(self, points):
        return self.density_fn(points)[..., None] * self.scale

    def forward(self, points, output_normal: bool = False):
        self.n_evaluated += points.shape[0]
        out = {
            "density": self.forward_density(points),
            "features": torch.cat([torch.sin(3 * points), torch.cos(points[..., :1])], dim=-1),
        }
        if output_normal:
            out["normal"] = torch.nn.functional.normalize(points, dim=-1)
        return out


class ToyMaterial(nn.Module):
    requires_normal = False

    def forward(self, features, viewdirs, positions, light_positions, shading_normal=None, **kwargs):
        return torch.sigmoid(features[..., :3])


class ToyNormalMaterial(ToyMaterial):
    requires_normal = True

    def forward(self, features, viewdirs, positions, light_positions, shading_normal=None, **kwargs):
        return torch.sigmoid(features[..., :3]) * (shading_normal[..., 2:] + 1) / 2


class ToyBackground(nn.Module):
    def forward(self, dirs):
        return torch.full_like(dirs, 0.25)


def box_density(half: float, sigma: float):
    return lambda p: sigma * (p.abs() <= half).all(dim=-1).to(p.dtype)


def ball_density(radius: float, sigma: float):
    return lambda p: sigma * (p.norm(dim=-1) <= radius).to(p.dtype)


def make_renderer(geometry, material=None, **cfg) -> NeRFVolumeRenderer:
    cfg = {"backend": "torch", **cfg}
    return NeRFVolumeRenderer(cfg, geometry=geometry, material=material or ToyMaterial(), background=ToyBackground())


def perspective_rays(size: int = 16, distance: float = 3.0, fov: float = 50.0):
    """Camera on +x looking at the origin (world z up); rays [1, size, size, 3]."""
    s = math.tan(math.radians(fov) / 2)
    u = torch.linspace(-s, s, size)
    yy, zz = torch.meshgrid(u, u, indexing="xy")
    d = torch.stack([-torch.ones_like(yy), yy, -zz], dim=-1)
    d = d / d.norm(dim=-1, keepdim=True)
    o = torch.tensor([distance, 0.0, 0.0]).expand_as(d)
    return o[None].contiguous(), d[None].contiguous()


LIGHT = torch.tensor([[3.0, 3.0, 3.0]])


# --------------------------------------------------------------------------- closed forms
def homogeneous_depth(t0, t1, sigma):
    """E[sum w t] for constant density on [t0, t1]: integral of t sigma exp(-sigma (t - t0))."""
    return t0 + 1 / sigma - (t1 + 1 / sigma) * torch.exp(-sigma * (t1 - t0))


def test_homogeneous_slab_matches_closed_form():
    sigma = 0.7
    geometry = ToyGeometry(lambda p: torch.full(p.shape[:-1], sigma))  # the whole box is the medium
    renderer = make_renderer(geometry, num_samples_per_ray=256).eval()
    # rays that enter through x = +1 and leave through x = -1 (checked below): t0 = 2/|dx|, L = 2/|dx|
    torch.manual_seed(0)
    d = torch.cat([-torch.ones(1, 4, 5, 1), 0.3 * (torch.rand(1, 4, 5, 2) - 0.5)], dim=-1)
    d = d / d.norm(dim=-1, keepdim=True)
    o = torch.cat([torch.full((1, 4, 5, 1), 3.0), 0.5 * (torch.rand(1, 4, 5, 2) - 0.5)], dim=-1)
    d[0, 0, 0] = torch.tensor([-1.0, 0.0, 0.0])  # exactly axis-parallel: zero components must be handled
    exit_point = o + d * (4 / d[..., :1].abs())
    assert (exit_point[..., 1:].abs() < 1).all()
    t0 = 2 / d[..., 0].abs()
    length = 2 / d[..., 0].abs()
    out = renderer(o, d, LIGHT)
    expected_opacity = 1 - torch.exp(-sigma * length)
    torch.testing.assert_close(out["opacity"][..., 0], expected_opacity, atol=2e-5, rtol=0)
    torch.testing.assert_close(out["depth"][..., 0], homogeneous_depth(t0, t0 + length, sigma), atol=1e-4, rtol=0)


def test_constant_density_sphere_matches_closed_form():
    sigma, radius = 1.5, 0.6
    renderer = make_renderer(ToyGeometry(ball_density(radius, sigma)), num_samples_per_ray=512).eval()
    b = torch.linspace(0.0, 0.75, 16)  # impact parameters, the last few miss the ball
    o = torch.stack([torch.full_like(b, 3.0), b * 0.6, b * 0.8], dim=-1)[None, None]
    d = torch.tensor([-1.0, 0.0, 0.0]).expand_as(o).contiguous()
    out = renderer(o, d, LIGHT)
    half_chord = torch.sqrt((radius**2 - b**2).clamp_min(0))
    expected = 1 - torch.exp(-sigma * 2 * half_chord)
    step = renderer.render_step_size
    # the boundary is resolved to about one marching step at each end
    torch.testing.assert_close(out["opacity"][0, 0, :, 0], expected, atol=2 * sigma * step, rtol=0)
    t0 = 3 - half_chord
    depth = homogeneous_depth(t0, t0 + 2 * half_chord, sigma)
    hit = b < radius - 2 * step
    torch.testing.assert_close(out["depth"][0, 0, hit, 0], depth[hit], atol=6 * step, rtol=0)
    assert (out["opacity"][0, 0, b > radius, 0] == 0).all()


# --------------------------------------------------------------------------- occupancy grid
def test_occupancy_grid_matches_dense_sampling_with_far_fewer_samples():
    # a dense cube aligned with the 32^3 grid cells ([-0.25, 0.25] = 8 cells of 1/16) in a big empty box
    rays_o, rays_d = perspective_rays(20, fov=30.0)
    images = {}
    counts = {}
    for name, cfg in {
        "dense": {"grid_prune": False},
        "grid": {"grid_prune": True, "prune_alpha_threshold": False},
        "grid+alpha": {"grid_prune": True, "prune_alpha_threshold": True},
    }.items():
        geometry = ToyGeometry(box_density(0.25, 60.0))
        renderer = make_renderer(geometry, num_samples_per_ray=256, **cfg)
        renderer.train()
        renderer.update_step(0)  # first update (warm-up: every cell measured)
        renderer.eval()
        geometry.n_evaluated = 0
        images[name] = renderer(rays_o, rays_d, LIGHT)
        counts[name] = geometry.n_evaluated
    assert images["dense"]["opacity"].max() > 0.9  # the cube is visible and opaque
    for key in ("comp_rgb", "opacity", "depth"):
        torch.testing.assert_close(images["grid"][key], images["dense"][key], atol=1e-5, rtol=0)
        # visibility pruning drops only samples behind ~opaque material (T < 1e-4)
        torch.testing.assert_close(images["grid+alpha"][key], images["dense"][key], atol=1e-3, rtol=0)
    assert counts["grid"] < 0.2 * counts["dense"], counts
    assert counts["grid+alpha"] < 0.6 * counts["grid"], counts  # occluded samples are skipped


def test_occupancy_update_marks_only_dense_cells_and_is_saved():
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=8)
    assert grid.occupied.all()  # before any update nothing is skipped
    lo, hi = torch.tensor([0.0, -0.5, -1.0]), torch.tensor([0.5, 0.5, -0.5])
    grid.update(0, lambda p: 10.0 * ((p >= lo) & (p <= hi)).all(-1, keepdim=True).float(), step_size=0.01)
    # cells of side 0.25 indexed [x, y, z]: x in [0, 0.5] -> 4..5, y in [-0.5, 0.5] -> 2..5, z in [-1, -0.5] -> 0..1
    expected = torch.zeros(8, 8, 8, dtype=torch.bool)
    expected[4:6, 2:6, 0:2] = True
    assert torch.equal(grid.occupied, expected)
    points = torch.tensor([[0.3, 0.1, -0.7], [-0.3, 0.1, -0.7], [0.3, 0.1, 0.7], [0.3, 0.1, -1.2]])
    assert grid.is_occupied(points).tolist() == [True, False, False, False]  # the last is outside the box
    state = grid.state_dict()
    assert {"density_ema", "occupied", "bbox"} <= set(state)
    fresh = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=8)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.occupied, expected)

    # after warm-up only a subset is measured: a quarter of the cells plus up to as many occupied ones
    measured = []
    grid.update(1000, lambda p: (measured.append(p.shape[0]), torch.zeros(p.shape[0], 1))[1], step_size=0.01)
    assert sum(measured) == 512 // 4 + min(512 // 4, int(expected.sum()))
    # the EMA decays instead of forgetting: one empty measurement does not clear a dense cell
    assert grid.occupied[4, 3, 1]


def test_a_fresh_grid_first_updated_after_warmup_measures_every_cell():
    # a grid first updated past the warmup (as janus_floor's fits once were): a partial first update
    # would leave the unmeasured three quarters of a solid object empty, holes all through it
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=8)
    grid.update(10**6, lambda p: torch.full((p.shape[0], 1), 10.0), step_size=0.01)
    assert grid.occupied.all()
    measured = []
    grid.update(10**6 + 16, lambda p: (measured.append(p.shape[0]), torch.full((p.shape[0], 1), 10.0))[1], step_size=0.01)
    assert sum(measured) == 512 // 4 + 512 // 4  # measured once: later updates are partial again


def cell_constant_density(resolution: int, alphas: dict[int, float], step_size: float):
    """A field constant in each cell of the [-1, 1]^3 grid whose step opacity is ``alphas[flat cell]`` (else 0)."""
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution)
    sigma = torch.zeros(grid.n_cells)
    for cell, alpha in alphas.items():
        sigma[cell] = -math.log(1.0 - alpha) / step_size  # 1 - exp(-sigma * step) = alpha
    return lambda p: sigma[grid.cell_indices(p)[0]][:, None]


def test_occupancy_threshold_is_the_mean_over_all_cells_as_in_nerfacc():
    # nerfacc: occupied = alpha > min(occ_thre, mean of every cell's alpha), empty cells included.
    # Step opacities 0.04, 0.008, 0.002 and five empty cells: mean = 0.05 / 8 = 0.00625 < occ_thre = 0.01,
    # so the 0.008 cell is occupied (a mean over the positive cells only, 0.0167, would drop it).
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=2)
    grid.update(0, cell_constant_density(2, {0: 0.04, 5: 0.008, 6: 0.002}, 0.5), step_size=0.5, occ_thre=0.01)
    torch.testing.assert_close(grid.cell_alphas(0.5)[[0, 5, 6]], torch.tensor([0.04, 0.008, 0.002]))
    assert torch.nonzero(grid.occupied.reshape(-1))[:, 0].tolist() == [0, 5]
    # above occ_thre the mean does not matter: threshold 0.01
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=2)
    grid.update(0, cell_constant_density(2, {c: 0.5 for c in range(4)} | {7: 0.009}, 0.5), step_size=0.5)
    assert torch.nonzero(grid.occupied.reshape(-1))[:, 0].tolist() == [0, 1, 2, 3]


def test_nan_density_is_never_skipped_as_empty_space():
    """A field that turned NaN must show in the render (where training reports it), not vanish."""
    nan_box = lambda p: torch.where((p.abs() <= 0.25).all(-1), torch.nan, 0.0)  # noqa: E731
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=8)
    grid.update(0, lambda p: nan_box(p)[:, None], step_size=0.01)
    expected = torch.zeros(8, 8, 8, dtype=torch.bool)
    expected[3:5, 3:5, 3:5] = True  # the cells of [-0.25, 0.25]^3
    assert torch.equal(grid.occupied, expected)
    assert torch.isfinite(grid.density_ema).all()  # the saved grid state stays finite

    renderer = make_renderer(ToyGeometry(nan_box), num_samples_per_ray=64)
    renderer.train()
    renderer.update_step(0)
    rays_o, rays_d = perspective_rays(8)
    out = renderer(rays_o, rays_d, LIGHT)
    through_box = out["opacity"][0, 3:5, 3:5]  # the centre rays cross the NaN box
    assert torch.isnan(through_box).all() and torch.isnan(out["comp_rgb"][0, 3:5, 3:5]).all()
    assert torch.isfinite(out["opacity"][0, 0, 0])  # a corner ray misses it


def test_march_rays_partitions_the_chord_exactly():
    torch.manual_seed(1)
    o = torch.randn(50, 3) * 2
    d = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    bbox = torch.tensor([[-1.0] * 3, [1.0] * 3])
    enter, exit_ = ray_box_intersection(o, d, bbox)
    enter = enter.clamp_min(0)
    for randomized in (False, True):
        s = march_rays(o, d, bbox, step_size=0.05, randomized=randomized)
        assert (s.ray_indices[1:] >= s.ray_indices[:-1]).all()  # packed by ray
        assert ((s.t_ends - s.t_starts) <= 0.05 + 1e-6).all() and ((s.t_ends - s.t_starts) > 0).all()
        for r in range(50):
            sel = s.ray_indices == r
            if exit_[r] <= enter[r]:
                assert not sel.any()
                continue
            starts, ends = s.t_starts[sel], s.t_ends[sel]
            assert torch.equal(starts[1:], ends[:-1])  # contiguous intervals
            torch.testing.assert_close(starts[0], enter[r])
            torch.testing.assert_close(ends[-1], exit_[r])


# --------------------------------------------------------------------------- packed compositing
def test_packed_compositing_equals_per_ray_loop():
    torch.manual_seed(2)
    n_rays = 7
    counts = torch.tensor([3, 0, 5, 1, 0, 8, 4])
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    n = ray_indices.shape[0]
    t_starts = torch.rand(n) * 3
    t_ends = t_starts + torch.rand(n) * 0.5
    sigmas = (torch.rand(n) * 4).requires_grad_(True)
    weights, trans, alphas = render_weights_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)

    ref_w, ref_t = [], []
    for r in range(n_rays):
        sel = ray_indices == r
        a = 1 - torch.exp(-sigmas[sel] * (t_ends[sel] - t_starts[sel]))
        t = torch.cumprod(torch.cat([torch.ones(1), 1 - a]), dim=0)[:-1]
        ref_t.append(t)
        ref_w.append(t * a)
    ref_w, ref_t = torch.cat(ref_w), torch.cat(ref_t)
    torch.testing.assert_close(weights, ref_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(trans, ref_t, atol=1e-6, rtol=1e-5)
    g = torch.autograd.grad((weights * torch.arange(n)).sum(), sigmas)[0]
    g_ref = torch.autograd.grad((ref_w * torch.arange(n)).sum(), sigmas)[0]
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)

    values = torch.rand(n)
    excl = exclusive_segment_cumsum(values, ray_indices, n_rays)
    ref = torch.cat([torch.cumsum(values[ray_indices == r], 0) - values[ray_indices == r] for r in range(n_rays)])
    torch.testing.assert_close(excl, ref)


def test_exclusive_cumsum_stays_accurate_after_many_samples():
    # a large running total from earlier rays must not swamp the small sums of a later ray
    n_rays = 1000
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), 500)
    values = torch.full((ray_indices.shape[0],), 1e-3)
    values[ray_indices < n_rays - 1] = 50.0
    excl = exclusive_segment_cumsum(values, ray_indices, n_rays)
    last = excl[ray_indices == n_rays - 1]
    torch.testing.assert_close(last, torch.arange(500, dtype=torch.float32) * 1e-3, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- renderer behaviour
def test_chunked_eval_equals_unchunked():
    rays_o, rays_d = perspective_rays(12)
    outs, rays_per_chunk = [], []
    # unchunked; 13 rays a chunk; at most 13 rays' worth of samples a chunk (the memory bound)
    for chunk, samples in ((0, 0), (13, 0), (0, 13 * 128)):
        torch.manual_seed(0)
        renderer = make_renderer(
            ToyGeometry(ball_density(0.5, 5.0)), ToyNormalMaterial(), num_samples_per_ray=128, eval_chunk_size=chunk, eval_chunk_samples=samples
        )
        renderer.train()
        renderer.update_step(0)
        renderer.eval()
        outs.append(renderer(rays_o, rays_d, LIGHT))
        rays_per_chunk.append(renderer.eval_chunk_rays(rays_o[..., 0].numel()))
    assert outs[0].keys() == outs[1].keys() and "comp_normal" in outs[0]
    assert (outs[0]["opacity"].reshape(-1)[:13] == 0).all()
    for out in outs[1:]:
        for key in outs[0]:
            torch.testing.assert_close(outs[0][key], out[key], atol=1e-6, rtol=0)
    assert rays_per_chunk == [144, 13, 13]  # rays x samples per ray within the bound


def test_training_outputs_gradients_and_background():
    geometry = ToyGeometry(ball_density(0.5, 5.0))
    renderer = make_renderer(geometry, num_samples_per_ray=64, return_comp_normal=True)
    renderer.train()
    rays_o, rays_d = perspective_rays(8)
    torch.manual_seed(0)
    out = renderer(rays_o, rays_d, LIGHT)
    for key in ("weights", "t_points", "t_intervals", "t_dirs", "ray_indices", "normal"):
        assert key in out, key
    # per-sample weights sum to the per-ray opacity, and the composite follows the blend formula
    opacity = torch.zeros(64).index_add(0, out["ray_indices"], out["weights"][:, 0])
    torch.testing.assert_close(opacity, out["opacity"].reshape(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["comp_rgb"], out["comp_rgb_fg"] + 0.25 * (1 - out["opacity"]))
    assert out["comp_normal"].min() >= 0 and out["comp_normal"].max() <= 1
    out["comp_rgb"].sum().backward()
    assert geometry.scale.grad is not None and geometry.scale.grad.abs() > 0

    white = renderer(rays_o, rays_d, LIGHT, bg_color=torch.ones(3))
    torch.testing.assert_close(white["comp_rgb"], white["comp_rgb_fg"] + (1 - white["opacity"]))
    with pytest.raises(ValueError, match="bg_color"):
        renderer(rays_o, rays_d, LIGHT, bg_color=torch.ones(2, 2))


def test_renderer_does_not_own_the_parts_and_updates_on_schedule():
    geometry = ToyGeometry(box_density(0.25, 20.0))
    renderer = make_renderer(geometry, occupancy_update_every=16)
    assert all(k.startswith("occupancy.") for k in renderer.state_dict())
    assert not any(p is geometry.scale for p in renderer.parameters())
    renderer.eval()
    renderer.update_step(0)  # eval: no update
    assert renderer.occupancy.occupied.all()
    renderer.train()
    renderer.update_step(5)  # not an update step
    assert renderer.occupancy.occupied.all()
    renderer.update_step(16)
    assert 0 < renderer.occupancy.occupied.sum() < renderer.occupancy.n_cells


def test_real_parts_train_step_reaches_every_part():
    """implicit-volume + diffuse material + environment map: threestudio config keys, gradients everywhere."""
    from threestudio_like.backgrounds import NeuralEnvironmentMapBackground
    from threestudio_like.experiment import validate_against
    from threestudio_like.materials import DiffuseWithPointLightMaterial
    from threestudio_like.representations.implicit_volume import ImplicitVolume

    system = {  # as in threestudio's dreamfusion-sd.yaml (smaller grid)
        "renderer": {"radius": 1.0, "num_samples_per_ray": 64},
        "material": {"ambient_only_steps": 2001, "albedo_activation": "sigmoid"},
        "background": {"color_activation": "sigmoid", "random_aug": True},
    }
    validate_against(NeRFVolumeRenderer.Config, system["renderer"], "system.renderer")
    validate_against(NeuralEnvironmentMapBackground.Config, system["background"], "system.background")
    validate_against(DiffuseWithPointLightMaterial.Config, system["material"], "system.material")
    torch.manual_seed(0)
    geometry = ImplicitVolume(
        {
            "radius": 1.0,
            "normal_type": "analytic",
            "pos_encoding_config": {
                "otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12,
                "base_resolution": 8, "per_level_scale": 1.5,
            },
        }
    )
    material = DiffuseWithPointLightMaterial(system["material"])
    background = NeuralEnvironmentMapBackground(system["background"])
    renderer = NeRFVolumeRenderer(system["renderer"], geometry=geometry, material=material, background=background)
    parts = [geometry, material, background, renderer]
    for part in parts:
        part.train()
        part.update_step(2048)  # past the ambient-only phase; a grid-update step (multiple of 16)
    rays_o, rays_d = perspective_rays(8, distance=2.5)
    out = renderer(rays_o, rays_d, LIGHT, shading="diffuse")
    assert out["opacity"].max() > 0.1  # the density blob is visible
    assert 0 < renderer.occupancy.occupied.sum() < renderer.occupancy.n_cells  # the grid was updated
    loss = out["comp_rgb"].mean() + (out["weights"].detach() * out["normal"].sum(-1, keepdim=True)).sum()
    loss.backward()
    for module in (geometry, background):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), type(module).__name__
    assert set(renderer.state_dict()) == {"occupancy.bbox", "occupancy.density_ema", "occupancy.occupied"}


# --------------------------------------------------------------------------- unbounded scenes
def shell_density(radius: float, sigma: float, width: float = 0.5):
    """A thick spherical wall at ``radius`` (outside the box): what a room around a capture is."""
    return lambda p: sigma * ((p.norm(dim=-1) - radius).abs() <= width / 2).to(p.dtype)


@pytest.mark.parametrize("grid_prune", [True, False])
def test_unbounded_geometry_is_drawn_beyond_the_box(grid_prune):
    """An unbounded geometry's surroundings are rendered at the right depth behind what the box
    holds; a bounded one never sees them."""
    density = lambda p: ball_density(0.3, 50.0)(p) + shell_density(6.0, 50.0)(p)  # noqa: E731
    rays_o, rays_d = perspective_rays(size=8, distance=3.0)
    bounded = make_renderer(ToyGeometry(density), grid_prune=grid_prune).eval()
    geometry = ToyGeometry(density)
    geometry.unbounded = True
    unbounded = make_renderer(geometry, grid_prune=grid_prune, num_samples_per_ray_outside=128).eval()
    with torch.no_grad():
        inside_only, everything = bounded(rays_o, rays_d, light_positions=LIGHT), unbounded(rays_o, rays_d, light_positions=LIGHT)
    ball_rays = everything["opacity"][0, 3:5, 3:5]  # the centre rays hit the ball first
    assert torch.allclose(ball_rays, inside_only["opacity"][0, 3:5, 3:5], atol=1e-3)
    assert torch.allclose(everything["depth"][0, 3:5, 3:5], inside_only["depth"][0, 3:5, 3:5], atol=0.05)
    corner = (0, 0)  # misses the ball: transparent when bounded, the wall when unbounded
    assert inside_only["opacity"][0, corner[0], corner[1]].item() < 1e-3
    assert everything["opacity"][0, corner[0], corner[1]].item() > 0.99
    wall_distance = _distance_to_sphere(rays_o[0, 0, 0], rays_d[0, 0, 0], 5.75)
    assert everything["depth"][0, 0, 0].item() == pytest.approx(wall_distance, rel=0.05)


def _distance_to_sphere(origin: torch.Tensor, direction: torch.Tensor, radius: float) -> float:
    """Where a ray from inside a sphere of ``radius`` about the origin meets it."""
    b = float(origin @ direction)
    return -b + math.sqrt(b * b - float(origin @ origin) + radius**2)


def test_samples_beyond_the_box_are_ordered_behind_it():
    """Outside samples start where each ray leaves the box, end at the far plane, evenly in 1/t."""
    geometry = ToyGeometry(lambda p: torch.zeros(p.shape[:-1]))
    geometry.unbounded = True
    renderer = make_renderer(geometry, num_samples_per_ray_outside=4, far_plane=50.0).eval()
    rays_o, rays_d = perspective_rays(size=2, distance=3.0)
    samples = renderer._samples_beyond_box(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
    _, t_exit = ray_box_intersection(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), geometry.bbox)
    starts, ends = samples.t_starts.reshape(4, 4), samples.t_ends.reshape(4, 4)
    assert torch.allclose(starts[:, 0], t_exit) and torch.allclose(ends[:, -1], torch.full((4,), 50.0))
    assert torch.allclose(starts[:, 1:], ends[:, :-1])
    disparity_steps = (1 / ends - 1 / starts)
    assert torch.allclose(disparity_steps, disparity_steps[:, :1].expand(4, 4), rtol=1e-4)
