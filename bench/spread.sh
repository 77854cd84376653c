#!/usr/bin/env bash
# A sweep in one process vs spread over P processes with torchrun, on one machine.
#
#   bash bench/spread.sh                  # CPU: the quick preset, 1 process vs 2
#   DEVICE=cuda bash bench/spread.sh      # a GPU node: 1 GPU vs all of them (P = the GPU count)
#
# Prints both wall times, their ratio, and whether the two results.json hold the same points
# (val loss to 1e-6 relative: one process vs several differ only in threads per process).
# Environment: DEVICE (cpu)  P (2 on CPU, the GPU count on CUDA)  OUT (runs/spread-bench)
#   SWEEP_ARGS (--preset quick --samples 8,16,32,64)  PYTHON (python)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
OUT=${OUT:-runs/spread-bench}
SWEEP_ARGS=${SWEEP_ARGS:---preset quick --samples 8,16,32,64}
PYTHON=${PYTHON:-python}
if [ "$DEVICE" = cuda ]; then P=${P:-$($PYTHON -c "import torch; print(torch.cuda.device_count())")}; else P=${P:-2}; fi
rm -rf "$OUT"
start=$(date +%s)
$PYTHON -m cvfp.cli scaling $SWEEP_ARGS --device "$DEVICE" --out "$OUT/one" --no-progress > "$OUT.one.log" 2>&1
one=$(( $(date +%s) - start ))
start=$(date +%s)
$PYTHON -m torch.distributed.run --standalone --nproc-per-node "$P" -m cvfp.cli scaling $SWEEP_ARGS \
  --device "$DEVICE" --out "$OUT/spread" --no-progress > "$OUT.spread.log" 2>&1
spread=$(( $(date +%s) - start ))
echo "one process: ${one} s; $P processes: ${spread} s; speed-up $($PYTHON -c "print(f'{$one / max($spread, 1):.2f}')")x"
$PYTHON - "$OUT" <<'PY'
import json, math, sys
a, b = (json.load(open(f"{sys.argv[1]}/{d}/results.json"))["points"] for d in ("one", "spread"))
key = lambda p: (p["samples"], p["seed"])
a, b = sorted(a, key=key), sorted(b, key=key)
same = [key(p) for p in a] == [key(q) for q in b] and all(
    math.isclose(p["val_loss"], q["val_loss"], rel_tol=1e-6) for p, q in zip(a, b))
print(f"points {len(a)} vs {len(b)}; same results: {same}")
for p, q in zip(a, b):
    print(f"  N={p['samples']} seed {p['seed']}: val PPL {p['val_ppl']:.2f} vs {q['val_ppl']:.2f}; "
          f"{p['seconds']:.0f} s vs {q['seconds']:.0f} s")
PY
