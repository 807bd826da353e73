"""Throughput of the built-in PyTorch rasterizer on a real 100k-triangle mesh (armadillo), 512x512.

The armadillo is ``../shared/data/armadillo.obj``; without it (a fresh clone) a generated bumpy
sphere of 82k triangles stands in (``benchmarks/meshes.py``), and ``--mesh`` takes any other.

Times ``rasterize``, ``interpolate`` (vertex normals), ``antialias``, the whole forward pass and
forward + backward (a loss on the antialiased image, gradients w.r.t. vertex positions), for 1
and 4 views. Run ``python benchmarks/bench_rasterize.py``; ``run()`` returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.meshes import benchmark_mesh
from benchmarks.timing import best_time
from threestudio_like.data.cameras import get_mvp_matrix, get_projection_matrix, look_at_c2w, spherical_to_cartesian
from threestudio_like.mesh.rasterize import TorchRasterizer, vertex_transform

def load_mesh(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices normalised to the box [-1, 1]^3 (centred, longest side 2) and int64 faces."""
    import trimesh

    mesh = trimesh.load(str(path), process=False, force="mesh")
    v = torch.tensor(mesh.vertices, dtype=torch.float32)
    f = torch.tensor(mesh.faces, dtype=torch.int64)
    lo, hi = v.min(0).values, v.max(0).values
    return (v - (lo + hi) / 2) * (2.0 / float((hi - lo).max())), f


def vertex_normals(v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    fn = torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)
    vn = torch.zeros_like(v).index_add(0, f.reshape(-1), fn.repeat_interleave(3, dim=0))
    return F.normalize(vn, dim=-1)


def orbit_mvp(n_views: int, size: int, distance: float = 3.0, fovy_deg: float = 45.0) -> torch.Tensor:
    azimuth = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    elevation = torch.full((n_views,), 15.0)
    eye = spherical_to_cartesian(elevation, azimuth, torch.full((n_views,), distance))
    c2w = look_at_c2w(eye, torch.zeros_like(eye), torch.tensor([[0.0, 0.0, 1.0]]).expand_as(eye))
    proj = get_projection_matrix(torch.full((n_views,), math.radians(fovy_deg)), 1.0, near=0.1, far=100.0)
    return get_mvp_matrix(c2w, proj)


def run(
    size: int = 512, views: tuple[int, ...] = (1, 4), repeats: int = 3, threads: int | None = None, mesh: str | None = None
) -> dict[str, Any]:
    """``threads`` pins torch's CPU threads (1 gives stable numbers on a machine shared with other jobs);
    ``mesh`` is a mesh file (default: the armadillo, or its generated stand-in)."""
    if threads is not None:
        torch.set_num_threads(threads)
    path, label = (Path(mesh), Path(mesh).name) if mesh else benchmark_mesh("armadillo")
    v, f = load_mesh(path)
    normals = vertex_normals(v, f)
    rast_fn = TorchRasterizer()
    topology = rast_fn.construct_topology_hash(f)
    results: dict[str, Any] = {"mesh": label, "triangles": f.shape[0], "vertices": v.shape[0], "size": size, "threads": torch.get_num_threads()}
    for n_views in views:
        mvp = orbit_mvp(n_views, size)
        pos = vertex_transform(v, mvp)
        rast, _ = rast_fn.rasterize(pos, f, (size, size))
        stats = dict(rast_fn.last_stats)
        col, _ = rast_fn.interpolate(normals * 0.5 + 0.5, rast, f)

        t_rast = best_time(lambda: rast_fn.rasterize(pos, f, (size, size)), repeats)
        t_interp = best_time(lambda: rast_fn.interpolate(normals, rast, f), repeats)
        t_aa = best_time(lambda: rast_fn.antialias(col, rast, pos, f, topology_hash=topology), repeats)

        def forward(requires_grad: bool) -> torch.Tensor:
            v_param = v.clone().requires_grad_(requires_grad)
            p = vertex_transform(v_param, mvp)
            r, _ = rast_fn.rasterize(p, f, (size, size))
            c, _ = rast_fn.interpolate(normals * 0.5 + 0.5, r, f)
            out = rast_fn.antialias(c, r, p, f, topology_hash=topology)
            if requires_grad:
                out.square().mean().backward()
            return out

        def forward_only() -> None:
            with torch.no_grad():
                forward(False)

        t_fwd = best_time(forward_only, repeats)
        t_fwdbwd = best_time(lambda: forward(True), repeats)
        tris = f.shape[0] * n_views
        results[n_views] = {
            **stats,
            "rasterize_ms": 1e3 * t_rast,
            "interpolate_ms": 1e3 * t_interp,
            "antialias_ms": 1e3 * t_aa,
            "forward_ms": 1e3 * t_fwd,
            "forward_backward_ms": 1e3 * t_fwdbwd,
            "rasterize_tris_per_s": tris / t_rast,
            "forward_tris_per_s": tris / t_fwd,
            "forward_backward_tris_per_s": tris / t_fwdbwd,
        }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4], help="batch sizes (views per call)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--mesh", default=None, help="mesh file (default: ../shared/data/armadillo.obj, else a generated one)")
    args = parser.parse_args(argv)
    r = run(args.size, tuple(args.views), args.repeats, args.threads, args.mesh)
    print(f"{r['mesh']}: {r['triangles']} triangles, {r['vertices']} vertices, {r['size']}x{r['size']}, {r['threads']} thread(s)")
    print(
        f"{'views':>5}{'cand.pairs':>12}{'covered px':>12}{'rast ms':>9}{'interp ms':>10}{'aa ms':>8}"
        f"{'fwd ms':>9}{'fwd+bwd ms':>12}{'rast Mtri/s':>13}{'fwd Mtri/s':>12}{'f+b Mtri/s':>12}"
    )
    for n_views in args.views:
        x = r[n_views]
        print(
            f"{n_views:>5}{x['candidate_pairs']:>12}{x['covered_pixels']:>12}{x['rasterize_ms']:>9.1f}{x['interpolate_ms']:>10.1f}"
            f"{x['antialias_ms']:>8.1f}{x['forward_ms']:>9.1f}{x['forward_backward_ms']:>12.1f}"
            f"{x['rasterize_tris_per_s'] / 1e6:>13.2f}{x['forward_tris_per_s'] / 1e6:>12.2f}{x['forward_backward_tris_per_s'] / 1e6:>12.2f}"
        )


if __name__ == "__main__":
    main()
