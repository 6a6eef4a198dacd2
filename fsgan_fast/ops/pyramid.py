"""SinGAN's scale step: ``pyramid_inject`` before each scale's generator, ``pyramid_blend`` after it, and the pyramid.

``pyramid_inject(prev[B,C,h,w] | None, size=(H,W), noise, amp, pad=p, mode, scale, edge) -> (up, g_in)``

- ``up [B,C,H,W]`` = ``prev`` resized to ``size`` (:mod:`fsgan_fast.ops.imresize`'s modes and edges), or with
  ``scale=s``: resized by ``s`` (output ``ceil(h*s)``) and cropped top-left to ``size``, SinGAN's own step
  between scales (``s = 1/r``). ``prev=None`` (the coarsest scale) gives ``up = 0``.
- ``g_in [B,C,H+2p,W+2p]`` = ``zero_pad(up + amp * noise, p)``, the generator's input, in the same pass. ``noise``
  is ``[B,1|C,H,W]`` (one channel broadcasts over C: SinGAN's coarsest scale) or ``[B,1|C,H+2p,W+2p]`` (noise
  drawn at the padded size, SinGAN's animation mode: ``g_in = zero_pad(up, p) + amp * noise``). ``amp`` is a
  number or a ``[B]`` tensor (float32).

``pyramid_blend(up, residual, mask=None) -> up + residual``, or ``up + mask * residual`` with ``mask [B|1,1,H,W]``
in [0, 1] (= ``mask*(up+residual) + (1-mask)*up``, harmonisation and editing): the epilogue of each scale.

``build_pyramid(image, scale_factor, min_size, max_size)`` is SinGAN's schedule (``adjust_scales2image`` and
``creat_reals_pyramid``): see :class:`Pyramid`.

Both ops accumulate in float32 (float64 for float64) and round each output once. Gradients flow to ``prev``,
``noise``, a tensor ``amp``, ``residual``, ``up`` and ``mask``. The kernels take tap tables (see imresize), so one
kernel serves every mode.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast import backends
from fsgan_fast.ops import _common

_resize = importlib.import_module("fsgan_fast.ops.imresize")  # the module: the package's `imresize` is the function

# ---------------------------------------------------------------------------------------------------
# References


def inject_reference(prev: Tensor, row_idx: Tensor, row_w: Tensor, col_idx: Tensor, col_w: Tensor, noise: Tensor,
                     amp: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """The kernels' contract (``_pyramid_inject_*``), in PyTorch: ``up`` from the tap tables, ``g_in`` from the
    unrounded ``up``."""
    acc = row_w.dtype
    up = _taps(prev, row_idx, row_w, col_idx, col_w)
    Ho, Wo = up.shape[-2:]
    a = amp.to(acc).view(-1, 1, 1, 1)
    n = noise.to(acc)
    if n.shape[-2:] == (Ho, Wo):
        g_in = F.pad(up + a * n, (pad,) * 4)
    else:
        g_in = F.pad(up, (pad,) * 4) + a * n
    return up.to(prev.dtype), g_in.to(prev.dtype)


def _taps(x: Tensor, row_idx: Tensor, row_w: Tensor, col_idx: Tensor, col_w: Tensor) -> Tensor:
    """``taps_reference`` kept in opmath (no rounding), with empty tables giving zeros."""
    acc = row_w.dtype
    B, C = x.shape[:2]
    if row_idx.shape[1] == 0 or col_idx.shape[1] == 0:
        return x.new_zeros(B, C, row_idx.shape[0], col_idx.shape[0], dtype=acc)
    xr = (x.to(acc)[:, :, row_idx, :] * row_w[:, :, None]).sum(3)
    return (xr[:, :, :, col_idx] * col_w).sum(-1)


def blend_reference(up: Tensor, residual: Tensor, mask: Tensor | None = None) -> Tensor:
    """``up + residual`` or ``up + mask * residual``, in opmath, rounded once."""
    acc = _common.opmath(up.dtype)
    r = residual.to(acc)
    if mask is not None:
        r = mask.to(acc) * r
    return (up.to(acc) + r).to(up.dtype)


def pyramid_inject_reference(prev: Tensor | None, size: Sequence[int], noise: Tensor, amp, *, pad: int = 5,
                             mode: str = "matlab", scale: float | None = None, edge: str = "official",
                             channels: int = 3) -> tuple[Tensor, Tensor]:
    """``pyramid_inject`` in plain PyTorch (dense resize matrices)."""
    B = noise.shape[0]
    acc = _common.opmath(noise.dtype)
    if prev is None:
        up = noise.new_zeros(B, channels, *size, dtype=acc)
    else:
        kernels = _resize.plan(prev.shape[-2:], scale=scale, size=None if scale else tuple(size), mode=mode,
                               edge=edge, crop=tuple(size) if scale else None)
        rows, cols = _resize.dense_matrices(*kernels, prev.device, acc)
        up = torch.einsum("yh,bchw,xw->bcyx", rows, prev.to(acc), cols)
    a = _amp_tensor(amp, B, noise).to(acc).view(-1, 1, 1, 1)
    n = noise.to(acc)
    g_in = F.pad(up + a * n, (pad,) * 4) if n.shape[-2:] == tuple(size) else F.pad(up, (pad,) * 4) + a * n
    return up.to(noise.dtype), g_in.to(noise.dtype)


# ---------------------------------------------------------------------------------------------------
# Op registration


def _fake_inject(prev, row_idx, row_w, col_idx, col_w, noise, amp, pad):
    B, C = prev.shape[:2]
    Ho, Wo = row_idx.shape[0], col_idx.shape[0]
    return prev.new_empty(B, C, Ho, Wo), prev.new_empty(B, C, Ho + 2 * pad, Wo + 2 * pad)


def _fake_blend(up, residual, mask):
    return up.new_empty(up.shape)


# Private kernel ops (csrc/pyramid/, kernels/pyramid.py). Inputs arrive prepared:
# _pyramid_inject_*: prev contiguous [B,C,h,w]; tap tables as imresize's (Th or Tw may be 0: up = 0); noise
#   contiguous [B,Cn,Hn,Wn] in prev's dtype, Cn in {1, C}, (Hn, Wn) = (Ho, Wo) or (Ho+2p, Wo+2p); amp float32
#   (float64 for float64) [B]; pad >= 0. Returns contiguous up [B,C,Ho,Wo] and g_in [B,C,Ho+2p,Wo+2p] in prev's
#   dtype: g_in from the unrounded up (see inject_reference).
# _pyramid_blend_*: up, residual contiguous [B,C,H,W] of one dtype; mask None or contiguous [Bm,1,H,W] in up's
#   dtype with Bm in {1, B}. Returns contiguous up + (mask *) residual in up's dtype, computed in opmath.
NATIVE_SCHEMAS = {
    "_pyramid_inject_{dev}": ("(Tensor prev, Tensor row_idx, Tensor row_w, Tensor col_idx, Tensor col_w, Tensor noise, "
                              "Tensor amp, SymInt pad) -> (Tensor, Tensor)"),
    "_pyramid_blend_{dev}": "(Tensor up, Tensor residual, Tensor? mask) -> Tensor",
}
_common.define_ops(
    "pyramid",
    NATIVE_SCHEMAS,
    fakes={"pyramid_inject": _fake_inject, "pyramid_blend": _fake_blend},
    triton={"pyramid_inject": "pyramid_inject_fwd", "pyramid_blend": "pyramid_blend_fwd"},
)


def _inject_body(prev: Tensor, row_idx: Tensor, row_w: Tensor, col_idx: Tensor, col_w: Tensor, t_row_idx: Tensor,
                 t_row_w: Tensor, t_col_idx: Tensor, t_col_w: Tensor, noise: Tensor, amp: Tensor, pad: int,
                 backend: str) -> tuple[Tensor, Tensor]:
    args = (prev.contiguous(), row_idx, row_w, col_idx, col_w, noise.to(prev.dtype).contiguous(),
            amp.to(row_w.dtype).contiguous(), pad)
    if backend == "reference":
        return inject_reference(*args)
    return _common.kernel("pyramid_inject", backend, prev.device)(*args)


_inject_op = torch.library.custom_op("fsgan_fast::pyramid_inject", _inject_body, mutates_args=())


@_inject_op.register_fake
def _(prev, row_idx, row_w, col_idx, col_w, t_row_idx, t_row_w, t_col_idx, t_col_w, noise, amp, pad, backend):
    return _fake_inject(prev, row_idx, row_w, col_idx, col_w, noise, amp, pad)


def _inject_setup(ctx, inputs, output) -> None:
    prev, *_tables, noise, amp, pad, backend = inputs
    ctx.save_for_backward(noise, amp, *inputs[5:9], *inputs[1:5])
    ctx.pad, ctx.backend, ctx.prev_meta = pad, backend, (prev.shape, prev.dtype)


def _inject_backward(ctx, grad_up, grad_g):
    noise, amp, *tables = ctx.saved_tensors
    transposed, forward = tuple(tables[:4]), tuple(tables[4:])
    p = ctx.pad
    Ho, Wo = grad_up.shape[-2:]
    acc = amp.dtype
    padded_noise = noise.shape[-2:] != (Ho, Wo)
    inner = grad_g[:, :, p:p + Ho, p:p + Wo]
    grad_prev = None
    if ctx.needs_input_grad[0]:
        total = (grad_up.to(acc) + inner.to(acc)).to(ctx.prev_meta[1])
        grad_prev = _resize.resize_tables(total, transposed, forward, ctx.backend)
    at_noise = (grad_g if padded_noise else inner).to(acc)
    grad_noise = grad_amp = None
    if ctx.needs_input_grad[9]:
        gn = amp.view(-1, 1, 1, 1) * at_noise
        grad_noise = (gn.sum(1, keepdim=True) if noise.shape[1] == 1 else gn).to(noise.dtype)
    if ctx.needs_input_grad[10]:
        grad_amp = (noise.to(acc) * at_noise).sum((1, 2, 3))
    return (grad_prev,) + (None,) * 8 + (grad_noise, grad_amp, None, None)


_inject_eager = _common.EagerOp(_inject_op, _inject_body, _inject_setup, _inject_backward)


def _blend_body(up: Tensor, residual: Tensor, mask: Tensor | None, backend: str) -> Tensor:
    args = (up.contiguous(), residual.to(up.dtype).contiguous(), None if mask is None else mask.to(up.dtype).contiguous())
    if backend == "reference":
        return blend_reference(*args).contiguous()
    return _common.kernel("pyramid_blend", backend, up.device)(*args)


_blend_op = torch.library.custom_op("fsgan_fast::pyramid_blend", _blend_body, mutates_args=())


@_blend_op.register_fake
def _(up, residual, mask, backend):
    return _fake_blend(up, residual, mask)


def _blend_setup(ctx, inputs, output) -> None:
    up, residual, mask, backend = inputs
    ctx.save_for_backward(residual, mask)
    ctx.dtypes = (up.dtype, residual.dtype, None if mask is None else mask.dtype)


def _blend_backward(ctx, grad):
    residual, mask = ctx.saved_tensors
    acc = _common.opmath(grad.dtype)
    g = grad.to(acc)
    grad_up = g.to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
    grad_res = grad_mask = None
    if ctx.needs_input_grad[1]:
        grad_res = (g if mask is None else g * mask.to(acc)).to(ctx.dtypes[1])
    if mask is not None and ctx.needs_input_grad[2]:
        gm = (g * residual.to(acc)).sum(1, keepdim=True)
        grad_mask = (gm.sum(0, keepdim=True) if mask.shape[0] == 1 and g.shape[0] != 1 else gm).to(ctx.dtypes[2])
    return grad_up, grad_res, grad_mask, None


_blend_eager = _common.EagerOp(_blend_op, _blend_body, _blend_setup, _blend_backward)


# ---------------------------------------------------------------------------------------------------
# Public API


def _amp_tensor(amp, B: int, like: Tensor) -> Tensor:
    acc = _common.opmath(like.dtype)
    if isinstance(amp, Tensor):
        _common.check_float("amp", amp)
        if amp.dim() == 0:
            return amp.to(device=like.device, dtype=acc).expand(B)
        if amp.shape != (B,):
            raise ValueError(f"amp must be a number, a 0-d tensor or one value per batch row [B={B}], got "
                             f"{list(amp.shape)}")
        _common.check_device("noise", like, amp=amp)
        return amp.to(acc)
    if not isinstance(amp, (int, float)) or not math.isfinite(amp):
        raise TypeError(f"amp must be a finite number or a tensor, got {amp!r}")
    return torch.full((B,), float(amp), dtype=acc, device=like.device)


def _check_inject(prev: Tensor | None, size, noise: Tensor, pad: int, channels: int) -> tuple[int, int, int]:
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) and v >= 1 for v in size)):
        raise ValueError(f"size must be two positive ints (H, W), got {size!r}")
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    _common.check_float("noise", noise)
    _common.check_rank("noise", noise, ("B", "C", "H", "W"))
    B = noise.shape[0]
    if prev is not None:
        _common.check_float("prev", prev)
        _common.check_rank("prev", prev, ("B", "C", "h", "w"))
        if prev.numel() == 0:
            raise ValueError(f"prev must have no empty dimension, got shape {list(prev.shape)}")
        if prev.shape[0] != B:
            raise ValueError(f"prev and noise must have the same batch size, got {prev.shape[0]} and {B}")
        if prev.dtype != noise.dtype:
            raise TypeError(f"prev and noise must share a dtype, got {prev.dtype} and {noise.dtype}")
        _common.check_device("prev", prev, noise=noise)
        channels = prev.shape[1]
    if B == 0:
        raise ValueError("noise must have a batch of at least one")
    H, W = size
    if noise.shape[1] not in (1, channels):
        raise ValueError(f"noise must have 1 or C={channels} channels, got {noise.shape[1]}")
    if tuple(noise.shape[-2:]) not in ((H, W), (H + 2 * pad, W + 2 * pad)):
        raise ValueError(f"noise must be {H}x{W} (the scale's size) or {H + 2 * pad}x{W + 2 * pad} (padded), got "
                         f"{noise.shape[-2]}x{noise.shape[-1]}")
    return B, channels, H


def _empty_tables(size, device, dtype):
    H, W = size
    i, w = torch.empty(H, 0, dtype=torch.int64, device=device), torch.empty(H, 0, dtype=dtype, device=device)
    j, v = torch.empty(W, 0, dtype=torch.int64, device=device), torch.empty(W, 0, dtype=dtype, device=device)
    return (i, w, j, v), (torch.empty(1, 0, dtype=torch.int64, device=device), torch.empty(1, 0, dtype=dtype, device=device),
                          torch.empty(1, 0, dtype=torch.int64, device=device), torch.empty(1, 0, dtype=dtype, device=device))


def pyramid_inject(prev: Tensor | None, size: Sequence[int], noise: Tensor, amp, *, pad: int = 5, mode: str = "matlab",
                   scale: float | None = None, edge: str = "official", channels: int = 3,
                   backend: str | None = None) -> tuple[Tensor, Tensor]:
    """``(up, g_in)`` of one SinGAN scale (see the module docstring). ``channels`` is C when ``prev`` is None."""
    size = tuple(int(v) if isinstance(v, (int, np.integer)) else v for v in size)
    B, C, _ = _check_inject(prev, size, noise, pad, channels)
    amp_t = _amp_tensor(amp, B, noise)
    acc = _common.opmath(noise.dtype)
    if prev is None:
        prev_t = noise.new_zeros(B, C, 1, 1)
        forward, transposed = _empty_tables(size, noise.device, acc)
    else:
        rk, ck = _resize.plan(prev.shape[-2:], scale=scale, size=None if scale is not None else size, mode=mode,
                              edge=edge, crop=size if scale is not None else None)
        t = _resize.tables(prev, rk, ck)
        forward, transposed, prev_t = t.forward, t.backward, prev
    lowered = _common.lowering("pyramid_inject", noise)
    if lowered == "reference":
        return inject_reference(prev_t, *forward, noise, amp_t, pad)
    if lowered is not None:
        return _common.kernel_op("pyramid_inject", lowered, noise.device)(
            prev_t.contiguous(), *forward, noise.contiguous(), amp_t.contiguous(), pad)
    name = backends.resolve("pyramid_inject", noise.device, noise.dtype, backend)
    if prev is not None and prev.requires_grad:
        backends.resolve("imresize", noise.device, noise.dtype, name)  # the backward's resize
    return _inject_eager(prev_t, *forward, *transposed, noise, amp_t, pad, name)


def pyramid_blend(up: Tensor, residual: Tensor, mask: Tensor | None = None, *, backend: str | None = None) -> Tensor:
    """``up + residual``, or ``up + mask * residual`` (see the module docstring)."""
    _common.check_float("up", up)
    _common.check_float("residual", residual)
    _common.check_rank("up", up, ("B", "C", "H", "W"))
    if residual.shape != up.shape:
        raise ValueError(f"residual must have up's shape {list(up.shape)}, got {list(residual.shape)}")
    _common.check_device("up", up, residual=residual)
    if up.numel() == 0:
        raise ValueError(f"up must have no empty dimension, got shape {list(up.shape)}")
    if mask is not None:
        _common.check_float("mask", mask)
        B, _, H, W = up.shape
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, B) or tuple(mask.shape[-2:]) != (H, W):
            raise ValueError(f"mask must have shape [B={B} or 1, 1, {H}, {W}], got {list(mask.shape)}")
        _common.check_device("up", up, mask=mask)
    lowered = _common.lowering("pyramid_blend", up)
    if lowered == "reference":
        return blend_reference(up, residual, mask)
    if lowered is not None:
        m = None if mask is None else mask.to(up.dtype).contiguous()
        return _common.kernel_op("pyramid_blend", lowered, up.device)(up.contiguous(), residual.to(up.dtype).contiguous(), m)
    name = backends.resolve("pyramid_blend", up.device, up.dtype, backend)
    return _blend_eager(up, residual, mask, name)


# ---------------------------------------------------------------------------------------------------
# The pyramid


@dataclasses.dataclass
class Pyramid:
    """SinGAN's schedule for one image.

    ``num_scales`` and ``stop_scale`` follow ``adjust_scales2image`` (computed on the original image);
    ``scale1 = min(max_size / max(H, W), 1)`` is the first resize; ``r`` the final factor
    ``(min_size / min(h, w)) ** (1 / stop_scale)`` on the resized image; ``reals[i]`` is that image resized by
    ``r ** (stop_scale - i)``, coarsest first, ``stop_scale + 1`` of them (the scales that are trained).
    """

    reals: list[Tensor]
    r: float
    scale1: float
    num_scales: int
    stop_scale: int

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [tuple(x.shape[-2:]) for x in self.reals]

    def __len__(self) -> int:
        return len(self.reals)


def pyramid_schedule(height: int, width: int, *, scale_factor: float = 0.75, min_size: int = 25,
                     max_size: int = 250) -> tuple[int, int, float]:
    """``(num_scales, stop_scale, scale1)`` of SinGAN's ``adjust_scales2image`` for an ``height x width`` image."""
    if min(height, width) < min_size:
        raise ValueError(f"the image ({height}x{width}) is smaller than min_size={min_size} on its short side: "
                         "SinGAN's coarsest scale would be larger than the image")
    if not 0 < scale_factor < 1:
        raise ValueError(f"scale_factor must lie in (0, 1), got {scale_factor}")
    num_scales = math.ceil(math.log(min_size / min(height, width), scale_factor)) + 1
    scale2stop = math.ceil(math.log(min(max_size, max(height, width)) / max(height, width), scale_factor))
    stop_scale = num_scales - scale2stop
    scale1 = min(max_size / max(height, width), 1)
    return num_scales, stop_scale, scale1


