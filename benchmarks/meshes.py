"""Meshes for the benchmarks: the real scans in ``../shared/data`` when they are there, else a
generated stand-in of comparable size, so ``python -m benchmarks.run`` works on a fresh clone.

``THREESTUDIO_LIKE_TEST_DATA`` points at another data folder (the tests read it too); pointing it
at an empty folder shows what a clone without the data gets.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "outputs" / "benchmarks"  # generated meshes are written once, here (git-ignored)


def data_dir() -> Path:
    """Where the shared test data is looked for (``../shared/data`` beside the checkout by default)."""
    return Path(os.environ.get("THREESTUDIO_LIKE_TEST_DATA", REPO.parent / "shared" / "data"))


def bumpy_sphere(subdivisions: int = 6, seed: int = 0):
    """A closed, non-convex test surface: an icosphere (``20 * 4**subdivisions`` faces; 6 gives
    81,920, near the armadillo's 99,976) with its radius displaced by a few random low-frequency
    waves, so it has bumps, dents and self-occlusion like a scan, and a fixed shape per seed."""
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    directions = np.asarray(sphere.vertices, dtype=np.float64)
    rng = np.random.default_rng(seed)
    radius = np.ones(len(directions))
    for frequency, amplitude in ((2.0, 0.12), (4.0, 0.06), (9.0, 0.02)):
        for _ in range(3):
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            radius += amplitude * np.sin(frequency * directions @ axis + rng.uniform(0, 2 * math.pi))
    return trimesh.Trimesh(directions * radius[:, None], np.asarray(sphere.faces), process=False)


def benchmark_mesh(name: str, subdivisions: int = 6) -> tuple[Path, str]:
    """The path of ``<data>/<name>.obj`` when it exists, else of a generated bumpy sphere (written
    once to a cache folder); and a label saying which it is, for the printed table."""
    real = data_dir() / f"{name}.obj"
    if real.is_file():
        return real, name
    path = CACHE / f"bumpy-sphere-{subdivisions}.obj"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.obj")
        bumpy_sphere(subdivisions).export(str(tmp))
        os.replace(tmp, path)  # a concurrent or interrupted run never reads half a file
    return path, f"bumpy sphere (generated; {real} not found)"
