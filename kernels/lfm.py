"""Triton kernels of ``lfm_fuse`` / ``lfm_apply`` (the contract is in :mod:`fsgan_fast.ops.lfm`).

Launchers (pure functions, the bodies of the private triton ops ``fsgan_fast::_<op>_triton`` that
``fsgan_fast/ops/lfm.py`` registers; the public ops validate and prepare the inputs):

* ``lfm_fuse_fwd(feats, base, positions, alpha) -> (fused, ref_idx)``
* ``lfm_apply_fwd(x, base, positions, ref_idx, alpha) -> fused``
* ``lfm_apply_bwd(grad, x, base, positions, ref_idx, alpha) -> (grad_x, grad_alpha)``

Inputs arrive contiguous: x [B,K,C,H,W] float16/bfloat16/float32, base [B] / positions [B,n] /
ref_idx [B,K-1,n] int64, alpha [B,K] float32, grad [B,C,H,W] in x's dtype. Each launcher is one
kernel launch with no host synchronisation. Index values are never trusted: an out-of-range base,
position or match reads nothing and contributes nothing, and every output element is still written.

Forward, ``_lfm_fwd_kernel``, a 1-D grid of B x (t-blocks + copy-blocks) programs:

* a t-program owns BLOCK_T selected positions of one batch row. Per reference it tiles the
  similarity S[t, j] = f[:, p_t] . x_r[:, j] over (j-block, c-block) with ``tl.dot``, accumulating in
  float32 together with the squared norms of the reference columns, and keeps a running argmax over
  the j-blocks. The base norm is left out: it scales a whole row of S by the same positive number
  and cannot move that row's argmax. It stores ref_idx, then (after a barrier, since other threads
  of the program wrote the indices) gathers the matched columns and writes the fused vectors.
* a copy-program owns COPY_P grid positions and copies the base map at those of them that no
  position in the row selects, so each element of ``fused`` has exactly one writer.

``lfm_apply_fwd`` is the same kernel with the matching compiled out (MATCH=False).

Backward, ``_lfm_bwd_kernel``, grid (B, K), one program per (batch row, shot), looping over
(c-block, j-block) tiles of that shot's gradient:

* base shot: grad_x = grad, times alpha_base at the selected positions;
* reference r: grad_x[c, j] = alpha_r * sum_t grad[c, p_t] * [ref_idx[r, t] == j], a dot of the
  gathered gradient columns with a one-hot matrix. That is the scatter-add of the reference
  backward, written as a gather: deterministic, each element written once, no atomics, no zero
  fill, and repeated matches simply add up in the dot;
* grad_alpha[b, k] = sum over the tiles of x_k * (the tile before its alpha factor), which equals
  sum_t <x_k[:, matched_t], grad[:, p_t]>; one program owns it, so no cross-program reduction.
* non-finite gradients: the one-hot dot would spread an inf to every column of its row (0 * inf). A tile
  whose sum comes out non-finite is summed again, one selected position at a time, exactly as the
  reference's scatter-add (only such tiles pay for it).

Argmax: a NaN cosine wins, the first one on ties, as in ``torch.argmax``.

Precision: every sum accumulates in float32. A float32 similarity uses ``tf32x3`` (three tf32
tensor-core products, ~2^-21 relative error, close to plain float32 rounding, on the tensor cores
instead of the FMA path of ``ieee``); plain tf32 (~1e-3) would flip near-ties of the argmax.
``_fwd_config`` holds that choice. The one-hot product of the
float32 backward splits the gradient into three bfloat16 parts (hi + mid + lo == g exactly) and
runs three bfloat16 dots: the one-hot side is exact in bfloat16, so the result is exact up to the
float32 accumulation. 16-bit inputs go to the tensor cores as they are (exact products).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _alloc, _launch
from ._launch import wrap_triton

_EPS = tl.constexpr(1e-8)  # norm floor of the cosine, as in the reference

# The t-block size trades R-tile reuse (each loaded reference tile serves BLOCK_T positions) against
# parallelism: take the largest block that still gives at least one program per SM (H100: 132).
_MIN_PROGRAMS = 132


def _pow2(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(v, 1))))


@functools.lru_cache(maxsize=512)
def _fwd_config(B: int, C: int, P: int, n: int, dtype: torch.dtype) -> dict:
    """Block sizes of ``_lfm_fwd_kernel``; every dot dimension is >= 16 (padded with masks).

    The similarity tile is BLOCK_T x BLOCK_J (64 positions of the reference map per step), reduced
    over BLOCK_C channels at a time. float32 takes a shorter reduction step: tf32x3 splits both
    operands in registers, and 16 channels keep 8 warps within the register file (ptxas for sm_90:
    no stack with triton 3.6 or 3.9, at most 32 B per thread with 3.8). The copy tile is ~4K elements.
    """
    block_t = 16
    for cand in (64, 32):
        if B * triton.cdiv(n, cand) >= _MIN_PROGRAMS:
            block_t = cand
            break
    copy_p = _pow2(P, 16, 256)
    wide = dtype == torch.float32
    return dict(
        BLOCK_T=_pow2(n, 16, block_t),
        BLOCK_J=_pow2(P, 16, 64),
        BLOCK_C=_pow2(C, 16, 16 if wide else 64),
        COPY_P=copy_p,
        COPY_C=_pow2(C, 1, 4096 // copy_p),
        DOT_PRECISION="tf32x3" if wide else "tf32",  # ignored for 16-bit operands
        num_warps=8,
    )


@functools.lru_cache(maxsize=512)
def _bwd_config(C: int, P: int, n: int, dtype: torch.dtype) -> dict:
    """Block sizes of ``_lfm_bwd_kernel``: a BLOCK_C x BLOCK_J float32 gradient tile per step, the
    one-hot product reducing over BLOCK_T selected positions at a time (float32: three bfloat16
    parts per gathered tile, hence the smaller ones). 8 warps. ptxas for sm_90 spills nothing with
    triton 3.6, 3.8 or 3.9 (float32 at C=256, 16x16: 255 registers with 3.6, 182 with 3.8, 228 with
    3.9); tests/ops/test_triton_compile.py holds every variant to at most 128 B of stack."""
    wide = dtype == torch.float32
    return dict(
        BLOCK_C=_pow2(C, 16, 32 if wide else 64),
        BLOCK_J=_pow2(P, 16, 128 if wide else 64),
        BLOCK_T=_pow2(n, 16, 32 if wide else 64),
        SPLIT_F32=wide,
        num_warps=8,
    )


# The CPU interpreter (triton 3.8) multiplies bfloat16 dot operands as their raw 16-bit patterns.
# There, and only there, bfloat16 dots run on float32 copies: the same exact products.
_BF16_DOT_AS_F32 = tl.constexpr(_launch.interpreted())


@triton.jit
def _dot(a, b, acc, input_precision: tl.constexpr):
    # input_precision only matters for float32 operands
    if _BF16_DOT_AS_F32:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=input_precision)


@triton.jit
def _lfm_fwd_kernel(
    x_ptr,  # [B, K, C, P]
    base_ptr,  # [B] int64
    pos_ptr,  # [B, n] int64
    alpha_ptr,  # [B, K] float32
    idx_ptr,  # [B, K-1, n] int64: written when MATCH, read otherwise
    out_ptr,  # [B, C, P]
    K,
    C,
    P,
    n,
    num_t_blocks,
    blocks_per_row,
    MATCH: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_C: tl.constexpr,
    COPY_P: tl.constexpr,
    COPY_C: tl.constexpr,
):
    # a 1-D grid (axis 0 takes 2^31 - 1 programs; axes 1 and 2 only 65535)
    b = tl.program_id(0).to(tl.int64) // blocks_per_row
    pid = (tl.program_id(0) % blocks_per_row).to(tl.int32)
    base = tl.load(base_ptr + b)
    base_ok = (base >= 0) & (base < K)
    # positions of the base map this row may read: none for an out-of-range base. Reads test it per position
    # (p < f_end) rather than as `mask & base_ok`: a scalar condition splatted into a block mask reaches the
    # interpreter as integers, which triton 3.9's interpreter refuses in loads
    f_end = tl.where(base_ok, P, 0)
    x_b = x_ptr + b * K * C * P
    f_ptr = x_b + base * C * P
    out_b = out_ptr + b * C * P
    pos_b = pos_ptr + b * n

    if pid < num_t_blocks:
        offs_t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
        t_ok = offs_t < n
        p = tl.load(pos_b + offs_t, mask=t_ok, other=-1)
        p_ok = t_ok & (p >= 0) & (p < P)
        f_ok = p_ok & (p < f_end)
        idx_b = idx_ptr + b * (K - 1) * n

        if MATCH:
            for r in range(K - 1):
                ref_ptr = x_b + (r + (r >= base).to(tl.int64)) * C * P
                best = tl.full([BLOCK_T], float("-inf"), tl.float32)
                best_j = tl.zeros([BLOCK_T], tl.int64)
                for j0 in range(0, P, BLOCK_J):
                    offs_j = j0 + tl.arange(0, BLOCK_J)
                    j_ok = offs_j < P
                    dots = tl.zeros([BLOCK_T, BLOCK_J], tl.float32)
                    sq = tl.zeros([BLOCK_C, BLOCK_J], tl.float32)  # reduced over c once, after the loop
                    for c0 in range(0, C, BLOCK_C):
                        offs_c = c0 + tl.arange(0, BLOCK_C)
                        c_ok = offs_c < C
                        # gathered as [C, T] so that neighbouring threads read one channel row of the
                        # map (shared sectors), transposed for the dot
                        f_sel = tl.load(
                            f_ptr + offs_c[:, None] * P + p[None, :],
                            mask=c_ok[:, None] & f_ok[None, :],
                            other=0.0,
                        )
                        ref = tl.load(
                            ref_ptr + offs_c[:, None] * P + offs_j[None, :],
                            mask=c_ok[:, None] & j_ok[None, :],
                            other=0.0,
                        )
                        dots = _dot(tl.trans(f_sel), ref, dots, DOT_PRECISION)
                        ref32 = ref.to(tl.float32)
                        sq += ref32 * ref32
                    # rounded sqrt/division (not the approximate defaults): the argmax should see
                    # the same cosines as the reference, up to the dot's own rounding
                    norm = tl.maximum(tl.sqrt_rn(tl.sum(sq, axis=0)), _EPS)
                    cos = tl.div_rn(dots, norm[None, :])
                    # NaN wins the argmax, as in torch.argmax: as +inf (finite inputs give |cos| <= |f|) the
                    # left tie-break and the strict '>' below pick the first NaN, whatever the reduction order.
                    # Any infinity also becomes +inf: the reference normalises f first, so an inf in f or in a
                    # reference column gives NaN cosines there (inf / inf), never a real infinity
                    cos = tl.where(tl.abs(cos) < float("inf"), cos, float("inf"))
                    cos = tl.where(j_ok[None, :], cos, float("-inf"))
                    blk_best, blk_j = tl.max(cos, axis=1, return_indices=True, return_indices_tie_break_left=True)
                    # strictly greater: on a tie the earlier block, hence the smaller j, is kept
                    better = blk_best > best
                    best = tl.where(better, blk_best, best)
                    best_j = tl.where(better, j0 + blk_j.to(tl.int64), best_j)
                tl.store(idx_b + r * n + offs_t, best_j, mask=t_ok)
            # the fusion below reads indices that other threads of this program stored
            tl.debug_barrier()

        a_base = tl.load(alpha_ptr + b * K + base, mask=base_ok, other=0.0)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            c_ok = offs_c < C
            sel = c_ok[:, None] & p_ok[None, :]
            f_sel = tl.load(f_ptr + offs_c[:, None] * P + p[None, :], mask=c_ok[:, None] & f_ok[None, :], other=0.0)
            acc = a_base * f_sel.to(tl.float32)
            for r in range(K - 1):
                shot = r + (r >= base).to(tl.int64)
                j = tl.load(idx_b + r * n + offs_t, mask=t_ok, other=-1)
                j_ok = (j >= 0) & (j < P)
                matched = tl.load(
                    x_b + shot * C * P + offs_c[:, None] * P + j[None, :],
                    mask=c_ok[:, None] & j_ok[None, :],
                    other=0.0,
                )
                acc += tl.load(alpha_ptr + b * K + shot) * matched.to(tl.float32)
            tl.store(out_b + offs_c[:, None] * P + p[None, :], acc.to(out_ptr.dtype.element_ty), mask=sel)
    else:
        offs_j = (pid - num_t_blocks) * COPY_P + tl.arange(0, COPY_P)
        hits = tl.zeros([COPY_P], tl.int32)
        for t0 in range(0, n, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            p = tl.load(pos_b + offs_t, mask=offs_t < n, other=-1)
            hits += tl.sum((p[:, None] == offs_j[None, :]).to(tl.int32), axis=0)
        keep = (offs_j < P) & (hits == 0)
        keep_f = keep & (offs_j < f_end)
        for c0 in range(0, C, COPY_C):
            offs_c = c0 + tl.arange(0, COPY_C)
            m = (offs_c < C)[:, None] & keep[None, :]
            v = tl.load(f_ptr + offs_c[:, None] * P + offs_j[None, :], mask=(offs_c < C)[:, None] & keep_f[None, :],
                        other=0.0)
            tl.store(out_b + offs_c[:, None] * P + offs_j[None, :], v, mask=m)


@triton.jit
def _lfm_bwd_kernel(
    grad_ptr,  # [B, C, P]
    x_ptr,  # [B, K, C, P]
    base_ptr,  # [B] int64
    pos_ptr,  # [B, n] int64
    idx_ptr,  # [B, K-1, n] int64
    alpha_ptr,  # [B, K] float32
    gx_ptr,  # [B, K, C, P] out
    ga_ptr,  # [B, K] float32 out
    K,
    C,
    P,
    n,
    SPLIT_F32: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1)
    base = tl.load(base_ptr + b)
    alpha_k = tl.load(alpha_ptr + b * K + k)
    g_b = grad_ptr + b * C * P
    x_k = x_ptr + (b * K + k) * C * P
    gx_k = gx_ptr + (b * K + k) * C * P
    pos_b = pos_ptr + b * n
    ga = 0.0

    if k == base:
        for j0 in range(0, P, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            j_ok = offs_j < P
            # how often each position of the block is selected (0 or 1 for valid positions)
            hits = tl.zeros([BLOCK_J], tl.int32)
            for t0 in range(0, n, BLOCK_T):
                offs_t = t0 + tl.arange(0, BLOCK_T)
                p = tl.load(pos_b + offs_t, mask=offs_t < n, other=-1)
                hits += tl.sum((p[:, None] == offs_j[None, :]).to(tl.int32), axis=0)
            scale = tl.where(hits > 0, alpha_k, 1.0)
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                m = (offs_c < C)[:, None] & j_ok[None, :]
                tile = offs_c[:, None] * P + offs_j[None, :]
                g = tl.load(g_b + tile, mask=m, other=0.0).to(tl.float32)
                tl.store(gx_k + tile, (g * scale[None, :]).to(gx_ptr.dtype.element_ty), mask=m)
                xs = tl.load(x_k + tile, mask=m & (hits > 0)[None, :], other=0.0).to(tl.float32)
                # only selected positions count: an infinite gradient elsewhere must not meet a zero there
                ga += tl.sum(tl.where((hits > 0)[None, :], xs * g * hits[None, :].to(tl.float32), 0.0))
    else:
        # shot k is reference r; a shot that is neither (only with an out-of-range base) gets zeros
        r = k - (k > base).to(tl.int64)
        is_ref = (r >= 0) & (r < K - 1)
        a_r = tl.where(is_ref, alpha_k, 0.0)
        n_r = tl.where(is_ref, n, 0)  # matches to read, as a bound (see f_end in the forward kernel)
        idx_r = idx_ptr + (b * (K - 1) + r) * n
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            c_ok = offs_c < C
            for j0 in range(0, P, BLOCK_J):
                offs_j = j0 + tl.arange(0, BLOCK_J)
                m = c_ok[:, None] & (offs_j < P)[None, :]
                acc = tl.zeros([BLOCK_C, BLOCK_J], tl.float32)
                hits = tl.zeros([BLOCK_J], tl.int32)
                for t0 in range(0, n, BLOCK_T):
                    offs_t = t0 + tl.arange(0, BLOCK_T)
                    t_ok = offs_t < n
                    p = tl.load(pos_b + offs_t, mask=t_ok, other=-1)
                    p_ok = (p >= 0) & (p < P)
                    j = tl.load(idx_r + offs_t, mask=offs_t < n_r, other=-1)
                    hit = (j[:, None] == offs_j[None, :]) & p_ok[:, None]  # [T, J]
                    hits += tl.sum(hit.to(tl.int32), axis=0)
                    onehot = tl.where(hit, 1.0, 0.0)
                    g_sel = tl.load(
                        g_b + offs_c[:, None] * P + p[None, :], mask=c_ok[:, None] & p_ok[None, :], other=0.0
                    )  # [C, T]
                    if SPLIT_F32:
                        # g == hi + mid + lo exactly, each part bfloat16: three exact one-hot products
                        oh = onehot.to(tl.bfloat16)
                        hi = g_sel.to(tl.bfloat16)
                        rest = g_sel - hi.to(tl.float32)
                        mid = rest.to(tl.bfloat16)
                        lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
                        acc = _dot(hi, oh, acc, "tf32")
                        acc = _dot(mid, oh, acc, "tf32")
                        acc = _dot(lo, oh, acc, "tf32")
                    else:
                        acc = _dot(g_sel, onehot.to(g_sel.dtype), acc, "tf32")
                tile = offs_c[:, None] * P + offs_j[None, :]
                xs = tl.load(x_k + tile, mask=m & (hits > 0)[None, :], other=0.0).to(tl.float32)
                tile_ga = tl.sum(xs * acc)
                # In the one-hot product a non-finite gradient reaches every column of its row (0 * inf = NaN),
                # and an fp32 gradient near the float32 maximum overflows its bfloat16 split. Either makes
                # tile_ga non-finite (xs is 0 off the matches, and 0 * inf is NaN), so the check costs no extra
                # reduction. Only then is the tile summed again, one selected position at a time, adding
                # each gradient column at its match and nowhere else, as the reference's scatter-add does.
                if not (tl.abs(tile_ga) < float("inf")):
                    acc = tl.zeros([BLOCK_C, BLOCK_J], tl.float32)
                    for t in range(0, n):
                        p_t = tl.load(pos_b + t)
                        j_t = tl.load(idx_r + t, mask=is_ref, other=-1)
                        ok_t = (p_t >= 0) & (p_t < P) & (j_t >= 0) & (j_t < P)
                        # a skipped position reads no channel and matches no column (offs_j >= 0)
                        g_t = tl.load(g_b + offs_c * P + p_t, mask=offs_c < tl.where(ok_t, C, 0), other=0.0)
                        acc += tl.where((offs_j == tl.where(ok_t, j_t, -1))[None, :], g_t.to(tl.float32)[:, None], 0.0)
                    # reloaded rather than kept live across the branch: fewer registers on the fast path
                    xs = tl.load(x_k + tile, mask=m & (hits > 0)[None, :], other=0.0).to(tl.float32)
                    tile_ga = tl.sum(xs * acc)
                tl.store(gx_k + tile, (a_r * acc).to(gx_ptr.dtype.element_ty), mask=m)
                ga += tile_ga
    tl.store(ga_ptr + b * K + k, ga)


_INT32_MAX = 2**31 - 1


def _check_sizes(K: int, C: int, P: int, n: int) -> None:
    # offsets within one [C, P] map and one [K-1, n] match row are int32 in the kernels, and the loops over
    # them step by up to 256 (a block), so leave that much room
    if C * P > _INT32_MAX - 256 or (K - 1) * n > _INT32_MAX - 256:
        raise ValueError(f"the Triton lfm kernels need C*H*W and (K-1)*n below 2^31, got C={C}, H*W={P}, K={K}, n={n}")


def _launch_fwd(x, base, positions, ref_idx, alpha, out, match: bool) -> None:
    B, K, C, H, W = x.shape
    if B == 0:
        return
    P, n = H * W, positions.shape[1]
    _check_sizes(K, C, P, n)
    cfg = _fwd_config(*map(_launch.size_hint, (B, C, P, n)), x.dtype)
    num_t_blocks = triton.cdiv(n, cfg["BLOCK_T"])
    blocks_per_row = num_t_blocks + triton.cdiv(P, cfg["COPY_P"])
    if B * blocks_per_row > _INT32_MAX:
        raise ValueError(f"lfm: {B} x {blocks_per_row} programs exceed one Triton launch")
    with _launch.device_of(x):
        wrap_triton(_lfm_fwd_kernel)[(B * blocks_per_row,)](x, base, positions, alpha, ref_idx, out, K, C, P, n,
                                                            num_t_blocks, blocks_per_row, MATCH=match, **cfg)


def lfm_fuse_fwd(
    feats: torch.Tensor, base: torch.Tensor, positions: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fused [B,C,H,W] feats.dtype, ref_idx [B,K-1,n] int64): matching and fusion in one launch."""
    B, K, C, H, W = feats.shape
    out = _alloc.empty((B, C, H, W), feats.dtype, feats.device)
    ref_idx = _alloc.empty((B, K - 1, positions.shape[1]), torch.int64, feats.device)
    _launch_fwd(feats, base, positions, ref_idx, alpha, out, match=True)
    return out, ref_idx


