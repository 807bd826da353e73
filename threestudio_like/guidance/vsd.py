"""Variational score distillation (ProlificDreamer) with a camera-conditioned LoRA critic.

SDS pushes a render along w(t) (eps_pretrain - noise). VSD replaces the sampled noise by the
score of a second diffusion model, the critic, which is trained online on the current renders:
the push becomes w(t) (eps_pretrain - eps_critic), and it vanishes once the renders look to the
frozen model as they look to a model fitted to them.

The critic is a LoRA adapter (peft) on the attention projections of a UNet, plus a camera
embedding added to the UNet's time embedding (diffusers' class embedding). By default the
adapter sits on the frozen UNet itself: one set of base weights in memory, and the pretrained
score is that UNet with the adapter and the camera embedding switched off. With
``pretrained_model_name_or_path_lora`` the critic is a separate model instead (threestudio uses
Stable Diffusion 2.1 at 768 px, a v-prediction model, beside 2.1-base).

Only the adapter and the camera embedding are submodules of this guidance: they train in the
optimiser group ``guidance`` and are saved in checkpoints; the base weights never are.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from threestudio_like.config import ConfigError, Range
from threestudio_like.guidance.diffusion import FrozenDiffusion, MemoryOptions, classifier_free_guidance, unet_output
from threestudio_like.guidance.distillation import Noised, ScoreDistillation
from threestudio_like.guidance.prompt_processor import PromptProcessorOutput
from threestudio_like.registry import register
from threestudio_like.utils.typing import Float, Int, Tensor

ADAPTER_NAME = "vsd_critic"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention layer's projections


@register("stable-diffusion-vsd-guidance", "vsd-guidance")
class StableDiffusionVSDGuidance(ScoreDistillation):
    """``loss_vsd`` for the 3D model and ``loss_lora`` for the critic, from one call."""

    @dataclass
    class Config(ScoreDistillation.Config):
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
        # None: the adapter sits on the frozen UNet itself; a model: a separate critic UNet
        pretrained_model_name_or_path_lora: Optional[str] = None
        guidance_scale: float = 7.5
        # 1.0 is VSD; below 1 mixes toward the camera-free critic: entropic score distillation (ESD)
        guidance_scale_lora: float = 1.0
        lora_cfg_training: bool = True  # drop the camera while training the critic, so it knows the camera-free score
        camera_condition_dropout: float = 0.1  # the probability of that drop, per render
        lora_n_timestamp_samples: Annotated[int, Range(1, why="timesteps drawn per render for the critic's loss")] = 1  # timesteps drawn per render for the critic's loss
        lora_rank: Annotated[int, Range(1, why="the rank of the critic's LoRA adapter")] = 4
        lora_alpha: Optional[float] = None  # None: equal to the rank (adapter scale 1)
        camera_condition_type: Literal["extrinsics", "mvp"] = "extrinsics"

    cfg: Config
    critic_model: FrozenDiffusion  # the guided model itself (adapter on its UNet), or the separate critic model
    required_models = {
        "pretrained_model_name_or_path": ("unet", "scheduler", "tokenizer"),
        "pretrained_model_name_or_path_lora": ("unet", "scheduler"),
    }

    @property
    def shares_unet(self) -> bool:
        """The critic is an adapter on the frozen UNet itself (no separate critic model)."""
        return self.cfg.pretrained_model_name_or_path_lora is None

    adapts_unet = shares_unet  # the frozen components load a private UNet to put the adapter on

    def configure(self, device: Optional[torch.device | str] = None, **kwargs: Any) -> None:
        if self.cfg.use_img_loss:
            raise ConfigError("system.guidance.use_img_loss is an SDS option; the VSD guidance has no image loss.")
        super().configure(device=device, **kwargs)
        self._build_critic()

    def _build_critic(self) -> None:
        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer

        if self.shares_unet:
            self.critic_model = self.diffusion
        else:  # a UNet of its own, in the guided model's latent space (no VAE) and weight dtype
            memory = MemoryOptions(half_precision_weights=self.cfg.half_precision_weights)
            self.critic_model = FrozenDiffusion(
                self.cfg.pretrained_model_name_or_path_lora, self.diffusion.device, memory, private_unet=True, vae=False
            )
            self._check_critic_fits(self.critic_model.components)
        unet = self.critic_unet
        if unet.class_embedding is not None:
            raise ConfigError(
                f"The critic UNet of {self.cfg.pretrained_model_name_or_path_lora or self.cfg.pretrained_model_name_or_path} "
                "already has a class embedding; the camera condition needs that slot. Use a text-only UNet."
            )
        alpha = self.cfg.lora_alpha if self.cfg.lora_alpha is not None else self.cfg.lora_rank
        # init_lora_weights=True: A random, B zero, so the adapter starts as the identity.
        unet.add_adapter(
            LoraConfig(r=self.cfg.lora_rank, lora_alpha=alpha, init_lora_weights=True, target_modules=LORA_TARGETS),
            adapter_name=ADAPTER_NAME,
        )
        self.lora = nn.ModuleDict(
            {
                name.replace(".", "-"): nn.ModuleList([layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME]])
                for name, layer in unet.named_modules()
                if isinstance(layer, LoraLayer)
            }
        )
        if not self.lora:
            raise ConfigError(f"The critic UNet has no attention projections ({', '.join(LORA_TARGETS)}) to adapt.")
        # The camera -> time-embedding MLP; its last layer starts at zero so the critic starts as the frozen model.
        self.camera_embedding = TimestepEmbedding(16, unet.time_embedding.linear_2.out_features)
        nn.init.zeros_(self.camera_embedding.linear_2.weight)
        nn.init.zeros_(self.camera_embedding.linear_2.bias)
        # Trained in float32 even beside half-precision base weights (peft casts the activations).
        self.lora.to(device=self.diffusion.device, dtype=torch.float32).requires_grad_(True)
        self.camera_embedding.to(self.diffusion.device)
        unet.class_embedding = self.camera_embedding  # diffusers adds it to the time embedding

    # the critic's networks live in ``critic_model`` (a plain object): base weights stay out of checkpoints
    @property
    def critic_unet(self) -> Any:
        return self.critic_model.components.unet

    @property
    def critic_scheduler(self) -> Any:
        return self.critic_model.components.scheduler

    @property
    def critic_prediction_type(self) -> str:
        return self.critic_model.prediction_type

    def _check_critic_fits(self, critic: Any) -> None:
        """A separate critic must denoise the same space with the same text embeddings."""
        ours, theirs = self.components.unet.config, critic.unet.config
        for key in ("in_channels", "cross_attention_dim"):
            if ours[key] != theirs[key]:
                raise ConfigError(
                    f"system.guidance.pretrained_model_name_or_path_lora ({critic.path}) has {key}={theirs[key]} but the "
                    f"guided model has {ours[key]}; the critic must share the guided model's latent space and text encoder."
                )

    def follow(self, device: torch.device) -> None:
        """The adapter and camera embedding sit on the loaded UNet: reloading elsewhere would lose them."""
        if device != self.diffusion.device:
            raise RuntimeError(
                f"The VSD guidance was built on {self.diffusion.device} but the renders are on {device}; build it on the "
                f"device it trains on (the system's prepare_for_training(device))."
            )

    # ------------------------------------------------------------------ the two scores
    @contextmanager
    def _frozen_unet(self) -> Iterator[Any]:
        """The pretrained UNet: with a shared critic, the same UNet with adapter and camera switched off."""
        unet = self.components.unet
        if not self.shares_unet:
            yield unet
            return
        unet.disable_adapters()
        unet.class_embedding = None
        try:
            yield unet
        finally:
            unet.enable_adapters()
            unet.class_embedding = self.camera_embedding

    @torch.no_grad()
    def predict_noise(
        self,
        noisy: Float[Tensor, "B c h w"],
        t: Int[Tensor, "B"],
        text_embeddings: Float[Tensor, "NB L D"],
        neg_guidance_weights: Optional[Float[Tensor, "B K"]] = None,
    ) -> Float[Tensor, "B c h w"]:
        """eps_pretrain: the frozen model with classifier-free guidance (Perp-Neg given ``neg_guidance_weights``)."""
        with self._frozen_unet():
            return self.diffusion.predict_noise(noisy, t, text_embeddings, self.cfg.guidance_scale, neg_guidance_weights)

    def camera_condition(
        self, c2w: Optional[Float[Tensor, "B 4 4"]], mvp_mtx: Optional[Float[Tensor, "B 4 4"]]
    ) -> Float[Tensor, "B 16"]:
        """The flattened camera matrix the critic is conditioned on (``camera_condition_type``)."""
        matrix = c2w if self.cfg.camera_condition_type == "extrinsics" else mvp_mtx
        if matrix is None:
            name = "c2w" if self.cfg.camera_condition_type == "extrinsics" else "mvp_mtx"
            raise ValueError(
                f"The VSD guidance needs the camera batch ({name}) for its critic: call it as "
                f"guidance(rgb, prompt_utils, **batch)."
            )
        return matrix.reshape(matrix.shape[0], 16).float()

    def _critic_output(
        self, noisy: Float[Tensor, "N c h w"], t: Int[Tensor, "N"], text: Float[Tensor, "N L D"], camera: Float[Tensor, "N 16"]
    ) -> Float[Tensor, "N c h w"]:
        return unet_output(self.critic_unet, noisy, t, text, class_labels=camera)

    @torch.no_grad()
    def critic_noise(
        self, noisy: Float[Tensor, "B c h w"], t: Int[Tensor, "B"], text: Float[Tensor, "B L D"], camera: Float[Tensor, "B 16"]
    ) -> Float[Tensor, "B c h w"]:
        """eps_critic = critic(no camera) + guidance_scale_lora (critic(camera) - critic(no camera))."""
        output = self._critic_output(
            torch.cat([noisy, noisy]), torch.cat([t, t]), torch.cat([text, text]),
            torch.cat([camera, torch.zeros_like(camera)]),
        )
        guided = classifier_free_guidance(*output.chunk(2), self.cfg.guidance_scale_lora)
        return self.critic_model.epsilon(guided, noisy, self.critic_model.alphas_cumprod(t))

    def critic_loss(
        self, latents: Float[Tensor, "B c h w"], text: Float[Tensor, "B L D"], camera: Float[Tensor, "B 16"]
    ) -> Float[Tensor, ""]:
        """The critic's diffusion loss on the (detached) renders, t uniform over all timesteps,
        the target by the critic's prediction type."""
        n = self.cfg.lora_n_timestamp_samples
        x0 = latents.detach().repeat(n, 1, 1, 1)
        text, camera = text.repeat(n, 1, 1), camera.repeat(n, 1)
        scheduler = self.critic_scheduler
        t = torch.randint(0, int(scheduler.config.num_train_timesteps), (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        noisy = scheduler.add_noise(x0, noise, t)
        if self.critic_prediction_type == "epsilon":
            target = noise
        elif self.critic_prediction_type == "v_prediction":
            target = scheduler.get_velocity(x0, noise, t)
        else:
            target = x0
        if self.cfg.lora_cfg_training:
            dropped = torch.rand(camera.shape[0], 1, device=camera.device) < self.cfg.camera_condition_dropout
            camera = torch.where(dropped, torch.zeros_like(camera), camera)
        return F.mse_loss(self._critic_output(noisy, t, text, camera), target.float())

    # ------------------------------------------------------------------ the step
    def __call__(
        self,
        rgb: Float[Tensor, "B H W C"],
        prompt_utils: PromptProcessorOutput,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
        c2w: Optional[Float[Tensor, "B 4 4"]] = None,
        mvp_mtx: Optional[Float[Tensor, "B 4 4"]] = None,
        rgb_as_latents: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``loss_vsd`` (d loss / d latents = w(t) (eps_pretrain - eps_critic) / B), ``loss_lora`` (the
        critic's), ``grad_norm``, ``grad_nonfinite``, ``min_step``, ``max_step``."""
        self.follow(rgb.device)
        latents, _ = self.model_space(rgb, rgb_as_latents)
        camera = self.camera_condition(c2w, mvp_mtx).to(latents.device)
        text_vd, neg_guidance_weights = self.text_conditioning(prompt_utils, elevation, azimuth, camera_distances)
        # the critic sees the view-independent prompt: the camera tells it the view
        text = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances, False).chunk(2)[0]

        def vsd_target(x: Noised) -> Float[Tensor, "B c h w"]:
            eps_pretrain = self.predict_noise(x.noisy, x.t, text_vd, neg_guidance_weights)
            return self.weight(x.t) * (eps_pretrain - self.critic_noise(x.noisy, x.t, text, camera))

        out = self.distill(latents, vsd_target, loss_name="loss_vsd")
        out["loss_lora"] = self.critic_loss(latents, text, camera)  # after loss_vsd: the system sums them in this order
        return out
