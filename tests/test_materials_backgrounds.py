"""Materials and backgrounds against their shading formulas."""

from __future__ import annotations

import pytest
import torch

from threestudio_like.backgrounds import NeuralEnvironmentMapBackground, SolidColorBackground
from threestudio_like.materials import DiffuseWithPointLightMaterial, NoMaterial


def lit_scene():
    """Points at the origin lit from +z; normals at known angles to the light."""
    angles = torch.tensor([0.0, 30.0, 60.0, 90.0, 120.0, 180.0])
    rad = torch.deg2rad(angles)
    normals = torch.stack([torch.zeros_like(rad), torch.sin(rad), torch.cos(rad)], dim=-1)
    cos = torch.cos(rad).clamp_min(0)[:, None]  # max(n . l, 0)
    positions = torch.zeros(6, 3)
    lights = torch.tensor([0.0, 0.0, 5.0]).expand(6, 3)
    torch.manual_seed(0)
    features = torch.randn(6, 5)
    return features, {"positions": positions, "light_positions": lights, "shading_normal": normals}, cos


def test_ambient_only_phase_returns_albedo_regardless_of_light():
    features, where, _ = lit_scene()
    material = DiffuseWithPointLightMaterial({"ambient_only_steps": 100})
    material.train()
    material.update_step(10)
    albedo = torch.sigmoid(features[:, :3])
    for _ in range(5):  # never lit in the ambient-only phase
        rgb = material(features, **where)
        torch.testing.assert_close(rgb, albedo)
    # lit by the ambient term alone at full strength: the same as ambient_ratio = 1
    rgb = material(features, **where, ambient_ratio=1.0, shading="diffuse")
    torch.testing.assert_close(rgb, albedo)


def test_diffuse_shading_follows_lambert():
    features, where, cos = lit_scene()
    material = DiffuseWithPointLightMaterial(
        {"ambient_light_color": [0.1, 0.2, 0.3], "diffuse_light_color": [0.9, 0.8, 0.7]}
    )
    assert material.requires_normal
    material.eval()  # eval: always full diffuse shading
    albedo = torch.sigmoid(features[:, :3])
    ambient, diffuse = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.9, 0.8, 0.7])
    rgb = material(features, viewdirs=-where["shading_normal"], **where)
    torch.testing.assert_close(rgb, albedo * (ambient + diffuse * cos))
    # facing away from the light: albedo * ambient
    torch.testing.assert_close(rgb[3:], albedo[3:] * ambient)
    textureless = material(features, **where, shading="textureless")
    torch.testing.assert_close(textureless, (ambient + diffuse * cos).expand(6, 3))
    ratio = material(features, **where, ambient_ratio=0.3)
    torch.testing.assert_close(ratio, albedo * (0.3 + 0.7 * cos))
    torch.testing.assert_close(material.export(features)["albedo"], albedo)
    with pytest.raises(ValueError, match="shading"):
        material(features, **where, shading="phong")


def test_training_shading_mix_and_reproducibility():
    features, where, cos = lit_scene()
    material = DiffuseWithPointLightMaterial({"ambient_only_steps": 10, "diffuse_prob": 0.75, "textureless_prob": 0.5})
    material.train()
    material.update_step(10)
    albedo = torch.sigmoid(features[:, :3])
    textureless = (0.1 + 0.9 * cos).expand(6, 3)

    def draw(n: int) -> list[str]:
        kinds = []
        for _ in range(n):
            rgb = material(features, **where)
            if torch.allclose(rgb, albedo):
                kinds.append("albedo")
            elif torch.allclose(rgb, textureless):
                kinds.append("textureless")
            else:
                torch.testing.assert_close(rgb, albedo * textureless)
                kinds.append("diffuse")
        return kinds

    torch.manual_seed(123)
    kinds = draw(1200)
    assert abs(kinds.count("albedo") / 1200 - 0.25) < 0.05
    assert abs(kinds.count("textureless") / 1200 - 0.375) < 0.05
    assert abs(kinds.count("diffuse") / 1200 - 0.375) < 0.05
    torch.manual_seed(123)  # the global torch RNG decides: same seed, same sequence
    assert draw(50) == kinds[:50]


def test_no_material():
    features = torch.randn(4, 7, 3)
    material = NoMaterial({})
    assert not material.requires_normal
    torch.testing.assert_close(material(features), torch.sigmoid(features))
    torch.testing.assert_close(material.export(features)["albedo"], torch.sigmoid(features))
    with pytest.raises(ValueError, match="feature channels"):
        material(torch.randn(4, 5))
    mlp = NoMaterial(
        {
            "input_feature_dims": 5,
            "mlp_network_config": {"otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 8, "n_hidden_layers": 1},
        }
    )
    out = mlp(torch.randn(2, 3, 5))
    assert out.shape == (2, 3, 3) and ((out > 0) & (out < 1)).all()


def random_dirs(b=2, h=4, w=5):
    torch.manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(b, h, w, 3), dim=-1)


def test_solid_color_background():
    dirs = random_dirs()
    bg = SolidColorBackground({"color": [0.2, 0.4, 0.6]})
    torch.testing.assert_close(bg(dirs), torch.tensor([0.2, 0.4, 0.6]).expand(2, 4, 5, 3))
    assert "env_color" not in bg.state_dict()  # fixed colour: the config decides

    learned = SolidColorBackground({"color": [0.5, 0.5, 0.5], "learned": True})
    learned(dirs).sum().backward()
    torch.testing.assert_close(learned.env_color.grad, torch.full((3,), 40.0))

    aug = SolidColorBackground({"random_aug": True, "random_aug_prob": 1.0}).train()
    out = aug(dirs)
    assert torch.equal(out, out[:, :1, :1].expand_as(out))  # one solid colour per view
    assert not torch.equal(out[0], out[1])
    assert not torch.allclose(out, torch.ones_like(out))
    assert torch.equal(aug.eval()(dirs), torch.ones_like(out))  # no augmentation in eval
    shared = SolidColorBackground({"random_aug": True, "random_aug_prob": 1.0, "share_aug_bg": True}).train()
    out = shared(dirs)
    assert torch.equal(out, out[:1, :1, :1].expand_as(out))
    with pytest.raises(ValueError, match="color"):
        SolidColorBackground({"color": [1.0, 1.0]})


def test_neural_environment_map_background():
    dirs = random_dirs()
    torch.manual_seed(0)
    bg = NeuralEnvironmentMapBackground({}).train()
    out = bg(dirs)
    assert out.shape == (2, 4, 5, 3)
    assert ((out > 0) & (out < 1)).all()
    assert out.std() > 0  # depends on the direction
    out.sum().backward()
    grads = [p.grad for p in bg.parameters()]
    assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # deterministic without augmentation: a sub-batch gets the same colours
    torch.testing.assert_close(bg(dirs[:1]), out[:1].detach())

    fixed = NeuralEnvironmentMapBackground({"eval_color": [1.0, 0.0, 0.5]}).eval()
    torch.testing.assert_close(fixed(dirs), torch.tensor([1.0, 0.0, 0.5]).expand(2, 4, 5, 3))
    assert fixed.train()(dirs).std() > 0  # the network again in training
