#!/usr/bin/env bash
# The GPU checks in one go on one GPU (issues 14, 23, 24), each step under its own timeout:
#   1. parity on CUDA with AMP off against the shared fixtures' official outputs (<= 1e-3),
#      through the local engine and through `--engine ray` (one GPU actor);
#   2. the throughput table for docs/benchmarks.md: whole path fp32 and bf16, forward only in
#      three set-ups, CPU decode workers and nvJPEG decode (`pipeline bench extract`);
#   3. a short, timed `pipeline finetune` run of each recipe (issue 24): training images/s and
#      epoch time, amp auto (bf16), batch 64, 30 steps each (`benchmarks/finetune_timing.py`);
#   4. MTCNN face detection on CUDA: parity with the original's outputs and batched frames/s
#      (needs the MTCNN weights in $AFFECTPIPE_HOME/weights: `pipeline weights fetch mtcnn`).
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (PYTHON, AFFECTPIPE_SHARED override the defaults)
# Exit: 0 all checks passed, 1 a check failed, 2 no CUDA device / no fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SHARED=${AFFECTPIPE_SHARED:-../shared}
OUT=${1:-gpu_check_out}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch sees no CUDA device here: run this script on a GPU machine" >&2
    exit 2
fi
if [ ! -d "$SHARED/fixtures/images/bench112" ]; then
    echo "gpu_check: no shared fixtures at $SHARED (set AFFECTPIPE_SHARED)" >&2
    exit 2
fi
mkdir -p "$OUT"
"$PYTHON" -c 'import torch; print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

status=0
timeout 90 "$PYTHON" benchmarks/gpu_parity.py "$SHARED" "$OUT/parity" --engine local || status=1
if "$PYTHON" -c 'import ray.data' 2>/dev/null; then
    timeout 120 "$PYTHON" benchmarks/gpu_parity.py "$SHARED" "$OUT/parity" --engine ray || status=1
else
    echo "parity cuda ray: skipped (Ray not installed: pip install 'affectpipe[ray]')"
fi

F="$SHARED/fixtures"
timeout 240 "$PYTHON" -m affectpipe.pipeline bench extract --device cuda --repeat 20 \
    --batch-size 256 --images "$F/images/bench112" \
    --weights "mt-emotieffnet=$F/emotieffnet/enet_b0_8_va_mtl_calib.pt" \
    --weights "ddamfn=$F/ddamfn/ddamfn_affectnet8_calib.pth" \
    --json "$OUT/bench_cuda.json" | tee "$OUT/bench_cuda.md" || status=1
timeout 240 "$PYTHON" benchmarks/finetune_timing.py "$SHARED" "$OUT/finetune" --device cuda \
    --steps 30 --batch-size 64 | tee "$OUT/finetune_timing.md" || status=1
timeout 120 "$PYTHON" benchmarks/gpu_detect.py "$SHARED" | tee "$OUT/detect_cuda.md" || status=1
echo "gpu_check: results in $OUT (exit $status)"
exit "$status"
