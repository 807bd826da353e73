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

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError
from threestudio_like.guidance.diffusion import MemoryOptions, autocast_off, denoised_from_epsilon, resize, unet_output
from threestudio_like.guidance.distillation import Noised, ScoreDistillation, sds_weighting
from threestudio_like.guidance.models import load_diffusion_components
from threestudio_like.guidance.prompt_processor import PromptProcessorOutput
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
class InstructPix2PixGuidance(ScoreDistillation):
    """Edits renders by instruction (``__call__`` returns ``edit_images``), or, with ``use_sds``,
    gives an SDS loss under the same three-way guidance. threestudio's keys and defaults."""

    @dataclass
    class Config(ScoreDistillation.Config):
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
        super().configure(device, **kwargs)
        unet, space = self.components.unet, self.diffusion.channels()
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

    def model_name_or_path(self) -> str:
        return self.cfg.ip2p_name_or_path

    def memory_options(self) -> MemoryOptions:
        channels_last = self.cfg.enable_channels_last or self.cfg.enable_channels_last_format  # threestudio's key
        return dataclasses.replace(super().memory_options(), channels_last=channels_last)

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
        x = resize(cond_rgb.permute(0, 3, 1, 2).float(), (h * factor, w * factor)) * 2.0 - 1.0
        vae = self.components.vae
        if vae is None:
            return x
        with autocast_off(x.device):
            return vae.encode(x.to(vae.dtype)).latent_dist.mode().float()

    def three_way_text(self, prompt_utils: PromptProcessorOutput, batch: int, device: torch.device) -> Float[Tensor, "3*{batch} L D"]:
        """[instruction x B; negative x B; negative x B] (the negative prompt is "" by default)."""
        zeros = torch.zeros(batch, device=device)
        cond, negative = prompt_utils.get_text_embeddings(zeros, zeros, zeros, False).chunk(2)
        return torch.cat([cond, negative, negative])

    @torch.no_grad()
    def guided_noise(
        self, x: Float[Tensor, "B c h w"], t: int | Int[Tensor, "B"], text: Float[Tensor, "3*B L D"], condition: Float[Tensor, "B c h w"]
    ) -> Float[Tensor, "B c h w"]:
        """Three-way guided noise at ``t`` (one for all, or one per sample) from one UNet call (the module docstring's layout)."""
        image = torch.cat([condition, condition, torch.zeros_like(condition)])
        model_input = torch.cat([torch.cat([x] * 3), image], dim=1)
        t = torch.as_tensor(t, device=x.device).expand(len(x))
        output = unet_output(self.components.unet, model_input, t.repeat(3), text)
        eps_text, eps_image, eps_uncond = output.chunk(3)
        guided = instruct_pix2pix_guidance(eps_text, eps_image, eps_uncond, self.cfg.guidance_scale, self.cfg.condition_scale)
        return self.diffusion.epsilon(guided, x, self.edit_alphas_cumprod.to(x.device)[t].float())

    @torch.no_grad()
    def edit_latents(
        self, noisy: Float[Tensor, "B c h w"], timesteps: list[int], text: Float[Tensor, "3*B L D"], condition: Float[Tensor, "B c h w"]
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
        cond_rgb: Float[Tensor, "B Hc Wc 3"],  # any size: resized to the edit size
        prompt_utils: PromptProcessorOutput,
        generator: Optional[torch.Generator] = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``edit_images`` [B,H,W,3] in [0, 1]: ``rgb`` edited by the instruction, conditioned on
        ``cond_rgb`` (the original photo); with ``use_sds`` an SDS loss (``loss_sds``) instead.
        ``generator`` draws the timestep and noise (the global stream when None)."""
        self.follow(rgb.device)
        B, H, W, _ = rgb.shape
        size = self.edit_size(H, W)
        latents, _ = self.model_space(rgb, size=size)
        condition = self.image_condition(cond_rgb, size)
        text = self.three_way_text(prompt_utils, B, latents.device)
        # drawn on the CPU (the global stream when no generator): a seeded edit is the same on any device
        generator = generator if generator is not None else torch.default_generator
        if self.cfg.use_sds:
            return self.distill(latents, lambda x: self.sds_target(x, condition, text), shared_timestep=True, generator=generator)
        x = self.noised(latents, shared_timestep=True, generator=generator)
        t = int(x.t[0])
        edited = self.diffusion.decode(self.edit_latents(x.noisy, edit_timesteps(t, self.cfg.diffusion_steps), text, condition))
        edited = F.interpolate(edited, (H, W), mode="bilinear", align_corners=False)
        return {"edit_images": edited.permute(0, 2, 3, 1), "timestep": t}

    def sds_target(self, x: Noised, condition: Float[Tensor, "B c h w"], text: Float[Tensor, "3*B L D"]) -> Float[Tensor, "B c h w"]:
        """``use_sds``: w(t) (eps_guided - noise), w on the edit's noise schedule."""
        abar = self.edit_alphas_cumprod.to(x.t.device)[x.t].float()
        return sds_weighting(self.cfg.weighting_strategy, abar) * (self.guided_noise(x.noisy, x.t, text, condition) - x.noise)
