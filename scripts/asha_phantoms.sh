#!/usr/bin/env bash
# The phantom sweep of experiments/demo.yaml widened to 12 configurations (architecture x
# learning rate x weight decay), trained by 2 CPU workers, once without early stopping and
# once with ASHA: wall time and the best validation macro-F1 of each. A benchmark, not a test.
#
#   cargo build --release -p cobb && scripts/asha_phantoms.sh [WORKDIR]
#   (COBB=path/to/cobb when the build is not in target/release)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
COBB="${COBB:-$REPO/target/release/cobb}"
[ -x "$COBB" ] || { echo "no cobb at $COBB: cargo build --release -p cobb, or set COBB" >&2; exit 2; }
WORK="${1:-$(mktemp -d)}"
mkdir -p "$WORK" && cd "$WORK"
PORT=$((20000 + RANDOM % 20000))
export COBB_SERVER="http://127.0.0.1:$PORT"
"$COBB" server --bind "127.0.0.1:$PORT" --data-dir data >server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 100); do [ -s data/admin.token ] && curl -sf "$COBB_SERVER/api/v1/health" >/dev/null && break; sleep 0.2; done
export COBB_TOKEN="$(cat data/admin.token)"
"$COBB" phantoms --out ph --count 600 --size 64 --seed 42 --balance uniform >/dev/null
"$COBB" dataset key init --key-file site.key >/dev/null
"$COBB" dataset register phantoms ph --key-file site.key >/dev/null
for mode in full asha; do
  # The demo's spec without its early stop, with a third learning rate and two weight decays.
  grep -v -e '^  early_stop:' -e '^  # The server stops runs' -e '^  # halving: only the better' "$REPO/experiments/demo.yaml" \
    | sed -e "s/^name: demo/name: widened-$mode/" \
          -e 's/^    train.optimizer.lr: {values: \[0.003, 0.001\]}/    train.optimizer.lr: {values: [0.003, 0.001, 0.0003]}\n    train.optimizer.weight_decay: {values: [0.0001, 0.001]}/' \
    >"$mode.yaml"
  if [ "$mode" = asha ]; then
    sed -i 's/^  parallel: 2/  parallel: 2\n  early_stop: {method: asha, min_epochs: 1, reduction_factor: 3}/' "$mode.yaml"
  fi
  "$COBB" submit "$mode.yaml" >/dev/null
  start=$(date +%s.%N)
  "$COBB" worker --name "w1-$mode" --exit-when-idle >"w1-$mode.log" 2>&1 &
  W1=$!
  "$COBB" worker --name "w2-$mode" --exit-when-idle >"w2-$mode.log" 2>&1
  wait $W1
  end=$(date +%s.%N)
  "$COBB" runs --experiment "widened-$mode" --sort val_macro_f1 --json >"$mode.runs.json"
  python3 - "$mode" "$start" "$end" "$mode.runs.json" <<'PY'
import json, sys
mode, start, end, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
runs = json.load(open(path))["runs"]
best = max((r.get("sort_value") or 0) for r in runs)
epochs = sum((r.get("best_epoch") or 0) for r in runs)
statuses = {}
for r in runs:
    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
print(f"{mode}: {len(runs)} runs {statuses}, wall {end - start:.0f} s, best val macro-F1 {best:.3f}")
PY
done
