"""dreamfusion-sd as shipped, on a full-size Stable Diffusion 2.1-base with random weights, through the CLI.

One training step, a one-view test render and the export. ``--profile`` counts the step, and the
counts must be those of the real networks at the recipe's sizes: the 866M-parameter UNet on the
classifier-free-guidance pair of 64x64 latents, the VAE encoder on a 512x512 image.
"""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from threestudio_like.cli import main
from threestudio_like.priors.fullsize import build_fullsize_models, fullsize_spec
from threestudio_like.trials import load_checkpoint


def meta_flops(run) -> int:
    with torch.device("meta"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


@pytest.mark.slow  # builds a 2.4 GB model and runs one full-size step on the CPU (about 2 minutes)
def test_dreamfusion_sd_runs_a_full_size_step(tmp_path, on_the_cpu) -> None:
    model = build_fullsize_models(str(tmp_path / "models"), names=["sd21-base"])["sd21-base"]
    args = {
        "system.prompt_processor.pretrained_model_name_or_path": model,
        "system.guidance.pretrained_model_name_or_path": model,
        "system.prompt_processor.prompt": "a hamburger",
        "exp_root_dir": str(tmp_path / "outputs"),
        "trainer.max_steps": 1,
        "trainer.val_check_interval": 1,
        "checkpoint.every_n_train_steps": 1,
        "data.n_val_views": 1,
        "data.n_test_views": 1,
        "data.eval_width": 32,
        "data.eval_height": 32,
        "system.geometry.isosurface_resolution": 32,
        "system.exporter.texture_size": 64,
    }
    assert main(["--config", "dreamfusion-sd", "--train", "--profile", *[f"{k}={v}" for k, v in args.items()]]) == 0
    (trial,) = glob.glob(str(tmp_path / "outputs" / "dreamfusion-sd" / "*"))
    with open(os.path.join(trial, "profile.json")) as f:
        profile = json.load(f)

    spec = fullsize_spec("sd21-base")
    unet = lambda: UNet2DConditionModel.from_config(spec["unet"])(  # noqa: E731
        torch.empty(2, 4, 64, 64), torch.tensor([500, 500]), encoder_hidden_states=torch.empty(2, 77, 1024))
    encoder = lambda: AutoencoderKL.from_config(spec["vae"]).encoder(torch.empty(1, 3, 512, 512))  # noqa: E731
    assert profile["forward_flops"]["unet"] == meta_flops(unet) > 1e12  # ~1.6 TFLOP: the real UNet, twice
    assert profile["forward_flops"]["vae encode"] == meta_flops(encoder)
    assert profile["backward_flops"]["vae encode"] > profile["forward_flops"]["vae encode"]  # back to the render's pixels
    assert profile["backward_flops"].get("critic unet", 0) == 0 and profile["backward_flops"]["render"] > 0

    state = load_checkpoint(os.path.join(trial, "ckpts", "last.ckpt"))["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert glob.glob(os.path.join(trial, "save", "it1-export", "model.glb"))
