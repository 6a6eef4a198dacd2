"""SinGAN's image resizer as a batched, differentiable GPU op: any separable linear resize by tap tables.

``imresize(x[B,C,H,W], scale | size, mode, edge) -> [B,C,Ho,Wo]``

Every resize here is separable and linear: ``out = A_h @ x @ A_w^T`` per plane, with small matrices ``A`` built on
the host once per (sizes, mode, edge) and cached on the device. The kernels never see the mode: they take each
matrix as a *tap table* (for every output row, the input rows it reads and their weights) and compute

    out[b,c,y,x] = sum_i row_w[y,i] * sum_j col_w[x,j] * x[b,c,row_idx[y,i],col_idx[x,j]]

in float32 (float64 for float64). The backward is the same kernel with the tables of ``A^T``.

Modes:

- ``"matlab"`` (SinGAN's ``imresize``, a port of the MATLAB resizer): cubic kernel a = -0.5; when a dimension
  shrinks (scale s < 1) the kernel is widened by 1/s and its weights scaled by s (antialiasing); output size
  ``ceil(n * s)``; output pixel ``k`` (1-based) samples input coordinate ``k/s + (1 - 1/s)/2``; weights sum to 1.
  ``edge="official"`` reproduces the reference's boundary: its tap indices pass through ``np.uint``, so taps left of
  the first row/column get weight 0 (the rest renormalised), while taps past the last one mirror
  (``n, n+1 -> n-1, n-2``). ``edge="symmetric"`` mirrors at all four edges (what the code meant). The reference
  also rounds every image to uint8 on the CPU; this op stays in floating point.
  With ``size`` the scales are ``size / input``, each dimension antialiased when it shrinks (the reference looks
  at the height's scale only; the two agree whenever the scales do).
- ``"bicubic"`` / ``"bilinear"``: ``F.interpolate(..., align_corners=False)`` (a = -0.75, clamped edges, no
  antialiasing), for comparison and for users who want PyTorch's resize.

dtypes: float16, bfloat16, float32, float64 (weights in float32, float64 for float64). ``x`` any layout (copied to
contiguous). Errors (ValueError/TypeError, before any kernel runs): wrong rank, empty dims, an unknown mode or
edge, a scale that is not positive and finite, both or neither of scale and size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast import backends
from fsgan_fast.ops import _common

MODES = ("matlab", "bicubic", "bilinear")
EDGES = ("official", "symmetric")


# ---------------------------------------------------------------------------------------------------
# Resize matrices (host, float64)


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = ((a + 2) * ax3 - (a + 3) * ax2 + 1) * (ax <= 1)
    far = (a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a) * ((ax > 1) & (ax <= 2))
    return near + far


def output_length(n: int, scale: float) -> int:
    """The reference's output size: ``ceil(n * scale)`` in float64."""
    return int(np.ceil(np.float64(n) * np.float64(scale)))


def _matlab_matrix(n_in: int, n_out: int, scale: float, edge: str) -> np.ndarray:
    """``[n_out, n_in]`` float64: the matlab-mode weights, boundary per ``edge`` (see the module docstring)."""
    antialias = scale < 1
    width = 4.0 / scale if antialias else 4.0
    out_coord = np.arange(1, n_out + 1, dtype=np.float64)
    centre = out_coord / scale + 0.5 * (1 - 1.0 / scale)
    left = np.floor(centre - width / 2)
    taps = int(np.ceil(width) + 2)
    pos = left[:, None] + np.arange(taps)[None, :] - 1  # 0-based input index of each tap (may be out of range)
    dist = centre[:, None] - pos - 1
    w = scale * _cubic(scale * dist, -0.5) if antialias else _cubic(dist, -0.5)
    if edge == "official":
        w = np.where(pos < 0, 0.0, w)  # np.uint wraps these to ~2^64: their weight underflows to 0
    total = w.sum(axis=1, keepdims=True)
    w = w / np.where(total == 0, 1.0, total)
    period = 2 * n_in
    m = np.mod(pos.astype(np.int64), period)  # non-negative; the mirror of the reference: i, and 2n-1-i past n
    idx = np.where(m < n_in, m, period - 1 - m)
    mat = np.zeros((n_out, n_in))
    np.add.at(mat, (np.repeat(np.arange(n_out), taps), idx.reshape(-1)), w.reshape(-1))
    return mat


