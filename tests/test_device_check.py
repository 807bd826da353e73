"""The prepared GPU check and the full-size benchmark: their carry check, log reading and projection."""

from __future__ import annotations

import os
import subprocess

from benchmarks.bench_fullsize import project, resolve_stages
from benchmarks.device_check import backends_used

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_carry_folder_without_the_wheels_stops_before_anything_runs(tmp_path) -> None:
    (tmp_path / "diffusers-0.42.1-py3-none-any.whl").write_bytes(b"")
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "device_check.sh"), "--dry-run", "--wheels", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "lacks wheels for: antlr4-python3-runtime omegaconf trimesh" in done.stderr
    assert "diffusers" not in done.stderr.split("lacks wheels for:")[1] and "prepare_device_check.sh" in done.stderr


def test_backends_are_read_from_the_run_log_once_each(tmp_path) -> None:
    log = tmp_path / "run.log"
    log.write_text("train:   0%| backend: hash grid -> torch (the inputs are on cpu, not CUDA)\n"
                   "backend: rasteriser -> nvdiffrast (CUDA context)\nbackend: hash grid -> torch (again)\n")
    assert backends_used(str(log)) == "hash grid: torch; rasteriser: nvdiffrast"


def test_a_phase_too_big_for_the_machine_is_projected_linearly_in_pixels() -> None:
    def run(pixels: float, peak: float) -> dict:
        return {"exit": 0, "peak_bytes": peak, "profile": {"seconds_per_step": pixels / 1000,
                                                           "forward_flops": {"render": pixels, "unet": 100},
                                                           "backward_flops": {"render": 2 * pixels}}}

    result = project([run(64 * 64, 10.0 + 64 * 64), run(128 * 128, 10.0 + 128 * 128)], (64, 128), 512)
    assert result["peak_bytes"] == 10.0 + 512 * 512 and result["projected_from"] == (64, 128)
    assert result["profile"]["forward_flops"] == {"render": 512 * 512, "unet": 100}
    assert result["profile"]["total_flops"] == 3 * 512 * 512 + 100


def test_later_stages_start_from_the_trial_of_their_earlier_row() -> None:
    overrides = {"system.geometry_convert_from": "{trial:magic3d-coarse-sd}", "trainer.max_steps": 2}
    assert resolve_stages(overrides, {"magic3d-coarse-sd": "/out/trial"}) == {
        "system.geometry_convert_from": "/out/trial", "trainer.max_steps": "2"}
    assert resolve_stages(overrides, {})["system.geometry_convert_from"] == "missing-previous-stage"
