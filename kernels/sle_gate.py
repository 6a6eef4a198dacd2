"""Triton kernels of ``sle_gate`` (FastGAN's skip-layer excitation; the contract is in :mod:`fsgan_fast.ops.sle_gate`).

Launchers (pure functions, the bodies of the private triton ops ``fsgan_fast::_sle_gate_triton`` and
``fsgan_fast::_sle_gate_backward_triton`` that ``fsgan_fast/ops/sle_gate.py`` registers):

* ``sle_gate_fwd(x_low, x_high, w1, w2, act) -> (y, gate, pooled, hidden)``
* ``sle_gate_bwd(grad, x_low, x_high, w1, w2, gate, pooled, hidden, act)
  -> (grad_x_low, grad_x_high, grad_w1, grad_w2)``

Inputs arrive prepared: x_low [B,Cl,h,w] and x_high [B,Ch,H,W] (and grad, in x_high's layout) share a dtype
(float16, bfloat16, float32), each plainly contiguous or channels_last (read through either layout, never
copied); w1 [Ch,Cl,4,4] and w2 [Ch,Ch,1,1] float32 contiguous; gate / hidden [B,Ch] and pooled [B,Cl*16] float32
contiguous. Outputs keep their input's dtype and layout; the weights' gradients are float32. No host
synchronisation, no atomics: every sum has one owner and a fixed order.

The op is two tiny matrix products wrapped around one HBM-bound multiply. Sizes that matter (FastGAN): x_high up
to 8x16x512^2, w1 up to [128,1024,4,4] (8 MB of float32, as much as a 16-bit x_high at 64^2), Ch <= 512.

Forward, three launches:

1. ``_pool_hidden_kernel``, grid (Cl chunks, Ch blocks, batch blocks): for 16 batch rows, pools a chunk of x_low's
   channels, CLS at a time (PyTorch's adaptive bins, overlapping when h or w is not a multiple of 4), as a
   product with a 0/1 bin-membership matrix on the tensor cores, stores ``pooled``, and multiplies each
   sub-chunk straight into a [16, BLOCK_CH] split-K partial of ``hidden`` (``pooled @ w1^T`` over the chunk's
   columns): partials [NK, B, Ch]. Split K, not only Ch: Ch is small (16..128) and w1's rows long (Cl*16), so a
   grid over Ch alone would stream all of w1 through a handful of programs. Each Ch block re-pools its chunk
   (x_low is small next to w1 where Ch spans several blocks).
2. ``_gate_kernel``, grid (B, Ch blocks): hidden = sum of the NK partials (fixed order), the activation,
   ``gate = sigmoid(act(hidden) @ w2^T)``; stores hidden (pre-activation) and gate.
3. ``_scale_kernel``: ``y = x_high * gate`` at HBM bandwidth, one float32 multiply and one rounding per element.

Backward, three launches:

1. ``_scale_kernel`` with REDUCE: one pass over dy and x_high writes ``grad_x_high = dy * gate`` and the partial
   sums of ``dy * x_high`` over S slices of each (b, c) plane, [S, B*Ch] (no atomics; S <= 64).
2. ``_gate_bwd_kernel``, grid (NCB blocks of 32 channels c): d_gate = sum of the S partials of its own channels,
   d_pre = d_gate*g*(1-g), ``grad_w2[c, :] = d_pre[:, c]^T @ act(hidden)`` and the block's share
   ``d_pre[:, c] @ w2[c, :]`` of d_hidden's sum over c, [NCB, B, Ch]. Blocks over c, not over w2's columns: no
   program re-reads another's partials of d_gate (S*B*Ch of them in channels_last, where S is large).
3. ``_low_bwd_kernel``, grid (Cl chunks): per chunk of CLB channels, d_hidden = (sum of the NCB shares) *
   act'(hidden), then ``grad_w1 = d_hidden^T @ pooled`` and ``d_pooled = d_hidden @ w1`` (w1 read once, grad_w1
   written once), then d_pooled / bin area spread back over the bins of x_low (a product with the transposed
   membership matrix: a pixel in two overlapping bins gets both shares) and written as grad_x_low.

Layouts: the multiply views a contiguous tensor as a row-major [B*C, H*W] matrix and a channels_last one as
[B*H*W, C], and tiles the matrix in memory order ([rows, pixels] or [pixels, channels]), so every access is
contiguous along the tile's inner dimension; the pool and the spread read/write x_low by its strides, a few
consecutive channels at a time (contiguous in channels_last).

Precision: every sum in float32. The membership matrix is exact in any format, so the 16-bit pool products are
exact on the tensor cores. The other tl.dot products (the pool of a float32 x_low, the spread, pooled x w1 and
the backward's d_hidden x w1 and d_hidden^T x pooled) take float32 operands as ``tf32x3``: three tf32
tensor-core products, ~2^-21 relative per term, close to plain float32 rounding. Not ``ieee``: Triton's FMA path
holds a thread's whole K-slice of both operands in registers, and the pool would cost 16 FMAs per pixel. Each
product keeps K short (<= 64) for the same reason: a tf32x3 operand is held twice (high and low parts). The
products with w2 (gate, d_hidden's shares, grad_w2) are broadcast-and-sum in plain float32.

Non-finite values: an inf or NaN in x_low reaches every bin of its (b, c) row through the membership product
(0 * inf), where the reference keeps it to its own bins; hidden, the gate and y are non-finite either way.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _alloc, _launch
from ._launch import wrap_triton

_ACTS = {"swish": 0, "lrelu": 1}
_LRELU_SLOPE = tl.constexpr(0.1)  # the paper's LeakyReLU (ops.sle_gate.LRELU_SLOPE)
_BLOCK_B = 16  # batch rows per step of the pool / w1 products: a tl.dot needs M >= 16 (rows past B are masked)
_INT32_MAX = 2**31 - 1
# programs of the streaming pass that keep an H100/H200 busy (132 SMs, several 8-warp programs each)
_WAVE = 1024

# The CPU interpreter (triton 3.8) multiplies bfloat16 dot operands as their raw 16-bit patterns:
# there, and only there, the bfloat16 pool product runs on float32 copies (the same exact products).
_BF16_DOT_AS_F32 = tl.constexpr(_launch.interpreted())


def _pow2(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(v), 1))))


# ---------------------------------------------------------------------------------------------------
# Shared device helpers


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _act(h, ACT: tl.constexpr):
    if ACT == 0:
        return h * _sigmoid(h)
    else:
        return tl.where(h > 0, h, h * _LRELU_SLOPE)


@triton.jit
def _act_grad(h, ACT: tl.constexpr):
    if ACT == 0:
        s = _sigmoid(h)
        return s * (1.0 + h * (1.0 - s))
    else:
        return tl.where(h > 0, 1.0, _LRELU_SLOPE)


@triton.jit
def _bin_lo(i, n):
    # first index of adaptive-pool bin i (of 4) along an axis of n
    return (i * n) // 4


@triton.jit
def _bin_hi(i, n):
    # one past the last index: ceil((i+1)*n/4)
    return ((i + 1) * n + 3) // 4


@triton.jit
def _in_bin(q, k, h, w):
    """Whether pixel q (flat index of an h x w map) lies in bin k (0..15, row-major over the 4x4 grid); q and k
    broadcast against each other. Pixels q >= h*w have row >= h and lie in no bin."""
    row = q // w
    col = q - row * w
    i = k // 4
    j = k % 4
    return (row >= _bin_lo(i, h)) & (row < _bin_hi(i, h)) & (col >= _bin_lo(j, w)) & (col < _bin_hi(j, w))


@triton.jit
def _bin_area(k, h, w):
    i = k // 4
    j = k % 4
    return ((_bin_hi(i, h) - _bin_lo(i, h)) * (_bin_hi(j, w) - _bin_lo(j, w))).to(tl.float32)


@triton.jit
def _member_dot(a, b, acc):
    """acc + a @ b with b a float32 0/1 membership matrix (exact in every format): 16-bit ``a`` on the tensor cores
    as it is; float32 as tf32x3 (hi + lo parts of ``a``, ~2^-22 relative)."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="tf32x3")
    else:
        if _BF16_DOT_AS_F32:
            return tl.dot(a.to(tl.float32), b, acc)
        else:
            return tl.dot(a, b.to(a.dtype), acc)


