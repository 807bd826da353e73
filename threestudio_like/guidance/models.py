"""Finding and loading frozen diffusion models, offline, one component at a time.

A model is named by a local diffusers-format folder, a Hugging Face hub id (used only when it
is already in the local cache: nothing is ever downloaded), or ``builtin:<name>`` for the
models shipped inside the package. Components (UNet, text encoder, tokenizer, scheduler,
optional VAE) load individually, so a guidance that needs only the UNet never pays for the
text encoder. No VAE means the UNet works in pixel space.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from threestudio_like.guidance.convert_mvdream import CHECKPOINT_SUFFIXES, load_mvdream_checkpoint
from threestudio_like.guidance.errors import ModelNotFoundError
from threestudio_like.guidance.multiview_unet import MultiViewUNet2DConditionModel
from threestudio_like.utils.backends import optional_import

BUILTIN_PREFIX = "builtin:"
BUILTIN_WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "priors", "weights")

# Weight file stems: diffusers models and transformers models name their weights differently.
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
_TRANSFORMERS_WEIGHTS = "model"
_TRANSFORMERS_BIN_WEIGHTS = "pytorch_model"


# --------------------------------------------------------------------------- locating a model
def builtin_model_names() -> list[str]:
    """Names usable as ``builtin:<name>`` (folders under ``threestudio_like/priors/weights``)."""
    if not os.path.isdir(BUILTIN_WEIGHTS_DIR):
        return []
    return sorted(d for d in os.listdir(BUILTIN_WEIGHTS_DIR) if os.path.isdir(os.path.join(BUILTIN_WEIGHTS_DIR, d)))


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_model_path(name_or_path: str) -> str:
    """The local folder holding the model ``name_or_path`` (see module docstring); never downloads."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ModelNotFoundError(
            f"pretrained_model_name_or_path must name a model (a local diffusers folder, a hub id, "
            f"or builtin:<name>); got {name_or_path!r}."
        )
    if name_or_path.startswith(BUILTIN_PREFIX):
        return _resolve_builtin(name_or_path[len(BUILTIN_PREFIX) :])
    local = os.path.abspath(os.path.expanduser(name_or_path))
    if os.path.isdir(local):
        return local
    return _resolve_hub_id(name_or_path, local)


def _resolve_builtin(name: str) -> str:
    available = builtin_model_names()
    folder = os.path.join(BUILTIN_WEIGHTS_DIR, name)
    if name and os.sep not in name and "/" not in name and os.path.isdir(folder):
        return folder
    listing = ", ".join(f"builtin:{n}" for n in available) if available else "none are installed"
    raise ModelNotFoundError(
        f"No builtin model named '{name}' (looked in {BUILTIN_WEIGHTS_DIR}). Available builtin models: {listing}. "
        f"Use one of those, or set pretrained_model_name_or_path to a local diffusers folder or a downloaded hub id."
    )


def _resolve_hub_id(repo_id: str, local: str) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache = _hub_cache_dir()
    try:
        # local_files_only: look in the cache only, so a missing model fails at once instead of
        # hanging on (or silently starting) a multi-gigabyte download.
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError) as error:
        builtins = ", ".join(f"builtin:{n}" for n in builtin_model_names()) or "builtin:<name>"
        alternatives = (
            f"set pretrained_model_name_or_path to a local diffusers folder or to a shipped model ({builtins})"
        )
        if isinstance(error, HFValidationError):
            raise ModelNotFoundError(
                f"Diffusion model '{repo_id}' not found: there is no folder {local}, and '{repo_id}' is not a valid "
                f"Hugging Face hub id (owner/name) either. Fix the path, or {alternatives}."
            ) from None
        raise ModelNotFoundError(
            f"Diffusion model '{repo_id}' not found. Looked for a local folder {local} (does not exist) and for "
            f"the Hugging Face model '{repo_id}' in the hub cache {cache} (no downloaded copy; this program never "
            f"downloads on its own). To fix: on a machine with network run `huggingface-cli download {repo_id}` "
            f"(or `hf download {repo_id}`) and copy the cache here (or point HF_HOME / HF_HUB_CACHE at it), "
            f"or {alternatives}."
        ) from None


