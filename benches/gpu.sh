#!/usr/bin/env bash
# On the lent GPU (device tool): build the extension, run the tests with the CUDA and Triton backends for
# real, then the benchmarks; write logs, the pytest-benchmark JSON and a markdown table per stage.
#
#   [FSGAN_GIT_SHA=<commit>] [BUDGET=<seconds>] [PACK=<file.tgz>] bash benches/gpu.sh [STAGE...] [-k FILTER]
#
# Stages (default: all, in this order):
#   tests     every test, GPU-marked ones included
#   gputests  only what runs on the GPU: op tests on cuda devices, GPU-marked export tests, backend selection
#   ops       benches/ops      (lfm_fuse, sle_gate, pyramid, patch_grid, cosine_topk, masked_avg_pool: reference /
#                               compiled / triton / cuda)
#   models    benches/models   (LoFGAN, FastGAN, SinGAN, OP-GAN, MatchGAN, StyleGAN2, SMIS: train step and generation)
#   export    benches/export   (generation per deployment path: eager, compile, CUDA graph, AOTI, TensorRT)
# BUDGET (seconds, from the start of the script) bounds the whole run: each stage gets what is left less a
# margin and is interrupted with SIGINT when it runs out; benchmark cases that would start in the last
# BENCH_MARGIN (75) seconds skip, so pytest still writes the JSON of what it timed. TESTS_CAP caps a test stage.
# Results go to RESULTS (default benches/results; a device copy of the tree is thrown away, so the device
# command packs them: PACK=$OUT/results.tgz re-packs RESULTS after every stage, so a cut run still returns
# what it finished). TESTS_K adds a -k filter to the gputests stage, BENCH_K one to the benchmark stages
# (e.g. "not compiled" to skip the minutes of torch.compile). The commit recorded is FSGAN_GIT_SHA when set,
# else git's HEAD.
set -uo pipefail
cd "$(dirname "$0")/.."
began=$(date +%s)
RESULTS=${RESULTS:-benches/results}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
BUDGET=${BUDGET:-0}  # 0: no limit

stages=() filter=""
while [ $# -gt 0 ]; do
  case "$1" in
    -k) filter="$2"; shift 2 ;;
    tests|gputests|ops|models|export) stages+=("$1"); shift ;;
    all) stages+=(tests ops models export); shift ;;
    *) echo "unknown stage $1 (tests|gputests|ops|models|export|all, -k FILTER)"; exit 2 ;;
  esac
done
[ ${#stages[@]} -eq 0 ] && stages=(tests ops models export)
status=0

pack() { [ -n "${PACK:-}" ] && tar czf "$PACK" -C "$RESULTS" . 2>/dev/null; true; }
left() { [ "$BUDGET" -gt 0 ] && echo $(( BUDGET - ($(date +%s) - began) )) || echo 0; }
# run a stage under the budget: SIGINT at the deadline (pytest then writes its reports), SIGKILL 20 s later
# (a first argument CAP > 0 also caps the stage at CAP seconds)
bounded() {
  local cap=$1 rest; shift; rest=$(( $(left) - 25 ))
  [ "$cap" -gt 0 ] && { [ "$BUDGET" -eq 0 ] || [ "$cap" -lt "$rest" ]; } && rest=$cap
  if [ "$BUDGET" -gt 0 ] || [ "$cap" -gt 0 ]; then
    [ "$rest" -lt 5 ] && { echo "== skipped: the budget is spent"; return 124; }
    timeout -s INT -k 20 "$rest" "$@"
  else
    "$@"
  fi
}

# --no-deps installs nothing else: say at once what the machine lacks rather than failing stage by stage
python - <<'PY' || exit 3
import importlib.util, sys
need = ["torch", "triton", "numpy", "pytest", "pytest_benchmark", "ninja", "skimage", "PIL", "tqdm"]
optional = ["onnx", "onnxscript", "onnxruntime", "tensorrt", "lpips", "xdist"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
print("optional, absent (their tests and benchmarks skip):", [m for m in optional if importlib.util.find_spec(m) is None])
sys.exit(f"missing packages: {missing}" if missing else 0)
PY
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1; } | tee "$RESULTS/nvidia-smi.txt"
if [ "${SKIP_BUILD:-0}" != 1 ]; then  # SKIP_BUILD=1: the extension in place is current
  python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20 | tee "$RESULTS/build.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
echo "== build: $(( $(date +%s) - began )) s"
python -c "import fsgan_fast; fsgan_fast.info(print_out=True)" 2>&1 | tee "$RESULTS/info.txt"
pack

gpu=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))" 2>/dev/null || echo cpu)
FSGAN_GIT_SHA=${FSGAN_GIT_SHA:-$(git rev-parse --short HEAD 2>/dev/null || echo nogit)}
export FSGAN_GIT_SHA
stamp="$gpu-$(date -u +%Y-%m-%d)-$FSGAN_GIT_SHA"
workers=()
python -c "import xdist" 2>/dev/null && workers=(-n "$(( $(nproc) > 12 ? 12 : $(nproc) ))")
per_test=()
python -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 150)

for stage in "${stages[@]}"; do
  start=$(date +%s)
  case "$stage" in
    tests|gputests)
      # correctness first: a fast wrong kernel is worth nothing
      if [ "$stage" = tests ]; then
        where=(tests) select=${filter}
      else
        # the nvcc compile checks run in CI already; here only what executes on the device
        where=(tests/ops tests/export tests/train tests/models tests/test_backends.py)
        select="(cuda or gpu) and not test_cuda_compile${filter:+ and ($filter)}${TESTS_K:+ and ($TESTS_K)}"
      fi
      bounded "${TESTS_CAP:-0}" python -m pytest "${where[@]}" -q -rfE --benchmark-disable -p no:cacheprovider --durations=15 \
        "${workers[@]}" "${per_test[@]}" ${select:+-k "$select"} 2>&1 | tee "$RESULTS/$stage-$stamp.log"
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      ;;
    *)
      json="$RESULTS/$stamp-$stage.json"
      # cases starting after this skip: a case must finish inside the last minute before the stage's cut
      [ "$BUDGET" -gt 0 ] && export FSGAN_BENCH_DEADLINE=$(( began + BUDGET - ${BENCH_MARGIN:-75} ))
      sel="${filter}${filter:+${BENCH_K:+ and }}${BENCH_K:-}"
      bounded 0 python -m pytest "benches/$stage" -q -p no:cacheprovider --benchmark-enable --benchmark-json="$json" \
        --durations=15 --benchmark-columns=median,iqr,rounds ${sel:+-k "$sel"} 2>&1 | tee "$RESULTS/bench-$stamp-$stage.log"
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      [ -s "$json" ] && python benches/report.py "$json" | tee "$RESULTS/$stamp-$stage.md"
      ;;
  esac
  echo "== $stage: $(( $(date +%s) - start )) s (total $(( $(date +%s) - began )) s)"
  pack
done
exit $status