@triton.jit
def _low_rows(b0, c0, B, Cl, hw, CLB: tl.constexpr, ROWS: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """Offsets of pixel 0 of the ROWS = BLOCK_B*CLB rows (b, c) = (b0 + r // CLB, c0 + r % CLB) of x_low, their
    validity, and the stride between pixels (int32: the launchers keep x_low below 2^31 elements)."""
    r = tl.arange(0, ROWS)
    b = b0 + r // CLB
    c = c0 + r % CLB
    ok = (b < B) & (c < Cl)
    if CHANNELS_LAST:
        return b * hw * Cl + c, ok, Cl
    else:
        return (b * Cl + c) * hw, ok, 1


# ---------------------------------------------------------------------------------------------------
# The HBM-bound pass: y = x * gate (forward), or dx = dy * gate plus the partial sums of dy * x (backward)


@triton.jit
def _scale_kernel(
    src_ptr,  # x_high (forward) or dy (backward), [B, C, H, W] contiguous or channels_last
    x_ptr,  # x_high, read only when REDUCE
    gate_ptr,  # [B*C] float32
    out_ptr,  # like src
    part_ptr,  # [S, B*C] float32, written only when REDUCE
    B,
    C,
    P,
    TPP,  # tiles per program along the pixel direction
    S,  # pixel slices (programs) per plane: cdiv(pixel tiles, TPP)
    REDUCE: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    # the tensor as a row-major matrix: contiguous [B*C, P] (tile = rows of planes x pixels), channels_last
    # [B*P, C] (tile = pixels x channels); a program walks TPP tiles along the pixel direction
    rr = tl.arange(0, BLOCK_ROWS)
    cc = tl.arange(0, BLOCK_COLS)
    if CHANNELS_LAST:
        b = tl.program_id(0) // S
        s = tl.program_id(0) % S
        chans = tl.program_id(1) * BLOCK_COLS + cc
        c_ok = chans < C
        g = tl.load(gate_ptr + b * C + chans, mask=c_ok, other=0.0)
        # int64 base per program, int32 offsets within the plane (P*C < 2^31, checked by the launcher)
        base = b.to(tl.int64) * P * C
        src, out, xs = src_ptr + base, out_ptr + base, x_ptr + base
        acc = tl.zeros([BLOCK_COLS], tl.float32)
        p0 = s * TPP * BLOCK_ROWS
        for t in range(0, TPP):
            pix = p0 + t * BLOCK_ROWS + rr
            m = (pix < P)[:, None] & c_ok[None, :]
            off = pix[:, None] * C + chans[None, :]
            v = tl.load(src + off, mask=m, other=0.0).to(tl.float32)
            tl.store(out + off, (v * g[None, :]).to(out_ptr.dtype.element_ty), mask=m)
            if REDUCE:
                xv = tl.load(xs + off, mask=m, other=0.0).to(tl.float32)
                acc += tl.sum(v * xv, axis=0)
        if REDUCE:
            tl.store(part_ptr + s * B * C + b * C + chans, acc, mask=c_ok)
    else:
        s = tl.program_id(1)
        row0 = tl.program_id(0) * BLOCK_ROWS
        rows = row0 + rr
        r_ok = rows < B * C
        g = tl.load(gate_ptr + rows, mask=r_ok, other=0.0)
        base = row0.to(tl.int64) * P  # BLOCK_ROWS*P < 2^31 (launcher)
        src, out, xs = src_ptr + base, out_ptr + base, x_ptr + base
        acc = tl.zeros([BLOCK_ROWS], tl.float32)
        p0 = s * TPP * BLOCK_COLS
        for t in range(0, TPP):
            pix = p0 + t * BLOCK_COLS + cc
            m = r_ok[:, None] & (pix < P)[None, :]
            off = rr[:, None] * P + pix[None, :]
            v = tl.load(src + off, mask=m, other=0.0).to(tl.float32)
            tl.store(out + off, (v * g[:, None]).to(out_ptr.dtype.element_ty), mask=m)
            if REDUCE:
                xv = tl.load(xs + off, mask=m, other=0.0).to(tl.float32)
                acc += tl.sum(v * xv, axis=1)
        if REDUCE:
            tl.store(part_ptr + s * B * C + rows, acc, mask=r_ok)


# ---------------------------------------------------------------------------------------------------
# Forward gate


@triton.jit
def _pool_hidden_kernel(
    x_ptr,  # x_low [B, Cl, h, w], contiguous or channels_last
    w1_ptr,  # [Ch, Cl*16] float32
    pooled_ptr,  # [B, Cl*16] float32 out
    part_ptr,  # [NK, B, Ch] float32 out: hidden's partial sum over chunk k
    B,
    Cl,
    h,
    w,
    Ch,
    SUBS,  # sub-chunks of CLS channels per chunk
    CHANNELS_LAST: tl.constexpr,
    CLS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_PX: tl.constexpr,
    BLOCK_CH: tl.constexpr,
):
    # a chunk of SUBS*CLS channels, BLOCK_CH output channels, BLOCK_B batch rows. Each sub-chunk is pooled and
    # immediately multiplied into the partial: every product keeps a short reduction dimension (BLOCK_PX pixels,
    # CLS*16 pooled values), which is what keeps a tl.dot's operands in registers
    pid_k = tl.program_id(0)
    pid_ch = tl.program_id(1)
    b0 = tl.program_id(2) * BLOCK_B
    ROWS: tl.constexpr = BLOCK_B * CLS
    KS: tl.constexpr = CLS * 16
    hw = h * w
    K = Cl * 16
    bins = tl.arange(0, 16)
    area = _bin_area(bins, h, w)
    r = tl.arange(0, ROWS)
    chs = pid_ch * BLOCK_CH + tl.arange(0, BLOCK_CH)
    ch_ok = chs < Ch
    bs = b0 + tl.arange(0, BLOCK_B)
    acc = tl.zeros([BLOCK_B, BLOCK_CH], tl.float32)
    for sub in range(0, SUBS):
        c0 = (pid_k * SUBS + sub) * CLS
        # w1[chs, the sub-chunk's columns]^T, loaded first: in flight together with the first pixels
        kk = c0 * 16 + tl.arange(0, KS)
        wt = tl.load(w1_ptr + chs[None, :] * K + kk[:, None], mask=(kk < K)[:, None] & ch_ok[None, :], other=0.0)
        # pool: [rows (b, c), pixels] @ [pixels, 16 bins] membership, then / bin area
        row_off, row_ok, px_stride = _low_rows(b0, c0, B, Cl, hw, CLS, ROWS, CHANNELS_LAST)
        pacc = tl.zeros([ROWS, 16], tl.float32)
        for p0 in range(0, hw, BLOCK_PX):
            q = p0 + tl.arange(0, BLOCK_PX)
            tile = tl.load(x_ptr + row_off[:, None] + q[None, :] * px_stride,
                           mask=row_ok[:, None] & (q < hw)[None, :], other=0.0)
            # 0/1 as float32 first: the interpreter turns a bool straight into bfloat16 zeros
            member = tl.where(_in_bin(q[:, None], bins[None, :], h, w), 1.0, 0.0)
            pacc = _member_dot(tile, member, pacc)
        pooled = tl.div_rn(pacc, area[None, :])
        if pid_ch == 0:  # the other Ch blocks pooled the same channels
            dst = (b0 + r // CLS) * K + (c0 + r % CLS) * 16
            tl.store(pooled_ptr + dst[:, None] + bins[None, :], pooled, mask=row_ok[:, None] & (bins < 16)[None, :])
        # rows (b, c) x bins -> [b, c*16 + bin], times the w1 slice
        acc = tl.dot(tl.reshape(pooled, [BLOCK_B, KS]), wt, acc, input_precision="tf32x3")
    tl.store(part_ptr + (pid_k * B + bs)[:, None] * Ch + chs[None, :], acc, mask=(bs < B)[:, None] & ch_ok[None, :])


@triton.jit
def _sum_parts(part_ptr, b, cols, cols_ok, NK, B, Ch, BLOCK_NK: tl.constexpr, BLOCK: tl.constexpr):
    # hidden[b, cols] = sum over the NK chunk partials, a [BLOCK_NK, BLOCK] tile at a time (one load in flight per
    # tile, not one per partial)
    h = tl.zeros([BLOCK], tl.float32)
    for k0 in range(0, NK, BLOCK_NK):
        ks = k0 + tl.arange(0, BLOCK_NK)
        t = tl.load(part_ptr + (ks[:, None] * B + b) * Ch + cols[None, :], mask=(ks < NK)[:, None] & cols_ok[None, :],
                    other=0.0)
        h += tl.sum(t, axis=0)
    return h


@triton.jit
def _gate_kernel(
    part_ptr,  # [NK, B, Ch] float32
    w2_ptr,  # [Ch, Ch] float32
    hidden_ptr,  # [B, Ch] float32 out (before the activation)
    gate_ptr,  # [B, Ch] float32 out
    NK,
    B,
    Ch,
    ACT: tl.constexpr,
    BLOCK_NK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # one batch row, BLOCK_C gate channels: a matrix-vector product with w2's rows, BLOCK_K inputs at a time; the
    # programs of block 0 also store the hidden they summed
    b = tl.program_id(0)
    cb = tl.program_id(1)
    cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < Ch
    acc = tl.zeros([BLOCK_C], tl.float32)
    for k0 in range(0, Ch, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < Ch
        wt = tl.load(w2_ptr + cs[:, None] * Ch + ks[None, :], mask=c_ok[:, None] & k_ok[None, :], other=0.0)
        hk = _sum_parts(part_ptr, b, ks, k_ok, NK, B, Ch, BLOCK_NK, BLOCK_K)
        if cb == 0:
            tl.store(hidden_ptr + b * Ch + ks, hk, mask=k_ok)
        acc += tl.sum(wt * _act(hk, ACT)[None, :], axis=1)
    tl.store(gate_ptr + b * Ch + cs, _sigmoid(acc), mask=c_ok)


# ---------------------------------------------------------------------------------------------------
# Backward gate


@triton.jit
def _d_pre(part_ptr, gate_ptr, bs, b_ok, cs, c_ok, S, B, Ch, BLOCK_S: tl.constexpr, BLOCK_B: tl.constexpr,
           BLOCK_C: tl.constexpr):
    # d_gate[bs, cs] = sum of the S partials of sum_HW dy*x (a [BLOCK_S, BLOCK_B, BLOCK_C] tile at a time), then
    # through the sigmoid; rows / columns out of range come out 0
    idx = bs[:, None] * Ch + cs[None, :]
    m = b_ok[:, None] & c_ok[None, :]
    d = tl.zeros([BLOCK_B, BLOCK_C], tl.float32)
    for s0 in range(0, S, BLOCK_S):
        ss = s0 + tl.arange(0, BLOCK_S)
        t = tl.load(part_ptr + ss[:, None, None] * B * Ch + idx[None, :, :],
                    mask=(ss < S)[:, None, None] & m[None, :, :], other=0.0)
        d += tl.sum(t, axis=0)
    g = tl.load(gate_ptr + idx, mask=m, other=0.0)
    return d * g * (1.0 - g)


@triton.jit
def _gate_bwd_kernel(
    dpart_ptr,  # [S, B*Ch] float32: partial sums of dy * x_high
    gate_ptr,  # [B, Ch]
    hidden_ptr,  # [B, Ch]
    w2_ptr,  # [Ch, Ch]
    dhp_ptr,  # [NCB, B, Ch] float32 out: d_pre[:, block] @ w2[block, :], the partials of d hidden's sum over c
    gw2_ptr,  # [Ch, Ch] float32 out
    S,
    B,
    Ch,
    ACT: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # a program owns BLOCK_C rows c of w2: it reduces only its own channels' partials of d_gate (no program re-reads
    # another's), writes grad_w2[c, :] (summed over batch blocks by read-modify-write: only this program touches
    # those elements) and its share of d_hidden, which _low_bwd_kernel adds up. Broadcast-and-sum products: the
    # batch can be any size (no 16-row minimum of tl.dot)
    pid = tl.program_id(0)
    cs = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < Ch
    for b0 in range(0, B, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        b_ok = bs < B
        dpre = _d_pre(dpart_ptr, gate_ptr, bs, b_ok, cs, c_ok, S, B, Ch, BLOCK_S, BLOCK_B, BLOCK_C)
        for k0 in range(0, Ch, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < Ch
            mk = b_ok[:, None] & k_ok[None, :]
            mw = c_ok[:, None] & k_ok[None, :]
            hk = tl.load(hidden_ptr + bs[:, None] * Ch + ks[None, :], mask=mk, other=0.0)
            w2t = tl.load(w2_ptr + cs[:, None] * Ch + ks[None, :], mask=mw, other=0.0)
            ak = tl.where(mk, _act(hk, ACT), 0.0)
            gw = tl.sum(dpre[:, :, None] * ak[:, None, :], axis=0)
            dst = gw2_ptr + cs[:, None] * Ch + ks[None, :]
            if b0 > 0:
                gw += tl.load(dst, mask=mw, other=0.0)
            tl.store(dst, gw, mask=mw)
            dh = tl.sum(dpre[:, :, None] * w2t[None, :, :], axis=1)
            tl.store(dhp_ptr + (pid * B + bs)[:, None] * Ch + ks[None, :], dh, mask=mk)
        # the next batch block re-reads grad_w2 that other threads of this program stored
        tl.debug_barrier()


@triton.jit
def _d_hidden(dhp_ptr, hidden_ptr, bs, b_ok, chs, ch_ok, NCB, B, Ch, ACT: tl.constexpr, BLOCK_NCB: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK_CH: tl.constexpr):
    # d_hidden[bs, chs]: the NCB shares of _gate_bwd_kernel, times act'(hidden)
    idx = bs[:, None] * Ch + chs[None, :]
    m = b_ok[:, None] & ch_ok[None, :]
    d = tl.zeros([BLOCK_B, BLOCK_CH], tl.float32)
    for n0 in range(0, NCB, BLOCK_NCB):
        ns = n0 + tl.arange(0, BLOCK_NCB)
        t = tl.load(dhp_ptr + ns[:, None, None] * B * Ch + idx[None, :, :],
                    mask=(ns < NCB)[:, None, None] & m[None, :, :], other=0.0)
        d += tl.sum(t, axis=0)
    h = tl.load(hidden_ptr + idx, mask=m, other=0.0)
    return tl.where(m, d * _act_grad(h, ACT), 0.0)


@triton.jit
def _low_bwd_kernel(
    dhp_ptr,  # [NCB, B, Ch] float32: shares of d hidden before act' (_gate_bwd_kernel)
    hidden_ptr,  # [B, Ch] float32
    pooled_ptr,  # [B, Cl*16] float32
    w1_ptr,  # [Ch, Cl*16] float32
    gx_ptr,  # grad_x_low [B, Cl, h, w] out, x_low's dtype and layout
    gw1_ptr,  # [Ch, Cl*16] float32 out
    B,
    Cl,
    h,
    w,
    Ch,
    NCB,
    CHANNELS_LAST: tl.constexpr,
    ACT: tl.constexpr,
    CLB: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_CH: tl.constexpr,
    BLOCK_PX: tl.constexpr,
    BLOCK_NCB: tl.constexpr,
):
    # a program owns CLB channels of x_low (KC = CLB*16 columns of w1): grad_w1[:, chunk], d_pooled[:, chunk] and
    # grad_x_low[:, chunk]; w1's slice is read once per batch block, grad_w1's written once (read-modify-written
    # per extra batch block)
    c0 = tl.program_id(0) * CLB
    ROWS: tl.constexpr = BLOCK_B * CLB
    KC: tl.constexpr = CLB * 16
    hw = h * w
    K = Cl * 16
    kk = c0 * 16 + tl.arange(0, KC)
    k_ok = kk < K
    area = _bin_area(tl.arange(0, KC) % 16, h, w)
    bins = tl.arange(0, 16)
    for b0 in range(0, B, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        b_ok = bs < B
        pl = tl.load(pooled_ptr + bs[:, None] * K + kk[None, :], mask=b_ok[:, None] & k_ok[None, :], other=0.0)
        dp = tl.zeros([BLOCK_B, KC], tl.float32)
        for ch0 in range(0, Ch, BLOCK_CH):
            chs = ch0 + tl.arange(0, BLOCK_CH)
            ch_ok = chs < Ch
            dh = _d_hidden(dhp_ptr, hidden_ptr, bs, b_ok, chs, ch_ok, NCB, B, Ch, ACT, BLOCK_NCB, BLOCK_B, BLOCK_CH)
            mw = ch_ok[:, None] & k_ok[None, :]
            woff = chs[:, None] * K + kk[None, :]
            wt = tl.load(w1_ptr + woff, mask=mw, other=0.0)
            dp = tl.dot(dh, wt, dp, input_precision="tf32x3")
            gw = tl.dot(tl.trans(dh), pl, input_precision="tf32x3")
            if b0 > 0:
                gw += tl.load(gw1_ptr + woff, mask=mw, other=0.0)
            tl.store(gw1_ptr + woff, gw, mask=mw)
        # spread: each pixel gets d_pooled / area of every bin it lies in
        dp2 = tl.reshape(tl.div_rn(dp, area[None, :]), [ROWS, 16])
        row_off, row_ok, px_stride = _low_rows(b0, c0, B, Cl, hw, CLB, ROWS, CHANNELS_LAST)
        for p0 in range(0, hw, BLOCK_PX):
            q = p0 + tl.arange(0, BLOCK_PX)
            member = tl.where(_in_bin(q[None, :], bins[:, None], h, w), 1.0, 0.0)  # [16, BLOCK_PX]
            g = tl.dot(dp2, member, input_precision="tf32x3")
            tl.store(gx_ptr + row_off[:, None] + q[None, :] * px_stride, g.to(gx_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & (q < hw)[None, :])
        # the next batch block re-reads grad_w1 that other threads of this program stored
        tl.debug_barrier()


# ---------------------------------------------------------------------------------------------------
# Block sizes (fixed heuristics of the sizes' hints: autotuning cannot run under the interpreter, and a block size
# changes the speed, never the result: every tile is masked)


@functools.lru_cache(maxsize=512)
def _scale_config(B: int, C: int, P: int, itemsize: int, channels_last: bool) -> dict:
    """Tiles of 16 KiB per operand (4 x 16-byte accesses per thread at 8 warps); TPP tiles per program along the
    pixels, so that the grid stays around a wave of programs and the partial sums per channel (S per plane, B
    planes) at most 512: what one _gate_bwd_kernel program sums for each of its channels."""
    tile = 16384 // itemsize
    if channels_last:
        cols = _pow2(C, 1, 256)  # channels
        rows = max(1, tile // cols)  # pixels
        n_tiles, others = triton.cdiv(P, rows), B * triton.cdiv(C, cols)
    else:
        cols = _pow2(P, 1, tile)  # pixels
        rows = _pow2(max(1, tile // cols), 1, triton.next_power_of_2(B * C))  # (b, c) planes
        n_tiles, others = triton.cdiv(P, cols), triton.cdiv(B * C, rows)
    tpp = max(1, (n_tiles * others) // (2 * _WAVE), triton.cdiv(n_tiles, max(1, 512 // max(B, 1))))
    return dict(BLOCK_ROWS=rows, BLOCK_COLS=cols, TPP=min(tpp, n_tiles), num_warps=8 if rows * cols >= 2048 else 4)


@functools.lru_cache(maxsize=512)
def _pool_config(B: int, Cl: int, hw: int, Ch: int, itemsize: int, channels_last: bool) -> dict:
    """Sub-chunks of CLS channels, SUBS of them per chunk: NK chunks such that the partials the gate kernel sums per
    batch row (NK x Ch) stay within 16K (NK <= 128) while the grid (chunks x Ch blocks x batch blocks) has ~128
    programs to stream w1 and x_low; CLS shrinks (to 1) where x_low has too few channels for that.

    Register budget (ptxas for sm_90, 8 warps, no spills): a tf32x3 operand is held twice (tf32 high and low
    parts), so float32 takes CLS <= 2 (pool product M <= 32, w1 product K <= 32) and 16-bit CLS <= 4; the pool
    product's K (pixels per step) fills a [16*CLS, BLOCK_PX] tile of 1K (float32) / 4K (16-bit) elements.
    ~130-250 registers with BLOCK_CH=64 (the w1 tile is loaded before the pool, to be in flight with it)."""
    wide = itemsize == 4
    block_ch = _pow2(Ch, 16, 64)
    n_other = triton.cdiv(Ch, block_ch) * triton.cdiv(B, _BLOCK_B)
    cls = _pow2(Cl, 1, 2 if wide else 4)
    while cls > 1 and triton.cdiv(Cl, cls) * n_other < 128:
        cls //= 2
    subs_total = triton.cdiv(Cl, cls)
    n_k = min(subs_total, 128, max(1, 16384 // max(Ch, 1)), max(1, triton.cdiv(256, n_other)))
    n_k = max(n_k, min(subs_total, triton.cdiv(128, n_other)))
    rows = _BLOCK_B * cls
    px = _pow2(hw, 16, min(64 if wide else 256, (1024 if wide else 4096) // rows))
    return dict(SUBS=triton.cdiv(subs_total, n_k), CLS=cls, BLOCK_B=_BLOCK_B, BLOCK_PX=px, BLOCK_CH=block_ch,
                num_warps=8)


@functools.lru_cache(maxsize=512)
def _gate_config(NK: int, Ch: int) -> dict:
    """[BLOCK_NK, BLOCK_K] tiles of partials (8K elements: one round of loads sums 8K partials) and [BLOCK_C,
    BLOCK_K] of w2, at 8 warps."""
    block_k = _pow2(Ch, 1, 128)
    return dict(BLOCK_NK=_pow2(NK, 1, 8192 // block_k), BLOCK_C=_pow2(Ch, 1, 4096 // block_k), BLOCK_K=block_k,
                num_warps=8)


@functools.lru_cache(maxsize=512)
def _gate_bwd_config(S: int, B: int, Ch: int) -> dict:
    """BLOCK_C = 32 channels per program (NCB = Ch/32 shares of d_hidden); the partial tiles [BLOCK_S, BLOCK_B,
    BLOCK_C] and the products' [BLOCK_B, BLOCK_C, BLOCK_K] temporaries of ~8K elements at 8 warps."""
    block_b = _pow2(B, 1, 16)
    block_c = _pow2(Ch, 1, 32)
    per = max(1, 8192 // (block_b * block_c))
    return dict(BLOCK_S=_pow2(S, 1, per), BLOCK_B=block_b, BLOCK_C=block_c, BLOCK_K=_pow2(Ch, 1, min(per, 128)),
                num_warps=8)


@functools.lru_cache(maxsize=512)
def _low_bwd_config(Cl: int, hw: int, NCB: int, channels_last: bool) -> dict:
    """CLB channels per program (KC = 16*CLB columns of w1): 2, 4 in channels_last (8 bytes per 16-bit pixel), fewer
    where Cl/CLB would give under 128 programs to stream w1, grad_w1 and grad_x_low. The spread tile [16*CLB,
    BLOCK_PX] holds ~4K elements. ptxas for sm_90: no spills."""
    clb = _pow2(Cl, 1, 4 if channels_last else 2)
    while clb > 1 and triton.cdiv(Cl, clb) < 128:
        clb //= 2
    rows = _BLOCK_B * clb
    cfg = dict(CLB=clb, BLOCK_B=_BLOCK_B, BLOCK_PX=_pow2(hw, 16, 4096 // rows), BLOCK_NCB=_pow2(NCB, 1, 8))
    if clb == 4:
        return dict(cfg, BLOCK_CH=16, num_warps=4)
    return dict(cfg, BLOCK_CH=32, num_warps=8)


# ---------------------------------------------------------------------------------------------------
# Launchers


def _act_id(act: str) -> int:
    if act not in _ACTS:
        raise ValueError(f"act must be one of {tuple(_ACTS)}, got {act!r}")
    return _ACTS[act]


def _channels_last(t: torch.Tensor) -> bool:
    # prepared inputs are contiguous or channels_last; a tensor that is both is read as contiguous
    return not t.is_contiguous()


def _empty_as(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An output buffer of ``t``'s shape, dtype and layout."""
    B, C, H, W = t.shape
    if channels_last:
        return _alloc.empty((B, H, W, C), t.dtype, t.device).permute(0, 3, 1, 2)
    return _alloc.empty((B, C, H, W), t.dtype, t.device)


def _check_sizes(x_low: torch.Tensor, x_high: torch.Tensor, w1: torch.Tensor) -> None:
    # int32 offsets (64-bit ones cost registers the small kernels lack): within one sample of x_high (its
    # programs' bases are int64), within x_low and w1 (small: the gate's input and weight), with room for a block
    # past the end
    for name, n in (("x_high's C*H*W", x_high[0].numel()), ("x_low", x_low.numel()), ("w1", w1.numel())):
        if n > _INT32_MAX - 65536:
            raise ValueError(f"the Triton sle_gate kernels need {name} below 2^31 elements, got {n}")


def _launch_scale(src, x, gate, out, part, channels_last: bool, cfg: dict, S) -> None:
    B, C, H, W = src.shape
    P = H * W
    cfg = dict(cfg)
    tpp = cfg.pop("TPP")
    reduce = part is not None
    if channels_last:
        grid = (B * S, triton.cdiv(C, cfg["BLOCK_COLS"]))
    else:
        grid = (triton.cdiv(B * C, cfg["BLOCK_ROWS"]), S)
    wrap_triton(_scale_kernel)[grid](src, x, gate, out, part if reduce else gate, B, C, P, tpp, S, REDUCE=reduce,
                                     CHANNELS_LAST=channels_last, **cfg)


def _scale_plan(t: torch.Tensor, channels_last: bool):
    """(config, S) of the pass over ``t``: S pixel slices per plane, each of TPP tiles."""
    B, C, H, W = t.shape
    P = H * W
    cfg = _scale_config(*map(_launch.size_hint, (B, C, P)), t.element_size(), channels_last)
    pix_block = cfg["BLOCK_ROWS"] if channels_last else cfg["BLOCK_COLS"]
    return cfg, triton.cdiv(triton.cdiv(P, pix_block), cfg["TPP"])


def sle_gate_fwd(
    x_low: torch.Tensor, x_high: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, act: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, gate [B,Ch], pooled [B,Cl*16], hidden [B,Ch]) in three launches; y in x_high's dtype and layout."""
    act_id = _act_id(act)
    B, Cl, h, w = x_low.shape
    Ch = x_high.shape[1]
    dev = x_high.device
    _check_sizes(x_low, x_high, w1)
    low_cl, high_cl = _channels_last(x_low), _channels_last(x_high)
    y = _empty_as(x_high, high_cl)
    gate = _alloc.empty((B, Ch), torch.float32, dev)
    pooled = _alloc.empty((B, Cl * 16), torch.float32, dev)
    hidden = _alloc.empty((B, Ch), torch.float32, dev)

    pc = dict(_pool_config(*map(_launch.size_hint, (B, Cl, h * w, Ch)), x_low.element_size(), low_cl))
    subs = pc.pop("SUBS")
    n_k = triton.cdiv(Cl, pc["CLS"] * subs)
    part = _alloc.empty((n_k, B, Ch), torch.float32, dev)
    gc = _gate_config(_launch.size_hint(n_k), _launch.size_hint(Ch))
    sc, S = _scale_plan(x_high, high_cl)
    with _launch.device_of(x_high):
        grid = (n_k, triton.cdiv(Ch, pc["BLOCK_CH"]), triton.cdiv(B, pc["BLOCK_B"]))
        wrap_triton(_pool_hidden_kernel)[grid](x_low, w1, pooled, part, B, Cl, h, w, Ch, subs, CHANNELS_LAST=low_cl,
                                               **pc)
        wrap_triton(_gate_kernel)[(B, triton.cdiv(Ch, gc["BLOCK_C"]))](part, w2, hidden, gate, n_k, B, Ch,
                                                                       ACT=act_id, **gc)
        _launch_scale(x_high, x_high, gate, y, None, high_cl, sc, S)
    return y, gate, pooled, hidden


def sle_gate_bwd(
    grad: torch.Tensor, x_low: torch.Tensor, x_high: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
    gate: torch.Tensor, pooled: torch.Tensor, hidden: torch.Tensor, act: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x_low, grad_x_high, grad_w1, grad_w2) in three launches; the first two in their input's dtype and
    layout, the weights' float32."""
    act_id = _act_id(act)
    B, Cl, h, w = x_low.shape
    Ch = x_high.shape[1]
    dev = x_high.device
    _check_sizes(x_low, x_high, w1)
    low_cl, high_cl = _channels_last(x_low), _channels_last(x_high)
    grad_x_high = _empty_as(x_high, high_cl)
    grad_x_low = _empty_as(x_low, low_cl)
    grad_w1 = _alloc.empty(tuple(w1.shape), torch.float32, dev)
    grad_w2 = _alloc.empty(tuple(w2.shape), torch.float32, dev)

    sc, S = _scale_plan(x_high, high_cl)
    dpart = _alloc.empty((S, B * Ch), torch.float32, dev)
    gb = _gate_bwd_config(*map(_launch.size_hint, (S, B, Ch)))
    ncb = triton.cdiv(Ch, gb["BLOCK_C"])
    d_hidden = _alloc.empty((ncb, B, Ch), torch.float32, dev)  # shares, before act'
    lb = _low_bwd_config(*map(_launch.size_hint, (Cl, h * w, ncb)), low_cl)
    with _launch.device_of(x_high):
        _launch_scale(grad, x_high, gate, grad_x_high, dpart, high_cl, sc, S)
        wrap_triton(_gate_bwd_kernel)[(ncb,)](dpart, gate, hidden, w2, d_hidden, grad_w2, S, B, Ch, ACT=act_id, **gb)
        wrap_triton(_low_bwd_kernel)[(triton.cdiv(Cl, lb["CLB"]),)](d_hidden, hidden, pooled, w1, grad_x_low, grad_w1,
                                                                    B, Cl, h, w, Ch, ncb, CHANNELS_LAST=low_cl,
                                                                    ACT=act_id, **lb)
    return grad_x_low, grad_x_high, grad_w1, grad_w2


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time compile variants (tests/ops/test_triton_compile.py)

_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def aot_variants(shape: tuple, dtype: torch.dtype):
    """``(op, kernel, signature, constexprs, num_warps)`` of every kernel specialisation the launchers pick for
    ``shape = (B, Cl, h, w, Ch, H, W)`` in ``dtype``, both layouts (x_low's and x_high's alike) and both
    activations: what ``triton.compile`` needs to build them without a GPU. Repeats are left to the caller."""
    B, Cl, h, w, Ch, H, W = shape
    t = _TRITON_TYPES[dtype]
    size = torch.empty((), dtype=dtype).element_size()

    def split(cfg, *runtime):  # (constexprs, num_warps) of a config, less its run-time arguments
        cfg = dict(cfg)
        for key in runtime:
            del cfg[key]
        return cfg, cfg.pop("num_warps")

    for cl in (False, True):
        for act in _ACTS.values():
            sc = _scale_config(B, Ch, H * W, size, cl)
            S = triton.cdiv(triton.cdiv(H * W, sc["BLOCK_ROWS"] if cl else sc["BLOCK_COLS"]), sc["TPP"])
            cfg, warps = split(sc, "TPP")
            sig = dict(src_ptr=f"*{t}", x_ptr=f"*{t}", gate_ptr="*fp32", out_ptr=f"*{t}", part_ptr="*fp32", B="i32",
                       C="i32", P="i32", TPP="i32", S="i32")
            yield "sle_gate", _scale_kernel, sig, dict(REDUCE=False, CHANNELS_LAST=cl, **cfg), warps
            yield "sle_gate_backward", _scale_kernel, sig, dict(REDUCE=True, CHANNELS_LAST=cl, **cfg), warps

            pc = _pool_config(B, Cl, h * w, Ch, size, cl)
            n_k = triton.cdiv(Cl, pc["CLS"] * pc["SUBS"])
            cfg, warps = split(pc, "SUBS")
            sig = dict(x_ptr=f"*{t}", w1_ptr="*fp32", pooled_ptr="*fp32", part_ptr="*fp32", B="i32", Cl="i32",
                       h="i32", w="i32", Ch="i32", SUBS="i32")
            yield "sle_gate", _pool_hidden_kernel, sig, dict(CHANNELS_LAST=cl, **cfg), warps

            cfg, warps = split(_gate_config(n_k, Ch))
            sig = dict(part_ptr="*fp32", w2_ptr="*fp32", hidden_ptr="*fp32", gate_ptr="*fp32", NK="i32", B="i32",
                       Ch="i32")
            yield "sle_gate", _gate_kernel, sig, dict(ACT=act, **cfg), warps

            gb = _gate_bwd_config(S, B, Ch)
            ncb = triton.cdiv(Ch, gb["BLOCK_C"])
            cfg, warps = split(gb)
            sig = dict(dpart_ptr="*fp32", gate_ptr="*fp32", hidden_ptr="*fp32", w2_ptr="*fp32", dhp_ptr="*fp32",
                       gw2_ptr="*fp32", S="i32", B="i32", Ch="i32")
            yield "sle_gate_backward", _gate_bwd_kernel, sig, dict(ACT=act, **cfg), warps

            cfg, warps = split(_low_bwd_config(Cl, h * w, ncb, cl))
            sig = dict(dhp_ptr="*fp32", hidden_ptr="*fp32", pooled_ptr="*fp32", w1_ptr="*fp32", gx_ptr=f"*{t}",
                       gw1_ptr="*fp32", B="i32", Cl="i32", h="i32", w="i32", Ch="i32", NCB="i32")
            yield "sle_gate_backward", _low_bwd_kernel, sig, dict(CHANNELS_LAST=cl, ACT=act, **cfg), warps


__all__ = ["sle_gate_fwd", "sle_gate_bwd"]
