"""All benchmarks in one run: ``python -m benchmarks.run`` (``--only NAME ...`` for some of them).

Each works on a fresh clone: the rasteriser and mesh-initialisation benchmarks use the real scans
in ``../shared/data`` when they are there and a generated mesh otherwise (``benchmarks/meshes.py``);
``--data DIR`` looks for them elsewhere.
"""

from __future__ import annotations

import argparse
import inspect
import os
from types import ModuleType

from benchmarks import (
    bench_capture,
    bench_edit,
    bench_export,
    bench_fullsize,
    bench_hashgrid,
    bench_marching_tets,
    bench_multiview,
    bench_rasterize,
    bench_render,
    bench_step,
    bench_vsd,
)

BENCHMARKS: dict[str, ModuleType] = {
    "hashgrid": bench_hashgrid,
    "render": bench_render,
    "step": bench_step,
    "vsd": bench_vsd,
    "multiview": bench_multiview,
    "rasterize": bench_rasterize,
    "marching_tets": bench_marching_tets,
    "export": bench_export,
    "capture": bench_capture,
    "edit": bench_edit,
    "fullsize": bench_fullsize,  # an hour on a 2-core CPU: only when asked for
}
DEFAULT = [name for name in BENCHMARKS if name != "fullsize"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=DEFAULT, metavar="NAME",
                        help=f"run only these, in this order ({', '.join(BENCHMARKS)}; all but fullsize by default)")
    parser.add_argument("--data", default=None, help="folder with armadillo.obj / bunny.obj (default: ../shared/data)")
    args = parser.parse_args(argv)
    if args.data is not None:
        os.environ["THREESTUDIO_LIKE_TEST_DATA"] = args.data  # read by benchmarks/meshes.py
    for name in args.only:
        module = BENCHMARKS[name]
        print(f"\n=== {module.__name__} ===")
        # each benchmark's own defaults; this command line is not theirs to parse
        module.main([]) if inspect.signature(module.main).parameters else module.main()


if __name__ == "__main__":
    main()
