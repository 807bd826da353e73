"""The embedded prior's networks and its diffusers-format folder.

A pixel-space ``UNet2DConditionModel`` (32 x 32 RGB, no VAE) conditioned on a small
``CLIPTextModel`` trained with it from scratch, a CLIP tokenizer whose vocabulary holds every
caption word as one token, and Stable Diffusion's DDPM noise schedule. The folder is laid out
like a ``StableDiffusionPipeline`` snapshot, so ``guidance/models.py`` loads it with the code
that loads Stable Diffusion.

Besides cross-attention (at the 8 x 8 level and the middle only, where it is cheap), the UNet
adds an attention-pooled text vector to its timestep embedding (diffusers'
``addition_embed_type="text"``). Every residual block then sees the caption, which is what lets
a network this small get colours right at every resolution; the call signature is unchanged
(``unet(x, t, encoder_hidden_states=...)``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from lab.priors.procedural import CAPTION_WORDS, IMAGE_SIZE
from threestudio_like.priors.tiny import BOS_TOKEN, EOS_TOKEN, write_model_index, write_tiny_clip_tokenizer
from threestudio_like.utils.typing import Float, Int, Tensor

KNOWN_WORDS_FILE = "known_words.json"
ARCHITECTURE_FILE = "architecture.json"  # only in training folders, to rebuild for resuming


@dataclass
class PriorArchitecture:
    """Sizes of the prior's networks (the defaults are the shipped ``shapes32`` model)."""

    sample_size: int = IMAGE_SIZE
    block_out_channels: tuple[int, ...] = (48, 96, 96)
    layers_per_block: int = 1
    attention_heads: int = 4
    text_hidden_size: int = 128
    text_layers: int = 3
    text_heads: int = 4
    # Captions are at most 8 tokens; 24 positions leave room for user prompts while keeping
    # cross-attention cheap. The prompt processor pads to min(tokenizer, encoder) lengths.
    text_max_length: int = 24
    pooled_text_in_time_embedding: bool = True
    # Set: a multi-view UNet (MVDream's camera embedding and 3D self-attention) with this camera size.
    camera_dim: Optional[int] = None
    # An editing model (InstructPix2Pix): the UNet also sees the image to edit, concatenated
    # to its input (6 channels in pixel space), and the vocabulary holds the instruction words.
    image_condition: bool = False

    @property
    def words(self) -> tuple[str, ...]:
        """Every word of the captions (or instructions) the model is trained on, one token each."""
        from lab.priors.edit_pairs import INSTRUCTION_WORDS

        return CAPTION_WORDS + (INSTRUCTION_WORDS if self.image_condition else ())


