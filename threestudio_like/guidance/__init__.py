"""Frozen diffusion models as guidance: model loading, prompt processing, score distillation."""

from threestudio_like.guidance.models import (
    DiffusionComponents,
    ModelNotFoundError,
    load_diffusion_components,
    resolve_model_path,
)

__all__ = ["DiffusionComponents", "ModelNotFoundError", "load_diffusion_components", "resolve_model_path"]
