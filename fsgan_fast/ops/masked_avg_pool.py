"""Few-shot SMIS's class prototypes: the masked average of the features under each class mask (its step 2).

``masked_avg_pool(feats[B,C,H,W], masks[B,M,H',W'], *, per_image=False) -> Prototypes(vectors[M,C], present[M])``

1. The masks are resized to the feature grid by nearest neighbour, with torch's ``mode="nearest"`` index rule:
   source row ``min(floor(y * s), H'-1)`` with ``s = float32(H') / float32(H)`` (the same for columns; the identity
   when the sizes agree). ``w[b, m, p]`` is then mask m of image b at grid position p. Masks are one-hot labels or
   soft non-negative weights, float or bool.
2. Per image and class, the masked sum ``S[b, m] = sum_p w[b, m, p] * feats[b, :, p]`` and the weight
   ``W[b, m] = sum_p w[b, m, p]``.
3. ``per_image=False``: ``vectors[m] = sum_b S[b, m] / sum_b W[b, m]``, the weighted mean over every pixel of every
   image. ``per_image=True`` (SMIS's ``compute_rep_vec``): the per-image means ``S[b, m] / W[b, m]``, summed over
   the images where ``W[b, m] > 0`` and divided by how many there are.
4. A class with no weight at all (``sum_b W[b, m] == 0``; per image, no image with ``W[b, m] > 0``) gets a zero
   vector and ``present[m] = False``: never a NaN or an error, and the caller decides what an absent class means.
   ``present[m]`` is True otherwise.

The vectors are not normalised (SMIS L2-normalises them afterwards; :func:`fsgan_fast.ops.cosine_topk` normalises
both sides itself). Every backend folds the images in order, as :func:`pool_reference` writes it; for gradients both
modes are ``vectors[m] = sum_b a[b, m] * S[b, m]`` with ``a = 1 / sum_b W`` or ``a = [W > 0] / (count * W)``.

dtypes: feats float16, bfloat16, float32 or float64; ``vectors`` has feats' dtype, accumulated in float32 (float64
for float64) and rounded once. masks any floating dtype or bool (read as 0/1). ``present`` is bool.

Gradients: to ``feats``, and to floating ``masks`` (through the resize: the sampled mask pixels get it, the others
zero); none to bool masks and none through ``present``. Weights are not checked for negative values (that would
read them on the host); with them, step 3 still computes the same formula, but ``present`` only tests the sums.
Non-finite features propagate as in a matrix product: a NaN anywhere in image b reaches every class's ``S[b]``
(0 * NaN); an absent class stays an exact zero.

Errors (ValueError/TypeError, raised before any kernel runs): wrong rank, empty dimension, feats and masks with
different batch sizes, integer masks, a device mismatch, a ``per_image`` that is not a bool.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fsgan_fast import backends
from fsgan_fast.ops import _common


class Prototypes(NamedTuple):
    """``vectors [M, C]`` (feats' dtype; zeros for an absent class) and ``present [M]`` bool."""

    vectors: Tensor
    present: Tensor


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_masked_avg_pool(feats: Tensor, masks: Tensor, per_image: bool) -> None:
    _common.check_float("feats", feats)
    _common.check_rank("feats", feats, ("B", "C", "H", "W"))
    _common.check_tensor("masks", masks)
    if not (masks.is_floating_point() or masks.dtype == torch.bool):
        raise TypeError(f"masks must be a floating or bool tensor (one-hot or soft weights), got dtype {masks.dtype}")
    _common.check_rank("masks", masks, ("B", "M", "H'", "W'"))
    if feats.numel() == 0:
        raise ValueError(f"feats must have no empty dimension, got shape {list(feats.shape)}")
    if masks.numel() == 0:
        raise ValueError(f"masks must have no empty dimension, got shape {list(masks.shape)}")
    if masks.shape[0] != feats.shape[0]:
        raise ValueError(f"masks must have one mask stack per image of feats (B={feats.shape[0]}), "
                         f"got {masks.shape[0]}: shape {list(masks.shape)}")
    _common.check_device("feats", feats, masks=masks)
    if not isinstance(per_image, bool):
        raise TypeError(f"per_image must be a bool, got {type(per_image).__name__}")


# ---------------------------------------------------------------------------------------------------
# Reference: plain PyTorch, any device, float64 included. The oracle of every backend and the export lowering.


def nearest_index(out_size: int, in_size: int, device: torch.device | str = "cpu") -> Tensor:
    """[out_size] int64: the source index of each output index under torch's ``mode="nearest"``.

    The float32 arithmetic of ATen's ``nearest_idx`` (``min(floor(i * (float)in / out), in - 1)``), so that the
    masks land where ``F.interpolate(masks, size, mode="nearest")`` puts them, for any pair of sizes.
    """
    if out_size == in_size:
        return torch.arange(out_size, device=device)
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    src = (torch.arange(out_size, dtype=torch.float32) * scale).floor().long().clamp_max(in_size - 1)
    return src.to(device)


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """``masks [B,M,H',W']`` resized to ``size`` by nearest neighbour (step 1), in masks' dtype (bool works)."""
    H, W = size
    Hm, Wm = masks.shape[-2:]
    if (Hm, Wm) == (H, W):
        return masks
    rows = nearest_index(H, Hm, masks.device)
    cols = nearest_index(W, Wm, masks.device)
    # index_select rather than fancy indexing: it exports as ONNX Gather, and its backward adds up repeats
    return masks.index_select(2, rows).index_select(3, cols)


def pool_coefficients(wsum: Tensor, per_image: bool) -> tuple[Tensor, Tensor]:
    """``(a [B,M], present [M])`` from the per-image weights ``W [B,M]``: ``vectors[m] = sum_b a[b,m] * S[b,m]``.

    The denominators are replaced by 1 where they are 0 (and the coefficient by 0), so neither the values nor their
    gradients ever see 0/0.
    """
    if per_image:
        has = wsum > 0
        count = has.sum(0)
        present = count > 0
        denom = torch.where(has, wsum * count.to(wsum.dtype), torch.ones_like(wsum))
        return torch.where(has, 1 / denom, torch.zeros_like(wsum)), present
    total = wsum.sum(0)
    present = total > 0
    inv = torch.where(present, 1 / torch.where(present, total, torch.ones_like(total)), torch.zeros_like(total))
    return inv.expand_as(wsum), present


def pool_reference(feats: Tensor, weights: Tensor, per_image: bool) -> tuple[Tensor, Tensor]:
    """Steps 2-4 on resized weights ``[B,M,H,W]``: the kernels' contract (``_masked_avg_pool_*``) in PyTorch.
    Returns ``(vectors [M,C] in feats' dtype, present [M] bool)``; autograd through it gives the op's gradient.

    Exactly as the kernels fold it: per image, the mean where ``W > 0`` (else nothing), summed, over the count; or
    the sums over all images, over the summed weights. An absent class is an exact zero, whatever the features."""
    acc = _common.opmath(feats.dtype)
    B, C, H, W = feats.shape
    M = weights.shape[1]
    f = feats.to(acc).reshape(B, C, H * W)
    w = weights.to(acc).reshape(B, M, H * W)
    sums = torch.bmm(w, f.transpose(1, 2))  # S [B, M, C]
    wsum = w.sum(-1)  # W [B, M]
    if per_image:
        has = (wsum > 0).unsqueeze(-1)
        means = torch.where(has, sums / torch.where(has, wsum.unsqueeze(-1), torch.ones_like(sums)), 0.0)
        total = has.sum(0).to(acc)  # [M, 1]: images with the class
        acc_sum = means.sum(0)
    else:
        total = wsum.sum(0).unsqueeze(-1)
        acc_sum = sums.sum(0)
    present = total > 0
    vectors = torch.where(present, acc_sum / torch.where(present, total, torch.ones_like(total)), 0.0)
    return vectors.to(feats.dtype), present.squeeze(-1)


def masked_avg_pool_reference(feats: Tensor, masks: Tensor, per_image: bool = False) -> Prototypes:
    """Steps 1-4 in plain PyTorch (see the module docstring)."""
    weights = resize_masks(masks, tuple(feats.shape[-2:])).to(_common.opmath(feats.dtype))
    return Prototypes(*pool_reference(feats, weights, per_image))


def pool_backward_reference(grad: Tensor, feats: Tensor, weights: Tensor, per_image: bool,
                            need_weights: bool = True) -> tuple[Tensor, Tensor | None]:
    """``(grad_feats [B,C,H,W] in feats' dtype, grad_weights [B,M,H,W] in weights' dtype or None)`` of
    :func:`pool_reference`, written out: ``d vectors[m] / d feats[b,:,p] = a[b,m] * w[b,m,p]``, and
    ``d vectors[m] / d w[b,m,p] = a[b,m] * (feats[b,:,p] - u[b,m])`` with ``u`` the mean the coefficient divides
    (the global one, or image b's own when ``per_image``); ``present`` and the image count are piecewise constant."""
    acc = _common.opmath(feats.dtype)
    B, C, H, W = feats.shape
    M = weights.shape[1]
    f = feats.to(acc).reshape(B, C, H * W)
    w = weights.to(acc).reshape(B, M, H * W)
    g = grad.to(acc)
    wsum = w.sum(-1)
    a, _ = pool_coefficients(wsum, per_image)
    ga = a.unsqueeze(-1) * g  # [B, M, C]
    grad_feats = torch.bmm(ga.transpose(1, 2), w).view(B, C, H, W).to(feats.dtype)
    if not need_weights:
        return grad_feats, None
    sums = torch.bmm(w, f.transpose(1, 2))  # [B, M, C]
    if per_image:
        has = wsum > 0
        mean = sums / torch.where(has, wsum, torch.ones_like(wsum)).unsqueeze(-1)
        g_mean = (g * mean).sum(-1)  # [B, M]
    else:
        g_mean = (g * (a.unsqueeze(-1) * sums).sum(0)).sum(-1).expand(B, M)
    g_feats = torch.matmul(g, f)  # [B, M, P]: <g_m, feats[b, :, p]>
    grad_weights = a.unsqueeze(-1) * (g_feats - g_mean.unsqueeze(-1))
    return grad_feats, grad_weights.view(B, M, H, W).to(weights.dtype)


# ---------------------------------------------------------------------------------------------------
# The custom op. The public function resizes the masks (a differentiable gather, so floating masks get their
# gradient from autograd) and hands the op weights [B,M,H,W] in feats' opmath dtype; the backward is plain PyTorch
# (two batched matrix products), dispatched with the op's autograd formula.


def _fake_pool(feats, weights, per_image):
    return feats.new_empty(weights.shape[1], feats.shape[1]), feats.new_empty(weights.shape[1], dtype=torch.bool)


# Private kernel ops (csrc/masked_avg_pool/, kernels/masked_avg_pool.py). Inputs arrive prepared: feats contiguous
# [B,C,H,W] float16/bfloat16/float32/float64; weights contiguous [B,M,H,W] in feats' opmath dtype (already resized).
# Returns (vectors [M,C] in feats' dtype, present [M] bool), steps 2-4, deterministic.
NATIVE_SCHEMAS = {
    "_masked_avg_pool_{dev}": "(Tensor feats, Tensor weights, bool per_image) -> (Tensor, Tensor)",
}
_common.define_ops(
    "masked_avg_pool",
    NATIVE_SCHEMAS,
    fakes={"masked_avg_pool": _fake_pool},
    triton={"masked_avg_pool": "masked_avg_pool_fwd"},
)


def _pool_body(feats: Tensor, weights: Tensor, per_image: bool, backend: str) -> tuple[Tensor, Tensor]:
    args = (feats.contiguous(), weights.to(_common.opmath(feats.dtype)).contiguous(), per_image)
    if backend == "reference":
        vectors, present = pool_reference(*args)
        return vectors.contiguous(), present
    return _common.kernel("masked_avg_pool", backend, feats.device)(*args)


_pool_op = torch.library.custom_op("fsgan_fast::masked_avg_pool", _pool_body, mutates_args=())


@_pool_op.register_fake
def _(feats, weights, per_image, backend):
    return _fake_pool(feats, weights, per_image)


def _pool_setup(ctx, inputs, output) -> None:
    feats, weights, per_image, backend = inputs
    ctx.save_for_backward(feats, weights)
    ctx.per_image = per_image


def _pool_backward(ctx, grad_vectors, _grad_present):
    feats, weights = ctx.saved_tensors
    grad_feats, grad_weights = pool_backward_reference(grad_vectors, feats, weights, ctx.per_image,
                                                       need_weights=ctx.needs_input_grad[1])
    return (grad_feats if ctx.needs_input_grad[0] else None), grad_weights, None, None


_pool_eager = _common.EagerOp(_pool_op, _pool_body, _pool_setup, _pool_backward)


# ---------------------------------------------------------------------------------------------------
# Public API


def masked_avg_pool(feats: Tensor, masks: Tensor, *, per_image: bool = False, backend: str | None = None) -> Prototypes:
    """Per-class masked mean of ``feats [B,C,H,W]`` under ``masks [B,M,H',W']`` (see the module docstring).

    Returns :class:`Prototypes` ``(vectors [M,C], present [M] bool)``; an absent class has a zero vector.
    ``per_image=True`` averages the per-image means over the images that contain the class (SMIS's rule).
    ``backend`` overrides the selection of :mod:`fsgan_fast.backends` for this call.
    """
    _check_masked_avg_pool(feats, masks, per_image)
    acc = _common.opmath(feats.dtype)
    lowered = _common.lowering("masked_avg_pool", feats)
    if lowered == "reference":
        return masked_avg_pool_reference(feats, masks, per_image)
    weights = resize_masks(masks, tuple(feats.shape[-2:])).to(acc)
    if lowered is not None:
        op = _common.kernel_op("masked_avg_pool", lowered, feats.device)
        return Prototypes(*op(feats.contiguous(), weights.contiguous(), per_image))
    name = backends.resolve("masked_avg_pool", feats.device, feats.dtype, backend)
    return Prototypes(*_pool_eager(feats, weights, per_image, name))


__all__ = [
    "Prototypes",
    "masked_avg_pool",
    "masked_avg_pool_reference",
    "pool_reference",
    "pool_backward_reference",
    "pool_coefficients",
    "resize_masks",
    "nearest_index",
]
