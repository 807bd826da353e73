"""Tiny diffusion models built in code: for tests, benchmarks and as a training starting point.

``build_tiny_diffusion_model`` writes an ordinary diffusers-format folder (UNet, CLIP text
encoder, CLIP tokenizer, DDPM scheduler, optional VAE) with random, seeded weights, so the
loading code that serves Stable Diffusion is exercised without downloading anything.

``TargetImageUNet`` is an analytic "oracle" denoiser: it predicts exactly the noise that makes
the clean image equal to a fixed target. Score distillation against it must turn any render
into the target, which lets tests check optimisation behaviour, not just tensor shapes.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from threestudio_like.guidance.multiview_unet import CAMERA_DIM, MultiViewUNet2DConditionModel
from threestudio_like.utils.typing import Float, Tensor

TOKENIZER_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# Whole-word tokens (beyond single characters) so common prompt words become one token each,
# like a real CLIP vocabulary; any other text still tokenizes, character by character.
TINY_VOCAB_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "dslr", "render", "model",
    "front", "side", "back", "overhead", "view",
    "red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "gray",
    "cube", "sphere", "ball", "cone", "cylinder", "torus", "box", "hamburger", "chair", "car",
)


# --------------------------------------------------------------------------- tokenizer
def byte_to_unicode_table() -> dict[int, str]:
    """Byte-level BPE's reversible byte -> printable character map (GPT-2 / CLIP convention).

    Printable Latin-1 bytes stand for themselves; the remaining bytes are shifted to code
    points from 256 upwards so that no vocabulary entry is whitespace or a control character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def tiny_clip_vocabulary(words: Sequence[str] = TINY_VOCAB_WORDS) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary and merge list covering every byte plus whole ``words``.

    Layout mirrors CLIP's: 256 byte characters, the same with the end-of-word mark, merged
    tokens, then the two special tokens. Each word gets left-to-right prefix merges ending in
    ``word</w>``.
    """
    chars = list(byte_to_unicode_table().values())
    tokens: list[str] = chars + [c + END_OF_WORD for c in chars]
    merges: list[str] = []
    known = set(tokens)
    for word in words:
        if len(word) < 2:
            continue
        prefix = word[0]
        for i, ch in enumerate(word[1:], start=1):
            last = i == len(word) - 1
            right = ch + END_OF_WORD if last else ch
            merged = prefix + right
            merge = f"{prefix} {right}"
            if merged not in known:
                known.add(merged)
                tokens.append(merged)
                merges.append(merge)
            prefix = prefix + ch
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tiny_clip_tokenizer(folder: str, words: Sequence[str] = TINY_VOCAB_WORDS) -> dict[str, int]:
    """Write the tiny vocabulary as a CLIP tokenizer folder; returns the vocab."""
    vocab, merges = tiny_clip_vocabulary(words)
    write_clip_tokenizer_files(folder, vocab, merges)
    return vocab


def write_clip_tokenizer_files(folder: str, vocab: dict[str, int], merges: Sequence[str], pad_token: str = EOS_TOKEN) -> None:
    """``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json`` (CLIP format)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        # CLIP's merges file starts with a version line that readers skip.
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": pad_token}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": TOKENIZER_MAX_LENGTH, "do_lower_case": True, **special}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)


