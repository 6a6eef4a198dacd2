"""Triton kernel of ``masked_avg_pool`` (the contract is in :mod:`fsgan_fast.ops.masked_avg_pool`).

Launcher (a pure function, the body of the private triton op ``fsgan_fast::_masked_avg_pool_triton``):

* ``masked_avg_pool_fwd(feats, weights, per_image) -> (vectors [M,C] feats.dtype, present [M] bool)``

Inputs arrive contiguous: feats [B,C,H,W] float16/bfloat16/float32, weights [B,M,H,W] float32 (the masks already
resized to the feature grid). One launch, no host synchronisation, no atomics.

``_masked_avg_pool_kernel``: one program per (BLOCK_C channels, BLOCK_M classes). It walks the images in order and,
per image, the pixels BLOCK_P at a time: ``S[m, c] += w[m, p] . f[c, p]`` with ``tl.dot`` and ``W[m] += sum_p
w[m, p]``, all in float32. At the end of each image it folds S and W into the running result (the per-image mean
where ``W > 0``, or the plain sums), so the program owns its outputs from start to finish and every sum runs in a
fixed order. Prototypes are computed once per few-shot set: the grid is small (C/BLOCK_C x M/BLOCK_M programs),
which is plenty for that, and the weights tile is re-read once per channel block (from L2).

Precision: ``tf32x3`` dots (three tf32 tensor-core products, ~float32 rounding); 16-bit features are widened to
float32 first (the weights are float32).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _alloc, _launch
from ._launch import wrap_triton

_INT32_MAX = 2**31 - 1


def _pow2(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(v, 1))))


@functools.lru_cache(maxsize=512)
def _config(C: int, M: int, P: int) -> dict:
    """Block sizes: [BLOCK_M, BLOCK_P] weights x [BLOCK_P, BLOCK_C] features per step (dot dims >= 16). 8 warps:
    tf32x3 splits both operands in registers beside two [BLOCK_M, BLOCK_C] accumulators (the image's sums and the
    running result); ptxas for sm_90 keeps them without spilling."""
    return dict(BLOCK_M=_pow2(M, 16, 32), BLOCK_C=_pow2(C, 16, 32), BLOCK_P=_pow2(P, 16, 32), num_warps=8)


@triton.jit
def _masked_avg_pool_kernel(
    f_ptr,  # [B, C, P]
    w_ptr,  # [B, M, P] float32
    out_ptr,  # [M, C] out
    present_ptr,  # [M] bool out
    B,
    C,
    M,
    P,
    PER_IMAGE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    c_ok = offs_c < C
    m_ok = offs_m < M
    acc = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)  # sum of the means, or of the masked sums
    total = tl.zeros([BLOCK_M], tl.float32)  # images with the class, or the summed weights
    f_b = f_ptr
    w_b = w_ptr
    for _ in range(B):
        sums = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
        weight = tl.zeros([BLOCK_M], tl.float32)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            p_ok = offs_p < P
            w = tl.load(w_b + offs_m[:, None] * P + offs_p[None, :], mask=m_ok[:, None] & p_ok[None, :], other=0.0)
            # [C, P] tile read along the pixels (coalesced), transposed for the dot
            f = tl.load(f_b + offs_c[:, None] * P + offs_p[None, :], mask=c_ok[:, None] & p_ok[None, :],
                        other=0.0).to(tl.float32)
            sums = tl.dot(w, tl.trans(f), sums, input_precision="tf32x3")
            weight += tl.sum(w, axis=1)
        if PER_IMAGE:
            has = weight > 0
            safe = tl.where(has, weight, 1.0)
            acc += tl.where(has[:, None], tl.div_rn(sums, safe[:, None]), 0.0)
            total += has.to(tl.float32)
        else:
            acc += sums
            total += weight
        # pointers step one image at a time: 64-bit, whatever B * C * P
        f_b += C * P
        w_b += M * P
    present = total > 0
    vectors = tl.where(present[:, None], tl.div_rn(acc, tl.where(present, total, 1.0)[:, None]), 0.0)
    tl.store(out_ptr + offs_m[:, None] * C + offs_c[None, :], vectors.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & c_ok[None, :])
    # every channel block computes present; the first writes it
    tl.store(present_ptr + offs_m, present.to(tl.int1), mask=m_ok & (tl.program_id(0) == 0))


def _check_sizes(B: int, C: int, M: int, P: int) -> None:
    # offsets within one image's [C, P] features and [M, P] weights are int32 in the kernel (the image offset is
    # int64), and the loops step by up to 64 past them
    if C * P > _INT32_MAX - 256 or M * P > _INT32_MAX - 256 or M * C > _INT32_MAX - 256:
        raise ValueError(f"the Triton masked_avg_pool kernel needs C*H*W, M*H*W and M*C below 2^31, got C={C}, "
                         f"M={M}, H*W={P}")


def masked_avg_pool_fwd(feats: torch.Tensor, weights: torch.Tensor,
                        per_image: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors [M,C] feats.dtype, present [M] bool), in one launch."""
    B, C, H, W = feats.shape
    M, P = weights.shape[1], H * W
    vectors = _alloc.empty((M, C), feats.dtype, feats.device)
    present = torch.empty((M,), dtype=torch.bool, device=feats.device)
    _check_sizes(B, C, M, P)
    cfg = _config(*map(_launch.size_hint, (C, M, P)))
    grid = (triton.cdiv(C, cfg["BLOCK_C"]), triton.cdiv(M, cfg["BLOCK_M"]))
    with _launch.device_of(feats):
        wrap_triton(_masked_avg_pool_kernel)[grid](feats, weights, vectors, present, B, C, M, P, PER_IMAGE=per_image,
                                                   **cfg)
    return vectors, present


__all__ = ["masked_avg_pool_fwd"]
