"""Few-shot SMIS's pseudo labels: the k best cosine matches between feature vectors and prototypes (its step 3).

``cosine_topk(feats[B,C,H,W], prototypes[M,C], k=1, threshold=None, *, over="prototypes") -> (idx, score)``

1. The cosine of feature vector ``f = feats[b, :, y, x]`` and prototype ``q = prototypes[m]`` is
   ``<f / max(|f|, eps), q / max(|q|, eps)>`` with ``eps = 1e-8`` (a zero vector has cosine 0 with everything),
   accumulated in float32 (float64 for float64 inputs).
2. ``over="prototypes"`` (the dense rule, OPS.md): per pixel, the k most similar prototypes.
   ``idx [B,k,H,W]`` int64 prototype indices and ``score [B,k,H,W]`` their cosines, best first. Dense pseudo
   labels are ``k=1``: ``idx[:, 0]`` is the argmax over the classes.
3. ``over="pixels"`` (SMIS's sparse rule: each stored annotated vector takes its top-3 pixels of each image):
   per image and prototype, the k most similar pixels. ``idx [B,M,k]`` int64 flat pixel indices ``y * W + x``,
   ``score [B,M,k]``, best first.
4. Order: descending score; equal scores go to the lower index (prototype or pixel). A NaN cosine (a NaN or an
   infinity in the inputs) ranks above every number, lower index first among NaNs, as ``torch.sort`` does.
5. ``threshold``: entries with ``score <= threshold`` get ``idx = -1`` (SMIS keeps ``cos > 0.5``); their score is
   kept as it is. NaN scores never fall below a threshold.

``1 <= k <= 16`` and ``k <= M`` (prototypes) or ``k <= H*W`` (pixels): the fast paths keep the running top-k in
registers. They fuse normalisation, the dot products and the selection in one kernel and never store the
``[B, H*W, M]`` similarity; the reference builds it and sorts it.

dtypes: feats float16, bfloat16, float32 or float64; prototypes any floating dtype (read in float32, float64 for
float64 feats). ``score`` has feats' dtype, rounded once; the threshold compares that rounded score.

Gradients: ``score`` is differentiable w.r.t. feats and prototypes (each score is the cosine of its chosen pair, so
the gradient reaches exactly the chosen feature vectors and prototypes; the gradient of the normalisation is zero
where a norm is below eps, as torch's ``clamp_min``). ``idx`` has none, and no gradient flows through the choice.

Errors (ValueError/TypeError, raised before any kernel runs): wrong rank, empty C/H/W or no prototypes, channel
count mismatch between feats and prototypes, dtype or device mismatch, ``k`` out of range or not an int, an unknown
``over``, a threshold that is not a real number.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from fsgan_fast import backends
from fsgan_fast.ops import _common

EPS = 1e-8
K_MAX = 16  # the fast paths keep k candidates per row in registers
OVER = ("prototypes", "pixels")


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_cosine_topk(feats: Tensor, prototypes: Tensor, k: int, threshold, over: str) -> None:
    _common.check_float("feats", feats)
    _common.check_rank("feats", feats, ("B", "C", "H", "W"))
    _common.check_float("prototypes", prototypes)
    _common.check_rank("prototypes", prototypes, ("M", "C"))
    B, C, H, W = feats.shape
    if C < 1 or H < 1 or W < 1:
        raise ValueError(f"feats must have C, H, W >= 1, got shape {list(feats.shape)}")
    M = prototypes.shape[0]
    if M < 1:
        raise ValueError(f"prototypes must hold at least one prototype, got shape {list(prototypes.shape)}")
    if prototypes.shape[1] != C:
        raise ValueError(f"prototypes must have feats' C={C} channels, got shape {list(prototypes.shape)}")
    _common.check_device("feats", feats, prototypes=prototypes)
    if over not in OVER:
        raise ValueError(f"over must be one of {OVER}, got {over!r}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    n, what = (M, "M") if over == "prototypes" else (H * W, "H*W")
    high = min(K_MAX, n)
    if not 1 <= k <= high:
        raise ValueError(f"k must lie in [1, {high}] (at most {K_MAX}, and at most {what}={n} with over={over!r}), "
                         f"got {k}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
            raise TypeError(f"threshold must be None or a real number, got {type(threshold).__name__}")
        if math.isnan(threshold):
            raise ValueError("threshold must not be NaN")


# ---------------------------------------------------------------------------------------------------
# Reference: plain PyTorch, any device, float64 included; the oracle of every backend and the export lowering.


def cosine_similarity_reference(feats: Tensor, prototypes: Tensor) -> Tensor:
    """``[B, M, H*W]`` cosines (step 1) in float32 (float64 for float64 feats)."""
    acc = _common.opmath(feats.dtype)
    B, C, H, W = feats.shape
    f = feats.to(acc).reshape(B, C, H * W)
    q = prototypes.to(acc)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(EPS)
    q = q / q.norm(dim=1, keepdim=True).clamp_min(EPS)
    return torch.matmul(q, f)  # a broadcast matmul: exports as ONNX MatMul


def topk_reference(feats: Tensor, prototypes: Tensor, k: int, over_pixels: bool) -> tuple[Tensor, Tensor]:
    """Steps 1-4 without the threshold: the kernels' contract (``_cosine_topk_*``) in PyTorch. Returns
    ``(idx, score)``: ``[B,k,H,W]`` over the prototypes, ``[B,M,k]`` with ``over_pixels``."""
    B, C, H, W = feats.shape
    sim = cosine_similarity_reference(feats, prototypes)  # [B, M, P]
    dim = 2 if over_pixels else 1
    if k == 1:
        # argmax takes the first maximum, NaN first as in the sort below; exports as ArgMax + GatherElements
        idx = sim.argmax(dim=dim, keepdim=True)
        score = sim.gather(dim, idx)
    else:
        # a stable sort gives the order of step 4 (NaN first, equal scores by index); topk leaves ties unspecified
        score, idx = torch.sort(sim, dim=dim, descending=True, stable=True)
    if over_pixels:
        score, idx = score[:, :, :k], idx[:, :, :k]
    else:
        score, idx = score[:, :k].reshape(B, k, H, W), idx[:, :k].reshape(B, k, H, W)
    return idx, score.to(feats.dtype)


def apply_threshold(idx: Tensor, score: Tensor, threshold: float | None) -> Tensor:
    """Step 5: ``idx`` with -1 where ``score <= threshold``."""
    if threshold is None:
        return idx
    return idx.masked_fill(score <= threshold, -1)


def cosine_topk_reference(feats: Tensor, prototypes: Tensor, k: int = 1, threshold: float | None = None, *,
                          over: str = "prototypes") -> tuple[Tensor, Tensor]:
    """Steps 1-5 in plain PyTorch (see the module docstring); autograd through it gives the op's gradient."""
    idx, score = topk_reference(feats, prototypes, k, over == "pixels")
    return apply_threshold(idx, score, threshold), score


