"""Triton kernels of ``crop_resize`` (the contract is in :mod:`fsgan_fast.ops.crop_resize`).

Launchers (bodies of the private triton ops ``fsgan_fast::_crop_resize_triton`` / ``_crop_resize_backward_triton``):

* ``crop_resize_fwd(x, boxes, image_index, out_h, out_w) -> out [N,C,out_h,out_w]``
* ``crop_resize_bwd(grad, boxes, image_index, batch, height, width) -> grad_x [batch,C,height,width]``

One launch each for all boxes, grid (box x pixel tiles, channel blocks). A program takes BLOCK_P output pixels of
one box and BLOCK_C channels: the sample positions and bilinear weights depend on the box and the pixel only, so
they are computed once per pixel and reused across the channel block, and each of the four corner gathers is a
[BLOCK_C, BLOCK_P] load whose pixel axis walks neighbouring input columns. Sums in float32, rounded once.

The backward scatters ``weight * grad`` into a zeroed float32 buffer with relaxed atomics (bilinear footprints of
neighbouring pixels, and overlapping boxes, share input pixels), then rounds to grad's dtype. For OP-GAN's grids
and FastGAN's crops few lanes of a warp hit one address, so the atomics rarely contend.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _alloc, _launch
from ._launch import wrap_triton

_BLOCK_P = 256
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@triton.jit
def _sample_axis(start, stop, i, n_out, size):
    """Neighbours (i0, i1) in [0, size) and the weight of i1 for output indices ``i`` of one box's axis."""
    # IEEE division: a box of exactly the output size must step by exactly 1 (the exact-copy case)
    step = tl.div_rn(stop - start, n_out * 1.0)  # `* 1.0`, not .to(): Triton may pass a size of 1 as a constant
    pos = start + (i.to(tl.float32) + 0.5) * step
    pos = pos - 0.5
    last = (size - 1) * 1.0
    # comparisons, not minimum/maximum: a NaN position stays NaN (a NaN sample, as in the reference)
    pos = tl.where(pos < 0.0, 0.0, pos)
    pos = tl.where(pos > last, last, pos)
    low = tl.floor(pos)
    i0 = tl.where(low >= 0.0, low, 0.0).to(tl.int32)  # NaN reads pixel 0: never out of bounds
    i0 = tl.minimum(i0, size - 1)
    i1 = tl.minimum(i0 + 1, size - 1)
    return i0, i1, pos - low


@triton.jit
def _box_samples(boxes_ptr, index_ptr, n, offs, B, H, W, h, w):
    """For pixels ``offs`` of box ``n``: the flat in-plane offsets of the four corners, their weights (summation
    order r0c0, r0c1, r1c0, r1c1), the image (0 when invalid) and whether the image index is valid."""
    i = offs // w
    j = offs % w
    y0 = tl.load(boxes_ptr + n * 4)
    x0 = tl.load(boxes_ptr + n * 4 + 1)
    y1 = tl.load(boxes_ptr + n * 4 + 2)
    x1 = tl.load(boxes_ptr + n * 4 + 3)
    r0, r1, fy = _sample_axis(y0, y1, i, h, H)
    c0, c1, fx = _sample_axis(x0, x1, j, w, W)
    gy = 1.0 - fy
    gx = 1.0 - fx
    b = tl.load(index_ptr + n)
    valid = (b >= 0) & (b < B)
    b = tl.where(valid, b, 0)
    return (r0 * W + c0, r0 * W + c1, r1 * W + c0, r1 * W + c1, gy * gx, gy * fx, fy * gx, fy * fx, b, valid)


