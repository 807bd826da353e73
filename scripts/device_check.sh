#!/usr/bin/env bash
# The prepared GPU check (docs/development.md, "The GPU check"): installs the carried wheels, builds
# nvdiffrast with the machine's nvcc, then runs benchmarks/device_check.py, which prints one table
# (pass / fail, step time, peak memory, backends). Under 8 minutes on an H100.
#   scripts/device_check.sh [--dry-run] [--wheels FOLDER]      (default folder: device-wheels/)
# --dry-run: on a CPU machine: checks the carry folder, installs nothing, runs every stage at reduced size.
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=device-wheels
dry_run=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=(--dry-run) ;;
    --wheels) wheels=$2; shift ;;
    *) echo "usage: scripts/device_check.sh [--dry-run] [--wheels FOLDER]" >&2; exit 2 ;;
  esac
  shift
done
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

# 1. the carry folder holds a wheel for each package the GPU image lacks (nothing can be downloaded there)
missing=()
compgen -G "$wheels/antlr4*python3*runtime-4.9.3.tar.gz" >/dev/null || missing+=(antlr4-python3-runtime)
for name in diffusers omegaconf trimesh xatlas fast_simplification beartype nerfacc; do
  compgen -G "$wheels/$name-*.whl" >/dev/null || missing+=("$name")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: $wheels/ lacks wheels for: ${missing[*]}; run scripts/prepare_device_check.sh where PyPI is reachable" >&2
  exit 2
fi
[ -f "$wheels/nvdiffrast-src.tar.gz" ] || echo "note: no $wheels/nvdiffrast-src.tar.gz: the mesh stages use the PyTorch rasteriser"
echo "note: tiny-cuda-nn is not on PyPI and not built here (it needs its git submodules): hash grids and MLPs run in PyTorch"

# 2. install (not on a dry run): the wheels without their dependencies, the package in place, nvdiffrast built here
if [ ${#dry_run[@]} -eq 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation "$wheels"/*.whl "$wheels"/antlr4*.tar.gz || exit 1
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
  if [ -f "$wheels/nvdiffrast-src.tar.gz" ]; then
    python3 -m pip install -q --no-index --no-deps --no-build-isolation "$wheels/nvdiffrast-src.tar.gz" \
      || echo "note: nvdiffrast did not build: the mesh stages use the PyTorch rasteriser"
  fi
fi

# 3. the check: models, cuda tests, the recipe stages; one table
exec python3 -m benchmarks.device_check "${dry_run[@]}"
