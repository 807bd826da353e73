"""Parameter names and shapes of ldm checkpoints (MVDream's, Stable Diffusion 2's), computed from configs.

An ldm checkpoint is a flat state dict of three networks and a noise schedule. These functions
give its key set without building the original (ldm / open_clip) modules, so a checkpoint in the
released layout can be written with random weights and fed to the converter
(``guidance/convert_mvdream.py``) at full width:

- ``ldm_unet_shapes``: ``model.diffusion_model.*``, MVDream's ``MultiViewUNetModel``
  (Stable Diffusion's ``UNetModel`` plus ``camera_embed``), from ``unet_config.params``;
- ``ldm_vae_shapes``: ``first_stage_model.*``, ldm's ``AutoencoderKL``, from ``ddconfig``;
- ``open_clip_text_shapes``: ``cond_stage_model.model.*``, the OpenCLIP text tower that
  ``FrozenOpenCLIPEmbedder`` holds (the CLIP model with its ``visual`` deleted);
- ``ldm_schedule_buffers``: the buffers ldm's ``register_schedule`` stores beside them.
"""

from __future__ import annotations

from typing import Any

import torch

from threestudio_like.utils.typing import Tensor

Shapes = dict[str, tuple[int, ...]]


# --------------------------------------------------------------------------- layer helpers
def _conv(shapes: Shapes, name: str, cin: int, cout: int, k: int) -> None:
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)


def _linear(shapes: Shapes, name: str, cin: int, cout: int, bias: bool = True) -> None:
    shapes[f"{name}.weight"] = (cout, cin)
    if bias:
        shapes[f"{name}.bias"] = (cout,)


def _conv1x1(shapes: Shapes, name: str, cin: int, cout: int) -> None:
    _conv(shapes, name, cin, cout, 1)


def _norm(shapes: Shapes, name: str, c: int) -> None:
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)


# --------------------------------------------------------------------------- UNet
def _ldm_resblock(shapes: Shapes, name: str, cin: int, emb: int, cout: int) -> None:
    """openaimodel.ResBlock: in_layers (norm, SiLU, conv), emb_layers (SiLU, linear), out_layers (norm, SiLU, dropout, conv)."""
    _norm(shapes, f"{name}.in_layers.0", cin)
    _conv(shapes, f"{name}.in_layers.2", cin, cout, 3)
    _linear(shapes, f"{name}.emb_layers.1", emb, cout)
    _norm(shapes, f"{name}.out_layers.0", cout)
    _conv(shapes, f"{name}.out_layers.3", cout, cout, 3)
    if cin != cout:
        _conv(shapes, f"{name}.skip_connection", cin, cout, 1)


def _ldm_attention(shapes: Shapes, name: str, dim: int, context: int) -> None:
    """CrossAttention: bias-free q / k / v, output projection with bias."""
    _linear(shapes, f"{name}.to_q", dim, dim, bias=False)
    _linear(shapes, f"{name}.to_k", context, dim, bias=False)
    _linear(shapes, f"{name}.to_v", context, dim, bias=False)
    _linear(shapes, f"{name}.to_out.0", dim, dim)


def _ldm_transformer(shapes: Shapes, name: str, ch: int, p: dict[str, Any]) -> None:
    """SpatialTransformer(3D): GroupNorm, proj_in / proj_out (linear or 1x1 conv), ``transformer_depth``
    blocks of self-attention, cross-attention and a GEGLU feed-forward. Head counts change no shape."""
    project = _linear if p.get("use_linear_in_transformer", False) else _conv1x1
    _norm(shapes, f"{name}.norm", ch)
    project(shapes, f"{name}.proj_in", ch, ch)
    for d in range(int(p.get("transformer_depth", 1))):
        block = f"{name}.transformer_blocks.{d}"
        _ldm_attention(shapes, f"{block}.attn1", ch, ch)
        _linear(shapes, f"{block}.ff.net.0.proj", ch, ch * 8)  # GEGLU: value and gate, 4x wide each
        _linear(shapes, f"{block}.ff.net.2", ch * 4, ch)
        _ldm_attention(shapes, f"{block}.attn2", ch, int(p["context_dim"]))
        for i in (1, 2, 3):
            _norm(shapes, f"{block}.norm{i}", ch)
    project(shapes, f"{name}.proj_out", ch, ch)


