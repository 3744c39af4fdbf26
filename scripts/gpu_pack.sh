#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh runs on a GPU machine and packs it into .gpu/gpu.tar.xz:
# the release cuda binaries (stripped), 300 phantoms at 256 px, and libdevice.10.bc (NVIDIA's
# math bitcode that Burn's LLVM-to-PTX path links; from PyPI's nvidia-nvvm wheel) for GPU
# hosts without a CUDA toolkit. Run from anywhere; needs the network only for PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}

scripts/llvm_bundle.sh
CUDARC_CUDA_VERSION=13000 cargo build --release -p cobb --features cuda --bins
rm -rf .gpu && mkdir -p .gpu/cuda/nvvm/libdevice
strip -o .gpu/cobb "$target/release/cobb"
strip -o .gpu/cobb-bench "$target/release/cobb-bench"
"$target/release/cobb" phantoms --out .gpu/phantoms --count 300 --size 256 >/dev/null

wheels=$(mktemp -d)
pip download --quiet --disable-pip-version-check --no-deps -d "$wheels" nvidia-nvvm==13.0.88
python3 - "$wheels" <<'PY'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("nvidia_nvvm-*.whl"))
with zipfile.ZipFile(wheel) as z:
    data = z.read("nvidia/cu13/nvvm/libdevice/libdevice.10.bc")
pathlib.Path(".gpu/cuda/nvvm/libdevice/libdevice.10.bc").write_bytes(data)
PY
rm -rf "$wheels"

# One solid archive with a dictionary larger than a binary, so that the code the two binaries
# share (Burn, CubeCL, LLVM) is stored once: the device tool carries at most 64 MiB.
(cd .gpu && tar cf - cobb cobb-bench phantoms cuda | xz -T1 --lzma2=preset=6,dict=384MiB > gpu.tar.xz && rm -rf cobb cobb-bench phantoms cuda)
size=$(stat -c %s .gpu/gpu.tar.xz)
echo ".gpu/gpu.tar.xz: $((size / 1048576)) MiB"
if [ "$size" -gt $((60 * 1048576)) ]; then
  echo "warning: over 60 MiB; the device tool carries 64 MiB in all" >&2
fi
