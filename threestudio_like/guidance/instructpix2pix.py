"""InstructPix2Pix editing (Brooks et al. 2023), the image editor of Instruct-NeRF2NeRF.

The UNet denoises an image given a text instruction and the image to edit, concatenated to its
input: 2 x the model-space channels (the noisy latents and the source's VAE posterior mode,
unscaled, as diffusers' ``StableDiffusionInstructPix2PixPipeline``; in pixel space, the source
image itself in [-1, 1]). Guidance is three-way,

    eps = eps_u + s_text (eps_text - eps_image) + s_image (eps_image - eps_u),

from one UNet call over [noisy] x 3 with text [instruction, negative, negative] and image
condition [source, source, zero]. An edit starts from the current render noised to a timestep t
drawn uniformly from [min_step, max_step] and runs ``diffusion_steps`` deterministic DDIM steps
(eta 0) from t down to the clean image, as threestudio's guidance does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from threestudio_like.guidance.models import load_diffusion_components
from threestudio_like.guidance.prompt_processor import PromptProcessorOutput
from threestudio_like.guidance.sds import (
    StableDiffusionGuidance,
    _resize,
    denoised_from_epsilon,
    distillation_loss,
    epsilon_from_prediction,
    sds_weighting,
)
from threestudio_like.config import ConfigError
from threestudio_like.registry import register
from threestudio_like.utils.typing import Float, Int, Tensor


def instruct_pix2pix_guidance(
    eps_text: Float[Tensor, "B c h w"],
    eps_image: Float[Tensor, "B c h w"],
    eps_uncond: Float[Tensor, "B c h w"],
    text_scale: float,
    image_scale: float,
) -> Float[Tensor, "B c h w"]:
    """eps_u + s_text (eps_text - eps_image) + s_image (eps_image - eps_u): the image scale pulls
    towards the source image, the text scale from there towards the instruction."""
    return eps_uncond + text_scale * (eps_text - eps_image) + image_scale * (eps_image - eps_uncond)


def edit_timesteps(t: int, steps: int) -> list[int]:
    """``steps`` descending timesteps from ``t``, evenly spaced towards 0 (the clean image follows)."""
    return [int(v) for v in torch.linspace(t, 0, steps + 1)[:-1].round().long().unique_consecutive()]


@register("stable-diffusion-instructpix2pix-guidance")
class InstructPix2PixGuidance(StableDiffusionGuidance):
    """Edits renders by instruction (``__call__`` returns ``edit_images``), or, with ``use_sds``,
    gives an SDS loss under the same three-way guidance. threestudio's keys and defaults."""

    @dataclass
    class Config(StableDiffusionGuidance.Config):
        ip2p_name_or_path: str = "timbrooks/instruct-pix2pix"  # a diffusers folder, hub id or builtin:edit32
        # the edit's noise schedule: None uses the model's own (threestudio loads Stable Diffusion
        # v1.4's, which has the same betas); a folder / hub id / builtin name with a scheduler/
        ddim_scheduler_name_or_path: Optional[str] = None
        cache_dir: Optional[str] = None  # threestudio's key; models are found in the local hub cache
        guidance_scale: float = 7.5
        condition_scale: float = 1.5
        diffusion_steps: int = 20
        fixed_size: int = -1  # > 0: edit at this square size; else latent models at the render's size (multiple of 8), pixel models at the UNet's
        use_sds: bool = False
        enable_channels_last_format: bool = False
        view_dependent_prompting: bool = False

    cfg: Config
    required_models = {"ip2p_name_or_path": ("unet", "scheduler"), "ddim_scheduler_name_or_path": ("scheduler",)}

    def configure(self, device: Optional[torch.device | str] = None, **kwargs: Any) -> None:
        if self.cfg.diffusion_steps < 1:
            raise ConfigError(f"system.guidance.diffusion_steps must be at least 1, got {self.cfg.diffusion_steps}.")
        self.cfg.pretrained_model_name_or_path = self.cfg.ip2p_name_or_path
        self.cfg.enable_channels_last = self.cfg.enable_channels_last or self.cfg.enable_channels_last_format
        super().configure(device, **kwargs)

    def _attach(self, device: torch.device) -> None:
        super()._attach(device)
        unet, space = self.components.unet, self.model_channels()
        if unet.config.in_channels != 2 * space:
            raise ConfigError(
                f"{self.components.path}: its UNet takes {unet.config.in_channels} input channels; an InstructPix2Pix "
                f"model takes {2 * space} (the noisy {space} and the image to edit). Point system.guidance.ip2p_name_or_path "
                f"at an InstructPix2Pix folder (timbrooks/instruct-pix2pix layout, or builtin:edit32)."
            )
        self.edit_alphas_cumprod = self.components.scheduler.alphas_cumprod
        if self.cfg.ddim_scheduler_name_or_path:
            schedule = load_diffusion_components(self.cfg.ddim_scheduler_name_or_path, unet=False, text_encoder=False).scheduler
            self.edit_alphas_cumprod = schedule.alphas_cumprod

    def model_channels(self) -> int:
        """Channels of what the UNet denoises: the VAE's latents, or RGB in pixel space."""
        vae = self.components.vae
        return int(vae.config.latent_channels) if vae is not None else 3

    def edit_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the UNet's input for a ``height x width`` render (see ``fixed_size``)."""
        if self.cfg.fixed_size > 0:
            return (self.cfg.fixed_size // self.components.vae_scale_factor,) * 2
        if self.components.vae is None:
            return self.sample_size()  # a pixel model edits at the size it was trained at
        factor = self.components.vae_scale_factor
        return (max(height // 8 * 8, 8) // factor, max(width // 8 * 8, 8) // factor)

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def image_condition(self, cond_rgb: Float[Tensor, "B H W 3"], size: tuple[int, int]) -> Float[Tensor, "B c h w"]:
        """The source image as the UNet's extra input at model-space ``size``: the VAE posterior's
        mode, unscaled (diffusers' pipeline), or in pixel space the image in [-1, 1]."""
        h, w = size
        factor = self.components.vae_scale_factor
        x = _resize(cond_rgb.permute(0, 3, 1, 2).float(), (h * factor, w * factor)) * 2.0 - 1.0
        vae = self.components.vae
        if vae is None:
            return x
        return vae.encode(x.to(vae.dtype)).latent_dist.mode().float()

    def three_way_text(self, prompt_utils: PromptProcessorOutput, batch: int, device: torch.device) -> Float[Tensor, "3B L D"]:
        """[instruction x B; negative x B; negative x B] (the negative prompt is "" by default)."""
        zeros = torch.zeros(batch, device=device)
        cond, negative = prompt_utils.get_text_embeddings(zeros, zeros, zeros, False).chunk(2)
        return torch.cat([cond, negative, negative])

    @torch.no_grad()
    def guided_noise(
        self, x: Float[Tensor, "B c h w"], t: int | Int[Tensor, ""], text: Float[Tensor, "3B L D"], condition: Float[Tensor, "B c h w"]
    ) -> Float[Tensor, "B c h w"]:
        """Three-way guided noise at ``t`` from one UNet call (the module docstring's layout)."""
        unet = self.components.unet
        dtype = unet.dtype
        image = torch.cat([condition, condition, torch.zeros_like(condition)])
        model_input = torch.cat([torch.cat([x] * 3), image], dim=1)
        timestep = torch.as_tensor(t, device=x.device).reshape(1).expand(len(model_input))
        output = unet(model_input.to(dtype), timestep, encoder_hidden_states=text.to(device=x.device, dtype=dtype)).sample.float()
        eps_text, eps_image, eps_uncond = output.chunk(3)
        guided = instruct_pix2pix_guidance(eps_text, eps_image, eps_uncond, self.cfg.guidance_scale, self.cfg.condition_scale)
        abar = self.edit_alphas_cumprod.to(x.device)[timestep[: len(x)]].float()
        return epsilon_from_prediction(guided, x, abar, self.prediction_type)

    @torch.no_grad()
    def edit_latents(
        self, noisy: Float[Tensor, "B c h w"], timesteps: list[int], text: Float[Tensor, "3B L D"], condition: Float[Tensor, "B c h w"]
    ) -> Float[Tensor, "B c h w"]:
        """DDIM (eta 0) from ``noisy`` at ``timesteps[0]`` through the descending ``timesteps`` to the clean sample."""
        abar = self.edit_alphas_cumprod.to(noisy.device).float()
        x = noisy
        for i, t in enumerate(timesteps):
            eps = self.guided_noise(x, t, text, condition)
            clean = denoised_from_epsilon(x, eps, abar[t].expand(len(x)))
            abar_next = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.ones((), device=x.device)
            x = abar_next.sqrt() * clean + (1.0 - abar_next).sqrt() * eps
        return x

    # ------------------------------------------------------------------ the call
    def __call__(
        self,
        rgb: Float[Tensor, "B H W 3"],
        cond_rgb: Float[Tensor, "B H W 3"],
        prompt_utils: PromptProcessorOutput,
        generator: Optional[torch.Generator] = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``edit_images`` [B,H,W,3] in [0, 1]: ``rgb`` edited by the instruction, conditioned on
        ``cond_rgb`` (the original photo); with ``use_sds`` an SDS loss (``loss_sds``) instead.
        ``generator`` draws the timestep and noise (the global stream when None)."""
        self._follow(rgb.device)
        B, H, W, _ = rgb.shape
        size = self.edit_size(H, W)
        latents, _ = self.model_space(rgb, size=size)
        condition = self.image_condition(cond_rgb, size)
        text = self.three_way_text(prompt_utils, B, latents.device)
        t = int(torch.randint(self.min_step, self.max_step + 1, (1,), generator=generator))
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        noisy = self.components.scheduler.add_noise(latents.detach(), noise, torch.tensor([t], device=latents.device))
        if self.cfg.use_sds:
            eps = self.guided_noise(noisy, t, text, condition)
            abar = self.edit_alphas_cumprod[t].to(latents).expand(B)
            grad, nonfinite = self.clean_gradient(sds_weighting(self.cfg.weighting_strategy, abar) * (eps - noise))
            return {"loss_sds": distillation_loss(latents, grad), "grad_norm": grad.norm(), "grad_nonfinite": nonfinite,
                    "min_step": self.min_step, "max_step": self.max_step}
        edited = self.decode(self.edit_latents(noisy, edit_timesteps(t, self.cfg.diffusion_steps), text, condition))
        edited = F.interpolate(edited, (H, W), mode="bilinear", align_corners=False)
        return {"edit_images": edited.permute(0, 2, 3, 1), "timestep": t}
