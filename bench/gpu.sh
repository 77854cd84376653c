#!/usr/bin/env bash
# The GPU check of the scale work, in one script (target: under 8 minutes on one H200).
#
#   bash bench/gpu.sh                      # CUDA: the seed preset's 4 points + 2,000 and 5,000 samples
#
# It prints (1) the recurrence loops at the seed config (fast vs plain, streams side by side),
# (2) Phase 1 / Phase 2 steps against plain GEMMs at the seed preset's shapes, (3) the sweep itself,
# then every point's time, tokens/s per phase and peak memory (bench/points_table.py), (4) how
# exactly a point interrupted in Phase 2 and resumed matches an uninterrupted one (bench/resume.py),
# (5) the full, adaptive and tied heads side by side (bench/heads.py) and (6) the medium preset's sweep
# (>= 1M train tokens, the adaptive head) with its points table, and (7) the end-to-end training steps
# (bench/end_to_end.py: Phase 2, the parallel end-to-end step, the RNN-trained cell).
# Targets: the four seed points in under 1 minute, the 5,000-sample point in under 5 minutes.
#
# Every part can be shrunk through the environment, which is how tests/test_bench.py runs this
# script's CPU twin on a tiny corpus:
#   DEVICE (cuda)  OUT (runs/gpu-bench)  SAMPLES (50,100,200,500,2000,5000)
#   SWEEP_ARGS (--preset seed)  RECURRENCE_ARGS (--tokens 2000 --streams 64)  STEP_ARGS (--preset seed)
#   RESUME_ARGS (--preset quick --samples 32 --interrupt-at 10)  HEADS_ARGS (--configs quick,seed)
#   MEDIUM_ARGS (--preset medium)  E2E_ARGS (--repeats 5)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu-bench}
SAMPLES=${SAMPLES:-50,100,200,500,2000,5000}
SWEEP_ARGS=${SWEEP_ARGS:---preset seed}
RECURRENCE_ARGS=${RECURRENCE_ARGS:---tokens 2000 --streams 64}
STEP_ARGS=${STEP_ARGS:---preset seed}
RESUME_ARGS=${RESUME_ARGS:---preset quick --samples 32 --interrupt-at 10}
HEADS_ARGS=${HEADS_ARGS:---configs quick,seed}
MEDIUM_ARGS=${MEDIUM_ARGS:---preset medium}
E2E_ARGS=${E2E_ARGS:---repeats 5}
PYTHON=${PYTHON:-python}

echo "== recurrence ($DEVICE)"
$PYTHON bench/recurrence.py --device "$DEVICE" $RECURRENCE_ARGS
echo "== steps against plain GEMMs ($DEVICE)"
$PYTHON bench/step_rate.py --device "$DEVICE" $STEP_ARGS
echo "== sweep: cvfp scaling $SWEEP_ARGS --samples $SAMPLES"
start=$(date +%s)
$PYTHON -m cvfp.cli scaling $SWEEP_ARGS --samples "$SAMPLES" --device "$DEVICE" --out "$OUT" --no-progress
echo "sweep wall time: $(( $(date +%s) - start )) s"
$PYTHON bench/points_table.py "$OUT"
echo "== resume inside a point ($DEVICE)"
$PYTHON bench/resume.py --device "$DEVICE" $RESUME_ARGS
echo "== heads: full vs adaptive vs tied ($DEVICE)"
$PYTHON bench/heads.py --device "$DEVICE" $HEADS_ARGS
echo "== medium sweep: cvfp scaling $MEDIUM_ARGS"
start=$(date +%s)
$PYTHON -m cvfp.cli scaling $MEDIUM_ARGS --device "$DEVICE" --out "$OUT-medium" --no-progress
echo "medium sweep wall time: $(( $(date +%s) - start )) s"
$PYTHON bench/points_table.py "$OUT-medium"
echo "== end-to-end training steps ($DEVICE)"
$PYTHON bench/end_to_end.py --device "$DEVICE" $E2E_ARGS
