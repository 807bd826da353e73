"""Prompt processor: view directions, per-view embeddings, and the on-disk embedding cache."""

from __future__ import annotations

import math
import os

import pytest
import torch

from threestudio_like.guidance import prompt_processor as pp_module
from threestudio_like.guidance.models import load_diffusion_components
from threestudio_like.guidance.prompt_processor import (
    DIRECTION_NAMES,
    PromptProcessorOutput,
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


# --------------------------------------------------------------------------- Perp-Neg
def synthetic_output(**perp_neg) -> PromptProcessorOutput:
    """Random per-direction embeddings (no text encoder), rows in DIRECTION_NAMES order."""
    g = torch.Generator().manual_seed(0)
    vd = torch.randn(4, 77, 8, generator=g)
    uncond = torch.randn(1, 77, 8, generator=g)
    return PromptProcessorOutput(vd[:1], uncond, vd, uncond.expand(4, -1, -1), use_perp_neg=True, **perp_neg)


def test_perp_neg_weights_and_prompts_by_azimuth_match_the_formula():
    out = synthetic_output()
    side, front, back, overhead = (out.text_embeddings_vd[DIRECTION_NAMES.index(n)] for n in ("side", "front", "back", "overhead"))
    uncond = out.uncond_text_embeddings[0]
    f = lambda a, b, c, r: a * math.exp(-b * r) + c  # noqa: E731  threestudio's defaults below, by hand
    # (elevation, azimuth) -> (positive, negatives, weights)
    cases = [
        ((0.0, 0.0), front, (front, side), (-f(4, 0.5, -2.426, 1.0), -f(4, 0.5, -2.426, 0.0))),
        ((0.0, 45.0), 0.5 * front + 0.5 * side, (front, side), (-f(4, 0.5, -2.426, 0.5), -f(4, 0.5, -2.426, 0.5))),
        ((0.0, 90.0), side, (side, front), (-f(1, 0.5, -0.606, 1.0), -f(1, 0.5, 0.967, 1.0))),
        ((0.0, -90.0), side, (side, front), (-f(1, 0.5, -0.606, 1.0), -f(1, 0.5, 0.967, 1.0))),
        ((0.0, 180.0), back, (side, front), (-f(1, 0.5, -0.606, 0.0), -f(1, 0.5, 0.967, 0.0))),
        ((0.0, 540.0), back, (side, front), (-f(1, 0.5, -0.606, 0.0), -f(1, 0.5, 0.967, 0.0))),  # wraps to -180
        ((0.0, 135.0), 0.5 * side + 0.5 * back, (side, front), (-f(1, 0.5, -0.606, 0.5), -f(1, 0.5, 0.967, 0.5))),
        ((70.0, 180.0), overhead, (uncond, uncond), (0.0, 0.0)),  # overhead: plain CFG
    ]
    batch = len(cases)
    elevation = torch.tensor([e for (e, _), *_ in cases])
    azimuth = torch.tensor([a for (_, a), *_ in cases])
    embeddings, weights = out.get_text_embeddings_perp_neg(elevation, azimuth, torch.full((batch,), 2.0))
    assert embeddings.shape == (4 * batch, 77, 8) and weights.shape == (batch, 2)
    positive, unconditional, first, second = embeddings.view(4, batch, 77, 8)
    for i, (_, pos, (neg1, neg2), w) in enumerate(cases):
        torch.testing.assert_close(positive[i], pos)
        torch.testing.assert_close(unconditional[i], uncond)
        torch.testing.assert_close(first[i], neg1)
        torch.testing.assert_close(second[i], neg2)
        torch.testing.assert_close(weights[i], torch.tensor(w), atol=1e-6, rtol=1e-6)
    # the named values: the back view pushes hardest from the front (1.967), the front view from the side (1.574)
    torch.testing.assert_close(weights[4], torch.tensor([-0.394, -1.967]), atol=1e-6, rtol=0)
    assert weights[0, 0].abs() < 1e-3 and weights[0, 1] == pytest.approx(-1.574, abs=1e-6)


def test_perp_neg_config_is_accepted_and_its_coefficients_reach_the_output(model_path, tmp_path):
    from threestudio_like.config import ConfigError

    processor = make_processor(model_path, str(tmp_path), use_perp_neg=True, perp_neg_f_sb=[2, 1, 0])
    out = processor()
    assert out.use_perp_neg and tuple(out.perp_neg_f_sb) == (2.0, 1.0, 0.0)
    assert tuple(out.perp_neg_f_fsb) == (1.0, 0.5, 0.967)  # threestudio's defaults for the rest
    _, weights = out.get_text_embeddings_perp_neg(torch.zeros(1), torch.tensor([180.0]), torch.full((1,), 2.0))
    assert weights[0, 0].item() == pytest.approx(-(2 * math.exp(0) + 0))
    with pytest.raises(ConfigError, match="view-dependent prompting"):
        out.get_text_embeddings_perp_neg(torch.zeros(1), torch.zeros(1), torch.ones(1), view_dependent_prompting=False)
    with pytest.raises(ConfigError, match="perp_neg_f_fs"):
        make_processor(model_path, str(tmp_path), use_perp_neg=True, perp_neg_f_fs=[1, 2])
    assert not make_processor(model_path, str(tmp_path))().use_perp_neg


@pytest.mark.parametrize("prompt", ["", "   \t"])
def test_empty_prompt_is_refused_when_the_config_is_read(prompt):
    from threestudio_like.config import ConfigError
    from threestudio_like.experiment import validate_against

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


# --------------------------------------------------------------------------- host transfers (issue 31, 9)
def test_a_step_picks_its_embeddings_without_copies_between_host_and_device(monkeypatch):
    # before: every call copied elevation and azimuth to the host (a device sync on a GPU) and the
    # picked rows back to the device; now the tables go to the device once and the rows are picked there
    out = synthetic_output()
    elevation, azimuth, distance = torch.tensor([0.0, 70.0, 10.0]), torch.tensor([0.0, 180.0, 100.0]), torch.full((3,), 2.0)
    first = out.get_text_embeddings(elevation, azimuth, distance)  # the one copy of the tables
    first_perp_neg = out.get_text_embeddings_perp_neg(elevation, azimuth, distance)
    calls = []
    for name in ("cpu", "to", "item", "tolist", "__bool__", "__float__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    again = out.get_text_embeddings(elevation, azimuth, distance)
    again_perp_neg = out.get_text_embeddings_perp_neg(elevation, azimuth, distance)
    plain = out.get_text_embeddings(elevation, azimuth, distance, view_dependent_prompting=False)
    assert calls == []
    monkeypatch.undo()
    assert torch.equal(again, first) and all(torch.equal(a, b) for a, b in zip(again_perp_neg, first_perp_neg))
    # the rows are the views' directions: front, overhead, side (then the negative prompt's rows)
    rows = [DIRECTION_NAMES.index(n) for n in ("front", "overhead", "side")]
    torch.testing.assert_close(again[:3], out.text_embeddings_vd[rows], rtol=0, atol=0)
    torch.testing.assert_close(plain[:3], out.text_embeddings.expand(3, -1, -1), rtol=0, atol=0)
