"""Multi-view score distillation (MVDream) with a multi-view diffusion UNet.

The renders come in groups of ``n_view`` views of the object (the multi-view camera data
module's groups, views adjacent). The model denoises each group jointly, told every view's
camera, so it judges the views together: one front, one back, not a front everywhere.

One step: the renders go to the model's space (pixels for the built-in prior, VAE latents for
MVDream's SD 2.1 model) and are noised to one timestep shared by the batch; the UNet predicts the
noise for [cond; uncond] with the cameras in both halves; classifier-free guidance combines them.
With ``recon_loss`` (MVDream's default) the loss is not SDS's noise residual but the distance to
the clean sample x0 reconstructed from the guided noise: with ``recon_std_rescale`` r, x0 is
pulled towards the standard deviation of the unguided x0 of its group (x0 <- r * x0 * std(x0_cond)
/ std(x0) + (1 - r) * x0), which tames the over-saturation of the large guidance scale (50).
The loss is 0.5 |x - x0|^2 / B against the detached x0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from threestudio_like.config import ConfigError
from threestudio_like.guidance.diffusion import classifier_free_guidance, denoised_from_epsilon, unet_output
from threestudio_like.guidance.distillation import Noised, ScoreDistillation
from threestudio_like.guidance.multiview_unet import MultiViewUNet2DConditionModel, mvdream_camera
from threestudio_like.guidance.prompt_processor import PromptProcessorOutput
from threestudio_like.registry import register
from threestudio_like.utils.typing import Float, Int, Tensor

RELEASED_MODELS = {
    "sd-v2.1-base-4view": "https://huggingface.co/MVDream/MVDream (sd-v2.1-base-4view.pt)",
    "sd-v1.5-4view": "https://huggingface.co/MVDream/MVDream (sd-v1.5-4view.pt)",
}


def rescale_to_group_std(
    x0: Float[Tensor, "B c h w"], x0_reference: Float[Tensor, "B c h w"], n_view: int, amount: float
) -> Float[Tensor, "B c h w"]:
    """Blend ``x0`` with itself scaled to the standard deviation of ``x0_reference``, per group of ``n_view``."""
    groups = x0.reshape(-1, n_view * x0[0].numel())
    reference = x0_reference.reshape(groups.shape)
    factor = (reference.std(dim=1, keepdim=True) + 1e-8) / (groups.std(dim=1, keepdim=True) + 1e-8)
    rescaled = (groups * factor).reshape(x0.shape)
    return amount * rescaled + (1.0 - amount) * x0


@register("multiview-diffusion-guidance")
class MultiviewDiffusionGuidance(ScoreDistillation):
    """MVDream's guidance. Keys and defaults of the MVDream threestudio extension; the model is a
    diffusers folder with a multi-view UNet (``builtin:shapes32-mv``, or one written by
    ``python -m threestudio_like.guidance.convert_mvdream``) or MVDream's released checkpoint file."""

    @dataclass
    class Config(ScoreDistillation.Config):
        pretrained_model_name_or_path: Optional[str] = None  # a folder, builtin:<name>, or a .pt / .ckpt file
        model_name: str = "sd-v2.1-base-4view"  # the extension's name for the released model (its architecture)
        ckpt_path: Optional[str] = None  # the extension's key for the checkpoint file (same as the path above)
        guidance_scale: float = 50.0
        camera_condition_type: Literal["rotation"] = "rotation"
        view_dependent_prompting: bool = False
        n_view: int = 4
        image_size: Optional[int] = None  # render size fed to the model; None: the UNet's (x VAE factor)
        recon_loss: bool = True
        recon_std_rescale: float = 0.5

    cfg: Config
    required_models = {"pretrained_model_name_or_path": ("unet", "scheduler"), "ckpt_path": ("unet", "scheduler")}

    def configure(self, device: Optional[torch.device | str] = None, **kwargs: Any) -> None:
        if self.cfg.n_view < 1:
            raise ConfigError(f"system.guidance.n_view must be at least 1, got {self.cfg.n_view}")
        if self.cfg.use_img_loss:
            raise ConfigError("system.guidance.use_img_loss is an SDS option; multiview-diffusion-guidance has recon_loss instead.")
        super().configure(device, **kwargs)
        unet = self.components.unet
        if not isinstance(unet, MultiViewUNet2DConditionModel):
            raise ConfigError(
                f"{self.components.path} holds a single-view UNet ({type(unet).__name__}); multiview-diffusion-guidance "
                f"needs a multi-view one (builtin:shapes32-mv, or MVDream's checkpoint, converted or not)."
            )

    def model_name_or_path(self) -> str:
        """The model path, else the extension's ``ckpt_path``."""
        name = self.cfg.pretrained_model_name_or_path or self.cfg.ckpt_path
        if name is None:
            where = RELEASED_MODELS.get(self.cfg.model_name, "MVDream's release")
            raise ConfigError(
                f"multiview-diffusion-guidance needs a multi-view model: set system.guidance.pretrained_model_name_or_path "
                f"to builtin:shapes32-mv, a converted folder, or the {self.cfg.model_name} checkpoint file ({where})."
            )
        return name

    def sample_size(self) -> tuple[int, int]:
        if self.cfg.image_size is None:
            return super().sample_size()
        size = self.cfg.image_size // self.components.vae_scale_factor
        return size, size

    def _guided_noise(
        self, noisy: Float[Tensor, "B c h w"], t: Int[Tensor, "B"], text_embeddings: Float[Tensor, "2*B L D"], camera: Float[Tensor, "B 16"]
    ) -> tuple[Float[Tensor, "B c h w"], Float[Tensor, "B c h w"]]:
        """(guided noise, conditional noise) from one UNet call over [cond; uncond], cameras in both halves."""
        unet, model = self.components.unet, self.diffusion
        with torch.no_grad():
            output = unet_output(
                unet, torch.cat([noisy] * 2), torch.cat([t] * 2), text_embeddings,
                camera=torch.cat([camera] * 2).to(device=noisy.device, dtype=unet.dtype), num_frames=self.cfg.n_view,
            )
        cond, uncond = output.chunk(2)
        abar = model.alphas_cumprod(t)
        guided = classifier_free_guidance(cond, uncond, self.cfg.guidance_scale)
        return model.epsilon(guided, noisy, abar), model.epsilon(cond, noisy, abar)

    def __call__(
        self,
        rgb: Float[Tensor, "B H W C"],
        prompt_utils: PromptProcessorOutput,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
        c2w: Optional[Float[Tensor, "B 4 4"]] = None,
        rgb_as_latents: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Returns ``loss_sds`` (the x0-reconstruction loss with ``recon_loss``), ``grad_norm``,
        ``grad_nonfinite``, ``min_step``, ``max_step``."""
        batch, n_view = rgb.shape[0], self.cfg.n_view
        if batch % n_view:
            raise ConfigError(
                f"multiview-diffusion-guidance: the batch has {batch} views, not whole groups of n_view={n_view}; "
                f"use the mvdream-random-multiview-camera-datamodule with data.n_view: {n_view} and a batch_size that is a multiple of it."
            )
        if c2w is None:
            raise ValueError("multiview-diffusion-guidance needs the cameras (c2w) of the renders")
        if prompt_utils.use_perp_neg:
            raise ConfigError("Perp-Neg is a single-view remedy; set system.prompt_processor.use_perp_neg: false with multi-view guidance.")
        self.follow(rgb.device)
        latents, _ = self.model_space(rgb, rgb_as_latents)
        text_embeddings = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting)
        camera = mvdream_camera(c2w.float())

        def multiview_target(x: Noised) -> Float[Tensor, "B c h w"]:
            eps, eps_cond = self._guided_noise(x.noisy, x.t, text_embeddings, camera)
            abar = self.diffusion.alphas_cumprod(x.t)
            if not self.cfg.recon_loss:
                return self.weight(x.t) * (eps - x.noise)
            x0 = denoised_from_epsilon(x.noisy, eps, abar)
            if self.cfg.recon_std_rescale > 0:
                x0_cond = denoised_from_epsilon(x.noisy, eps_cond, abar)
                x0 = rescale_to_group_std(x0, x0_cond, n_view, self.cfg.recon_std_rescale)
            return x.latents - x0

        # one timestep for the whole step (as MVDream): every view of a group at the same noise level
        return self.distill(latents, multiview_target, shared_timestep=True)
