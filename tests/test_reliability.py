"""Nothing lost, nothing silent: trial folders, checkpoints and the errors a user sees.

Each test reproduces an accident (two runs in one second, a resume with the wrong recipe, a
kill -9, a full disk, a corrupt file, a typo) and checks what the user is left with.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
import yaml
from PIL import Image

from capture_fixtures import write_blender_capture
from recipe_overrides import RECIPE, tiny_recipe
from test_convert_mvdream import mvdream  # noqa: F401  (the tiny MVDream checkpoint fixture)
from threestudio_like.cli import main
from threestudio_like.config import ConfigError
from threestudio_like.experiment import finalize_config, load_config
from threestudio_like.guidance.convert_mvdream import main as convert_main
from threestudio_like.trials import (
    PARSED_CONFIG,
    CheckpointError,
    create_trial_dir,
    find_last_path,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_trial_config,
)
from threestudio_like.utils.io import current_umask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFINE = os.path.join(ROOT, "configs", "magic3d-refine-sd.yaml")


def cli(config: str, mode: str, model_dir: str, out_dir: str, **extra: object) -> int:
    return main(["--config", config, f"--{mode}", *tiny_recipe(model_dir, out_dir, **extra)])


def trial_of(out_dir: str, name: str = "dreamfusion-sd", tag: str = "a_red_cube") -> str:
    return os.path.join(out_dir, "outputs", name, tag)


def snapshot(folder: str) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    files = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> str:
    """A finished 2-step DreamFusion run; tests that change it copy it first."""
    out = str(tmp_path_factory.mktemp("trained"))
    assert cli(RECIPE, "train", tiny_model_dir, out, **{"trainer.max_steps": 2}) == 0
    return trial_of(out)


# --------------------------------------------------------------------------- trial folders
def test_trial_folders_are_never_shared(tmp_path) -> None:
    first = create_trial_dir(str(tmp_path / "a_red_cube@20261202-103000"))
    second = create_trial_dir(str(tmp_path / "a_red_cube@20261202-103000"))
    third = create_trial_dir(str(tmp_path / "a_red_cube@20261202-103000"))
    assert len({first, second, third}) == 3 and all(os.path.isdir(p) for p in (first, second, third))
    for path in (second, third):
        os.makedirs(os.path.join(path, "ckpts"))
        open(os.path.join(path, "ckpts", "last.ckpt"), "w").close()
    # LAST takes the newest: the one that got the highest suffix
    assert find_last_path(str(tmp_path / "a_red_cube@LAST/ckpts/last.ckpt")) == os.path.join(third, "ckpts", "last.ckpt")


@pytest.mark.slow
def test_two_runs_with_one_name_keep_their_own_outputs(tiny_model_dir, tmp_path) -> None:
    """use_timestamp=false gives both runs the same trial name, as two runs in one second do."""
    assert cli(RECIPE, "train", tiny_model_dir, str(tmp_path), **{"trainer.max_steps": 2}) == 0
    first = snapshot(trial_of(str(tmp_path)))
    assert cli(RECIPE, "train", tiny_model_dir, str(tmp_path), **{"trainer.max_steps": 3}) == 0
    assert snapshot(trial_of(str(tmp_path))) == first  # the first run's checkpoint, metrics and save/ untouched
    second = trial_of(str(tmp_path)) + "-1"
    assert load_checkpoint(os.path.join(second, "ckpts", "last.ckpt"))["global_step"] == 3


# --------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_with_another_recipe_fails_before_writing_anything(tiny_model_dir, trained, tmp_path, capsys) -> None:
    before = snapshot(trained)
    ckpt = os.path.join(trained, "ckpts", "last.ckpt")
    args = tiny_recipe(tiny_model_dir, str(tmp_path), resume=ckpt, **{"system.geometry_convert_from": trained})
    args = [a for a in args if not a.startswith("system.renderer.num_samples_per_ray=")]  # no rays in a mesh stage
    code = main(["--config", REFINE, "--train", *args])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "does not match this config" in err and "missing geometry.sdf" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert snapshot(trained) == before  # parsed.yaml, checkpoints and outputs exactly as they were


@pytest.mark.slow
def test_resume_removes_partial_temporaries_and_keeps_a_changed_config(tiny_model_dir, trained, tmp_path) -> None:
    import shutil

    trial = str(tmp_path / "trial")
    shutil.copytree(trained, trial)
    stale = os.path.join(trial, "ckpts", ".tmp-abc123last.ckpt")  # what kill -9 mid-save leaves
    with open(stale, "wb") as f:
        f.write(b"\0" * 1000)
    original = open(os.path.join(trial, "configs", "parsed.yaml")).read()
    ckpt = os.path.join(trial, "ckpts", "last.ckpt")
    assert cli(RECIPE, "train", tiny_model_dir, str(tmp_path), resume=ckpt, **{"trainer.max_steps": 3}) == 0
    assert not os.path.exists(stale)
    kept = [f for f in os.listdir(os.path.join(trial, "configs")) if f.startswith("parsed-")]
    assert len(kept) == 1 and open(os.path.join(trial, "configs", kept[0])).read() == original
    assert load_checkpoint(ckpt)["global_step"] == 3


def test_stale_temporaries_are_found_in_every_folder_of_a_trial(tmp_path) -> None:
    for folder in ("ckpts", "configs", "save/it4-export"):
        os.makedirs(tmp_path / folder)
        (tmp_path / folder / ".tmp-x1model.glb").write_bytes(b"partial")
    (tmp_path / "ckpts" / "last.ckpt").write_bytes(b"kept")
    removed = remove_stale_temporaries(str(tmp_path))
    assert len(removed) == 3 and (tmp_path / "ckpts" / "last.ckpt").exists()


def test_an_unchanged_config_is_not_duplicated(tmp_path) -> None:
    exp = finalize_config(load_config(RECIPE, cli_args=["system.prompt_processor.prompt=a cube"]))
    assert write_trial_config(str(tmp_path), exp) is None
    assert write_trial_config(str(tmp_path), exp) is None
    assert os.listdir(tmp_path / "configs") == ["parsed.yaml"]


# --------------------------------------------------------------------------- checkpoint files
def test_truncated_checkpoint_is_named_as_such(trained, tmp_path) -> None:
    data = open(os.path.join(trained, "ckpts", "last.ckpt"), "rb").read()
    path = tmp_path / "last.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checkpoint is truncated or corrupt"):
        load_checkpoint(str(path))
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="checkpoint is truncated or corrupt"):
        load_checkpoint(str(path))


class NotATensor:
    """Anything pickled that is not a tensor or a plain value."""


def test_checkpoint_with_objects_is_refused_without_suggesting_unsafe_loading(tmp_path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": NotATensor()}, str(path))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(str(path))
    message = str(error.value)
    assert "run code" in message and "was not loaded" in message
    assert "weights_only" not in message


@pytest.mark.slow
def test_cli_reports_a_corrupt_resume_checkpoint_in_one_line(tiny_model_dir, trained, tmp_path, capsys) -> None:
    bad = tmp_path / "ckpts" / "last.ckpt"
    bad.parent.mkdir()
    bad.write_bytes(open(os.path.join(trained, "ckpts", "last.ckpt"), "rb").read()[:5000])
    assert cli(RECIPE, "export", tiny_model_dir, str(tmp_path), resume=str(bad)) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint is truncated or corrupt" in err and len(err.splitlines()) == 1


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "last.ckpt")
    save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def no_space(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointError, match=f"no space left writing {path}"):
        save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no partial temporary left behind


@pytest.mark.slow
def test_full_disk_during_training_is_one_line_and_keeps_the_last_checkpoint(tiny_model_dir, tmp_path, capsys, monkeypatch) -> None:
    import threestudio_like.trials as trials

    real_save, saves = torch.save, []

    def fails_at_step_4(obj, f, *args, **kwargs):  # step 2 wrote epoch=0-step=2.ckpt and last.ckpt
        saves.append(f)
        if len(saves) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(trials.torch, "save", fails_at_step_4)
    code = cli(RECIPE, "train", tiny_model_dir, str(tmp_path), **{"trainer.max_steps": 6})
    monkeypatch.setattr(trials.torch, "save", real_save)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no space left writing" in err and "Traceback" not in err
    ckpts = os.path.join(trial_of(str(tmp_path)), "ckpts")
    assert load_checkpoint(os.path.join(ckpts, "last.ckpt"))["global_step"] == 2
    assert not [f for f in os.listdir(ckpts) if f.startswith(".tmp-")]


# --------------------------------------------------------------------------- errors a user sees
def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and 1 <= len(err.splitlines()) <= 2, err
    return err


def test_yaml_syntax_error_in_the_config_names_file_line_and_column(tmp_path, capsys) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("name: x\nsystem:\n  loss: [1, 2\n  other: 3\n")
    err = one_line_error(capsys, main(["--config", str(config), "--train"]))
    assert "broken.yaml" in err and "line" in err and "column" in err


def test_yaml_syntax_error_in_an_override_names_the_override(tmp_path, capsys) -> None:
    args = tiny_recipe("unused", str(tmp_path))
    err = one_line_error(capsys, main(["--config", RECIPE, "--train", *args, "system.loss.lambda_sds=[1, 2"]))
    assert "system.loss.lambda_sds=[1, 2" in err


@pytest.mark.parametrize("steps", [0, -5])
def test_max_steps_must_be_positive(tmp_path, capsys, steps) -> None:
    args = tiny_recipe("unused", str(tmp_path), **{"trainer.max_steps": steps})
    err = one_line_error(capsys, main(["--config", RECIPE, "--train", *args]))
    assert "trainer.max_steps must be a positive" in err and "every_n_train_steps" not in err


@pytest.mark.parametrize("prompt", ["''", "'   '", ""])  # the last is `prompt=`, which YAML reads as null
def test_empty_prompt_is_refused_before_a_trial_folder_exists(tmp_path, capsys, prompt) -> None:
    args = tiny_recipe("unused", str(tmp_path), **{"system.prompt_processor.prompt": prompt})
    err = one_line_error(capsys, main(["--config", RECIPE, "--train", *args]))
    assert "prompt is empty" in err
    assert not os.path.exists(tmp_path / "outputs")


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("max_steps=5", "trainer.max_steps"),
        ("elevation_range=[0,10]", "data.elevation_range"),
        ("guidance_type=stable-diffusion-guidance", "system.guidance_type"),
        ("sed=3", "seed"),
    ],
)
def test_top_level_key_points_to_its_section(tmp_path, capsys, override, suggestion) -> None:
    args = tiny_recipe("unused", str(tmp_path))
    err = one_line_error(capsys, main(["--config", RECIPE, "--train", *args, override]))
    assert f"Did you mean '{suggestion}'" in err


def test_unknown_loss_weight_fails_before_a_trial_folder_exists(tmp_path, capsys) -> None:
    args = tiny_recipe("unused", str(tmp_path), **{"system.loss.lambda_sparsty": 1.0})
    err = one_line_error(capsys, main(["--config", RECIPE, "--train", *args]))
    assert "lambda_sparsty" in err and "lambda_sparsity" in err
    assert not os.path.exists(tmp_path / "outputs")


def test_bare_recipe_names_are_found_and_typos_get_a_suggestion(capsys) -> None:
    exp = finalize_config(load_config("dreamfusion-cpu", cli_args=["system.prompt_processor.prompt=a red cube"]))
    assert exp.name == "dreamfusion-cpu"
    with pytest.raises(ConfigError, match="Did you mean 'dreamfusion-cpu'"):
        load_config("dreamfusion-cpuu")


def test_threestudio_only_options_warn_that_they_have_no_effect(tmp_path) -> None:
    with pytest.warns(UserWarning, match="spawn is accepted for threestudio compatibility"):
        finalize_config(load_config(RECIPE, cli_args=["system.prompt_processor.prompt=a cube", "system.prompt_processor.spawn=true"]))
    with pytest.warns(UserWarning, match="n_gpus"):
        finalize_config(load_config(RECIPE, cli_args=["system.prompt_processor.prompt=a cube", "n_gpus=4"]))


# --------------------------------------------------------------------------- end of training
@pytest.mark.slow
def test_final_export_of_an_empty_field_falls_back_to_auto_and_the_run_succeeds(tiny_model_dir, tmp_path, capsys) -> None:
    """threestudio's dreamfusion-sd.yaml meshes at its default level 25, which 4 steps never reach."""
    code = cli(RECIPE, "train", tiny_model_dir, str(tmp_path), **{"system.geometry.isosurface_threshold": 25.0})
    out = capsys.readouterr().out
    assert code == 0
    assert "exporting at isosurface_threshold=auto instead" in out
    export = os.path.join(trial_of(str(tmp_path)), "save", "it4-export")
    assert os.path.isfile(os.path.join(export, "model.obj"))


