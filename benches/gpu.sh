#!/usr/bin/env bash
# On the lent GPU (device tool): build the extension, run every test with the CUDA and Triton backends for
# real, then the benchmarks; write logs, the pytest-benchmark JSON and a markdown table to $OUT
# (and to benches/results/ when run in a checkout). Usage: bash benches/gpu.sh [extra pytest -k filter]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benches/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
status=0

python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20 | tee "$OUT/build.log" || status=1
python -c "import fsgan_fast; fsgan_fast.info(print_out=True)" 2>&1 | tee "$OUT/info.txt"

gpu=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))" 2>/dev/null || echo cpu)
stamp="$gpu-$(date -u +%Y-%m-%d)-$(git rev-parse --short HEAD 2>/dev/null || echo nogit)"

# correctness first, in the same run that times: a fast wrong kernel is worth nothing
python -m pytest tests -q -x --benchmark-disable -p no:cacheprovider ${1:+-k "$1"} 2>&1 | tee "$OUT/tests-$stamp.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

python -m pytest benches -q -p no:cacheprovider --benchmark-enable --benchmark-json="$OUT/$stamp.json" \
  --benchmark-columns=median,iqr,rounds ${1:+-k "$1"} 2>&1 | tee "$OUT/bench-$stamp.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
[ -f "$OUT/$stamp.json" ] && python benches/report.py "$OUT/$stamp.json" | tee "$OUT/$stamp.md"
exit $status
