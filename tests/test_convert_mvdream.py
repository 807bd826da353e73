"""Converting MVDream's checkpoint (ldm layout) into the multi-view UNet: against a reference model.

The reference below is an ldm-layout MVDream UNet written from MVDream's layer layout (its
attribute names give the checkpoint's key names, its forward is ldm's computation), tiny and
randomly initialised in every weight. Its state dict, saved the way MVDream's checkpoint is, goes
through the converter; the converted diffusers UNet must compute what the reference computes.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional
from unittest.mock import Mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from threestudio_like.guidance.convert_mvdream import (
    ConversionError,
    RELEASED_CONFIGS,
    convert_checkpoint,
    load_mvdream_checkpoint,
    main,
    released_config_name,
)
from threestudio_like.guidance.models import (
    ModelNotFoundError,
    check_model_folder,
    clear_component_cache,
    load_diffusion_components,
)
from threestudio_like.guidance.multiview_unet import MultiViewUNet2DConditionModel
from threestudio_like.priors.ldm_layout import ldm_vae_shapes

CONTEXT_DIM, CAMERA_DIM, LATENT = 32, 16, 8


# --------------------------------------------------------------------------- reference: ldm layout
def ldm_timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """ldm's sinusoidal embedding [B] -> [B, dim]: cos half first, then sin."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RefResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class RefAttention(nn.Module):
    def __init__(self, dim: int, context_dim: Optional[int], heads: int, dim_head: int) -> None:
        super().__init__()
        inner, context_dim = heads * dim_head, context_dim or dim
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = ((q @ k.transpose(-1, -2)) * self.scale).softmax(dim=-1) @ v
        return self.to_out(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class RefGEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class RefFeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(RefGEGLU(dim, dim * 4), nn.Dropout(0.0), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RefTransformerBlock3D(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = RefAttention(dim, None, heads, dim_head)
        self.ff = RefFeedForward(dim)
        self.attn2 = RefAttention(dim, context_dim, heads, dim_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        views, tokens, channels = x.shape
        x = x.reshape(views // num_frames, num_frames * tokens, channels)  # (b f) l c -> b (f l) c
        x = self.attn1(self.norm1(x)) + x
        x = x.reshape(views, tokens, channels)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class RefSpatialTransformer3D(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, use_linear: bool) -> None:
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([RefTransformerBlock3D(inner, heads, dim_head, context_dim)])
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        if not self.use_linear:
            y = self.proj_in(y)
        y = y.flatten(2).transpose(1, 2)
        if self.use_linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context, num_frames)
        if self.use_linear:
            y = self.proj_out(y)
        y = y.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear:
            y = self.proj_out(y)
        return y + x


class RefDownsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class RefUpsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class RefSequential(nn.Sequential):
    """ldm's TimestepEmbedSequential: each layer gets what it takes."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, RefResBlock):
                x = layer(x, emb)
            elif isinstance(layer, RefSpatialTransformer3D):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


class RefMVDreamUNet(nn.Module):
    """MVDream's MultiViewUNetModel layout (spatial transformer, no legacy heads), at any width."""

    def __init__(self, p: dict[str, Any]) -> None:
        super().__init__()
        mc, use_linear = p["model_channels"], p.get("use_linear_in_transformer", False)
        self.model_channels, temb = mc, mc * 4

        def transformer(ch: int) -> RefSpatialTransformer3D:
            heads = ch // p["num_head_channels"] if p.get("num_head_channels", -1) != -1 else p["num_heads"]
            return RefSpatialTransformer3D(ch, heads, ch // heads, p["context_dim"], use_linear)

        self.time_embed = nn.Sequential(nn.Linear(mc, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.camera_embed = nn.Sequential(nn.Linear(p["camera_dim"], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.input_blocks = nn.ModuleList([RefSequential(nn.Conv2d(p["in_channels"], mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(p["channel_mult"]):
            for _ in range(p["num_res_blocks"]):
                layers: list[nn.Module] = [RefResBlock(ch, temb, mult * mc)]
                ch = mult * mc
                if ds in p["attention_resolutions"]:
                    layers.append(transformer(ch))
                self.input_blocks.append(RefSequential(*layers))
                chans.append(ch)
            if level != len(p["channel_mult"]) - 1:
                self.input_blocks.append(RefSequential(RefDownsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = RefSequential(RefResBlock(ch, temb, ch), transformer(ch), RefResBlock(ch, temb, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(p["channel_mult"]))[::-1]:
            for i in range(p["num_res_blocks"] + 1):
                layers = [RefResBlock(ch + chans.pop(), temb, mc * mult)]
                ch = mc * mult
                if ds in p["attention_resolutions"]:
                    layers.append(transformer(ch))
                if level and i == p["num_res_blocks"]:
                    layers.append(RefUpsample(ch))
                    ds //= 2
                self.output_blocks.append(RefSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(mc, p["out_channels"], 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, camera: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x [B,C,h,w], t [B], context [B,L,D], camera [B,16] -> [B,C,h,w]."""
        emb = self.time_embed(ldm_timestep_embedding(t, self.model_channels)) + self.camera_embed(camera)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context, num_frames)
            hs.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context, num_frames)
        return self.out(h)


def randomise(module: nn.Module, seed: int) -> None:
    """Every weight random, including those ldm initialises to zero (out convs, proj_out) and the norms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:  # norm scales
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))


# The two released layouts in miniature: SD 2.1 (linear proj_in, heads from num_head_channels,
# attention at every level) and SD 1.5 (conv proj_in, fixed num_heads, no attention at level 1).
TINY_UNETS = {
    "v2": {"attention_resolutions": [1, 2], "num_head_channels": 16, "use_linear_in_transformer": True},
    "v1": {"attention_resolutions": [1], "num_heads": 2},
}


def tiny_unet_params(kind: str) -> dict[str, Any]:
    return {
        "image_size": LATENT, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": 1,
        "channel_mult": [1, 2], "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": CONTEXT_DIM,
        "use_checkpoint": False, "legacy": False, "camera_dim": CAMERA_DIM, **TINY_UNETS[kind],
    }


def write_yaml(path: Path, unet_params: dict[str, Any], vae: bool = True, parameterization: str = "eps") -> Path:
    """A yaml shaped like MVDream's sd-v2-base.yaml (tiny numbers)."""
    lines = [
        "model:", "  target: mvdream.ldm.interface.LatentDiffusionInterface", "  params:",
        "    linear_start: 0.00085", "    linear_end: 0.0120", "    timesteps: 1000", "    scale_factor: 0.18215",
        f'    parameterization: "{parameterization}"', "    unet_config:",
        "      target: mvdream.ldm.modules.diffusionmodules.openaimodel.MultiViewUNetModel", "      params:",
    ]
    lines += [f"        {k}: {json.dumps(v)}" for k, v in unet_params.items()]
    if vae:
        lines += [
            "    first_stage_config:", "      target: mvdream.ldm.models.autoencoder.AutoencoderKL", "      params:",
            "        embed_dim: 4", "        ddconfig:", "          double_z: true", "          z_channels: 4",
            "          resolution: 64", "          in_channels: 3", "          out_ch: 3", "          ch: 32",
            "          ch_mult: [1, 2]", "          num_res_blocks: 1", "          attn_resolutions: []", "          dropout: 0.0",
            "        lossconfig:", "          target: torch.nn.Identity",
        ]
    lines += ["    cond_stage_config:", "      target: mvdream.ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder"]
    path.write_text("\n".join(lines) + "\n")
    return path


def ldm_schedule() -> dict[str, torch.Tensor]:
    """ldm's "linear" schedule buffers as its interface registers them (float64 math, stored float32)."""
    betas = torch.linspace(0.00085**0.5, 0.0120**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return {"betas": betas.float(), "alphas_cumprod": alphas_cumprod.float(), "sqrt_alphas_cumprod": alphas_cumprod.sqrt().float()}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=sorted(TINY_UNETS))
def mvdream(request, tmp_path_factory) -> dict[str, Any]:
    """A reference UNet, its checkpoint (UNet + schedule buffers + a text-encoder tensor) and yaml."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"mvdream-{kind}")
    params = tiny_unet_params(kind)
    reference = RefMVDreamUNet(params).eval()
    randomise(reference, seed=1)
    state = {f"model.diffusion_model.{k}": v for k, v in reference.state_dict().items()}
    state.update(ldm_schedule())
    state["cond_stage_model.model.token_embedding.weight"] = torch.randn(10, CONTEXT_DIM)
    torch.save(state, folder / "mvdream.pt")
    return {"kind": kind, "reference": reference, "state": state, "params": params, "folder": folder,
            "checkpoint": folder / "mvdream.pt", "yaml": write_yaml(folder / "mvdream.yaml", params, vae=False)}


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """2 groups of 4 views: latents [8,4,8,8], timesteps [8] (one per group), text [8,5,32], cameras [8,16]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, LATENT, LATENT, generator=g)
    t = torch.tensor([700] * 4 + [150] * 4)
    return x, t, torch.randn(8, 5, CONTEXT_DIM, generator=g), torch.randn(8, CAMERA_DIM, generator=g)


def assert_matches_reference(unet: torch.nn.Module, reference: RefMVDreamUNet) -> None:
    assert isinstance(unet, MultiViewUNet2DConditionModel)
    x, t, text, camera = _inputs()
    with torch.no_grad():
        expected = reference(x, t, text, camera, num_frames=4)
        got = unet(x, t, encoder_hidden_states=text, camera=camera, num_frames=4).sample
        assert expected.abs().mean() > 0.1  # a real signal, not a zeroed network
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        # the views of a group are coupled (3D self-attention) in both, and the camera matters
        other = reference(x, t, text, camera.flip(0), num_frames=4)
        assert (other - expected).abs().amax() > 1e-2
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=text, camera=camera.flip(0), num_frames=4).sample, other, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- tests
def test_converted_folder_computes_the_reference(mvdream, tmp_path) -> None:
    started = time.perf_counter()
    out = tmp_path / "converted"
    report = convert_checkpoint(str(mvdream["checkpoint"]), str(out), str(mvdream["yaml"]))
    assert sorted(os.listdir(out)) == ["model_index.json", "scheduler", "unet"]  # UNet-only: no VAE keys
    assert "cond_stage_model." in report.skipped and "prompt processor" in report.skipped["cond_stage_model."]
    assert report.checked == ["betas", "alphas_cumprod", "sqrt_alphas_cumprod"]
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"][1] == "MultiViewUNet2DConditionModel" and index["vae"] == [None, None]
    assert "cond_stage_model." in index["_skipped"]
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["_class_name"] == "MultiViewUNet2DConditionModel"
    assert (config["class_embed_type"], config["projection_class_embeddings_input_dim"], config["sample_size"]) == ("projection", 16, LATENT)
    assert os.path.isfile(out / "unet" / "diffusion_pytorch_model.safetensors")

    clear_component_cache()
    parts = load_diffusion_components(str(out), text_encoder=False)
    assert parts.tokenizer is None and parts.text_encoder is None and parts.vae is None
    assert parts.scheduler.config.prediction_type == "epsilon" and parts.scheduler.config.beta_schedule == "scaled_linear"
    torch.testing.assert_close(parts.scheduler.betas, mvdream["state"]["betas"], rtol=1e-4, atol=1e-7)
    assert_matches_reference(parts.unet, mvdream["reference"])
    assert time.perf_counter() - started < 20


def test_checkpoint_path_loads_directly(mvdream) -> None:
    """A .pt path as the model (its architecture from mvdream.yaml beside it)."""
    clear_component_cache()
    parts = load_diffusion_components(str(mvdream["checkpoint"]), text_encoder=False)
    assert parts.path == str(mvdream["checkpoint"]) and parts.vae is None and parts.tokenizer is None
    assert not any(p.requires_grad for p in parts.unet.parameters()) and not parts.unet.training
    assert_matches_reference(parts.unet, mvdream["reference"])
    # shared while held, like a folder's components
    assert load_diffusion_components(str(mvdream["checkpoint"]), text_encoder=False).unet is parts.unet
    assert check_model_folder(str(mvdream["checkpoint"]), ("unet", "scheduler")) == str(mvdream["checkpoint"])
    with pytest.raises(ModelNotFoundError, match="text encoder"):
        load_diffusion_components(str(mvdream["checkpoint"]), text_encoder=True)
    with pytest.raises(ModelNotFoundError, match="tokenizer"):
        check_model_folder(str(mvdream["checkpoint"]), ("tokenizer", "text_encoder"))


def test_released_architecture_without_yaml(mvdream, tmp_path) -> None:
    """config=None and no yaml beside the file: the released config that fits (this one fits neither)."""
    alone = tmp_path / "alone.pt"
    alone.write_bytes(mvdream["checkpoint"].read_bytes())
    with pytest.raises(ConversionError, match="matches no released MVDream model"):
        load_mvdream_checkpoint(str(alone))
    unet, scheduler, vae = load_mvdream_checkpoint(str(mvdream["checkpoint"]), config=str(mvdream["yaml"]))
    assert vae is None and scheduler.config.num_train_timesteps == 1000
    assert_matches_reference(unet, mvdream["reference"])
    fake = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640, 1024)}
    assert released_config_name(fake) == "sd-v2.1-base-4view"
    assert RELEASED_CONFIGS["sd-v1.5-4view"]["model"]["params"]["unet_config"]["params"]["context_dim"] == 768


def test_unknown_key_stops_the_conversion_and_is_named(mvdream, tmp_path, capsys) -> None:
    state = dict(mvdream["state"])
    state["model.diffusion_model.bogus.weight"] = torch.randn(3)
    torch.save(state, tmp_path / "bogus.pt")
    with pytest.raises(ConversionError, match=r"unmapped UNet 1 key\(s\): model\.diffusion_model\.bogus\.weight"):
        convert_checkpoint(str(tmp_path / "bogus.pt"), str(tmp_path / "out"), str(mvdream["yaml"]))
    assert not (tmp_path / "out").exists()
    # the command line says it in one line, without a traceback
    assert main(["--checkpoint", str(tmp_path / "bogus.pt"), "--config", str(mvdream["yaml"]), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bogus.weight" in err and "Traceback" not in err and err.count("\n") == 1
    # one diffusers' helper renames along with its block (an unknown layer inside an attention block)
    state = dict(mvdream["state"])
    state["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn3.to_q.weight"] = torch.randn(32, 32)
    torch.save(state, tmp_path / "attn3.pt")
    with pytest.raises(ConversionError, match=r"UNet .*unexpected 1 key\(s\): model\.diffusion_model\.input_blocks\.1\.1\.transformer_blocks\.0\.attn3\.to_q\.weight"):
        load_mvdream_checkpoint(str(tmp_path / "attn3.pt"), config=str(mvdream["yaml"]))
    # an unknown top-level key too
    state = dict(mvdream["state"])
    state["model_ema.decay"] = torch.tensor(0.99)
    torch.save(state, tmp_path / "ema.pt")
    with pytest.raises(ConversionError, match="model_ema.decay"):
        load_mvdream_checkpoint(str(tmp_path / "ema.pt"), config=str(mvdream["yaml"]))


def test_bad_inputs_are_clear_errors(mvdream, tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_diffusion_components(str(tmp_path / "missing.pt"), text_encoder=False)
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ConversionError, match="not an MVDream checkpoint"):
        load_diffusion_components(str(tmp_path / "other.pt"), text_encoder=False)
    (tmp_path / "nounet.yaml").write_text("model:\n  params:\n    timesteps: 1000\n")
    with pytest.raises(ConversionError, match="no model.params.unet_config.params"):
        load_mvdream_checkpoint(str(mvdream["checkpoint"]), config=str(tmp_path / "nounet.yaml"))
    # a yaml whose schedule is not the checkpoint's
    wrong = write_yaml(tmp_path / "wrong.yaml", mvdream["params"], vae=False)
    wrong.write_text(wrong.read_text().replace("linear_end: 0.0120", "linear_end: 0.02"))
    with pytest.raises(ConversionError, match="'betas' buffer"):
        load_mvdream_checkpoint(str(mvdream["checkpoint"]), config=str(wrong))
    # the state_dict wrapper is accepted; a pickled object is refused, not executed
    torch.save({"state_dict": mvdream["state"]}, tmp_path / "wrapped.ckpt")
    assert load_mvdream_checkpoint(str(tmp_path / "wrapped.ckpt"), config=str(mvdream["yaml"]))[2] is None
    torch.save({"state_dict": mvdream["state"], "obj": Path("x")}, tmp_path / "pickled.ckpt")
    with pytest.raises(ConversionError, match="can run code when loaded, so it was not loaded") as refused:
        load_mvdream_checkpoint(str(tmp_path / "pickled.ckpt"), config=str(mvdream["yaml"]))
    assert "weights_only" not in str(refused.value)


@pytest.mark.parametrize("mvdream", ["v2"], indirect=True)
def test_vae_converts_with_every_key_used(mvdream, tmp_path) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    vae_state = {f"first_stage_model.{k}": torch.randn(s, generator=g) * 0.05 for k, s in ldm_vae_shapes().items()}
    save_file({**mvdream["state"], **vae_state}, str(tmp_path / "full.safetensors"))
    yaml = write_yaml(tmp_path / "full.yaml", mvdream["params"], vae=True, parameterization="v")  # beside the file
    out = tmp_path / "converted"
    report = convert_checkpoint(str(tmp_path / "full.safetensors"), str(out), str(yaml))
    assert len(report.vae_state_dict) == len(vae_state)
    assert sorted(os.listdir(out)) == ["model_index.json", "scheduler", "unet", "vae"]

    clear_component_cache()
    parts = load_diffusion_components(str(out), text_encoder=False)
    assert parts.scheduler.config.prediction_type == "v_prediction"
    vae = parts.vae
    assert vae.config.scaling_factor == pytest.approx(0.18215) and parts.vae_scale_factor == 2
    converted = vae.state_dict()
    torch.testing.assert_close(converted["decoder.conv_out.weight"], vae_state["first_stage_model.decoder.conv_out.weight"])
    torch.testing.assert_close(converted["encoder.mid_block.attentions.0.to_q.weight"], vae_state["first_stage_model.encoder.mid.attn_1.q.weight"][:, :, 0, 0])
    # ldm's decoder levels run in reverse: up.1 (the low-resolution level) is diffusers' up_blocks.0
    torch.testing.assert_close(converted["decoder.up_blocks.0.upsamplers.0.conv.weight"], vae_state["first_stage_model.decoder.up.1.upsample.conv.weight"])
    with torch.no_grad():
        latents = vae.encode(torch.rand(2, 3, 16, 16) * 2 - 1).latent_dist.mean
        assert latents.shape == (2, 4, 8, 8)
        assert vae.decode(latents).sample.shape == (2, 3, 16, 16)
    assert_matches_reference(parts.unet, mvdream["reference"])

    # MVDream's extension keys: ckpt_path names the file (its yaml beside it); one guidance step runs
    from omegaconf import OmegaConf

    from threestudio_like.guidance.multiview import MultiviewDiffusionGuidance
    from threestudio_like.guidance.prompt_processor import PromptProcessorOutput

    prompts = Mock(spec=PromptProcessorOutput, use_perp_neg=False)  # a PromptProcessorOutput to the type checks
    prompts.get_text_embeddings.return_value = torch.randn(16, 5, CONTEXT_DIM, generator=torch.Generator().manual_seed(5))

    guidance = MultiviewDiffusionGuidance(OmegaConf.create({"ckpt_path": str(tmp_path / "full.safetensors"), "n_view": 4}))
    assert guidance.components.vae is not None and guidance.sample_size() == (LATENT, LATENT)
    c2w = torch.eye(4).repeat(8, 1, 1)
    c2w[:, :3, 3] = torch.randn(8, 3, generator=g)
    rgb = torch.rand(8, 16, 16, 3, requires_grad=True)
    out = guidance(rgb, prompts, torch.zeros(8), torch.zeros(8), torch.ones(8), c2w=c2w)
    out["loss_sds"].backward()
    assert torch.isfinite(out["loss_sds"]) and rgb.grad.abs().sum() > 0

    # a VAE tensor diffusers has no place for (an attention at a down level) stops the conversion, named
    extra = {**vae_state, "first_stage_model.encoder.down.0.attn.0.q.weight": torch.zeros(32, 32, 1, 1)}
    save_file({**mvdream["state"], **extra}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ConversionError, match=r"VAE .*unexpected 1 key\(s\): first_stage_model\.encoder\.down\.0\.attn\.0\.q\.weight"):
        load_mvdream_checkpoint(str(tmp_path / "extra.safetensors"), config=str(yaml))


@pytest.mark.parametrize("name", sorted(RELEASED_CONFIGS))
def test_released_layouts_map_key_for_key(name) -> None:
    """The full-size released layouts (built on the meta device: shapes, no memory) convert onto the
    diffusers models key for key and shape for shape, UNet and VAE, every source tensor used."""
    from diffusers import AutoencoderKL

    from threestudio_like.guidance.convert_mvdream import convert_state_dict

    params = RELEASED_CONFIGS[name]["model"]["params"]
    with torch.device("meta"):
        reference = RefMVDreamUNet(params["unet_config"]["params"])
        state = {f"model.diffusion_model.{k}": v for k, v in reference.state_dict().items()}
        ddconfig = params["first_stage_config"]["params"]["ddconfig"]
        vae_shapes = ldm_vae_shapes(ddconfig["ch"], tuple(ddconfig["ch_mult"]), ddconfig["num_res_blocks"], ddconfig["z_channels"])
        state.update({f"first_stage_model.{k}": torch.empty(s) for k, s in vae_shapes.items()})
        assert released_config_name(state) == name
        converted = convert_state_dict(state)  # config=None: the released architecture, by context width
        unet = MultiViewUNet2DConditionModel.from_config(converted.unet_config)
        vae = AutoencoderKL.from_config(converted.vae_config)
    for model, weights in ((unet, converted.unet_state_dict), (vae, converted.vae_state_dict)):
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in weights.items()} == expected
    assert len(converted.unet_state_dict) == sum(k.startswith("model.diffusion_model.") for k in state)
    assert converted.unet_config["attention_head_dim"] == ([5, 10, 20, 20] if name == "sd-v2.1-base-4view" else 8)
    assert converted.vae_config["scaling_factor"] == 0.18215 and converted.scheduler_config["prediction_type"] == "epsilon"
