"""MVDream through the CLI: the extension's two configs on a tiny latent multi-view model, with
only the model paths, run lengths and image sizes changed."""

from __future__ import annotations

import os

import pytest
from export_checks import assert_export_is_the_object
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


@pytest.mark.slow  # one mvdream-cpu run on builtin:shapes32-mv (about 3 minutes), judged from 12 azimuths by the view head
@pytest.mark.parametrize("prompt", ["a blue mug", "a red house"])
def test_mvdream_cpu_keeps_the_front_on_one_side(tmp_path, capsys, prompt: str) -> None:
    from lab.comparison import ensure_trial
    from lab.janus import evaluate_janus_trial, parse_variant
    from lab.priors.classifier import load_classifier
    from lab.priors.view_head import load_view_head
    from threestudio_like.guidance.models import resolve_model_path

    variant = parse_variant("mvdream-cpu")
    # the recipe's 400 steps: the house's door comes with the low timesteps, after step 200
    trial = ensure_trial(variant, prompt, 0, None, str(tmp_path), extra=[])
    assert_export_is_the_object(trial, capsys.readouterr().out)  # the object, not the haze around it
    prior = resolve_model_path("builtin:shapes32")  # the evaluator's classifier and view head
    result = evaluate_janus_trial(trial, variant.name, 0, load_classifier(prior), load_view_head(prior))
    janus = result.janus
    print(f"mvdream-cpu {prompt!r}: Janus rate {janus.rate:.2f}, seen as front {janus.front_share:.2f}, "
          + " ".join(f"{a:g}:{s}" for a, s in zip(janus.azimuths, janus.seen)))
    assert result.score.shape == janus.shape, result.score
    # a Janus object shows its front from every side (rate 0.75, front 1.0); single-view SDS scores
    # 0.42 on the house and 0.58 on the mug (README); this one keeps the front on one side: no
    # wrong view was measured on seed 0 (README), one is allowed for a machine whose floats differ
    assert janus.rate <= 1 / 12, janus
    assert 0 < janus.front_share <= 4 / 12, janus
