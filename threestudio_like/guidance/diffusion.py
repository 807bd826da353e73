"""A frozen text-conditioned diffusion model, as every distillation guidance uses it.

``FrozenDiffusion`` owns the model's components (loaded through ``models``), puts them on a
device (and moves them when the renders move), applies the memory options, maps renders into
the space its UNet denoises (pixels, or VAE latents) and back, and turns text embeddings into a
classifier-free-guided noise prediction. It is a plain object, not a module: the frozen weights
never enter a checkpoint, and ``.train()`` / ``.to()`` on a system leave them alone.

The functions are the prediction algebra shared by the guidances: converting a UNet's output
(noise, v or clean sample) to noise, the clean sample from noise, classifier-free guidance and
Perp-Neg.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError
from threestudio_like.guidance.models import DiffusionComponents, load_diffusion_components
from threestudio_like.utils.backends import optional_import
from threestudio_like.utils.typing import Float, Int, Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # diffusers' scheduler.config.prediction_type


# --------------------------------------------------------------------------- prediction algebra
def epsilon_from_prediction(
    output: Float[Tensor, "B c h w"],
    noisy: Float[Tensor, "B c h w"],
    alphas_cumprod_t: Float[Tensor, "B"],
    prediction_type: str,
) -> Float[Tensor, "B c h w"]:
    """The noise a UNet output implies for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.

    "epsilon": the output is eps. "v_prediction": v = sqrt(abar) eps - sqrt(1 - abar) x0, so
    eps = sqrt(abar) v + sqrt(1 - abar) x_t. "sample": the output is x0, so
    eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar). All are affine in the output with the same
    x_t for both halves of classifier-free guidance, so guiding before or after converting agree.
    """
    abar = alphas_cumprod_t.view(-1, 1, 1, 1)
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return abar.sqrt() * output + (1.0 - abar).sqrt() * noisy
    if prediction_type == "sample":
        return (noisy - abar.sqrt() * output) / (1.0 - abar).sqrt()
    raise ValueError(f"Unknown prediction_type '{prediction_type}': expected one of {', '.join(PREDICTION_TYPES)}.")


def denoised_from_epsilon(
    noisy: Float[Tensor, "B c h w"], eps: Float[Tensor, "B c h w"], alphas_cumprod_t: Float[Tensor, "B"]
) -> Float[Tensor, "B c h w"]:
    """The clean sample x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    abar = alphas_cumprod_t.view(-1, 1, 1, 1)
    return (noisy - (1.0 - abar).sqrt() * eps) / abar.sqrt()


def classifier_free_guidance(
    cond: Float[Tensor, "B c h w"], uncond: Float[Tensor, "B c h w"], scale: float
) -> Float[Tensor, "B c h w"]:
    """uncond + scale (cond - uncond), written so that scale 1 returns ``cond`` exactly."""
    return cond + (scale - 1.0) * (cond - uncond)


def perpendicular_component(x: Float[Tensor, "B ..."], y: Float[Tensor, "B ..."]) -> Float[Tensor, "B ..."]:
    """The part of each sample of ``x`` orthogonal to the same sample of ``y``: x - (<x, y> / <y, y>) y.

    <y, y> is floored at 1e-6 (as in threestudio), so a zero ``y`` leaves ``x`` unchanged.
    """
    dims = tuple(range(1, x.ndim))
    dot = (x * y).sum(dim=dims, keepdim=True)
    norm2 = (y * y).sum(dim=dims, keepdim=True).clamp_min(1e-6)
    return x - dot / norm2 * y


def perp_neg_guidance(
    cond: Float[Tensor, "B c h w"],
    uncond: Float[Tensor, "B c h w"],
    negatives: Sequence[Float[Tensor, "B c h w"]],
    weights: Float[Tensor, "B K"],
    scale: float,
) -> Float[Tensor, "B c h w"]:
    """Perp-Neg: uncond + scale (e_pos + sum_k weights[:, k] perp(e_k, e_pos)), e = eps - uncond.

    Only the part of each negative direction orthogonal to the positive one acts: a negative
    prompt shares most of its meaning with the positive ("a house, front view" vs "a house,
    back view"), and subtracting it whole would also remove the object. ``weights`` are <= 0
    (away from the negatives); the k-th column goes with ``negatives[k]``. The scale multiplies
    the negatives' push too (as in the paper and threestudio): at scale 1 the result is cond plus that push.
    """
    e_pos = cond - uncond
    away = torch.zeros_like(cond)
    for k, negative in enumerate(negatives):
        away = away + weights[:, k].view(-1, 1, 1, 1) * perpendicular_component(negative - uncond, e_pos)
    return classifier_free_guidance(cond, uncond, scale) + scale * away


