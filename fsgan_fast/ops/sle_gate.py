"""FastGAN's skip-layer excitation: a channel gate computed from a small map, applied to a large one.

``sle_gate(x_low[B,Cl,h,w], x_high[B,Ch,H,W], w1[Ch,Cl,4,4], w2[Ch,Ch,1,1], act) -> y[B,Ch,H,W]``

1. ``pooled = adaptive_avg_pool2d(x_low, 4)`` (PyTorch's bins: rows ``floor(i*h/4) .. ceil((i+1)*h/4)``,
   so any h, w >= 1 works, bins overlapping when h or w is not a multiple of 4).
2. ``hidden = conv4x4_valid(pooled, w1)`` -> [B,Ch] (a [B, Cl*16] x [Cl*16, Ch] product).
3. ``gate = sigmoid(conv1x1(act(hidden), w2))`` -> [B,Ch], with ``act`` Swish (``x*sigmoid(x)``, FastGAN's code)
   or ``"lrelu"`` (LeakyReLU(0.1), the paper's text).
4. ``y = x_high * gate[:, :, None, None]``.

Weights arrive already spectral-normalised (:class:`fsgan_fast.nn.SkipLayerExcitation` owns the norm). Gradients
flow to all four tensors. Backward: ``d x_high = dy * gate``; ``d gate = sum_HW dy * x_high`` (one read of dy and
x_high for both), then back through the small gate MLP to w2, w1 and the pooled map, whose gradient is spread
evenly over each bin of x_low.

dtypes: x_low and x_high share one of float16, bfloat16, float32, float64; w1 and w2 any floating dtype (each
gradient has its tensor's dtype). The gate is computed in float32 (float64 for float64) and ``y`` is rounded once
from ``x_high * gate``. Layouts: contiguous or channels_last, and ``y`` / ``d x_high`` keep x_high's layout (any
other striding is copied to contiguous first).

Errors (ValueError/TypeError, before any kernel runs): wrong rank, batch mismatch, weight shapes that do not fit
the channels, dtype or device mismatch, an unknown ``act``, empty dimensions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast import backends
from fsgan_fast.ops import _common

ACTIVATIONS = ("swish", "lrelu")
LRELU_SLOPE = 0.1  # the paper's LeakyReLU in the gate
POOL = 4  # the gate's adaptive pool and the 4x4 conv that consumes it


# ---------------------------------------------------------------------------------------------------
# Validation


def _check(x_low: Tensor, x_high: Tensor, w1: Tensor, w2: Tensor, act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    _common.check_float("x_low", x_low)
    _common.check_float("x_high", x_high)
    _common.check_float("w1", w1)
    _common.check_float("w2", w2)
    _common.check_rank("x_low", x_low, ("B", "Cl", "h", "w"))
    _common.check_rank("x_high", x_high, ("B", "Ch", "H", "W"))
    B, Cl, h, w = x_low.shape
    Bh, Ch, H, W = x_high.shape
    if Bh != B:
        raise ValueError(f"x_low and x_high must have the same batch size, got {B} and {Bh}")
    for name, t in (("x_low", x_low), ("x_high", x_high)):
        if t.numel() == 0:
            raise ValueError(f"{name} must have no empty dimension, got shape {list(t.shape)}")
    if x_high.dtype != x_low.dtype:
        raise TypeError(f"x_low and x_high must share a dtype, got {x_low.dtype} and {x_high.dtype}")
    _common.check_shape("w1", w1, (Ch, Cl, POOL, POOL), "[Ch, Cl, 4, 4]: the gate's 4x4 conv from x_low's channels")
    _common.check_shape("w2", w2, (Ch, Ch, 1, 1), "[Ch, Ch, 1, 1]: the gate's 1x1 conv")
    _common.check_device("x_high", x_high, x_low=x_low, w1=w1, w2=w2)


# ---------------------------------------------------------------------------------------------------
# Reference: plain PyTorch, any device and dtype; the oracle of every backend and the ONNX / torch.export lowering.


def activation_reference(hidden: Tensor, act: str) -> Tensor:
    return hidden * torch.sigmoid(hidden) if act == "swish" else F.leaky_relu(hidden, LRELU_SLOPE)


def sle_gate_value_reference(x_low: Tensor, w1: Tensor, w2: Tensor, act: str = "swish") -> Tensor:
    """The gate ``[B, Ch, 1, 1]`` of steps 1-3, in x_low's dtype."""
    pooled = F.adaptive_avg_pool2d(x_low, POOL)
    hidden = F.conv2d(pooled, w1.to(x_low.dtype))
    return torch.sigmoid(F.conv2d(activation_reference(hidden, act), w2.to(x_low.dtype)))


