"""The benchmarks run on a fresh clone: without ../shared/data a generated mesh stands in."""

from __future__ import annotations

import pytest
import trimesh

from benchmarks import bench_marching_tets, bench_rasterize, meshes
from benchmarks.run import BENCHMARKS, main


@pytest.fixture
def no_shared_data(tmp_path, monkeypatch):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("THREESTUDIO_LIKE_TEST_DATA", str(empty))
    monkeypatch.setattr(meshes, "CACHE", tmp_path / "cache")
    return empty


def test_generated_stand_in_is_a_closed_mesh_of_comparable_size(no_shared_data) -> None:
    path, label = meshes.benchmark_mesh("armadillo")
    assert "generated" in label and str(no_shared_data / "armadillo.obj") in label
    mesh = trimesh.load(str(path), force="mesh", process=False)
    assert 80_000 <= len(mesh.faces) <= 100_000  # the armadillo has 99,976
    assert mesh.is_watertight
    assert meshes.benchmark_mesh("armadillo")[0] == path  # generated once, then reused


def test_real_mesh_is_used_when_present(tmp_path, monkeypatch) -> None:
    meshes.bumpy_sphere(2).export(str(tmp_path / "armadillo.obj"))
    monkeypatch.setenv("THREESTUDIO_LIKE_TEST_DATA", str(tmp_path))
    assert meshes.benchmark_mesh("armadillo") == (tmp_path / "armadillo.obj", "armadillo")


def test_rasterize_benchmark_runs_without_shared_data(no_shared_data) -> None:
    r = bench_rasterize.run(size=32, views=(1,), repeats=1, threads=1)
    assert r["triangles"] == 81_920 and r["mesh"].startswith("bumpy sphere")
    assert r[1]["covered_pixels"] > 0


def test_mesh_init_benchmark_runs_without_shared_data(no_shared_data) -> None:
    b = bench_marching_tets.bench_mesh_init(24)
    assert b["mesh"].startswith("bumpy sphere") and b["faces"] > 0 and b["watertight"] == 1.0


def test_run_lists_every_benchmark(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in BENCHMARKS)