def autocast_off(device: torch.device) -> torch.autocast:
    """Autocast disabled for tensors on ``device``: the frozen networks run in their own dtype
    (fp16 weights on CUDA with ``half_precision_weights``, else fp32), not in Lightning's
    ``16-mixed`` / ``bf16-mixed`` autocast (as threestudio's guidances)."""
    return torch.autocast(device_type=device.type, enabled=False)


def unet_output(
    unet: Any, sample: Float[Tensor, "N c_in h w"], t: Int[Tensor, "N"], text: Float[Tensor, "N L D"], **conditions: Any
) -> Float[Tensor, "N c_out h w"]:
    """One UNet call in the UNet's dtype with autocast off, the output back in float32."""
    dtype = unet.dtype
    with autocast_off(sample.device):
        output = unet(sample.to(dtype), t, encoder_hidden_states=text.to(device=sample.device, dtype=dtype), **conditions)
    return output.sample.float()


def resize(images: Float[Tensor, "B C H W"], size: tuple[int, int]) -> Float[Tensor, "B C h w"]:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- the frozen model
@dataclass(frozen=True)
class MemoryOptions:
    """How the frozen networks are held: the guidance configs' ``half_precision_weights`` and ``enable_*`` keys."""

    half_precision_weights: bool = True  # fp16 weights on CUDA; CPU always uses fp32
    memory_efficient_attention: bool = False  # xformers, when installed
    sequential_cpu_offload: bool = False  # accelerate's, CUDA only
    attention_slicing: bool = False
    channels_last: bool = False