# --------------------------------------------------------------------------- model folder
def build_tiny_diffusion_model(
    path: str,
    sample_size: int = 32,
    in_channels: int = 3,
    with_vae: bool = False,
    seed: int = 0,
    multiview: bool = False,
    image_condition: bool = False,
) -> str:
    """Write a tiny, randomly initialised diffusers-format model folder at ``path``; returns ``path``.

    Without a VAE the UNet works in pixel space on ``in_channels`` channels at ``sample_size``;
    with a VAE the UNet works on 4 latent channels and images are 8x ``sample_size``.
    Weights are safetensors and depend only on ``seed``. ``multiview``: the UNet is MVDream's
    (camera embedding, 3D self-attention; ``guidance/multiview_unet.py``), camera embedding random.
    ``image_condition``: an InstructPix2Pix layout (the UNet also takes the image to edit: twice the
    input channels; ``model_index.json`` names ``StableDiffusionInstructPix2PixPipeline``).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    os.makedirs(path, exist_ok=True)
    vocab = write_tiny_clip_tokenizer(os.path.join(path, "tokenizer"))
    hidden = 32
    unet_channels = 4 if with_vae else in_channels

    # fork_rng: building the folder must not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        camera = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": CAMERA_DIM} if multiview else {}
        unet = (MultiViewUNet2DConditionModel if multiview else UNet2DConditionModel)(
            **camera,
            sample_size=sample_size,
            in_channels=unet_channels * (2 if image_condition else 1),
            out_channels=unet_channels,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=hidden,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        unet.save_pretrained(os.path.join(path, "unet"), safe_serialization=True)

        torch.manual_seed(seed + 1)
        text_config = CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TOKENIZER_MAX_LENGTH,
            bos_token_id=vocab[BOS_TOKEN],
            eos_token_id=vocab[EOS_TOKEN],
            pad_token_id=vocab[EOS_TOKEN],
        )
        CLIPTextModel(text_config).save_pretrained(os.path.join(path, "text_encoder"), safe_serialization=True)

        if with_vae:
            torch.manual_seed(seed + 2)
            # Four resolution levels -> 8x downsampling, the same factor as Stable Diffusion's VAE.
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=(8, 16, 16, 16),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=1,
                norm_num_groups=8,
                sample_size=sample_size * 8,
            )
            vae.save_pretrained(os.path.join(path, "vae"), safe_serialization=True)

    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
    )
    scheduler.save_pretrained(os.path.join(path, "scheduler"))
    write_model_index(path, with_vae, "StableDiffusionInstructPix2PixPipeline" if image_condition else "StableDiffusionPipeline")
    return path


def write_model_index(path: str, with_vae: bool, pipeline: str = "StableDiffusionPipeline") -> None:
    import diffusers

    index = {
        "_class_name": pipeline,
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "vae": ["diffusers", "AutoencoderKL"] if with_vae else [None, None],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    with open(os.path.join(path, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


# --------------------------------------------------------------------------- oracle denoiser
class TargetImageUNet(nn.Module):
    """A pixel-space epsilon predictor whose clean-image estimate is always ``target_rgb``.

    For x_t = sqrt(abar) x0 + sqrt(1 - abar) noise it returns
    eps = (x_t - sqrt(abar) target) / sqrt(1 - abar), i.e. the noise that makes x0 = target.
    It ignores the text condition, so classifier-free guidance leaves it unchanged.

    ``target_rgb``: a colour ``[3]`` or an image ``[H, W, 3]``, values in [0, 1].
    Called like a diffusers UNet: ``unet(sample, timestep, encoder_hidden_states=...).sample``.
    """

    def __init__(
        self,
        target_rgb: Union[Tensor, Sequence[float]],
        scheduler: Any,
        sample_size: int = 32,
    ) -> None:
        super().__init__()
        target = torch.as_tensor(target_rgb, dtype=torch.float32)
        if target.shape == (3,):
            target = target.view(3, 1, 1).expand(3, sample_size, sample_size)
        elif target.ndim == 3 and target.shape[-1] == 3:
            target = F.interpolate(
                target.permute(2, 0, 1)[None], (sample_size, sample_size), mode="bilinear", align_corners=False
            )[0]
        else:
            raise ValueError(f"target_rgb must be a colour [3] or an image [H, W, 3]; got shape {tuple(target.shape)}")
        self.register_buffer("target", target * 2.0 - 1.0, persistent=False)  # model space [-1, 1]
        self.register_buffer(
            "alphas_cumprod", torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32), persistent=False
        )
        self.config = SimpleNamespace(sample_size=sample_size, in_channels=3, out_channels=3)

    @property
    def dtype(self) -> torch.dtype:
        return self.target.dtype

    @property
    def device(self) -> torch.device:
        return self.target.device

    def forward(
        self,
        sample: Float[Tensor, "B 3 S S"],
        timestep: Union[Tensor, int],
        encoder_hidden_states: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> SimpleNamespace:
        t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(sample.dtype)
        target = self.target.to(sample.dtype)
        if target.shape[-1] != sample.shape[-1] or target.shape[-2] != sample.shape[-2]:
            target = F.interpolate(target[None], sample.shape[-2:], mode="bilinear", align_corners=False)[0]
        eps = (sample - abar.sqrt() * target) / (1.0 - abar).sqrt()
        return SimpleNamespace(sample=eps)
