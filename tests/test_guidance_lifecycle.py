"""When the guidance exists: built with the system for training (so a resumed run's first step
uses that step's schedules), never for evaluation or export, and ready for a trainable guidance."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from recipe_overrides import RECIPE, tiny_recipe
from threestudio_like.cli import main
from threestudio_like.experiment import finalize_config, load_config
from threestudio_like.guidance.sds import StableDiffusionGuidance
from threestudio_like.experiment import find_part
from threestudio_like.registry import register
from threestudio_like.systems.dreamfusion import DreamFusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_STEP_SCHEDULE = {"system.guidance.max_step_percent": "[0,0.98,0.5,8]"}  # 980 at step 0, 860 at 2, 800 at 3


def train(model_dir: str, out_dir: str, **extra: object) -> str:
    args = tiny_recipe(model_dir, out_dir, **{**MAX_STEP_SCHEDULE, **extra})
    assert main(["--config", os.path.join(ROOT, RECIPE), "--train", *args]) == 0
    return os.path.join(out_dir, "outputs", "dreamfusion-sd", "a_red_cube")


@pytest.fixture
def used_timesteps(monkeypatch) -> dict[int, tuple[int, int]]:
    """(min_step, max_step) of the guidance as each training step used it, by global step."""
    used: dict[int, tuple[int, int]] = {}
    original = DreamFusion.training_step

    def recording(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        used[self.global_step] = (self.guidance.min_step, self.guidance.max_step)
        return loss

    monkeypatch.setattr(DreamFusion, "training_step", recording)
    return used


def test_resumed_run_uses_the_timestep_schedule_of_its_step(tiny_model_dir, tmp_path, used_timesteps, on_the_cpu):
    train(tiny_model_dir, str(tmp_path / "straight"), **{"trainer.max_steps": 4})
    straight = dict(used_timesteps)
    assert [straight[k][1] for k in range(4)] == [980, 920, 860, 800]
    used_timesteps.clear()
    trial = train(tiny_model_dir, str(tmp_path / "resumed"), **{"trainer.max_steps": 2})
    train(tiny_model_dir, str(tmp_path / "resumed"), **{"trainer.max_steps": 4, "resume": f"{trial}/ckpts/last.ckpt"})
    assert used_timesteps == straight  # in particular step 2, the first after the resume


def build_system(model_dir: str, tmp: str, **extra: object):
    exp = finalize_config(load_config(os.path.join(ROOT, RECIPE), cli_args=tiny_recipe(model_dir, tmp, **extra)))
    return find_part(exp.system_type)(exp.system, save_dir=os.path.join(tmp, "save"))


def test_guidance_is_built_for_training_only_and_follows_the_step(tiny_model_dir, tmp_path):
    system = build_system(tiny_model_dir, str(tmp_path), **MAX_STEP_SCHEDULE)
    for stage in ("validate", "test", "predict"):  # what --validate / --test run; --export runs none
        system.setup(stage)
    assert "guidance" not in dict(system.named_children())
    system.prepare_for_training()
    assert isinstance(system.guidance, StableDiffusionGuidance) and system.guidance in system.parts()
    system.update_step(3)
    assert system.guidance.max_step == 800
    assert not any(k.startswith("guidance") for k in system.state_dict())  # the frozen UNet stays out


@register("test-trainable-guidance")
class TrainableGuidance(StableDiffusionGuidance):
    """SDS plus a learnable tensor, as a VSD critic would add."""

    @dataclass
    class Config(StableDiffusionGuidance.Config):
        pass

    def configure(self, **kwargs) -> None:
        super().configure(**kwargs)
        self.critic = torch.nn.Linear(2, 2)


def test_a_trainable_guidance_joins_the_optimiser_and_the_checkpoint(tiny_model_dir, tmp_path):
    system = build_system(  # the guidance group is accepted before the guidance exists
        tiny_model_dir, str(tmp_path),
        **{"system.guidance_type": "test-trainable-guidance", "system.optimizer.params.guidance.lr": 0.1},
    )
    system.prepare_for_training()
    optimizer = system.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["guidance"]["lr"] == 0.1
    assert {id(p) for p in groups["guidance"]["params"]} == {id(p) for p in system.guidance.critic.parameters()}
    guidance_keys = {k for k in system.state_dict() if k.startswith("guidance.")}
    assert guidance_keys == {"guidance.critic.weight", "guidance.critic.bias"}