def lfm_apply_fwd(
    x: torch.Tensor, base: torch.Tensor, positions: torch.Tensor, ref_idx: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """fused [B,C,H,W] x.dtype: the fusion with given matches ``ref_idx``, in one launch."""
    B, K, C, H, W = x.shape
    out = _alloc.empty((B, C, H, W), x.dtype, x.device)
    _launch_fwd(x, base, positions, ref_idx, alpha, out, match=False)
    return out


def lfm_apply_bwd(
    grad: torch.Tensor, x: torch.Tensor, base: torch.Tensor, positions: torch.Tensor, ref_idx: torch.Tensor,
    alpha: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x [B,K,C,H,W] x.dtype, grad_alpha [B,K] float32) of the fusion, in one launch."""
    B, K, C, H, W = x.shape
    grad_x = _alloc.empty((B, K, C, H, W), x.dtype, x.device)
    grad_alpha = _alloc.empty((B, K), torch.float32, x.device)
    if B > 0:
        P, n = H * W, positions.shape[1]
        _check_sizes(K, C, P, n)
        cfg = _bwd_config(*map(_launch.size_hint, (C, P, n)), x.dtype)
        with _launch.device_of(x):  # grid (B, K): B on axis 0 (2^31 - 1), K on axis 1
            wrap_triton(_lfm_bwd_kernel)[(B, K)](grad, x, base, positions, ref_idx, alpha, grad_x, grad_alpha, K, C, P,
                                                 n, **cfg)
    return grad_x, grad_alpha


__all__ = ["lfm_fuse_fwd", "lfm_apply_fwd", "lfm_apply_bwd"]