def _torch_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """``F.interpolate``'s weights (align_corners=False, size given) as a ``[n_out, n_in]`` float64 matrix."""
    ratio = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * ratio - 0.5
    mat = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if mode == "bilinear":
        src = np.maximum(src, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = src - i0
        np.add.at(mat, (rows, i0), 1 - lam)
        np.add.at(mat, (rows, i1), lam)
        return mat
    base = np.floor(src)
    t = src - base
    for k in range(-1, 3):
        idx = np.clip(base.astype(np.int64) + k, 0, n_in - 1)
        np.add.at(mat, (rows, idx), _cubic(t - k, -0.75))
    return mat


@functools.lru_cache(maxsize=512)
def resize_matrix(n_in: int, n_out: int, scale: float | None, mode: str, edge: str, keep: int | None = None) -> np.ndarray:
    """The ``[keep or n_out, n_in]`` float64 matrix of one dimension's resize.

    ``scale`` set: matlab resize by ``scale`` (``n_out`` must be ``ceil(n_in * scale)``); ``None``: to ``n_out``
    (matlab with scale ``n_out / n_in``). ``keep`` keeps the first ``keep`` output rows (SinGAN's crop after its
    resize by 1/r). Read-only: it is shared through the cache.
    """
    if mode == "matlab":
        s = float(scale) if scale is not None else n_out / n_in
        mat = np.eye(n_in) if s == 1.0 and n_out == n_in else _matlab_matrix(n_in, n_out, s, edge)
    else:
        mat = _torch_matrix(n_in, n_out, mode)
    mat = mat[:keep] if keep is not None else mat
    mat.setflags(write=False)
    return mat


def tap_table(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(idx int64 [rows, T], w float64 [rows, T])`` with the non-zero columns of each row of ``mat``, padded with
    (0, 0.0) to the widest row. T may be 0 (an all-zero matrix)."""
    nz = mat != 0
    counts = nz.sum(axis=1)
    taps = int(counts.max()) if mat.size else 0
    idx = np.zeros((mat.shape[0], taps), dtype=np.int64)
    w = np.zeros((mat.shape[0], taps))
    for r in range(mat.shape[0]):
        cols = np.flatnonzero(nz[r])
        idx[r, : len(cols)] = cols
        w[r, : len(cols)] = mat[r, cols]
    return idx, w


class Tables:
    """One resize's four tap tables on a device (row and column, forward and transposed), built once and cached."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, device: torch.device, dtype: torch.dtype):
        self.out_size = (rows.shape[0], cols.shape[0])
        self.in_size = (rows.shape[1], cols.shape[1])
        self.rows = rows
        self.cols = cols

        def put(mat):
            idx, w = tap_table(mat)
            return torch.from_numpy(idx).to(device), torch.from_numpy(w).to(device=device, dtype=dtype)

        self.forward = (*put(rows), *put(cols))  # row_idx, row_w, col_idx, col_w
        self.backward = (*put(rows.T), *put(cols.T))

    def dense(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        return (torch.from_numpy(np.array(self.rows)).to(device=device, dtype=dtype),
                torch.from_numpy(np.array(self.cols)).to(device=device, dtype=dtype))


@functools.lru_cache(maxsize=256)
def _tables(rows_key: tuple, cols_key: tuple, device: torch.device, dtype: torch.dtype) -> Tables:
    return Tables(resize_matrix(*rows_key), resize_matrix(*cols_key), device, dtype)


def plan(in_size: Sequence[int], *, scale=None, size=None, mode: str = "matlab", edge: str = "official",
         crop: Sequence[int] | None = None) -> tuple[tuple, tuple]:
    """The per-dimension ``resize_matrix`` keys of a resize of ``in_size`` (h, w): by ``scale`` (a number or (sh, sw);
    output ``ceil(n*s)``, then cropped top-left to ``crop`` if given) or to ``size``. Raises ValueError on bad values."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if edge not in EDGES:
        raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    keys = []
    if scale is not None:
        scales = tuple(scale) if isinstance(scale, (tuple, list)) else (scale, scale)
        if len(scales) != 2 or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"scale must be a positive finite number or a pair of them, got {scale!r}")
        for d, (n, s) in enumerate(zip(in_size, scales)):
            n_out = output_length(n, s)
            keep = None
            if crop is not None:
                if crop[d] > n_out:
                    raise ValueError(f"cannot crop {['height', 'width'][d]} {n_out} (= ceil({n} * {s:g})) to {crop[d]}: "
                                     "the resize by scale came out smaller than the size asked for")
                keep = int(crop[d]) if crop[d] != n_out else None
            keys.append((int(n), n_out, float(s) if mode == "matlab" else None, mode, edge, keep))
    else:
        if len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
            raise ValueError(f"size must be two positive ints (H, W), got {size!r}")
        keys = [(int(n), int(m), None, mode, edge, None) for n, m in zip(in_size, size)]
    return keys[0], keys[1]


def tables(x: Tensor, rows_key: tuple, cols_key: tuple) -> Tables:
    """The tap tables of a resize of ``x`` (cached per device and dtype). Under torch.compile / torch.export they
    come from :func:`_table_values`, which tracing takes as a constant, and become constants of the graph."""
    if torch.compiler.is_compiling():
        return _TracedTables(_table_values(rows_key, cols_key), x.device, _common.opmath(x.dtype))
    return _tables(rows_key, cols_key, x.device, _common.opmath(x.dtype))


@torch.compiler.assume_constant_result
def _table_values(rows_key: tuple, cols_key: tuple) -> tuple:
    """(forward tables, transposed tables, dense rows, dense cols) of a resize as nested tuples of Python numbers."""
    rows, cols = resize_matrix(*rows_key), resize_matrix(*cols_key)

    def lists(mat):
        idx, w = tap_table(mat)
        return tuple(map(tuple, idx.tolist())), tuple(map(tuple, w.tolist()))

    return ((*lists(rows), *lists(cols)), (*lists(rows.T), *lists(cols.T)),
            tuple(map(tuple, rows.tolist())), tuple(map(tuple, cols.tolist())))


class _TracedTables:
    """:class:`Tables` built from constants inside a traced function (no numpy there)."""

    def __init__(self, values: tuple, device: torch.device, dtype: torch.dtype):
        fwd, bwd, self._rows, self._cols = values
        self.out_size, self.in_size = (len(self._rows), len(self._cols)), (len(self._rows[0]), len(self._cols[0]))

        def tensors(t):
            ri, rw, ci, cw = t
            return (self._index(ri, device), torch.tensor(rw, dtype=dtype, device=device).reshape(len(ri), -1),
                    self._index(ci, device), torch.tensor(cw, dtype=dtype, device=device).reshape(len(ci), -1))

        self.forward, self.backward = tensors(fwd), tensors(bwd)

    @staticmethod
    def _index(rows: tuple, device) -> Tensor:
        return torch.tensor(rows, dtype=torch.int64, device=device).reshape(len(rows), -1)

    def dense(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        return (torch.tensor(self._rows, dtype=dtype, device=device), torch.tensor(self._cols, dtype=dtype, device=device))


# ---------------------------------------------------------------------------------------------------
# References


def separable_reference(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ x @ cols^T`` per plane, in ``rows``' dtype, rounded to ``x``'s dtype."""
    y = torch.einsum("yh,bchw,xw->bcyx", rows, x.to(rows.dtype), cols)
    return y.to(x.dtype)


def taps_reference(x: Tensor, row_idx: Tensor, row_w: Tensor, col_idx: Tensor, col_w: Tensor) -> Tensor:
    """The kernels' contract, by gathers: what ``_imresize_*`` computes from tap tables."""
    acc = row_w.dtype
    xr = x.to(acc)[:, :, row_idx, :]  # [B,C,Ho,Th,Wi]
    xr = (xr * row_w[:, :, None]).sum(3)  # [B,C,Ho,Wi]
    xc = xr[:, :, :, col_idx]  # [B,C,Ho,Wo,Tw]
    return (xc * col_w).sum(-1).to(x.dtype)


def dense_matrices(row_kernel, col_kernel, device, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """The dense ``[Ho, Hi]`` and ``[Wo, Wi]`` resize matrices of a :func:`plan`, for the references."""
    rows = torch.from_numpy(np.array(resize_matrix(*row_kernel))).to(device, dtype)
    cols = torch.from_numpy(np.array(resize_matrix(*col_kernel))).to(device, dtype)
    return rows, cols


def imresize_reference(x: Tensor, scale=None, *, size=None, mode: str = "matlab", edge: str = "official") -> Tensor:
    """``imresize`` in plain PyTorch (dense matrices, float64 inside)."""
    rows, cols = dense_matrices(*plan(x.shape[-2:], scale=scale, size=size, mode=mode, edge=edge), x.device)
    return separable_reference(x, rows, cols)


# ---------------------------------------------------------------------------------------------------
# Op registration


def _fake(x, row_idx, row_w, col_idx, col_w):
    return x.new_empty(x.shape[0], x.shape[1], row_idx.shape[0], col_idx.shape[0])


# _imresize_cpu / _imresize_cuda (csrc/imresize/) and _imresize_triton (kernels/imresize.py): x contiguous
# [B,C,Hi,Wi]; row_idx int64 [Ho,Th] in [0,Hi), row_w opmath [Ho,Th]; col_idx int64 [Wo,Tw], col_w [Wo,Tw];
# Th or Tw may be 0 (the result is then zeros). Returns contiguous [B,C,Ho,Wo] in x's dtype, accumulated in opmath.
NATIVE_SCHEMAS = {"_imresize_{dev}": "(Tensor x, Tensor row_idx, Tensor row_w, Tensor col_idx, Tensor col_w) -> Tensor"}
_common.define_ops("imresize", NATIVE_SCHEMAS, fakes={"imresize": _fake}, triton={"imresize": "imresize_fwd"})


def run_tables(x: Tensor, table: tuple[Tensor, Tensor, Tensor, Tensor], backend: str) -> Tensor:
    """Apply one tap-table resize with ``backend`` (``reference`` gathers in PyTorch)."""
    x = x.contiguous()
    if backend == "reference":
        return taps_reference(x, *table)
    return _common.kernel("imresize", backend, x.device)(x, *table)


def _imresize_body(x: Tensor, row_idx: Tensor, row_w: Tensor, col_idx: Tensor, col_w: Tensor, t_row_idx: Tensor,
                   t_row_w: Tensor, t_col_idx: Tensor, t_col_w: Tensor, backend: str) -> Tensor:
    return run_tables(x, (row_idx, row_w, col_idx, col_w), backend)


# the public op carries the transposed tables too, for its backward (the same op on them)
_imresize_op = torch.library.custom_op("fsgan_fast::imresize", _imresize_body, mutates_args=())


@_imresize_op.register_fake
def _(x, row_idx, row_w, col_idx, col_w, t_row_idx, t_row_w, t_col_idx, t_col_w, backend):
    return _fake(x, row_idx, row_w, col_idx, col_w)


def _setup(ctx, inputs, output) -> None:
    ctx.forward, ctx.transposed = inputs[1:5], inputs[5:9]
    ctx.in_size = inputs[0].shape[-2:]
    ctx.backend = inputs[9]


def _backward(ctx, grad):
    # the adjoint of a linear map: the same kernel with the transposed tables (the op is its own backward)
    return (resize_tables(grad, ctx.transposed, ctx.forward, ctx.backend),) + (None,) * 9


_imresize_eager = _common.EagerOp(_imresize_op, _imresize_body, _setup, _backward)


def resize_tables(x: Tensor, table: tuple[Tensor, ...], adjoint: tuple[Tensor, ...], backend: str) -> Tensor:
    """Apply one tap-table resize through the public op, ``adjoint`` being the tables of its transpose: what
    backward formulas call (traceable, and differentiable once more)."""
    return _imresize_eager(x.contiguous(), *table, *adjoint, backend)


def _check(x: Tensor) -> None:
    _common.check_float("x", x)
    _common.check_rank("x", x, ("B", "C", "H", "W"))
    if x.numel() == 0:
        raise ValueError(f"x must have no empty dimension, got shape {list(x.shape)}")


def resize_with(x: Tensor, table: Tables, backend: str | None) -> Tensor:
    """Resize ``x`` by prepared ``table`` through the backend selection (the public op's body; pyramid ops reuse it)."""
    lowered = _common.lowering("imresize", x)
    if lowered == "reference":
        rows, cols = table.dense(_common.opmath(x.dtype), x.device)
        return separable_reference(x, rows, cols)
    if lowered is not None:
        return _common.kernel_op("imresize", lowered, x.device)(x.contiguous(), *table.forward)
    name = backends.resolve("imresize", x.device, x.dtype, backend)
    return _imresize_eager(x, *table.forward, *table.backward, name)


def imresize(x: Tensor, scale=None, *, size: Sequence[int] | None = None, mode: str = "matlab", edge: str = "official",
             backend: str | None = None) -> Tensor:
    """Resize ``x [B,C,H,W]`` by ``scale`` (a number or (sh, sw); output ``ceil(n*s)``) or to ``size`` (H, W); see the
    module docstring for the modes and edges. Differentiable with respect to ``x``."""
    _check(x)
    if size is not None:
        size = tuple(int(v) if isinstance(v, (int, np.integer)) else v for v in size)
    rk, ck = plan(x.shape[-2:], scale=scale, size=size, mode=mode, edge=edge)
    return resize_with(x, tables(x, rk, ck), backend)


__all__ = [
    "MODES",
    "EDGES",
    "imresize",
    "imresize_reference",
    "separable_reference",
    "taps_reference",
    "resize_matrix",
    "output_length",
    "tap_table",
    "plan",
]
