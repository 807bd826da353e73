"""Full-size diffusion models with the released architectures and random weights, written to disk.

Memory, speed and loading at the real sizes (an 866M-parameter UNet, a 340M-parameter text
encoder, MVDream's checkpoint through the converter) can then be measured without downloading
any weights. Each model is an ordinary diffusers folder (``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, ``vae/``, ``model_index.json``) holding the exact component configs
of the release it stands for; MVDream's is written in MVDream's own ldm layout
(``sd-v2.1-base-4view.pt`` beside its ``sd-v2-base.yaml``) and converted by
``guidance/convert_mvdream.py`` into ``diffusers/``, so the converter meets the real key set.

Weights are seeded noise (normal with std 1/sqrt(fan_in), biases 0, norm scales 1), fp16 on disk
by default: outputs are finite and meaningless. The tokenizer is CLIP's real BPE vocabulary when
open_clip_torch is installed (it ships the file; open_clip itself is never imported), else the
tiny stand-in of ``priors/tiny.py``, and the build says which. ``reduced=True`` keeps every layout
(layer types, head counts, tokenizer, vocabulary) at 1/8 of the widths and 2 text layers, for
dry runs and tests (MVDream's ldm layers need widths in multiples of 32 and count heads by head
width: there the widths are rounded up and the head width is divided by 8).

    python -m threestudio_like.priors.fullsize --out DIR [--only sd21-base ...] [--reduced] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import gc
import gzip
import importlib.util
import json
import math
import os
import shutil
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn as nn

from threestudio_like.guidance.convert_mvdream import RELEASED_CONFIGS, convert_checkpoint
from threestudio_like.priors.ldm_layout import (
    Shapes,
    ldm_schedule_buffers,
    ldm_unet_shapes,
    ldm_vae_shapes,
    open_clip_text_shapes,
)
from threestudio_like.priors.tiny import (
    BOS_TOKEN,
    END_OF_WORD,
    EOS_TOKEN,
    TOKENIZER_MAX_LENGTH,
    byte_to_unicode_table,
    tiny_clip_vocabulary,
    write_clip_tokenizer_files,
    write_model_index,
)
from threestudio_like.utils.typing import Tensor

MARKER = "fullsize-complete.json"  # written last: its absence means an unfinished build
MVDREAM_CHECKPOINT, MVDREAM_YAML, MVDREAM_CONVERTED = "sd-v2.1-base-4view.pt", "sd-v2-base.yaml", "diffusers"
# Everything a build writes into its folder (and so removes before building again), the marker first.
BUILT_ENTRIES = (MARKER, "model_index.json", "unet", "text_encoder", "tokenizer", "scheduler", "vae",
                 MVDREAM_CHECKPOINT, MVDREAM_YAML, MVDREAM_CONVERTED, MVDREAM_CONVERTED + ".converting")
REDUCTION = 8  # reduced builds: widths / 8
REDUCED_TEXT_LAYERS = 2
CLIP_VOCAB_SIZE = 49408
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's merges, as open_clip ships them

# --------------------------------------------------------------------------- the released configs
_SD21_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": False, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "dual_cross_attention": False,
    "use_linear_projection": True, "num_class_embeds": None, "upcast_attention": False,
}
_SD15_UNET = {**_SD21_UNET, "cross_attention_dim": 768, "attention_head_dim": 8, "use_linear_projection": False}
_SD_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2, "act_fn": "silu", "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}
# OpenCLIP ViT-H's text tower as SD 2 ships it: 23 of its 24 layers (SD 2 conditions on the penultimate).
_OPENCLIP_H_TEXT: dict[str, Any] = {
    "architectures": ["CLIPTextModel"], "vocab_size": CLIP_VOCAB_SIZE, "hidden_size": 1024, "intermediate_size": 4096,
    "projection_dim": 512, "num_hidden_layers": 23, "num_attention_heads": 16, "max_position_embeddings": TOKENIZER_MAX_LENGTH,
    "hidden_act": "gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "dropout": 0.0, "initializer_range": 0.02,
    "initializer_factor": 1.0, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
_CLIP_L_TEXT = {**_OPENCLIP_H_TEXT, "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768,
                "num_hidden_layers": 12, "num_attention_heads": 12, "hidden_act": "quick_gelu"}
# Every SD scheduler config ships these keys (from the PNDM original), used by the class or not: kept
# verbatim, since a reader such as DDPMScheduler takes clip_sample from it (its default is True).
_SD_SCHEDULER = {"class": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "trained_betas": None, "prediction_type": "epsilon",
                 "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False}

DIFFUSERS_MODELS: dict[str, dict[str, Any]] = {
    "sd21-base": {
        "source": "stabilityai/stable-diffusion-2-1-base", "pipeline": "StableDiffusionPipeline",
        "unet": _SD21_UNET, "text_encoder": _OPENCLIP_H_TEXT, "vae": _SD_VAE, "scheduler": _SD_SCHEDULER, "pad_token": "!",
    },
    # threestudio's VSD critic model: 768 px, v-prediction.
    "sd21": {
        "source": "stabilityai/stable-diffusion-2-1", "pipeline": "StableDiffusionPipeline",
        "unet": {**_SD21_UNET, "sample_size": 96, "upcast_attention": True}, "text_encoder": _OPENCLIP_H_TEXT,
        "vae": {**_SD_VAE, "sample_size": 768}, "pad_token": "!",
        "scheduler": {**_SD_SCHEDULER, "class": "DDIMScheduler", "prediction_type": "v_prediction"},
    },
    "instruct-pix2pix": {
        "source": "timbrooks/instruct-pix2pix", "pipeline": "StableDiffusionInstructPix2PixPipeline",
        "unet": {**_SD15_UNET, "in_channels": 8}, "text_encoder": _CLIP_L_TEXT, "vae": _SD_VAE, "pad_token": EOS_TOKEN,
        "scheduler": {**_SD_SCHEDULER, "class": "EulerAncestralDiscreteScheduler"},
    },
}
MVDREAM_MODELS: dict[str, str] = {"mvdream-sd21-4view": "sd-v2.1-base-4view"}  # name -> RELEASED_CONFIGS key
MODEL_NAMES: tuple[str, ...] = (*DIFFUSERS_MODELS, *MVDREAM_MODELS)


def _mvdream_ldm_config(released: str) -> dict[str, Any]:
    """MVDream's yaml as a dict: the converter's released numbers plus the targets and the text
    encoder entry that MVDream's own ``sd-v2-base.yaml`` carries."""
    config = copy.deepcopy(RELEASED_CONFIGS[released])
    params = config["model"]["params"]
    config["model"] = {"target": "mvdream.ldm.interface.LatentDiffusionInterface", "params": params}
    params["unet_config"] = {"target": "mvdream.ldm.modules.diffusionmodules.openaimodel.MultiViewUNetModel",
                             "params": {**params["unet_config"]["params"], "use_checkpoint": False}}
    vae = params["first_stage_config"]["params"]
    params["first_stage_config"] = {"target": "mvdream.ldm.models.autoencoder.AutoencoderKL",
                                    "params": {"embed_dim": vae["embed_dim"], "monitor": "val/rec_loss", "ddconfig": vae["ddconfig"],
                                               "lossconfig": {"target": "torch.nn.Identity"}}}
    params["cond_stage_config"] = {"target": "mvdream.ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                                   "params": {"freeze": True, "layer": "penultimate"}}
    return config


# --------------------------------------------------------------------------- specs (what a folder holds)
def _reduce_diffusers(spec: dict[str, Any]) -> None:
    """Widths / 8 (GroupNorm with 8 groups, so 40 channels still divide), head counts kept, 2 text layers."""
    text, unet, vae = spec["text_encoder"], spec["unet"], spec["vae"]
    for key in ("hidden_size", "intermediate_size", "projection_dim"):
        text[key] //= REDUCTION
    text["num_hidden_layers"] = REDUCED_TEXT_LAYERS
    for part in (unet, vae):
        part["block_out_channels"] = [c // REDUCTION for c in part["block_out_channels"]]
        part["norm_num_groups"] = REDUCTION
    unet["cross_attention_dim"] = text["hidden_size"]


def _reduce_ldm_width(width: int) -> int:
    """ldm's layers hard-code GroupNorm(32) (and the converted config keeps 32 groups): width / 8,
    rounded up to a multiple of 32."""
    return 32 * math.ceil(width / REDUCTION / 32)


def _reduce_mvdream(spec: dict[str, Any]) -> None:
    """UNet and VAE widths / 8 rounded up to GroupNorm(32)'s multiples, head width / 8 (ldm counts heads
    by ``num_head_channels``); the text tower is reduced sd21-base's (the UNet's context is its output)."""
    params = spec["ldm"]["model"]["params"]
    unet, ddconfig = params["unet_config"]["params"], params["first_stage_config"]["params"]["ddconfig"]
    unet["model_channels"] = _reduce_ldm_width(unet["model_channels"])
    unet["num_head_channels"] //= REDUCTION
    ddconfig["ch"] = _reduce_ldm_width(ddconfig["ch"])
    text = spec["text"]
    text.update(width=text["width"] // REDUCTION, embed_dim=text["embed_dim"] // REDUCTION, layers=REDUCED_TEXT_LAYERS)
    unet["context_dim"] = text["width"]


def fullsize_spec(name: str, reduced: bool = False, dtype: torch.dtype = torch.float16, seed: int = 0) -> dict[str, Any]:
    """Everything that decides what ``name``'s folder holds, as plain JSON (it is the completion marker's content)."""
    if name in DIFFUSERS_MODELS:
        spec = {"kind": "diffusers", **copy.deepcopy(DIFFUSERS_MODELS[name])}
        spec["tokenizer"] = clip_tokenizer_source()
        if reduced:
            _reduce_diffusers(spec)
    elif name in MVDREAM_MODELS:
        released = MVDREAM_MODELS[name]
        spec = {"kind": "mvdream", "source": f"MVDream/MVDream {released}.pt", "ldm": _mvdream_ldm_config(released),
                # FrozenOpenCLIPEmbedder's ViT-H-14 text tower: all 24 layers are in the checkpoint
                "text": {"width": 1024, "layers": 24, "mlp_ratio": 4, "context_length": TOKENIZER_MAX_LENGTH,
                         "vocab_size": CLIP_VOCAB_SIZE, "embed_dim": 1024}}
        if reduced:
            _reduce_mvdream(spec)
    else:
        raise ValueError(f"unknown full-size model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    spec.update(name=name, reduced=reduced, dtype=str(dtype).removeprefix("torch."), seed=seed)
    return json.loads(json.dumps(spec))  # tuples -> lists: compares equal to the marker read back


# --------------------------------------------------------------------------- random weights
def fill_random_(tensors: Iterable[tuple[str, Tensor]], seed: int) -> int:
    """Seeded noise in place, cheap and stable through any depth: weights normal with std
    1/sqrt(fan_in), biases 0, other 1-D / scalar parameters (norm scales, logit_scale) 1.
    Returns the number of elements filled."""
    generator, count = None, 0
    with torch.no_grad():
        for name, t in tensors:
            if generator is None:
                generator = torch.Generator(device=t.device).manual_seed(seed)
            if name.endswith("bias"):
                t.zero_()
            elif t.ndim <= 1:
                t.fill_(1.0)
            else:
                t.normal_(0.0, t[0].numel() ** -0.5, generator=generator)
            count += t.numel()
    return count


def _random_module(make: Callable[[], nn.Module], seed: int, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """``make()`` built on the meta device (skipping its default initialisation, which costs more than
    the noise), then given memory on ``device`` directly in ``dtype`` and filled by :func:`fill_random_`."""
    with torch.device("meta"):
        module = make()
    nn.Module.to(module, dtype=dtype)  # torch's own ``to``: diffusers' warns on every cast
    module = module.to_empty(device=device)
    fill_random_(module.named_parameters(), seed)
    return module.eval()


def _random_state(shapes: Shapes, seed: int, device: torch.device | str, dtype: torch.dtype) -> dict[str, Tensor]:
    """A random state dict of ``shapes`` (on the CPU, to be saved)."""
    state = {k: torch.empty(s, dtype=dtype, device=device) for k, s in shapes.items()}
    fill_random_(state.items(), seed)
    return {k: v.cpu() for k, v in state.items()}


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- tokenizer
def clip_bpe_file() -> Optional[str]:
    """open_clip's copy of CLIP's BPE merges, found without importing open_clip (that imports torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(location, CLIP_BPE_FILE)
        if os.path.isfile(path):
            return path
    return None


def clip_tokenizer_source() -> str:
    """Which vocabulary the tokenizers get: CLIP's (from open_clip's file) or the tiny stand-in."""
    path = clip_bpe_file()
    return f"CLIP BPE ({CLIP_BPE_FILE} from open_clip)" if path else "tiny stand-in (priors/tiny.py; install open_clip_torch for CLIP's)"


def clip_bpe_vocabulary(path: str) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merges from its gzipped merge list, laid out as CLIP builds it: the 256
    byte characters, the same with the end-of-word mark, one token per merge (the first 48,894),
    then the two special tokens: 49,408 entries."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : 1 + CLIP_VOCAB_SIZE - 2 * 256 - 2]  # line 0 is a version header
    chars = list(byte_to_unicode_table().values())
    tokens = chars + [c + END_OF_WORD for c in chars] + ["".join(m.split()) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{path}: {len(vocab)} distinct tokens, not CLIP's {CLIP_VOCAB_SIZE}; not CLIP's merge list.")
    return vocab, merges


def write_clip_tokenizer(folder: str, pad_token: str) -> str:
    """A CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json) with CLIP's vocabulary when
    open_clip ships it, else the tiny one (with a warning); ``pad_token``: "!" for SD 2, EOS for SD 1.
    As in the released SD 2 tokenizer, a special "!" pad token also turns a "!" in a prompt into id 0
    (open_clip's own tokenizer gives "!</w>", 256). Returns :func:`clip_tokenizer_source`."""
    path = clip_bpe_file()
    if path:
        vocab, merges = clip_bpe_vocabulary(path)
    else:
        warnings.warn("open_clip_torch is not installed: the tokenizer is the tiny stand-in, not CLIP's vocabulary.", stacklevel=2)
        vocab, merges = tiny_clip_vocabulary()
    write_clip_tokenizer_files(folder, vocab, merges, pad_token)
    return clip_tokenizer_source()


def _write_json(path: str, content: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, ensure_ascii=False)


# --------------------------------------------------------------------------- builders
def _build_diffusers(spec: dict[str, Any], folder: str, device: torch.device | str, dtype: torch.dtype) -> dict[str, int]:
    """unet/, text_encoder/, vae/ (one at a time, each freed before the next), tokenizer/, scheduler/,
    model_index.json. Returns the parameter count of each network."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    makers = {
        "unet": lambda: UNet2DConditionModel.from_config(spec["unet"]),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**spec["text_encoder"])),
        "vae": lambda: AutoencoderKL.from_config(spec["vae"]),
    }
    counts = {}
    for offset, (part, make) in enumerate(makers.items()):
        counts[part] = _save_random_module(make, os.path.join(folder, part), spec["seed"] + offset, device, dtype)
        _release_memory()
    write_clip_tokenizer(os.path.join(folder, "tokenizer"), spec["pad_token"])
    _write_scheduler(os.path.join(folder, "scheduler"), spec["scheduler"])
    write_model_index(folder, True, spec["pipeline"])
    _update_json(os.path.join(folder, "model_index.json"), scheduler=["diffusers", spec["scheduler"]["class"]])
    return counts


def _save_random_module(make: Callable[[], nn.Module], folder: str, seed: int, device: torch.device | str, dtype: torch.dtype) -> int:
    """Build, fill and save one network; returns its parameter count (the network is freed on return)."""
    module = _random_module(make, seed, device, dtype)
    module.save_pretrained(folder, safe_serialization=True)
    return _parameter_count(module)


def _write_scheduler(folder: str, spec: dict[str, Any]) -> None:
    """The class's own config (so diffusers checks the values), plus the released keys it does not take."""
    import diffusers

    released = {k: v for k, v in spec.items() if k != "class"}
    getattr(diffusers, spec["class"]).from_config(released).save_pretrained(folder)
    _update_json(os.path.join(folder, "scheduler_config.json"), **released)


def _update_json(path: str, **changes: Any) -> None:
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    _write_json(path, {**content, **changes})


def _build_mvdream(spec: dict[str, Any], folder: str, device: torch.device | str, dtype: torch.dtype) -> dict[str, int]:
    """MVDream's checkpoint in its ldm layout (weights in ``dtype``, schedule buffers float32 as ldm
    keeps them) and yaml, then converted into ``diffusers/``. Returns parameter counts per network."""
    from omegaconf import OmegaConf

    params = spec["ldm"]["model"]["params"]
    ddconfig = params["first_stage_config"]["params"]["ddconfig"]
    networks = {
        "unet": ("model.diffusion_model.", ldm_unet_shapes(params["unet_config"]["params"])),
        "vae": ("first_stage_model.", ldm_vae_shapes(ddconfig["ch"], tuple(ddconfig["ch_mult"]), ddconfig["num_res_blocks"], ddconfig["z_channels"])),
        "text_encoder": ("cond_stage_model.model.", open_clip_text_shapes(**spec["text"])),
    }
    state: dict[str, Tensor] = {}
    counts = {}
    for offset, (part, (prefix, shapes)) in enumerate(networks.items()):
        counts[part] = sum(math.prod(s) for s in shapes.values())
        state.update({prefix + k: v for k, v in _random_state(shapes, spec["seed"] + offset, device, dtype).items()})
    state.update(ldm_schedule_buffers(params["linear_start"], params["linear_end"], params["timesteps"]))
    checkpoint, yaml = os.path.join(folder, MVDREAM_CHECKPOINT), os.path.join(folder, MVDREAM_YAML)
    os.makedirs(folder, exist_ok=True)
    torch.save(state, checkpoint)
    state.clear()
    _release_memory()
    OmegaConf.save(OmegaConf.create(spec["ldm"]), yaml)
    convert_checkpoint(checkpoint, os.path.join(folder, MVDREAM_CONVERTED), yaml)
    return counts


def _release_memory() -> None:
    """Return a freed network's memory before the next one is made (full size: gigabytes)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- folders
def model_path(name: str, folder: str) -> str:
    """What to hand ``load_diffusion_components`` for ``name`` built in ``folder`` (MVDream: its converted folder)."""
    return os.path.join(folder, MVDREAM_CONVERTED) if name in MVDREAM_MODELS else folder


def read_marker(folder: str) -> Optional[dict[str, Any]]:
    """The completion marker of a finished build (``spec``, ``parameters``, ``seconds``), or None."""
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _clear(folder: str) -> None:
    """Remove what an earlier build wrote (marker first, so a half-cleared folder reads as unfinished);
    anything else in the folder is left alone."""
    for entry in BUILT_ENTRIES:
        path = os.path.join(folder, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def build_fullsize_model(
    name: str, folder: str, reduced: bool = False, dtype: torch.dtype = torch.float16, seed: int = 0, device: torch.device | str = "cpu"
) -> str:
    """Write ``name`` (one of :data:`MODEL_NAMES`) into ``folder``, replacing an earlier build there,
    and return the path to load it from (:func:`model_path`). Random values come from ``device``'s
    generator, so they differ between CPU and CUDA builds; the architecture does not."""
    spec = fullsize_spec(name, reduced, dtype, seed)
    started = time.perf_counter()
    _clear(folder)
    os.makedirs(folder, exist_ok=True)
    build = _build_mvdream if spec["kind"] == "mvdream" else _build_diffusers
    counts = build(spec, folder, device, dtype)
    _write_json(os.path.join(folder, MARKER), {"spec": spec, "parameters": counts, "seconds": round(time.perf_counter() - started, 1)})
    return model_path(name, folder)


def build_fullsize_models(
    root: str,
    names: Optional[Sequence[str]] = None,
    reduced: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> dict[str, str]:
    """``root/<name>`` for each of ``names`` (default: all), one at a time; a folder whose completion
    marker holds this very spec is kept, any other (never finished, another spec) is built again.
    Returns name -> the path to load (:func:`model_path`)."""
    paths = {}
    for name in names or MODEL_NAMES:
        folder = os.path.join(root, name)
        marker = read_marker(folder)
        if marker is None or marker.get("spec") != fullsize_spec(name, reduced, dtype, seed):
            build_fullsize_model(name, folder, reduced, dtype, seed, device)
        paths[name] = model_path(name, folder)
    return paths


def disk_size(folder: str) -> int:
    """Bytes of all files under ``folder``."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


# --------------------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m threestudio_like.priors.fullsize",
        description="Write full-size diffusion models with the released architectures and random weights "
        "(no download). A folder already built with the same settings is kept.",
    )
    parser.add_argument("--out", required=True, help="root folder: one subfolder per model")
    parser.add_argument("--only", nargs="+", choices=MODEL_NAMES, default=None, help="build only these (default: all)")
    parser.add_argument("--reduced", action="store_true", help="1/8 of the widths and 2 text layers (same layouts): a dry run")
    parser.add_argument("--device", default="cpu", help="where the random weights are made (cuda: faster)")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16", help="weight dtype on disk")
    args = parser.parse_args(argv)
    print(f"tokenizer: {clip_tokenizer_source()}")
    for name in args.only or MODEL_NAMES:
        folder = os.path.join(args.out, name)
        before = read_marker(folder)
        path = build_fullsize_models(args.out, [name], args.reduced, args.device, getattr(torch, args.dtype))[name]
        marker = read_marker(folder) or {}
        counts = ", ".join(f"{part} {n:,}" for part, n in marker.get("parameters", {}).items())
        how = "kept, built earlier" if marker == before else "built"
        print(f"{name}: {path}  {disk_size(folder) / 2**30:.2f} GiB  parameters: {counts}  ({how} in {marker.get('seconds')} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
