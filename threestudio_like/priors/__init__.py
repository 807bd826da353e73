"""Embedded diffusion priors: tiny models built in code, and the shipped weights under ``weights/``."""

from threestudio_like.priors.tiny import TargetImageUNet, build_tiny_diffusion_model

__all__ = ["TargetImageUNet", "build_tiny_diffusion_model"]