@pytest.mark.slow
def test_explicit_export_of_an_empty_field_is_a_one_line_error(tiny_model_dir, trained, tmp_path, capsys) -> None:
    ckpt = os.path.join(trained, "ckpts", "last.ckpt")
    code = cli(RECIPE, "export", tiny_model_dir, str(tmp_path), resume=ckpt, **{"system.geometry.isosurface_threshold": 1e9})
    err = one_line_error(capsys, code)
    assert "isosurface" in err.lower() or "surface" in err.lower()


def test_partial_model_download_fails_before_a_trial_folder_exists(tiny_model_dir, tmp_path, capsys) -> None:
    """The prompt processor's text encoder loads at the first step; its absence is found up front."""
    import shutil

    partial = str(tmp_path / "partial-model")
    shutil.copytree(tiny_model_dir, partial, ignore=shutil.ignore_patterns("text_encoder"))
    err = one_line_error(capsys, cli(RECIPE, "train", partial, str(tmp_path)))
    assert "no 'text_encoder/' subfolder" in err
    assert not os.path.exists(tmp_path / "outputs")


def test_ranks_started_by_a_multi_gpu_launcher_share_rank_0s_trial(tmp_path, monkeypatch) -> None:
    """Each rank re-runs the CLI (with its own clock): only rank 0 creates and writes the trial."""
    from threestudio_like.cli import TRIAL_DIR_VARIABLE, prepare_trial_dir

    exp = finalize_config(load_config(RECIPE, cli_args=["system.prompt_processor.prompt=a cube"]))
    monkeypatch.delenv(TRIAL_DIR_VARIABLE, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    first = prepare_trial_dir(str(tmp_path / "a_cube@103000"), exp, resumed=False)
    monkeypatch.setenv("LOCAL_RANK", "1")  # the launcher passes the environment on, with the rank
    assert prepare_trial_dir(str(tmp_path / "a_cube@103001"), exp, resumed=False) == first
    assert os.listdir(tmp_path) == ["a_cube@103000"]


# --------------------------------------------------------------------------- round two: nothing lost
def metric_steps(trial: str, log: str = "metrics.csv") -> list[int]:
    with open(os.path.join(trial, "csv_logs", log), newline="") as f:
        return [int(float(row["step"])) for row in csv.DictReader(f) if row.get("train/loss")]


@pytest.fixture(scope="module")
def logged(tiny_model_dir, tmp_path_factory) -> str:
    """A finished 4-step run that logged every step, with checkpoints at steps 2 and 4."""
    out = str(tmp_path_factory.mktemp("logged"))
    assert cli(RECIPE, "train", tiny_model_dir, out, **{"trainer.log_every_n_steps": 1, "system.loggers.tensorboard": "true"}) == 0
    return trial_of(out)


def tensorboard_steps(trial: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(trial, "tb_logs"))
    events.Reload()
    return [e.step for e in events.Scalars("train/loss")]


def copy_trial(trial: str, tmp_path) -> str:
    copy = os.path.join(str(tmp_path), "outputs", "dreamfusion-sd", "a_red_cube")
    shutil.copytree(trial, copy)
    return copy


def test_kept_metrics_writer_keeps_rows_before_the_resumed_step_and_appends(tmp_path) -> None:
    from threestudio_like.loggers import KeptMetricsWriter

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss\n" + "".join(f"0,{s},{s}.5\n" for s in range(6)))
    writer = KeptMetricsWriter(str(tmp_path), replace_from_step=3)  # an attempt went on to step 5
    writer.log_metrics({"train/loss": 30.0, "val/psnr": 20.0}, step=3)  # a new column as well
    writer.save()
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert rows[1]["train/loss"] == "1.5" and rows[3]["val/psnr"] == "20.0"


def test_evaluation_logs_go_beside_the_training_log(tmp_path) -> None:
    from threestudio_like.loggers import build_loggers

    for mode, folder in (("train", "csv_logs"), ("test", "csv_logs/test"), ("validate", "csv_logs/validate")):
        [csv_logger] = build_loggers(str(tmp_path), {}, mode=mode, resumed_step=3 if mode == "train" else None)
        assert os.path.normpath(csv_logger.log_dir) == os.path.join(str(tmp_path), folder)


@pytest.mark.slow
def test_test_and_validate_keep_the_training_log_and_label_outputs_with_the_checkpoint_step(
    tiny_model_dir, logged, tmp_path
) -> None:
    trial = copy_trial(logged, tmp_path)
    with open(os.path.join(trial, "csv_logs", "metrics.csv"), "rb") as f:
        training_log = f.read()
    assert metric_steps(trial) == [0, 1, 2, 3]
    ckpts = os.path.join(trial, "ckpts")
    step_2 = os.path.join(ckpts, next(f for f in os.listdir(ckpts) if "step=2" in f))
    for mode, ckpt in (("test", step_2), ("test", os.path.join(ckpts, "last.ckpt")), ("validate", step_2)):
        assert cli(RECIPE, mode, tiny_model_dir, str(tmp_path), resume=ckpt) == 0
    with open(os.path.join(trial, "csv_logs", "metrics.csv"), "rb") as f:
        assert f.read() == training_log
    save = os.listdir(os.path.join(trial, "save"))
    assert "it2-test.mp4" in save and "it4-test.mp4" in save  # two checkpoints, two videos
    assert any(f.startswith("it2-") and f.endswith(".png") for f in save)  # --validate of step 2


@pytest.mark.slow
def test_a_resumed_run_keeps_earlier_rows_and_replaces_only_those_after_its_step(tiny_model_dir, logged, tmp_path) -> None:
    trial = copy_trial(logged, tmp_path)
    ckpts = os.path.join(trial, "ckpts")
    step_2 = os.path.join(ckpts, next(f for f in os.listdir(ckpts) if "step=2" in f))
    # from step 2 of a run that went on to 4: steps 2 and 3 are written again, once
    args = {"trainer.log_every_n_steps": 1, "system.loggers.tensorboard": "true"}
    assert cli(RECIPE, "train", tiny_model_dir, str(tmp_path), resume=step_2, **args) == 0
    assert metric_steps(trial) == [0, 1, 2, 3]
    assert tensorboard_steps(trial) == [0, 1, 2, 3]
    # a finished run resumed to 6 keeps all four rows and adds two
    last = os.path.join(ckpts, "last.ckpt")
    assert cli(RECIPE, "train", tiny_model_dir, str(tmp_path), resume=last, **args, **{"trainer.max_steps": 6}) == 0
    steps = metric_steps(trial)
    # (Lightning numbers the rows of a run resumed from an end-of-fit checkpoint from step + 1)
    assert steps[:4] == [0, 1, 2, 3] and len(steps) == 6 and steps == sorted(set(steps)), steps


@pytest.mark.slow
def test_resuming_with_only_run_control_keys_changed_keeps_the_config_and_says_nothing(
    tiny_model_dir, logged, tmp_path, capsys
) -> None:
    trial = copy_trial(logged, tmp_path)
    parsed = os.path.join(trial, "configs", "parsed.yaml")
    with open(parsed, "rb") as f:
        before = f.read()
    resume = os.path.join(trial, "ckpts", "last.ckpt")
    same = {"trainer.log_every_n_steps": 1, "system.loggers.tensorboard": "true",
            "system.prompt_processor.cache_dir": f"{logged.split(os.sep + 'outputs')[0]}/cache"}
    assert cli(RECIPE, "train", tiny_model_dir, str(tmp_path), resume=resume, **same) == 0
    assert "config differs" not in capsys.readouterr().out
    assert os.listdir(os.path.dirname(parsed)) == ["parsed.yaml"]
    with open(parsed, "rb") as f:
        assert f.read() == before


@pytest.mark.slow
def test_outputs_get_the_users_umask(logged) -> None:
    expected = 0o666 & ~current_umask()
    for path in (os.path.join(logged, "ckpts", "last.ckpt"), os.path.join(logged, "configs", "parsed.yaml"),
                 os.path.join(logged, "save", "it4-test.mp4")):
        assert stat.S_IMODE(os.stat(path).st_mode) == expected, path


def capture_recipe(dataroot: object, out: object, *extra: str) -> list[str]:
    return ["--config", "nerf-capture", "--train", f"data.dataroot={dataroot}", f"exp_root_dir={out}",
            "use_timestamp=false", "trainer.max_steps=2", "data.n_test_views=2", "system.geometry.isosurface_resolution=32",
            "system.exporter.save_texture=false", "system.renderer.num_samples_per_ray=32", *extra]


BAD_CAPTURES = {
    "missing folder": lambda root: shutil.rmtree(root),
    "bad JSON": lambda root: (root / "transforms_train.json").write_text("{ not json"),
    "missing images": lambda root: [p.unlink() for p in root.glob("*/*.png")],
    "malformed matrix": lambda root: _edit_frame(root, lambda f: f.update(transform_matrix=[[1, 0], [0, 1]])),
    "unreadable image": lambda root: (root / "train" / "r_1.png").write_bytes(b"not a png"),
    "wrong-sized image": lambda root: Image.new("RGBA", (9, 7)).save(root / "train" / "r_1.png"),
    "one view": lambda root: _keep_one_frame(root),
}


def _edit_frame(root, edit) -> None:
    path = root / "transforms_train.json"
    meta = json.loads(path.read_text())
    edit(meta["frames"][0])
    path.write_text(json.dumps(meta))


def _keep_one_frame(root) -> None:
    (root / "transforms_val.json").unlink()
    path = root / "transforms_train.json"
    meta = json.loads(path.read_text())
    meta["frames"] = meta["frames"][:1]
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("case", sorted(BAD_CAPTURES))
def test_bad_capture_data_fails_before_a_trial_folder_exists(tmp_path, capsys, case) -> None:
    root = tmp_path / "capture"
    write_blender_capture(root, shape="cube", colour="red", n_views=6, size=16, holdout=1)
    BAD_CAPTURES[case](root)
    out = tmp_path / "out"
    err = one_line_error(capsys, main(capture_recipe(root, out)))
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))  # no trial folder, nothing else
    if case == "one view":
        assert "at least two" in err


