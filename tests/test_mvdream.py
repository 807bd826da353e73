"""MVDream through the CLI: the extension's two configs on a tiny latent multi-view model, with
only the model paths, run lengths and image sizes changed."""

from __future__ import annotations

import os

import pytest
from recipe_overrides import run_length, stage

from threestudio_like.priors.tiny import build_tiny_diffusion_model
from threestudio_like.trials import load_checkpoint


@pytest.fixture(scope="module")
def latent_multiview_model(tmp_path_factory) -> str:
    """A tiny multi-view UNet on 4 latent channels with a VAE (8x): MVDream's SD 2.1 layout in miniature."""
    return build_tiny_diffusion_model(str(tmp_path_factory.mktemp("mv") / "model"), sample_size=8, with_vae=True, multiview=True)


SMALL = {
    "data.batch_size": "[8,4]",
    "data.width": "[16,32]",
    "data.height": "[16,32]",
    "data.resolution_milestones": "[1]",  # both resolutions within the run
    "system.geometry.pos_encoding_config.n_levels": 4,
    "system.geometry.pos_encoding_config.log2_hashmap_size": 12,
    "system.geometry.isosurface_resolution": 24,
    "system.renderer.num_samples_per_ray": 24,
    "system.material.ambient_only_steps": 1,
}


@pytest.mark.slow  # two recipes through the CLI
@pytest.mark.parametrize("recipe", ["mvdream-sd21", "mvdream-sd21-shading"])
def test_extension_configs_run_with_only_models_and_sizes_changed(recipe, latent_multiview_model, tmp_path) -> None:
    extra = {**SMALL, "name": recipe, **run_length(**{"trainer.max_steps": 3, "checkpoint.every_n_train_steps": 3})}
    if recipe == "mvdream-sd21":
        extra.pop("system.material.ambient_only_steps")  # no-material has no shading phases
    trial = stage(f"{recipe}.yaml", latent_multiview_model, str(tmp_path), **extra)
    state = load_checkpoint(os.path.join(trial, "ckpts", "last.ckpt"))
    assert state["global_step"] == 3
    assert not any(k.startswith("guidance.") for k in state["state_dict"]), "frozen MVDream weights stay out"
    assert os.path.isfile(os.path.join(trial, "save", "it3-export", "model.obj"))
