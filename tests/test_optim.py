"""Optimiser construction from threestudio-style configs, with scheduled learning rates."""

import warnings

import pytest
from torch import nn

from threestudio_like.config import ConfigError
from threestudio_like.systems.optim import build_optimizer, build_scheduler


class Parts(nn.Module):
    def __init__(self):
        super().__init__()
        self.geometry = nn.Linear(2, 2)
        self.background = nn.Linear(2, 2)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)


def test_param_groups_follow_listed_parts_and_lr_schedules():
    cfg = {"name": "Adam", "args": {"betas": [0.9, 0.99]},
           "params": {"geometry": {"lr": [0, 0.1, 0.0, 10]}, "background": {"lr": 0.001}}}
    optimizer, lambdas = build_optimizer(Parts(), cfg)
    assert [g["name"] for g in optimizer.param_groups] == ["geometry", "background"]
    sched = build_scheduler(optimizer, None, lambdas)["scheduler"]
    lrs = []
    for _ in range(12):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        sched.step()
    assert lrs[0] == pytest.approx([0.1, 0.001])
    assert lrs[5] == pytest.approx([0.05, 0.001])
    assert lrs[11] == pytest.approx([0.0, 0.001])


def test_unknown_part_optimizer_and_argument_are_clear_errors():
    with pytest.raises(ConfigError, match="Did you mean 'geometry'"):
        build_optimizer(Parts(), {"params": {"geometri": {"lr": 0.1}}})
    with pytest.raises(ConfigError, match="Did you mean 'Adam'"):
        build_optimizer(Parts(), {"name": "Adamm"})
    with pytest.raises(ConfigError, match="system.optimizer.args.bettas"):
        build_optimizer(Parts(), {"args": {"bettas": [0.9, 0.99]}})


def test_torch_scheduler_by_name():
    optimizer, lambdas = build_optimizer(Parts(), {"args": {"lr": 1.0}})
    sched = build_scheduler(optimizer, {"name": "ExponentialLR", "args": {"gamma": 0.5}}, lambdas)
    optimizer.step()
    sched["scheduler"].step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def test_top_level_lr_unused_by_every_group_is_warned_about():
    cfg = {"args": {"lr": 0.05}, "params": {"geometry": {"lr": 0.01}, "background": {"lr": 0.001}}}
    with pytest.warns(UserWarning, match=r"args.lr \(0.05\) is unused.*\(geometry, background\)"):
        optimizer, _ = build_optimizer(Parts(), cfg)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.001]


def test_top_level_lr_used_as_a_group_default_is_not_warned_about():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = {"args": {"lr": 0.05}, "params": {"geometry": {"lr": 0.01}, "background": {}}}
        optimizer, _ = build_optimizer(Parts(), cfg)
        build_optimizer(Parts(), {"args": {"lr": 0.05}})
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.05]
