"""DMTet geometry: tetrahedral grid generation / caching, marching tetrahedra, mesh initialisation.

Run: ``python benchmarks/bench_marching_tets.py``. ``run()`` returns the numbers as a dict.

- grid: generating the ``R^3``-cell grid (cold) and a memory-cache hit;
- marching tetrahedra on a sphere SDF (radius 0.6 in ``[-1, 1]^3``): forward over all ``6 R^3``
  tetrahedra, forward over the tetrahedra of surface cells only (``tetgrid.surface_tets``, what
  the geometry does), and the backward of a loss on the vertex positions;
- ``tetrahedra-sdf-grid``: ``isosurface()`` forward + backward, and initialisation from the
  Stanford bunny (``../shared/data/bunny.obj``; without it a generated bumpy sphere of 5,120
  faces, ``benchmarks/meshes.py``) at resolution 128.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.meshes import benchmark_mesh
from benchmarks.timing import best_time
from threestudio_like.mesh import tetgrid
from threestudio_like.mesh.marching_tets import marching_tetrahedra
from threestudio_like.representations.tetrahedra_sdf_grid import TetrahedraSDFGrid

def bench_grid(resolution: int) -> dict[str, float]:
    tetgrid.clear_memory_cache()
    start = time.perf_counter()
    tetgrid.tetrahedral_grid(resolution)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    tetgrid.tetrahedral_grid(resolution)
    memory = time.perf_counter() - start
    tetgrid.clear_memory_cache()
    return {"generate_s": cold, "memory_cache_s": memory}


def bench_marching(resolution: int, repeats: int) -> dict[str, float]:
    vertices, tets = tetgrid.tetrahedral_grid(resolution)
    sdf = vertices.norm(dim=-1) - 0.6
    out: dict[str, float] = {"tets": tets.shape[0]}
    out["forward_all_tets_s"] = best_time(lambda: marching_tetrahedra(vertices, sdf, tets), repeats)
    out["surface_tets_select_s"] = best_time(lambda: tetgrid.surface_tets(sdf < 0, resolution), repeats)

    def forward_surface():
        return marching_tetrahedra(vertices, sdf, tetgrid.surface_tets(sdf < 0, resolution))

    out["forward_surface_tets_s"] = best_time(forward_surface, repeats)
    mesh = forward_surface()
    out["faces"], out["mesh_vertices"] = mesh.n_faces, mesh.n_vertices
    out["surface_tets"] = int(tetgrid.surface_tets(sdf < 0, resolution).shape[0])

    v = vertices.clone().requires_grad_(True)
    s = sdf.clone().requires_grad_(True)

    def backward():
        m = marching_tetrahedra(v, s, tetgrid.surface_tets(s.detach() < 0, resolution))
        start = time.perf_counter()
        (m.v_pos**2).sum().backward()
        v.grad = s.grad = None
        return time.perf_counter() - start

    backward()
    out["backward_s"] = min(backward() for _ in range(repeats))
    tetgrid.clear_memory_cache()
    return out


def bench_geometry(resolution: int, repeats: int) -> dict[str, float]:
    geo = TetrahedraSDFGrid(
        {"isosurface_resolution": resolution, "shape_init": "sphere", "shape_init_params": 0.6, "geometry_only": True}
    )

    def step():
        geo.zero_grad(set_to_none=True)
        mesh = geo.isosurface()
        (mesh.v_pos**2).sum().backward()

    out = {"isosurface_forward_s": best_time(lambda: geo.isosurface(), repeats), "isosurface_fwd_bwd_s": best_time(step, repeats)}
    del geo
    tetgrid.clear_memory_cache()
    return out


def bench_mesh_init(resolution: int) -> dict:
    path, label = benchmark_mesh("bunny", subdivisions=4)  # 5,120 faces, near the bunny's 4,968
    geo = TetrahedraSDFGrid({"isosurface_resolution": resolution, "geometry_only": True,
                             "shape_init": f"mesh:{path}", "shape_init_params": 0.8,
                             "shape_init_mesh_up": "+y", "shape_init_mesh_front": "+z"}, skip_shape_init=True)
    start = time.perf_counter()
    geo.initialize_shape()
    seconds = time.perf_counter() - start
    mesh = geo.isosurface()
    out = {"mesh": label, "init_s": seconds, "faces": mesh.n_faces, "watertight": float(mesh.is_watertight)}
    del geo
    tetgrid.clear_memory_cache()
    return out


def run(resolutions: tuple[int, ...] = (64, 128), repeats: int = 3) -> dict:
    results: dict = {"threads": torch.get_num_threads(), "grid": {}, "marching": {}, "geometry": {}}
    for r in resolutions:
        results["grid"][r] = bench_grid(r)
        results["marching"][r] = bench_marching(r, repeats if r <= 64 else max(1, repeats - 1))
        results["geometry"][r] = bench_geometry(r, repeats)
    results["mesh_init"] = {128: bench_mesh_init(128)}
    return results


def _print(results: dict) -> None:
    print(f"CPU, {results['threads']} threads")
    print(f"{'grid R':<8}{'generate s':>12}{'memory hit s':>14}")
    for r, g in results["grid"].items():
        print(f"{r:<8}{g['generate_s']:>12.3f}{g['memory_cache_s']:>14.2e}")
    print(f"{'MT R':<8}{'tets':>11}{'surf tets':>11}{'faces':>9}{'fwd all s':>11}{'select s':>10}{'fwd surf s':>12}{'bwd s':>9}")
    for r, m in results["marching"].items():
        print(f"{r:<8}{m['tets']:>11}{m['surface_tets']:>11}{m['faces']:>9}{m['forward_all_tets_s']:>11.3f}"
              f"{m['surface_tets_select_s']:>10.3f}{m['forward_surface_tets_s']:>12.3f}{m['backward_s']:>9.3f}")
    print(f"{'geometry R':<12}{'isosurface() s':>16}{'fwd+bwd s':>12}")
    for r, g in results["geometry"].items():
        print(f"{r:<12}{g['isosurface_forward_s']:>16.3f}{g['isosurface_fwd_bwd_s']:>12.3f}")
    for r, b in results["mesh_init"].items():
        print(f"{b['mesh']} mesh init at R={r}: {b['init_s']:.2f} s, {b['faces']} faces, watertight={bool(b['watertight'])}")


def main() -> None:
    _print(run())


if __name__ == "__main__":
    main()
