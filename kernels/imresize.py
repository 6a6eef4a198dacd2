"""Triton kernel of ``imresize`` (a separable resize given as tap tables; the contract is in
:mod:`fsgan_fast.ops.imresize`).

Launcher (the body of the private triton op ``fsgan_fast::_imresize_triton``):

* ``imresize_fwd(x, row_idx, row_w, col_idx, col_w) -> out``

One launch, grid (pixel blocks, B*C planes): each program computes BLOCK output pixels of one plane as
``sum_i row_w[y,i] * sum_j col_w[x,j] * x[row_idx[y,i], col_idx[x,j]]`` in float32, a gather per tap. SinGAN's
images are small (<= 250^2 x 3 per scale) and the tables narrow (6 taps upsampling by 1/r, 8 downsampling by
0.75), so a plane and its tables stay in L1/L2 and the gathers are cheap; a two-pass (rows, then columns)
version would need an intermediate buffer for no gain at these sizes. :func:`resize_at` is shared with the
fused ``pyramid_inject`` kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _alloc, _launch
from ._launch import wrap_triton

_BLOCK = 256
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@triton.jit
def resize_at(plane_ptr, Wi, row_idx_ptr, row_w_ptr, col_idx_ptr, col_w_ptr, y, x, Th, Tw, mask):
    """The resized value at output pixels (y, x) of one plane (float32), 0 where ``mask`` is off or a table is
    empty."""
    acc = tl.zeros(y.shape, dtype=tl.float32)
    for i in range(Th):
        ri = tl.load(row_idx_ptr + y * Th + i, mask=mask, other=0)
        rw = tl.load(row_w_ptr + y * Th + i, mask=mask, other=0.0)
        inner = tl.zeros(y.shape, dtype=tl.float32)
        for j in range(Tw):
            cj = tl.load(col_idx_ptr + x * Tw + j, mask=mask, other=0)
            cw = tl.load(col_w_ptr + x * Tw + j, mask=mask, other=0.0)
            v = tl.load(plane_ptr + ri * Wi + cj, mask=mask, other=0.0).to(tl.float32)
            inner += cw * v
        acc += rw * inner
    return acc


@triton.jit
def _imresize_kernel(x_ptr, row_idx_ptr, row_w_ptr, col_idx_ptr, col_w_ptr, out_ptr, Hi, Wi, Ho, Wo, Th, Tw,
                     BLOCK: tl.constexpr):
    plane = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < Ho * Wo
    y = offs // Wo
    x = offs % Wo
    val = resize_at(x_ptr + plane * Hi * Wi, Wi, row_idx_ptr, row_w_ptr, col_idx_ptr, col_w_ptr, y, x, Th, Tw, mask)
    tl.store(out_ptr + plane * Ho * Wo + offs, val.to(out_ptr.dtype.element_ty), mask=mask)


def imresize_fwd(x: torch.Tensor, row_idx: torch.Tensor, row_w: torch.Tensor, col_idx: torch.Tensor,
                 col_w: torch.Tensor) -> torch.Tensor:
    """out [B,C,Ho,Wo] in x's dtype, in one launch."""
    B, C, Hi, Wi = x.shape
    Ho, Th = row_idx.shape
    Wo, Tw = col_idx.shape
    out = _alloc.empty((B, C, Ho, Wo), x.dtype, x.device)
    with _launch.device_of(x):
        grid = (triton.cdiv(Ho * Wo, _BLOCK), B * C)
        wrap_triton(_imresize_kernel)[grid](x, row_idx, row_w, col_idx, col_w, out, Hi, Wi, Ho, Wo, Th, Tw,
                                            BLOCK=_BLOCK, num_warps=4)
    return out


def aot_variants(shape: tuple, dtype: torch.dtype):
    """``(op, kernel, signature, constexprs, num_warps)`` of what imresize_fwd launches for ``shape`` (unused: one
    specialisation per dtype)."""
    t = _TRITON_TYPES[dtype]
    sig = dict(x_ptr=f"*{t}", row_idx_ptr="*i64", row_w_ptr="*fp32", col_idx_ptr="*i64", col_w_ptr="*fp32",
               out_ptr=f"*{t}", Hi="i32", Wi="i32", Ho="i32", Wo="i32", Th="i32", Tw="i32")
    yield "imresize", _imresize_kernel, sig, dict(BLOCK=_BLOCK), 4


__all__ = ["imresize_fwd", "resize_at", "aot_variants"]
