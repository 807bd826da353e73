"""Operations on packed ray samples: all samples of all rays in one flat list.

Packed samples are ordered by ray (every ray's samples are contiguous and front to back),
which is what the samplers in ``occupancy.py`` produce. Working on the flat list keeps
the cost proportional to the samples actually taken instead of rays x max samples.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from threestudio_like.utils.typing import Float, Int, Tensor


class PackedSamples(NamedTuple):
    """Intervals ``[t_starts, t_ends]`` along rays; samples of one ray are contiguous, front to back."""

    ray_indices: Int[Tensor, "S"]
    t_starts: Float[Tensor, "S"]
    t_ends: Float[Tensor, "S"]

    @property
    def t_mids(self) -> Float[Tensor, "S"]:
        return (self.t_starts + self.t_ends) / 2.0

    def select(self, mask: Tensor) -> "PackedSamples":
        return PackedSamples(self.ray_indices[mask], self.t_starts[mask], self.t_ends[mask])

    def points(self, rays_o: Float[Tensor, "N 3"], rays_d: Float[Tensor, "N 3"]) -> Float[Tensor, "S 3"]:
        """World positions of the interval midpoints."""
        return rays_o[self.ray_indices] + rays_d[self.ray_indices] * self.t_mids[:, None]


def concat_behind(front: PackedSamples, back: PackedSamples) -> PackedSamples:
    """Both sample sets in one packed list, each ray's ``back`` samples after its ``front`` ones
    (``back`` must lie farther along every ray, e.g. samples beyond the scene box)."""
    ray_indices = torch.cat([front.ray_indices, back.ray_indices])
    order = torch.sort(ray_indices, stable=True).indices  # stable: front stays before back per ray
    return PackedSamples(
        ray_indices[order], torch.cat([front.t_starts, back.t_starts])[order], torch.cat([front.t_ends, back.t_ends])[order]
    )


def segment_sum(
    values: Float[Tensor, "S ..."], ray_indices: Int[Tensor, "S"], n_rays: int
) -> Float[Tensor, "N ..."]:
    """Per-ray sums of per-sample values (differentiable)."""
    out = values.new_zeros((n_rays, *values.shape[1:]))
    return out.index_add(0, ray_indices, values)


def exclusive_segment_cumsum(
    values: Float[Tensor, "S"], ray_indices: Int[Tensor, "S"], n_rays: int
) -> Float[Tensor, "S"]:
    """For each sample, the sum of the values of the earlier samples of the same ray.

    One global cumulative sum minus each ray's offset (the total before its first sample):
    no loop over rays. The sum runs in float64 because the global total over many rays can
    be large, and float32 would lose the small per-ray differences that matter most.
    """
    if values.numel() == 0:
        return values.clone()
    inclusive = torch.cumsum(values.double(), dim=0)
    exclusive = inclusive - values.double()
    counts = torch.bincount(ray_indices, minlength=n_rays)
    first_sample = torch.cumsum(counts, dim=0) - counts  # index of each ray's first sample
    offsets = exclusive[first_sample[ray_indices]]
    return (exclusive - offsets).to(values.dtype)


def render_weights_from_density(
    t_starts: Float[Tensor, "S"],
    t_ends: Float[Tensor, "S"],
    sigmas: Float[Tensor, "S"],
    ray_indices: Int[Tensor, "S"],
    n_rays: int,
) -> tuple[Float[Tensor, "S"], Float[Tensor, "S"], Float[Tensor, "S"]]:
    """Volume-rendering weights ``w_i = T_i (1 - exp(-sigma_i delta_i))``.

    ``T_i = exp(-sum_{j<i} sigma_j delta_j)`` over earlier samples of the same ray.
    Returns (weights, transmittance, alphas).
    """
    sigma_delta = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sigma_delta)
    transmittance = torch.exp(-exclusive_segment_cumsum(sigma_delta, ray_indices, n_rays))
    return transmittance * alphas, transmittance, alphas


@torch.no_grad()
def visible_mask(
    t_starts: Float[Tensor, "S"],
    t_ends: Float[Tensor, "S"],
    sigmas: Float[Tensor, "S"],
    ray_indices: Int[Tensor, "S"],
    n_rays: int,
    alpha_thre: float = 0.0,
    early_stop_eps: float = 1e-4,
) -> torch.BoolTensor:
    """Samples worth shading: not hidden behind opaque ones (``T >= early_stop_eps``) and,
    when ``alpha_thre > 0``, not nearly transparent (``alpha >= alpha_thre``)."""
    _, transmittance, alphas = render_weights_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    keep = transmittance >= early_stop_eps
    if alpha_thre > 0:
        keep = keep & (alphas >= alpha_thre)
    return keep


def composite(
    weights: Float[Tensor, "S"],
    values: Optional[Float[Tensor, "S C"]],
    ray_indices: Int[Tensor, "S"],
    n_rays: int,
) -> Float[Tensor, "N C"]:
    """``sum_i w_i v_i`` per ray; with ``values=None`` the sum of weights (opacity), shape [N, 1]."""
    src = weights[:, None] if values is None else weights[:, None] * values
    return segment_sum(src, ray_indices, n_rays)
