"""Nothing lost, nothing silent: trial folders, checkpoints and the errors a user sees.

Each test reproduces an accident (two runs in one second, a resume with the wrong recipe, a
kill -9, a full disk, a corrupt file, a typo) and checks what the user is left with.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch

from recipe_overrides import RECIPE, tiny_recipe
from threestudio_like.cli import main
from threestudio_like.config import ConfigError, finalize_config, load_config
from threestudio_like.trials import (
    CheckpointError,
    create_trial_dir,
    find_last_path,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_trial_config,
)

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
