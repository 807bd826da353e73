"""Finding a previous stage: LAST, trial folders, clear errors."""

from __future__ import annotations

import os

import pytest

from threestudio_like.systems.handover import find_last_path, resolve_checkpoint


def make_trial(root, name: str, with_ckpt: bool = True) -> str:
    trial = root / "outputs" / "magic3d-coarse-cpu" / name
    (trial / "ckpts").mkdir(parents=True)
    if with_ckpt:
        (trial / "ckpts" / "last.ckpt").write_bytes(b"x")
    return str(trial)


def test_last_picks_the_newest_trial_with_the_rest_of_the_path(tmp_path) -> None:
    make_trial(tmp_path, "a_red_cube@20261122-010000")
    newest = make_trial(tmp_path, "a_red_cube@20261122-020000")
    make_trial(tmp_path, "a_red_cube@20261122-030000", with_ckpt=False)  # crashed before a checkpoint
    make_trial(tmp_path, "a_blue_cube@20261122-040000")  # another prompt
    base = str(tmp_path / "outputs" / "magic3d-coarse-cpu")
    assert find_last_path(f"{base}/a_red_cube@LAST/ckpts/last.ckpt") == f"{newest}/ckpts/last.ckpt"
    assert resolve_checkpoint(f"{base}/a red cube@LAST") == os.path.join(newest, "ckpts", "last.ckpt")
    assert find_last_path(f"{base}/a_red_cube@20261122-010000") == f"{base}/a_red_cube@20261122-010000"


def test_missing_stage_errors_say_what_to_check(tmp_path) -> None:
    make_trial(tmp_path, "a_red_cube@20261122-010000")
    base = tmp_path / "outputs" / "magic3d-coarse-cpu"
    with pytest.raises(FileNotFoundError, match="no trial matches"):
        find_last_path(f"{base}/a_green_cone@LAST")
    with pytest.raises(FileNotFoundError, match="no folder"):
        find_last_path(str(tmp_path / "elsewhere" / "x@LAST"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_checkpoint(str(base / "a_red_cube@20261122-010000" / "ckpts" / "epoch=0.ckpt"))
