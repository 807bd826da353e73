"""``--profile``: one step's FLOPs by phase agree with a direct count, and the critic's backward is its own."""

from __future__ import annotations

import glob
import json
import os

import torch
from torch.utils.flop_counter import FlopCounterMode

from threestudio_like.cli import main
from threestudio_like.guidance.models import load_diffusion_components
from threestudio_like.profiling import flops_by_phase

TINY = {  # the built-in prior's recipes, a few seconds a run
    "system.prompt_processor.prompt": "a red cube",
    "data.batch_size": 2,
    "data.n_val_views": 1,
    "data.n_test_views": 1,
    "data.eval_width": 16,
    "data.eval_height": 16,
    "system.geometry.isosurface_resolution": 16,
    "system.renderer.num_samples_per_ray": 16,
    "trainer.max_steps": 3,
    "trainer.val_check_interval": 3,
    "checkpoint.every_n_train_steps": 3,
    "system.exporter.texture_size": 64,
}


def profile_of(recipe: str, tmp_path, **extra: object) -> dict:
    args = [f"{k}={v}" for k, v in {**TINY, "exp_root_dir": str(tmp_path), **extra}.items()]
    assert main(["--config", recipe, "--train", "--profile", *args]) == 0
    (path,) = glob.glob(os.path.join(str(tmp_path), recipe, "*", "profile.json"))
    with open(path) as f:
        return json.load(f)


def test_flops_by_phase_counts_each_network_once() -> None:
    counts = {
        "Global": {"mm": 103},
        "UNet2DConditionModel": {"conv": 60},
        "UNet2DConditionModel.down_blocks.0": {"conv": 30},
        "AutoencoderKL.encoder": {"conv": 20},
        "AutoencoderKL.encoder.down_blocks.0": {"conv": 5},
        "AutoencoderKL.decoder": {"conv": 7},
        "Decoder": {"conv": 3},  # vae.decode(): the half without the VAE's forward
        "Decoder.up_blocks.0": {"conv": 1},
        "System.geometry": {"mm": 13},
    }
    assert flops_by_phase(counts) == {"unet": 60, "vae encode": 20, "vae decode": 10, "render": 13}


def test_sds_step_counts_the_unet_as_a_direct_call_does(tmp_path) -> None:
    profile = profile_of("dreamfusion-cpu", tmp_path)
    # SDS: one UNet call on 2 x batch (classifier-free guidance), no backward through the UNet
    parts = load_diffusion_components("builtin:shapes32", text_encoder=True)
    size = parts.unet.config.sample_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        parts.unet(torch.zeros(4, parts.unet.config.in_channels, size, size), torch.tensor([500] * 4),
                   encoder_hidden_states=torch.zeros(4, parts.tokenizer.model_max_length, parts.text_encoder.config.hidden_size))
    assert profile["forward_flops"]["unet"] == counter.get_total_flops()
    assert profile["backward_flops"]["critic unet"] == 0 and "unet" not in profile["backward_flops"]
    assert profile["forward_flops"]["render"] > 0 and profile["backward_flops"]["render"] > 0
    assert profile["total_flops"] == sum(profile["forward_flops"].values()) + sum(profile["backward_flops"].values())
    assert profile["timed_steps"] == 2 and profile["seconds_per_step"] > 0
    assert profile["peak_host_memory_bytes"] > 100 * 2**20 and profile["peak_device_memory_bytes"] is None


def test_vsd_step_reports_the_critics_backward_apart(tmp_path) -> None:
    profile = profile_of("prolificdreamer-cpu", tmp_path)
    critic, render = profile["backward_flops"]["critic unet"], profile["backward_flops"]["render"]
    # the LoRA critic's backward runs through most of a UNet forward's work; the render's is the MLPs'
    assert 0.3 * profile["forward_flops"]["unet"] / 3 < critic < profile["forward_flops"]["unet"]
    assert 0 < render < critic


def test_attention_on_the_cpu_counts_as_on_other_devices() -> None:
    query = torch.randn(2, 5, 256, 64)
    counts = []
    for q in (query, query.to("meta")):  # the CPU kernel, and the matrix products it stands for
        with FlopCounterMode(display=False) as counter:
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 4 * 2 * 5 * 256 * 256 * 64
