#!/usr/bin/env bash
# Prepare the carry folder of scripts/device_check.sh where PyPI is reachable: wheels of what the
# GPU image lacks (it has torch, lightning, peft, transformers, scikit-image, jaxtyping, pytest;
# see docs/development.md, "The GPU check"; imageio-ffmpeg is 68 MB, so turntables there are GIFs),
# for its Python (3.12 unless PYTHON_VERSION says), and nvdiffrast's source (not on PyPI) from a checkout of github.com/NVlabs/nvdiffrast when given.
#   scripts/prepare_device_check.sh [FOLDER] [NVDIFFRAST_CHECKOUT]     (default folder: device-wheels/)
set -euo pipefail
cd "$(dirname "$0")/.."
folder=${1:-device-wheels}
nvdiffrast=${2:-${NVDIFFRAST_CHECKOUT:-}}
python_version=${PYTHON_VERSION:-3.12}
mkdir -p "$folder"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# one version of each; --no-deps: these are the missing ones, their own needs are on the image
python -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
  "${platforms[@]}" -d "$folder" \
  diffusers==0.42.1 omegaconf==2.3.0 trimesh xatlas fast-simplification \
  beartype "nerfacc>=0.5.2,<0.6"
# omegaconf's parser runtime is a source archive only (pure Python)
python -m pip download -q --no-deps --no-binary=:all: -d "$folder" antlr4-python3-runtime==4.9.3
if [ -n "$nvdiffrast" ]; then  # a git checkout or snapshot: only what the build needs (a snapshot may lack large samples)
  staging=$(mktemp -d)
  git -C "$nvdiffrast" ls-tree -r --name-only HEAD -- setup.py pyproject.toml MANIFEST.in LICENSE.txt README.md csrc nvdiffrast |
    while read -r file; do
      mkdir -p "$staging/nvdiffrast/$(dirname "$file")"
      git -C "$nvdiffrast" show "HEAD:$file" >"$staging/nvdiffrast/$file"
    done
  tar -czf "$folder/nvdiffrast-src.tar.gz" -C "$staging" nvdiffrast
  rm -rf "$staging"
fi
ls "$folder"; du -sh "$folder"