@pytest.mark.slow
def test_a_failed_resume_changes_nothing_in_the_trial(tmp_path, capsys) -> None:
    root = tmp_path / "capture"
    write_blender_capture(root, shape="cube", colour="red", n_views=6, size=16, holdout=1)
    out = tmp_path / "out"
    assert main(capture_recipe(root, out, "trainer.log_every_n_steps=1")) == 0
    capsys.readouterr()
    trial = str(out / "nerf-capture" / "capture")
    before = snapshot(trial)
    (root / "transforms_train.json").write_text("{ broken")
    resume = os.path.join(trial, "ckpts", "last.ckpt")
    one_line_error(capsys, main(capture_recipe(root, out, f"resume={resume}", "trainer.max_steps=4")))
    assert snapshot(trial) == before  # config, metrics, checkpoints: byte for byte


@pytest.mark.slow
def test_system_weights_of_another_recipe_fail_in_one_line_before_a_trial_folder(tiny_model_dir, trained, tmp_path, capsys) -> None:
    weights = os.path.join(trained, "ckpts", "last.ckpt")
    code = cli(RECIPE, "train", tiny_model_dir, str(tmp_path), **{"system.weights": weights,
                                                                   "system.geometry.pos_encoding_config.n_levels": 5})
    err = one_line_error(capsys, code)
    assert "system.weights" in err and "shape of" in err
    assert not os.path.exists(os.path.join(str(tmp_path), "outputs"))


