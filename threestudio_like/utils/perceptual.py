"""The perceptual loss of ``lambda_p``: LPIPS (VGG) when its weights are on this machine, else 1 - SSIM.

LPIPS needs torchvision and the ImageNet VGG-16 weights in the torch hub cache; nothing is ever
downloaded. Without them, 1 - SSIM (torchmetrics, Gaussian window 11) stands in: like LPIPS it
compares local structure rather than single pixels, and it needs no weights. Which one runs is
said once per process.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Optional

import torch

from threestudio_like.utils.backends import optional_import
from threestudio_like.utils.typing import Float, Tensor

VGG16_WEIGHTS = "vgg16-397923af.pth"  # torchvision's file name in <torch hub>/checkpoints
_announced = False

PerceptualLoss = Callable[[Float[Tensor, "B 3 H W"], Float[Tensor, "B 3 H W"]], Float[Tensor, ""]]


def lpips_weights_present() -> bool:
    return optional_import("torchvision") is not None and os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_WEIGHTS))


def _lpips() -> Optional[PerceptualLoss]:
    if not lpips_weights_present():
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type="vgg", normalize=True).eval().requires_grad_(False)
    return lambda a, b: metric.to(a.device)(a.clamp(0, 1), b.clamp(0, 1))


def _one_minus_ssim(a: Float[Tensor, "B 3 H W"], b: Float[Tensor, "B 3 H W"]) -> Float[Tensor, ""]:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return 1.0 - structural_similarity_index_measure(a, b, data_range=1.0)


def perceptual_loss() -> PerceptualLoss:
    """LPIPS (images in [0, 1], channels first) if available, else 1 - SSIM; says which, once."""
    global _announced
    loss = _lpips()
    if not _announced:
        _announced = True
        if loss is None:
            warnings.warn(
                f"lambda_p: LPIPS needs torchvision and the VGG-16 weights ({VGG16_WEIGHTS} in "
                f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}), which are not on this machine; 1 - SSIM stands in for it."
            )
        else:
            print("lambda_p: LPIPS (VGG)")
    return loss or _one_minus_ssim
