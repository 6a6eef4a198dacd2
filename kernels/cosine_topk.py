"""Triton kernels of ``cosine_topk`` (the contract is in :mod:`fsgan_fast.ops.cosine_topk`).

Launcher (a pure function, the body of the private triton op ``fsgan_fast::_cosine_topk_triton``):

* ``cosine_topk_fwd(feats, prototypes, k, over_pixels) -> (idx int64, score feats.dtype)``

Inputs arrive contiguous: feats [B,C,H,W] float16/bfloat16/float32, prototypes [M,C] float32 (raw), 1 <= k <= 16.
No host synchronisation; the [B, H*W, M] similarity never leaves registers.

Over the prototypes, ``_topk_prototypes_kernel``, one program per (image, BLOCK_P pixels): for each block of
BLOCK_M prototypes it accumulates the dot products [BLOCK_P, BLOCK_M] over BLOCK_C channels at a time with
``tl.dot`` (float32 accumulation), together with the squared norms of both sides from the same loaded tiles, turns
them into cosines and merges them into a running top-k per pixel ([BLOCK_P, KP] values and indices). Dense pseudo
labels have M ~ 20: one block of prototypes, and the features are read exactly once.

Over the pixels, two launches: ``_topk_pixels_kernel`` gives each (image, BLOCK_M prototypes, split of the pixels)
program a running top-k per prototype over its share of the pixels, written to a small workspace
[B, M, splits, KP]; ``_topk_merge_kernel`` merges the splits' lists. The split keeps enough programs in flight
for one image of a few hundred pixels per prototype (SMIS's sparse labels: B small, M the stored vectors).

Top-k: ``_merge_topk`` takes k rounds; each picks the better of the running list's head and the best remaining
candidate (larger value, then smaller index), so the order is total and no tie depends on the reduction order.
A NaN cosine ranks first, as in ``torch.sort``: cosines that are not finite become +inf (finite inputs give
|cos| <= 1; an inf input gives NaN in the reference) and are stored back as NaN; padding candidates are -inf.

Precision: float32 features go through ``tf32x3`` dots (three tf32 tensor-core products, ~float32 rounding; plain
tf32's ~1e-3 would reorder near-ties), 16-bit features are widened to float32 first so that the prototypes keep
their float32 values (what the reference multiplies). Norms use rounded sqrt and division.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _alloc, _launch
from ._launch import wrap_triton

_EPS = tl.constexpr(1e-8)  # norm floor of the cosine, as in the reference
_IDX_NONE = tl.constexpr(2**31 - 1)  # index of an empty slot: loses every tie
_INT32_MAX = 2**31 - 1
# programs wanted in flight over the pixels (H100: 132 SMs, two programs each)
_MIN_PROGRAMS = 264
# most candidates one merge program holds per prototype row (splits x KP)
_MAX_MERGE = 1024


def _pow2(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(v, 1))))


def topk_width(k: int) -> int:
    """KP: slots of the running list, k rounded up to a power of two (at least 2: no 1-wide reductions)."""
    return _pow2(k, 2, 16)


@functools.lru_cache(maxsize=512)
def _prototypes_config(C: int, M: int, dtype: torch.dtype) -> dict:
    """Block sizes of ``_topk_prototypes_kernel``: 64 pixels x up to 32 prototypes per step, 32 channels a step
    (a [32, 64] feature tile and its float32 copy; every dot dimension >= 16). 8 warps: tf32x3 splits both operands
    in registers, and the merge holds a few [64, 32] temporaries; ptxas for sm_90 keeps them without spilling."""
    return dict(BLOCK_P=64, BLOCK_M=_pow2(M, 16, 32), BLOCK_C=_pow2(C, 16, 32),
                DOT_PRECISION="tf32x3", num_warps=8)


@functools.lru_cache(maxsize=512)
def _pixels_config(B: int, C: int, P: int, M: int, k: int) -> dict:
    """Block sizes and split of ``_topk_pixels_kernel`` (8 warps, as over the prototypes) / ``_topk_merge_kernel``."""
    block_p, block_m = 64, _pow2(M, 16, 32)
    kp = topk_width(k)
    p_blocks = triton.cdiv(P, block_p)
    rows = B * triton.cdiv(M, block_m)
    splits = max(1, min(p_blocks, triton.cdiv(_MIN_PROGRAMS, rows), _MAX_MERGE // kp))
    per_split = triton.cdiv(p_blocks, splits)
    splits = triton.cdiv(p_blocks, per_split)  # no empty split
    width = triton.next_power_of_2(splits) * kp
    return dict(BLOCK_P=block_p, BLOCK_M=block_m, BLOCK_C=_pow2(C, 16, 32), KP=kp, splits=splits,
                per_split=per_split * block_p, MERGE_M=_pow2(4096 // width, 2, 16), MERGE_W=width, num_warps=8)



@triton.jit
def _merge_topk(best_v, best_i, cand_v, cand_i, k, KP: tl.constexpr):
    """The top k of (running list ``best`` [R, KP], sorted, empty slots -inf) and candidates [R, N], as a new sorted
    list [R, KP]. Candidates' indices within a row are distinct (padding ones may repeat: they are all -inf)."""
    cols = tl.arange(0, KP)[None, :]
    new_v = tl.full(best_v.shape, float("-inf"), tl.float32)
    new_i = tl.full(best_i.shape, _IDX_NONE, tl.int32)
    taken = tl.min(tl.zeros_like(best_i), axis=1)  # [R]: slots of the running list used so far
    for j in range(k):
        head = cols == taken[:, None]
        run_v = tl.max(tl.where(head, best_v, float("-inf")), axis=1)
        run_i = tl.min(tl.where(head, best_i, _IDX_NONE), axis=1)
        top_v = tl.max(cand_v, axis=1)
        top_i = tl.min(tl.where(cand_v == top_v[:, None], cand_i, _IDX_NONE), axis=1)
        from_run = (run_v > top_v) | ((run_v == top_v) & (run_i < top_i))
        v = tl.where(from_run, run_v, top_v)
        i = tl.where(from_run, run_i, top_i)
        new_v = tl.where(cols == j, v[:, None], new_v)
        new_i = tl.where(cols == j, i[:, None], new_i)
        taken += from_run.to(tl.int32)
        cand_v = tl.where((cand_i == top_i[:, None]) & (~from_run)[:, None], float("-inf"), cand_v)
    return new_v, new_i


