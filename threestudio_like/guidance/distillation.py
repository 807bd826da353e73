"""The score-distillation step, written once for every guidance (SDS, VSD, multi-view, InstructPix2Pix).

One step: draw a timestep in [min_step, max_step] (the two schedules, or sqrt annealing), noise
the renders' model-space latents x to it, ask the guidance's target hook for the raw gradient on
x (SDS: w(t) (eps_guided - noise); VSD: w(t) (eps_pretrain - eps_critic); multi-view: x - x0),
zero its non-finite entries (counted, and said once), clip it to ``grad_clip``, and deliver it as
a loss whose gradient with respect to x is exactly that vector divided by the batch size, so any
optimiser can consume it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F

from threestudio_like.config import ConfigError, Range, Schedule, schedule_points, schedule_value
from threestudio_like.guidance.diffusion import FrozenDiffusion, MemoryOptions
from threestudio_like.guidance.models import DiffusionComponents
from threestudio_like.guidance.prompt_processor import PromptProcessorOutput
from threestudio_like.utils.base import BaseModule
from threestudio_like.utils.typing import Float, Int, Tensor

WeightingStrategy = Literal["sds", "uniform", "fantasia"]


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


def distillation_loss(latents: Float[Tensor, "B c h w"], grad: Float[Tensor, "B c h w"]) -> Float[Tensor, ""]:
    """A loss whose gradient with respect to ``latents`` is exactly ``grad / B``: half the squared
    distance to a detached target one gradient step away."""
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents, target, reduction="sum") / latents.shape[0]


@dataclass
class Noised:
    """The step's latents noised to ``t``, as a target hook sees them (all detached)."""

    latents: Float[Tensor, "B c h w"]
    noise: Float[Tensor, "B c h w"]
    noisy: Float[Tensor, "B c h w"]
    t: Int[Tensor, "B"]


# A guidance's target: the raw gradient on the latents for one noised step (run without autograd).
Target = Callable[[Noised], Float[Tensor, "B c h w"]]


