"""Throughput of the built-in hash grid and of the implicit-volume geometry (forward + backward).

Run: ``python benchmarks/bench_hashgrid.py``. ``run()`` returns the numbers as a dict.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import best_time
from threestudio_like.representations.encodings import get_encoding
from threestudio_like.representations.implicit_volume import ImplicitVolume

DEFAULT_GRID = ImplicitVolume.Config().pos_encoding_config  # tcnn's defaults, as the recipes use


def _points(n: int, device: torch.device) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(0)).to(device)


def bench_encoding(n_points: int, device: torch.device, repeats: int) -> dict[str, float]:
    encoding = get_encoding(3, {**DEFAULT_GRID, "backend": "auto"}).to(device)
    x = _points(n_points, device)

    def forward() -> None:
        with torch.no_grad():
            encoding(x)

    def forward_backward() -> None:
        encoding.zero_grad(set_to_none=True)
        encoding(x).sum().backward()

    return {
        "forward_points_per_s": n_points / best_time(forward, repeats),
        "forward_backward_points_per_s": n_points / best_time(forward_backward, repeats),
    }


def bench_geometry(n_points: int, device: torch.device, repeats: int, normal_type: str | None) -> float:
    geometry = ImplicitVolume({"normal_type": normal_type}).to(device)
    x = (_points(n_points, device) * 2 - 1) * 0.9

    def step() -> None:
        geometry.zero_grad(set_to_none=True)
        out = geometry(x, output_normal=normal_type is not None)
        loss = out["density"].mean() + out["features"].mean()
        if "normal" in out:
            loss = loss + out["normal"].mean()
        loss.backward()

    return n_points / best_time(step, repeats)


def run(sizes: tuple[int, ...] = (2**16, 2**18), repeats: int = 3, device: str | None = None) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results: dict = {"device": str(dev), "threads": torch.get_num_threads(), "hashgrid": {}, "implicit_volume": {}}
    for n in sizes:
        results["hashgrid"][n] = bench_encoding(n, dev, repeats)
    n = sizes[0]
    for normal_type in (None, "finite_difference", "analytic"):
        results["implicit_volume"][str(normal_type)] = {"points": n, "points_per_s": bench_geometry(n, dev, repeats, normal_type)}
    return results


def _print(results: dict) -> None:
    print(f"device {results['device']}, {results['threads']} threads")
    print(f"{'16-level HashGrid':<34}{'points':>10}{'fwd pts/s':>14}{'fwd+bwd pts/s':>16}")
    for n, r in results["hashgrid"].items():
        print(f"{'':<34}{n:>10}{r['forward_points_per_s']:>14.3g}{r['forward_backward_points_per_s']:>16.3g}")
    print(f"{'implicit-volume fwd+bwd, normals:':<34}{'points':>10}{'':>14}{'pts/s':>16}")
    for normal_type, r in results["implicit_volume"].items():
        print(f"{'  ' + normal_type:<34}{r['points']:>10}{'':>14}{r['points_per_s']:>16.3g}")


def main() -> None:
    _print(run())


if __name__ == "__main__":
    main()
