"""Every registered op's Triton kernels compile for the GPUs we target, within their resources, without a GPU.

The interpreter tests check the kernels' arithmetic; this checks the lowering the interpreter skips:
every variant the launchers pick for the providers' shapes (``@kit.aot_variants`` in ``tests/ops/test_<op>.py``,
compiled by ``tests/ops/triton_aot.py``) compiles to a cubin for sm_90 (H100/H200) and sm_80 (A100) in every
dtype its op takes, its shared memory fits the GPU, and on sm_90, which the block sizes are tuned for, ptxas
keeps it in registers (no local memory, at most a few words of stack). On sm_80 some variants spill a few
hundred bytes with triton 3.6 (lfm's fp32 backward at B64 K5 C256 16x16: 208 B): slower there, not wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fsgan_fast import backends
from tests.ops import kit

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


def test_every_triton_op_has_a_variant_provider():
    """A registered op with a Triton backend needs an AOT provider yielding its variants (runs without a GPU
    toolchain: it only calls the providers)."""
    if not backends.triton_installed():
        pytest.skip("the 'triton' package is not installed")
    kit.load_op_tests()
    covered = {v.op for _, _, _, v in kit.all_aot_variants()}
    missing = [f"{op} (family {kit.family(op)!r})" for op in kit.ops_with_backend("triton") if op not in covered]
    assert not missing, (f"no Triton AOT variants for {missing}: add a @kit.aot_variants('<family>', shapes) provider "
                         f"to tests/ops/test_<family>.py (families with one: {sorted(kit.AOT_PROVIDERS)})")
    unknown = sorted(covered - set(kit.ops_with_backend("triton")))
    assert not unknown, f"AOT variants name ops without a Triton backend: {unknown}"


def test_every_variant_compiles_for_each_target(compiled):
    """Each registered Triton op compiled in every dtype its spec lists, for each target."""
    ops = kit.ops_with_backend("triton")
    expected = {(op, kit.TRITON_TYPES[d]) for op in ops for d in kit.op_spec(op).triton_dtypes}
    for arch in SHARED_LIMIT:
        got = {(r["op"], r["dtype"]) for r in compiled if r["arch"] == arch}
        assert got == expected, f"sm_{arch}: missing {sorted(expected - got)}, unexpected {sorted(got - expected)}"


def test_resources_fit_the_gpu(compiled):
    problems = []
    for r in compiled:
        what = f"sm_{r['arch']} {r['op']}: {r['kernel']} {r['dtype']} {r['constexprs']} (shape {r['shape']})"
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
