"""OP-GAN's patch grids and FastGAN's part crops: bilinear crop-and-resize, one box per output.

``crop_resize(x[B,C,H,W], boxes[B,4], out=(h,w)) -> [B,C,h,w]`` crops box ``b`` of image ``b``;
``crop_resize_indexed(x, boxes[N,4], image_index[N], out) -> [N,C,h,w]`` crops box ``n`` of image ``image_index[n]``
(roi_align with one bilinear sample per output pixel). ``crop_resize`` is the case ``image_index = arange(B)``;
both run one launch for all boxes, as does :func:`fsgan_fast.ops.patch_grid.patch_grid`, which is this op over the
grid's cells.

1. A box is ``(y0, x0, y1, x1)`` in pixel-edge units: the full image is ``(0, 0, H, W)``, pixel ``r`` spans
   ``[r, r+1)``. ``y1 < y0`` (or ``x1 < x0``) flips the crop.
2. Output pixel ``(i, j)`` samples the image at row ``y = y0 + (i + 0.5) * ((y1 - y0) / h) - 0.5`` (pixel-index
   units: row ``r``'s centre is at ``r``) and column ``x = x0 + (j + 0.5) * ((x1 - x0) / w) - 0.5``, evaluated in that
   order. ``y`` is clamped to ``[0, H-1]`` and ``x`` to ``[0, W-1]``: edge replicate, so a box reaching past the image
   sees its border rows and columns repeated (roi_align instead zeroes samples beyond one pixel outside).
3. Bilinear: ``r0 = floor(y)``, ``r1 = min(r0 + 1, H-1)``, ``fy = y - r0`` (the same for columns) and
   ``out = (1-fy)(1-fx) x[r0,c0] + (1-fy) fx x[r0,c1] + fy (1-fx) x[r1,c0] + fy fx x[r1,c1]``, summed in that order
   in float32 (float64 for float64 inputs) and rounded once. A box of exactly the output size at integer offsets
   inside the image samples pixel centres with weight 1: an exact copy of that window.
4. Gradients flow to ``x`` only: the scatter-add of the same four weights (deterministic on the CPU and in the
   reference; by float32 atomics on CUDA and Triton, float64 for float64, so their last bits vary run to run).
   ``boxes`` get no gradient (they are sampled crop positions; a gradient would be piecewise and would need the
   image's local slope, which no model here asks for), nor does ``image_index``.

dtypes: ``x`` float16, bfloat16, float32 or float64 (the output has its dtype); ``boxes`` any floating dtype, used in
float32 (float64 for float64 ``x``); ``image_index`` any integer dtype. ``x`` any layout (read contiguous). N may be 0.

Errors (ValueError/TypeError naming the argument, before any kernel runs): wrong ranks, empty ``x``, ``boxes`` not
``[N,4]`` floating, ``image_index`` not ``[N]`` integer, tensors on different devices, ``out`` not two ints >= 1,
and, when ``check_values`` is on (the default), non-finite boxes or an ``image_index`` outside ``[0, B)``. Those two
checks read values (a host sync on a GPU); callers that build valid boxes themselves (``patch_grid``) skip them.
Without them the kernels never read out of bounds: a non-finite coordinate gives NaN samples and an out-of-range
image index a NaN row (and no gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fsgan_fast import backends
from fsgan_fast.ops import _common

# ---------------------------------------------------------------------------------------------------
# Validation


def _check_out(out) -> tuple[int, int]:
    if (isinstance(out, (tuple, list)) and len(out) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in out)):
        h, w = int(out[0]), int(out[1])
        if h >= 1 and w >= 1:
            return h, w
    raise ValueError(f"out must be two ints >= 1 (h, w), got {out!r}")


def _check_crop_resize(x: Tensor, boxes: Tensor, image_index: Tensor | None, out, check_values: bool
                       ) -> tuple[int, int]:
    """All validation of both public functions; ``image_index=None`` is ``crop_resize`` (one box per image)."""
    _common.check_float("x", x)
    _common.check_rank("x", x, ("B", "C", "H", "W"))
    if x.numel() == 0:
        raise ValueError(f"x must have no empty dimension, got shape {list(x.shape)}")
    _common.check_float("boxes", boxes)
    B = x.shape[0]
    if image_index is None:
        _common.check_shape("boxes", boxes, (B, 4), "one box (y0, x0, y1, x1) per image of x")
    else:
        _common.check_rank("boxes", boxes, ("N", "4"))
        _common.check_shape("boxes", boxes, (boxes.shape[0], 4), "(y0, x0, y1, x1) per box")
        _common.check_int("image_index", image_index)
        _common.check_shape("image_index", image_index, (boxes.shape[0],), "one image of x per box")
        _common.check_device("x", x, image_index=image_index)
    _common.check_device("x", x, boxes=boxes)
    size = _check_out(out)
    if check_values and not torch.compiler.is_compiling():
        if boxes.numel() and not bool(torch.isfinite(boxes).all()):
            raise ValueError(f"boxes must be finite, got {boxes[~torch.isfinite(boxes)][0].item()}")
        if image_index is not None:
            _common.check_index_range("image_index", image_index, B, "B")
    return size


# ---------------------------------------------------------------------------------------------------
# Reference: plain PyTorch, any device, works in float64. The oracle for every backend and the export lowering
# (gathers and elementwise ops only).


def _sample_axis(start: Tensor, stop: Tensor, n_out: int, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per box, the two neighbour indices ``[N, n_out]`` (int64, in ``[0, size)``) and the weight of the second."""
    step = (stop - start) / n_out
    centres = torch.arange(n_out, device=start.device, dtype=start.dtype) + 0.5
    pos = (start[:, None] + centres * step[:, None]) - 0.5
    pos = pos.clamp(0, size - 1)
    low = pos.floor()
    frac = pos - low
    # the second clamp only matters for NaN positions (their index would be garbage): they read pixel 0 and stay NaN
    i0 = low.long().clamp(0, size - 1)
    i1 = (i0 + 1).clamp(max=size - 1)
    return i0, i1, frac