def pair_weights(idx: Tensor, grad: Tensor, M: int, P: int, over_pixels: bool) -> Tensor:
    """``[B, M, P]`` in grad's dtype: the upstream gradient of each (prototype, pixel) pair, 0 for pairs not chosen.
    The indices of one row are distinct (a top-k), so the scatter never adds two values into one element."""
    B = idx.shape[0]
    out = grad.new_zeros(B, M, P)
    if over_pixels:
        return out.scatter_(2, idx, grad)
    k = idx.shape[1]
    return out.scatter_(1, idx.reshape(B, k, P), grad.reshape(B, k, P))


def cosine_topk_backward_reference(grad: Tensor, feats: Tensor, prototypes: Tensor, idx: Tensor,
                                   over_pixels: bool) -> tuple[Tensor, Tensor]:
    """``(grad_feats, grad_prototypes)`` of the scores, each in its input's dtype, for the raw (unthresholded)
    ``idx``. With ``s`` the cosine of a chosen pair (f, q), ``ds/df = (q^ - [|f| > eps] s f^) / max(|f|, eps)`` and
    symmetrically for q; the chosen pairs are gathered through a dense pair-weight matrix ``A [B,M,P]``."""
    acc = _common.opmath(feats.dtype)
    B, C, H, W = feats.shape
    M, P = prototypes.shape[0], H * W
    f = feats.to(acc).reshape(B, C, P)
    q = prototypes.to(acc)
    nf = f.norm(dim=1, keepdim=True)  # [B, 1, P]
    nq = q.norm(dim=1, keepdim=True)  # [M, 1]
    fh = f / nf.clamp_min(EPS)
    qh = q / nq.clamp_min(EPS)
    a = pair_weights(idx, grad.to(acc), M, P, over_pixels)
    a_s = a * torch.matmul(qh, fh)  # g * s at the chosen pairs
    grad_f = torch.matmul(qh.t(), a) - (nf > EPS) * fh * a_s.sum(1, keepdim=True)
    grad_f = grad_f / nf.clamp_min(EPS)
    grad_q = torch.einsum("bmp,bcp->mc", a, fh) - (nq > EPS) * qh * a_s.sum((0, 2)).unsqueeze(1)
    grad_q = grad_q / nq.clamp_min(EPS)
    return grad_f.view(B, C, H, W).to(feats.dtype), grad_q.to(prototypes.dtype)


# ---------------------------------------------------------------------------------------------------
# The custom op: (score, idx) without the threshold, which the public function applies afterwards so that the
# backward still knows the pair behind a thresholded score. Score first: autograd checks (torch.library.opcheck)
# sum the outputs into the first one's dtype. The backward is plain PyTorch, through the op's registered autograd
# formula (and EagerOp's autograd.Function in eager mode).


