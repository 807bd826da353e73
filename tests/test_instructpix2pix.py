"""InstructPix2Pix editing (``stable-diffusion-instructpix2pix-guidance``) on tiny models built here,
checked against diffusers' ``StableDiffusionInstructPix2PixPipeline``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from threestudio_like.config import ConfigError
from threestudio_like.guidance.instructpix2pix import InstructPix2PixGuidance, edit_timesteps, instruct_pix2pix_guidance
from threestudio_like.guidance.models import load_diffusion_components
from threestudio_like.priors.tiny import build_tiny_diffusion_model
from threestudio_like.experiment import find_part


@pytest.fixture(scope="module")
def latent_editor(tmp_path_factory) -> str:
    """A tiny InstructPix2Pix folder in the timbrooks/instruct-pix2pix layout (8-channel UNet, VAE)."""
    return build_tiny_diffusion_model(str(tmp_path_factory.mktemp("ip2p") / "latent"), sample_size=8, with_vae=True, image_condition=True)


@pytest.fixture(scope="module")
def pixel_editor(tmp_path_factory) -> str:
    return build_tiny_diffusion_model(str(tmp_path_factory.mktemp("ip2p") / "pixel"), sample_size=16, image_condition=True)


def prompt_utils_for(path: str, prompt: str = "make it blue"):
    return find_part("stable-diffusion-prompt-processor")({"pretrained_model_name_or_path": path, "prompt": prompt, "spawn": False})()


def pipeline_for(path: str):
    from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline

    parts = load_diffusion_components(path)
    return StableDiffusionInstructPix2PixPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=DDIMScheduler.from_config(parts.scheduler.config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def test_three_way_guidance_is_the_pipelines_formula() -> None:
    g = torch.Generator().manual_seed(0)
    text, image, uncond = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    # diffusers' pipeline: uncond + s_text (text - image) + s_image (image - uncond), chunks in this order
    expected = uncond + 7.5 * (text - image) + 1.5 * (image - uncond)
    assert torch.allclose(instruct_pix2pix_guidance(text, image, uncond, 7.5, 1.5), expected)
    assert torch.allclose(instruct_pix2pix_guidance(text, image, uncond, 1.0, 1.0), text, atol=1e-6)  # both scales 1: plain conditional


def test_edit_matches_the_diffusers_pipeline_step_for_step(latent_editor) -> None:
    """Same start latents, same timesteps: the guidance's DDIM edit ends where the pipeline's does."""
    pipe = pipeline_for(latent_editor)
    guidance = InstructPix2PixGuidance({"ip2p_name_or_path": latent_editor})
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    out = pipe("make it blue", image=image.permute(0, 3, 1, 2), num_inference_steps=4, guidance_scale=7.5,
               image_guidance_scale=1.5, latents=start.clone(), output_type="latent")
    condition = guidance.image_condition(image, guidance.edit_size(64, 64))
    # image-condition latents: the VAE posterior's mode, unscaled, as the pipeline prepares them
    pipeline_condition = pipe.prepare_image_latents(image.permute(0, 3, 1, 2) * 2 - 1, 1, 1, torch.float32, "cpu", False)
    assert torch.allclose(condition, pipeline_condition, atol=1e-6)
    text = guidance.three_way_text(prompt_utils_for(latent_editor), 1, torch.device("cpu"))
    ours = guidance.edit_latents(start, [int(t) for t in pipe.scheduler.timesteps], text, condition)
    assert torch.allclose(ours, out.images, atol=1e-4), (ours - out.images).abs().max()


class ConditionCopyUNet(torch.nn.Module):
    """An editor whose clean-image estimate is the image it is given (zero noise without one)."""

    def __init__(self, alphas_cumprod: torch.Tensor, size: int) -> None:
        super().__init__()
        self.alphas_cumprod = alphas_cumprod
        self.config = SimpleNamespace(sample_size=size, in_channels=6, out_channels=3)
        self.calls = 0

    dtype = torch.float32

    def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
        self.calls += 1
        x, image = sample[:, :3], sample[:, 3:]
        abar = self.alphas_cumprod[torch.as_tensor(timestep).reshape(-1)].view(-1, 1, 1, 1)
        eps = (x - abar.sqrt() * image) / (1 - abar).sqrt()
        has_image = image.flatten(1).abs().amax(1).view(-1, 1, 1, 1) > 0
        return SimpleNamespace(sample=torch.where(has_image, eps, torch.zeros_like(eps)))


def test_with_only_the_image_counting_the_edit_returns_the_original(pixel_editor) -> None:
    guidance = InstructPix2PixGuidance({"ip2p_name_or_path": pixel_editor, "guidance_scale": 0.0, "condition_scale": 1.0, "diffusion_steps": 5})
    copier = ConditionCopyUNet(guidance.components.scheduler.alphas_cumprod.float(), 16)
    guidance.components.unet = copier
    original = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    render = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    out = guidance(render, original, prompt_utils_for(pixel_editor), generator=torch.Generator().manual_seed(3))
    assert copier.calls == 5  # one batched call per DDIM step
    assert torch.allclose(out["edit_images"], original, atol=1e-4)
    # and the text half alone (scale 1, image 0) ignores the image: this copier then predicts no noise
    guidance.cfg.guidance_scale, guidance.cfg.condition_scale = 1.0, 0.0
    text_only = guidance(render, original, prompt_utils_for(pixel_editor), generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(text_only["edit_images"], original, atol=1e-2)


def test_edit_is_a_function_of_its_generator_and_stays_in_the_step_range(pixel_editor) -> None:
    guidance = InstructPix2PixGuidance({"ip2p_name_or_path": pixel_editor, "min_step_percent": 0.2, "max_step_percent": 0.3, "diffusion_steps": 3})
    render, original = torch.rand(1, 20, 24, 3), torch.rand(1, 20, 24, 3)
    prompt = prompt_utils_for(pixel_editor)
    a = guidance(render, original, prompt, generator=torch.Generator().manual_seed(5))
    b = guidance(render, original, prompt, generator=torch.Generator().manual_seed(5))
    c = guidance(render, original, prompt, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a["edit_images"], b["edit_images"]) and not torch.equal(a["edit_images"], c["edit_images"])
    assert a["edit_images"].shape == (1, 20, 24, 3)  # back at the render's size
    assert 200 <= a["timestep"] <= 300
    assert edit_timesteps(300, 3) == [300, 200, 100]


def test_sds_mode_gives_a_loss_with_gradient(pixel_editor) -> None:
    guidance = InstructPix2PixGuidance({"ip2p_name_or_path": pixel_editor, "use_sds": True})
    render = torch.rand(1, 16, 16, 3, requires_grad=True)
    out = guidance(render, torch.rand(1, 16, 16, 3), prompt_utils_for(pixel_editor))
    out["loss_sds"].backward()
    assert render.grad is not None and render.grad.abs().sum() > 0


def test_a_text_to_image_model_is_refused_with_the_fix(tmp_path) -> None:
    plain = build_tiny_diffusion_model(str(tmp_path / "plain"), sample_size=16)
    with pytest.raises(ConfigError, match="InstructPix2Pix model takes 6"):
        InstructPix2PixGuidance({"ip2p_name_or_path": plain})


def test_sds_mode_counts_and_reports_nonfinite_predictions_like_every_distillation(pixel_editor) -> None:
    class OverflowingUNet(ConditionCopyUNet):  # an fp16 overflow in one corner of the prediction
        def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
            out = super().forward(sample, timestep, encoder_hidden_states)
            out.sample[:, :, :2, :2] = torch.inf
            return out

    guidance = InstructPix2PixGuidance({"ip2p_name_or_path": pixel_editor, "use_sds": True})
    guidance.components.unet = OverflowingUNet(guidance.components.scheduler.alphas_cumprod.float(), 16)
    render = torch.rand(2, 16, 16, 3, requires_grad=True)
    with pytest.warns(UserWarning, match=r"NaN/inf in 24 of 1536 gradient entries"):
        out = guidance(render, torch.rand(2, 16, 16, 3), prompt_utils_for(pixel_editor))
    assert int(out["grad_nonfinite"]) == 2 * 3 * 2 * 2
    out["loss_sds"].backward()
    assert torch.isfinite(render.grad).all()


def test_the_config_is_left_as_given(tmp_path) -> None:
    """The editor's model and threestudio's channels-last key reach the frozen model, not the config."""
    editor = build_tiny_diffusion_model(str(tmp_path / "editor"), sample_size=8, image_condition=True)  # its own: channels-last changes the UNet
    guidance = InstructPix2PixGuidance({"ip2p_name_or_path": editor, "enable_channels_last_format": True})
    assert guidance.cfg.pretrained_model_name_or_path == InstructPix2PixGuidance.Config.pretrained_model_name_or_path
    assert guidance.cfg.enable_channels_last is False and guidance.diffusion.memory.channels_last
    assert guidance.diffusion.name_or_path == editor
