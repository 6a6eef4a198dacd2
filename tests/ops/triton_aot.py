"""Compile the Triton kernels for real GPU targets on a machine without a GPU, and report their resources.

The CPU interpreter runs the kernels' arithmetic but never lowers them: a kernel can pass every
interpreter test and still fail to compile for a GPU, or compile into one that needs more shared memory
than the GPU has (caught only at launch) or spills its registers to local memory. Triton compiles for an
explicit ``GPUTarget`` with no device present (its wheel ships ptxas and cuobjdump), so this script lowers
every kernel variant the launchers would pick for the given shapes to a cubin and prints, as JSON, the
resource usage that ptxas assigned.

Run as ``TRITON_INTERPRET=0 python -m tests.ops.triton_aot [ARCH ...]`` (default 90): it must import the
kernels with the interpreter off, hence a separate process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fsgan_fast.kernels import lfm

TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# (B, K, C, H, W, n): the benchmark sizes of PERFORMANCE.md, LoFGAN's 64/128/256 px generators
# (8x8 feature grid, half the positions selected), and tiny/odd shapes that take the smallest blocks
SHAPES = [
    (8, 3, 128, 8, 8, 32),
    (64, 5, 256, 16, 16, 128),
    (1, 3, 128, 8, 8, 32),
    (64, 3, 128, 8, 8, 32),
    (8, 3, 256, 16, 16, 128),
    (2, 2, 3, 5, 7, 1),
]


def _fwd_variants(B, K, C, H, W, n, dtype):
    P = H * W
    cfg = dict(lfm._fwd_config(B, C, P, n, dtype))
    warps = cfg.pop("num_warps")
    t = TRITON_TYPES[dtype]
    signature = dict(x_ptr=f"*{t}", base_ptr="*i64", pos_ptr="*i64", alpha_ptr="*fp32", idx_ptr="*i64",
                     out_ptr=f"*{t}", K="i32", C="i32", P="i32", n="i32", num_t_blocks="i32", blocks_per_row="i32")
    for match in (True, False):  # lfm_fuse forward / lfm_apply forward
        yield lfm._lfm_fwd_kernel, signature, dict(MATCH=match, **cfg), warps


def _bwd_variants(B, K, C, H, W, n, dtype):
    cfg = dict(lfm._bwd_config(C, H * W, n, dtype))
    warps = cfg.pop("num_warps")
    t = TRITON_TYPES[dtype]
    signature = dict(grad_ptr=f"*{t}", x_ptr=f"*{t}", base_ptr="*i64", pos_ptr="*i64", idx_ptr="*i64",
                     alpha_ptr="*fp32", gx_ptr=f"*{t}", ga_ptr="*fp32", K="i32", C="i32", P="i32", n="i32")
    yield lfm._lfm_bwd_kernel, signature, cfg, warps


def _resources(cubin: bytes) -> dict:
    """ptxas's per-kernel registers, stack (spills land there) and local memory, read with cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    return {key.lower(): int(val) for key, val in re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", text)}


def compile_all(archs: list[int]) -> list[dict]:
    seen, rows = set(), []
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for shape in SHAPES:
            for dtype in TRITON_TYPES:
                for variants in (_fwd_variants, _bwd_variants):
                    for fn, signature, consts, warps in variants(*shape, dtype):
                        key = (arch, fn.__name__, TRITON_TYPES[dtype], tuple(sorted(consts.items())), warps)
                        if key in seen:
                            continue
                        seen.add(key)
                        src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in consts}},
                                        constexprs=consts)
                        kernel = triton.compile(src, target=target, options={"num_warps": warps})
                        row = dict(arch=arch, kernel=fn.__name__, dtype=TRITON_TYPES[dtype], shape=list(shape),
                                   warps=warps, constexprs={k: v for k, v in consts.items()},
                                   shared_bytes=int(kernel.metadata.shared))
                        row.update(_resources(kernel.asm["cubin"]))
                        rows.append(row)
    return rows


def main(argv: list[str]) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run with TRITON_INTERPRET=0: the interpreter replaces the kernels it would compile")
    archs = [int(a) for a in argv] or [90]
    json.dump(compile_all(archs), sys.stdout, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
