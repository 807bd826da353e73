"""Typed configs, schedules, milestones and the registry's error messages."""

import os
from dataclasses import dataclass, field
from typing import Optional, Union

import pytest

from threestudio_like.config import ConfigError, milestone_value, parse_structured, Schedule, schedule_value
from threestudio_like.experiment import finalize_config, load_config
from threestudio_like.registry import UnknownTypeError
from threestudio_like.experiment import find_part


@dataclass
class Inner:
    n_levels: int = 16
    scale: float = 1.5


@dataclass
class Outer:
    name: str = "x"
    lr: Schedule = 0.01
    inner: Inner = field(default_factory=Inner)
    threshold: Union[float, str] = 25.0
    sizes: list[int] = field(default_factory=list)
    maybe: Optional[float] = None


def test_parse_fills_defaults_and_converts_types():
    cfg = parse_structured(Outer, {"inner": {"scale": 2}, "sizes": [1, 2], "threshold": "auto"})
    assert cfg.inner.scale == 2.0 and isinstance(cfg.inner.scale, float)
    assert cfg.inner.n_levels == 16 and cfg.sizes == [1, 2] and cfg.threshold == "auto"


def test_unknown_key_names_full_path_and_close_match():
    with pytest.raises(ConfigError) as e:
        parse_structured(Outer, {"inner": {"n_level": 4}}, "system.geometry")
    assert "system.geometry.inner.n_level" in str(e.value)
    assert "Did you mean 'system.geometry.inner.n_levels'" in str(e.value)


@pytest.mark.parametrize(
    "data, path",
    [({"inner": {"n_levels": "many"}}, "inner.n_levels"), ({"sizes": 3}, "sizes"), ({"maybe": "x"}, "maybe"), ({"name": 3}, "name")],
)
def test_wrong_types_fail_with_path(data, path):
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        parse_structured(Outer, data)


def test_schedule_validation():
    assert parse_structured(Outer, {"lr": [0, 1.0, 0.0, 100]}).lr == [0, 1.0, 0.0, 100]
    with pytest.raises(ConfigError, match="lr"):
        parse_structured(Outer, {"lr": [1, 2]})
    with pytest.raises(ConfigError, match="increase"):
        parse_structured(Outer, {"lr": [[10, 1.0], [5, 2.0]]})


def test_schedule_values():
    spec = [100, 10.0, 1.0, 1100]
    assert schedule_value(spec, 0) == 10.0  # constant before start
    assert schedule_value(spec, 600) == pytest.approx(5.5)
    assert schedule_value(spec, 5000) == 1.0  # constant after end
    assert schedule_value([0.98, 0.5, 1000], 500) == pytest.approx(0.74)  # 3-list starts at step 0
    piecewise = [[0, 0.0], [10, 1.0], [30, 0.0]]
    assert [schedule_value(piecewise, s) for s in (0, 5, 10, 20, 40)] == pytest.approx([0, 0.5, 1, 0.5, 0])
    assert schedule_value(3, 123) == 3.0


def test_milestones():
    assert [milestone_value([64, 128, 256], [10, 20], s) for s in (0, 9, 10, 19, 20, 99)] == [64, 64, 128, 128, 256, 256]
    assert milestone_value(4, [10], 50) == 4


def test_registry_unknown_type_suggests_close_match():
    with pytest.raises(UnknownTypeError) as e:
        find_part("implicit-volum", key_path="system.geometry_type")
    assert "implicit-volume" in str(e.value) and "system.geometry_type" in str(e.value)


def _experiment(**overrides):
    base = "configs/dreamfusion-sd.yaml"
    overrides.setdefault("system.prompt_processor.prompt", "a hamburger")
    args = [f"{k}={v}" for k, v in overrides.items()]
    return finalize_config(load_config(base, cli_args=args))


def test_missing_prompt_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"system\.prompt_processor\.prompt"):
        finalize_config(load_config("configs/dreamfusion-sd.yaml"))


def test_shipped_config_validates_and_resolves():
    exp = _experiment(**{"system.prompt_processor.prompt": "a red cube", "use_timestamp": "false"})
    assert exp.tag == "a_red_cube" and exp.trial_dir.endswith("dreamfusion-sd/a_red_cube")
    assert exp.system["renderer"]["radius"] == 2.0  # interpolation resolved


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("system.geometry.pos_encoding_config.n_level", 4, "system.geometry.pos_encoding_config.n_level"),
        ("system.guidance.guidance_scal", 7.5, "Did you mean 'system.guidance.guidance_scale'"),
        ("system.geometry_type", "implicit-volum", "Did you mean 'implicit-volume'"),
        ("system.guidance.guidance_scale", "high", "system.guidance.guidance_scale: expected a number"),
        ("trainer.max_step", 10, "Did you mean 'trainer.max_steps'"),
        ("checkpoint.every_n_train_step", 10, "Did you mean 'checkpoint.every_n_train_steps'"),
        ("data.elevation_rang", "[0,10]", "Did you mean 'data.elevation_range'"),
        ("system.material.ambient_only_step", 5, "Did you mean 'system.material.ambient_only_steps'"),
    ],
)
def test_bad_experiment_configs_fail_before_work(key, value, message):
    with pytest.raises((ConfigError, UnknownTypeError)) as e:
        _experiment(**{key: value})
    assert message in str(e.value)


def test_magic3d_cpu_coarse_stage_is_the_dreamfusion_cpu_recipe() -> None:
    """The two CPU recipes must not drift apart: Magic3D's coarse stage is DreamFusion's run."""
    from omegaconf import OmegaConf

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dreamfusion = OmegaConf.to_container(OmegaConf.load(os.path.join(root, "configs", "dreamfusion-cpu.yaml")))
    coarse = OmegaConf.to_container(OmegaConf.load(os.path.join(root, "configs", "magic3d-coarse-cpu.yaml")))
    for config in (dreamfusion, coarse):
        config.pop("name")
        config.pop("system_type")
    assert coarse == dreamfusion