@triton.jit
def _rank_key(cos):
    # NaN (and any non-finite value) ranks first: +inf, stored back as NaN
    return tl.where(tl.abs(cos) < float("inf"), cos, float("inf"))


@triton.jit
def _score_of(v):
    return tl.where(v == float("inf"), float("nan"), v)


@triton.jit
def _topk_prototypes_kernel(
    f_ptr,  # [B, C, P]
    q_ptr,  # [M, C] float32
    idx_ptr,  # [B, k, P] int64 out
    score_ptr,  # [B, k, P] out
    C,
    P,
    M,
    k,
    num_p_blocks,
    DOT_PRECISION: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64) // num_p_blocks
    offs_p = (tl.program_id(0) % num_p_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < P
    f_b = f_ptr + b * C * P
    best_v = tl.full([BLOCK_P, KP], float("-inf"), tl.float32)
    best_i = tl.full([BLOCK_P, KP], _IDX_NONE, tl.int32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < M
        dots = tl.zeros([BLOCK_P, BLOCK_M], tl.float32)
        sq_f = tl.zeros([BLOCK_P], tl.float32)
        sq_q = tl.zeros([BLOCK_M], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            c_ok = offs_c < C
            # [C, P] tiles: neighbouring threads read neighbouring pixels of one channel row
            f = tl.load(f_b + offs_c[:, None] * P + offs_p[None, :], mask=c_ok[:, None] & p_ok[None, :],
                        other=0.0).to(tl.float32)
            q = tl.load(q_ptr + offs_m[:, None] * C + offs_c[None, :], mask=m_ok[:, None] & c_ok[None, :], other=0.0)
            dots = tl.dot(tl.trans(f), tl.trans(q), dots, input_precision=DOT_PRECISION)
            sq_f += tl.sum(f * f, axis=0)
            sq_q += tl.sum(q * q, axis=1)
        norm_f = tl.maximum(tl.sqrt_rn(sq_f), _EPS)
        norm_q = tl.maximum(tl.sqrt_rn(sq_q), _EPS)
        cos = tl.div_rn(tl.div_rn(dots, norm_f[:, None]), norm_q[None, :])
        cos = tl.where(m_ok[None, :], _rank_key(cos), float("-inf"))
        cand_i = tl.broadcast_to(offs_m[None, :], [BLOCK_P, BLOCK_M])
        best_v, best_i = _merge_topk(best_v, best_i, cos, cand_i, k, KP)
    cols = tl.arange(0, KP)
    out = b * k * P + cols[None, :] * P + offs_p[:, None]
    mask = p_ok[:, None] & (cols < k)[None, :]
    tl.store(idx_ptr + out, best_i.to(tl.int64), mask=mask)
    tl.store(score_ptr + out, _score_of(best_v).to(score_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _topk_pixels_kernel(
    f_ptr,  # [B, C, P]
    q_ptr,  # [M, C] float32
    ws_v_ptr,  # [B, M, splits, KP] float32 out
    ws_i_ptr,  # [B, M, splits, KP] int32 out
    C,
    P,
    M,
    k,
    num_m_blocks,
    splits,
    per_split,
    DOT_PRECISION: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    split = pid % splits
    mb = (pid // splits) % num_m_blocks
    b = (pid // splits // num_m_blocks).to(tl.int64)
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    f_b = f_ptr + b * C * P
    p_begin = split * per_split
    p_end = tl.minimum(p_begin + per_split, P)
    best_v = tl.full([BLOCK_M, KP], float("-inf"), tl.float32)
    best_i = tl.full([BLOCK_M, KP], _IDX_NONE, tl.int32)
    for p0 in range(p_begin, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_ok = offs_p < p_end
        dots = tl.zeros([BLOCK_M, BLOCK_P], tl.float32)
        sq_f = tl.zeros([BLOCK_P], tl.float32)
        sq_q = tl.zeros([BLOCK_M], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            c_ok = offs_c < C
            f = tl.load(f_b + offs_c[:, None] * P + offs_p[None, :], mask=c_ok[:, None] & p_ok[None, :],
                        other=0.0).to(tl.float32)
            q = tl.load(q_ptr + offs_m[:, None] * C + offs_c[None, :], mask=m_ok[:, None] & c_ok[None, :], other=0.0)
            dots = tl.dot(q, f, dots, input_precision=DOT_PRECISION)
            sq_f += tl.sum(f * f, axis=0)
            sq_q += tl.sum(q * q, axis=1)
        norm_f = tl.maximum(tl.sqrt_rn(sq_f), _EPS)
        norm_q = tl.maximum(tl.sqrt_rn(sq_q), _EPS)
        cos = tl.div_rn(tl.div_rn(dots, norm_f[None, :]), norm_q[:, None])
        cos = tl.where(p_ok[None, :], _rank_key(cos), float("-inf"))
        cand_i = tl.broadcast_to(offs_p[None, :], [BLOCK_M, BLOCK_P])
        best_v, best_i = _merge_topk(best_v, best_i, cos, cand_i, k, KP)
    cols = tl.arange(0, KP)
    out = ((b * M + offs_m[:, None]) * splits + split) * KP + cols[None, :]
    tl.store(ws_v_ptr + out, best_v, mask=m_ok[:, None])
    tl.store(ws_i_ptr + out, best_i, mask=m_ok[:, None])


@triton.jit
def _topk_merge_kernel(
    ws_v_ptr,  # [B*M, splits*KP] float32
    ws_i_ptr,  # [B*M, splits*KP] int32
    idx_ptr,  # [B*M, k] int64 out
    score_ptr,  # [B*M, k] out
    num_rows,  # B*M
    k,
    width,  # splits*KP: candidates per row
    KP: tl.constexpr,
    MERGE_M: tl.constexpr,
    MERGE_W: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * MERGE_M + tl.arange(0, MERGE_M)  # flat (b, m)
    row_ok = rows < num_rows
    cols = tl.arange(0, MERGE_W)
    at = rows[:, None] * width + cols[None, :]
    mask = row_ok[:, None] & (cols < width)[None, :]
    cand_v = tl.load(ws_v_ptr + at, mask=mask, other=float("-inf"))
    cand_i = tl.load(ws_i_ptr + at, mask=mask, other=_IDX_NONE)
    best_v = tl.full([MERGE_M, KP], float("-inf"), tl.float32)
    best_i = tl.full([MERGE_M, KP], _IDX_NONE, tl.int32)
    best_v, best_i = _merge_topk(best_v, best_i, cand_v, cand_i, k, KP)
    slots = tl.arange(0, KP)
    out = rows[:, None] * k + slots[None, :]
    ok = row_ok[:, None] & (slots < k)[None, :]
    tl.store(idx_ptr + out, best_i.to(tl.int64), mask=ok)
    tl.store(score_ptr + out, _score_of(best_v).to(score_ptr.dtype.element_ty), mask=ok)


def _check_sizes(C: int, P: int, M: int) -> None:
    # offsets within one [C, P] map and the [M, C] prototypes are int32 in the kernels, and the loops step by up to
    # 64 past them, so leave that much room
    if C * P > _INT32_MAX - 256 or M * C > _INT32_MAX - 256:
        raise ValueError(f"the Triton cosine_topk kernels need C*H*W and M*C below 2^31, got C={C}, H*W={P}, M={M}")


def cosine_topk_fwd(feats: torch.Tensor, prototypes: torch.Tensor, k: int,
                    over_pixels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx int64, score feats.dtype): [B,k,H,W] over the prototypes, [B,M,k] over the pixels."""
    B, C, H, W = feats.shape
    M, P = prototypes.shape[0], H * W
    shape = (B, M, k) if over_pixels else (B, k, H, W)
    idx = _alloc.empty(shape, torch.int64, feats.device)
    score = _alloc.empty(shape, feats.dtype, feats.device)
    if B == 0:
        return idx, score
    _check_sizes(C, P, M)
    hint = _launch.size_hint
    if not over_pixels:
        cfg = _prototypes_config(hint(C), hint(M), feats.dtype)
        num_p_blocks = triton.cdiv(P, cfg["BLOCK_P"])
        if B * num_p_blocks > _INT32_MAX:
            raise ValueError(f"cosine_topk: {B} x {num_p_blocks} programs exceed one Triton launch")
        with _launch.device_of(feats):
            wrap_triton(_topk_prototypes_kernel)[(B * num_p_blocks,)](
                feats, prototypes, idx, score, C, P, M, k, num_p_blocks, KP=topk_width(hint(k)), **cfg)
        return idx, score
    cfg = dict(_pixels_config(hint(B), hint(C), hint(P), hint(M), hint(k)))
    splits, per_split, kp = cfg.pop("splits"), cfg.pop("per_split"), cfg["KP"]
    merge_m, merge_w = cfg.pop("MERGE_M"), cfg.pop("MERGE_W")
    num_m_blocks = triton.cdiv(M, cfg["BLOCK_M"])
    ws_v = torch.empty((B, M, splits, kp), dtype=torch.float32, device=feats.device)
    ws_i = torch.empty((B, M, splits, kp), dtype=torch.int32, device=feats.device)
    with _launch.device_of(feats):
        wrap_triton(_topk_pixels_kernel)[(B * num_m_blocks * splits,)](
            feats, prototypes, ws_v, ws_i, C, P, M, k, num_m_blocks, splits, per_split, DOT_PRECISION="tf32x3", **cfg)
        wrap_triton(_topk_merge_kernel)[(triton.cdiv(B * M, merge_m),)](
            ws_v, ws_i, idx, score, B * M, k, splits * kp, KP=kp, MERGE_M=merge_m, MERGE_W=merge_w, num_warps=4)
    return idx, score


__all__ = ["cosine_topk_fwd", "topk_width"]