@triton.jit
def _crop_resize_fwd_kernel(x_ptr, boxes_ptr, index_ptr, out_ptr, B, C, H, W, h, w, tiles,
                            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    n = (tl.program_id(0) // tiles).to(tl.int64)
    offs = (tl.program_id(0) % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    live = offs < h * w
    o00, o01, o10, o11, w00, w01, w10, w11, b, valid = _box_samples(boxes_ptr, index_ptr, n, offs, B, H, W, h,
                                                                    w)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = (ch < C)[:, None] & live[None, :]
    plane = x_ptr + ((b * C + ch) * H * W)[:, None]  # int64 (b is): B*C*H*W may pass 2^31
    v = w00[None, :] * tl.load(plane + o00[None, :], mask=m, other=0.0).to(tl.float32)
    v += w01[None, :] * tl.load(plane + o01[None, :], mask=m, other=0.0).to(tl.float32)
    v += w10[None, :] * tl.load(plane + o10[None, :], mask=m, other=0.0).to(tl.float32)
    v += w11[None, :] * tl.load(plane + o11[None, :], mask=m, other=0.0).to(tl.float32)
    v = tl.where(valid, v, float("nan"))  # an image index outside [0, B) (outside the contract): a NaN row
    dst = out_ptr + ((n * C + ch) * h * w)[:, None] + offs[None, :]
    tl.store(dst, v.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _crop_resize_bwd_kernel(grad_ptr, boxes_ptr, index_ptr, acc_ptr, B, C, H, W, h, w, tiles,
                            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    n = (tl.program_id(0) // tiles).to(tl.int64)
    offs = (tl.program_id(0) % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    live = offs < h * w
    o00, o01, o10, o11, w00, w01, w10, w11, b, valid = _box_samples(boxes_ptr, index_ptr, n, offs, B, H, W, h,
                                                                    w)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = (ch < C)[:, None] & live[None, :]
    g = tl.load(grad_ptr + ((n * C + ch) * h * w)[:, None] + offs[None, :], mask=m, other=0.0).to(tl.float32)
    m = m & valid  # no gradient from a row outside the contract
    plane = acc_ptr + ((b * C + ch) * H * W)[:, None]
    tl.atomic_add(plane + o00[None, :], w00[None, :] * g, mask=m, sem="relaxed")
    tl.atomic_add(plane + o01[None, :], w01[None, :] * g, mask=m, sem="relaxed")
    tl.atomic_add(plane + o10[None, :], w10[None, :] * g, mask=m, sem="relaxed")
    tl.atomic_add(plane + o11[None, :], w11[None, :] * g, mask=m, sem="relaxed")


def _blocks(C, pixels) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P): up to 4 channels share a program's sample positions (RGB fits one block); fewer pixels
    per program when the crops are small, so tiny outputs do not mask most lanes off."""
    block_c = min(triton.next_power_of_2(_launch.size_hint(C)), 4)
    block_p = min(_BLOCK_P, max(32, triton.next_power_of_2(_launch.size_hint(pixels))))
    return block_c, block_p


def crop_resize_fwd(x: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor, out_h: int,
                    out_w: int) -> torch.Tensor:
    """out [N,C,out_h,out_w] in x's dtype, in one launch."""
    B, C, H, W = x.shape
    N = boxes.shape[0]
    out = _alloc.empty((N, C, out_h, out_w), x.dtype, x.device)
    if N == 0:
        return out
    block_c, block_p = _blocks(C, out_h * out_w)
    tiles = triton.cdiv(out_h * out_w, block_p)
    with _launch.device_of(x):
        grid = (N * tiles, triton.cdiv(C, block_c))
        wrap_triton(_crop_resize_fwd_kernel)[grid](x, boxes, image_index, out, B, C, H, W, out_h, out_w, tiles,
                                                   BLOCK_C=block_c, BLOCK_P=block_p, num_warps=4)
    return out


def crop_resize_bwd(grad: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor, batch: int, height: int,
                    width: int) -> torch.Tensor:
    """grad_x [batch,C,height,width] in grad's dtype (float32 atomics, rounded once), in one launch."""
    N, C, h, w = grad.shape
    acc = torch.zeros((batch, C, height, width), dtype=torch.float32, device=grad.device)
    if N > 0:
        block_c, block_p = _blocks(C, h * w)
        tiles = triton.cdiv(h * w, block_p)
        with _launch.device_of(grad):
            grid = (N * tiles, triton.cdiv(C, block_c))
            wrap_triton(_crop_resize_bwd_kernel)[grid](grad, boxes, image_index, acc, batch, C, height, width, h, w,
                                                       tiles, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=4)
    return acc if grad.dtype == torch.float32 else acc.to(grad.dtype)


def aot_variants(shape: tuple, dtype: torch.dtype):
    """``(op, kernel, signature, constexprs, num_warps)`` of what the launchers launch for ``shape = (C, h, w)``."""
    t = _TRITON_TYPES[dtype]
    C, h, w = shape
    block_c, block_p = _blocks(C, h * w)
    ints = dict(B="i32", C="i32", H="i32", W="i32", h="i32", w="i32", tiles="i32")
    constexprs = dict(BLOCK_C=block_c, BLOCK_P=block_p)
    fwd = dict(x_ptr=f"*{t}", boxes_ptr="*fp32", index_ptr="*i64", out_ptr=f"*{t}", **ints)
    yield "crop_resize", _crop_resize_fwd_kernel, fwd, constexprs, 4
    bwd = dict(grad_ptr=f"*{t}", boxes_ptr="*fp32", index_ptr="*i64", acc_ptr="*fp32", **ints)
    yield "crop_resize_backward", _crop_resize_bwd_kernel, bwd, constexprs, 4


__all__ = ["crop_resize_fwd", "crop_resize_bwd", "aot_variants"]