def _plan(boxes: Tensor, image_index: Tensor, out: tuple[int, int], size: tuple[int, int, int], acc: torch.dtype):
    """The four corners of every sample: ``[(flat pixel index [N,h,w], weight [N,h,w,1]), ...]`` in the summation
    order, and the mask of boxes whose image index is valid."""
    B, H, W = size
    h, w = out
    b = boxes.to(acc)
    r0, r1, fy = _sample_axis(b[:, 0], b[:, 2], h, H)
    c0, c1, fx = _sample_axis(b[:, 1], b[:, 3], w, W)
    valid = (image_index >= 0) & (image_index < B)
    base = torch.where(valid, image_index, 0)[:, None, None] * (H * W)
    fy, fx = fy[:, :, None, None], fx[:, None, :, None]
    corners = []
    for rows, wy in ((r0, 1 - fy), (r1, fy)):
        for cols, wx in ((c0, 1 - fx), (c1, fx)):
            corners.append((base + rows[:, :, None] * W + cols[:, None, :], wy * wx))
    return corners, valid


def crop_resize_reference(x: Tensor, boxes: Tensor, out: Sequence[int], image_index: Tensor | None = None) -> Tensor:
    """``crop_resize`` (``image_index=None``) or ``crop_resize_indexed`` in plain PyTorch (see the module docstring).

    Accumulates in float32 (float64 for float64 ``x``) and rounds once; boxes are used in that dtype.
    """
    acc = _common.opmath(x.dtype)
    B, C, H, W = x.shape
    if image_index is None:
        image_index = torch.arange(boxes.shape[0], device=x.device)
    corners, valid = _plan(boxes, image_index.long(), tuple(out), (B, H, W), acc)
    pixels = x.to(acc).permute(0, 2, 3, 1).reshape(B * H * W, C)  # one row per pixel: a gather reads all channels
    total = None
    for index, weight in corners:
        # index_select, not pixels[index]: ATen's advanced indexing is ~200x slower on the CPU for these row gathers
        term = weight * pixels.index_select(0, index.reshape(-1)).view(*index.shape, C)  # [N,h,w,C]
        total = term if total is None else total + term
    total = torch.where(valid[:, None, None, None], total, torch.nan)  # an invalid image index: a NaN row
    return total.permute(0, 3, 1, 2).to(x.dtype)