def ldm_unet_shapes(unet_params: dict[str, Any]) -> Shapes:
    """Parameter shapes of ldm's (MVDream's) UNet from ``unet_config.params``, keys without the
    ``model.diffusion_model.`` prefix; ``camera_embed`` when ``camera_dim`` is set.

    Only the spatial-transformer layout (``use_spatial_transformer``, ``legacy: False``, no class
    labels) that every Stable Diffusion / MVDream release uses.
    """
    p = unet_params
    mc, mult, blocks = int(p["model_channels"]), list(p["channel_mult"]), int(p["num_res_blocks"])
    attention_at, temb = set(p["attention_resolutions"]), mc * 4
    shapes: Shapes = {}
    _linear(shapes, "time_embed.0", mc, temb), _linear(shapes, "time_embed.2", temb, temb)
    if p.get("camera_dim") is not None:
        _linear(shapes, "camera_embed.0", int(p["camera_dim"]), temb), _linear(shapes, "camera_embed.2", temb, temb)
    _conv(shapes, "input_blocks.0.0", int(p["in_channels"]), mc, 3)
    skips, ch, ds, index = [mc], mc, 1, 1
    for level, m in enumerate(mult):
        for _ in range(blocks):
            _ldm_resblock(shapes, f"input_blocks.{index}.0", ch, temb, m * mc)
            ch = m * mc
            if ds in attention_at:
                _ldm_transformer(shapes, f"input_blocks.{index}.1", ch, p)
            skips.append(ch)
            index += 1
        if level != len(mult) - 1:
            _conv(shapes, f"input_blocks.{index}.0.op", ch, ch, 3)
            skips.append(ch)
            index, ds = index + 1, ds * 2
    _ldm_resblock(shapes, "middle_block.0", ch, temb, ch)
    _ldm_transformer(shapes, "middle_block.1", ch, p)
    _ldm_resblock(shapes, "middle_block.2", ch, temb, ch)
    index = 0
    for level in reversed(range(len(mult))):
        for i in range(blocks + 1):
            name = f"output_blocks.{index}"
            _ldm_resblock(shapes, f"{name}.0", ch + skips.pop(), temb, mc * mult[level])
            ch, layer = mc * mult[level], 1
            if ds in attention_at:
                _ldm_transformer(shapes, f"{name}.1", ch, p)
                layer = 2
            if level and i == blocks:
                _conv(shapes, f"{name}.{layer}.conv", ch, ch, 3)
                ds //= 2
            index += 1
    _norm(shapes, "out.0", ch)
    _conv(shapes, "out.2", mc, int(p["out_channels"]), 3)
    return shapes


# --------------------------------------------------------------------------- VAE
def _ldm_vae_resnet(shapes: Shapes, name: str, cin: int, cout: int) -> None:
    _norm(shapes, f"{name}.norm1", cin), _conv(shapes, f"{name}.conv1", cin, cout, 3)
    _norm(shapes, f"{name}.norm2", cout), _conv(shapes, f"{name}.conv2", cout, cout, 3)
    if cin != cout:
        _conv(shapes, f"{name}.nin_shortcut", cin, cout, 1)


def _ldm_vae_middle(shapes: Shapes, prefix: str, c: int) -> None:
    _ldm_vae_resnet(shapes, f"{prefix}.mid.block_1", c, c)
    _norm(shapes, f"{prefix}.mid.attn_1.norm", c)
    for part in ("q", "k", "v", "proj_out"):
        _conv(shapes, f"{prefix}.mid.attn_1.{part}", c, c, 1)
    _ldm_vae_resnet(shapes, f"{prefix}.mid.block_2", c, c)


