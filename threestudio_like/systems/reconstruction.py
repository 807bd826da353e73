"""NeRF reconstruction of a real capture: a photometric loss against the photos.

Training batches come from ``multiview-camera-datamodule`` (random rays across the training
photos, or patches) with their ``rgb``; validation renders the held-out photos and logs PSNR
and SSIM per view (``val/psnr/<frame>``, ``val/ssim/<frame>`` in the metrics log) and their
means; the test stage is the turntable along the capture path; ``--export`` meshes the box.
No diffusion model is involved: ``guidance_type`` is null (Instruct-NeRF2NeRF adds one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from threestudio_like.config import ConfigError
from threestudio_like.registry import register
from threestudio_like.systems.base import BaseLift3DSystem
from threestudio_like.utils.io import save_image
from threestudio_like.utils.typing import Float, RenderOutput, Tensor

SSIM_KERNEL = 11  # torchmetrics' default Gaussian window: patches must be at least this wide


def image_metrics(render: Float[Tensor, "B H W 3"], target: Float[Tensor, "B H W 3"]) -> tuple[Tensor, Tensor]:
    """(PSNR in dB, SSIM) per image, images in [0, 1]."""
    preds, truth = render.clamp(0, 1).permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    psnr = peak_signal_noise_ratio(preds, truth, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(preds, truth, data_range=1.0, reduction="none")
    return psnr, ssim


@register("nerf-reconstruction-system")
class NeRFReconstruction(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        guidance_type: Optional[str] = None
        prompt_processor_type: Optional[str] = None
        material_type: str = "no-material"
        background_type: str = "solid-color-background"

    cfg: Config

    def configure(self) -> None:
        self._val_metrics: dict[int, tuple[float, float]] = {}

    def extra_loss_names(self) -> list[str]:
        return ["l1", "mse", "ssim"]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self(batch)
        return self.weighted_loss({**self.photometric_losses(out, batch), **self.regularisers(out)})

    def photometric_losses(self, out: RenderOutput, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``loss_l1``, ``loss_mse`` and (patches only, while weighted) ``loss_ssim`` = 1 - SSIM."""
        render, target = out["comp_rgb"], batch["rgb"]
        losses = {"loss_l1": F.l1_loss(render, target), "loss_mse": F.mse_loss(render, target)}
        if self.lambda_("ssim") > 0:
            if min(batch["height"], batch["width"]) < SSIM_KERNEL:
                raise ConfigError(
                    f"system.loss.lambda_ssim needs image patches of at least {SSIM_KERNEL} pixels: "
                    f"set data.patch_size >= {SSIM_KERNEL} (random rays have no neighbours to compare)."
                )
            _, ssim = image_metrics(render, target)
            losses["loss_ssim"] = 1.0 - ssim.mean()
        return losses

    # ------------------------------------------------------------------ held-out views
    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_metrics = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with torch.random.fork_rng(devices=[]):  # keep the training RNG stream untouched
            out = self(batch)
        render = box_filter_to(out["comp_rgb"], batch["rgb"].shape[1])
        psnr, ssim = image_metrics(render, batch["rgb"])
        for i, index in enumerate(batch["index"].tolist()):
            self._val_metrics[index] = (float(psnr[i]), float(ssim[i]))
            self.log(f"val/psnr/{index}", psnr[i], batch_size=1)
            self.log(f"val/ssim/{index}", ssim[i], batch_size=1)
            path = self._save_path(f"it{self.current_step}-val", f"{index}.png")
            save_image(path, comparison_grid(render[i], batch["rgb"][i]))

    def on_validation_epoch_end(self) -> None:
        if not self._val_metrics:
            return
        psnr, ssim = (float(np.mean(v)) for v in zip(*self._val_metrics.values()))
        self.log("val/psnr", psnr)
        self.log("val/ssim", ssim)
        summary = {
            "step": self.current_step,
            "psnr": psnr,
            "ssim": ssim,
            "views": {str(k): {"psnr": p, "ssim": s} for k, (p, s) in sorted(self._val_metrics.items())},
        }
        with open(self._save_path(f"it{self.current_step}-val-metrics.json"), "w") as f:
            json.dump(summary, f, indent=1)
        print(f"Held-out views at step {self.current_step}: PSNR {psnr:.2f} dB, SSIM {ssim:.4f} ({len(self._val_metrics)} views)")


def box_filter_to(image: Float[Tensor, "B sH sW C"], height: int) -> Float[Tensor, "B H W C"]:
    """A render with s x s rays per photo pixel (``data.eval_supersample``) averaged down to the photo."""
    factor = image.shape[1] // height
    if factor == 1:
        return image
    return F.avg_pool2d(image.permute(0, 3, 1, 2), factor).permute(0, 2, 3, 1)


def comparison_grid(render: Float[Tensor, "H W 3"], target: Float[Tensor, "H W 3"]) -> np.ndarray:
    """render | ground truth | absolute error (mean over channels, x4 so small errors show)."""
    render = render.detach().float().clamp(0, 1)
    error = ((render - target).abs().mean(-1, keepdim=True) * 4.0).clamp(0, 1).expand_as(render)
    return torch.cat([render, target, error], dim=1).cpu().numpy()