def crop_resize_backward_reference(grad: Tensor, boxes: Tensor, image_index: Tensor, size: Sequence[int]) -> Tensor:
    """The gradient with respect to ``x [B,C,H,W]`` (``size = (B, H, W)``) of ``crop_resize_indexed`` given the
    output's gradient ``grad [N,C,h,w]``: the scatter-add of the bilinear weights, in opmath, rounded once."""
    acc = _common.opmath(grad.dtype)
    B, H, W = size
    N, C, h, w = grad.shape
    corners, valid = _plan(boxes, image_index.long(), (h, w), (B, H, W), acc)
    g = grad.to(acc).permute(0, 2, 3, 1)  # [N,h,w,C]
    g = torch.where(valid[:, None, None, None], g, 0.0)
    pixels = torch.zeros(B * H * W, C, dtype=acc, device=grad.device)
    for index, weight in corners:
        pixels.index_add_(0, index.reshape(-1), (weight * g).reshape(-1, C))
    return pixels.view(B, H, W, C).permute(0, 3, 1, 2).contiguous().to(grad.dtype)


# ---------------------------------------------------------------------------------------------------
# Custom ops. The body dispatches on a backend name resolved by the public function, so torch.compile and
# torch.export see one opaque op with a fake impl; the backward is itself a custom op (and the forward is its
# backward: the op is linear in x). The fast backends call the kernels directly (_common.kernel), with x contiguous,
# boxes contiguous in x's opmath dtype and image_index contiguous int64; the lowerings call the private ops.


def _fake(x, boxes, image_index, out_h, out_w):
    return x.new_empty(boxes.shape[0], x.shape[1], out_h, out_w)


def _fake_backward(grad, boxes, image_index, batch, height, width):
    return grad.new_empty(batch, grad.shape[1], height, width)


# Private kernel ops (csrc/crop_resize/, kernels/crop_resize.py). Inputs arrive prepared:
# _crop_resize_*: x contiguous [B,C,H,W]; boxes contiguous [N,4] float32 (float64 for float64 x); image_index
#   contiguous int64 [N]; out_h, out_w >= 1. Returns contiguous [N,C,out_h,out_w] in x's dtype.
# _crop_resize_backward_*: grad contiguous [N,C,h,w]; boxes, image_index as above; batch, height, width: x's B, H,
#   W. Returns contiguous grad_x [batch,C,height,width] in grad's dtype, accumulated in opmath.
NATIVE_SCHEMAS = {
    "_crop_resize_{dev}": "(Tensor x, Tensor boxes, Tensor image_index, SymInt out_h, SymInt out_w) -> Tensor",
    "_crop_resize_backward_{dev}": ("(Tensor grad, Tensor boxes, Tensor image_index, SymInt batch, SymInt height, "
                                    "SymInt width) -> Tensor"),
}
# registers both ops with fsgan_fast.backends and defines their private ops, Triton ones from kernels/crop_resize.py
_common.define_ops(
    "crop_resize",
    NATIVE_SCHEMAS,
    fakes={"crop_resize": _fake, "crop_resize_backward": _fake_backward},
    triton={"crop_resize": "crop_resize_fwd", "crop_resize_backward": "crop_resize_bwd"},
)


def _crop_resize_body(x: Tensor, boxes: Tensor, image_index: Tensor, out_h: int, out_w: int, backend: str) -> Tensor:
    x, image_index, boxes = _common.prep(x, image_index, weights=boxes)
    if backend == "reference":
        return crop_resize_reference(x, boxes, (out_h, out_w), image_index).contiguous()
    return _common.kernel("crop_resize", backend, x.device)(x, boxes, image_index, out_h, out_w)


_crop_resize_op = torch.library.custom_op("fsgan_fast::crop_resize", _crop_resize_body, mutates_args=())


@_crop_resize_op.register_fake
def _(x, boxes, image_index, out_h, out_w, backend):
    return _fake(x, boxes, image_index, out_h, out_w)


def _crop_resize_backward_body(grad: Tensor, boxes: Tensor, image_index: Tensor, batch: int, height: int, width: int,
                               backend: str) -> Tensor:
    grad, image_index, boxes = _common.prep(grad, image_index, weights=boxes)
    if backend == "reference":
        return crop_resize_backward_reference(grad, boxes, image_index, (batch, height, width))
    return _common.kernel("crop_resize_backward", backend, grad.device)(grad, boxes, image_index, batch, height, width)


_crop_resize_backward_op = torch.library.custom_op(
    "fsgan_fast::crop_resize_backward", _crop_resize_backward_body, mutates_args=()
)


