"""LoFGAN's local fusion: local selection, top-1 cosine matching and local replacement.

``lfm_fuse(feats[B,K,C,H,W], base[B], positions[B,n], alpha[B,K]) -> (fused[B,C,H,W], ref_idx[B,K-1,n])``

1. The base map of batch row b is ``f = feats[b, base[b]]``; the K-1 references are the other shots in
   shot order (reference r is shot ``r + (r >= base[b])``).
2. For every selected position ``p = positions[b, t]`` and every reference ``x_r``,
   ``ref_idx[b, r, t] = argmax_j cos(f[:, p], x_r[:, j])`` over all P = H*W positions j. Cosine of the
   C-channel vectors, each divided by ``max(||v||, 1e-8)``. Ties go to the smallest j.
3. ``fused = f`` except at the selected positions, where
   ``fused[:, p] = alpha[b, base] * f[:, p] + sum_r alpha[b, shot(r)] * x_r[:, ref_idx[b, r, t]]``
   on the raw (unnormalised) features. alpha is used as given (LoFGAN normalises it when sampling).
4. Gradients flow to ``feats`` (base map everywhere, references at their matched positions, summed
   where several selected positions match the same j) and to ``alpha``; none through the argmax,
   as in the paper's code. ``ref_idx`` is an integer output with no gradient.

``lfm_apply(x[B,K,C',H,W], base, positions, ref_idx, alpha)`` performs step 3 with recorded matches on
another tensor over the same grid (LoFGAN's local reconstruction target); ``lfm_similarity`` returns
the cosine maps ``[B,K-1,n,P]`` of step 2 for visualisation.

dtypes: feats/x float16, bfloat16, float32 or float64 (fused has the same dtype; accumulation is in
float32, float64 for float64); alpha any floating dtype (its gradient has alpha's dtype); base,
positions, ref_idx any integer dtype (int64 inside). n may be 0..P.

Errors (ValueError/TypeError, raised before any kernel runs): wrong rank, K < 2, shape, dtype or
device mismatch, and, when ``check_indices`` is on, base/positions/ref_idx out of range or positions
repeated within a row. Index values live on the tensors' device, so checking them costs a host sync
on a GPU: ``LocalFusion`` samples valid indices itself and passes ``check_indices=False``; the
kernels never read out of bounds even then (an out-of-range index selects nothing). Positions repeated
within a row are outside the contract: ``lfm_fuse`` still gives the reference's values, but with
``lfm_apply`` and different matches for the copies, which copy's value is kept depends on the backend
(and, on the CUDA kernel, on thread timing).

Non-finite values follow the reference: a NaN cosine wins the argmax (the first one), and an inf or
NaN in the incoming gradient reaches only the elements the reference's scatter-add sends it to.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fsgan_fast import backends
from fsgan_fast.ops import _common

EPS = 1e-8


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_common(
    x_name: str, x: Tensor, base: Tensor, positions: Tensor, alpha: Tensor | None, check_indices: bool
) -> tuple[int, int, int, int, int, int]:
    _common.check_float(x_name, x)
    _common.check_rank(x_name, x, ("B", "K", "C", "H", "W"))
    B, K, C, H, W = x.shape
    if K < 2:
        raise ValueError(f"{x_name} needs K >= 2 shots (one base and at least one reference), got K={K}")
    if C < 1 or H < 1 or W < 1:
        raise ValueError(f"{x_name} must have C, H, W >= 1, got shape {list(x.shape)}")
    _common.check_int("base", base)
    _common.check_int("positions", positions)
    _common.check_shape("base", base, (B,), "one base shot index per batch row")
    if positions.dim() != 2 or positions.shape[0] != B:
        raise ValueError(f"positions must have shape [B={B}, n], got {list(positions.shape)}")
    P, n = H * W, positions.shape[1]
    if n > P:
        raise ValueError(f"positions selects n={n} positions but the grid has only H*W={P}")
    _common.check_device(x_name, x, base=base, positions=positions)
    if alpha is not None:
        _common.check_float("alpha", alpha)
        _common.check_shape("alpha", alpha, (B, K), "one weight per batch row and shot")
        _common.check_device(x_name, x, alpha=alpha)
    if check_indices:
        _common.check_index_range("base", base, K, "K")
        _common.check_index_range("positions", positions, P, "H*W")
        _common.check_distinct_rows("positions", positions)
    return B, K, C, H, W, n


def _check_lfm_fuse(feats: Tensor, base: Tensor, positions: Tensor, alpha: Tensor, check_indices: bool = True) -> None:
    _check_common("feats", feats, base, positions, alpha, check_indices)


def _check_lfm_apply(
    x: Tensor, base: Tensor, positions: Tensor, ref_idx: Tensor, alpha: Tensor, check_indices: bool = True
) -> None:
    B, K, C, H, W, n = _check_common("x", x, base, positions, alpha, check_indices)
    _common.check_int("ref_idx", ref_idx)
    _common.check_shape("ref_idx", ref_idx, (B, K - 1, n), "one match per batch row, reference and selected position")
    _common.check_device("x", x, ref_idx=ref_idx)
    if check_indices:
        _common.check_index_range("ref_idx", ref_idx, H * W, "H*W")


# ---------------------------------------------------------------------------------------------------
# Reference: plain PyTorch, any device, works in float64. The oracle for every backend and the lowering
# used by ONNX / torch.export.


def reference_shot_index(base: Tensor, K: int) -> Tensor:
    """[B, K-1] shot index of each reference: the shots other than ``base``, in order."""
    r = torch.arange(K - 1, device=base.device).unsqueeze(0)
    return r + (r >= base.unsqueeze(1)).to(r.dtype)


def _split_base_refs(x: Tensor, base: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x [B,K,C,P] -> (base map [B,C,P], references [B,K-1,C,P], reference shot index [B,K-1])."""
    B, K, C, P = x.shape
    shots = reference_shot_index(base, K)
    f = x.gather(1, base.view(B, 1, 1, 1).expand(B, 1, C, P)).squeeze(1)
    refs = x.gather(1, shots.view(B, K - 1, 1, 1).expand(B, K - 1, C, P))
    return f, refs, shots


