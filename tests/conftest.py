import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A random tiny diffusers-format pixel-space model, built in code (no download)."""
    from threestudio_like.priors.tiny import build_tiny_diffusion_model

    return build_tiny_diffusion_model(str(tmp_path_factory.mktemp("tiny-model") / "model"), sample_size=32)
