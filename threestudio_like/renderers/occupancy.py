"""Ray marching through the scene box, and an occupancy grid that lets it skip empty space.

The grid follows nerfacc's ``OccGridEstimator`` semantics (Instant-NGP style): it keeps an
exponential moving maximum of the density seen in each cell and marks a cell occupied when
the opacity of one marching step there, ``1 - exp(-sigma * step_size)``, exceeds a
threshold. Sampling marches fixed-size steps between where a ray enters and leaves the box
and keeps only the intervals whose midpoints fall in occupied cells, returned packed.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn

from threestudio_like.renderers.packed import PackedSamples, visible_mask
from threestudio_like.utils.typing import Bool, Float, Int, Tensor

DensityFn = Callable[[Float[Tensor, "P 3"]], Float[Tensor, "P 1"]]


def nan_as_opaque(density: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
    """Density for deciding what to skip: NaN counts as opaque (the largest finite density).

    A NaN field must not be skipped as empty space: kept, its NaN reaches the render, where the
    training loop reports the divergence instead of silently drawing nothing.
    """
    largest = torch.finfo(density.dtype).max
    return torch.nan_to_num(density, nan=largest, posinf=largest)


# Rays are marched in blocks holding at most this many candidate intervals, to bound memory
# when a full image (hundreds of thousands of rays) is rendered at once.
MAX_CANDIDATES_PER_BLOCK = 1 << 21


def ray_box_intersection(
    rays_o: Float[Tensor, "N 3"], rays_d: Float[Tensor, "N 3"], bbox: Float[Tensor, "2 3"]
) -> tuple[Float[Tensor, "N"], Float[Tensor, "N"]]:
    """Distances where each ray enters and leaves the box (slab method); enter >= exit means a miss."""
    # A tiny non-zero component instead of 0 keeps the slab distances finite (no 0 * inf);
    # its sign does not matter: either way the slab is "everything" or "nothing".
    tiny = torch.finfo(rays_d.dtype).tiny ** 0.25
    safe_d = torch.where(rays_d.abs() < tiny, torch.full_like(rays_d, tiny), rays_d)
    t_lo = (bbox[0] - rays_o) / safe_d
    t_hi = (bbox[1] - rays_o) / safe_d
    t_enter = torch.minimum(t_lo, t_hi).amax(dim=-1)
    t_exit = torch.maximum(t_lo, t_hi).amin(dim=-1)
    return t_enter, t_exit


@torch.no_grad()
def march_rays(
    rays_o: Float[Tensor, "N 3"],
    rays_d: Float[Tensor, "N 3"],
    bbox: Float[Tensor, "2 3"],
    step_size: float,
    near: float = 0.0,
    far: float = math.inf,
    randomized: bool = False,
    keep_fn: Optional[Callable[[Float[Tensor, "P 3"]], Bool[Tensor, "P"]]] = None,
) -> PackedSamples:
    """Fixed-size steps covering each ray's stretch inside the box, packed by ray.

    The intervals partition ``[max(enter, near), min(exit, far)]`` exactly: the first one is
    ``step_size`` long (a random fraction of it when ``randomized``, which jitters every
    boundary of the ray), the last one is clipped at the exit. ``keep_fn`` (e.g. an
    occupancy test) receives the interval midpoints and drops the intervals it rejects.
    """
    if step_size <= 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    n_rays = rays_o.shape[0]
    device = rays_o.device
    t_enter, t_exit = ray_box_intersection(rays_o, rays_d, bbox)
    t_enter = t_enter.clamp_min(near)
    t_exit = t_exit.clamp_max(far)
    length = t_exit - t_enter
    hit = length > 0
    if randomized:
        first = step_size * (1.0 - torch.rand(n_rays, device=device, dtype=rays_o.dtype))  # in (0, step]
    else:
        first = torch.full_like(t_enter, step_size)
    n_steps = 1 + torch.ceil(((length - first) / step_size).clamp_min(0))
    counts = torch.where(hit, n_steps, torch.zeros_like(n_steps)).long()

    # Split rays into blocks of bounded candidate count (a handful of blocks, not a loop over rays).
    starts = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())
    block_starts = torch.arange(0, max(total, 1), MAX_CANDIDATES_PER_BLOCK, device=device)
    bounds = torch.searchsorted(starts, block_starts).tolist() + [n_rays]
    pieces = []
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        if r1 > r0:
            pieces.append(
                _march_block(rays_o, rays_d, t_enter, t_exit, first, counts, r0, r1, step_size, keep_fn)
            )
    if not pieces:
        empty = rays_o.new_zeros(0)
        return PackedSamples(torch.zeros(0, dtype=torch.long, device=device), empty, empty)
    return PackedSamples(*(torch.cat(parts) for parts in zip(*pieces)))


def _march_block(
    rays_o: Tensor,
    rays_d: Tensor,
    t_enter: Tensor,
    t_exit: Tensor,
    first: Tensor,
    counts: Tensor,
    r0: int,
    r1: int,
    step_size: float,
    keep_fn: Optional[Callable[[Tensor], Tensor]],
) -> PackedSamples:
    """Candidate intervals of rays ``r0:r1``, filtered by validity and ``keep_fn``."""
    block_counts = counts[r0:r1]
    ray_indices = torch.repeat_interleave(torch.arange(r0, r1, device=rays_o.device), block_counts)
    ray_first = torch.repeat_interleave(torch.cumsum(block_counts, 0) - block_counts, block_counts)
    k = torch.arange(ray_indices.shape[0], device=rays_o.device) - ray_first  # step number along the ray
    enter, exit_, first_len = t_enter[ray_indices], t_exit[ray_indices], first[ray_indices]

    def edge(j: Tensor) -> Tensor:
        # Boundary j of a ray: the same expression for the end of interval k and the start of
        # k + 1, so neighbouring intervals share bit-identical boundaries.
        return torch.where(j == 0, enter, enter + first_len + (j - 1).to(enter.dtype) * step_size)

    t_starts = edge(k)
    t_ends = torch.minimum(edge(k + 1), exit_)
    keep = t_ends > t_starts  # drops an empty last interval left by rounding
    samples = PackedSamples(ray_indices, t_starts, t_ends)
    if keep_fn is not None:
        keep = keep & keep_fn(samples.points(rays_o, rays_d))
    return samples.select(keep)


class OccupancyGrid(nn.Module):
    """Which cells of a box hold visible density. Buffers are saved in the state dict.

    Cells are indexed ``[i, j, k]`` along x, y, z (flat index ``(i * R + j) * R + k``), the
    layout of nerfacc's ``binaries[0]``, so the renderer can hand the grid to nerfacc.
    """

    def __init__(self, bbox: Float[Tensor, "2 3"], resolution: int = 32) -> None:
        super().__init__()
        if resolution < 1:
            raise ValueError(f"occupancy grid resolution must be at least 1, got {resolution}")
        bbox = torch.as_tensor(bbox, dtype=torch.float32).reshape(2, 3)
        if not bool((bbox[1] > bbox[0]).all()):
            raise ValueError(
                f"bbox must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with max > min, got {bbox.tolist()}"
            )
        self.resolution = resolution
        self.register_buffer("bbox", bbox.clone())
        # Moving maximum of the density observed in each cell.
        self.register_buffer("density_ema", torch.zeros(resolution**3))
        # Everything counts as occupied until an update has looked at the cells, so a fresh
        # model renders (slowly but correctly) instead of rendering nothing.
        self.register_buffer("occupied", torch.ones(resolution, resolution, resolution, dtype=torch.bool))

    @property
    def n_cells(self) -> int:
        return self.resolution**3

    def cell_indices(self, points: Float[Tensor, "... 3"]) -> tuple[Int[Tensor, "..."], Bool[Tensor, "..."]]:
        """Flat cell index of each point, and whether the point lies inside the box."""
        unit = (points - self.bbox[0]) / (self.bbox[1] - self.bbox[0])
        inside = ((unit >= 0) & (unit <= 1)).all(dim=-1)
        ijk = (unit * self.resolution).long().clamp(0, self.resolution - 1)
        flat = (ijk[..., 0] * self.resolution + ijk[..., 1]) * self.resolution + ijk[..., 2]
        return flat, inside

    def is_occupied(self, points: Float[Tensor, "... 3"]) -> Bool[Tensor, "..."]:
        flat, inside = self.cell_indices(points)
        return inside & self.occupied.reshape(-1)[flat]

    def cell_alphas(self, step_size: float) -> Float[Tensor, "C"]:
        """Opacity of one marching step through each cell, from the density EMA."""
        return 1.0 - torch.exp(-self.density_ema * step_size)

    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: DensityFn,
        step_size: float,
        occ_thre: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        chunk_size: int = 1 << 16,
    ) -> None:
        """Re-measure densities at one jittered point per chosen cell and re-threshold.

        Before ``warmup_steps``, and on a grid no update has measured (its EMA all 0), every cell
        is measured; afterwards a random quarter of all cells plus up to as many currently
        occupied ones. Cells not measured keep their EMA. (A fresh grid whose first update comes
        past the warmup would otherwise empty the three quarters of its cells it did not look
        at: holes all over the object.)
        A cell is occupied when its step opacity exceeds ``min(occ_thre, mean opacity of all
        cells)`` (nerfacc's rule: the mean guard keeps a faint early-training field visible).
        A NaN density counts as opaque (see ``nan_as_opaque``).
        """
        device = self.density_ema.device
        if step < warmup_steps or not bool(self.density_ema.any()):
            cells = torch.arange(self.n_cells, device=device)
        else:
            n = self.n_cells // 4
            uniform = torch.randint(self.n_cells, (n,), device=device)
            occupied = torch.nonzero(self.occupied.reshape(-1))[:, 0]
            if occupied.numel() > n:
                occupied = occupied[torch.randint(occupied.numel(), (n,), device=device)]
            cells = torch.cat([uniform, occupied])
        r = self.resolution
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1).float()
        unit = (ijk + torch.rand_like(ijk)) / r
        points = self.bbox[0] + unit * (self.bbox[1] - self.bbox[0])
        density = torch.cat([density_fn(p).reshape(-1) for p in points.split(chunk_size)]).float()
        density = nan_as_opaque(density).clamp_min(0.0)

        ema = self.density_ema.clone()
        ema[cells] = self.density_ema[cells] * ema_decay
        # scatter max: a cell drawn twice keeps its largest measurement
        ema.scatter_reduce_(0, cells, density, reduce="amax", include_self=True)
        self.density_ema.copy_(ema)

        alphas = self.cell_alphas(step_size)
        threshold = min(occ_thre, alphas.mean().item())
        self.occupied.copy_((alphas > threshold).reshape(r, r, r))

    @torch.no_grad()
    def sample(
        self,
        rays_o: Float[Tensor, "N 3"],
        rays_d: Float[Tensor, "N 3"],
        step_size: float,
        near: float = 0.0,
        far: float = math.inf,
        randomized: bool = False,
        density_fn: Optional[DensityFn] = None,
        alpha_thre: float = 0.0,
        early_stop_eps: float = 1e-4,
    ) -> PackedSamples:
        """Packed intervals in occupied cells only.

        With ``density_fn`` the candidates are also pruned by visibility: those behind
        opaque material (transmittance below ``early_stop_eps``) and those nearly
        transparent (step opacity below ``min(alpha_thre, mean cell opacity)``) are dropped;
        NaN densities count as opaque, so they are kept.
        """
        samples = march_rays(rays_o, rays_d, self.bbox, step_size, near, far, randomized, keep_fn=self.is_occupied)
        if density_fn is None or samples.ray_indices.numel() == 0:
            return samples
        alpha_thre = min(alpha_thre, self.cell_alphas(step_size).mean().item())
        sigmas = nan_as_opaque(density_fn(samples.points(rays_o, rays_d)).reshape(-1))
        keep = visible_mask(
            samples.t_starts, samples.t_ends, sigmas, samples.ray_indices, rays_o.shape[0], alpha_thre, early_stop_eps
        )
        return samples.select(keep)