def lfm_similarity_reference(feats: Tensor, base: Tensor, positions: Tensor) -> Tensor:
    """Cosine similarity [B, K-1, n, P] of each selected base vector with every reference position."""
    B, K, C, H, W = feats.shape
    x = feats.flatten(3)
    x = x / x.norm(dim=2, keepdim=True).clamp_min(EPS)
    f, refs, _ = _split_base_refs(x, base.long())
    n = positions.shape[1]
    f_sel = f.gather(2, positions.long().view(B, 1, n).expand(B, C, n))
    # a broadcast batched matmul rather than einsum: exports as ONNX MatMul, which every runtime takes
    return torch.matmul(f_sel.transpose(1, 2).unsqueeze(1), refs)


def lfm_apply_reference(x: Tensor, base: Tensor, positions: Tensor, ref_idx: Tensor, alpha: Tensor) -> Tensor:
    """Step 3 with given matches: replace the selected base positions by the alpha-weighted fusion."""
    B, K, C, H, W = x.shape
    base, positions, ref_idx = base.long(), positions.long(), ref_idx.long()
    n = positions.shape[1]
    flat = x.flatten(3)
    f, refs, shots = _split_base_refs(flat, base)
    w = alpha.to(x.dtype)
    w_base = w.gather(1, base.view(B, 1))  # [B,1]
    w_refs = w.gather(1, shots)  # [B,K-1]
    f_sel = f.gather(2, positions.view(B, 1, n).expand(B, C, n))
    matched = refs.gather(3, ref_idx.view(B, K - 1, 1, n).expand(B, K - 1, C, n))  # [B,K-1,C,n]
    fused_sel = w_base.view(B, 1, 1) * f_sel + (w_refs.view(B, K - 1, 1, 1) * matched).sum(1)
    out = f.scatter(2, positions.view(B, 1, n).expand(B, C, n), fused_sel)
    return out.view(B, C, H, W)


