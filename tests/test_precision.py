"""Precision under autocast (Lightning's 16-mixed / bf16-mixed), checked on the CPU with bf16 autocast.

- the frozen UNet and VAE run in their own dtype, with autocast off (as threestudio's guidances);
- ``trunc_exp`` casts its input to float32 and computes in float32 (threestudio's
  ``custom_fwd(cast_inputs=torch.float32)``), forward and gradient;
- the PyTorch MLP computes in float32 (as threestudio's VanillaMLP).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from threestudio_like.guidance.diffusion import FrozenDiffusion
from threestudio_like.priors.tiny import build_tiny_diffusion_model
from threestudio_like.representations.networks import get_activation, get_mlp, trunc_exp


def bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


# --------------------------------------------------------------------------- frozen UNet and VAE
@pytest.fixture(scope="module")
def latent_model(tmp_path_factory) -> str:
    return build_tiny_diffusion_model(str(tmp_path_factory.mktemp("precision") / "latent"), sample_size=8, with_vae=True)


def test_frozen_unet_and_vae_run_in_their_own_dtype_under_autocast(latent_model):
    diffusion = FrozenDiffusion(latent_model)  # CPU: fp32 weights
    parts = diffusion.components
    seen: dict[str, list] = {}

    def record(name):
        def hook(module, args, output):
            seen.setdefault(name, []).append((output.dtype, torch.is_autocast_enabled("cpu")))

        return hook

    # the first layer of each network: what its input was computed in, and whether autocast is on there
    handles = [
        parts.unet.conv_in.register_forward_hook(record("unet")),
        parts.vae.encoder.conv_in.register_forward_hook(record("vae.encode")),
        parts.vae.decoder.conv_in.register_forward_hook(record("vae.decode")),
    ]
    rgb = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    text = torch.randn(4, 8, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([300, 700])

    def step() -> tuple[torch.Tensor, ...]:
        torch.manual_seed(0)  # the posterior sample
        latents, _ = diffusion.model_space(rgb)
        noise = diffusion.predict_noise(latents, t, text, scale=7.5)
        return latents, noise, diffusion.decode(latents)

    try:
        reference = step()
        seen.clear()
        with bf16_autocast():
            mixed = step()
    finally:
        for handle in handles:
            handle.remove()
    for name in ("unet", "vae.encode", "vae.decode"):
        assert seen[name] and all(entry == (torch.float32, False) for entry in seen[name]), (name, seen[name])
    for a, b in zip(reference, mixed):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=0)  # exactly what it computes without autocast


# --------------------------------------------------------------------------- trunc_exp
def test_trunc_exp_computes_in_float32_under_autocast():
    # pre-activations near (and past) the gradient clamp at 15, out of a bf16 linear layer
    torch.manual_seed(0)
    features = torch.cat([torch.randn(256, 8), torch.linspace(9.0, 17.0, 256)[:, None]], dim=1)
    weight = torch.nn.Parameter(torch.cat([torch.randn(1, 8) * 0.1, torch.ones(1, 1)], dim=1))
    upstream = torch.rand(256, 1) + 0.5
    with bf16_autocast():
        h = F.linear(features, weight)
        assert h.dtype == torch.bfloat16  # the premise: autocast hands trunc_exp a bf16 input
        h.retain_grad()
        y = trunc_exp(h)
        shifted = get_activation("shifted_trunc_exp")(h)
    (y * upstream).sum().backward()

    h32 = h.detach().float()
    assert y.dtype == torch.float32 and shifted.dtype == torch.float32
    torch.testing.assert_close(y, torch.exp(h32), rtol=1e-6, atol=0)
    torch.testing.assert_close(shifted, torch.exp(h32 - 1.0), rtol=1e-6, atol=0)
    # the gradient is computed in float32 (upstream * exp(clamp(h, -15, 15))), then rounded once to h's dtype
    expected = (upstream * torch.exp(h32.clamp(-15.0, 15.0))).to(torch.bfloat16)
    assert torch.equal(h.grad, expected)
    assert (h32 > 15.0).any() and (h32 < 15.0).any()  # both sides of the clamp are exercised


def test_trunc_exp_without_autocast_keeps_its_dtype():
    x = torch.tensor([1.0, 14.0, 20.0], dtype=torch.float64, requires_grad=True)
    y = trunc_exp(x)
    y.sum().backward()
    assert y.dtype == torch.float64
    torch.testing.assert_close(x.grad, torch.exp(x.detach().clamp(-15.0, 15.0)))


# --------------------------------------------------------------------------- the PyTorch MLP
def test_pytorch_mlp_computes_in_float32_under_autocast():
    torch.manual_seed(0)
    mlp = get_mlp(12, 4, {"otype": "VanillaMLP", "n_neurons": 16, "n_hidden_layers": 2})
    x = torch.randn(64, 12)
    reference = mlp(x)
    with bf16_autocast():
        mixed = mlp(x)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=0, atol=0)
