"""Score distillation sampling (DreamFusion) with a frozen text-conditioned diffusion model.

For a render x (pixels, or VAE latents for latent models) SDS noises it to a random timestep,
asks the UNet for the noise with classifier-free guidance, and pushes x along
w(t) * (eps_cfg - noise). UNets predicting v or the clean sample instead of the noise (the
scheduler's ``prediction_type``, e.g. v for Stable Diffusion 2.x at 768 px) are converted to
the noise they imply first. The push is delivered as a loss whose gradient with respect to x is
exactly that vector (divided by the batch size), so any optimiser can consume it.

With the prompt processor's ``use_perp_neg`` the guided noise is Perp-Neg's instead of plain
classifier-free guidance (see ``diffusion.perp_neg_guidance``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from threestudio_like.guidance.diffusion import denoised_from_epsilon
from threestudio_like.guidance.distillation import Noised, ScoreDistillation
from threestudio_like.guidance.prompt_processor import PromptProcessorOutput
from threestudio_like.registry import register
from threestudio_like.utils.typing import Float, Int, Tensor


@register("stable-diffusion-guidance", "sds-guidance")
class StableDiffusionGuidance(ScoreDistillation):
    """SDS loss from a diffusers-format model; works in pixel space when the model has no VAE."""

    @torch.no_grad()
    def predict_noise(
        self,
        noisy: Float[Tensor, "B c h w"],
        t: Int[Tensor, "B"],
        text_embeddings: Float[Tensor, "NB L D"],
        neg_guidance_weights: Optional[Float[Tensor, "B K"]] = None,
    ) -> Float[Tensor, "B c h w"]:
        """The guided noise at ``guidance_scale`` (Perp-Neg given ``neg_guidance_weights``); the
        embeddings and weights as ``text_conditioning`` returns them."""
        return self.diffusion.predict_noise(noisy, t, text_embeddings, self.cfg.guidance_scale, neg_guidance_weights)

    def __call__(
        self,
        rgb: Float[Tensor, "B H W C"],
        prompt_utils: PromptProcessorOutput,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
        rgb_as_latents: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Returns ``loss_sds`` (d loss / d latents = grad / B), ``grad_norm``, ``grad_nonfinite`` (entries
        zeroed), ``min_step``, ``max_step``; with ``use_img_loss`` also ``loss_sds_img``."""
        self.follow(rgb.device)
        latents, images = self.model_space(rgb, rgb_as_latents)
        text_embeddings, neg_guidance_weights = self.text_conditioning(prompt_utils, elevation, azimuth, camera_distances)
        image_loss = self.cfg.use_img_loss and not rgb_as_latents
        denoised: list[Tensor] = []  # the image the guided noise implies, for loss_sds_img

        def sds_target(x: Noised) -> Float[Tensor, "B c h w"]:
            eps = self.predict_noise(x.noisy, x.t, text_embeddings, neg_guidance_weights)
            if image_loss:
                denoised.append(self.diffusion.decode(denoised_from_epsilon(x.noisy, eps, self.diffusion.alphas_cumprod(x.t))))
            return self.weight(x.t) * (eps - x.noise)

        out = self.distill(latents, sds_target)
        if image_loss:
            out["loss_sds_img"] = 0.5 * F.mse_loss(images, denoised[0], reduction="sum") / rgb.shape[0]
        return out
