#!/usr/bin/env bash
# The GPU check (issue 11): Burn 0.22 CUDA (autotune + fusion) against PyTorch eager fp32 on
# the same machine, steady state. Runs on a machine with an NVIDIA GPU, a CUDA 13 driver and
# PyTorch + torchvision; no Rust toolchain needed there. Prepare on the build machine, from
# the repository root:
#
#   scripts/gpu_pack.sh        # builds the release cuda binaries and packs .gpu/gpu.tar.xz
#
# then, on the GPU machine, with .gpu carried along (it is git-ignored; the device tool takes
# it with carry: [".gpu"]):
#
#   scripts/gpu_check.sh [OUT_DIR]
#
# Prints: the card; the torchvision parity check on CUDA; for efficientnet_b0 @224 batch 32,
# efficientnet_b6 @528 batch 8 and resnet50 @224 batch 32: Burn's warm-up cost (first step,
# all warm-up steps: autotuning and kernel compilation for each new shape), then warm-step
# training and evaluation images/s and peak GPU memory, the same for PyTorch; a short
# `cobb train` on phantoms; `cobb classify`'s pipeline end to end for efficientnet_b0 @224 and
# b6 @528 (issue 15). Under 10 minutes of device time. Numbers go to docs/benchmarks.md,
# the whole log to docs/gpu/DATE-CARD-gpu-check.log.
set -u
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
if [ -f .gpu/gpu.tar.xz ]; then (cd .gpu && xz -dc gpu.tar.xz | tar xf -); fi
bin=.gpu
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
max_seconds=${MAX_SECONDS:-20}
warmup=${WARMUP:-10}

# Burn's CUDA backend compiles kernels through LLVM to PTX and links libdevice (NVIDIA's math
# bitcode) from a CUDA toolkit; hosts without one get the copy packed from PyPI's
# nvidia-cuda-nvcc wheel.
if ! ls /usr/local/cuda/nvvm/libdevice/libdevice.10.bc /usr/lib/cuda/nvvm/libdevice/libdevice.10.bc >/dev/null 2>&1 \
  && [ -z "${CUDA_PATH:-}" ] && [ -f "$bin/cuda/nvvm/libdevice/libdevice.10.bc" ]; then
  export CUDA_PATH="$PWD/$bin/cuda"
  echo "libdevice: the packed copy ($CUDA_PATH)"
fi

# Peak GPU memory of a command, sampled by nvidia-smi every 100 ms (MiB, whole card).
with_memory() {
  local log=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log" &
  local sampler=$!
  "$@"
  local rc=$?
  kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
  echo "  peak GPU memory (nvidia-smi): $(sort -n "$log" | tail -1) MiB"
  return $rc
}

echo "== parity: torchvision reduced-width EfficientNet, logits on CUDA"
timeout 90 $bin/cobb-bench parity --fixture worker/tests/fixtures/parity --device cuda:0

configs="efficientnet_b0 224 32 300
efficientnet_b6 528 8 200
resnet50 224 32 300"

echo "== Burn 0.22 CUDA (autotune, fusion): synthetic 1-channel batches, 10 classes, AdamW; $warmup warm-up steps untimed, then up to ${max_seconds}s"
while read -r arch size batch steps; do
  echo "-- $arch @ $size px, batch $batch"
  with_memory "$out/mem-burn-$arch.txt" timeout 150 $bin/cobb-bench train-one "$arch" "$size" "$batch" "$warmup" "$steps" 20 --device cuda:0 --max-seconds "$max_seconds"
done <<<"$configs"

echo "== PyTorch $(python3 -c 'import torch, torchvision; print(torch.__version__, "torchvision", torchvision.__version__)' 2>/dev/null) eager fp32: same models and batches"
PYTHONUNBUFFERED=1 timeout 150 python3 - "$max_seconds" "$warmup" "$configs" <<'PY'
import sys, time, torch, torchvision
max_seconds, warmup = float(sys.argv[1]), int(sys.argv[2])
torch.backends.cudnn.benchmark = True
for line in sys.argv[3].splitlines():
    name, size, batch, steps = line.split(); size, batch, steps = int(size), int(batch), int(steps)
    m = getattr(torchvision.models, name)(num_classes=10)
    if name.startswith("efficientnet"):
        c = m.features[0][0]
        m.features[0][0] = torch.nn.Conv2d(1, c.out_channels, c.kernel_size, c.stride, c.padding, bias=False)
    else:
        c = m.conv1
        m.conv1 = torch.nn.Conv2d(1, c.out_channels, c.kernel_size, c.stride, c.padding, bias=False)
    m = m.cuda()
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x = torch.randn(batch, 1, size, size, device="cuda")
    y = torch.arange(batch, device="cuda") % 10
    loss_fn = torch.nn.CrossEntropyLoss()
    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(m(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    t = time.time()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize(); warm = time.time() - t
    torch.cuda.reset_peak_memory_stats()
    t = time.time(); n = 0
    while n < steps and (n == 0 or time.time() - t < max_seconds):
        step(); n += 1
    torch.cuda.synchronize(); train = n * batch / (time.time() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20
    m.eval()
    with torch.no_grad():
        m(x).argmax(1).cpu()
        t = time.time()
        for _ in range(20):
            m(x).argmax(1).cpu()
        ev = 20 * batch / (time.time() - t)
    print(f"-- torch {name} @ {size} px, batch {batch}: warm-up {warm:.1f}s, train {train:.1f} img/s ({n} steps), eval {ev:.1f} img/s, peak allocated {peak:.0f} MiB")
    del m, opt
    torch.cuda.empty_cache()
PY

echo "== cobb classify's pipeline on CUDA (issue 15): read, decode, prepare, forward; the first repeat includes autotuning"
timeout 150 $bin/cobb-bench classify --device cuda:0 --configs efficientnet_b0@224,efficientnet_b6@528 --images 160 \
  --source-size 512 --repeats 2 --dir "$out/classify" || echo "classification benchmark failed or timed out"

echo "== cobb train on phantoms, efficientnet_b0 @ 224, 2 epochs, CUDA"
cat > "$out/gpu.yaml" <<'YAML'
name: gpu-check
dataset: {name: phantoms}
model: {arch: efficientnet_b0, image_size: 224}
train: {epochs: 2, batch_size: 16, seed: 1, optimizer: {name: adamw, lr: 0.001}, schedule: {name: constant}}
select: {metric: val_macro_f1, goal: maximize}
YAML
with_memory "$out/mem-cobb-train.txt" timeout 120 $bin/cobb train "$out/gpu.yaml" --data $bin/phantoms --device cuda:0 --out "$out/train"