# --------------------------------------------------------------------------- loaded components
@dataclass
class DiffusionComponents:
    """The frozen parts of a text-conditioned diffusion model. ``vae`` is None for pixel-space models."""

    unet: Any
    scheduler: Any
    tokenizer: Any = None
    text_encoder: Any = None
    vae: Optional[Any] = None
    path: str = ""

    @property
    def latent_space(self) -> bool:
        return self.vae is not None

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel (1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


# Weak values: a component stays shared while some part uses it and is freed once none does
# (e.g. the text encoder after the prompt processor has cached its embeddings).
_CACHE: "weakref.WeakValueDictionary[tuple, Any]" = weakref.WeakValueDictionary()
_CACHE_LOCK = threading.Lock()


def clear_component_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def _cached(key: tuple, load: Callable[[], Any]) -> Any:
    with _CACHE_LOCK:
        found = _CACHE.get(key)
        if found is None:
            found = load()
            _CACHE[key] = found
        return found


def load_diffusion_components(
    name_or_path: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    text_encoder: bool = True,
    unet: bool = True,
    private_unet: bool = False,
    vae: bool = True,
) -> DiffusionComponents:
    """Load the parts of a model: tokenizer and scheduler always; text encoder / UNet on request; VAE if present.

    Networks are frozen (no grad, eval mode) and placed on ``device`` in ``dtype``. Components
    are shared within the process per (folder, device, dtype) while anything holds them;
    ``private_unet`` loads a UNet of the caller's own, for one that will change it (add adapters);
    ``vae=False`` skips the VAE (a second UNet that shares another model's latent space).
    A path to MVDream's checkpoint file (.pt / .ckpt / .safetensors) loads its UNet, scheduler and VAE
    converted on the fly (no tokenizer or text encoder: see ``convert_mvdream``).
    """
    checkpoint = checkpoint_file(name_or_path)
    if checkpoint is not None:
        return _load_checkpoint_components(checkpoint, torch.device(device), dtype, text_encoder, unet, private_unet, vae)
    root = resolve_model_path(name_or_path)
    device = torch.device(device)
    where = (root, str(device), str(dtype))
    load_unet = lambda: _load_unet(root, device, dtype)  # noqa: E731
    parts = DiffusionComponents(
        unet=(load_unet() if private_unet else _cached((*where, "unet"), load_unet)) if unet else None,
        scheduler=_cached((root, "scheduler"), lambda: _load_scheduler(root)),
        # A converted multi-view folder has no tokenizer (its text comes from the prompt processor's model).
        tokenizer=(
            _cached((root, "tokenizer"), lambda: _load_tokenizer(root))
            if text_encoder or os.path.isdir(os.path.join(root, "tokenizer"))
            else None
        ),
        text_encoder=(
            _cached((*where, "text_encoder"), lambda: _load_text_encoder(root, device, dtype)) if text_encoder else None
        ),
        path=root,
    )
    if os.path.isdir(os.path.join(root, "vae")) and unet and vae:
        parts.vae = _cached((*where, "vae"), lambda: _load_vae(root, device, dtype))
    return parts


# --------------------------------------------------------------------------- MVDream's checkpoint file
class _NoVAE:
    """Cached in place of the VAE of a checkpoint that has none (a module-level instance, never freed)."""


_NO_VAE = _NoVAE()


def checkpoint_file(name_or_path: str) -> Optional[str]:
    """The absolute path when ``name_or_path`` names a checkpoint file (.pt / .ckpt / .safetensors), else None.
    A missing file is an error here, not a hub lookup."""
    if not isinstance(name_or_path, str) or not name_or_path.lower().endswith(CHECKPOINT_SUFFIXES) or name_or_path.startswith(BUILTIN_PREFIX):
        return None
    path = os.path.abspath(os.path.expanduser(name_or_path))
    if os.path.isdir(path):  # a model folder that happens to end in .pt
        return None
    if not os.path.isfile(path):
        raise ModelNotFoundError(
            f"Checkpoint file {path} does not exist. MVDream's released models are sd-v2.1-base-4view.pt and "
            f"sd-v1.5-4view.pt from https://huggingface.co/MVDream/MVDream; or convert one to a folder with "
            f"`python -m threestudio_like.guidance.convert_mvdream`."
        )
    return path


def _load_checkpoint_components(
    path: str, device: torch.device, dtype: torch.dtype, text_encoder: bool, unet: bool, private_unet: bool, vae: bool
) -> DiffusionComponents:
    """UNet / scheduler / VAE of MVDream's checkpoint, converted once and shared like a folder's components."""
    if text_encoder:
        raise ModelNotFoundError(
            f"{path} is MVDream's checkpoint: it gives the multi-view UNet, not the text encoder. Point "
            f"system.prompt_processor.pretrained_model_name_or_path at Stable Diffusion 2.1-base (1.5 for sd-v1.5-4view)."
        )
    where = (path, str(device), str(dtype))
    with _CACHE_LOCK:
        found_unet = None if private_unet else _CACHE.get((*where, "unet"))
        found_vae = _CACHE.get((*where, "vae")) if vae else _NO_VAE
        scheduler = _CACHE.get((path, "scheduler"))
        if found_unet is None or found_vae is None or scheduler is None:
            new_unet, new_scheduler, new_vae = load_mvdream_checkpoint(path, device=device, dtype=dtype)
            if found_unet is None:
                found_unet = _freeze(new_unet, device)
                if not private_unet:
                    _CACHE[(*where, "unet")] = found_unet
            if found_vae is None:
                found_vae = _NO_VAE if new_vae is None else _freeze(new_vae, device)
                _CACHE[(*where, "vae")] = found_vae
            if scheduler is None:
                scheduler = _CACHE[(path, "scheduler")] = new_scheduler
    return DiffusionComponents(
        unet=found_unet if unet else None,
        scheduler=scheduler,
        vae=None if found_vae is _NO_VAE or not unet else found_vae,
        path=path,
    )


def _freeze(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """No gradients, eval mode, on ``device`` (dtype was set at load, which keeps any fp32-only layers)."""
    module.requires_grad_(False)
    module.eval()
    return module.to(device=device)


def _diffusers_load_options(folder: str, dtype: torch.dtype) -> dict[str, Any]:
    options = {"torch_dtype": dtype, "local_files_only": True, **_weight_options(folder, (_DIFFUSERS_WEIGHTS,))}
    if optional_import("accelerate") is None:
        # Without accelerate diffusers falls back anyway; saying so up front avoids its warning.
        options["low_cpu_mem_usage"] = False
    return options


# What each component's subfolder must hold, and the stems of its weight files (None: no weights).
_COMPONENT_FILES: dict[str, tuple[str, Optional[tuple[str, ...]]]] = {
    "unet": (f"config.json and {_DIFFUSERS_WEIGHTS}.safetensors", (_DIFFUSERS_WEIGHTS,)),
    "vae": (f"config.json and {_DIFFUSERS_WEIGHTS}.safetensors", (_DIFFUSERS_WEIGHTS,)),
    "text_encoder": (f"config.json and {_TRANSFORMERS_WEIGHTS}.safetensors", (_TRANSFORMERS_WEIGHTS, _TRANSFORMERS_BIN_WEIGHTS)),
    "tokenizer": ("tokenizer_config.json with vocab.json and merges.txt", None),
    "scheduler": ("scheduler_config.json", None),
}


def check_model_folder(name_or_path: str, components: tuple[str, ...]) -> str:
    """Resolve a model and check that ``components`` (subfolders, with their weights) are there,
    loading nothing: a partial download fails before a run starts, not at its first step."""
    checkpoint = checkpoint_file(name_or_path)
    if checkpoint is not None:  # MVDream's file: UNet, scheduler and VAE only
        if {"tokenizer", "text_encoder"} & set(components):
            raise ModelNotFoundError(
                f"{checkpoint} is MVDream's checkpoint, which gives no {' or '.join(sorted({'tokenizer', 'text_encoder'} & set(components)))}; "
                f"point this at Stable Diffusion 2.1-base (1.5 for sd-v1.5-4view)."
            )
        return checkpoint
    root = resolve_model_path(name_or_path)
    for name in components:
        folder = _subfolder(root, name)
        stems = _COMPONENT_FILES[name][1]
        if stems is not None:
            _weight_options(folder, stems)
    return root


def _subfolder(root: str, name: str) -> str:
    expected = _COMPONENT_FILES[name][0]
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
        raise ModelNotFoundError(
            f"The model folder {root} has no '{name}/' subfolder (expected {name}/{expected}). A diffusers-format "
            f"model folder (as written by save_pretrained, or a hub snapshot) has unet/, text_encoder/, tokenizer/, "
            f"scheduler/ and optionally vae/. If this is a partial download, download the model again."
        )
    return folder


def _weight_options(folder: str, stems: tuple[str, ...]) -> dict[str, Any]:
    """``use_safetensors`` / ``variant`` arguments for the weights actually present in ``folder``.

    safetensors is preferred (it cannot run code); a folder with only ``.bin`` weights falls
    back to them (both libraries read those with ``torch.load(weights_only=True)``).
    """
    files = os.listdir(folder)
    safetensors = [f for f in files if f.endswith(".safetensors") or f.endswith(".safetensors.index.json")]
    if safetensors:
        plain = {f"{s}.safetensors" for s in stems} | {f"{s}.safetensors.index.json" for s in stems}
        if plain & set(files):
            return {"use_safetensors": True}
        # Only a variant such as diffusion_pytorch_model.fp16.safetensors.
        for f in safetensors:
            pieces = f.split(".")
            if len(pieces) >= 3 and pieces[0] in stems:
                return {"use_safetensors": True, "variant": pieces[1]}
        return {"use_safetensors": True}
    if any(f.endswith(".bin") or f.endswith(".bin.index.json") for f in files):
        return {"use_safetensors": False}
    raise ModelNotFoundError(
        f"No weights in {folder}: expected {stems[0]}.safetensors (or a .bin file). Download the model again or "
        f"point pretrained_model_name_or_path at a complete diffusers folder."
    )


def _config_architecture(folder: str) -> Optional[str]:
    with open(os.path.join(folder, "config.json")) as f:
        architectures = json.load(f).get("architectures") or []
    return architectures[0] if architectures else None


def unet_class(folder: str) -> type:
    """The UNet class named in ``unet/config.json``: diffusers' 2D UNet or this package's multi-view
    UNet (only classes defined here or in diffusers; a folder never gets to name arbitrary code)."""
    from diffusers import UNet2DConditionModel

    with open(os.path.join(folder, "config.json")) as f:
        name = json.load(f).get("_class_name")
    return MultiViewUNet2DConditionModel if name == MultiViewUNet2DConditionModel.__name__ else UNet2DConditionModel


def _load_unet(root: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    folder = _subfolder(root, "unet")
    return _freeze(unet_class(folder).from_pretrained(folder, **_diffusers_load_options(folder, dtype)), device)


def _load_vae(root: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    folder = _subfolder(root, "vae")
    return _freeze(AutoencoderKL.from_pretrained(folder, **_diffusers_load_options(folder, dtype)), device)


def _load_text_encoder(root: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    import transformers

    folder = _subfolder(root, "text_encoder")
    # The class named in config.json (CLIPTextModel for every Stable Diffusion), but only a class
    # that transformers itself defines: model folders never get to run their own code.
    cls = getattr(transformers, _config_architecture(folder) or "CLIPTextModel", None) or transformers.CLIPTextModel
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = cls.from_pretrained(
        folder,
        local_files_only=True,
        trust_remote_code=False,
        **{dtype_key: dtype},
        **_weight_options(folder, _COMPONENT_FILES["text_encoder"][1]),
    )
    return _freeze(model, device)


def _load_tokenizer(root: str) -> Any:
    from transformers import AutoTokenizer

    folder = _subfolder(root, "tokenizer")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


def _load_scheduler(root: str) -> Any:
    from diffusers import DDPMScheduler

    # Training-time noising is DDPM whatever sampler the folder ships (SD ships PNDM):
    # DDPMScheduler reads the shared beta settings from that config.
    folder = _subfolder(root, "scheduler")
    return DDPMScheduler.from_pretrained(folder, local_files_only=True)
