"""StyleGAN2's fused bias + activation (NVlabs' ``bias_act``, rosinality's ``fused_leaky_relu``).

``bias_act(x[N,C,...], bias[C] | None, *, act="lrelu", alpha=0.2, gain=None) -> y`` (x's shape and dtype)

1. ``v = x + bias`` with ``bias`` broadcast along dim 1 (no bias: ``v = x``).
2. ``act="lrelu"``: ``a = v if v > 0 else alpha * v`` (``torch.nn.functional.leaky_relu``, whose slope at 0 is
   ``alpha``); ``act="linear"``: ``a = v``.
3. ``y = a * gain``; ``gain`` defaults to sqrt(2) for lrelu and 1 for linear, so the defaults are StyleGAN2's
   ``fused_leaky_relu(x, bias, negative_slope=0.2, scale=2**0.5)``.

Computed in float32 (float64 for float64 inputs) and rounded once; float16, bfloat16, float32, float64; any rank
>= 2 (EqualLinear's [N,C], convolutions' [N,C,H,W]); empty dimensions are fine. Any striding is accepted (copied
to contiguous first); ``y`` is contiguous.

Gradients flow to ``x`` and ``bias``: ``grad_x = grad_y * gain * (1 if y > 0 else alpha)`` and ``grad_bias`` the sum of
``grad_x`` over every dimension but 1, accumulated in float32 (NVlabs' ``db = dx.sum(...)``). The backward is its
own op, ``bias_act_backward(grad, y)``, which reads the saved *output* ``y`` and not ``x``: ``y > 0`` exactly when
``x + bias > 0`` because ``gain > 0`` and ``alpha >= 0`` (both checked), and the next layer of a StyleGAN2 block (a
conv) keeps ``y`` alive anyway, so the backward costs no extra memory. ``bias_act_backward`` is linear in ``grad``
and flat in ``y``, so its own gradient is itself: double backward (StyleGAN2's path-length and R1 penalties)
works on every backend.

Errors (ValueError/TypeError naming the argument, before any kernel runs): ``x`` not floating or of rank < 2,
``bias`` not ``[C]``, of another dtype or on another device, an unknown ``act``, ``alpha < 0``, ``gain <= 0`` or a
non-finite ``alpha`` / ``gain``.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast import backends
from fsgan_fast.ops import _common

ACTIVATIONS = ("lrelu", "linear")
DEFAULT_GAIN = {"lrelu": math.sqrt(2.0), "linear": 1.0}


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_bias_act(x: Tensor, bias: Tensor | None, act: str, alpha, gain) -> float:
    """Every check of the contract; returns the resolved gain."""
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be finite and >= 0 (the backward reads the sign of y), got {alpha}")
    if gain is None:
        gain = DEFAULT_GAIN[act]
    if isinstance(gain, bool) or not isinstance(gain, numbers.Real):
        raise TypeError(f"gain must be a number or None, got {type(gain).__name__}")
    if not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"gain must be finite and > 0 (the backward reads the sign of y), got {gain}")
    _common.check_float("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must be at least 2-D [N, C, ...], got {x.dim()}-D shape {list(x.shape)}")
    if bias is not None:
        _common.check_float("bias", bias)
        _common.check_shape("bias", bias, (x.shape[1],), "[C]: one value per channel of x (dim 1)")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias must have x's dtype {x.dtype}, got {bias.dtype}")
        _common.check_device("x", x, bias=bias)
    return float(gain)


# ---------------------------------------------------------------------------------------------------
# References: plain PyTorch, any device and dtype; the oracle of every backend and the export lowering.


def _channel_view(bias: Tensor, ndim: int) -> Tensor:
    return bias.view(1, -1, *([1] * (ndim - 2)))


def bias_act_reference(x: Tensor, bias: Tensor | None = None, *, act: str = "lrelu", alpha: float = 0.2,
                       gain: float | None = None) -> Tensor:
    """Steps 1-3 in opmath, rounded once to x's dtype; autograd through it is the op's gradient."""
    gain = DEFAULT_GAIN[act] if gain is None else gain
    acc = _common.opmath(x.dtype)
    v = x.to(acc)
    if bias is not None:
        v = v + _channel_view(bias.to(acc), x.dim())
    if act == "lrelu":
        v = F.leaky_relu(v, alpha)
    return (v * gain).to(x.dtype)


def bias_act_backward_reference(grad: Tensor, y: Tensor, act: str, alpha: float, gain: float) -> Tensor:
    """``grad_x`` from the forward's output ``y``, in opmath, rounded once to y's dtype."""
    acc = _common.opmath(y.dtype)
    g = grad.to(acc)
    if act == "lrelu":
        # the slope product in float64 first, then rounded to opmath: what the kernels do
        slope = torch.where(y > 0, torch.tensor(gain, dtype=acc), torch.tensor(alpha * gain, dtype=acc))
        return (g * slope.to(y.device)).to(y.dtype)
    return (g * gain).to(y.dtype)


# ---------------------------------------------------------------------------------------------------
# Custom ops


def _fake_forward(x, bias, act, alpha, gain):
    return x.new_empty(x.shape)


def _fake_backward(grad, y, act, alpha, gain):
    return y.new_empty(y.shape)


# Private kernel ops: _<op>_cpu / _<op>_cuda (C++, csrc/bias_act/) and _<op>_triton (kernels/bias_act.py). Inputs
# arrive prepared: x (or grad and y) contiguous, rank >= 2, one dtype; bias None or contiguous [C] in x's dtype; act
# "lrelu" or "linear"; gain > 0, alpha >= 0. Outputs are contiguous in x's (y's) dtype, computed in opmath.
NATIVE_SCHEMAS = {
    "_bias_act_{dev}": "(Tensor x, Tensor? bias, str act, float alpha, float gain) -> Tensor",
    "_bias_act_backward_{dev}": "(Tensor grad, Tensor y, str act, float alpha, float gain) -> Tensor",
}
_common.define_ops(
    "bias_act",
    NATIVE_SCHEMAS,
    fakes={"bias_act": _fake_forward, "bias_act_backward": _fake_backward},
    triton={"bias_act": "bias_act_fwd", "bias_act_backward": "bias_act_bwd"},
)


def _bias_act_body(x: Tensor, bias: Tensor | None, act: str, alpha: float, gain: float, backend: str) -> Tensor:
    x = x.contiguous()
    bias = None if bias is None else bias.contiguous()
    if backend == "reference":
        return bias_act_reference(x, bias, act=act, alpha=alpha, gain=gain).contiguous()
    return _common.kernel("bias_act", backend, x.device)(x, bias, act, alpha, gain)


_bias_act_op = torch.library.custom_op("fsgan_fast::bias_act", _bias_act_body, mutates_args=())


@_bias_act_op.register_fake
def _(x, bias, act, alpha, gain, backend):
    return _fake_forward(x, bias, act, alpha, gain)


def _bias_act_backward_body(grad: Tensor, y: Tensor, act: str, alpha: float, gain: float, backend: str) -> Tensor:
    grad, y = grad.to(y.dtype).contiguous(), y.contiguous()
    if backend == "reference":
        return bias_act_backward_reference(grad, y, act, alpha, gain).contiguous()
    return _common.kernel("bias_act_backward", backend, y.device)(grad, y, act, alpha, gain)


_bias_act_backward_op = torch.library.custom_op(
    "fsgan_fast::bias_act_backward", _bias_act_backward_body, mutates_args=()
)


@_bias_act_backward_op.register_fake
def _(grad, y, act, alpha, gain, backend):
    return _fake_backward(grad, y, act, alpha, gain)


def _setup(ctx, inputs, output) -> None:
    x, bias, act, alpha, gain, backend = inputs
    ctx.save_for_backward(output)  # y, not x: see the module docstring
    ctx.act, ctx.alpha, ctx.gain, ctx.backend = act, alpha, gain, backend
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad_y):
    (y,) = ctx.saved_tensors
    grad_x = _bias_act_backward_eager(grad_y, y, ctx.act, ctx.alpha, ctx.gain, ctx.backend)
    grad_bias = None
    if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
        dims = [d for d in range(grad_x.dim()) if d != 1]
        grad_bias = grad_x.sum(dims, dtype=_common.opmath(grad_x.dtype)).to(ctx.bias_dtype)
    return grad_x, grad_bias, None, None, None, None


def _backward_setup(ctx, inputs, output) -> None:
    grad, y, act, alpha, gain, backend = inputs
    ctx.save_for_backward(y)
    ctx.act, ctx.alpha, ctx.gain, ctx.backend = act, alpha, gain, backend


def _backward_backward(ctx, grad_grad_x):
    # grad_x = grad * slope(y): linear in grad, piecewise constant in y (zero gradient almost everywhere)
    (y,) = ctx.saved_tensors
    return _bias_act_backward_eager(grad_grad_x, y, ctx.act, ctx.alpha, ctx.gain, ctx.backend), None, None, None, \
        None, None


# the public ops as eager callers (see _common.EagerOp), which register the autograd on the custom ops too
_bias_act_backward_eager = _common.EagerOp(_bias_act_backward_op, _bias_act_backward_body, _backward_setup,
                                           _backward_backward)
_bias_act_eager = _common.EagerOp(_bias_act_op, _bias_act_body, _setup, _backward)


# ---------------------------------------------------------------------------------------------------
# Public API


def bias_act(x: Tensor, bias: Tensor | None = None, *, act: str = "lrelu", alpha: float = 0.2,
             gain: float | None = None, backend: str | None = None) -> Tensor:
    """``act(x + bias) * gain`` with ``bias [C]`` along dim 1 (see the module docstring); ``backend`` overrides the
    selection of :mod:`fsgan_fast.backends` for this call."""
    gain = _check_bias_act(x, bias, act, alpha, gain)
    alpha = float(alpha)
    lowered = _common.lowering("bias_act", x)
    if lowered == "reference":
        return bias_act_reference(x, bias, act=act, alpha=alpha, gain=gain)
    if lowered is not None:  # the private kernel op, which traced graphs keep
        b = None if bias is None else bias.contiguous()
        return _common.kernel_op("bias_act", lowered, x.device)(x.contiguous(), b, act, alpha, gain)
    name = backends.resolve("bias_act", x.device, x.dtype, backend)
    backends.resolve("bias_act_backward", x.device, x.dtype, name)
    return _bias_act_eager(x, bias, act, alpha, gain, name)


__all__ = [
    "ACTIVATIONS",
    "DEFAULT_GAIN",
    "bias_act",
    "bias_act_reference",
    "bias_act_backward_reference",
]
