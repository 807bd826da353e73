"""The VSD guidance on tiny models built in the test: the pretrained score is the frozen model's,
only the critic learns, the critic fits renders, and VSD starts from an exactly zero push."""

from __future__ import annotations

import pytest
import torch

from threestudio_like.config import ConfigError
from threestudio_like.guidance.models import load_diffusion_components
from threestudio_like.guidance.prompt_processor import StableDiffusionPromptProcessor
from threestudio_like.guidance.vsd import StableDiffusionVSDGuidance
from threestudio_like.priors.tiny import build_tiny_diffusion_model

BATCH = 2


def camera_batch(batch: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(batch, 1, 1)
    c2w[:, :3, 3] = torch.randn(batch, 3, generator=generator)
    return {
        "elevation": torch.rand(batch, generator=generator) * 40,
        "azimuth": torch.rand(batch, generator=generator) * 360 - 180,
        "camera_distances": torch.full((batch,), 1.5),
        "c2w": c2w,
        "mvp_mtx": torch.randn(batch, 4, 4, generator=generator),
    }


@pytest.fixture(scope="module")
def prompt_utils(tiny_model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("prompt-cache")
    cfg = {"pretrained_model_name_or_path": tiny_model_dir, "prompt": "a red cube", "cache_dir": str(cache)}
    return StableDiffusionPromptProcessor(cfg)()


def vsd(model_dir: str, **cfg) -> StableDiffusionVSDGuidance:
    return StableDiffusionVSDGuidance({"pretrained_model_name_or_path": model_dir, **cfg})


def test_adapter_disabled_gives_the_frozen_unets_prediction_exactly(tiny_model_dir, prompt_utils):
    guidance = vsd(tiny_model_dir, guidance_scale=3.0)
    with torch.no_grad():  # make the adapter and camera embedding non-trivial
        for p in guidance.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    frozen = load_diffusion_components(tiny_model_dir, text_encoder=False).unet
    assert frozen is not guidance.components.unet  # the adapter went on a private copy
    batch = camera_batch()
    noisy = torch.randn(BATCH, 3, 32, 32)
    t = torch.tensor([100, 700])
    text = prompt_utils.get_text_embeddings(batch["elevation"], batch["azimuth"], batch["camera_distances"])
    with torch.no_grad():
        cond, uncond = frozen(torch.cat([noisy, noisy]), torch.cat([t, t]), encoder_hidden_states=text).sample.chunk(2)
    expected = cond + 2.0 * (cond - uncond)
    assert torch.equal(guidance.predict_noise(noisy, t, text), expected)
    # and the critic, adapter on, does differ
    camera = guidance.camera_condition(batch["c2w"], None)
    assert not torch.allclose(guidance.critic_noise(noisy, t, text[:BATCH], camera), cond, atol=1e-4)


def test_at_initialisation_the_vsd_gradient_is_exactly_zero(tiny_model_dir, prompt_utils):
    torch.manual_seed(0)
    guidance = vsd(tiny_model_dir, guidance_scale=1.0, guidance_scale_lora=1.0, view_dependent_prompting=False)
    rgb = torch.rand(BATCH, 32, 32, 3, requires_grad=True)
    out = guidance(rgb, prompt_utils, **camera_batch())
    assert out["grad_norm"] == 0.0
    out["loss_vsd"].backward()
    assert torch.count_nonzero(rgb.grad) == 0
    assert out["loss_lora"] > 0


def test_only_adapter_and_camera_embedding_train(tiny_model_dir, prompt_utils):
    torch.manual_seed(0)
    guidance = vsd(tiny_model_dir)
    unet = guidance.components.unet
    base_before = {k: v.clone() for k, v in unet.state_dict().items() if "lora_" not in k and "class_embedding" not in k}
    trainable = dict(guidance.named_parameters())
    assert trainable and all(k.startswith(("lora.", "camera_embedding.")) for k in trainable)
    assert set(guidance.state_dict()) == set(trainable)  # no base weight enters a checkpoint
    before = {k: v.clone() for k, v in trainable.items()}
    optimizer = torch.optim.AdamW(guidance.parameters(), lr=1e-2)
    rgb = torch.rand(BATCH, 32, 32, 3, requires_grad=True)
    for _ in range(3):
        out = guidance(rgb, prompt_utils, **camera_batch())
        optimizer.zero_grad()
        (out["loss_vsd"] + out["loss_lora"]).backward()
        optimizer.step()
    after = unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_before.items())
    assert all(not p.requires_grad for n, p in unet.named_parameters() if "lora_" not in n and "class_embedding" not in n)
    moved = {k for k, v in guidance.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("lora.") for k in moved) and any(k.startswith("camera_embedding.") for k in moved)


def test_the_critic_learns_a_fixed_set_of_renders(tiny_model_dir, prompt_utils):
    torch.manual_seed(0)
    guidance = vsd(tiny_model_dir, lora_rank=8)
    renders = torch.rand(2, 3, 1, 1).expand(2, 3, 16, 16) * 2 - 1  # two flat colours, model space
    batch = camera_batch(2)
    text = prompt_utils.get_text_embeddings(batch["elevation"], batch["azimuth"], batch["camera_distances"], False)[:2]
    camera = guidance.camera_condition(batch["c2w"], None)
    optimizer = torch.optim.Adam(guidance.parameters(), lr=1e-2)

    def mean_loss(n: int = 8) -> float:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            return sum(float(guidance.critic_loss(renders, text, camera)) for _ in range(n)) / n

    start = mean_loss()
    for _ in range(150):
        optimizer.zero_grad()
        guidance.critic_loss(renders, text, camera).backward()
        optimizer.step()
    end = mean_loss()
    print(f"critic loss on fixed renders: {start:.4f} -> {end:.4f} after 150 steps")
    assert end < 0.5 * start, (start, end)


def test_v_prediction_critic_model_and_mvp_condition(tiny_model_dir, prompt_utils, tmp_path):
    import json
    import os

    critic_dir = build_tiny_diffusion_model(str(tmp_path / "critic"), seed=5)
    config_path = os.path.join(critic_dir, "scheduler", "scheduler_config.json")
    config = json.load(open(config_path))
    json.dump({**config, "prediction_type": "v_prediction"}, open(config_path, "w"))
    guidance = vsd(tiny_model_dir, pretrained_model_name_or_path_lora=critic_dir, camera_condition_type="mvp")
    assert guidance.critic_prediction_type == "v_prediction"
    assert guidance.critic_unet is not guidance.components.unet
    assert guidance.components.unet.class_embedding is None  # the guided model is left as it is
    rgb = torch.rand(BATCH, 32, 32, 3, requires_grad=True)
    batch = camera_batch()
    out = guidance(rgb, prompt_utils, **batch)
    out["loss_vsd"].backward()
    assert torch.isfinite(out["loss_lora"]) and rgb.grad.abs().sum() > 0
    # the mvp matrix is what the critic sees
    assert torch.equal(guidance.camera_condition(batch["c2w"], batch["mvp_mtx"]), batch["mvp_mtx"].reshape(BATCH, 16))
    with pytest.raises(ValueError, match=r"\*\*batch"):
        guidance(rgb, prompt_utils, batch["elevation"], batch["azimuth"], batch["camera_distances"])


def test_a_critic_of_another_latent_space_is_refused(tiny_model_dir, tmp_path):
    other = build_tiny_diffusion_model(str(tmp_path / "latent"), sample_size=8, with_vae=True)
    with pytest.raises(ConfigError, match="in_channels"):
        vsd(tiny_model_dir, pretrained_model_name_or_path_lora=other)