@pytest.mark.parametrize("gpu", ["abc", "0,x", "-1", ""])
def test_gpu_must_be_a_device_list(tmp_path, capsys, gpu) -> None:
    err = one_line_error(capsys, main(["--config", RECIPE, "--train", "--gpu", gpu, *tiny_recipe("unused", str(tmp_path))]))
    assert "--gpu" in err and "0,1" in err


@pytest.mark.parametrize("root", ["/proc/outputs", "FILE/outputs"])
def test_an_unwritable_output_folder_is_named_before_anything_is_written(tmp_path, capsys, root) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    root = root.replace("FILE", str(blocker))
    args = tiny_recipe("unused", str(tmp_path), exp_root_dir=root)
    err = one_line_error(capsys, main(["--config", RECIPE, "--train", *args]))
    assert f"cannot write to the output folder {root}" in err and "exp_root_dir" in err


def test_a_full_disk_at_the_start_is_one_line_and_leaves_no_trial_folder(tiny_model_dir, tmp_path, capsys, monkeypatch) -> None:
    import threestudio_like.trials as trials

    def no_space(path: str, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(trials, "atomic_write_text", no_space)
    err = one_line_error(capsys, cli(RECIPE, "train", tiny_model_dir, str(tmp_path)))
    assert "no space left writing" in err and "parsed.yaml" in err
    assert os.listdir(os.path.join(str(tmp_path), "outputs", "dreamfusion-sd")) == []  # the new trial folder removed again


def test_torchs_short_write_is_a_full_disk(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "last.ckpt")
    save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def short_write(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(CheckpointError, match=r"no space left writing .*needs about .* MB, .* MB free"):
        save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))