class FrozenDiffusion:
    """A frozen diffusion model on one device: components, model space and guided noise prediction.

    ``private_unet``: load a UNet of this object's own (a guidance that adds adapters to it);
    ``vae=False``: skip the VAE (a second UNet sharing another model's latent space).
    """

    def __init__(
        self,
        name_or_path: str,
        device: Optional[torch.device | str] = None,
        memory: MemoryOptions = MemoryOptions(),
        private_unet: bool = False,
        vae: bool = True,
    ) -> None:
        self.name_or_path, self.memory, self.private_unet, self.load_vae = name_or_path, memory, private_unet, vae
        self.attach(torch.device(device) if device is not None else torch.device("cpu"))

    # ------------------------------------------------------------------ placement
    def attach(self, device: torch.device) -> None:
        """Load (or re-use) the frozen components on ``device``."""
        device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", so comparisons hold
        self.device = device
        half = self.memory.half_precision_weights and device.type == "cuda"
        self.weights_dtype = torch.float16 if half else torch.float32
        offload = self.memory.sequential_cpu_offload and device.type == "cuda"
        self.components: DiffusionComponents = load_diffusion_components(
            self.name_or_path, torch.device("cpu") if offload else device, self.weights_dtype, text_encoder=False,
            private_unet=self.private_unet, vae=self.load_vae,
        )
        self._apply_memory_options(offload)
        scheduler_config = self.components.scheduler.config
        self.num_train_timesteps = int(scheduler_config.num_train_timesteps)
        self.prediction_type = str(scheduler_config.get("prediction_type", "epsilon"))
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"{self.components.path}: scheduler prediction_type '{self.prediction_type}' is not supported; "
                f"score distillation handles {', '.join(PREDICTION_TYPES)}."
            )

    def follow(self, device: torch.device) -> None:
        """Move to the device of the renders (the system's), reloading there."""
        if device != self.device:
            self.attach(device)

    def _apply_memory_options(self, offload: bool) -> None:
        unet, options = self.components.unet, self.memory
        if options.memory_efficient_attention and self.device.type == "cuda" and optional_import("xformers") is not None:
            unet.enable_xformers_memory_efficient_attention()
        # (without xformers, diffusers already uses torch's scaled_dot_product_attention, itself memory-efficient)
        if options.attention_slicing:
            unet.set_attention_slice("auto")
        if options.channels_last:
            unet.to(memory_format=torch.channels_last)
        if options.sequential_cpu_offload:
            if not offload:
                warnings.warn("enable_sequential_cpu_offload only applies on CUDA devices; ignored.")
                return
            accelerate = optional_import("accelerate")
            if accelerate is None:
                raise RuntimeError(
                    "enable_sequential_cpu_offload needs the accelerate package: `pip install 'threestudio-like[accelerate]'`, "
                    "or set enable_sequential_cpu_offload: false."
                )
            for module in (unet, self.components.vae):
                if module is not None:
                    accelerate.cpu_offload(module, execution_device=self.device)

    # ------------------------------------------------------------------ model space
    def sample_size(self) -> tuple[int, int]:
        """(h, w) of what the UNet denoises: its configured sample size."""
        size = self.components.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def channels(self) -> int:
        """Channels of what the UNet denoises: the VAE's latents, or RGB in pixel space."""
        vae = self.components.vae
        return int(vae.config.latent_channels) if vae is not None else 3

    def model_space(
        self, rgb: Float[Tensor, "B H W C"], rgb_as_latents: bool = False, size: Optional[tuple[int, int]] = None
    ) -> tuple[Float[Tensor, "B c h w"], Float[Tensor, "B 3 H2 W2"]]:
        """What the UNet denoises (differentiable w.r.t. ``rgb``), and the image at the model's resolution.

        Pixel models: rgb in [0, 1] -> 2 rgb - 1 at the UNet's sample size (or ``size``). Latent
        models: the image at that size x VAE factor, encoded and scaled. ``rgb_as_latents``: the
        input is already in model space (its channels are the UNet's); it is only resized.
        """
        parts = self.components
        sample_hw = size or self.sample_size()
        images = rgb.permute(0, 3, 1, 2)
        if rgb_as_latents:
            return resize(images.float(), sample_hw), images
        factor = parts.vae_scale_factor
        images = resize(images.float(), (sample_hw[0] * factor, sample_hw[1] * factor))
        x = images * 2.0 - 1.0
        if parts.vae is None:
            return x, images
        with autocast_off(x.device):
            posterior = parts.vae.encode(x.to(parts.vae.dtype)).latent_dist
            latents = posterior.sample() * parts.vae.config.scaling_factor
        return latents.float(), images

    def decode(self, latents: Float[Tensor, "B c h w"]) -> Float[Tensor, "B 3 H W"]:
        """Model space -> image in [0, 1]."""
        vae = self.components.vae
        if vae is not None:
            with autocast_off(latents.device):
                latents = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()
        return (latents * 0.5 + 0.5).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ noise
    def alphas_cumprod(self, t: Int[Tensor, "B"]) -> Float[Tensor, "B"]:
        return self.components.scheduler.alphas_cumprod.to(t.device)[t].float()

    def add_noise(
        self, x0: Float[Tensor, "B c h w"], noise: Float[Tensor, "B c h w"], t: Int[Tensor, "B"]
    ) -> Float[Tensor, "B c h w"]:
        return self.components.scheduler.add_noise(x0, noise, t)

    def epsilon(
        self, output: Float[Tensor, "B c h w"], noisy: Float[Tensor, "B c h w"], alphas_cumprod_t: Float[Tensor, "B"]
    ) -> Float[Tensor, "B c h w"]:
        """The noise this model's output (its scheduler's ``prediction_type``) implies."""
        return epsilon_from_prediction(output, noisy, alphas_cumprod_t, self.prediction_type)

    @torch.no_grad()
    def predict_noise(
        self,
        noisy: Float[Tensor, "B c h w"],
        t: Int[Tensor, "B"],
        text_embeddings: Float[Tensor, "NB L D"],
        scale: float,
        neg_guidance_weights: Optional[Float[Tensor, "B K"]] = None,
    ) -> Float[Tensor, "B c h w"]:
        """Guided noise prediction from one batched UNet call over N = 2 + K copies of ``noisy``.

        Without ``neg_guidance_weights``: classifier-free guidance, eps_u + scale (eps_c - eps_u),
        the embeddings [cond; uncond]. With them: Perp-Neg (``perp_neg_guidance``), the embeddings
        [positive; uncond; negative 1; ...; negative K], blocks of B (the prompt processor's layout).
        The UNet's output (noise, v or clean sample, per the scheduler) is converted to noise.
        """
        copies = 2 if neg_guidance_weights is None else 2 + neg_guidance_weights.shape[1]
        output = unet_output(self.components.unet, torch.cat([noisy] * copies), torch.cat([t] * copies), text_embeddings)
        if neg_guidance_weights is None:
            guided = classifier_free_guidance(*output.chunk(2), scale)
        else:
            cond, uncond, *negatives = output.chunk(copies)
            weights = neg_guidance_weights.to(device=output.device, dtype=output.dtype)
            guided = perp_neg_guidance(cond, uncond, negatives, weights, scale)
        return self.epsilon(guided, noisy, self.alphas_cumprod(t))