@_crop_resize_backward_op.register_fake
def _(grad, boxes, image_index, batch, height, width, backend):
    return _fake_backward(grad, boxes, image_index, batch, height, width)


def _setup(ctx, inputs, output) -> None:
    x, boxes, image_index, out_h, out_w, backend = inputs
    ctx.save_for_backward(boxes, image_index)
    ctx.x_size, ctx.backend = (x.shape[0], x.shape[2], x.shape[3]), backend


def _backward(ctx, grad):
    boxes, image_index = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = _crop_resize_backward_eager(grad.contiguous(), boxes, image_index, *ctx.x_size, ctx.backend)
    return grad_x, None, None, None, None, None


def _setup_backward(ctx, inputs, output) -> None:
    grad, boxes, image_index, batch, height, width, backend = inputs
    ctx.save_for_backward(boxes, image_index)
    ctx.out_size, ctx.backend = tuple(grad.shape[-2:]), backend


def _backward_backward(ctx, grad_grad_x):
    # the backward is linear in grad: its adjoint is the forward crop
    boxes, image_index = ctx.saved_tensors
    grad_grad = None
    if ctx.needs_input_grad[0]:
        grad_grad = _crop_resize_eager(grad_grad_x.contiguous(), boxes, image_index, *ctx.out_size, ctx.backend)
    return grad_grad, None, None, None, None, None, None


# the public ops as eager callers (see _common.EagerOp): each registers its autograd on the custom op too
_crop_resize_eager = _common.EagerOp(_crop_resize_op, _crop_resize_body, _setup, _backward)
_crop_resize_backward_eager = _common.EagerOp(_crop_resize_backward_op, _crop_resize_backward_body, _setup_backward,
                                              _backward_backward)


def run(x: Tensor, boxes: Tensor, image_index: Tensor, out: tuple[int, int], backend: str | None) -> Tensor:
    """The validated call (no checks here): the export lowering in force, or the op with the backend selection.
    :func:`fsgan_fast.ops.patch_grid.patch_grid` calls it with boxes it built itself."""
    h, w = out
    lowered = _common.lowering("crop_resize", x)
    if lowered == "reference":
        return crop_resize_reference(x, boxes, (h, w), image_index)
    if lowered is not None:  # the private kernel op itself, which traced graphs keep
        px, pidx, pboxes = _common.prep(x, image_index, weights=boxes)
        return _common.kernel_op("crop_resize", lowered, x.device)(px, pboxes, pidx, h, w)
    name = backends.resolve("crop_resize", x.device, x.dtype, backend)
    backends.resolve("crop_resize_backward", x.device, x.dtype, name)
    return _crop_resize_eager(x, boxes, image_index, h, w, name)


# ---------------------------------------------------------------------------------------------------
# Public API: the only names nn/ and models/ import.


def crop_resize(x: Tensor, boxes: Tensor, out: Sequence[int], *, backend: str | None = None,
                check_values: bool = True) -> Tensor:
    """Crop box ``b`` (``(y0, x0, y1, x1)``, pixel-edge units) of every image ``x[b]`` and resize it bilinearly to
    ``out = (h, w)``: ``[B,C,h,w]`` (see the module docstring). Differentiable with respect to ``x``.
    ``check_values=False`` skips the finiteness check of ``boxes`` (a host sync on a GPU)."""
    size = _check_crop_resize(x, boxes, None, out, check_values)
    image_index = torch.arange(x.shape[0], device=x.device)
    return run(x, boxes, image_index, size, backend)


def crop_resize_indexed(x: Tensor, boxes: Tensor, image_index: Tensor, out: Sequence[int], *,
                        backend: str | None = None, check_values: bool = True) -> Tensor:
    """Crop box ``n`` of image ``x[image_index[n]]`` and resize it bilinearly to ``out = (h, w)``: ``[N,C,h,w]``, in
    one launch (see the module docstring). ``check_values=False`` skips the value checks of ``boxes`` and
    ``image_index`` (host syncs on a GPU)."""
    size = _check_crop_resize(x, boxes, image_index, out, check_values)
    return run(x, boxes, image_index, size, backend)


__all__ = [
    "crop_resize",
    "crop_resize_indexed",
    "crop_resize_reference",
    "crop_resize_backward_reference",
]
