#!/usr/bin/env bash
# Prepares, offline from the internet except PyPI, the LLVM 23.1 SDK that Burn 0.22's CUDA
# backend (cubecl-llvm) needs at build time, so `cargo build --features cuda` never downloads.
#
# Burn's build script (tracel-llvm-bundler) looks for an LLVM under
#   ${XDG_DATA_HOME:-~/.local/share}/tracel/tracel-llvm-<bundler version>/
# and skips its download when `.tracel-llvm-installed` exists there. PyPI's relocatable static
# SDK (mlc-llvm-static, plus the extra targets wheel that brings NVPTX) is exactly such an LLVM;
# this script installs both wheels into a virtualenv with pip (so llvm-config keeps its exec
# bit), links their bin/include/lib/share into that directory and writes the sentinel.
#
# The directory name follows the bundler version in Cargo.lock, so a Burn upgrade that moves
# the bundler makes this script prepare the new directory (check the wheel version too).
#
# Usage: scripts/llvm_bundle.sh          (idempotent; prints the directory it prepared)
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_VERSION=23.1.1.post0
bundler=$(awk '/^name = "tracel-llvm-bundler"/ {getline; gsub(/[" ]/, "", $0); sub("version=", "", $0); print; exit}' Cargo.lock)
if [ -z "$bundler" ]; then
  echo "error: Cargo.lock has no tracel-llvm-bundler (is Burn's cuda feature resolved?)" >&2
  exit 1
fi
case "$bundler" in
  23.1.*) ;;
  *) echo "error: tracel-llvm-bundler $bundler wants another LLVM than the $WHEEL_VERSION wheels; update WHEEL_VERSION in $0" >&2; exit 1 ;;
esac

data_home=${XDG_DATA_HOME:-$HOME/.local/share}
target="$data_home/tracel/tracel-llvm-$bundler"
sentinel="$target/.tracel-llvm-installed"
venv=${COBB_LLVM_VENV:-$HOME/.cache/cobb-llvm/venv-$WHEEL_VERSION}

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
sdk=$("$venv/bin/python" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("mlc_llvm_static")
print(pathlib.Path(spec.origin).parent / "static" if spec and spec.origin else "")
PY
)
if [ -z "$sdk" ] || [ ! -x "$sdk/bin/llvm-config" ] || ! "$sdk/bin/llvm-config" --targets-built | grep -q NVPTX; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "mlc-llvm-static==$WHEEL_VERSION" "mlc-llvm-static-extra-targets==$WHEEL_VERSION"
  sdk=$("$venv/bin/python" -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("mlc_llvm_static").origin).parent / "static")')
fi
if ! "$sdk/bin/llvm-config" --targets-built | grep -q NVPTX; then
  echo "error: $sdk/bin/llvm-config has no NVPTX target (targets: $("$sdk/bin/llvm-config" --targets-built))" >&2
  exit 1
fi

# Burn's build script reruns (and everything CUDA rebuilds) when the sentinel's time
# changes: touch it only when it is new, and relink only what points elsewhere.
mkdir -p "$target"
for part in bin include lib share; do
  if [ "$(readlink "$target/$part" 2>/dev/null)" != "$sdk/$part" ]; then
    ln -sfn "$sdk/$part" "$target/$part"
  fi
done
[ -e "$sentinel" ] || touch "$sentinel"
echo "LLVM $("$sdk/bin/llvm-config" --version) with NVPTX ready for tracel-llvm-bundler $bundler in $target"