INTERRUPT = """
import os, signal, sys
from threestudio_like.systems.base import BaseLift3DSystem
from threestudio_like.export.exporter import MeshExporter
from threestudio_like.entry import main

def sigint(): os.kill(os.getpid(), signal.SIGINT)

def patch(cls, name, before):
    original = getattr(cls, name)
    def wrapped(self, *args, **kwargs):
        before(self)
        return original(self, *args, **kwargs)
    setattr(cls, name, wrapped)

where = sys.argv[1]
if where == "turntable":
    patch(BaseLift3DSystem, "test_step", lambda self: sigint())
elif where == "export":
    patch(MeshExporter, "__call__", lambda self: sigint())
elif where == "training":  # Ctrl-C twice at step 3
    patch(BaseLift3DSystem, "on_train_batch_start", lambda self: (sigint(), sigint()) if self.global_step == 3 else None)
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "where, said",
    [
        ("turntable", "Interrupted while rendering the turntable: "),
        ("export", "Interrupted during the export: "),
        ("training", "Stopped by a second Ctrl-C: the newest checkpoint is "),
    ],
)
def test_ctrl_c_anywhere_says_what_was_saved_and_exits_130(tiny_model_dir, tmp_path, where, said) -> None:
    args = ["--config", RECIPE, "--train", *tiny_recipe(tiny_model_dir, str(tmp_path), **{"trainer.max_steps": 6})]
    proc = subprocess.run([sys.executable, "-c", INTERRUPT, where, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    ckpt = os.path.join(trial_of(str(tmp_path)), "ckpts", "last.ckpt")
    assert f"resume={ckpt}" in proc.stderr
    assert load_checkpoint(ckpt)["global_step"] == (2 if where == "training" else 6)


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.6, 1.0, 1.4])  # seconds into importing torch and Lightning
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path, after) -> None:
    args = ["--config", RECIPE, "--train", *tiny_recipe("unused", str(tmp_path))]
    proc = subprocess.Popen([sys.executable, "-m", "threestudio_like", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Interrupted during start-up: nothing was written." in err, err
    assert "Traceback" not in err and not os.path.exists(os.path.join(str(tmp_path), "outputs"))


def test_an_error_starts_on_its_own_line_after_the_progress_bar(capsys) -> None:
    from unittest.mock import Mock

    from lightning.pytorch import LightningModule, Trainer

    from threestudio_like.trainer import StepProgressBar

    progress, trainer = StepProgressBar(), Mock(spec=Trainer, max_steps=10, global_step=3, callback_metrics={})
    module = Mock(spec=LightningModule)
    progress.on_train_start(trainer, module)
    progress.on_exception(trainer, module, RuntimeError("diverged"))  # Lightning's hook when a step raises
    print("error: Training diverged at step 3", file=sys.stderr)
    assert "\nerror: Training diverged" in capsys.readouterr().err


# --------------------------------------------------------------------------- round two: converter, prompts, interpolations, ranges
@pytest.mark.parametrize("mvdream", ["v2"], indirect=True)
def test_converter_never_deletes_its_input_and_overwrites_only_a_converted_folder(mvdream, tmp_path, capsys) -> None:
    downloads = tmp_path / "d"
    downloads.mkdir()
    checkpoint, config = downloads / "mv.pt", downloads / "mv.yaml"
    shutil.copy(mvdream["checkpoint"], checkpoint)
    shutil.copy(mvdream["yaml"], config)
    (downloads / "notes.txt").write_text("the user's own file")
    before = snapshot(downloads)
    args = ["--checkpoint", str(checkpoint), "--config", str(config)]
    # the inputs' folder, a folder above it, the checkpoint itself
    for out in (downloads, tmp_path, checkpoint):
        err = one_line_error(capsys, convert_main([*args, "--out", str(out), "--overwrite"]))
        assert "the input" in err and "would delete that input" in err and "--out" in err
    assert snapshot(downloads) == before  # the same files with the same bytes

    # a converted folder: --overwrite replaces its entries and keeps the rest
    converted = tmp_path / "converted"
    assert convert_main([*args, "--out", str(converted)]) == 0
    (converted / "README.md").write_text("kept")
    assert convert_main([*args, "--out", str(converted), "--overwrite"]) == 0
    assert (converted / "README.md").read_text() == "kept"
    assert sorted(os.listdir(converted)) == ["README.md", "model_index.json", "scheduler", "unet"]
    assert not os.path.exists(str(converted) + ".converting")
    capsys.readouterr()

    # a folder the converter did not write (another model, a download folder) is never replaced
    other = tmp_path / "sd21"
    (other / "unet").mkdir(parents=True)
    (other / "unet" / "weights.bin").write_bytes(b"5 GB of weights")
    err = one_line_error(capsys, convert_main([*args, "--out", str(other), "--overwrite"]))
    assert "--overwrite replaces only a folder this converter wrote" in err
    assert snapshot(other) == {os.path.join("unet", "weights.bin"): b"5 GB of weights"}


# --------------------------------------------------------------------------- 13: not a checkpoint
class Payload:
    """An object a pickle would rebuild (and so could run code)."""


NOT_CHECKPOINTS = {
    "text": (b"model.diffusion_model.weights = [1, 2, 3]\n" * 4, "not a PyTorch checkpoint"),
    "random": (bytes(range(7, 256)) * 20, "not a PyTorch checkpoint"),
    "pickle": (pickle.dumps({"model": Payload()}), "can run code when loaded, so it was not loaded"),
}


@pytest.mark.parametrize("kind", sorted(NOT_CHECKPOINTS))
def test_converter_says_a_file_is_not_a_checkpoint_without_torchs_unsafe_advice(kind, tmp_path, capsys) -> None:
    content, expected = NOT_CHECKPOINTS[kind]
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(content)
    err = one_line_error(capsys, convert_main(["--checkpoint", str(path), "--out", str(tmp_path / "out")]))
    assert expected in err and str(path) in err
    assert "weights_only" not in err and "trusted source" not in err
    assert not (tmp_path / "out").exists() and path.read_bytes() == content


# --------------------------------------------------------------------------- 8: long prompts
LONG_PROMPT = (
    "a red cube, highly detailed, studio lighting, 8k, octane render, trending on artstation, sharp focus, "
    "intricate details, cinematic composition, volumetric lighting, ultra realistic, physically based "
    "rendering, hdr, dslr photograph, award winning, masterpiece quality render"
)


def test_a_long_prompt_gets_a_short_unique_trial_folder_and_keeps_the_whole_prompt(tmp_path) -> None:
    assert len(LONG_PROMPT) > 255
    exps = []
    for prompt in (LONG_PROMPT + ", blue", LONG_PROMPT + ", green"):  # differ only at the end
        cfg = load_config("dreamfusion-cpu", cli_args=[f"system.prompt_processor.prompt={prompt}", f"exp_root_dir={tmp_path}"])
        exp = finalize_config(cfg)
        trial = create_trial_dir(exp.trial_dir)  # OSError: File name too long, before
        write_trial_config(trial, exp)
        with open(os.path.join(trial, PARSED_CONFIG)) as f:
            assert yaml.safe_load(f)["system"]["prompt_processor"]["prompt"] == prompt
        exps.append(exp)
    names = [os.path.basename(e.trial_dir) for e in exps]
    assert names[0] != names[1] and all(len(n.encode()) <= 128 for n in names), names
    assert all(n.startswith("a_red_cube,_highly_detailed") for n in names)
    # a later stage finds the long prompt's trial by <prompt>@LAST, as it does a short one's
    os.makedirs(os.path.join(exps[1].trial_dir, "ckpts"))
    open(os.path.join(exps[1].trial_dir, "ckpts", "last.ckpt"), "wb").close()
    wanted = os.path.join(exps[1].exp_dir, (LONG_PROMPT + ", green").replace(" ", "_") + "@LAST", "ckpts", "last.ckpt")
    assert find_last_path(wanted) == os.path.join(exps[1].trial_dir, "ckpts", "last.ckpt")


# --------------------------------------------------------------------------- 10: interpolations
@pytest.mark.parametrize(
    "override, expected",
    [
        ("tag=${system.nope}", ["tag: ${system.nope}", "refers to 'system.nope'", "not in the config"]),
        ("system.loss.lambda_sds=${system.loss.lambda_sdss}", ["system.loss.lambda_sds", "Did you mean 'system.loss.lambda_sds'"]),
        ("tag=${foo:1}", ["tag: ${foo:1}", "unknown resolver 'foo'", "rmspace"]),
    ],
)
def test_a_broken_interpolation_is_one_line_naming_the_key(tmp_path, capsys, override, expected) -> None:
    args = tiny_recipe("unused", str(tmp_path))
    err = one_line_error(capsys, main(["--config", RECIPE, "--train", *args, override]))
    assert all(part in err for part in expected), err
    assert "omegaconf" not in err and "full_key" not in err
    assert not os.path.exists(tmp_path / "outputs")


# --------------------------------------------------------------------------- 11: numbers out of range
@pytest.mark.parametrize(
    "recipe, override, expected",
    [
        ("prolificdreamer-cpu", "system.guidance.lora_rank=0", "system.guidance.lora_rank must be at least 1"),
        ("prolificdreamer-cpu", "system.guidance.lora_n_timestamp_samples=0", "system.guidance.lora_n_timestamp_samples must be at least 1"),
        ("dreamfusion-cpu", "system.guidance.min_step_percent=1.5", "system.guidance.min_step_percent must be between 0 and 1"),
        ("dreamfusion-cpu", "system.guidance.max_step_percent=[[0,0.98],[100,0.01]]", "exceeds system.guidance.max_step_percent"),
        ("dreamfusion-cpu", "system.renderer.num_samples_per_ray=0", "system.renderer.num_samples_per_ray must be at least 1"),
        ("dreamfusion-cpu", "system.renderer.occupancy_grid_resolution=0", "system.renderer.occupancy_grid_resolution must be at least 1"),
        ("dreamfusion-cpu", "system.geometry.isosurface_resolution=1", "system.geometry.isosurface_resolution must be at least 2"),
        ("dreamfusion-cpu", "system.exporter.isosurface_resolution=1", "system.exporter.isosurface_resolution must be at least 2"),
        ("dreamfusion-cpu", "system.exporter.texture_size=0", "system.exporter.texture_size must be at least 16"),
        ("dreamfusion-cpu", "trainer.val_check_interval=0", "trainer.val_check_interval must be greater than 0"),
        ("dreamfusion-cpu", "trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be at least 1"),
        ("dreamfusion-cpu", "checkpoint.every_n_train_steps=-1", "checkpoint.every_n_train_steps must be at least 0"),
    ],
)
def test_a_number_out_of_range_is_refused_naming_its_key(tmp_path, capsys, recipe, override, expected) -> None:
    # a short run, so that a check that no longer fires fails the test in seconds, not after a training run
    short = ["trainer.max_steps=1", "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16", "data.n_test_views=1"]
    args = ["system.prompt_processor.prompt=a red cube", f"exp_root_dir={tmp_path / 'outputs'}", *short, override]
    err = one_line_error(capsys, main(["--config", recipe, "--train", *args]))
    assert expected in err, err
    assert not os.path.exists(tmp_path / "outputs")


# --------------------------------------------------------------------------- 14: one-frame captures
