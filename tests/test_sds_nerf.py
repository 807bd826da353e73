"""SDS moves a NeRF toward what the diffusion model wants.

The UNet is replaced by an oracle that always predicts the noise of a red image, so the
correct SDS gradient must turn every render red. This checks the gradient's sign and scale
through the whole recipe (cameras, renderer, material, guidance, loss weighting, optimiser)
without any trained model.
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch

from recipe_overrides import RECIPE, tiny_recipe
from threestudio_like.experiment import finalize_config, load_config
from threestudio_like.priors.tiny import TargetImageUNet
from threestudio_like.experiment import find_part

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RED = torch.tensor([0.9, 0.05, 0.05])


def build(tiny_model_dir: str, tmp: str, **extra: object):
    args = tiny_recipe(tiny_model_dir, tmp, **{"system.guidance.guidance_scale": 7.5, **extra})
    exp = finalize_config(load_config(os.path.join(ROOT, RECIPE), cli_args=args))
    pl.seed_everything(0, verbose=False)
    system = find_part(exp.system_type)(exp.system, save_dir=os.path.join(tmp, "save"))
    datamodule = find_part(exp.data_type)(exp.data, seed=0)
    guidance = system.guidance
    guidance.components.unet = TargetImageUNet(RED, guidance.components.scheduler, sample_size=32)
    return system, datamodule


def mean_foreground_colour(system, datamodule) -> torch.Tensor:
    system.eval()
    datamodule.setup()
    colours, weights = [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            out = system.renderer(**batch, shading="albedo")  # the learned colour, not the lighting
            opacity = out["opacity"]
            colours.append((out["comp_rgb_fg"]).reshape(-1, 3).sum(0))
            weights.append(opacity.sum())
    return torch.stack(colours).sum(0) / torch.stack(weights).sum()


def test_sds_with_red_oracle_turns_nerf_red(tiny_model_dir, tmp_path):
    system, datamodule = build(
        tiny_model_dir, str(tmp_path), **{"data.n_val_views": 4, "system.material.ambient_only_steps": 100000}
    )
    before = mean_foreground_colour(system, datamodule)
    trainer = pl.Trainer(
        max_steps=100, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(system, datamodule=datamodule)
    after = mean_foreground_colour(system, datamodule)
    # starts grey-ish (sigmoid of ~0 features), ends red
    assert abs(before[0] - before[1]) < 0.2, before
    assert after[0] > 0.6 and after[1] < 0.25 and after[2] < 0.25, after
