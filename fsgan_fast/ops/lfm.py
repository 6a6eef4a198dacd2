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
from fsgan_fast.ops import _alloc

EPS = 1e-8

for _name in ("lfm_fuse", "lfm_apply", "lfm_apply_backward"):
    backends.register_op(backends.OpSpec(name=_name, backends=backends.BACKENDS, native=f"_{_name}"))

# Private kernels implemented in C++ (csrc/lfm/): schemas written once, here. csrc/ops.cpp repeats them
# for the CMake build only, and tests/test_cmake_build.py checks that both agree.
NATIVE_SCHEMAS = {
    "_lfm_fuse_{dev}": "(Tensor feats, Tensor base, Tensor positions, Tensor alpha) -> (Tensor, Tensor)",
    "_lfm_apply_{dev}": "(Tensor x, Tensor base, Tensor positions, Tensor ref_idx, Tensor alpha) -> Tensor",
    "_lfm_apply_backward_{dev}": (
        "(Tensor grad, Tensor x, Tensor base, Tensor positions, Tensor ref_idx, Tensor alpha) -> (Tensor, Tensor)"
    ),
}
_lib = torch.library.Library("fsgan_fast", "FRAGMENT")
for _dev in ("cpu", "cuda"):
    for _stem, _sig in NATIVE_SCHEMAS.items():
        _lib.define(_stem.format(dev=_dev) + _sig)


# ---------------------------------------------------------------------------------------------------
# Validation


def _fail(exc: type[Exception], msg: str) -> None:
    raise exc(msg)


def _check_float(name: str, t: object) -> None:
    if not isinstance(t, Tensor):
        _fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        _fail(TypeError, f"{name} must be a floating tensor, got dtype {t.dtype}")


def _check_int(name: str, t: object) -> None:
    if not isinstance(t, Tensor):
        _fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        _fail(TypeError, f"{name} must be an integer tensor, got dtype {t.dtype}")


