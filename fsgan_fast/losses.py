"""GAN losses. Every function returns a differentiable scalar tensor.

LoFGAN (ALGORITHMS.md §1) trains with :func:`hinge_d_loss` / :func:`hinge_g_loss`, ACGAN
:func:`classification_loss` on both nets, :func:`local_reconstruction_loss` on G and
:func:`r1_class_penalty` on D, weighted as :class:`fsgan_fast.train.lofgan.LoFGANLossWeights` says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast.nn.local_fusion import LocalFusionOutput
from fsgan_fast.ops import lfm_apply

RECON_MODES = ("nearest", "area")


def _check_tensor(name: str, t: object, *, floating: bool = True) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if not floating and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {t.dtype}")


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss: ``mean(relu(1 - real)) + mean(relu(1 + fake))``."""
    _check_tensor("real_logits", real_logits)
    _check_tensor("fake_logits", fake_logits)
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """Generator hinge loss: ``-mean(fake)``."""
    _check_tensor("fake_logits", fake_logits)
    return -fake_logits.mean()


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """ACGAN class loss: cross entropy of ``logits [N, n_classes]`` against integer ``labels [N]`` (mean)."""
    _check_tensor("logits", logits)
    _check_tensor("labels", labels, floating=False)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [N, n_classes], got {list(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must have shape [N={logits.shape[0]}] (one class per logit row), got {list(labels.shape)}"
        )
    return F.cross_entropy(logits, labels.long())


def local_reconstruction_loss(xs: Tensor, fake: Tensor, fusion: LocalFusionOutput, mode: str = "nearest") -> Tensor:
    """LoFGAN's local reconstruction loss: L1 between the fake and the fusion replayed on the shots' pixels.

    ``xs [B, K, 3, S, S]`` (the real shots) and ``fake [B, 3, S, S]`` are resized to the feature grid
    ``h x w = fusion.fused.shape[-2:]``; feature cell ``i`` corresponds to resized pixel ``i``. The target is
    the resized base shot with every selected position ``p`` replaced by
    ``alpha_base * base_px[p] + sum_r alpha_r * ref_r_px[ref_idx[r, p]]`` (:func:`fsgan_fast.ops.lfm_apply`
    with the recorded ``fusion.base / positions / ref_idx / alpha``); the loss is ``mean |target - fake_px|``
    over ``[B, 3, h, w]``.

    ``mode="nearest"`` is the official code (``F.interpolate``'s default): it keeps one pixel per
    ``S/h``-pixel cell (the top-left one), so only ``h*w`` pixels of the fake are supervised.
    ``mode="area"`` averages each cell instead. The target is not detached: gradients reach ``xs`` and
    ``fusion.alpha`` if they require them.
    """
    _check_tensor("xs", xs)
    _check_tensor("fake", fake)
    if mode not in RECON_MODES:
        raise ValueError(f"mode must be one of {RECON_MODES}, got {mode!r}")
    if not isinstance(fusion, LocalFusionOutput):
        raise TypeError(f"fusion must be the LocalFusionOutput returned by the generator, got {type(fusion).__name__}")
    if xs.dim() != 5:
        raise ValueError(f"xs must be 5-D [B, K, C, S, S], got {xs.dim()}-D shape {list(xs.shape)}")
    B, K, C, H, W = xs.shape
    if tuple(fake.shape) != (B, C, H, W):
        raise ValueError(f"fake must have shape {[B, C, H, W]} (one image per episode of xs), got {list(fake.shape)}")
    h, w = fusion.fused.shape[-2:]
    if fusion.alpha.shape[0] != B or fusion.alpha.shape[-1] != K:
        raise ValueError(f"fusion was computed for alpha {list(fusion.alpha.shape)}, but xs has B={B}, K={K}")
    if H % h or W % w:
        raise ValueError(f"the image side {H}x{W} must be a multiple of the feature grid {h}x{w}")
    flat = xs.flatten(0, 1)
    if mode == "nearest":
        xs_px = F.interpolate(flat, size=(h, w), mode="nearest")
        fake_px = F.interpolate(fake, size=(h, w), mode="nearest")
    else:
        xs_px = F.adaptive_avg_pool2d(flat, (h, w))
        fake_px = F.adaptive_avg_pool2d(fake, (h, w))
    target = lfm_apply(
        xs_px.unflatten(0, (B, K)), fusion.base, fusion.positions, fusion.ref_idx, fusion.alpha, check_indices=False
    )
    return (target - fake_px).abs().mean()


def r1_class_penalty(real: Tensor, cls_logits: Tensor, labels: Tensor) -> Tensor:
    """LoFGAN's gradient penalty on D: an R1 penalty on the true-class logit of the real images.

    ``g = d mean_i(cls_logits[i, labels[i]]) / d real``; returns ``sum(g**2) / real.shape[0]`` with
    ``create_graph=True``, so it trains D. ``real`` must require grad and ``cls_logits [M, n_classes]``
    must have been computed from it; ``labels [M]``.

    ``real`` may be the images D saw, ``[M, 3, S, S]`` (divides by M = B*K), or the episodes they were
    flattened from, ``[B, K, 3, S, S]`` with ``cls_logits = D(real.flatten(0, 1))`` (divides by B). The
    official code does the latter, so its penalty is K times the per-image one; pass the 5-D episodes to
    reproduce it with the official weight 10.
    """
    _check_tensor("real", real)
    _check_tensor("cls_logits", cls_logits)
    _check_tensor("labels", labels, floating=False)
    if not real.requires_grad:
        raise ValueError("real must require grad: call real.requires_grad_() before running the discriminator on it")
    if cls_logits.dim() != 2:
        raise ValueError(f"cls_logits must have shape [M, n_classes], got {list(cls_logits.shape)}")
    if labels.shape != cls_logits.shape[:1]:
        raise ValueError(
            f"labels must have shape [M={cls_logits.shape[0]}] (one class per logit row), got {list(labels.shape)}"
        )
    if real.dim() == 0 or real.shape[0] == 0:
        raise ValueError(f"real must hold at least one image, got shape {list(real.shape)}")
    picked = cls_logits.gather(1, labels.long().unsqueeze(1)).mean()
    (grad,) = torch.autograd.grad(picked, real, create_graph=True, allow_unused=True)
    if grad is None:
        raise ValueError(
            "cls_logits does not depend on real: compute them from real (or a view of it) with grad enabled"
        )
    return grad.pow(2).sum() / real.shape[0]


def lsgan_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Least-squares D loss (CycleGAN, OP-GAN): ``mean((real - 1)^2) + mean(fake^2)``, halved as in CycleGAN so D
    learns at half the rate of G."""
    _check_tensor("real_logits", real_logits)
    _check_tensor("fake_logits", fake_logits)
    return 0.5 * ((real_logits - 1.0).pow(2).mean() + fake_logits.pow(2).mean())


def lsgan_g_loss(fake_logits: Tensor) -> Tensor:
    """Least-squares G loss: ``mean((fake - 1)^2)``."""
    _check_tensor("fake_logits", fake_logits)
    return (fake_logits - 1.0).pow(2).mean()


def wgan_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Wasserstein critic loss (StarGAN, MatchGAN): ``mean(fake) - mean(real)``."""
    _check_tensor("real_logits", real_logits)
    _check_tensor("fake_logits", fake_logits)
    return fake_logits.mean() - real_logits.mean()


def wgan_g_loss(fake_logits: Tensor) -> Tensor:
    """Wasserstein generator loss: ``-mean(fake)``."""
    _check_tensor("fake_logits", fake_logits)
    return -fake_logits.mean()


def gradient_penalty(critic, real: Tensor, fake: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """WGAN-GP (Gulrajani et al.; StarGAN's ``gradient_penalty``): ``mean((||d critic(x̂) / d x̂||_2 - 1)^2)`` over
    per-sample norms, at ``x̂ = a*real + (1-a)*fake`` with ``a ~ U[0,1)`` per sample. ``critic(x)`` returns the
    logits to penalise (a tensor, or a tuple whose first item is that tensor). ``fake`` is detached; the result
    trains the critic (``create_graph=True``)."""
    _check_tensor("real", real)
    _check_tensor("fake", fake)
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {list(real.shape)} and {list(fake.shape)}")
    if real.dim() == 0 or real.shape[0] == 0:
        raise ValueError(f"real must hold at least one sample, got shape {list(real.shape)}")
    a = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype,
                   generator=generator)
    mixed = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    out = critic(mixed)
    if isinstance(out, (tuple, list)):
        out = out[0]
    (grad,) = torch.autograd.grad(out.sum(), mixed, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)
    return (norm - 1.0).pow(2).mean()


__all__ = [
    "lsgan_d_loss",
    "lsgan_g_loss",
    "wgan_d_loss",
    "wgan_g_loss",
    "gradient_penalty",
    "hinge_d_loss",
    "hinge_g_loss",
    "classification_loss",
    "local_reconstruction_loss",
    "r1_class_penalty",
]
