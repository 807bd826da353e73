"""The multi-view UNet, the multi-view camera groups and the multi-view guidance (MVDream)."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from threestudio_like.config import ConfigError
from threestudio_like.data.random_multiview import MultiviewCameraDataModule, MultiviewCameraSampler
from threestudio_like.guidance.models import clear_component_cache, load_diffusion_components
from threestudio_like.guidance.multiview import MultiviewDiffusionGuidance, rescale_to_group_std
from threestudio_like.guidance.multiview_unet import MultiViewAttnProcessor, MultiViewUNet2DConditionModel, mvdream_camera
from threestudio_like.guidance.prompt_processor import PromptProcessorOutput
from threestudio_like.priors.tiny import build_tiny_diffusion_model


@pytest.fixture(scope="module")
def multiview_model_dir(tmp_path_factory) -> str:
    return build_tiny_diffusion_model(str(tmp_path_factory.mktemp("mv") / "model"), sample_size=16, multiview=True)


@pytest.fixture(scope="module")
def unet(multiview_model_dir) -> MultiViewUNet2DConditionModel:
    model = load_diffusion_components(multiview_model_dir, text_encoder=False).unet
    assert isinstance(model, MultiViewUNet2DConditionModel)
    return model


def _inputs(views: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(views, 3, 16, 16, generator=g), torch.randn(views, 8, 32, generator=g), torch.randn(views, 16, generator=g)


@torch.no_grad()
def test_one_view_changes_its_group_only(unet) -> None:
    x, text, camera = _inputs(8)
    before = unet(x, 500, encoder_hidden_states=text, camera=camera, num_frames=4).sample
    x[1] += 0.5  # a view of the first group
    after = unet(x, 500, encoder_hidden_states=text, camera=camera, num_frames=4).sample
    change = (after - before).flatten(1).abs().amax(dim=1)
    assert change[1] > 1e-2
    assert (change[[0, 2, 3]] > 1e-5).all(), "3D self-attention: the other views of the group see the change"
    assert (change[4:] == 0).all(), "another group is untouched"


@torch.no_grad()
def test_one_frame_without_camera_is_the_2d_unet(unet) -> None:
    from diffusers import UNet2DConditionModel

    config = {**unet.config, "class_embed_type": None, "projection_class_embeddings_input_dim": None}
    plain = UNet2DConditionModel.from_config(config)
    missing, unexpected = plain.load_state_dict(unet.state_dict(), strict=False)
    assert not missing and all(k.startswith("class_embedding.") for k in unexpected)
    x, text, _ = _inputs(4)
    assert torch.equal(unet(x, 300, encoder_hidden_states=text).sample, plain(x, 300, encoder_hidden_states=text).sample)


@torch.no_grad()
def test_camera_changes_the_output_and_round_trips(unet, tmp_path) -> None:
    x, text, camera = _inputs(4)
    with_camera = unet(x, 300, encoder_hidden_states=text, camera=camera, num_frames=4).sample
    other_camera = unet(x, 300, encoder_hidden_states=text, camera=camera.flip(0), num_frames=4).sample
    assert (with_camera - other_camera).abs().max() > 1e-3
    unet.save_pretrained(str(tmp_path / "unet"))
    again = MultiViewUNet2DConditionModel.from_pretrained(str(tmp_path / "unet"))
    assert torch.equal(again(x, 300, encoder_hidden_states=text, camera=camera, num_frames=4).sample, with_camera)


def test_from_2d_starts_as_the_2d_model(tiny_model_dir) -> None:
    plain = load_diffusion_components(tiny_model_dir, text_encoder=False).unet
    multiview = MultiViewUNet2DConditionModel.from_2d(plain)
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 8, 32, generator=g)
    with torch.no_grad():
        # zero camera embedding and one frame: exactly the 2D model
        assert torch.equal(multiview(x, 10, encoder_hidden_states=text, camera=torch.randn(4, 16)).sample,
                           plain(x, 10, encoder_hidden_states=text).sample)


def test_bad_groups_and_cameras_are_clear_errors(unet) -> None:
    x, text, camera = _inputs(6)
    with pytest.raises(ValueError, match="whole groups of num_frames=4"):
        unet(x, 1, encoder_hidden_states=text, camera=camera, num_frames=4)
    with pytest.raises(ValueError, match="camera must be"):
        unet(x, 1, encoder_hidden_states=text, camera=camera[:, :12], num_frames=2)


def test_mvdream_camera_normalises_translation() -> None:
    sampler = MultiviewCameraSampler({"n_view": 4, "batch_size": 4, "height": 8, "width": 8}, seed=0)
    c2w = sampler.sample(0)["c2w"]
    camera = mvdream_camera(c2w).view(-1, 4, 4)
    assert torch.allclose(camera[:, :3, 3].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.equal(camera[:, :3, :3], c2w[:, :3, :3])


# --------------------------------------------------------------------------- camera groups
MULTIVIEW = {"n_view": 4, "batch_size": [8, 4], "resolution_milestones": [3], "height": [16, 32], "width": [16, 32],
             "camera_distance_range": [0.8, 1.0], "fovy_range": [15, 60], "elevation_range": [0, 30],
             "camera_perturb": 0.0, "center_perturb": 0.0, "up_perturb": 0.0}


def test_groups_share_elevation_distance_fovy_and_are_90_degrees_apart() -> None:
    sampler = MultiviewCameraSampler(MULTIVIEW, seed=3)
    batch = sampler.sample(0)
    assert batch["rays_o"].shape == (8, 16, 16, 3)
    for key in ("elevation", "camera_distances", "fovy"):
        groups = batch[key].view(2, 4)
        assert torch.equal(groups, groups[:, :1].expand(2, 4)), key
    assert not torch.equal(batch["elevation"][0], batch["elevation"][4])
    gaps = torch.remainder(batch["azimuth"].view(2, 4).diff(dim=1), 360.0)
    assert torch.allclose(gaps, torch.full_like(gaps, 90.0), atol=1e-4)
    # relative radius: distance = relative / tan(fovy / 2), relative within [0.8, 1.0]
    relative = batch["camera_distances"] * torch.tan(torch.deg2rad(batch["fovy"]) / 2)
    assert ((relative >= 0.8 - 1e-5) & (relative <= 1.0 + 1e-5)).all()
    later = sampler.sample(5)
    assert later["rays_o"].shape == (4, 32, 32, 3)
    assert torch.equal(sampler.sample(5)["c2w"], later["c2w"]), "a pure function of (seed, step)"


def test_batch_size_must_be_whole_groups() -> None:
    with pytest.raises(ConfigError, match="multiple of data.n_view=4"):
        MultiviewCameraDataModule({**MULTIVIEW, "batch_size": [8, 6]})


# --------------------------------------------------------------------------- guidance
def test_rescale_to_group_std() -> None:
    g = torch.Generator().manual_seed(0)
    x0, reference = torch.randn(8, 3, 4, 4, generator=g) * 3.0, torch.randn(8, 3, 4, 4, generator=g)
    full = rescale_to_group_std(x0, reference, 4, 1.0)
    for group in range(2):
        views = slice(4 * group, 4 * group + 4)
        assert torch.allclose(full[views].std(), reference[views].std(), atol=1e-5)
    assert torch.equal(rescale_to_group_std(x0, reference, 4, 0.0), x0)
    half = rescale_to_group_std(x0, reference, 4, 0.5)
    assert torch.allclose(half, 0.5 * full + 0.5 * x0)


class _Prompts(PromptProcessorOutput):
    use_perp_neg = False

    def __init__(self, views: int) -> None:  # only what the guidance asks for
        self.text = torch.randn(2 * views, 8, 32, generator=torch.Generator().manual_seed(5))

    def get_text_embeddings(self, elevation, azimuth, distances, view_dependent_prompting):
        assert not view_dependent_prompting
        return self.text


def _guidance(model_dir: str, **options) -> MultiviewDiffusionGuidance:
    cfg = {"pretrained_model_name_or_path": model_dir, "guidance_scale": 5.0, "n_view": 4, **options}
    return MultiviewDiffusionGuidance(OmegaConf.create(cfg))


def _camera_batch(views: int) -> dict:
    sampler = MultiviewCameraSampler({**MULTIVIEW, "batch_size": views, "height": 16, "width": 16, "resolution_milestones": []}, seed=1)
    batch = sampler.sample(0)
    return {k: batch[k] for k in ("elevation", "azimuth", "camera_distances", "c2w")}


def test_guidance_pulls_renders_to_the_reconstructed_x0(multiview_model_dir, monkeypatch) -> None:
    guidance = _guidance(multiview_model_dir, recon_std_rescale=0.0)
    seen: dict = {}
    unet = guidance.components.unet
    original = unet.forward

    def spy(sample, timestep, **kwargs):
        seen.update(kwargs, timestep=timestep)
        return original(sample, timestep, **kwargs)

    monkeypatch.setattr(unet, "forward", spy)
    rgb = torch.rand(8, 16, 16, 3, requires_grad=True)
    torch.manual_seed(0)
    out = guidance(rgb, _Prompts(8), **_camera_batch(8))
    out["loss_sds"].backward()
    assert seen["num_frames"] == 4 and seen["camera"].shape == (16, 16)
    assert torch.equal(seen["camera"][:8], seen["camera"][8:]), "the camera goes to both CFG halves"
    assert (seen["timestep"] == seen["timestep"][0]).all(), "one timestep for the whole step"
    # the loss is 0.5 |x - x0|^2 / B: its gradient in model space is (x - x0) / B, pulling x to x0
    assert out["loss_sds"] > 0 and rgb.grad.abs().sum() > 0
    assert torch.isclose(out["grad_norm"] ** 2 / 2 / 8, out["loss_sds"].detach(), rtol=1e-4)


def test_guidance_refuses_partial_groups_and_2d_models(multiview_model_dir, tiny_model_dir) -> None:
    guidance = _guidance(multiview_model_dir)
    with pytest.raises(ConfigError, match="whole groups of n_view=4"):
        six_views = {k: torch.cat([v, v[:2]]) for k, v in _camera_batch(4).items()}  # one group and a half
        guidance(torch.rand(6, 16, 16, 3), _Prompts(6), **six_views)
    with pytest.raises(ConfigError, match="single-view UNet"):
        _guidance(tiny_model_dir)
    with pytest.raises(ConfigError, match="needs a multi-view model"):
        MultiviewDiffusionGuidance(OmegaConf.create({}))


def test_attention_slicing_keeps_the_views_attending_to_each_other(multiview_model_dir, unet) -> None:
    from diffusers.models.attention_processor import SlicedAttnProcessor

    x, text, camera = _inputs(8)
    with torch.no_grad():
        expected = unet(x, 500, encoder_hidden_states=text, camera=camera, num_frames=4).sample
    clear_component_cache()  # the guidance gets a UNet of its own, not the one the other tests share
    try:
        sliced = _guidance(multiview_model_dir, enable_attention_slicing=True).components.unet
        assert sliced is not unet
        processors = list(sliced.attn_processors.values())
        # slicing is on, inside the multi-view processor
        assert processors and all(
            isinstance(p, MultiViewAttnProcessor) and isinstance(p.inner, SlicedAttnProcessor) for p in processors
        )
        with torch.no_grad():
            out = sliced(x, 500, encoder_hidden_states=text, camera=camera, num_frames=4).sample
            x[1] += 0.5  # a view of the first group
            after = sliced(x, 500, encoder_hidden_states=text, camera=camera, num_frames=4).sample
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)  # what it computed without the option
        change = (after - out).flatten(1).abs().amax(dim=1)
        assert (change[[0, 2, 3]] > 1e-5).all(), "3D self-attention: the other views of the group see the change"
        assert (change[4:] == 0).all()
    finally:
        clear_component_cache()


def test_xformers_attention_is_kept_inside_the_multiview_processor(multiview_model_dir, unet, monkeypatch) -> None:
    from diffusers.models.attention_processor import Attention, AttnProcessor

    # what diffusers' xformers switch does to each Attention (xformers itself needs CUDA): a plain processor
    monkeypatch.setattr(Attention, "set_use_memory_efficient_attention_xformers", lambda self, valid, op=None: self.set_processor(AttnProcessor()))
    x, text, camera = _inputs(8)
    fresh = MultiViewUNet2DConditionModel.from_pretrained(multiview_model_dir, subfolder="unet")
    fresh.enable_xformers_memory_efficient_attention()
    processors = list(fresh.attn_processors.values())
    assert processors and all(isinstance(p, MultiViewAttnProcessor) and isinstance(p.inner, AttnProcessor) for p in processors)
    with torch.no_grad():
        expected = unet(x, 500, encoder_hidden_states=text, camera=camera, num_frames=4).sample
        out = fresh(x, 500, encoder_hidden_states=text, camera=camera, num_frames=4).sample
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_the_extensions_ckpt_path_names_the_model_without_rewriting_the_config(multiview_model_dir) -> None:
    guidance = MultiviewDiffusionGuidance({"ckpt_path": multiview_model_dir})
    assert guidance.cfg.pretrained_model_name_or_path is None
    assert guidance.diffusion.name_or_path == multiview_model_dir
