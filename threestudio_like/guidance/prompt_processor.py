"""Prompt -> text embeddings, per viewing direction, cached on disk.

View-dependent prompting (DreamFusion): each rendered view is conditioned on the prompt with
a suffix naming where the camera is (", front view", ", side view", ...), which discourages
the multi-faced "Janus" solutions. Perp-Neg (Armandpour et al. 2023) goes further: each view's
positive prompt is interpolated between neighbouring directions by azimuth, and the other
directions become negative prompts with azimuth-dependent weights. Embeddings are computed
once per (model, prompt) and kept as safetensors files, so later runs never load the text
encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from threestudio_like.config import ConfigError
from threestudio_like.guidance.models import load_diffusion_components, resolve_model_path
from threestudio_like.registry import register
from threestudio_like.utils.base import BaseObject
from threestudio_like.utils.io import atomic_path
from threestudio_like.utils.typing import Bool, Float, Int, Tensor

# Order matters: when several conditions hold, the later direction wins (overhead over all).
DIRECTION_NAMES: tuple[str, ...] = ("side", "front", "back", "overhead")


@dataclass
class ViewThresholds:
    """Angles (degrees) that split the view sphere into front / side / back / overhead."""

    front: float = 45.0  # |azimuth| below this is the front
    back: float = 45.0  # |azimuth| above 180 - this is the back
    overhead: float = 60.0  # elevation above this is overhead, whatever the azimuth


def wrap_azimuth(azimuth: Tensor) -> Tensor:
    """Degrees -> [-180, 180)."""
    return torch.remainder(azimuth + 180.0, 360.0) - 180.0


def view_direction_index(
    elevation: Float[Tensor, "B"], azimuth: Float[Tensor, "B"], thresholds: ViewThresholds
) -> Int[Tensor, "B"]:
    """Index into ``DIRECTION_NAMES`` for each view; side unless a later rule matches. On the
    views' device, without a host sync (``torch.where``, not masked assignment)."""
    azimuth = wrap_azimuth(azimuth)
    index = torch.zeros_like(azimuth, dtype=torch.long)  # side
    index = torch.where(azimuth.abs() < thresholds.front, DIRECTION_NAMES.index("front"), index)
    index = torch.where(azimuth.abs() > 180.0 - thresholds.back, DIRECTION_NAMES.index("back"), index)
    return torch.where(elevation > thresholds.overhead, DIRECTION_NAMES.index("overhead"), index)


# Perp-Neg weight functions f(r) = a exp(-b r) + c, coefficients (a, b, c); threestudio's defaults.
# r is the interpolation ratio of the view between two directions (see get_text_embeddings_perp_neg).
PERP_NEG_F_SB: tuple[float, float, float] = (1.0, 0.5, -0.606)  # side negative, side-back views; f(1) ~ 0
PERP_NEG_F_FSB: tuple[float, float, float] = (1.0, 0.5, 0.967)  # front negative, side-back views
PERP_NEG_F_FS: tuple[float, float, float] = (4.0, 0.5, -2.426)  # front negative, front-side views; f(1) ~ 0
PERP_NEG_F_SF: tuple[float, float, float] = (4.0, 0.5, -2.426)  # side negative, front-side views; f(1) ~ 0


def perp_neg_weight(coefficients: Sequence[float], r: Float[Tensor, "B"]) -> Float[Tensor, "B"]:
    """a exp(-b r) + c for ``coefficients`` (a, b, c): the strength of one negative prompt."""
    a, b, c = coefficients
    return a * torch.exp(-b * r) + c


def _pick(mask: Bool[Tensor, "B"], x: Float[Tensor, "#B L D"], y: Float[Tensor, "#B L D"]) -> Float[Tensor, "B L D"]:
    """Rows of ``x`` where ``mask``, else of ``y`` (either may be one row, broadcast)."""
    return torch.where(mask.view(-1, 1, 1), x, y)


KNOWN_WORDS_FILE = "known_words.json"  # written by small models trained on a closed vocabulary


def unknown_words(model_path: str, prompts: list[str]) -> tuple[list[str], list[str]]:
    """(words of ``prompts`` the model never saw in training, the words it knows); empty
    lists when the model does not declare its vocabulary (e.g. Stable Diffusion)."""
    path = os.path.join(model_path, KNOWN_WORDS_FILE)
    if not os.path.isfile(path):
        return [], []
    with open(path) as f:
        known = [str(w).lower() for w in json.load(f)]
    words = [w for p in prompts for w in re.findall(r"[a-z]+", p.lower())]
    return sorted(set(words) - set(known)), sorted(known)


