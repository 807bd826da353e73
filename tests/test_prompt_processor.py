"""Prompt processor: view directions, per-view embeddings, and the on-disk embedding cache."""

from __future__ import annotations

import os

import pytest
import torch

from threestudio_like.guidance import prompt_processor as pp_module
from threestudio_like.guidance.models import load_diffusion_components
from threestudio_like.guidance.prompt_processor import (
    DIRECTION_NAMES,
    StableDiffusionPromptProcessor,
    ViewThresholds,
    view_direction_index,
)
from threestudio_like.priors.tiny import build_tiny_diffusion_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return build_tiny_diffusion_model(str(tmp_path_factory.mktemp("tiny") / "model"))


def make_processor(model_path: str, cache_dir: str, **overrides) -> StableDiffusionPromptProcessor:
    cfg = {"pretrained_model_name_or_path": model_path, "prompt": "a red cube", "cache_dir": cache_dir, **overrides}
    return StableDiffusionPromptProcessor(cfg)


def reference_embedding(model_path: str, prompt: str) -> torch.Tensor:
    """Last hidden state of the text encoder for ``prompt`` padded to 77 tokens, computed directly."""
    parts = load_diffusion_components(model_path, "cpu", unet=False)
    ids = parts.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return parts.text_encoder(ids).last_hidden_state[0]


def test_view_direction_rules():
    cases = {  # (elevation, azimuth) -> direction
        (0.0, 0.0): "front",
        (0.0, 44.0): "front",
        (0.0, -44.0): "front",
        (0.0, 320.0): "front",  # wraps to -40
        (0.0, 90.0): "side",
        (0.0, -90.0): "side",
        (0.0, 135.0): "side",  # the back starts strictly beyond 180 - 45
        (0.0, 136.0): "back",
        (0.0, 180.0): "back",
        (0.0, -170.0): "back",
        (0.0, 200.0): "back",  # wraps to -160
        (59.0, 90.0): "side",
        (61.0, 90.0): "overhead",
        (70.0, 0.0): "overhead",  # overhead wins over front
        (70.0, 180.0): "overhead",
    }
    elevation = torch.tensor([e for e, _ in cases])
    azimuth = torch.tensor([a for _, a in cases])
    names = [DIRECTION_NAMES[i] for i in view_direction_index(elevation, azimuth, ViewThresholds())]
    assert names == list(cases.values())

    wide_front = ViewThresholds(front=100.0, back=30.0, overhead=80.0)
    index = view_direction_index(torch.tensor([70.0, 0.0]), torch.tensor([95.0, 160.0]), wide_front)
    assert [DIRECTION_NAMES[i] for i in index] == ["front", "back"]


def test_view_prompts_and_overrides(model_path, tmp_path):
    processor = make_processor(model_path, str(tmp_path), prompt_back="the back of a red cube")
    assert processor.prompts_vd == (
        "a red cube, side view",
        "a red cube, front view",
        "the back of a red cube",
        "a red cube, overhead view",
    )


def test_embeddings_match_text_encoder_and_views_select_rows(model_path, tmp_path):
    processor = make_processor(model_path, str(tmp_path), negative_prompt="blurry")
    out = processor()
    assert out.text_embeddings.shape == (1, 77, 32)
    assert out.text_embeddings_vd.shape == (4, 77, 32)
    torch.testing.assert_close(out.text_embeddings[0], reference_embedding(model_path, "a red cube"))
    torch.testing.assert_close(out.uncond_text_embeddings[0], reference_embedding(model_path, "blurry"))
    torch.testing.assert_close(out.text_embeddings_vd[1], reference_embedding(model_path, "a red cube, front view"))

    # views: front, back, overhead, side
    elevation = torch.tensor([0.0, 0.0, 80.0, 10.0])
    azimuth = torch.tensor([10.0, -175.0, 0.0, 90.0])
    emb = out.get_text_embeddings(elevation, azimuth, torch.full((4,), 2.0))
    assert emb.shape == (8, 77, 32)
    expected_rows = [DIRECTION_NAMES.index(n) for n in ("front", "back", "overhead", "side")]
    torch.testing.assert_close(emb[:4], out.text_embeddings_vd[expected_rows])
    for row in emb[4:]:  # negative prompt, the same for every view
        torch.testing.assert_close(row, out.uncond_text_embeddings[0])
    assert not torch.allclose(out.text_embeddings_vd[1], out.text_embeddings_vd[2])

    plain = out.get_text_embeddings(elevation, azimuth, torch.full((4,), 2.0), view_dependent_prompting=False)
    torch.testing.assert_close(plain[:4], out.text_embeddings.expand(4, -1, -1))
    torch.testing.assert_close(plain[4:], out.uncond_text_embeddings.expand(4, -1, -1))