# --------------------------------------------------------------------------- components
def build_unet(arch: PriorArchitecture) -> Any:
    from diffusers import UNet2DConditionModel

    levels = len(arch.block_out_channels)
    # attention only at the coarsest level (and in the mid block, always cross-attention)
    down = ("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",)
    up = ("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1)
    extra: dict[str, Any] = {}
    if arch.pooled_text_in_time_embedding:
        extra = {"addition_embed_type": "text", "addition_embed_type_num_heads": arch.attention_heads}
    from threestudio_like.guidance.multiview_unet import MultiViewUNet2DConditionModel

    if arch.camera_dim is not None:
        extra.update(class_embed_type="projection", projection_class_embeddings_input_dim=arch.camera_dim)
    cls = UNet2DConditionModel if arch.camera_dim is None else MultiViewUNet2DConditionModel
    return cls(
        sample_size=arch.sample_size,
        in_channels=6 if arch.image_condition else 3,
        out_channels=3,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(arch.block_out_channels),
        layers_per_block=arch.layers_per_block,
        cross_attention_dim=arch.text_hidden_size,
        attention_head_dim=arch.attention_heads,  # diffusers reads this as the number of heads
        norm_num_groups=16,
        **extra,
    )


def build_text_encoder(arch: PriorArchitecture, vocab: dict[str, int]) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=arch.text_hidden_size,
        intermediate_size=arch.text_hidden_size * 4,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=arch.text_max_length,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    return CLIPTextModel(config)


def build_scheduler() -> Any:
    """Stable Diffusion's training noise schedule (scaled-linear betas), epsilon prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def write_tokenizer(folder: str, arch: PriorArchitecture) -> dict[str, int]:
    """CLIP tokenizer files with every caption word as a single token, padded to ``text_max_length``.

    BPE applies merges by rank, so a word's chain of prefix merges can be pre-empted by an
    earlier word's merge of an inner pair ("r e" from "red" splits "green" into g-re-e-n).
    Word orders are tried (longest first, then seeded shuffles) until every word is one token.
    """
    # A stale tokenizer.json from an earlier save would be loaded instead of the files written
    # here (and disagree with them): start from an empty folder.
    shutil.rmtree(folder, ignore_errors=True)
    words = sorted(dict.fromkeys(arch.words), key=lambda w: (-len(w), w))
    rng = random.Random(0)
    for _ in range(500):
        vocab = write_tiny_clip_tokenizer(folder, words)
        tokenizer = load_tokenizer(folder)
        if all(len(tokenizer(w).input_ids) == 3 for w in words):
            break
        rng.shuffle(words)
    else:
        raise RuntimeError(f"write_tokenizer: found no word order making every caption word one token: {words}")
    config_path = os.path.join(folder, "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["model_max_length"] = arch.text_max_length
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    return vocab


def load_tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


# --------------------------------------------------------------------------- the model
class PriorModel(nn.Module):
    """UNet + text encoder trained together; the tokenizer and noise schedule ride along."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer: Any, scheduler: Any, arch: PriorArchitecture) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.arch = arch

    @property
    def max_length(self) -> int:
        return min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)

    def tokenize(self, captions: Sequence[str]) -> Int[Tensor, "B L"]:
        """Token ids padded exactly as the prompt processor pads them."""
        tokens = self.tokenizer(list(captions), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt")
        return tokens.input_ids

    def encode(self, input_ids: Int[Tensor, "B L"]) -> Float[Tensor, "B L D"]:
        return self.text_encoder(input_ids.to(self.device))[0]

    def forward(
        self,
        noisy: Float[Tensor, "B 3 H W"],
        timesteps: Int[Tensor, "B"],
        input_ids: Int[Tensor, "B L"],
        condition: Optional[Float[Tensor, "B 3 H W"]] = None,
        **unet_options: Any,
    ) -> Float[Tensor, "B 3 H W"]:
        """Predicted noise (epsilon). ``condition``: an editing model's source image, in [-1, 1];
        ``unet_options``: ``camera`` and ``num_frames`` for a multi-view UNet."""
        x = noisy if condition is None else torch.cat([noisy, condition], dim=1)
        return self.unet(x, timesteps, encoder_hidden_states=self.encode(input_ids), **unet_options).sample

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    # ------------------------------------------------------------------ folders
    @classmethod
    def create(cls, folder: str, arch: Optional[PriorArchitecture] = None, seed: int = 0) -> "PriorModel":
        """Fresh, seeded networks; the tokenizer is written to ``folder/tokenizer``."""
        arch = arch or PriorArchitecture()
        vocab = write_tokenizer(os.path.join(folder, "tokenizer"), arch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = build_unet(arch)
            text_encoder = build_text_encoder(arch, vocab)
        return cls(unet, text_encoder, load_tokenizer(os.path.join(folder, "tokenizer")), build_scheduler(), arch)

    @classmethod
    def load(cls, folder: str) -> "PriorModel":
        """A prior folder written by ``save``, or ``builtin:NAME`` (networks in train mode, on the CPU)."""
        from diffusers import DDPMScheduler
        from transformers import CLIPTextModel

        from lab import lab_side
        from threestudio_like.guidance.models import BUILTIN_PREFIX, resolve_model_path, unet_class

        if folder.startswith(BUILTIN_PREFIX):
            folder = resolve_model_path(folder)

        arch_path = os.path.join(lab_side(folder), ARCHITECTURE_FILE)  # a built-in prior's is in lab/weights/<name>
        arch = PriorArchitecture()
        if os.path.isfile(arch_path):
            with open(arch_path) as f:
                data = json.load(f)
            arch = PriorArchitecture(**{**data, "block_out_channels": tuple(data["block_out_channels"])})
        unet = unet_class(os.path.join(folder, "unet")).from_pretrained(os.path.join(folder, "unet"))
        text_encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"))
        tokenizer = load_tokenizer(os.path.join(folder, "tokenizer"))
        scheduler = DDPMScheduler.from_pretrained(os.path.join(folder, "scheduler"))
        return cls(unet, text_encoder, tokenizer, scheduler, arch)

    def save(self, folder: str) -> None:
        """Write the diffusers-format folder (safetensors weights, model_index.json, known_words.json)."""
        os.makedirs(folder, exist_ok=True)
        self.unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
        self.text_encoder.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
        self.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
        self.scheduler.save_pretrained(os.path.join(folder, "scheduler"))
        pipeline = "StableDiffusionInstructPix2PixPipeline" if self.arch.image_condition else "StableDiffusionPipeline"
        write_model_index(folder, with_vae=False, pipeline=pipeline)
        with open(os.path.join(folder, KNOWN_WORDS_FILE), "w") as f:
            json.dump(sorted(set(self.arch.words)), f, indent=2)
        with open(os.path.join(folder, ARCHITECTURE_FILE), "w") as f:
            json.dump(asdict(self.arch), f, indent=2)


def with_image_condition(unet: Any) -> Any:
    """InstructPix2Pix's start from a text-to-image UNet: the same network with ``in_channels``
    doubled for the image to edit, whose new input weights are zero (it first ignores the image)."""
    config = dict(unet.config)
    channels = config["in_channels"]
    edit_unet = type(unet).from_config({**config, "in_channels": 2 * channels})
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([weight, torch.zeros_like(weight)], dim=1)
    edit_unet.load_state_dict(state)
    return edit_unet


def copy_text_encoder_by_word(target: "PriorModel", source: "PriorModel") -> None:
    """Warm-start ``target``'s text encoder from ``source``'s, whose vocabulary may differ:
    token embeddings move by token string (new words keep their fresh rows), the rest as is."""
    state = source.text_encoder.state_dict()
    (key,) = [k for k in state if k.endswith("embeddings.token_embedding.weight")]  # prefix varies by transformers version
    old_rows, rows = state[key], target.text_encoder.state_dict()[key].clone()
    old_vocab = source.tokenizer.get_vocab()
    for token, index in target.tokenizer.get_vocab().items():
        if token in old_vocab:
            rows[index] = old_rows[old_vocab[token]]
    target.text_encoder.load_state_dict({**state, key: rows})


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_images(
    model: PriorModel,
    captions: Sequence[str],
    guidance_scale: float = 1.0,
    steps: int = 50,
    generator: Optional[torch.Generator] = None,
    batch_size: int = 64,
    cameras: Optional[Float[Tensor, "B 16"]] = None,
    num_frames: int = 1,
) -> Float[Tensor, "B 3 H W"]:
    """DDIM samples in [0, 1] for ``captions`` with classifier-free guidance (scale 1 = none).

    A multi-view prior samples groups of ``num_frames`` adjacent captions jointly, each view told
    its camera (``cameras``, MVDream's condition: ``multiview_unet.mvdream_camera``)."""
    if len(captions) % num_frames or batch_size % num_frames:
        raise ValueError(f"sample_images: captions ({len(captions)}) and batch_size ({batch_size}) must be whole groups of {num_frames}")
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler.config, set_alpha_to_one=False)
    size = model.unet.config.sample_size
    uncond = model.encode(model.tokenize([""]))
    out = []
    for start in range(0, len(captions), batch_size):
        chunk = list(captions[start : start + batch_size])
        cond = model.encode(model.tokenize(chunk))
        x = torch.randn(len(chunk), 3, size, size, generator=generator).to(model.device)
        views: dict[str, Any] = {}
        if cameras is not None:
            camera = cameras[start : start + batch_size].to(model.device)
            views = {"camera": camera, "num_frames": num_frames}
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            if guidance_scale == 1.0:
                eps = model.unet(x, t, encoder_hidden_states=cond, **views).sample
            else:
                hidden = torch.cat([cond, uncond.expand_as(cond)])
                doubled = {k: torch.cat([v, v]) if isinstance(v, Tensor) else v for k, v in views.items()}
                eps_c, eps_u = model.unet(torch.cat([x, x]), t, encoder_hidden_states=hidden, **doubled).sample.chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            result = scheduler.step(eps, t, x)
            x, clean = result.prev_sample, result.pred_original_sample
        # The last DDIM step lands on abar[0] < 1, which leaves noise of std ~0.03: in pixel
        # space (no VAE to hide it) return the final clean-image estimate instead.
        out.append(((clean.clamp(-1, 1) + 1) / 2).cpu())
    return torch.cat(out)