def warn_unknown_words(model_path: str, prompts: list[str]) -> None:
    unknown, known = unknown_words(model_path, prompts)
    if unknown:
        warnings.warn(
            f"The model at {model_path} never saw the word(s) {', '.join(unknown)} in training; the run continues, "
            f"but expect them to be ignored. It knows: {', '.join(known)}.",
            stacklevel=3,
        )


@dataclass
class PromptProcessorOutput:
    """Text embeddings for one prompt: plain, negative, and per view direction (``DIRECTION_NAMES`` order)."""

    text_embeddings: Float[Tensor, "1 L D"]
    uncond_text_embeddings: Float[Tensor, "1 L D"]
    text_embeddings_vd: Float[Tensor, "4 L D"]
    uncond_text_embeddings_vd: Float[Tensor, "4 L D"]
    directions: tuple[str, ...] = DIRECTION_NAMES
    thresholds: ViewThresholds = field(default_factory=ViewThresholds)
    prompts_vd: tuple[str, ...] = ()
    use_perp_neg: bool = False
    perp_neg_f_sb: Sequence[float] = PERP_NEG_F_SB
    perp_neg_f_fsb: Sequence[float] = PERP_NEG_F_FSB
    perp_neg_f_fs: Sequence[float] = PERP_NEG_F_FS
    perp_neg_f_sf: Sequence[float] = PERP_NEG_F_SF
    # the four embedding tables per device, copied there once (not at every step)
    _on_device: dict[str, dict[str, Tensor]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def tables(self, device: torch.device) -> dict[str, Tensor]:
        """``text_embeddings``, ``uncond_text_embeddings`` and their ``_vd`` tables on ``device``."""
        key = str(device)
        if key not in self._on_device:
            names = ("text_embeddings", "uncond_text_embeddings", "text_embeddings_vd", "uncond_text_embeddings_vd")
            self._on_device[key] = {name: getattr(self, name).to(device) for name in names}
        return self._on_device[key]

    def get_text_embeddings(
        self,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
        view_dependent_prompting: bool = True,
    ) -> Float[Tensor, "2*B L D"]:
        """Conditional rows for the B views, then the B unconditional rows; on ``elevation``'s device
        (picked there: no copy between host and device per call)."""
        batch = elevation.shape[0]
        tables = self.tables(elevation.device)
        if view_dependent_prompting:
            index = view_direction_index(elevation.detach(), azimuth.detach(), self.thresholds)
            cond = tables["text_embeddings_vd"][index]
            uncond = tables["uncond_text_embeddings_vd"][index]
        else:
            cond = tables["text_embeddings"].expand(batch, -1, -1)
            uncond = tables["uncond_text_embeddings"].expand(batch, -1, -1)
        return torch.cat([cond, uncond], dim=0)

    def get_text_embeddings_perp_neg(
        self,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
        view_dependent_prompting: bool = True,
    ) -> tuple[Float[Tensor, "4*B L D"], Float[Tensor, "B 2"]]:
        """Perp-Neg conditioning: (embeddings, negative weights), on ``elevation``'s device.

        Embedding rows come in four blocks of B, one row per view in each: ``[0, B)`` the
        positive prompt, ``[B, 2B)`` the unconditional one, ``[2B, 3B)`` the first negative,
        ``[3B, 4B)`` the second; ``weights[:, k]`` (<= 0) goes with negative block k.

        With |azimuth| = a in [0, 180]: for a < 90 the positive is r front + (1 - r) side with
        r = 1 - a / 90, the negatives are (front, side) weighted -(f_fs(r), f_sf(1 - r)); otherwise
        it is r side + (1 - r) back with r = 2 - a / 90, the negatives are (side, front) weighted
        -(f_sb(r), f_fsb(r)). Overhead views keep the overhead prompt, and their negatives are the
        unconditional prompt at weight 0 (plain classifier-free guidance).
        """
        if not view_dependent_prompting:
            raise ConfigError(
                "Perp-Neg needs view-dependent prompting: set system.guidance.view_dependent_prompting: true "
                "or system.prompt_processor.use_perp_neg: false."
            )
        tables = self.tables(elevation.device)
        index = view_direction_index(elevation.detach(), azimuth.detach(), self.thresholds)
        a = wrap_azimuth(azimuth.detach().float()).abs()
        rows = {name: tables["text_embeddings_vd"][i] for i, name in enumerate(DIRECTION_NAMES)}
        side, front, back, overhead = rows["side"], rows["front"], rows["back"], rows["overhead"]
        front_half = a < 90.0
        r = torch.where(front_half, 1.0 - a / 90.0, 2.0 - a / 90.0)
        r3 = r.view(-1, 1, 1)
        positive = _pick(front_half, r3 * front + (1.0 - r3) * side, r3 * side + (1.0 - r3) * back)
        first = _pick(front_half, front[None], side[None])
        second = _pick(front_half, side[None], front[None])
        weights = -torch.stack(
            [
                torch.where(front_half, perp_neg_weight(self.perp_neg_f_fs, r), perp_neg_weight(self.perp_neg_f_sb, r)),
                torch.where(front_half, perp_neg_weight(self.perp_neg_f_sf, 1.0 - r), perp_neg_weight(self.perp_neg_f_fsb, r)),
            ],
            dim=1,
        )
        uncond = tables["uncond_text_embeddings_vd"][index]
        is_overhead = index == DIRECTION_NAMES.index("overhead")
        positive = _pick(is_overhead, overhead[None], positive)
        first, second = _pick(is_overhead, uncond, first), _pick(is_overhead, uncond, second)
        weights = torch.where(is_overhead.view(-1, 1), torch.zeros_like(weights), weights)
        embeddings = torch.cat([positive, uncond, first, second], dim=0)
        return embeddings, weights


@register("stable-diffusion-prompt-processor", "prompt-processor")
class StableDiffusionPromptProcessor(BaseObject):
    """Turns ``prompt`` / ``negative_prompt`` into cached text-encoder embeddings (last hidden state)."""

    @dataclass
    class Config:
        pretrained_model_name_or_path: str = "runwayml/stable-diffusion-v1-5"
        prompt: Optional[str] = "a hamburger"  # Optional only so that `prompt=` (read as null) gets the clear error
        negative_prompt: str = ""
        use_cache: bool = True
        cache_dir: str = ".threestudio_cache/text_embeddings"
        front_threshold: float = 45.0
        back_threshold: float = 45.0
        overhead_threshold: float = 60.0
        view_dependent_prompting: bool = True
        # Replace the automatic "<prompt>, <direction> view" prompts.
        prompt_front: Optional[str] = None
        prompt_side: Optional[str] = None
        prompt_back: Optional[str] = None
        prompt_overhead: Optional[str] = None
        # Perp-Neg: the other view directions as negative prompts, weighted by azimuth
        # (f(r) = a exp(-b r) + c, coefficients (a, b, c); see PromptProcessorOutput.get_text_embeddings_perp_neg)
        use_perp_neg: bool = False
        perp_neg_f_sb: tuple[float, float, float] = PERP_NEG_F_SB
        perp_neg_f_fsb: tuple[float, float, float] = PERP_NEG_F_FSB
        perp_neg_f_fs: tuple[float, float, float] = PERP_NEG_F_FS
        perp_neg_f_sf: tuple[float, float, float] = PERP_NEG_F_SF
        use_prompt_debiasing: bool = False
        spawn: bool = False  # threestudio runs the encoder in a subprocess; here it always runs in-process

        def __post_init__(self) -> None:
            # Checked when the config is parsed: before a trial folder exists or a model loads.
            if not (self.prompt or "").strip():
                raise ConfigError(
                    'system.prompt_processor.prompt is empty: say what to make, e.g. system.prompt_processor.prompt="a red cube".'
                )
            if self.use_prompt_debiasing:
                raise ConfigError(
                    "system.prompt_processor.use_prompt_debiasing is not implemented; set it to false."
                )
            if self.spawn:
                warnings.warn(
                    "system.prompt_processor.spawn is accepted for threestudio compatibility and has no effect: "
                    "the text encoder runs once in this process and its embeddings are cached."
                )

    cfg: Config
    required_models = {"pretrained_model_name_or_path": ("tokenizer", "text_encoder")}  # checked before a run starts

    def configure(self, device: Optional[torch.device | str] = None, **kwargs: Any) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model_path = resolve_model_path(self.cfg.pretrained_model_name_or_path)
        warn_unknown_words(self.model_path, [self.cfg.prompt, self.cfg.negative_prompt])
        self.prompts_vd = tuple(self._view_prompt(name) for name in DIRECTION_NAMES)
        self._output = self._build_output()

    def __call__(self) -> PromptProcessorOutput:
        return self._output

    # ------------------------------------------------------------------ prompts
    def _view_prompt(self, direction: str) -> str:
        override = getattr(self.cfg, f"prompt_{direction}")
        return override if override is not None else f"{self.cfg.prompt}, {direction} view"

    def _build_output(self) -> PromptProcessorOutput:
        prompt, negative = self.cfg.prompt, self.cfg.negative_prompt
        table = self.text_embeddings([prompt, negative, *self.prompts_vd])
        return PromptProcessorOutput(
            text_embeddings=table[prompt][None],
            uncond_text_embeddings=table[negative][None],
            text_embeddings_vd=torch.stack([table[p] for p in self.prompts_vd]),
            # The negative prompt does not depend on the view (as in threestudio).
            uncond_text_embeddings_vd=table[negative][None].expand(len(DIRECTION_NAMES), -1, -1).clone(),
            thresholds=ViewThresholds(self.cfg.front_threshold, self.cfg.back_threshold, self.cfg.overhead_threshold),
            prompts_vd=self.prompts_vd,
            use_perp_neg=self.cfg.use_perp_neg,
            perp_neg_f_sb=tuple(self.cfg.perp_neg_f_sb),
            perp_neg_f_fsb=tuple(self.cfg.perp_neg_f_fsb),
            perp_neg_f_fs=tuple(self.cfg.perp_neg_f_fs),
            perp_neg_f_sf=tuple(self.cfg.perp_neg_f_sf),
        )

    # ------------------------------------------------------------------ embeddings + disk cache
    def text_embeddings(self, prompts: list[str]) -> dict[str, Float[Tensor, "L D"]]:
        """Embedding per distinct prompt, from the disk cache where present; the encoder loads only for the rest."""
        unique = list(dict.fromkeys(prompts))
        identity = model_identity(self.model_path)
        found: dict[str, Tensor] = {}
        if self.cfg.use_cache:
            for p in unique:
                cached = self._read_cached(identity, p)
                if cached is not None:
                    found[p] = cached
        missing = [p for p in unique if p not in found]
        if missing:
            computed = self._encode(missing)
            for p, embedding in zip(missing, computed):
                found[p] = embedding
                if self.cfg.use_cache:
                    self._write_cached(identity, p, embedding)
        return found

    def _encode(self, prompts: list[str]) -> Float[Tensor, "N L D"]:
        parts = load_diffusion_components(self.model_path, self.device, text_encoder=True, unet=False)
        tokenizer, encoder = parts.tokenizer, parts.text_encoder
        # SD conditions on all 77 positions (padding included), so pad to the full length.
        max_length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
        tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(tokens.input_ids.to(self.device))[0]
        return hidden.float().cpu()

    def _cache_file(self, identity: str, prompt: str) -> str:
        digest = hashlib.sha256(f"{identity}\n{prompt}".encode("utf-8")).hexdigest()[:32]
        return os.path.join(self.cfg.cache_dir, f"{digest}.safetensors")

    def _read_cached(self, identity: str, prompt: str) -> Optional[Tensor]:
        from safetensors import safe_open

        path = self._cache_file(identity, prompt)
        if not os.path.isfile(path):
            return None
        try:
            with safe_open(path, framework="pt") as f:
                if (f.metadata() or {}).get("prompt") != prompt:  # hash collision or foreign file
                    return None
                return f.get_tensor("embedding")
        except Exception:  # unreadable file: recompute and overwrite it
            return None

    def _write_cached(self, identity: str, prompt: str, embedding: Tensor) -> None:
        from safetensors.torch import save_file

        path = self._cache_file(identity, prompt)
        with atomic_path(path) as tmp:
            save_file(
                {"embedding": embedding.contiguous()},
                tmp,
                metadata={"prompt": prompt, "model": self.cfg.pretrained_model_name_or_path},
            )


def model_identity(model_path: str) -> str:
    """A key that changes whenever the text encoder or tokenizer files change (path, names, sizes, mtimes)."""
    parts = [os.path.abspath(model_path)]
    for sub in ("text_encoder", "tokenizer"):
        folder = os.path.join(model_path, sub)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            stat = os.stat(os.path.join(folder, name))
            parts.append(f"{sub}/{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)
