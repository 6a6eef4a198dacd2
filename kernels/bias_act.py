"""Triton kernels of ``bias_act`` (StyleGAN2's fused bias + leaky ReLU; the contract is in :mod:`fsgan_fast.ops.bias_act`).

Launchers (bodies of the private triton ops ``fsgan_fast::_bias_act_triton`` / ``_bias_act_backward_triton``):

* ``bias_act_fwd(x, bias, act, alpha, gain) -> y``
* ``bias_act_bwd(grad, y, act, alpha, gain) -> grad_x``

Inputs arrive prepared: contiguous, rank >= 2, one dtype (float16, bfloat16, float32), bias None or [C]. Both are
one elementwise pass over the flat tensor, viewed as [N, C, S] (S = the product of the dims after C, 1 for
[N, C]): an element's channel is ``(offset // S) % C``, and the bias is a gathered load that stays in L1/L2 (C is
at most 512 in StyleGAN2). One read and one write per element, in float32, rounded once: HBM-bound, so the only
tiling choice is a block large enough (1024 elements, 4 per thread) to keep the loads vectorised.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _alloc, _launch
from ._launch import wrap_triton

_ACTS = {"linear": 0, "lrelu": 1}
_BLOCK = 1024
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@triton.jit
def _bias_act_fwd_kernel(x_ptr, b_ptr, y_ptr, n, C, S, alpha, gain, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    v = tl.load(x_ptr + offs, mask=live, other=0.0).to(tl.float32)
    if HAS_BIAS:
        c = (offs // S) % C
        v = v + tl.load(b_ptr + c, mask=live, other=0.0).to(tl.float32)
    if ACT == 1:
        v = tl.where(v > 0, v, v * alpha)
    tl.store(y_ptr + offs, (v * gain).to(y_ptr.dtype.element_ty), mask=live)


@triton.jit
def _bias_act_bwd_kernel(g_ptr, y_ptr, dx_ptr, n, gain, slope_neg, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    g = tl.load(g_ptr + offs, mask=live, other=0.0).to(tl.float32)
    if ACT == 1:
        # y > 0 exactly where x + bias > 0 (gain > 0, alpha >= 0): the forward's input is not needed
        y = tl.load(y_ptr + offs, mask=live, other=0.0).to(tl.float32)
        g = g * tl.where(y > 0, gain, slope_neg)
    else:
        g = g * gain
    tl.store(dx_ptr + offs, g.to(dx_ptr.dtype.element_ty), mask=live)


def bias_act_fwd(x: torch.Tensor, bias: torch.Tensor | None, act: str, alpha: float, gain: float) -> torch.Tensor:
    """act(x + bias) * gain in x's dtype, in one launch."""
    y = _alloc.empty(x.shape, x.dtype, x.device)
    n = x.numel()
    if n == 0:
        return y
    C = x.shape[1]
    S = math.prod(x.shape[2:])
    with _launch.device_of(x):
        wrap_triton(_bias_act_fwd_kernel)[(triton.cdiv(n, _BLOCK),)](
            x, x if bias is None else bias, y, n, C, S, alpha, gain, ACT=_ACTS[act], HAS_BIAS=bias is not None,
            BLOCK=_BLOCK, num_warps=8)
    return y


def bias_act_bwd(grad: torch.Tensor, y: torch.Tensor, act: str, alpha: float, gain: float) -> torch.Tensor:
    """grad * gain * (1 if y > 0 else alpha) in y's dtype, in one launch."""
    dx = _alloc.empty(y.shape, y.dtype, y.device)
    n = y.numel()
    if n == 0:
        return dx
    with _launch.device_of(y):
        # the negative slope's product in float64 on the host, rounded once to float32 at the launch (as the C++)
        wrap_triton(_bias_act_bwd_kernel)[(triton.cdiv(n, _BLOCK),)](
            grad, y, dx, n, gain, alpha * gain, ACT=_ACTS[act], BLOCK=_BLOCK, num_warps=8)
    return dx


def aot_variants(shape: tuple, dtype: torch.dtype):
    """``(op, kernel, signature, constexprs, num_warps)`` of what the launchers can launch (the shape is unused: the
    specialisations depend on act and on whether there is a bias only)."""
    t = _TRITON_TYPES[dtype]
    sig = dict(x_ptr=f"*{t}", b_ptr=f"*{t}", y_ptr=f"*{t}", n="i32", C="i32", S="i32", alpha="fp32", gain="fp32")
    for act in _ACTS.values():
        for has_bias in (False, True):
            yield "bias_act", _bias_act_fwd_kernel, sig, dict(ACT=act, HAS_BIAS=has_bias, BLOCK=_BLOCK), 8
    bsig = dict(g_ptr=f"*{t}", y_ptr=f"*{t}", dx_ptr=f"*{t}", n="i32", gain="fp32", slope_neg="fp32")
    for act in _ACTS.values():
        yield "bias_act_backward", _bias_act_bwd_kernel, bsig, dict(ACT=act, BLOCK=_BLOCK), 8


__all__ = ["bias_act_fwd", "bias_act_bwd", "aot_variants"]
