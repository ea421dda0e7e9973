#!/usr/bin/env bash
# One command that checks and measures fcos_d2 on a lent GPU, results under $OUT.
#
#   bash tools/gpu_check.sh             # on the GPU machine (see README, "GPU check")
#   bash tools/gpu_check.sh --dry-run   # the same steps on the CPU, tiny sizes
#
# Steps: (1) install the wheels in .whl/ that are missing (tools/offline_wheels.sh makes
# them; torch is never touched), (2) the `cuda` tests (tests/test_cuda.py), (3)
# tools/benchmark.py at 800x1333 in float32 and with --amp (fcos_d2, Detectron2's FCOS and
# Mask R-CNN), (4) the shapes demo schedule, timed to its final AP. Then summary.md.
# Options: --skip-benchmark, --skip-demo (the dry run's fast parts, as the tests run it).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/output/gpu_check}
PY=${PYTHON:-python3}
DRY_RUN=0; BENCHMARK=1; DEMO=1
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    --skip-benchmark) BENCHMARK=0 ;;
    --skip-demo) DEMO=0 ;;
    *) echo "gpu_check.sh: unknown option $arg (--dry-run, --skip-benchmark, --skip-demo)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
LOG=$OUT/log.txt
: > "$LOG"
step() { echo "== $(date +%T) $*" | tee -a "$LOG"; }

step "1. packages"
if ! "$PY" -c "import detectron2, fvcore, pycocotools, iopath, yacs, omegaconf" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "detectron2 (or another dependency) is missing and .whl/ has no wheels: run" \
         "tools/offline_wheels.sh .whl 3.12 where there is network, and carry .whl" | tee -a "$LOG" >&2
    exit 1
  fi
  SITE=/tmp/fcos_d2_site
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl 2>&1 | tee -a "$LOG"
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-$REPO/datasets}
"$PY" - <<'PYEOF' 2>/dev/null | tee "$OUT/environment.json"
import json, platform, torch, torchvision, detectron2
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__,
    "torchvision": torchvision.__version__, "detectron2": detectron2.__version__,
    "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
}, indent=1))
PYEOF

if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu
  export FCOS_D2_CHECK_DEVICE=cpu
  BENCH_ARGS=(--device cpu --height 96 --width 128 --reps 1 --warmup 0 --assign-boxes 10)
  DEMO_OPTS=(SOLVER.MAX_ITER 20 SOLVER.STEPS "(15,)" SOLVER.WARMUP_ITERS 5 MODEL.DEVICE cpu)
else
  DEVICE=cuda
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU: use --dry-run')"
  BENCH_ARGS=(--device cuda --reps 10 --warmup 3)
  DEMO_OPTS=(MODEL.DEVICE cuda DATALOADER.NUM_WORKERS 4)
fi

step "2. cuda tests on $DEVICE"
set +e  # a failing test is reported, and the measurements still run
"$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt"
TESTS_RC=${PIPESTATUS[0]}
set -e

if [ "$BENCHMARK" = 1 ]; then
  MODELS=(--models fcos_d2 d2_fcos d2_mask_rcnn)
  step "3a. benchmark, float32"
  "$PY" tools/benchmark.py "${BENCH_ARGS[@]}" "${MODELS[@]}" --output "$OUT/benchmark_fp32.json" >> "$LOG" 2>&1
  step "3b. benchmark, mixed precision"
  "$PY" tools/benchmark.py "${BENCH_ARGS[@]}" "${MODELS[@]}" --amp --output "$OUT/benchmark_amp.json" >> "$LOG" 2>&1
fi

if [ "$DEMO" = 1 ]; then
  step "4. shapes demo schedule"
  # Checkpoints stay out of $OUT (only a few small files come back from a lent machine).
  DEMO_DIR=/tmp/fcos_d2_gpu_demo
  rm -rf "$DEMO_DIR"
  start=$(date +%s.%N)
  "$PY" train_net.py --config-file configs/shapes/FCOS_R_18_shapes_cpu.yaml \
    "${DEMO_OPTS[@]}" OUTPUT_DIR "$DEMO_DIR" >> "$LOG" 2>&1
  seconds=$("$PY" -c "print($(date +%s.%N) - $start)")
  "$PY" tools/gpu_check_summary.py --record-demo "$OUT/demo.json" --run-dir "$DEMO_DIR" \
    --seconds "$seconds" >> "$LOG" 2>&1
fi

step "summary"
"$PY" tools/gpu_check_summary.py --summarize "$OUT" | tee "$OUT/summary.md"
exit "$TESTS_RC"
