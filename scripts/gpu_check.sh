#!/usr/bin/env bash
# The GPU check of issue 4, run by hand on a machine with an NVIDIA GPU, CUDA 13 and
# PyTorch + torchvision (no Rust toolchain needed). From the repository root:
#
#   CUDARC_CUDA_VERSION=13000 cargo build --release --offline -p cobb --features cuda --bins
#   mkdir -p .gpu && strip -o .gpu/cobb target/release/cobb && strip -o .gpu/cobb-bench target/release/cobb-bench
#   ./target/release/cobb phantoms --out .gpu/phantoms --count 300 --size 256
#   (cd .gpu && tar cf - cobb cobb-bench phantoms | xz -T2 -3 > gpu.tar.xz && rm -rf cobb cobb-bench phantoms)
#   # on the GPU machine, with .gpu carried along:
#   scripts/gpu_check.sh [OUT_DIR]
#
# Prints: the card, the torchvision parity check on CUDA, Burn-CUDA training/eval images/s
# and peak GPU memory for efficientnet_b0 at 224 px and efficientnet_b6 at 528 px, the same
# for PyTorch/torchvision in the same script, and a short `cobb train` on phantoms.
set -u
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
if [ -f .gpu/gpu.tar.xz ]; then (cd .gpu && xz -dc gpu.tar.xz | tar xf -); fi
bin=.gpu
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
max_seconds=${MAX_SECONDS:-30}

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
timeout 60 $bin/cobb-bench parity --fixture worker/tests/fixtures/parity --device cuda:0

echo "== Burn 0.21 CUDA: synthetic 1-channel batches, 10 classes, AdamW (warmup 8 steps untimed)"
for cfg in "efficientnet_b0 224 32 300" "efficientnet_b6 528 8 200"; do
  set -- $cfg
  echo "-- $1 @ $2 px, batch $3, up to $4 steps or ${max_seconds}s"
  with_memory "$out/mem-burn-$1.txt" timeout 140 $bin/cobb-bench train-one "$1" "$2" "$3" 8 "$4" 20 --device cuda:0 --max-seconds "$max_seconds"
done

echo "== PyTorch $(python3 -c 'import torch, torchvision; print(torch.__version__, "torchvision", torchvision.__version__)' 2>/dev/null): same models and batches"
PYTHONUNBUFFERED=1 timeout 120 python3 - "$max_seconds" <<'PY'
import sys, time, torch, torchvision
max_seconds = float(sys.argv[1])
torch.backends.cudnn.benchmark = True
for name, size, batch, steps in [("efficientnet_b0", 224, 32, 300), ("efficientnet_b6", 528, 8, 200)]:
    m = getattr(torchvision.models, name)(num_classes=10)
    c = m.features[0][0]
    m.features[0][0] = torch.nn.Conv2d(1, c.out_channels, c.kernel_size, c.stride, c.padding, bias=False)
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
    for _ in range(8):
        step()
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
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
    print(f"-- torch {name} @ {size} px, batch {batch}: train {train:.1f} img/s ({n} steps), eval {ev:.1f} img/s, peak allocated {peak:.0f} MiB")
    del m, opt
    torch.cuda.empty_cache()
PY

echo "== cobb train on phantoms, efficientnet_b0 @ 224, 2 epochs, CUDA"
cat > "$out/gpu.yaml" <<'YAML'
name: gpu-check
dataset: {name: phantoms}
model: {arch: efficientnet_b0, image_size: 224}
train: {epochs: 2, batch_size: 16, seed: 1, optimizer: {name: adamw, lr: 0.001}, schedule: {name: constant}}
select: {metric: val_macro_f1, goal: maximize}
YAML
with_memory "$out/mem-cobb-train.txt" timeout 100 $bin/cobb train "$out/gpu.yaml" --data $bin/phantoms --device cuda:0 --out "$out/train"