def lfm_fuse_reference(feats: Tensor, base: Tensor, positions: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """Steps 1-3 in plain PyTorch; autograd through it gives exactly the gradient of step 4."""
    # detach rather than no_grad: same effect, and torch.export keeps a flat graph (no grad-mode region)
    ref_idx = lfm_similarity_reference(feats.detach(), base, positions).argmax(dim=-1)
    return lfm_apply_reference(feats, base, positions, ref_idx, alpha), ref_idx


def lfm_apply_backward_reference(
    grad: Tensor, x: Tensor, base: Tensor, positions: Tensor, ref_idx: Tensor, alpha: Tensor
) -> tuple[Tensor, Tensor]:
    """(grad_x [B,K,C,H,W] in x's dtype, grad_alpha [B,K] in alpha's dtype) of :func:`lfm_apply_reference`."""
    B, K, C, H, W = x.shape
    P, n = H * W, positions.shape[1]
    base, positions, ref_idx = base.long(), positions.long(), ref_idx.long()
    acc = _common.opmath(x.dtype)
    g = grad.to(acc).reshape(B, C, P)
    xf = x.to(acc).reshape(B, K, C, P)
    a = alpha.to(acc)
    shots = reference_shot_index(base, K)
    a_base = a.gather(1, base.view(B, 1))
    a_refs = a.gather(1, shots)
    pos_c = positions.view(B, 1, n).expand(B, C, n)
    g_sel = g.gather(2, pos_c)  # [B,C,n]
    # base map: gradient passes unchanged except at the selected positions, where it is scaled by alpha_base
    g_base = g.scatter(2, pos_c, g_sel * a_base.view(B, 1, 1))
    # references: every selected position sends alpha_r * g to its matched position (summed on repeats)
    g_refs = torch.zeros(B, K - 1, C, P, dtype=acc, device=x.device)
    idx = ref_idx.view(B, K - 1, 1, n).expand(B, K - 1, C, n)
    g_refs.scatter_add_(3, idx, (a_refs.view(B, K - 1, 1, 1) * g_sel.unsqueeze(1)))
    grad_x = torch.empty(B, K, C, P, dtype=acc, device=x.device)
    grad_x.scatter_(1, base.view(B, 1, 1, 1).expand(B, 1, C, P), g_base.unsqueeze(1))
    grad_x.scatter_(1, shots.view(B, K - 1, 1, 1).expand(B, K - 1, C, P), g_refs)
    # alpha: inner product of each contributing vector with the gradient at the selected position
    f_sel = xf.gather(1, base.view(B, 1, 1, 1).expand(B, 1, C, P)).squeeze(1).gather(2, pos_c)
    refs = xf.gather(1, shots.view(B, K - 1, 1, 1).expand(B, K - 1, C, P))
    matched = refs.gather(3, idx)
    ga_base = (f_sel * g_sel).sum(dim=(1, 2))
    ga_refs = (matched * g_sel.unsqueeze(1)).sum(dim=(2, 3))
    grad_alpha = torch.empty(B, K, dtype=acc, device=x.device)
    grad_alpha.scatter_(1, base.view(B, 1), ga_base.view(B, 1))
    grad_alpha.scatter_(1, shots, ga_refs)
    return grad_x.view(B, K, C, H, W).to(x.dtype), grad_alpha.to(alpha.dtype)


# ---------------------------------------------------------------------------------------------------
# Custom ops. Each body dispatches on a backend name resolved by the public function, so torch.compile and
# torch.export see one opaque op with a fake impl; the backward is itself a custom op. The fast backends call
# the kernels directly (_common.kernel: the C++ op or the Triton launcher), which take contiguous int64 indices
# and alpha in the opmath dtype; the lowerings call the private ops (_common.kernel_op), which traces keep.


def _fake_fuse(feats, base, positions, alpha):
    B, K, C, H, W = feats.shape
    return feats.new_empty(B, C, H, W), feats.new_empty(B, K - 1, positions.shape[1], dtype=torch.int64)


def _fake_apply(x, base, positions, ref_idx, alpha):
    B, K, C, H, W = x.shape
    return x.new_empty(B, C, H, W)


def _fake_apply_backward(grad, x, base, positions, ref_idx, alpha):
    return x.new_empty(x.shape), alpha.new_empty(alpha.shape)


# Private kernel ops, one schema per op written once, here: _<op>_cpu / _<op>_cuda (C++, csrc/lfm/) and
# _<op>_triton (kernels/lfm.py) take the same arguments. csrc/ops.cpp repeats the C++ ones for the CMake build
# only, and tests/test_cmake_build.py checks that both agree.
NATIVE_SCHEMAS = {
    "_lfm_fuse_{dev}": "(Tensor feats, Tensor base, Tensor positions, Tensor alpha) -> (Tensor, Tensor)",
    "_lfm_apply_{dev}": "(Tensor x, Tensor base, Tensor positions, Tensor ref_idx, Tensor alpha) -> Tensor",
    "_lfm_apply_backward_{dev}": (
        "(Tensor grad, Tensor x, Tensor base, Tensor positions, Tensor ref_idx, Tensor alpha) -> (Tensor, Tensor)"
    ),
}
# registers the three ops with fsgan_fast.backends and defines their private ops, Triton ones from kernels/lfm.py
_common.define_ops(
    "lfm",
    NATIVE_SCHEMAS,
    fakes={"lfm_fuse": _fake_fuse, "lfm_apply": _fake_apply, "lfm_apply_backward": _fake_apply_backward},
    triton={"lfm_fuse": "lfm_fuse_fwd", "lfm_apply": "lfm_apply_fwd", "lfm_apply_backward": "lfm_apply_bwd"},
)


def _lfm_fuse_body(feats: Tensor, base: Tensor, positions: Tensor, alpha: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "reference":
        fused, ref_idx = lfm_fuse_reference(feats, base, positions, alpha)
        return fused.contiguous(), ref_idx
    return _common.kernel("lfm_fuse", backend, feats.device)(*_common.prep(feats, base, positions, weights=alpha))


_lfm_fuse_op = torch.library.custom_op("fsgan_fast::lfm_fuse", _lfm_fuse_body, mutates_args=())


@_lfm_fuse_op.register_fake
def _(feats, base, positions, alpha, backend):
    return _fake_fuse(feats, base, positions, alpha)


def _lfm_apply_body(x: Tensor, base: Tensor, positions: Tensor, ref_idx: Tensor, alpha: Tensor, backend: str) -> Tensor:
    if backend == "reference":
        return lfm_apply_reference(x, base, positions, ref_idx, alpha).contiguous()
    return _common.kernel("lfm_apply", backend, x.device)(*_common.prep(x, base, positions, ref_idx, weights=alpha))


_lfm_apply_op = torch.library.custom_op("fsgan_fast::lfm_apply", _lfm_apply_body, mutates_args=())


@_lfm_apply_op.register_fake
def _(x, base, positions, ref_idx, alpha, backend):
    return _fake_apply(x, base, positions, ref_idx, alpha)


def _lfm_apply_backward_body(
    grad: Tensor, x: Tensor, base: Tensor, positions: Tensor, ref_idx: Tensor, alpha: Tensor, backend: str
) -> tuple[Tensor, Tensor]:
    if backend == "reference":
        return lfm_apply_backward_reference(grad, x, base, positions, ref_idx, alpha)
    kernel = _common.kernel("lfm_apply_backward", backend, x.device)
    args = _common.prep(x, base, positions, ref_idx, weights=alpha)
    grad_x, grad_alpha = kernel(grad.to(x.dtype).contiguous(), *args)
    return grad_x, grad_alpha.to(alpha.dtype)


_lfm_apply_backward_op = torch.library.custom_op(
    "fsgan_fast::lfm_apply_backward", _lfm_apply_backward_body, mutates_args=()
)


@_lfm_apply_backward_op.register_fake
def _(grad, x, base, positions, ref_idx, alpha, backend):
    return _fake_apply_backward(grad, x, base, positions, ref_idx, alpha)


def _setup_fuse(ctx, inputs, output) -> None:
    feats, base, positions, alpha, backend = inputs
    _, ref_idx = output
    ctx.save_for_backward(feats, base, positions, ref_idx, alpha)
    ctx.backend = backend


def _backward_fuse(ctx, grad_fused, _grad_ref_idx):
    feats, base, positions, ref_idx, alpha = ctx.saved_tensors
    grad_x, grad_alpha = _lfm_apply_backward_eager(grad_fused, feats, base, positions, ref_idx, alpha, ctx.backend)
    return grad_x, None, None, grad_alpha, None


def _setup_apply(ctx, inputs, output) -> None:
    x, base, positions, ref_idx, alpha, backend = inputs
    ctx.save_for_backward(x, base, positions, ref_idx, alpha)
    ctx.backend = backend


def _backward_apply(ctx, grad_fused):
    x, base, positions, ref_idx, alpha = ctx.saved_tensors
    grad_x, grad_alpha = _lfm_apply_backward_eager(grad_fused, x, base, positions, ref_idx, alpha, ctx.backend)
    return grad_x, None, None, None, grad_alpha, None


# the public ops as eager callers (see _common.EagerOp): each registers its autograd on the custom op too
_lfm_fuse_op_eager = _common.EagerOp(_lfm_fuse_op, _lfm_fuse_body, _setup_fuse, _backward_fuse)
_lfm_apply_op_eager = _common.EagerOp(_lfm_apply_op, _lfm_apply_body, _setup_apply, _backward_apply)
_lfm_apply_backward_eager = _common.EagerOp(_lfm_apply_backward_op, _lfm_apply_backward_body)


# ---------------------------------------------------------------------------------------------------
# Public API: the only names nn/ and models/ import.


def lfm_fuse(
    feats: Tensor, base: Tensor, positions: Tensor, alpha: Tensor, *, backend: str | None = None, check_indices: bool = True
) -> tuple[Tensor, Tensor]:
    """Fuse each batch row's base map with its references (see the module docstring).

    Returns ``(fused [B,C,H,W], ref_idx [B,K-1,n] int64)``. ``backend`` overrides the selection of
    :mod:`fsgan_fast.backends` for this call.
    """
    _check_lfm_fuse(feats, base, positions, alpha, check_indices)
    lowered = _common.lowering("lfm_fuse", feats)
    if lowered == "reference":
        return lfm_fuse_reference(feats, base, positions, alpha)
    if lowered is not None:  # the private kernel op itself, which traced graphs keep
        args = _common.prep(feats, base, positions, weights=alpha)
        return _common.kernel_op("lfm_fuse", lowered, feats.device)(*args)
    name = backends.resolve("lfm_fuse", feats.device, feats.dtype, backend)
    backends.resolve("lfm_apply_backward", feats.device, feats.dtype, name)
    return _lfm_fuse_op_eager(feats, base, positions, alpha, name)


def lfm_apply(
    x: Tensor,
    base: Tensor,
    positions: Tensor,
    ref_idx: Tensor,
    alpha: Tensor,
    *,
    backend: str | None = None,
    check_indices: bool = True,
) -> Tensor:
    """Re-apply recorded matches ``ref_idx`` to ``x [B,K,C',H,W]`` (same grid as the matched features)."""
    _check_lfm_apply(x, base, positions, ref_idx, alpha, check_indices)
    lowered = _common.lowering("lfm_apply", x)
    if lowered == "reference":
        return lfm_apply_reference(x, base, positions, ref_idx, alpha)
    if lowered is not None:
        args = _common.prep(x, base, positions, ref_idx, weights=alpha)
        return _common.kernel_op("lfm_apply", lowered, x.device)(*args)
    name = backends.resolve("lfm_apply", x.device, x.dtype, backend)
    backends.resolve("lfm_apply_backward", x.device, x.dtype, name)
    return _lfm_apply_op_eager(x, base, positions, ref_idx, alpha, name)


def lfm_similarity(feats: Tensor, base: Tensor, positions: Tensor, *, check_indices: bool = True) -> Tensor:
    """Cosine maps ``[B, K-1, n, P]`` between the selected base vectors and every reference position.

    For inspection and the similarity figures (paper §4.5); runs the reference (no gradient needed).
    """
    _check_common("feats", feats, base, positions, None, check_indices)
    return lfm_similarity_reference(feats, base, positions)


__all__ = [
    "lfm_fuse",
    "lfm_apply",
    "lfm_similarity",
    "lfm_fuse_reference",
    "lfm_apply_reference",
    "lfm_apply_backward_reference",
    "lfm_similarity_reference",
    "reference_shot_index",
]