def build_pyramid(image: Tensor, *, scale_factor: float = 0.75, min_size: int = 25, max_size: int = 250,
                  edge: str = "official", backend: str | None = None) -> Pyramid:
    """SinGAN's multi-scale pyramid of ``image [B,C,H,W]`` (values in [-1, 1]) with its matlab resize, on the
    image's device (see :class:`Pyramid`)."""
    _common.check_float("image", image)
    _common.check_rank("image", image, ("B", "C", "H", "W"))
    H, W = image.shape[-2:]
    num_scales, stop_scale, scale1 = pyramid_schedule(H, W, scale_factor=scale_factor, min_size=min_size,
                                                      max_size=max_size)
    real = _resize.imresize(image, scale1, edge=edge, backend=backend) if scale1 != 1 else image
    if stop_scale < 1:
        raise ValueError(f"the image ({H}x{W}) gives a single scale with min_size={min_size}, max_size={max_size}: "
                         "make min_size smaller or max_size larger")
    r = math.pow(min_size / min(real.shape[-2:]), 1 / stop_scale)
    reals = []
    for i in range(stop_scale + 1):
        s = math.pow(r, stop_scale - i)
        reals.append(real if i == stop_scale else _resize.imresize(real, s, edge=edge, backend=backend))
    return Pyramid(reals=reals, r=r, scale1=scale1, num_scales=num_scales, stop_scale=stop_scale)


__all__ = [
    "pyramid_inject",
    "pyramid_blend",
    "pyramid_inject_reference",
    "inject_reference",
    "blend_reference",
    "build_pyramid",
    "pyramid_schedule",
    "Pyramid",
]
