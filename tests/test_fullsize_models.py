"""Full-size random-weight models (priors/fullsize.py) and the ldm layouts behind MVDream's checkpoint.

The full-size architectures are checked on the meta device (shapes, no memory) against the
parameter counts of the released weights; the same layouts at 1/8 width are built, loaded the way
guidance loads Stable Diffusion and run. Nothing full-size is written.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.bench_fullsize import row_overrides, rows
from threestudio_like.cli import main

from test_convert_mvdream import TINY_UNETS, RefMVDreamUNet, tiny_unet_params
from threestudio_like.guidance.convert_mvdream import RELEASED_CONFIGS, SCHEDULE_BUFFERS, load_checkpoint_state_dict
from threestudio_like.guidance.models import clear_component_cache, load_diffusion_components
from threestudio_like.guidance.multiview_unet import MultiViewUNet2DConditionModel
from threestudio_like.priors import fullsize
from threestudio_like.priors.fullsize import (
    MARKER,
    MODEL_NAMES,
    build_fullsize_models,
    clip_bpe_file,
    fullsize_spec,
    read_marker,
    write_clip_tokenizer,
)
from threestudio_like.priors.ldm_layout import ldm_schedule_buffers, ldm_unet_shapes, ldm_vae_shapes, open_clip_text_shapes

# Parameter counts of the released weights (published model cards / the safetensors files).
SD21_UNET, SD15_UNET, SD_VAE = 865_910_724, 859_520_964, 83_653_863
SD2_TEXT_ENCODER, CLIP_L_TEXT_ENCODER = 340_387_840, 123_060_480  # OpenCLIP ViT-H (23 layers), CLIP ViT-L/14


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shape_count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def meta_networks(spec: dict[str, Any]) -> dict[str, torch.nn.Module]:
    """The UNet, text encoder and VAE of a diffusers spec, on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(spec["unet"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**spec["text_encoder"])),
            "vae": AutoencoderKL.from_config(spec["vae"]),
        }


# --------------------------------------------------------------------------- (a) full-size architectures
def test_full_size_architectures_have_the_published_parameter_counts() -> None:
    from diffusers import UNet2DConditionModel

    sd21_base, sd21, ip2p = (meta_networks(fullsize_spec(n)) for n in ("sd21-base", "sd21", "instruct-pix2pix"))
    for nets in (sd21_base, sd21):
        assert [count(nets[k]) for k in ("unet", "text_encoder", "vae")] == [SD21_UNET, SD2_TEXT_ENCODER, SD_VAE]
    # InstructPix2Pix: SD 1.5's UNet with 4 more input channels (the image to edit) in conv_in
    with torch.device("meta"):
        sd15 = UNet2DConditionModel.from_config({**fullsize_spec("instruct-pix2pix")["unet"], "in_channels": 4})
    assert count(sd15) == SD15_UNET
    assert count(ip2p["unet"]) == SD15_UNET + 4 * 320 * 3 * 3
    assert [count(ip2p[k]) for k in ("text_encoder", "vae")] == [CLIP_L_TEXT_ENCODER, SD_VAE]
    # what distinguishes the three beyond the counts
    assert sd21_base["unet"].config.sample_size == 64 and not sd21_base["unet"].config.upcast_attention
    assert sd21["unet"].config.sample_size == 96 and sd21["unet"].config.upcast_attention
    assert (sd21_base["vae"].config.sample_size, sd21["vae"].config.sample_size) == (512, 768)
    assert sd21_base["text_encoder"].config.hidden_act == "gelu" and ip2p["text_encoder"].config.hidden_act == "quick_gelu"
    assert fullsize_spec("sd21")["scheduler"]["prediction_type"] == "v_prediction"


