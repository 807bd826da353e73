"""Overrides that shrink the real recipes to seconds on a CPU with a tiny model."""

from __future__ import annotations

import os

from threestudio_like.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

RECIPE = "configs/dreamfusion-sd.yaml"


def tiny_recipe(model_dir: str, out_dir: str, **extra: object) -> list[str]:
    overrides = {
        "system.prompt_processor.pretrained_model_name_or_path": model_dir,
        "system.guidance.pretrained_model_name_or_path": model_dir,
        "system.prompt_processor.cache_dir": f"{out_dir}/cache",
        "system.prompt_processor.prompt": "a red cube",
        "exp_root_dir": f"{out_dir}/outputs",
        "use_timestamp": "false",
        "data.width": 16,
        "data.height": 16,
        "data.eval_width": 16,
        "data.eval_height": 16,
        "data.n_test_views": 4,
        "system.geometry.pos_encoding_config.n_levels": 4,
        "system.geometry.pos_encoding_config.log2_hashmap_size": 12,
        "system.geometry.pos_encoding_config.per_level_scale": 2.0,
        "system.geometry.isosurface_resolution": 24,
        "system.renderer.num_samples_per_ray": 24,
        "system.material.ambient_only_steps": 2,
        "trainer.max_steps": 4,
        "trainer.val_check_interval": 2,
        "checkpoint.every_n_train_steps": 2,
        "checkpoint.save_top_k": -1,
    }
    overrides.update(extra)
    return [f"{k}={v}" for k, v in overrides.items()]


def run_length(**extra: object) -> dict[str, object]:
    """How long to run and how much to render: a few steps, a small turntable, a small texture."""
    return {
        "trainer.max_steps": 2,
        "trainer.val_check_interval": 2,
        "trainer.num_sanity_val_steps": 0,
        "checkpoint.every_n_train_steps": 2,
        "data.n_val_views": 1,
        "data.n_test_views": 2,
        "data.eval_height": 64,
        "data.eval_width": 64,
        "system.exporter.texture_size": 64,
        "system.exporter.max_faces": 5000,
        **extra,
    }


def stage(config: str, model_dir: str, out: str, **extra: object) -> str:
    """Train one stage; returns its trial folder."""
    overrides = {
        "system.prompt_processor.pretrained_model_name_or_path": model_dir,
        "system.guidance.pretrained_model_name_or_path": model_dir,
        "system.prompt_processor.cache_dir": f"{out}/cache",
        "system.prompt_processor.prompt": "a red cube",
        "exp_root_dir": f"{out}/outputs",
        "use_timestamp": "false",
        **run_length(),
        **extra,
    }
    args = [f"{k}={v}" for k, v in overrides.items()]
    assert main(["--config", os.path.join(CONFIGS, config), "--train", *args]) == 0
    name = config[: -len(".yaml")]
    return os.path.join(out, "outputs", name, "a_red_cube")