def test_cache_is_reused_without_loading_the_text_encoder(model_path, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first = make_processor(model_path, cache)()
    # prompt, negative prompt "" and four view prompts
    assert len([f for f in os.listdir(cache) if f.endswith(".safetensors")]) == 6

    def no_loading(*args, **kwargs):
        raise AssertionError("the text encoder was loaded although every embedding is cached")

    monkeypatch.setattr(pp_module, "load_diffusion_components", no_loading)
    second = make_processor(model_path, cache)()
    assert torch.equal(first.text_embeddings, second.text_embeddings)
    assert torch.equal(first.text_embeddings_vd, second.text_embeddings_vd)
    assert torch.equal(first.uncond_text_embeddings_vd, second.uncond_text_embeddings_vd)

    with pytest.raises(AssertionError, match="text encoder was loaded"):
        make_processor(model_path, cache, use_cache=False)


def test_only_missing_prompts_are_encoded(model_path, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    make_processor(model_path, cache)
    encoded: list[str] = []
    original = StableDiffusionPromptProcessor._encode

    def counting(self, prompts):
        encoded.extend(prompts)
        return original(self, prompts)

    monkeypatch.setattr(StableDiffusionPromptProcessor, "_encode", counting)
    out = make_processor(model_path, cache, prompt="a blue sphere")()
    # the empty negative prompt came from the cache
    assert sorted(encoded) == sorted(["a blue sphere"] + [f"a blue sphere, {d} view" for d in DIRECTION_NAMES])
    overhead = reference_embedding(model_path, "a blue sphere, overhead view")
    torch.testing.assert_close(out.text_embeddings_vd[3], overhead)


def test_perp_neg_is_refused_clearly(model_path, tmp_path):
    from threestudio_like.config import ConfigError

    with pytest.raises(ConfigError, match="use_perp_neg"):
        make_processor(model_path, str(tmp_path), use_perp_neg=True)


@pytest.mark.parametrize("prompt", ["", "   \t"])
def test_empty_prompt_is_refused_when_the_config_is_read(prompt):
    from threestudio_like.config import ConfigError, validate_against

    with pytest.raises(ConfigError, match="prompt is empty"):
        validate_against(StableDiffusionPromptProcessor.Config, {"prompt": prompt}, "system.prompt_processor")


def test_unknown_words_warn_and_list_the_vocabulary(tiny_model_dir, tmp_path):
    import json
    import shutil
    import warnings

    from threestudio_like.guidance.prompt_processor import StableDiffusionPromptProcessor

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "known_words.json").write_text(json.dumps(["a", "red", "cube", "view", "front"]))
    cfg = {"pretrained_model_name_or_path": str(model), "prompt": "a red chair", "cache_dir": str(tmp_path / "c")}
    with pytest.warns(UserWarning, match=r"never saw the word\(s\) chair.*It knows: a, cube, front, red, view"):
        StableDiffusionPromptProcessor(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StableDiffusionPromptProcessor({**cfg, "prompt": "a red cube"})  # known words: no warning