class ScoreDistillation(BaseModule):
    """What the distillation guidances share: their config keys, the frozen model, the timestep
    schedule and the step. A guidance holds its frozen model in ``self.diffusion`` (built from
    ``model_name_or_path()`` and ``memory_options()``) and passes its target hook to ``distill``."""

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
    diffusion: FrozenDiffusion
    # the model folders (config keys) and the components each must hold, checked before a run starts
    required_models: dict[str, tuple[str, ...]] = {"pretrained_model_name_or_path": ("unet", "scheduler", "tokenizer")}
    adapts_unet = False  # True: the frozen model gets a private UNet (this guidance adds adapters to it)

    def configure(self, device: Optional[torch.device | str] = None, **kwargs: Any) -> None:
        self.global_step = 0
        self._warned_nonfinite = False
        self.diffusion = FrozenDiffusion(self.model_name_or_path(), device, self.memory_options(), private_unet=self.adapts_unet)
        self.update_step(0)

    def model_name_or_path(self) -> str:
        """The frozen model to load (a guidance with its own model key names it here)."""
        return self.cfg.pretrained_model_name_or_path

    def memory_options(self) -> MemoryOptions:
        cfg = self.cfg
        return MemoryOptions(
            half_precision_weights=cfg.half_precision_weights,
            memory_efficient_attention=cfg.enable_memory_efficient_attention,
            sequential_cpu_offload=cfg.enable_sequential_cpu_offload,
            attention_slicing=cfg.enable_attention_slicing,
            channels_last=cfg.enable_channels_last,
        )

    @property
    def components(self) -> DiffusionComponents:
        """The frozen model's networks (tests swap in stand-in UNets here)."""
        return self.diffusion.components

    def follow(self, device: torch.device) -> None:
        """Put the frozen model where the renders are."""
        self.diffusion.follow(device)

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
        timesteps = self.diffusion.num_train_timesteps
        self.min_step = min(max(round(timesteps * min_percent), 0), timesteps - 1)
        self.max_step = min(max(round(timesteps * max_percent), self.min_step), timesteps - 1)

    # ------------------------------------------------------------------ inputs
    def sample_size(self) -> tuple[int, int]:
        """(h, w) of what the UNet denoises."""
        return self.diffusion.sample_size()

    def model_space(
        self, rgb: Float[Tensor, "B H W C"], rgb_as_latents: bool = False, size: Optional[tuple[int, int]] = None
    ) -> tuple[Float[Tensor, "B c h w"], Float[Tensor, "B 3 H2 W2"]]:
        """The renders as the UNet denoises them, at ``size`` or ``sample_size()`` (see ``FrozenDiffusion.model_space``)."""
        return self.diffusion.model_space(rgb, rgb_as_latents, size or self.sample_size())

    def text_conditioning(
        self,
        prompt_utils: PromptProcessorOutput,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
    ) -> tuple[Float[Tensor, "NB L D"], Optional[Float[Tensor, "B K"]]]:
        """(text embeddings, Perp-Neg weights) for ``FrozenDiffusion.predict_noise``: the [2B] cond / uncond
        rows and None, or with the prompt processor's ``use_perp_neg`` its [4B] rows and [B, 2] weights."""
        if prompt_utils.use_perp_neg:
            return prompt_utils.get_text_embeddings_perp_neg(
                elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
            )
        embeddings = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting)
        return embeddings, None

    def weight(self, t: Int[Tensor, "B"]) -> Float[Tensor, "B 1 1 1"]:
        """w(t) of ``weighting_strategy`` on the frozen model's noise schedule."""
        return sds_weighting(self.cfg.weighting_strategy, self.diffusion.alphas_cumprod(t))

    # ------------------------------------------------------------------ the step
    def noised(
        self, latents: Float[Tensor, "B c h w"], shared_timestep: bool = False, generator: Optional[torch.Generator] = None
    ) -> Noised:
        """Timesteps drawn uniformly from [min_step, max_step] (one for the whole batch with
        ``shared_timestep``), then the noise; both from ``generator`` on its device when given, else
        from the global stream on the latents' device."""
        batch = latents.shape[0]
        where = latents.device if generator is None else generator.device
        t = torch.randint(
            self.min_step, self.max_step + 1, (1 if shared_timestep else batch,), dtype=torch.long, device=where, generator=generator
        )
        t = t.to(latents.device).expand(batch)
        x0 = latents.detach()
        if generator is None:  # randn_like follows the latents' memory layout (often a permuted render)
            noise = torch.randn_like(x0)
        else:
            noise = torch.randn(x0.shape, dtype=x0.dtype, device=where, generator=generator).to(x0.device)
        return Noised(x0, noise, self.diffusion.add_noise(x0, noise, t), t)

    def distill(
        self,
        latents: Float[Tensor, "B c h w"],
        target: Target,
        loss_name: str = "loss_sds",
        shared_timestep: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> dict[str, Any]:
        """One step on ``latents`` (differentiable): ``loss_name`` (d loss / d latents = grad / B),
        ``grad_norm``, ``grad_nonfinite`` (entries zeroed), ``min_step``, ``max_step``."""
        x = self.noised(latents, shared_timestep, generator)
        with torch.no_grad():
            grad, nonfinite = self.clean_gradient(target(x))
        self._report_nonfinite(int(nonfinite), grad.numel())
        return {
            loss_name: distillation_loss(latents, grad),
            "grad_norm": grad.norm(),
            "grad_nonfinite": nonfinite,
            "min_step": self.min_step,
            "max_step": self.max_step,
        }

    def clean_gradient(self, grad: Float[Tensor, "B c h w"]) -> tuple[Float[Tensor, "B c h w"], Int[Tensor, ""]]:
        """NaN/inf entries zeroed (and counted: an fp16 overflow of the frozen model; a NaN render
        never gets here, the system checks renders first), then clamped to ``grad_clip`` when set."""
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
