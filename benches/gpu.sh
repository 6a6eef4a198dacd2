#!/usr/bin/env bash
# On the lent GPU (device tool): build the extension, run every test with the CUDA and Triton backends for
# real, then the benchmarks; write logs, the pytest-benchmark JSON and a markdown table to $OUT
# (and to benches/results/ when run in a checkout).
#
#   [FSGAN_GIT_SHA=<commit>] bash benches/gpu.sh [STAGE...] [-k FILTER]
#
# Stages (default: all, in this order; one device call holds at most 10 minutes, so split them there):
#   tests     every test, GPU-marked ones included
#   ops       benches/ops      (lfm_fuse, sle_gate: reference / compiled / triton / cuda)
#   models    benches/models   (LoFGAN, FastGAN: train step and generation per backend)
#   export    benches/export   (generation per deployment path: eager, compile, CUDA graph, AOTI, TensorRT)
# The build runs first in every call (a no-op when the extension is up to date). The commit recorded in the
# results is FSGAN_GIT_SHA when set (the device tool copies the working tree, maybe without .git), else git's HEAD.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benches/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}

stages=() filter=""
while [ $# -gt 0 ]; do
  case "$1" in
    -k) filter="$2"; shift 2 ;;
    tests|ops|models|export) stages+=("$1"); shift ;;
    all) stages+=(tests ops models export); shift ;;
    *) echo "unknown stage $1 (tests|ops|models|export|all, -k FILTER)"; exit 2 ;;
  esac
done
[ ${#stages[@]} -eq 0 ] && stages=(tests ops models export)
status=0

# --no-deps installs nothing else: say at once what the machine lacks rather than failing stage by stage
python - <<'PY' || exit 3
import importlib.util, sys
need = ["torch", "triton", "numpy", "pytest", "pytest_benchmark", "ninja", "skimage", "PIL", "tqdm"]
optional = ["onnx", "onnxscript", "onnxruntime", "tensorrt", "lpips"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
print("optional, absent (their tests and benchmarks skip):", [m for m in optional if importlib.util.find_spec(m) is None])
sys.exit(f"missing packages: {missing}" if missing else 0)
PY
python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20 | tee "$OUT/build.log" || status=1
python -c "import fsgan_fast; fsgan_fast.info(print_out=True)" 2>&1 | tee "$OUT/info.txt"

gpu=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))" 2>/dev/null || echo cpu)
FSGAN_GIT_SHA=${FSGAN_GIT_SHA:-$(git rev-parse --short HEAD 2>/dev/null || echo nogit)}
export FSGAN_GIT_SHA
stamp="$gpu-$(date -u +%Y-%m-%d)-$FSGAN_GIT_SHA"

for stage in "${stages[@]}"; do
  start=$(date +%s)
  if [ "$stage" = tests ]; then
    # correctness first: a fast wrong kernel is worth nothing
    python -m pytest tests -q -x --benchmark-disable -p no:cacheprovider --durations=25 ${filter:+-k "$filter"} 2>&1 \
      | tee "$OUT/tests-$stamp.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  else
    json="$OUT/$stamp-$stage.json"
    python -m pytest "benches/$stage" -q -p no:cacheprovider --benchmark-enable --benchmark-json="$json" --durations=25 \
      --benchmark-columns=median,iqr,rounds ${filter:+-k "$filter"} 2>&1 | tee "$OUT/bench-$stamp-$stage.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    [ -s "$json" ] && python benches/report.py "$json" | tee "$OUT/$stamp-$stage.md"
  fi
  echo "== $stage: $(( $(date +%s) - start )) s"
done
exit $status
