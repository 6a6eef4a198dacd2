"""Compile the Triton kernels for real GPU targets on a machine without a GPU, and report their resources.

The CPU interpreter runs the kernels' arithmetic but never lowers them: a kernel can pass every
interpreter test and still fail to compile for a GPU, or compile into one that needs more shared memory
than the GPU has (caught only at launch) or spills its registers to local memory. Triton compiles for an
explicit ``GPUTarget`` with no device present (its wheel ships ptxas and cuobjdump), so this script lowers
every kernel variant the launchers would pick to a cubin and prints, as JSON, the resource usage that ptxas
assigned, one row per (arch, op, variant).

The variants come from each op family's provider, ``@kit.aot_variants(family, shapes)`` in
``tests/ops/test_<op>.py``: ``fn(shape, dtype)`` yields ``kit.AotVariant(op, kernel, signature, constexprs,
num_warps)`` for the block sizes the launchers pick; each is compiled for every dtype its op's spec lists.

Run as ``TRITON_INTERPRET=0 python -m tests.ops.triton_aot [ARCH ...]`` (default 90): it must import the
kernels with the interpreter off, hence a separate process. ``FSGAN_FAST_AOT_JOBS`` compiles in that many
forked processes (default: half the CPUs, at most 8; one on a 2-core CI machine).
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tests.ops import kit

TRITON_TYPES = kit.TRITON_TYPES

# (arch, family, shape, dtype name, variant) to compile; module-level so that forked workers inherit it
_JOBS: list[tuple] = []


def _resources(cubin: bytes) -> dict:
    """ptxas's per-kernel registers, stack (spills land there) and local memory, read with cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    return {key.lower(): int(val) for key, val in re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", text)}


def _compile(i: int) -> dict:
    arch, _, _, _, v = _JOBS[i]
    src = ASTSource(fn=v.kernel, signature={**v.signature, **{k: "constexpr" for k in v.constexprs}},
                    constexprs=v.constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": v.num_warps})
    return dict(shared_bytes=int(kernel.metadata.shared), **_resources(kernel.asm["cubin"]))


def _key(arch: int, dtype: str, v: kit.AotVariant) -> tuple:
    return (arch, v.kernel.__name__, dtype, tuple(sorted(v.signature.items())), tuple(sorted(v.constexprs.items())),
            v.num_warps)


def compile_all(archs: list[int], jobs: int = 1) -> list[dict]:
    kit.load_op_tests()
    rows, first_job, served = [], {}, set()
    for arch in archs:
        for family, shape, dtype, v in kit.all_aot_variants():
            key = _key(arch, TRITON_TYPES[dtype], v)
            if key not in first_job:
                first_job[key] = len(_JOBS)
                _JOBS.append((arch, family, shape, TRITON_TYPES[dtype], v))
            if (v.op, key) in served:  # one row per op and variant (two ops may share a variant)
                continue
            served.add((v.op, key))
            rows.append(dict(arch=arch, family=family, op=v.op, kernel=v.kernel.__name__, dtype=TRITON_TYPES[dtype],
                             shape=list(shape), warps=v.num_warps, constexprs=dict(v.constexprs), job=first_job[key]))
    if jobs > 1 and len(_JOBS) > 1:
        # fork: the workers inherit the imported kernels and _JOBS (nothing here has touched a GPU)
        pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"))
        with pool:
            results = list(pool.map(_compile, range(len(_JOBS))))
    else:
        results = [_compile(i) for i in range(len(_JOBS))]
    for row in rows:
        row.update(results[row.pop("job")])
    return rows


def main(argv: list[str]) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run with TRITON_INTERPRET=0: the interpreter replaces the kernels it would compile")
    archs = [int(a) for a in argv] or [90]
    jobs = int(os.environ.get("FSGAN_FAST_AOT_JOBS", max(1, min(8, (os.cpu_count() or 2) // 2))))
    json.dump(compile_all(archs, jobs), sys.stdout, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
