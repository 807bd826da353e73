"""Image comparison metrics shared by the hand-over report, export fidelity, benchmarks and tests."""

from __future__ import annotations

import torch

from threestudio_like.utils.typing import Float, Tensor


def psnr(a: Float[Tensor, "..."], b: Float[Tensor, "..."]) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (capped at 100 dB for equal images)."""
    return float(-10.0 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-10)))