def _fake_topk(feats, prototypes, k, over_pixels):
    B, C, H, W = feats.shape
    shape = (B, prototypes.shape[0], k) if over_pixels else (B, k, H, W)
    return feats.new_empty(shape, dtype=torch.int64), feats.new_empty(shape)


def _fake_op(feats, prototypes, k, over_pixels):
    idx, score = _fake_topk(feats, prototypes, k, over_pixels)
    return score, idx


# Private kernel ops (csrc/cosine_topk/, kernels/cosine_topk.py). Inputs arrive prepared: feats contiguous [B,C,H,W]
# float16/bfloat16/float32/float64; prototypes contiguous [M,C] in feats' opmath dtype (raw, not normalised);
# 1 <= k <= 16 and k <= M (or H*W with over_pixels). Returns (idx int64, score in feats' dtype) of steps 1-4.
NATIVE_SCHEMAS = {
    "_cosine_topk_{dev}": "(Tensor feats, Tensor prototypes, SymInt k, bool over_pixels) -> (Tensor, Tensor)",
}
_common.define_ops(
    "cosine_topk",
    NATIVE_SCHEMAS,
    fakes={"cosine_topk": _fake_topk},
    triton={"cosine_topk": "cosine_topk_fwd"},
)


def _topk_body(feats: Tensor, prototypes: Tensor, k: int, over_pixels: bool, backend: str) -> tuple[Tensor, Tensor]:
    args = (feats.contiguous(), prototypes.to(_common.opmath(feats.dtype)).contiguous(), k, over_pixels)
    if backend == "reference":
        idx, score = topk_reference(*args)
    else:
        idx, score = _common.kernel("cosine_topk", backend, feats.device)(*args)
    return score.contiguous(), idx.contiguous()


_topk_op = torch.library.custom_op("fsgan_fast::cosine_topk", _topk_body, mutates_args=())


@_topk_op.register_fake
def _(feats, prototypes, k, over_pixels, backend):
    return _fake_op(feats, prototypes, k, over_pixels)


def _topk_setup(ctx, inputs, output) -> None:
    feats, prototypes, k, over_pixels, backend = inputs
    _, idx = output
    ctx.save_for_backward(feats, prototypes, idx)
    ctx.over_pixels = over_pixels


def _topk_backward(ctx, grad_score, _grad_idx):
    feats, prototypes, idx = ctx.saved_tensors
    grad_f, grad_q = cosine_topk_backward_reference(grad_score, feats, prototypes, idx, ctx.over_pixels)
    grad_f = grad_f if ctx.needs_input_grad[0] else None
    return grad_f, (grad_q if ctx.needs_input_grad[1] else None), None, None, None


_topk_eager = _common.EagerOp(_topk_op, _topk_body, _topk_setup, _topk_backward)


# ---------------------------------------------------------------------------------------------------
# Public API


def cosine_topk(feats: Tensor, prototypes: Tensor, k: int = 1, threshold: float | None = None, *,
                over: str = "prototypes", backend: str | None = None) -> tuple[Tensor, Tensor]:
    """The k best cosine matches between the pixels of ``feats [B,C,H,W]`` and ``prototypes [M,C]``.

    ``over="prototypes"``: ``(idx [B,k,H,W] prototype indices, score [B,k,H,W])`` per pixel; ``over="pixels"``:
    ``(idx [B,M,k] flat pixel indices y*W+x, score [B,M,k])`` per image and prototype. Best first, ties to the
    lower index; ``idx = -1`` where ``score <= threshold``. ``score`` is differentiable, ``idx`` is not. See the
    module docstring. ``backend`` overrides the selection of :mod:`fsgan_fast.backends` for this call.
    """
    _check_cosine_topk(feats, prototypes, k, threshold, over)
    k, over_pixels = int(k), over == "pixels"
    lowered = _common.lowering("cosine_topk", feats)
    if lowered == "reference":
        return cosine_topk_reference(feats, prototypes, k, threshold, over=over)
    if lowered is not None:
        op = _common.kernel_op("cosine_topk", lowered, feats.device)
        idx, score = op(feats.contiguous(), prototypes.to(_common.opmath(feats.dtype)).contiguous(), k, over_pixels)
    else:
        name = backends.resolve("cosine_topk", feats.device, feats.dtype, backend)
        score, idx = _topk_eager(feats, prototypes, k, over_pixels, name)
    return apply_threshold(idx, score, threshold), score


__all__ = [
    "cosine_topk",
    "cosine_topk_reference",
    "cosine_topk_backward_reference",
    "cosine_similarity_reference",
    "topk_reference",
    "apply_threshold",
    "pair_weights",
    "EPS",
    "K_MAX",
]
