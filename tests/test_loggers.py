"""system.loggers: CSV always, TensorBoard / wandb through Lightning's loggers when configured."""

from __future__ import annotations

import glob
import importlib.util
import os

import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from recipe_overrides import RECIPE, tiny_recipe
from threestudio_like import loggers as loggers_module
from threestudio_like.cli import main
from threestudio_like.config import ConfigError
from threestudio_like.experiment import ExperimentConfig
from threestudio_like.loggers import KeptCSVLogger, build_loggers, check_loggers
from threestudio_like.trainer import build_trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# threestudio's default section: present but off
THREESTUDIO_WANDB = {"wandb": {"enable": False, "project": "threestudio", "name": "None"}}


def _hide_modules(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


def test_csv_only_by_default(tmp_path) -> None:
    (csv,) = build_loggers(str(tmp_path), {})
    assert isinstance(csv, CSVLogger)
    assert os.path.normpath(csv.log_dir) == os.path.join(str(tmp_path), "csv_logs")


def test_disabled_wandb_section_is_accepted(tmp_path, monkeypatch) -> None:
    # the section threestudio's configs carry must load even where wandb is not installed
    _hide_modules(monkeypatch, "wandb")
    assert [type(l) for l in build_loggers(str(tmp_path), THREESTUDIO_WANDB)] == [KeptCSVLogger]


def test_tensorboard_writes_event_files(tmp_path) -> None:
    import tensorboard  # noqa: F401  (declared in the test extra: missing is a failure, not a skip)
    csv, tb = build_loggers(str(tmp_path), {"tensorboard": True, **THREESTUDIO_WANDB})
    assert isinstance(tb, TensorBoardLogger)
    tb.log_metrics({"train/loss": 1.0}, step=0)
    tb.finalize("success")
    assert glob.glob(os.path.join(str(tmp_path), "tb_logs", "events.out.tfevents.*"))


@pytest.mark.parametrize("section", [True, None, {}, {"enable": True}, {"name": "tb"}])
def test_tensorboard_section_forms(section, tmp_path) -> None:
    import tensorboard  # noqa: F401  (declared in the test extra: missing is a failure, not a skip)
    assert "tensorboard" in check_loggers({"tensorboard": section})


@pytest.mark.parametrize("section", [False, {"enable": False}])
def test_tensorboard_off(section) -> None:
    assert check_loggers({"tensorboard": section}) == {}


def test_trainer_uses_configured_loggers(tmp_path) -> None:
    import tensorboard  # noqa: F401  (declared in the test extra: missing is a failure, not a skip)
    exp = ExperimentConfig(trial_dir=str(tmp_path), system={"loggers": {"tensorboard": {"enable": True}}})
    trainer, _ = build_trainer(exp, "cpu", 1)
    assert [type(l) for l in trainer.loggers] == [KeptCSVLogger, TensorBoardLogger]
    assert os.path.normpath(trainer.loggers[1].log_dir) == os.path.join(str(tmp_path), "tb_logs")


def test_unknown_logger_suggests_the_close_name(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"Unknown logger 'system.loggers.tensorbord'. Did you mean 'system.loggers.tensorboard'\?"):
        build_loggers(str(tmp_path), {"tensorbord": True})
    assert not os.listdir(tmp_path)  # checked before anything is created


def test_unknown_logger_setting_suggests_the_close_key() -> None:
    with pytest.raises(ConfigError, match=r"'system.loggers.wandb.projct'. Did you mean 'system.loggers.wandb.project'\?"):
        check_loggers({"wandb": {"enable": False, "projct": "x"}})


def test_enable_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="system.loggers.wandb.enable must be true or false"):
        check_loggers({"wandb": {"enable": "yes"}})


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
def test_missing_extra_is_a_one_line_error_naming_it(kind, monkeypatch) -> None:
    _hide_modules(monkeypatch, "tensorboard", "tensorboardX", "wandb")
    with pytest.raises(ConfigError) as err:
        check_loggers({kind: {"enable": True}})
    message = str(err.value)
    assert f'pip install "threestudio-like[{kind}]"' in message and "\n" not in message


def test_wandb_name_none_means_no_name(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb", reason="wandb is an optional extra")
    monkeypatch.setenv("WANDB_MODE", "offline")
    _, wandb_logger = build_loggers(str(tmp_path), {"wandb": {"enable": True, "project": "p", "name": "None", "offline": True}})
    assert wandb_logger._wandb_init.get("name") is None
    assert wandb_logger._wandb_init["project"] == "p"


def test_optional_str() -> None:
    assert loggers_module._optional_str("None") is None
    assert loggers_module._optional_str(None) is None
    assert loggers_module._optional_str("run-1") == "run-1"


@pytest.mark.slow
def test_training_run_writes_tensorboard_events(tiny_model_dir, tmp_path) -> None:
    import tensorboard  # noqa: F401  (declared in the test extra: missing is a failure, not a skip)
    args = tiny_recipe(tiny_model_dir, str(tmp_path), **{
        "trainer.max_steps": 2, "trainer.val_check_interval": 2, "checkpoint.every_n_train_steps": 2,
        "system.loggers.tensorboard.enable": "true", "system.loggers.wandb.enable": "false",
    })
    assert main(["--config", os.path.join(ROOT, RECIPE), "--train", *args]) == 0
    trial = os.path.join(str(tmp_path), "outputs", "dreamfusion-sd", "a_red_cube")
    events = glob.glob(os.path.join(trial, "tb_logs", "events.out.tfevents.*"))
    assert events and os.path.getsize(events[0]) > 0
    assert os.path.isfile(os.path.join(trial, "csv_logs", "metrics.csv"))
    # the scalars the system logs are in the event file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(trial, "tb_logs"))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
