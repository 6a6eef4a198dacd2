"""Triton kernels of SinGAN's scale step (the contract is in :mod:`fsgan_fast.ops.pyramid`).

Launchers (bodies of the private triton ops ``fsgan_fast::_pyramid_inject_triton`` / ``_pyramid_blend_triton``):

* ``pyramid_inject_fwd(prev, row_idx, row_w, col_idx, col_w, noise, amp, pad) -> (up, g_in)``
* ``pyramid_blend_fwd(up, residual, mask) -> out``

``pyramid_inject`` is one launch over the padded input's pixels, grid (pixel blocks, B*C planes): each program
resizes the inner pixels of its block (:func:`kernels.imresize.resize_at`, float32), writes them to ``up``, adds
``amp * noise`` (its channel, or channel 0 for one-channel noise; over the padded frame too when the noise was
drawn at the padded size) and writes ``g_in`` with its zero border: the reference's resize, crop, noise add and
two pads in one pass, and ``up`` is never re-read.

``pyramid_blend`` is an elementwise pass (one read of up and residual, one of the mask per pixel, one write).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _alloc, _launch
from ._launch import wrap_triton
from .imresize import resize_at

_BLOCK = 256
_BLEND_BLOCK = 1024
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@triton.jit
def _inject_kernel(prev_ptr, row_idx_ptr, row_w_ptr, col_idx_ptr, col_w_ptr, noise_ptr, amp_ptr, up_ptr, g_ptr,
                   C, Hi, Wi, Ho, Wo, Th, Tw, Cn, pad, NOISE_PADDED: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(1).to(tl.int64)  # b * C + c
    b = plane // C
    c = plane % C
    Hp = Ho + 2 * pad
    Wp = Wo + 2 * pad
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < Hp * Wp
    yy = offs // Wp
    xx = offs % Wp
    y = yy - pad
    x = xx - pad
    inside = live & (y >= 0) & (y < Ho) & (x >= 0) & (x < Wo)
    up = resize_at(prev_ptr + plane * Hi * Wi, Wi, row_idx_ptr, row_w_ptr, col_idx_ptr, col_w_ptr, y, x, Th, Tw,
                   inside)
    tl.store(up_ptr + plane * Ho * Wo + y * Wo + x, up.to(up_ptr.dtype.element_ty), mask=inside)
    cn = c % Cn  # Cn is 1 (one noise map for every channel) or C
    noise_plane = noise_ptr + (b * Cn + cn) * (Hp * Wp if NOISE_PADDED else Ho * Wo)
    if NOISE_PADDED:
        n = tl.load(noise_plane + offs, mask=live, other=0.0).to(tl.float32)
    else:
        n = tl.load(noise_plane + y * Wo + x, mask=inside, other=0.0).to(tl.float32)
    amp = tl.load(amp_ptr + b)
    tl.store(g_ptr + plane * Hp * Wp + offs, (up + amp * n).to(g_ptr.dtype.element_ty), mask=live)


@triton.jit
def _blend_kernel(up_ptr, res_ptr, mask_ptr, out_ptr, N, HW, CHW, MASK_BATCHED: tl.constexpr, HAS_MASK: tl.constexpr,
                  BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < N
    up = tl.load(up_ptr + offs, mask=live, other=0.0).to(tl.float32)
    r = tl.load(res_ptr + offs, mask=live, other=0.0).to(tl.float32)
    if HAS_MASK:
        pix = offs % HW
        if MASK_BATCHED:
            pix += (offs // CHW) * HW
        r = r * tl.load(mask_ptr + pix, mask=live, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (up + r).to(out_ptr.dtype.element_ty), mask=live)


def pyramid_inject_fwd(prev: torch.Tensor, row_idx: torch.Tensor, row_w: torch.Tensor, col_idx: torch.Tensor,
                       col_w: torch.Tensor, noise: torch.Tensor, amp: torch.Tensor,
                       pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [B,C,Ho,Wo], g_in [B,C,Ho+2p,Wo+2p]) in prev's dtype, in one launch."""
    B, C, Hi, Wi = prev.shape
    Ho, Th = row_idx.shape
    Wo, Tw = col_idx.shape
    Cn, Hn = noise.shape[1], noise.shape[2]
    up = _alloc.empty((B, C, Ho, Wo), prev.dtype, prev.device)
    g_in = _alloc.empty((B, C, Ho + 2 * pad, Wo + 2 * pad), prev.dtype, prev.device)
    with _launch.device_of(prev):
        grid = (triton.cdiv((Ho + 2 * pad) * (Wo + 2 * pad), _BLOCK), B * C)
        wrap_triton(_inject_kernel)[grid](prev, row_idx, row_w, col_idx, col_w, noise, amp, up, g_in, C, Hi, Wi, Ho,
                                          Wo, Th, Tw, Cn, pad, NOISE_PADDED=Hn != Ho, BLOCK=_BLOCK, num_warps=4)
    return up, g_in


def pyramid_blend_fwd(up: torch.Tensor, residual: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """up + residual (times mask), in up's dtype, in one launch."""
    B, C, H, W = up.shape
    out = _alloc.empty((B, C, H, W), up.dtype, up.device)
    N = up.numel()
    with _launch.device_of(up):
        wrap_triton(_blend_kernel)[(triton.cdiv(N, _BLEND_BLOCK),)](
            up, residual, up if mask is None else mask, out, N, H * W, C * H * W,
            MASK_BATCHED=mask is not None and mask.shape[0] > 1, HAS_MASK=mask is not None, BLOCK=_BLEND_BLOCK,
            num_warps=4)
    return out


def aot_variants(shape: tuple, dtype: torch.dtype):
    """``(op, kernel, signature, constexprs, num_warps)`` of what the launchers can launch (the shape is unused: the
    specialisations depend on the noise and mask layouts only)."""
    t = _TRITON_TYPES[dtype]
    sig = dict(prev_ptr=f"*{t}", row_idx_ptr="*i64", row_w_ptr="*fp32", col_idx_ptr="*i64", col_w_ptr="*fp32",
               noise_ptr=f"*{t}", amp_ptr="*fp32", up_ptr=f"*{t}", g_ptr=f"*{t}", C="i32", Hi="i32", Wi="i32",
               Ho="i32", Wo="i32", Th="i32", Tw="i32", Cn="i32", pad="i32")
    for padded in (False, True):
        yield "pyramid_inject", _inject_kernel, sig, dict(NOISE_PADDED=padded, BLOCK=_BLOCK), 4
    bsig = dict(up_ptr=f"*{t}", res_ptr=f"*{t}", mask_ptr=f"*{t}", out_ptr=f"*{t}", N="i32", HW="i32", CHW="i32")
    for has_mask, batched in ((False, False), (True, False), (True, True)):
        yield "pyramid_blend", _blend_kernel, bsig, dict(MASK_BATCHED=batched, HAS_MASK=has_mask,
                                                         BLOCK=_BLEND_BLOCK), 4


__all__ = ["pyramid_inject_fwd", "pyramid_blend_fwd", "aot_variants"]
