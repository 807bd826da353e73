"""MVDream's released checkpoint (ldm layout) -> this package's multi-view UNet, scheduler and VAE.

MVDream ships one ``.pt`` file per model (``sd-v2.1-base-4view.pt``, ``sd-v1.5-4view.pt``) holding
the state dict of its ldm ``LatentDiffusionInterface``:

- ``model.diffusion_model.*``: the multi-view UNet. It is Stable Diffusion's UNet plus a camera MLP
  (``camera_embed.0`` / ``.2``); the 3D self-attention reuses SD's attention weights. diffusers'
  own ldm helpers map the SD part; ``camera_embed`` becomes diffusers' ``class_embedding``
  (``class_embed_type="projection"``), which :class:`MultiViewUNet2DConditionModel` feeds the camera.
- ``first_stage_model.*``: SD's VAE, converted with diffusers' ldm VAE helper.
- ``cond_stage_model.*``: SD's own frozen text encoder (OpenCLIP ViT-H for 2.1, CLIP ViT-L for 1.5).
  **Not converted**: the prompt processor takes its text encoder and tokenizer from the Stable
  Diffusion 2.1-base / 1.5 model, which are the same weights; they are reported as skipped.
- ``betas``, ``alphas_cumprod``, ... : the noise schedule as buffers. The scheduler is built from
  the yaml (``linear_start`` / ``linear_end`` / ``timesteps`` / ``parameterization``) and checked
  against these.

diffusers' helpers drop what they do not recognise without a word, so every tensor of the UNet and
VAE is traced into the converted state dict (by storage) and the result must load ``strict=True``;
anything else stops the conversion with the unmapped keys listed.

Convert once to a diffusers folder (``unet/``, ``scheduler/``, ``vae/``, ``model_index.json``)::

    python -m threestudio_like.guidance.convert_mvdream --checkpoint sd-v2.1-base-4view.pt \\
        --config mvdream/configs/sd-v2-base.yaml --out models/mvdream-sd21

or load the checkpoint directly with :func:`load_mvdream_checkpoint` (what
``load_diffusion_components("x.pt")`` does). Without a yaml (none given, no ``x.yaml`` beside
``x.pt``) the released architecture is chosen by the checkpoint's cross-attention width (1024:
sd-v2.1-base-4view, 768: sd-v1.5-4view).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from threestudio_like.guidance.errors import ModelNotFoundError
from threestudio_like.guidance.multiview_unet import MultiViewUNet2DConditionModel
from threestudio_like.trials import CheckpointError, safe_torch_load
from threestudio_like.utils.typing import Tensor

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model."
CHECKPOINT_SUFFIXES = (".pt", ".ckpt", ".safetensors")
# Buffers of ldm's noise schedule, all functions of ``betas``; the first two are checked against the scheduler.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
TEXT_ENCODER_SKIP_REASON = (
    "Stable Diffusion's own frozen text encoder, unchanged by MVDream; the prompt processor takes the text "
    "encoder and tokenizer from the Stable Diffusion model (2.1-base for sd-v2.1-base-4view, 1.5 for sd-v1.5-4view)"
)
PARAMETERIZATION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def _released_config(context_dim: int, unet_attention: dict[str, Any]) -> dict[str, Any]:
    """An ldm config dict (the yaml's structure) of a released MVDream model; only the UNet differs."""
    return {
        "model": {
            "params": {
                "linear_start": 0.00085,
                "linear_end": 0.0120,
                "timesteps": 1000,
                "scale_factor": 0.18215,
                "parameterization": "eps",
                "unet_config": {
                    "params": {
                        "image_size": 32,
                        "in_channels": 4,
                        "out_channels": 4,
                        "model_channels": 320,
                        "attention_resolutions": [4, 2, 1],
                        "num_res_blocks": 2,
                        "channel_mult": [1, 2, 4, 4],
                        **unet_attention,
                        "use_spatial_transformer": True,
                        "transformer_depth": 1,
                        "context_dim": context_dim,
                        "legacy": False,
                        "camera_dim": 16,
                    }
                },
                "first_stage_config": {
                    "params": {
                        "embed_dim": 4,
                        "ddconfig": {
                            "double_z": True,
                            "z_channels": 4,
                            "resolution": 256,
                            "in_channels": 3,
                            "out_ch": 3,
                            "ch": 128,
                            "ch_mult": [1, 2, 4, 4],
                            "num_res_blocks": 2,
                            "attn_resolutions": [],
                            "dropout": 0.0,
                        },
                    }
                },
            }
        }
    }


# MVDream's mvdream/configs/sd-v2-base.yaml and sd-v1.yaml, as used by its model_zoo.
RELEASED_CONFIGS: dict[str, dict[str, Any]] = {
    "sd-v2.1-base-4view": _released_config(1024, {"num_head_channels": 64, "use_linear_in_transformer": True}),
    "sd-v1.5-4view": _released_config(768, {"num_heads": 8}),
}


class ConversionError(CheckpointError):
    """The checkpoint or its config cannot be converted; the message says what and why."""


@dataclass
class ConvertedCheckpoint:
    """Diffusers configs and state dicts from one MVDream checkpoint, with what was left out and why."""

    unet_config: dict[str, Any]
    unet_state_dict: dict[str, Tensor]
    scheduler_config: dict[str, Any]
    vae_config: Optional[dict[str, Any]] = None
    vae_state_dict: Optional[dict[str, Tensor]] = None
    skipped: dict[str, str] = field(default_factory=dict)  # key prefix -> "N tensors: why"
    checked: list[str] = field(default_factory=list)  # keys used only to check the conversion
    dtype: torch.dtype = torch.float32  # the checkpoint's UNet weight dtype

    def summary(self) -> str:
        lines = [f"unet: {len(self.unet_state_dict)} tensors converted"]
        lines.append(f"vae: {len(self.vae_state_dict)} tensors converted" if self.vae_state_dict else "vae: none in the checkpoint (UNet-only conversion)")
        lines.append(f"scheduler: DDPM, {self.scheduler_config['num_train_timesteps']} steps, {self.scheduler_config['prediction_type']}")
        if self.checked:
            lines.append(f"schedule buffers checked against the scheduler: {len(self.checked)}")
        lines += [f"skipped {prefix}*: {why}" for prefix, why in self.skipped.items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading inputs
def load_checkpoint_state_dict(path: str) -> dict[str, Tensor]:
    """The flat state dict of ``path`` (.pt / .ckpt via ``torch.load(weights_only=True)``, or .safetensors);
    a Lightning-style ``{"state_dict": ...}`` wrapper is unwrapped. Never unpickles arbitrary objects."""
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"MVDream checkpoint {path} does not exist (download sd-v2.1-base-4view.pt from https://huggingface.co/MVDream/MVDream).")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as error:
            raise ConversionError(f"{path}: not a readable safetensors file ({error}).") from None
    try:
        loaded = safe_torch_load(
            path,
            damaged=lambda why: f"{path}: not a PyTorch checkpoint, or a truncated one ({why}); nothing was converted. "
            "Download MVDream's checkpoint again (sd-v2.1-base-4view.pt from https://huggingface.co/MVDream/MVDream).",
            unsafe="Re-save just its state dict (torch.save(ckpt['state_dict'], ...)) or use a .safetensors file.",
        )
    except CheckpointError as error:
        raise ConversionError(str(error)) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise ConversionError(f"{path}: expected a state dict (names -> tensors), got {type(loaded).__name__}.")
    return loaded


def read_ldm_config(config: str | dict[str, Any]) -> dict[str, Any]:
    """An ldm config as a plain dict: a released model name, a yaml path (MVDream's sd-v2-base.yaml /
    sd-v1.yaml), or a dict already in that structure. Checks that it has ``model.params.unet_config.params``."""
    if isinstance(config, dict):
        loaded = copy.deepcopy(config)
        where = "the config dict"
    elif config in RELEASED_CONFIGS:
        loaded = copy.deepcopy(RELEASED_CONFIGS[config])
        where = config
    else:
        from omegaconf import OmegaConf

        if not os.path.isfile(config):
            raise ConversionError(
                f"config {config!r} is neither a file nor a released model ({', '.join(RELEASED_CONFIGS)})."
            )
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
        except Exception as error:  # omegaconf / yaml raise many kinds; all mean "not a readable yaml"
            raise ConversionError(f"{config}: not a readable yaml ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}).") from None
        where = config
    params = (loaded.get("model") or {}).get("params") if isinstance(loaded, dict) else None
    unet = (params or {}).get("unet_config") or {}
    if not isinstance(unet.get("params"), dict):
        raise ConversionError(f"{where}: no model.params.unet_config.params; expected MVDream's ldm yaml (sd-v2-base.yaml or sd-v1.yaml).")
    if unet["params"].get("camera_dim") is None:
        raise ConversionError(f"{where}: unet_config.params has no camera_dim: not a multi-view (MVDream) UNet config.")
    return loaded


def released_config_name(state_dict: dict[str, Tensor]) -> str:
    """The released model whose architecture fits ``state_dict``, by its cross-attention width."""
    widths = {v.shape[1] for k, v in state_dict.items() if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")}
    for name, config in RELEASED_CONFIGS.items():
        if widths == {config["model"]["params"]["unet_config"]["params"]["context_dim"]}:
            return name
    raise ConversionError(
        f"the checkpoint's cross-attention width {sorted(widths) or 'unknown'} matches no released MVDream model "
        f"({', '.join(RELEASED_CONFIGS)}); pass its ldm yaml as config."
    )


def _check_is_mvdream(state_dict: dict[str, Tensor], where: str) -> None:
    if not any(k.startswith(UNET_PREFIX) for k in state_dict):
        sample = ", ".join(list(state_dict)[:3]) or "no keys"
        raise ConversionError(f"{where}: not an MVDream checkpoint: no '{UNET_PREFIX}*' keys (found {sample}, ...).")
    if f"{UNET_PREFIX}camera_embed.0.weight" not in state_dict:
        raise ConversionError(f"{where}: has a UNet but no '{UNET_PREFIX}camera_embed.*': a single-view ldm checkpoint, not MVDream's.")


# --------------------------------------------------------------------------- conversion
def _ldm_heads(unet_params: dict[str, Any]) -> list[int]:
    """Attention heads per UNet level as ldm builds them: ``num_head_channels`` wins over ``num_heads``."""
    head_channels = unet_params.get("num_head_channels", -1)
    widths = [unet_params["model_channels"] * m for m in unet_params["channel_mult"]]
    if head_channels not in (None, -1):
        return [w // head_channels for w in widths]
    if unet_params.get("num_heads", -1) in (None, -1):
        raise ConversionError("unet_config.params sets neither num_head_channels nor num_heads.")
    return [int(unet_params["num_heads"])] * len(widths)


def unet_config_from_ldm(ldm_config: dict[str, Any], unet_state_dict: dict[str, Tensor]) -> dict[str, Any]:
    """The ``MultiViewUNet2DConditionModel`` config: diffusers' ldm helper plus the camera embedding,
    heads as ldm counts them and MVDream's sample size (``unet_config.params.image_size``, latents)."""
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    config = copy.deepcopy(ldm_config)
    params = config["model"]["params"]
    unet_params = params["unet_config"]["params"]
    unet_params.setdefault("transformer_depth", 1)
    unet_params.setdefault("context_dim", None)
    if "first_stage_config" not in params:
        # The helper reads the VAE only for a default sample size, which is replaced below.
        params["first_stage_config"] = {"params": {"ddconfig": {"ch_mult": [1]}}}
    unet = create_unet_diffusers_config_from_ldm(config, unet_state_dict)
    heads = _ldm_heads(unet_params)
    given = unet["attention_head_dim"]
    if (list(given) if isinstance(given, (list, tuple)) else [given] * len(heads)) != heads:
        unet["attention_head_dim"] = heads
    unet.update(
        _class_name="MultiViewUNet2DConditionModel",
        sample_size=int(unet_params.get("image_size") or unet["sample_size"]),
        class_embed_type="projection",
        projection_class_embeddings_input_dim=int(unet_params["camera_dim"]),
    )
    return unet


def scheduler_config_from_ldm(ldm_config: dict[str, Any]) -> dict[str, Any]:
    """DDPM with ldm's "linear" schedule (linear in sqrt(beta): diffusers' ``scaled_linear``)."""
    params = ldm_config["model"]["params"]
    if params.get("given_betas") is not None or params.get("beta_schedule", "linear") != "linear":
        raise ConversionError(f"only ldm's 'linear' beta schedule is supported, got {params.get('beta_schedule')!r} / given_betas.")
    parameterization = params.get("parameterization", "eps")
    if parameterization not in PARAMETERIZATION:
        raise ConversionError(f"parameterization {parameterization!r} is not one of {', '.join(PARAMETERIZATION)}.")
    return {
        "num_train_timesteps": int(params.get("timesteps", 1000)),
        "beta_start": float(params.get("linear_start", 0.00085)),
        "beta_end": float(params.get("linear_end", 0.0120)),
        "beta_schedule": "scaled_linear",
        "prediction_type": PARAMETERIZATION[parameterization],
        "clip_sample": False,
        "steps_offset": 1,
    }


def _identity(tensor: Tensor) -> tuple:
    """Where a tensor's data starts: the same for a tensor and the reshaped views diffusers makes of it."""
    if not tensor.numel():
        return ("empty", id(tensor))
    if tensor.is_meta:  # no storage: a view's base (layout checks run on meta tensors)
        return ("meta", id(tensor._base if tensor._base is not None else tensor))
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset()


def _unconverted(source: dict[str, Tensor], converted: dict[str, Tensor]) -> list[str]:
    """Keys of ``source`` whose tensor did not reach ``converted`` (diffusers' helpers skip them silently)."""
    reached = Counter(_identity(t) for t in converted.values())
    left = []
    for key, tensor in source.items():
        ident = _identity(tensor)
        if reached[ident] > 0:
            reached[ident] -= 1
        else:
            left.append(key)
    return left


def _listing(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} key(s): {shown}{', ...' if len(keys) > limit else ''}"


def convert_state_dict(state_dict: dict[str, Tensor], config: Optional[str | dict[str, Any]] = None, where: str = "checkpoint") -> ConvertedCheckpoint:
    """Convert an MVDream state dict (ldm keys) with ``config`` (None: the released architecture
    that fits). Raises :class:`ConversionError` naming any key that is neither converted, checked
    nor knowingly skipped, or that lands on no weight of the diffusers model (checked on the meta
    device, before any weight is allocated)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        create_vae_diffusers_config_from_ldm,
    )

    _check_is_mvdream(state_dict, where)
    ldm_config = read_ldm_config(config if config is not None else released_config_name(state_dict))
    params = ldm_config["model"]["params"]
    unet_source = {k: v for k, v in state_dict.items() if k.startswith(UNET_PREFIX)}
    vae_source = {k: v for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}
    text_keys = [k for k in state_dict if k.startswith(TEXT_ENCODER_PREFIX)]
    schedule_keys = [k for k in state_dict if k in SCHEDULE_BUFFERS]
    other = [k for k in state_dict if k not in unet_source and k not in vae_source and k not in schedule_keys and not k.startswith(TEXT_ENCODER_PREFIX)]
    if other:
        raise ConversionError(f"{where}: unmapped {_listing(other)} (not UNet, VAE, text encoder or noise schedule).")
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ConversionError(f"{where}: some entries are not tensors: {_listing([k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)])}.")

    # UNet: diffusers' helper for Stable Diffusion's part, the camera MLP by hand.
    unet_config = unet_config_from_ldm(ldm_config, unet_source)
    helper_config = {**unet_config, "class_embed_type": None}  # the helper would look for ldm's label_emb
    unet_converted = convert_ldm_unet_checkpoint(unet_source, helper_config)
    for ldm, diffusers_name in (("camera_embed.0", "class_embedding.linear_1"), ("camera_embed.2", "class_embedding.linear_2")):
        for kind in ("weight", "bias"):
            if f"{UNET_PREFIX}{ldm}.{kind}" in unet_source:
                unet_converted[f"{diffusers_name}.{kind}"] = unet_source[f"{UNET_PREFIX}{ldm}.{kind}"]
    left = _unconverted(unet_source, unet_converted)
    if left:
        raise ConversionError(f"{where}: unmapped UNet {_listing(left)}; no diffusers UNet weight corresponds to them.")
    _check_fits_on_meta(MultiViewUNet2DConditionModel, unet_config, unet_converted, unet_source, "UNet")

    converted = ConvertedCheckpoint(
        unet_config=unet_config,
        unet_state_dict=unet_converted,
        scheduler_config=scheduler_config_from_ldm(ldm_config),
        dtype=Counter(v.dtype for v in unet_source.values() if v.is_floating_point()).most_common(1)[0][0],
    )
    if vae_source:
        if "first_stage_config" not in params:
            raise ConversionError(f"{where}: has {VAE_PREFIX}* weights but the config has no model.params.first_stage_config to build the VAE from.")
        vae_config = create_vae_diffusers_config_from_ldm(ldm_config, vae_source, scaling_factor=float(params.get("scale_factor", 0.18215)))
        vae_config["sample_size"] = int(params["unet_config"]["params"].get("image_size") or 32) * 2 ** (len(vae_config["block_out_channels"]) - 1)
        vae_converted = convert_ldm_vae_checkpoint(vae_source, vae_config)
        left = _unconverted(vae_source, vae_converted)
        if left:
            raise ConversionError(f"{where}: unmapped VAE {_listing(left)}; no diffusers AutoencoderKL weight corresponds to them.")
        _check_fits_on_meta(AutoencoderKL, vae_config, vae_converted, vae_source, "VAE")
        converted.vae_config, converted.vae_state_dict = vae_config, vae_converted
    if text_keys:
        converted.skipped[TEXT_ENCODER_PREFIX] = f"{len(text_keys)} tensors, not converted: {TEXT_ENCODER_SKIP_REASON}"
    converted.checked = _check_schedule(state_dict, schedule_keys, converted.scheduler_config, where)
    return converted


def _check_schedule(state_dict: dict[str, Tensor], keys: list[str], scheduler_config: dict[str, Any], where: str) -> list[str]:
    """The checkpoint's schedule buffers must be the scheduler's (else the yaml is not this model's)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**scheduler_config)
    for name, ours in (("betas", scheduler.betas), ("alphas_cumprod", scheduler.alphas_cumprod)):
        if name in keys:
            theirs = state_dict[name].float()
            if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=1e-4, atol=1e-7):
                raise ConversionError(
                    f"{where}: its '{name}' buffer is not the schedule of the config (linear_start / linear_end / timesteps); "
                    f"the yaml does not describe this checkpoint."
                )
    return keys


# --------------------------------------------------------------------------- building models
def build_models(
    converted: ConvertedCheckpoint, device: torch.device | str = "cpu", dtype: Optional[torch.dtype] = None
) -> tuple[torch.nn.Module, Any, Optional[torch.nn.Module]]:
    """(unet, DDPMScheduler, vae or None) holding the converted weights (loaded ``strict=True``), eval
    mode, on ``device`` in ``dtype`` (None: the checkpoint's)."""
    from diffusers import AutoencoderKL, DDPMScheduler

    dtype = dtype or converted.dtype
    unet = MultiViewUNet2DConditionModel.from_config(converted.unet_config)
    _load_strict(unet, converted.unet_state_dict, "UNet")
    vae = None
    if converted.vae_state_dict is not None:
        vae = AutoencoderKL.from_config(converted.vae_config)
        _load_strict(vae, converted.vae_state_dict, "VAE")
        vae = _place(vae, device, dtype)
    return _place(unet, device, dtype), DDPMScheduler.from_config(converted.scheduler_config), vae


def _place(model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    """Eval mode on ``device`` in ``dtype`` (dtype passed to ``to`` only when it changes: diffusers warns on any cast)."""
    model = model.to(device=device)
    if model.dtype != dtype:
        model = model.to(dtype=dtype)
    return model.eval()


def _check_fits(model: torch.nn.Module, state_dict: dict[str, Tensor], what: str, sources: Optional[dict[str, str]] = None) -> None:
    """Raise unless ``state_dict`` has exactly ``model``'s keys and shapes; ``sources`` names the
    checkpoint key behind a converted one, so an unexpected tensor is reported by its ldm name."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [f"{sources[k]} (as {k})" if sources and k in sources else k for k in state_dict if k not in expected]
    shapes = [f"{k} {list(state_dict[k].shape)} vs {list(v.shape)}" for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = [f"missing {_listing(missing)}" if missing else "", f"unexpected {_listing(unexpected)}" if unexpected else "", f"shape mismatch {_listing(shapes, 3)}" if shapes else ""]
        raise ConversionError(
            f"the converted {what} does not fit the architecture in the config (or holds tensors diffusers has no place for): "
            + "; ".join(p for p in problems if p)
        )


def _check_fits_on_meta(model_class: Any, config: dict[str, Any], converted: dict[str, Tensor], source: dict[str, Tensor], what: str) -> None:
    """``_check_fits`` against the architecture built on the meta device (shapes only, no memory)."""
    by_identity = {_identity(t): k for k, t in source.items()}
    sources = {k: by_identity[_identity(t)] for k, t in converted.items() if _identity(t) in by_identity}
    with torch.device("meta"):
        model = model_class.from_config(config)
    _check_fits(model, converted, what, sources)


def _load_strict(model: torch.nn.Module, state_dict: dict[str, Tensor], what: str) -> None:
    _check_fits(model, state_dict, what)
    model.load_state_dict(state_dict, strict=True)


def load_mvdream_checkpoint(
    path: str,
    config: Optional[str | dict[str, Any]] = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.nn.Module, Any, Optional[torch.nn.Module]]:
    """(MultiViewUNet2DConditionModel, DDPMScheduler, AutoencoderKL or None) from MVDream's checkpoint file.

    ``config``: MVDream's ldm yaml, a released name (``sd-v2.1-base-4view``, ``sd-v1.5-4view``) or None:
    a yaml of the same name beside the checkpoint (``x.pt`` -> ``x.yaml``) if there is one, else the
    released architecture that fits the checkpoint. The text encoder is not loaded (see the
    module docstring). The UNet is called ``unet(x [B,4,h,w], t, encoder_hidden_states=[B,77,D],
    camera=[B,16], num_frames=4).sample``.
    """
    beside = os.path.splitext(path)[0] + ".yaml"
    if config is None and os.path.isfile(beside):
        config = beside
    state_dict = load_checkpoint_state_dict(path)
    converted = convert_state_dict(state_dict, config, where=path)
    del state_dict
    return build_models(converted, device, dtype)


CONVERTED_ENTRIES = ("unet", "scheduler", "vae", "model_index.json")  # everything convert_checkpoint writes
CONVERTED_CLASS = "MultiViewDiffusionModel"


def convert_checkpoint(
    checkpoint: str, out: str, config: Optional[str | dict[str, Any]] = None, dtype: Optional[torch.dtype] = None, overwrite: bool = False
) -> ConvertedCheckpoint:
    """Write the diffusers folder ``out`` (unet/, scheduler/, vae/ when the checkpoint has one,
    model_index.json) converted from ``checkpoint``. Written beside ``out`` first, so a failure
    leaves no half-written model. ``out`` may not hold an input (the checkpoint, the yaml), and
    ``overwrite`` replaces only a folder this converter wrote, and only the entries it writes."""
    out = os.path.abspath(out)
    staging = out + ".converting"
    inputs = [checkpoint] + ([config] if isinstance(config, str) and os.path.exists(config) else [])
    _check_output_spares_inputs(out, staging, inputs, checkpoint)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        if not overwrite:
            raise ConversionError(f"output {out} exists and is not empty; choose another --out or pass --overwrite.")
        _check_is_converted_folder(out)
    state_dict = load_checkpoint_state_dict(checkpoint)
    converted = convert_state_dict(state_dict, config, where=checkpoint)
    del state_dict
    unet, scheduler, vae = build_models(converted, "cpu", dtype)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    unet.save_pretrained(os.path.join(staging, "unet"), safe_serialization=True)
    scheduler.save_pretrained(os.path.join(staging, "scheduler"))
    if vae is not None:
        vae.save_pretrained(os.path.join(staging, "vae"), safe_serialization=True)
    _write_model_index(staging, checkpoint, converted)
    if os.path.isdir(out) and os.listdir(out):  # a converted folder (checked above): replace its entries only
        for name in CONVERTED_ENTRIES:
            old = os.path.join(out, name)
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old)
            elif os.path.lexists(old):
                os.remove(old)
            if os.path.lexists(os.path.join(staging, name)):
                os.replace(os.path.join(staging, name), old)
        os.rmdir(staging)
    else:
        os.replace(staging, out)  # onto nothing, or onto an empty folder
    return converted


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies under it (both resolved through symlinks)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_output_spares_inputs(out: str, staging: str, inputs: list[str], checkpoint: str) -> None:
    """Refuse an output (or its staging folder) that is an input, holds one, or lies inside one."""
    for path in inputs:
        for target in (out, staging):
            if _inside(path, target) or _inside(target, path):
                suggestion = os.path.splitext(os.path.abspath(checkpoint))[0] + "-diffusers"
                raise ConversionError(
                    f"--out {out} {'is' if os.path.realpath(path) == os.path.realpath(target) else 'holds'} the input {path}; "
                    f"writing it would delete that input. Choose an output folder apart from the inputs, e.g. --out {suggestion}."
                )


def _check_is_converted_folder(out: str) -> None:
    """--overwrite replaces a folder this converter wrote; anything else (a model, a download folder,
    a file) is refused, since replacing it would lose what it holds."""
    index = os.path.join(out, "model_index.json")
    written = False
    if os.path.isdir(out) and os.path.isfile(index):
        try:
            with open(index) as f:
                written = json.load(f).get("_class_name") == CONVERTED_CLASS
        except (OSError, ValueError, AttributeError):
            written = False
    if not written:
        what = "a file" if not os.path.isdir(out) else f"a folder with no model_index.json of a converted {CONVERTED_CLASS}"
        raise ConversionError(
            f"output {out} is {what}; --overwrite replaces only a folder this converter wrote. "
            "Choose another --out (a new or empty folder)."
        )


def _write_model_index(folder: str, checkpoint: str, converted: ConvertedCheckpoint) -> None:
    import diffusers

    index = {
        "_class_name": CONVERTED_CLASS,
        "_diffusers_version": diffusers.__version__,
        "unet": ["threestudio_like.guidance.multiview_unet", "MultiViewUNet2DConditionModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "vae": ["diffusers", "AutoencoderKL"] if converted.vae_state_dict is not None else [None, None],
        "text_encoder": [None, None],
        "tokenizer": [None, None],
        "_converted_from": os.path.basename(checkpoint),
        "_skipped": converted.skipped,
    }
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


# --------------------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m threestudio_like.guidance.convert_mvdream",
        description="Convert MVDream's checkpoint (ldm layout) to a diffusers folder with a multi-view UNet. "
        "The text encoder (cond_stage_model) is not converted: the prompt processor uses Stable Diffusion's.",
    )
    parser.add_argument("--checkpoint", required=True, help="MVDream's .pt / .ckpt / .safetensors file")
    parser.add_argument("--config", default=None, help=f"MVDream's ldm yaml or a released name ({', '.join(RELEASED_CONFIGS)}); default: the released one that fits")
    parser.add_argument("--out", required=True, help="output diffusers folder")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None, help="weight dtype to save (default: the checkpoint's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an --out folder written by an earlier conversion (its unet/, scheduler/, vae/, model_index.json)")
    args = parser.parse_args(argv)
    try:
        converted = convert_checkpoint(args.checkpoint, args.out, args.config, getattr(torch, args.dtype) if args.dtype else None, args.overwrite)
    except (ConversionError, OSError) as error:
        print(f"convert_mvdream: error: {error}", file=sys.stderr)
        return 2
    print(converted.summary())
    print(f"wrote {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