def sle_gate_reference(x_low: Tensor, x_high: Tensor, w1: Tensor, w2: Tensor, act: str = "swish") -> Tensor:
    """Steps 1-4 in plain PyTorch; autograd through it is the op's gradient."""
    return x_high * sle_gate_value_reference(x_low, w1, w2, act)


def pool_matrix(n: int, dtype: torch.dtype, device) -> Tensor:
    """[4, n] weights of adaptive average pooling along one axis: row i averages ``floor(i*n/4) .. ceil((i+1)*n/4)``."""
    m = torch.zeros(POOL, n, dtype=dtype, device=device)
    for i in range(POOL):
        lo, hi = (i * n) // POOL, -((-(i + 1) * n) // POOL)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def _act_grad(hidden: Tensor, act: str) -> Tensor:
    if act == "swish":
        s = torch.sigmoid(hidden)
        return s * (1 + hidden * (1 - s))
    return torch.where(hidden > 0, torch.ones_like(hidden), torch.full_like(hidden, LRELU_SLOPE))


def sle_gate_forward_reference(
    x_low: Tensor, x_high: Tensor, w1: Tensor, w2: Tensor, act: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What the private forward ops return: ``(y, gate [B,Ch], pooled [B,Cl*16], hidden [B,Ch])``, the last three
    in opmath (the backward's saved state; hidden is before the activation)."""
    acc = _common.opmath(x_high.dtype)
    B, Ch = x_high.shape[:2]
    pooled = F.adaptive_avg_pool2d(x_low.to(acc), POOL).reshape(B, -1)
    hidden = pooled @ w1.to(acc).reshape(Ch, -1).t()
    gate = torch.sigmoid(activation_reference(hidden, act) @ w2.to(acc).reshape(Ch, Ch).t())
    y = (x_high.to(acc) * gate.view(B, Ch, 1, 1)).to(x_high.dtype)
    return y, gate, pooled, hidden


def sle_gate_backward_reference(
    grad: Tensor, x_low: Tensor, x_high: Tensor, w1: Tensor, w2: Tensor,
    gate: Tensor, pooled: Tensor, hidden: Tensor, act: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(grad_x_low, grad_x_high, grad_w1, grad_w2)``: the first two in the inputs' dtype, the weights' in opmath."""
    acc = gate.dtype
    B, Ch, H, W = x_high.shape
    Cl, h, w = x_low.shape[1:]
    g = gate.view(B, Ch, 1, 1)
    grad_x_high = (grad.to(acc) * g).to(x_high.dtype)
    d_gate = (grad.to(acc) * x_high.to(acc)).sum(dim=(2, 3))  # [B,Ch]
    d_pre = d_gate * gate * (1 - gate)  # through the sigmoid
    a = activation_reference(hidden, act)
    w2m = w2.to(acc).reshape(Ch, Ch)
    grad_w2 = d_pre.t() @ a
    d_hidden = (d_pre @ w2m) * _act_grad(hidden, act)
    grad_w1 = (d_hidden.t() @ pooled).reshape(Ch, Cl, POOL, POOL)
    d_pooled = (d_hidden @ w1.to(acc).reshape(Ch, -1)).reshape(B, Cl, POOL, POOL)
    # adaptive average pooling is separable and linear, pooled = P_h x P_w^T: its adjoint spreads each bin's
    # gradient evenly over the bin (summing where bins overlap)
    ph, pw = pool_matrix(h, acc, x_low.device), pool_matrix(w, acc, x_low.device)
    grad_x_low = ph.t() @ d_pooled @ pw
    return grad_x_low.to(x_low.dtype), grad_x_high, grad_w1.reshape(w1.shape), grad_w2.reshape(w2.shape)


# ---------------------------------------------------------------------------------------------------
# Custom ops: the public op returns the gate's small intermediates beside y, so the backward op (itself a custom op)
# never re-reads x_low for the pool.


def _fake_forward(x_low, x_high, w1, w2, act):
    B, Ch = x_high.shape[:2]
    acc = _common.opmath(x_high.dtype)
    small = dict(dtype=acc, device=x_high.device)
    y = torch.empty_like(x_high, memory_format=_layout(x_high))
    return y, x_high.new_empty(B, Ch, **small), x_high.new_empty(B, x_low.shape[1] * POOL * POOL, **small), \
        x_high.new_empty(B, Ch, **small)


def _fake_backward(grad, x_low, x_high, w1, w2, gate, pooled, hidden, act):
    return (torch.empty_like(x_low, memory_format=_layout(x_low)), torch.empty_like(x_high, memory_format=_layout(x_high)),
            w1.new_empty(w1.shape, dtype=gate.dtype), w2.new_empty(w2.shape, dtype=gate.dtype))


# Private kernel ops: _<op>_cpu / _<op>_cuda (C++, csrc/sle_gate/) and _<op>_triton (kernels/sle_gate.py). Inputs
# arrive prepared (_prep): x_low, x_high (and grad in x_high's layout) contiguous or channels_last, w1/w2
# contiguous in opmath; gate/pooled/hidden are opmath [B,Ch] / [B,Cl*16] / [B,Ch]. The forward's y and the
# backward's grad_x_high / grad_x_low take their input's layout; grad_w1/grad_w2 come back in opmath.
NATIVE_SCHEMAS = {
    "_sle_gate_{dev}": "(Tensor x_low, Tensor x_high, Tensor w1, Tensor w2, str act) -> (Tensor, Tensor, Tensor, Tensor)",
    "_sle_gate_backward_{dev}": (
        "(Tensor grad, Tensor x_low, Tensor x_high, Tensor w1, Tensor w2, Tensor gate, Tensor pooled, Tensor hidden, "
        "str act) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
}
_common.define_ops(
    "sle_gate",
    NATIVE_SCHEMAS,
    fakes={"sle_gate": _fake_forward, "sle_gate_backward": _fake_backward},
    triton={"sle_gate": "sle_gate_fwd", "sle_gate_backward": "sle_gate_bwd"},
)


def _layout(t: Tensor) -> torch.memory_format:
    """channels_last if ``t`` is laid out so (and not also plainly contiguous), else contiguous."""
    if t.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _prep(x_low: Tensor, x_high: Tensor, w1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    acc = _common.opmath(x_high.dtype)
    return (x_low.contiguous(memory_format=_layout(x_low)), x_high.contiguous(memory_format=_layout(x_high)),
            w1.to(acc).contiguous(), w2.to(acc).contiguous())


def _sle_gate_body(
    x_low: Tensor, x_high: Tensor, w1: Tensor, w2: Tensor, act: str, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    args = _prep(x_low, x_high, w1, w2)
    if backend == "reference":
        y, *state = sle_gate_forward_reference(*args, act)
        return (y.contiguous(memory_format=_layout(args[1])), *state)
    return _common.kernel("sle_gate", backend, x_high.device)(*args, act)


_sle_gate_op = torch.library.custom_op("fsgan_fast::sle_gate", _sle_gate_body, mutates_args=())


@_sle_gate_op.register_fake
def _(x_low, x_high, w1, w2, act, backend):
    return _fake_forward(x_low, x_high, w1, w2, act)


def _sle_gate_backward_body(
    grad: Tensor, x_low: Tensor, x_high: Tensor, w1: Tensor, w2: Tensor,
    gate: Tensor, pooled: Tensor, hidden: Tensor, act: str, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x_low_p, x_high_p, w1_p, w2_p = _prep(x_low, x_high, w1, w2)
    grad = grad.to(x_high.dtype).contiguous(memory_format=_layout(x_high_p))
    state = (gate.contiguous(), pooled.contiguous(), hidden.contiguous())
    if backend == "reference":
        out = sle_gate_backward_reference(grad, x_low_p, x_high_p, w1_p, w2_p, *state, act)
        gl, gh = out[0].contiguous(memory_format=_layout(x_low_p)), out[1].contiguous(memory_format=_layout(x_high_p))
        out = (gl, gh, out[2], out[3])
    else:
        out = _common.kernel("sle_gate_backward", backend, x_high.device)(grad, x_low_p, x_high_p, w1_p, w2_p, *state, act)
    grad_x_low, grad_x_high, grad_w1, grad_w2 = out
    return grad_x_low, grad_x_high, grad_w1.to(w1.dtype), grad_w2.to(w2.dtype)


_sle_gate_backward_op = torch.library.custom_op(
    "fsgan_fast::sle_gate_backward", _sle_gate_backward_body, mutates_args=()
)


@_sle_gate_backward_op.register_fake
def _(grad, x_low, x_high, w1, w2, gate, pooled, hidden, act, backend):
    gl, gh, g1, g2 = _fake_backward(grad, x_low, x_high, w1, w2, gate, pooled, hidden, act)
    return gl, gh, g1.to(w1.dtype), g2.to(w2.dtype)


def _setup(ctx, inputs, output) -> None:
    x_low, x_high, w1, w2, act, backend = inputs
    _, gate, pooled, hidden = output
    ctx.save_for_backward(x_low, x_high, w1, w2, gate, pooled, hidden)
    ctx.act, ctx.backend = act, backend


def _backward(ctx, grad_y, *_grad_state):
    x_low, x_high, w1, w2, gate, pooled, hidden = ctx.saved_tensors
    grads = _sle_gate_backward_eager(grad_y, x_low, x_high, w1, w2, gate, pooled, hidden, ctx.act, ctx.backend)
    return (*grads, None, None)


# the public op as an eager caller (see _common.EagerOp), which registers the autograd on the custom op too
_sle_gate_eager = _common.EagerOp(_sle_gate_op, _sle_gate_body, _setup, _backward)
_sle_gate_backward_eager = _common.EagerOp(_sle_gate_backward_op, _sle_gate_backward_body)


# ---------------------------------------------------------------------------------------------------
# Public API


def sle_gate(
    x_low: Tensor, x_high: Tensor, w1: Tensor, w2: Tensor, act: str = "swish", *, backend: str | None = None
) -> Tensor:
    """``x_high`` times the channel gate computed from ``x_low`` (see the module docstring); ``backend`` overrides
    the selection of :mod:`fsgan_fast.backends` for this call."""
    _check(x_low, x_high, w1, w2, act)
    lowered = _common.lowering("sle_gate", x_high)
    if lowered == "reference":
        return sle_gate_reference(x_low, x_high, w1, w2, act)
    if lowered is not None:  # the private kernel op, which traced graphs keep
        return _common.kernel_op("sle_gate", lowered, x_high.device)(*_prep(x_low, x_high, w1, w2), act)[0]
    name = backends.resolve("sle_gate", x_high.device, x_high.dtype, backend)
    backends.resolve("sle_gate_backward", x_high.device, x_high.dtype, name)
    return _sle_gate_eager(x_low, x_high, w1, w2, act, name)[0]


__all__ = [
    "ACTIVATIONS",
    "sle_gate",
    "sle_gate_reference",
    "sle_gate_value_reference",
    "sle_gate_forward_reference",
    "sle_gate_backward_reference",
    "activation_reference",
    "pool_matrix",
]
