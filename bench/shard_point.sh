#!/usr/bin/env bash
# One point trained in one process vs sharded over P processes with torchrun (--shard-point), on one machine.
#
#   bash bench/shard_point.sh                 # CPU: the quick preset's N = 64 point, 1 process vs 2
#   DEVICE=cuda bash bench/shard_point.sh     # a GPU node: 1 GPU vs all of them (P = the GPU count)
#
# Both runs draw Phase 1's noise per batch (phase1.noise=counter, which sharding needs), so they are the
# same run up to float summation order. Prints both wall times, their ratio, both runs' validation PPL and
# the largest relative difference of their validation losses over the epochs (float drift, grown by Adam).
# Environment: DEVICE (cpu)  P (2 on CPU, the GPU count on CUDA)  OUT (runs/shard-bench)
#   POINT_ARGS (--preset quick --samples 64)  PYTHON (python)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
OUT=${OUT:-runs/shard-bench}
POINT_ARGS=${POINT_ARGS:---preset quick --samples 64}
PYTHON=${PYTHON:-python}
if [ "$DEVICE" = cuda ]; then P=${P:-$($PYTHON -c "import torch; print(torch.cuda.device_count())")}; else P=${P:-2}; fi
rm -rf "$OUT"
mkdir -p "$OUT"
ARGS="$POINT_ARGS --set phase1.noise=counter --device $DEVICE --no-progress"
start=$(date +%s)
$PYTHON -m cvfp.cli train $ARGS --out "$OUT/one" > "$OUT/one.log" 2>&1
one=$(( $(date +%s) - start ))
start=$(date +%s)
$PYTHON -m torch.distributed.run --standalone --nproc-per-node "$P" -m cvfp.cli train $ARGS --shard-point \
  --out "$OUT/sharded" > "$OUT/sharded.log" 2>&1
sharded=$(( $(date +%s) - start ))
echo "one process: ${one} s; sharded over $P processes: ${sharded} s; speed-up $($PYTHON -c "print(f'{$one / max($sharded, 1):.2f}')")x"
$PYTHON - "$OUT" <<'PY'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/{d}/summary.json")) for d in ("one", "sharded"))
drift = max(abs(x["val_loss"] - y["val_loss"]) / abs(x["val_loss"]) for x, y in zip(a["epochs"], b["epochs"]))
print(f"val PPL {a['val_ppl']:.4f} vs {b['val_ppl']:.4f}; epochs {len(a['epochs'])} vs {len(b['epochs'])}; "
      f"largest relative difference of an epoch's val loss: {drift:.1e}")
print(f"Phase 1 {a['phase1_seconds']:.0f} s vs {b['phase1_seconds']:.0f} s ({a['phase1_iterations']} vs "
      f"{b['phase1_iterations']} iterations), Phase 2 {a['phase2_seconds']:.0f} s vs {b['phase2_seconds']:.0f} s")
PY
