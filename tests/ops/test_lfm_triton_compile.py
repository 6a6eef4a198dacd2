"""The Triton kernels compile for the GPUs we target, within their resources, on a machine without a GPU.

The interpreter tests check the kernels' arithmetic; this checks the lowering the interpreter skips:
every variant the launchers pick for the benchmark and model shapes compiles to a cubin for sm_90
(H100/H200) and sm_80 (A100), its shared memory fits the GPU, and on sm_90, which the block sizes are
tuned for, ptxas keeps it in registers (no local memory, at most a few words of stack). On sm_80 some
variants spill a few hundred bytes with triton 3.6 (the fp32 backward at B64 K5 C256 16x16: 208 B):
slower there, not wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fsgan_fast import backends

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# dynamic shared memory a block may use (CUDA programming guide, compute capabilities table)
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
# bytes of stack per thread: a few spilled words; a kernel spilling whole tiles shows kilobytes
STACK_BUDGET = {90: 128}


@pytest.fixture(scope="module")
def compiled():
    if not backends.triton_installed():
        pytest.skip("the 'triton' package is not installed")
    import triton

    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")):
        pytest.skip("this triton wheel ships no cuobjdump to read the compiled kernels' resources")
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-m", "tests.ops.triton_aot", *map(str, SHARED_LIMIT)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_every_variant_compiles_for_each_target(compiled):
    from tests.ops.triton_aot import TRITON_TYPES

    for arch in SHARED_LIMIT:
        rows = [r for r in compiled if r["arch"] == arch]
        kernels = {(r["kernel"], r["dtype"], r["constexprs"].get("MATCH")) for r in rows}
        expected = {("_lfm_fwd_kernel", t, m) for t in TRITON_TYPES.values() for m in (True, False)}
        expected |= {("_lfm_bwd_kernel", t, None) for t in TRITON_TYPES.values()}
        assert kernels == expected, f"sm_{arch}: compiled {sorted(kernels, key=str)}"


def test_resources_fit_the_gpu(compiled):
    problems = []
    for r in compiled:
        what = f"sm_{r['arch']} {r['kernel']} {r['dtype']} {r['constexprs']} (shape {r['shape']})"
        if r["shared_bytes"] > SHARED_LIMIT[r["arch"]]:
            problems.append(f"{what}: {r['shared_bytes']} B of shared memory > {SHARED_LIMIT[r['arch']]}")
        if r["reg"] > 255:
            problems.append(f"{what}: {r['reg']} registers")
        budget = STACK_BUDGET.get(r["arch"])
        if budget is not None and (r["local"] > 0 or r["stack"] > budget):
            problems.append(f"{what}: spills (local {r['local']} B, stack {r['stack']} B per thread)")
    assert not problems, "\n".join(problems)


def test_refuses_to_run_under_the_interpreter():
    if not backends.triton_installed():
        pytest.skip("the 'triton' package is not installed")
    proc = subprocess.run([sys.executable, "-m", "tests.ops.triton_aot"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TRITON_INTERPRET="1"), timeout=300)
    assert proc.returncode != 0 and "TRITON_INTERPRET=0" in proc.stderr