def test_mvdream_ldm_layout_has_the_released_sizes() -> None:
    """MVDream's checkpoint = SD 2.1's UNet + the camera MLP, SD's VAE, OpenCLIP ViT-H's whole text tower."""
    spec = fullsize_spec("mvdream-sd21-4view")
    params = spec["ldm"]["model"]["params"]
    released = RELEASED_CONFIGS["sd-v2.1-base-4view"]["model"]["params"]
    assert released["unet_config"]["params"].items() <= params["unet_config"]["params"].items()
    assert released["first_stage_config"]["params"]["ddconfig"] == params["first_stage_config"]["params"]["ddconfig"]
    with torch.device("meta"):
        camera_unet = MultiViewUNet2DConditionModel.from_config(
            {**fullsize_spec("sd21-base")["unet"], "class_embed_type": "projection", "projection_class_embeddings_input_dim": 16}
        )
    assert shape_count(ldm_unet_shapes(params["unet_config"]["params"])) == count(camera_unet) > SD21_UNET
    ddconfig = params["first_stage_config"]["params"]["ddconfig"]
    assert shape_count(ldm_vae_shapes(ddconfig["ch"], tuple(ddconfig["ch_mult"]), ddconfig["num_res_blocks"], ddconfig["z_channels"])) == SD_VAE
    # 24 layers; SD 2's diffusers text encoder keeps 23 and no projection / logit scale
    text = open_clip_text_shapes(**spec["text"])
    per_layer = shape_count(open_clip_text_shapes(layers=1)) - shape_count(open_clip_text_shapes(layers=0))
    assert shape_count(text) - per_layer - 1024 * 1024 - 1 == SD2_TEXT_ENCODER
    assert text["token_embedding.weight"] == (49408, 1024) and text["transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert text["transformer.resblocks.0.mlp.c_fc.weight"] == (4096, 1024) and text["text_projection"] == (1024, 1024)


# --------------------------------------------------------------------------- (c) ldm layout vs the reference
@pytest.mark.parametrize("params", [tiny_unet_params(k) for k in sorted(TINY_UNETS)] + [c["model"]["params"]["unet_config"]["params"] for c in RELEASED_CONFIGS.values()],
                         ids=[f"tiny-{k}" for k in sorted(TINY_UNETS)] + list(RELEASED_CONFIGS))
def test_ldm_unet_shapes_are_the_reference_unets(params: dict[str, Any]) -> None:
    with torch.device("meta"):
        reference = RefMVDreamUNet(params)
    assert ldm_unet_shapes(params) == {k: tuple(v.shape) for k, v in reference.state_dict().items()}


def test_schedule_buffers_are_ldms() -> None:
    buffers = ldm_schedule_buffers()
    assert tuple(buffers) == SCHEDULE_BUFFERS and all(b.dtype == torch.float32 and b.shape == (1000,) for b in buffers.values())
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    torch.testing.assert_close(buffers["alphas_cumprod"], scheduler.alphas_cumprod)
    torch.testing.assert_close(buffers["alphas_cumprod_prev"][1:], buffers["alphas_cumprod"][:-1])
    torch.testing.assert_close(buffers["sqrt_one_minus_alphas_cumprod"] ** 2, 1 - buffers["alphas_cumprod"])


# --------------------------------------------------------------------------- (b) reduced builds
@pytest.fixture(scope="module")
def reduced_models(tmp_path_factory) -> dict[str, str]:
    return build_fullsize_models(str(tmp_path_factory.mktemp("fullsize")), reduced=True)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_reduced_build_loads_and_runs(reduced_models, name: str) -> None:
    clear_component_cache()
    multiview = name.startswith("mvdream")
    parts = load_diffusion_components(reduced_models[name], text_encoder=not multiview)
    unet, full = parts.unet, fullsize_spec(name)
    batch = 4 if multiview else 2
    if multiview:
        assert isinstance(unet, MultiViewUNet2DConditionModel) and parts.text_encoder is None
        # the conditioning comes from the (reduced) sd21-base text encoder
        context = torch.randn(batch, 77, fullsize_spec("sd21-base", reduced=True)["text_encoder"]["hidden_size"])
        extra = {"camera": torch.randn(batch, 16), "num_frames": 4}
        assert unet.config.attention_head_dim == [8, 16, 32, 32]  # ldm's rule: width / num_head_channels
    else:
        # same layout as the release: block types, heads, tokenizer and vocabulary
        for key in ("down_block_types", "up_block_types", "attention_head_dim", "use_linear_projection", "in_channels", "sample_size"):
            assert unet.config[key] == full["unet"][key]
        text = parts.text_encoder.config
        assert (text.num_attention_heads, text.vocab_size, text.hidden_act) == (full["text_encoder"]["num_attention_heads"], 49408, full["text_encoder"]["hidden_act"])
        ids = parts.tokenizer(["a hamburger"] * batch, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            context = parts.text_encoder(ids).last_hidden_state
        assert torch.isfinite(context).all()
        extra = {}
    assert unet.config.cross_attention_dim == context.shape[-1]
    assert parts.scheduler.config.prediction_type == ("v_prediction" if name == "sd21" else "epsilon")
    assert not parts.scheduler.config.clip_sample
    x = torch.randn(batch, unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = unet(x, torch.tensor([500]), encoder_hidden_states=context, **extra).sample
        assert out.shape == (batch, 4, 16, 16) and torch.isfinite(out).all() and out.abs().mean() > 0.05
        latents = parts.vae.encode(torch.rand(1, 3, 32, 32) * 2 - 1).latent_dist.mean
        assert latents.shape == (1, 4, 4, 4) and torch.isfinite(parts.vae.decode(latents).sample).all()


def test_reduced_mvdream_checkpoint_has_mvdreams_key_set(reduced_models) -> None:
    folder = Path(reduced_models["mvdream-sd21-4view"]).parent
    assert sorted(os.listdir(folder)) == ["diffusers", MARKER, "sd-v2-base.yaml", "sd-v2.1-base-4view.pt"]
    state = load_checkpoint_state_dict(str(folder / "sd-v2.1-base-4view.pt"))
    prefixes = {k.split(".")[0] for k in state}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model", *SCHEDULE_BUFFERS}
    assert state["model.diffusion_model.camera_embed.0.weight"].dtype == torch.float16 and state["betas"].dtype == torch.float32
    assert state["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"].shape == (3 * 128, 128)
    index = json.loads((folder / "diffusers" / "model_index.json").read_text())
    assert "cond_stage_model." in index["_skipped"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    marker = read_marker(str(folder))
    assert marker["spec"] == fullsize_spec("mvdream-sd21-4view", reduced=True)
    assert marker["parameters"]["unet"] == sum(v.numel() for k, v in state.items() if k.startswith("model.diffusion_model."))


def test_sd_folders_name_the_released_classes(reduced_models) -> None:
    for name, pipeline, scheduler in (("sd21-base", "StableDiffusionPipeline", "PNDMScheduler"), ("sd21", "StableDiffusionPipeline", "DDIMScheduler"),
                                      ("instruct-pix2pix", "StableDiffusionInstructPix2PixPipeline", "EulerAncestralDiscreteScheduler")):
        folder = Path(reduced_models[name])
        index = json.loads((folder / "model_index.json").read_text())
        assert (index["_class_name"], index["scheduler"]) == (pipeline, ["diffusers", scheduler])
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert config["_class_name"] == scheduler and config["steps_offset"] == 1 and config["skip_prk_steps"] is True
        tokenizer = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
        assert tokenizer["pad_token"] == ("<|endoftext|>" if name == "instruct-pix2pix" else "!")


# --------------------------------------------------------------------------- (d) CLIP's tokenizer
def test_real_clip_tokenizer(tmp_path) -> None:
    if clip_bpe_file() is None:
        pytest.skip("open_clip_torch (which ships CLIP's BPE file) is not installed: pip install --no-deps open_clip_torch")
    from transformers import AutoTokenizer

    write_clip_tokenizer(str(tmp_path / "sd1"), pad_token="<|endoftext|>")
    write_clip_tokenizer(str(tmp_path / "sd2"), pad_token="!")
    assert len(json.loads((tmp_path / "sd1" / "vocab.json").read_text())) == 49408
    tokenizer, sd2 = (AutoTokenizer.from_pretrained(str(tmp_path / n)) for n in ("sd1", "sd2"))
    # ids from open_clip's own SimpleTokenizer (its tokenizer.py, run on the same file)
    expected = {
        "a hamburger": [49406, 320, 33928, 49407],
        "a DSLR photo of a delicious hamburger": [49406, 320, 33740, 1125, 539, 320, 3959, 33928, 49407],
        "an astronaut riding a horse, 4k!": [49406, 550, 18376, 6765, 320, 4558, 267, 275, 330, 256, 49407],
        "a zoomed out photo of a corgi": [49406, 320, 4397, 16835, 620, 1125, 539, 320, 31320, 49407],
    }
    for text, ids in expected.items():
        assert tokenizer(text).input_ids == ids, text
    # SD 2's pad token "!" (id 0) is special to transformers, so a "!" in the prompt becomes id 0, not
    # open_clip's "!</w>" (256): the released SD 2 tokenizer does the same (diffusers issue #4153)
    assert sd2("an astronaut riding a horse, 4k!").input_ids == expected["an astronaut riding a horse, 4k!"][:-2] + [0, 49407]
    padded = sd2("a hamburger", padding="max_length", max_length=77).input_ids
    assert padded[:4] == expected["a hamburger"] and padded[4:] == [0] * 73
    assert tokenizer("a hamburger", padding="max_length", max_length=77).input_ids[4:] == [49407] * 73


def test_tiny_tokenizer_stands_in_without_open_clip(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fullsize, "clip_bpe_file", lambda: None)
    with pytest.warns(UserWarning, match="tiny stand-in"):
        source = write_clip_tokenizer(str(tmp_path), pad_token="!")
    assert source.startswith("tiny stand-in") and fullsize_spec("sd21-base")["tokenizer"] == source
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(tmp_path))("a hamburger").input_ids
    assert len(ids) == 4 and max(ids) < 49408


# --------------------------------------------------------------------------- (e) the cache
def test_cache_rebuilds_only_unfinished_or_changed_folders(tmp_path) -> None:
    def stamps() -> tuple[int, int]:
        folder = tmp_path / "sd21-base"
        return (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns, (folder / MARKER).stat().st_mtime_ns

    paths = build_fullsize_models(str(tmp_path), ["sd21-base"], reduced=True)
    assert paths == {"sd21-base": str(tmp_path / "sd21-base")}
    first = stamps()
    (tmp_path / "sd21-base" / "mine.txt").write_text("kept")
    assert build_fullsize_models(str(tmp_path), ["sd21-base"], reduced=True) == paths and stamps() == first
    (tmp_path / "sd21-base" / MARKER).unlink()  # an interrupted build
    build_fullsize_models(str(tmp_path), ["sd21-base"], reduced=True)
    second = stamps()
    assert second[0] != first[0] and second[1] != first[1]
    build_fullsize_models(str(tmp_path), ["sd21-base"], reduced=True, seed=1)  # another spec
    assert stamps()[0] != second[0] and read_marker(str(tmp_path / "sd21-base"))["spec"]["seed"] == 1
    assert (tmp_path / "sd21-base" / "mine.txt").read_text() == "kept"  # only what a build writes is replaced
    with pytest.raises(ValueError, match="unknown full-size model"):
        build_fullsize_models(str(tmp_path), ["sd15"])


def test_every_full_size_benchmark_row_is_a_valid_run(reduced_models, shared_data, tmp_path) -> None:
    """The benchmark's runs pass the CLI's --check (config keys, model folders, data) with the reduced models;
    the stages that start from an earlier row's trial are checked by the benchmark itself."""
    fox = shared_data("fox")
    for row in rows():
        if any(str(v).startswith("{trial:") for v in row.overrides.values()):
            continue
        for size in row.render_sizes or (None,):
            overrides = {**row_overrides(row, reduced_models, str(fox.parent), {}, size), "exp_root_dir": str(tmp_path)}
            assert main(["--config", row.config, "--check", *[f"{k}={v}" for k, v in overrides.items()]]) == 0, row.name
