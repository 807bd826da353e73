"""All benchmarks in one run: ``python -m benchmarks.run``."""

from benchmarks import bench_export, bench_hashgrid, bench_marching_tets, bench_rasterize, bench_render, bench_step

if __name__ == "__main__":
    for module in (bench_hashgrid, bench_render, bench_step, bench_rasterize, bench_marching_tets, bench_export):
        print(f"\n=== {module.__name__} ===")
        module.main()