def ldm_vae_shapes(ch: int = 32, ch_mult: tuple[int, ...] = (1, 2), blocks: int = 1, z: int = 4) -> Shapes:
    """Parameter shapes of ldm's AutoencoderKL (encoder / decoder / quant convs), keys without the
    ``first_stage_model.`` prefix. Arguments are ``ddconfig``'s ``ch``, ``ch_mult``, ``num_res_blocks``,
    ``z_channels`` (``attn_resolutions: []``, as every SD VAE); the defaults are a two-level miniature."""
    shapes: Shapes = {}
    _conv(shapes, "encoder.conv_in", 3, ch, 3)
    cin = ch
    for level, mult in enumerate(ch_mult):
        for b in range(blocks):
            _ldm_vae_resnet(shapes, f"encoder.down.{level}.block.{b}", cin, ch * mult)
            cin = ch * mult
        if level != len(ch_mult) - 1:
            _conv(shapes, f"encoder.down.{level}.downsample.conv", cin, cin, 3)
    _ldm_vae_middle(shapes, "encoder", cin)
    _norm(shapes, "encoder.norm_out", cin), _conv(shapes, "encoder.conv_out", cin, 2 * z, 3)
    _conv(shapes, "quant_conv", 2 * z, 2 * z, 1), _conv(shapes, "post_quant_conv", z, z, 1)
    cin = ch * ch_mult[-1]
    _conv(shapes, "decoder.conv_in", z, cin, 3)
    _ldm_vae_middle(shapes, "decoder", cin)
    for level in reversed(range(len(ch_mult))):
        for b in range(blocks + 1):
            _ldm_vae_resnet(shapes, f"decoder.up.{level}.block.{b}", cin, ch * ch_mult[level])
            cin = ch * ch_mult[level]
        if level:
            _conv(shapes, f"decoder.up.{level}.upsample.conv", cin, cin, 3)
    _norm(shapes, "decoder.norm_out", cin), _conv(shapes, "decoder.conv_out", cin, 3, 3)
    return shapes


# --------------------------------------------------------------------------- text encoder
def open_clip_text_shapes(
    width: int = 1024, layers: int = 24, mlp_ratio: int = 4, context_length: int = 77, vocab_size: int = 49408, embed_dim: int = 1024
) -> Shapes:
    """Parameter shapes of open_clip's CLIP text tower (``model.visual`` deleted, as ``FrozenOpenCLIPEmbedder``
    keeps it), keys without the ``cond_stage_model.model.`` prefix. Defaults: ViT-H-14, Stable Diffusion 2's.

    ``attn`` is ``nn.MultiheadAttention`` (fused ``in_proj``); ``attn_mask`` is a non-persistent
    buffer, so not in the checkpoint; ``logit_scale`` is a scalar.
    """
    shapes: Shapes = {
        "positional_embedding": (context_length, width),
        "text_projection": (width, embed_dim),
        "logit_scale": (),
        "token_embedding.weight": (vocab_size, width),
    }
    for i in range(layers):
        block = f"transformer.resblocks.{i}"
        _norm(shapes, f"{block}.ln_1", width)
        shapes[f"{block}.attn.in_proj_weight"], shapes[f"{block}.attn.in_proj_bias"] = (3 * width, width), (3 * width,)
        _linear(shapes, f"{block}.attn.out_proj", width, width)
        _norm(shapes, f"{block}.ln_2", width)
        _linear(shapes, f"{block}.mlp.c_fc", width, width * mlp_ratio)
        _linear(shapes, f"{block}.mlp.c_proj", width * mlp_ratio, width)
    _norm(shapes, "ln_final", width)
    return shapes


# --------------------------------------------------------------------------- noise schedule
def ldm_schedule_buffers(linear_start: float = 0.00085, linear_end: float = 0.0120, timesteps: int = 1000) -> dict[str, Tensor]:
    """ldm's ``register_schedule`` for its "linear" schedule (linear in sqrt(beta), ``v_posterior`` 0):
    every buffer it registers, computed in float64 and stored float32 as ldm stores them."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    buffers = {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": abar.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - abar).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / abar).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
    }
    return {k: v.float() for k, v in buffers.items()}