def _check_shape(name: str, t: Tensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != expected:
        _fail(ValueError, f"{name} must have shape {list(expected)} ({what}), got {list(t.shape)}")


def _check_device(ref_name: str, ref: Tensor, **others: Tensor) -> None:
    for name, t in others.items():
        if t.device != ref.device:
            _fail(ValueError, f"{name} is on {t.device} but {ref_name} is on {ref.device}: all inputs must share a device")


def _check_common(
    x_name: str, x: Tensor, base: Tensor, positions: Tensor, alpha: Tensor | None, check_indices: bool
) -> tuple[int, int, int, int, int, int]:
    _check_float(x_name, x)
    if x.dim() != 5:
        _fail(ValueError, f"{x_name} must be 5-D [B, K, C, H, W], got {x.dim()}-D shape {list(x.shape)}")
    B, K, C, H, W = x.shape
    if K < 2:
        _fail(ValueError, f"{x_name} needs K >= 2 shots (one base and at least one reference), got K={K}")
    if C < 1 or H < 1 or W < 1:
        _fail(ValueError, f"{x_name} must have C, H, W >= 1, got shape {list(x.shape)}")
    _check_int("base", base)
    _check_int("positions", positions)
    _check_shape("base", base, (B,), "one base shot index per batch row")
    if positions.dim() != 2 or positions.shape[0] != B:
        _fail(ValueError, f"positions must have shape [B={B}, n], got {list(positions.shape)}")
    P, n = H * W, positions.shape[1]
    if n > P:
        _fail(ValueError, f"positions selects n={n} positions but the grid has only H*W={P}")
    _check_device(x_name, x, base=base, positions=positions)
    if alpha is not None:
        _check_float("alpha", alpha)
        _check_shape("alpha", alpha, (B, K), "one weight per batch row and shot")
        _check_device(x_name, x, alpha=alpha)
    if check_indices and not torch.compiler.is_compiling() and B > 0:
        if bool(((base < 0) | (base >= K)).any()):
            bad = base[(base < 0) | (base >= K)][0].item()
            _fail(ValueError, f"base must lie in [0, K={K}), got {bad}")
        if n > 0:
            if bool(((positions < 0) | (positions >= P)).any()):
                bad = positions[(positions < 0) | (positions >= P)][0].item()
                _fail(ValueError, f"positions must lie in [0, H*W={P}), got {bad}")
            srt = positions.sort(dim=1).values
            dup = srt[:, 1:] == srt[:, :-1]
            if bool(dup.any()):
                row = int(dup.any(dim=1).nonzero()[0].item())
                _fail(ValueError, f"positions must be distinct within each row; row {row} repeats a position")
    return B, K, C, H, W, n


def _check_lfm_fuse(feats: Tensor, base: Tensor, positions: Tensor, alpha: Tensor, check_indices: bool = True) -> None:
    _check_common("feats", feats, base, positions, alpha, check_indices)


def _check_lfm_apply(
    x: Tensor, base: Tensor, positions: Tensor, ref_idx: Tensor, alpha: Tensor, check_indices: bool = True
) -> None:
    B, K, C, H, W, n = _check_common("x", x, base, positions, alpha, check_indices)
    _check_int("ref_idx", ref_idx)
    _check_shape("ref_idx", ref_idx, (B, K - 1, n), "one match per batch row, reference and selected position")
    _check_device("x", x, ref_idx=ref_idx)
    if check_indices and not torch.compiler.is_compiling() and ref_idx.numel() > 0:
        bad_mask = (ref_idx < 0) | (ref_idx >= H * W)
        if bool(bad_mask.any()):
            _fail(ValueError, f"ref_idx must lie in [0, H*W={H * W}), got {ref_idx[bad_mask][0].item()}")


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
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
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
# torch.export see one opaque op with a fake impl; the backward is itself a custom op.


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _native(stem: str, device: torch.device):
    return getattr(torch.ops.fsgan_fast, f"{stem}_{'cuda' if device.type == 'cuda' else 'cpu'}")


def _kernels():
    from fsgan_fast.kernels import lfm as triton_lfm  # imported lazily: triton is optional

    return triton_lfm


def _prep(x: Tensor, base: Tensor, positions: Tensor, alpha: Tensor):
    return x.contiguous(), base.long().contiguous(), positions.long().contiguous(), alpha.to(_opmath(x.dtype)).contiguous()


def _fake_fuse_native(feats, base, positions, alpha):
    B, K, C, H, W = feats.shape
    return feats.new_empty(B, C, H, W), feats.new_empty(B, K - 1, positions.shape[1], dtype=torch.int64)


@torch.library.custom_op("fsgan_fast::lfm_fuse", mutates_args=())
def _lfm_fuse_op(feats: Tensor, base: Tensor, positions: Tensor, alpha: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "reference":
        fused, ref_idx = lfm_fuse_reference(feats, base, positions, alpha)
        return fused.contiguous(), ref_idx
    feats, base, positions, alpha = _prep(feats, base, positions, alpha)
    if backend == "triton":
        return _kernels().lfm_fuse_fwd(feats, base, positions, alpha)
    return _native("_lfm_fuse", feats.device)(feats, base, positions, alpha)


@_lfm_fuse_op.register_fake
def _(feats, base, positions, alpha, backend):
    return _fake_fuse_native(feats, base, positions, alpha)


@torch.library.custom_op("fsgan_fast::lfm_apply", mutates_args=())
def _lfm_apply_op(x: Tensor, base: Tensor, positions: Tensor, ref_idx: Tensor, alpha: Tensor, backend: str) -> Tensor:
    if backend == "reference":
        return lfm_apply_reference(x, base, positions, ref_idx, alpha).contiguous()
    x, base, positions, alpha = _prep(x, base, positions, alpha)
    ref_idx = ref_idx.long().contiguous()
    if backend == "triton":
        return _kernels().lfm_apply_fwd(x, base, positions, ref_idx, alpha)
    return _native("_lfm_apply", x.device)(x, base, positions, ref_idx, alpha)


@_lfm_apply_op.register_fake
def _(x, base, positions, ref_idx, alpha, backend):
    B, K, C, H, W = x.shape
    return x.new_empty(B, C, H, W)


@torch.library.custom_op("fsgan_fast::lfm_apply_backward", mutates_args=())
def _lfm_apply_backward_op(
    grad: Tensor, x: Tensor, base: Tensor, positions: Tensor, ref_idx: Tensor, alpha: Tensor, backend: str
) -> tuple[Tensor, Tensor]:
    if backend == "reference":
        return lfm_apply_backward_reference(grad, x, base, positions, ref_idx, alpha)
    alpha_dtype = alpha.dtype
    x, base, positions, alpha = _prep(x, base, positions, alpha)
    grad, ref_idx = grad.to(x.dtype).contiguous(), ref_idx.long().contiguous()
    if backend == "triton":
        grad_x, grad_alpha = _kernels().lfm_apply_bwd(grad, x, base, positions, ref_idx, alpha)
    else:
        grad_x, grad_alpha = _native("_lfm_apply_backward", x.device)(grad, x, base, positions, ref_idx, alpha)
    return grad_x, grad_alpha.to(alpha_dtype)


@_lfm_apply_backward_op.register_fake
def _(grad, x, base, positions, ref_idx, alpha, backend):
    return x.new_empty(x.shape), alpha.new_empty(alpha.shape)


def _setup_fuse(ctx, inputs, output) -> None:
    feats, base, positions, alpha, backend = inputs
    _, ref_idx = output
    ctx.save_for_backward(feats, base, positions, ref_idx, alpha)
    ctx.backend = backend


def _backward_fuse(ctx, grad_fused, _grad_ref_idx):
    feats, base, positions, ref_idx, alpha = ctx.saved_tensors
    grad_x, grad_alpha = _lfm_apply_backward_op(grad_fused, feats, base, positions, ref_idx, alpha, ctx.backend)
    return grad_x, None, None, grad_alpha, None


def _setup_apply(ctx, inputs, output) -> None:
    x, base, positions, ref_idx, alpha, backend = inputs
    ctx.save_for_backward(x, base, positions, ref_idx, alpha)
    ctx.backend = backend


def _backward_apply(ctx, grad_fused):
    x, base, positions, ref_idx, alpha = ctx.saved_tensors
    grad_x, grad_alpha = _lfm_apply_backward_op(grad_fused, x, base, positions, ref_idx, alpha, ctx.backend)
    return grad_x, None, None, None, grad_alpha, None


_lfm_fuse_op.register_autograd(_backward_fuse, setup_context=_setup_fuse)
_lfm_apply_op.register_autograd(_backward_apply, setup_context=_setup_apply)


def _register_native_fakes() -> None:
    for dev in ("cpu", "cuda"):
        torch.library.register_fake(f"fsgan_fast::_lfm_fuse_{dev}", _fake_fuse_native, lib=_lib)
        torch.library.register_fake(
            f"fsgan_fast::_lfm_apply_{dev}", lambda x, b, p, r, a: x.new_empty(x.shape[0], *x.shape[2:]), lib=_lib
        )
        torch.library.register_fake(
            f"fsgan_fast::_lfm_apply_backward_{dev}", lambda g, x, b, p, r, a: (x.new_empty(x.shape), a.new_empty(a.shape)), lib=_lib
        )


_register_native_fakes()


def _lowered(op: str, x: Tensor) -> str | None:
    """The export lowering in force (see :func:`fsgan_fast.backends.lowering`); checks native kernels exist."""
    mode = backends.active_lowering()
    if mode == "native":
        kind = "cuda" if x.device.type == "cuda" else "cpu"
        reason = backends.why_unavailable(op, kind, x.device, x.dtype)
        if reason is not None:
            raise backends.BackendUnavailableError(f"native lowering of {op!r} on {x.device.type}: {reason}")
    return mode


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
    lowered = _lowered("lfm_fuse", feats)
    if lowered == "reference":
        return lfm_fuse_reference(feats, base, positions, alpha)
    if lowered == "native":
        return _native("_lfm_fuse", feats.device)(*_prep(feats, base, positions, alpha))
    name = backends.resolve("lfm_fuse", feats.device, feats.dtype, backend)
    backends.resolve("lfm_apply_backward", feats.device, feats.dtype, name)
    return _lfm_fuse_op(feats, base, positions, alpha, name)


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
    lowered = _lowered("lfm_apply", x)
    if lowered == "reference":
        return lfm_apply_reference(x, base, positions, ref_idx, alpha)
    if lowered == "native":
        x, base, positions, alpha = _prep(x, base, positions, alpha)
        return _native("_lfm_apply", x.device)(x, base, positions, ref_idx.long().contiguous(), alpha)
    name = backends.resolve("lfm_apply", x.device, x.dtype, backend)
    backends.resolve("lfm_apply_backward", x.device, x.dtype, name)
    return _lfm_apply_op(x, base, positions, ref_idx, alpha, name)


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
