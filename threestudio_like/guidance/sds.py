"""Score distillation sampling (DreamFusion) with a frozen text-conditioned diffusion model.

For a render x (pixels, or VAE latents for latent models) SDS noises it to a random timestep,
asks the UNet for the noise with classifier-free guidance, and pushes x along
w(t) * (eps_cfg - noise). UNets predicting v or the clean sample instead of the noise (the
scheduler's ``prediction_type``, e.g. v for Stable Diffusion 2.x at 768 px) are converted to
the noise they imply first. The push is delivered as a loss whose gradient with respect to x is
exactly that vector (divided by the batch size), so any optimiser can consume it.

With the prompt processor's ``use_perp_neg`` the guided noise is Perp-Neg's instead of plain
classifier-free guidance (see ``perp_neg_guidance``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError, Range, Schedule, schedule_points, schedule_value
from threestudio_like.guidance.models import DiffusionComponents, load_diffusion_components
from threestudio_like.guidance.prompt_processor import PromptProcessorOutput
from threestudio_like.registry import register
from threestudio_like.utils.backends import optional_import
from threestudio_like.utils.base import BaseModule
from threestudio_like.utils.typing import Float, Int, Tensor

WeightingStrategy = Literal["sds", "uniform", "fantasia"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # diffusers' scheduler.config.prediction_type


def sds_weighting(strategy: str, alphas_cumprod_t: Float[Tensor, "B"]) -> Float[Tensor, "B 1 1 1"]:
    """w(t): "sds" 1 - abar (DreamFusion), "uniform" 1, "fantasia" sqrt(abar) (1 - abar) (Fantasia3D)."""
    abar = alphas_cumprod_t.view(-1, 1, 1, 1)
    if strategy == "sds":
        return 1.0 - abar
    if strategy == "uniform":
        return torch.ones_like(abar)
    if strategy == "fantasia":
        return abar.sqrt() * (1.0 - abar)
    raise ValueError(f"Unknown weighting_strategy '{strategy}': use sds, uniform or fantasia.")


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


def distillation_loss(latents: Float[Tensor, "B c h w"], grad: Float[Tensor, "B c h w"]) -> Float[Tensor, ""]:
    """A loss whose gradient with respect to ``latents`` is exactly ``grad / B``: half the squared
    distance to a detached target one gradient step away."""
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents, target, reduction="sum") / latents.shape[0]


def _image_size(sample_size: Any) -> tuple[int, int]:
    return (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)


def _resize(images: Float[Tensor, "B C H W"], size: tuple[int, int]) -> Float[Tensor, "B C h w"]:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size, mode="bilinear", align_corners=False)


@register("stable-diffusion-guidance", "sds-guidance")
class StableDiffusionGuidance(BaseModule):
    """SDS loss from a diffusers-format model; works in pixel space when the model has no VAE.

    The frozen networks live in ``self.components`` (a plain dataclass, not a submodule), so
    they never enter checkpoints and ``.train()`` / ``.to()`` on the system leave them alone;
    they follow the device of the images passed in instead.
    """

    @dataclass
    class Config(BaseModule.Config):
        pretrained_model_name_or_path: str = "runwayml/stable-diffusion-v1-5"
        enable_memory_efficient_attention: bool = False
        enable_sequential_cpu_offload: bool = False
        enable_attention_slicing: bool = False
        enable_channels_last: bool = False
        guidance_scale: float = 100.0
        grad_clip: Optional[Schedule] = None  # clamp each gradient entry to [-v, v]
        half_precision_weights: bool = True  # fp16 weights on CUDA; CPU always uses fp32
        min_step_percent: Annotated[Schedule, Range(0, 1, why="a fraction of the diffusion timesteps")] = 0.02
        max_step_percent: Annotated[Schedule, Range(0, 1, why="a fraction of the diffusion timesteps")] = 0.98
        sqrt_anneal: bool = False  # timestep decreases deterministically with sqrt(step / trainer_max_steps)
        trainer_max_steps: int = 25000
        use_img_loss: bool = False  # also return loss_sds_img against the denoised image
        weighting_strategy: WeightingStrategy = "sds"
        view_dependent_prompting: bool = True

        def check_config(self, path: str) -> None:
            """min_step_percent <= max_step_percent at every step (both schedules are piecewise
            linear, so at every breakpoint of either)."""
            if self.sqrt_anneal:  # one timestep per step, from the maximum down to the minimum
                return
            where = f"{path}." if path else ""
            steps = {0.0} | {s for s, _ in schedule_points(self.min_step_percent) + schedule_points(self.max_step_percent)}
            for step in sorted(steps):
                low, high = schedule_value(self.min_step_percent, step), schedule_value(self.max_step_percent, step)
                if low > high:
                    raise ConfigError(
                        f"{where}min_step_percent ({low:g}) exceeds {where}max_step_percent ({high:g}) at step {int(step)}; "
                        "the timestep range would be empty."
                    )

    cfg: Config
    components: DiffusionComponents
    # the model folders (config keys) and the components each must hold, checked before a run starts
    required_models: dict[str, tuple[str, ...]] = {"pretrained_model_name_or_path": ("unet", "scheduler", "tokenizer")}
    adapts_unet = False  # True: load a private UNet (this guidance adds adapters to it)

    def configure(self, device: Optional[torch.device | str] = None, **kwargs: Any) -> None:
        self.global_step = 0
        self._warned_nonfinite = False
        self._attach(torch.device(device) if device is not None else torch.device("cpu"))
        self.update_step(0)

    # ------------------------------------------------------------------ frozen model placement
    def _attach(self, device: torch.device) -> None:
        """Load (or re-use) the frozen components on ``device``."""
        device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", so comparisons hold
        self._device = device
        half = self.cfg.half_precision_weights and device.type == "cuda"
        self.weights_dtype = torch.float16 if half else torch.float32
        offload = self.cfg.enable_sequential_cpu_offload and device.type == "cuda"
        load_device = torch.device("cpu") if offload else device
        components = load_diffusion_components(
            self.cfg.pretrained_model_name_or_path, load_device, self.weights_dtype, text_encoder=False,
            private_unet=self.adapts_unet,
        )
        self._apply_memory_options(components, offload)
        self.num_train_timesteps = int(components.scheduler.config.num_train_timesteps)
        self.prediction_type = str(components.scheduler.config.get("prediction_type", "epsilon"))
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"{components.path}: scheduler prediction_type '{self.prediction_type}' is not supported; "
                f"score distillation handles {', '.join(PREDICTION_TYPES)}."
            )
        # object.__setattr__: keep nn.Module from ever treating these as submodules.
        object.__setattr__(self, "components", components)

    def _apply_memory_options(self, parts: DiffusionComponents, offload: bool) -> None:
        unet, cuda = parts.unet, self._device.type == "cuda"
        if self.cfg.enable_memory_efficient_attention and cuda and optional_import("xformers") is not None:
            unet.enable_xformers_memory_efficient_attention()
        # (without xformers, diffusers already uses torch's scaled_dot_product_attention, itself memory-efficient)
        if self.cfg.enable_attention_slicing:
            unet.set_attention_slice("auto")
        if self.cfg.enable_channels_last:
            unet.to(memory_format=torch.channels_last)
        if self.cfg.enable_sequential_cpu_offload:
            if not offload:
                warnings.warn("enable_sequential_cpu_offload only applies on CUDA devices; ignored.")
                return
            accelerate = optional_import("accelerate")
            if accelerate is None:
                raise RuntimeError(
                    "enable_sequential_cpu_offload needs the accelerate package: `pip install 'threestudio-like[accelerate]'`, "
                    "or set enable_sequential_cpu_offload: false."
                )
            for module in (unet, parts.vae):
                if module is not None:
                    accelerate.cpu_offload(module, execution_device=self._device)

    def _follow(self, device: torch.device) -> None:
        if device != self._device:
            self._attach(device)

    # ------------------------------------------------------------------ schedules
    def update_step(self, global_step: int) -> None:
        self.global_step = global_step
        min_percent = schedule_value(self.cfg.min_step_percent, global_step)
        max_percent = schedule_value(self.cfg.max_step_percent, global_step)
        if self.cfg.sqrt_anneal:
            # One timestep per training step, falling from the initial maximum to the minimum.
            progress = min(max(global_step / max(self.cfg.trainer_max_steps, 1), 0.0), 1.0) ** 0.5
            start = schedule_value(self.cfg.max_step_percent, 0)
            min_percent = max_percent = start - (start - min_percent) * progress
        if min_percent > max_percent:
            raise ValueError(
                f"min_step_percent ({min_percent}) exceeds max_step_percent ({max_percent}) at step {global_step}; "
                f"fix the two schedules of the guidance config."
            )
        # round, not int(): 1000 * 0.1 evaluated from a schedule may come out as 99.99...
        last = self.num_train_timesteps - 1
        self.min_step = min(max(round(self.num_train_timesteps * min_percent), 0), last)
        self.max_step = min(max(round(self.num_train_timesteps * max_percent), self.min_step), last)

    # ------------------------------------------------------------------ model space
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
            return _resize(images.float(), sample_hw), images
        factor = parts.vae_scale_factor
        images = _resize(images.float(), (sample_hw[0] * factor, sample_hw[1] * factor))
        x = images * 2.0 - 1.0
        if parts.vae is None:
            return x, images
        posterior = parts.vae.encode(x.to(parts.vae.dtype)).latent_dist
        return (posterior.sample() * parts.vae.config.scaling_factor).float(), images

    def sample_size(self) -> tuple[int, int]:
        """(h, w) of what the UNet denoises: its configured sample size."""
        return _image_size(self.components.unet.config.sample_size)

    def decode(self, latents: Float[Tensor, "B c h w"]) -> Float[Tensor, "B 3 H W"]:
        """Model space -> image in [0, 1]."""
        vae = self.components.vae
        if vae is not None:
            latents = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()
        return (latents * 0.5 + 0.5).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ score distillation
    def text_conditioning(
        self,
        prompt_utils: PromptProcessorOutput,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
    ) -> tuple[Float[Tensor, "NB L D"], Optional[Float[Tensor, "B K"]]]:
        """(text embeddings, Perp-Neg weights) for ``predict_noise``: the [2B] cond / uncond rows and
        None, or with the prompt processor's ``use_perp_neg`` its [4B] rows and [B, 2] weights."""
        if prompt_utils.use_perp_neg:
            return prompt_utils.get_text_embeddings_perp_neg(
                elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
            )
        embeddings = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting)
        return embeddings, None

    @torch.no_grad()
    def predict_noise(
        self,
        noisy: Float[Tensor, "B c h w"],
        t: Int[Tensor, "B"],
        text_embeddings: Float[Tensor, "NB L D"],
        neg_guidance_weights: Optional[Float[Tensor, "B K"]] = None,
    ) -> Float[Tensor, "B c h w"]:
        """Guided noise prediction from one batched UNet call over N = 2 + K copies of ``noisy``.

        Without ``neg_guidance_weights``: classifier-free guidance, eps_u + scale (eps_c - eps_u),
        the embeddings [cond; uncond]. With them: Perp-Neg (``perp_neg_guidance``), the embeddings
        [positive; uncond; negative 1; ...; negative K], blocks of B (the prompt processor's layout).
        The UNet's output (noise, v or clean sample, per the scheduler) is converted to noise.
        """
        unet = self.components.unet
        dtype = unet.dtype
        copies = 2 if neg_guidance_weights is None else 2 + neg_guidance_weights.shape[1]
        output = unet(
            torch.cat([noisy] * copies).to(dtype),
            torch.cat([t] * copies),
            encoder_hidden_states=text_embeddings.to(device=noisy.device, dtype=dtype),
        ).sample.float()
        if neg_guidance_weights is None:
            guided = classifier_free_guidance(*output.chunk(2), self.cfg.guidance_scale)
        else:
            cond, uncond, *negatives = output.chunk(copies)
            weights = neg_guidance_weights.to(device=output.device, dtype=output.dtype)
            guided = perp_neg_guidance(cond, uncond, negatives, weights, self.cfg.guidance_scale)
        return epsilon_from_prediction(guided, noisy, self._alphas_cumprod(t), self.prediction_type)

    def _alphas_cumprod(self, t: Int[Tensor, "B"]) -> Float[Tensor, "B"]:
        return self.components.scheduler.alphas_cumprod.to(t.device)[t].float()

    def sds_gradient(
        self,
        latents: Float[Tensor, "B c h w"],
        t: Int[Tensor, "B"],
        text_embeddings: Float[Tensor, "NB L D"],
        neg_guidance_weights: Optional[Float[Tensor, "B K"]] = None,
    ) -> dict[str, Tensor]:
        """w(t) (eps_guided - noise), cleaned and clipped; plus the noisy input and prediction for diagnostics.
        ``text_embeddings`` / ``neg_guidance_weights`` as ``text_conditioning`` returns them.

        ``nonfinite``: how many gradient entries were NaN/inf and zeroed (an fp16 overflow of the
        frozen model; a NaN render never gets here, the system checks renders first).
        """
        scheduler = self.components.scheduler
        with torch.no_grad():
            noise = torch.randn_like(latents)
            noisy = scheduler.add_noise(latents.detach(), noise, t)
            eps = self.predict_noise(noisy, t, text_embeddings, neg_guidance_weights)
        alphas_cumprod = self._alphas_cumprod(t)
        grad, nonfinite = self.clean_gradient(sds_weighting(self.cfg.weighting_strategy, alphas_cumprod) * (eps - noise))
        return {"grad": grad, "noisy": noisy, "eps": eps, "alphas_cumprod": alphas_cumprod, "nonfinite": nonfinite}

    def clean_gradient(self, grad: Float[Tensor, "B c h w"]) -> tuple[Float[Tensor, "B c h w"], Int[Tensor, ""]]:
        """NaN/inf entries zeroed (and counted), then clamped to ``grad_clip`` when set."""
        nonfinite = (~torch.isfinite(grad)).sum()
        grad = torch.nan_to_num(grad)
        clip = schedule_value(self.cfg.grad_clip, self.global_step)
        if clip is not None:
            grad = grad.clamp(-clip, clip)
        return grad, nonfinite

    def _report_nonfinite(self, count: int, total: int) -> None:
        """Say once per guidance that predictions were zeroed; every step's count is in the output."""
        if count == 0 or self._warned_nonfinite:
            return
        self._warned_nonfinite = True
        warnings.warn(
            f"SDS: the diffusion model's prediction was NaN/inf in {count} of {total} gradient entries at step "
            f"{self.global_step}; they were zeroed (logged as train/grad_nonfinite). If it repeats, set "
            f"system.guidance.half_precision_weights: false."
        )

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
        self._follow(rgb.device)
        batch = rgb.shape[0]
        latents, images = self.model_space(rgb, rgb_as_latents)
        text_embeddings, neg_guidance_weights = self.text_conditioning(prompt_utils, elevation, azimuth, camera_distances)
        t = torch.randint(self.min_step, self.max_step + 1, (batch,), dtype=torch.long, device=latents.device)
        step = self.sds_gradient(latents, t, text_embeddings, neg_guidance_weights)
        grad = step["grad"]
        self._report_nonfinite(int(step["nonfinite"]), grad.numel())
        out: dict[str, Any] = {
            "loss_sds": distillation_loss(latents, grad),
            "grad_norm": grad.norm(),
            "grad_nonfinite": step["nonfinite"],
            "min_step": self.min_step,
            "max_step": self.max_step,
        }
        if self.cfg.use_img_loss and not rgb_as_latents:
            with torch.no_grad():
                denoised_image = self.decode(denoised_from_epsilon(step["noisy"], step["eps"], step["alphas_cumprod"]))
            out["loss_sds_img"] = 0.5 * F.mse_loss(images, denoised_image, reduction="sum") / batch
        return out
