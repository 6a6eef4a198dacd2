"""Mean pairwise LPIPS within a set of images (LoFGAN's diversity figure), from one trunk pass per image.

LPIPS(x, y) = sum over taps of mean_hw sum_c w_c (fx - fy)², with unit-normalised features f. Expanding the
square, every pair's distance comes from per-image norms and one Gram matrix per tap, so N images cost N trunk
passes instead of N(N-1) (float64 keeps the expansion exact to ~1e-12).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fsgan_fast.perceptual import LPIPS, LPIPS_EPS, VGG16_TAPS


@torch.no_grad()
def lpips_features(lpips: LPIPS, images: Tensor) -> list[Tensor]:
    """Unit-normalised features ``[N, C, h, w]`` (float64) at each LPIPS tap."""
    h = (images - lpips.shift.to(images.dtype)) / lpips.scale.to(images.dtype)
    feats = []
    taps = set(VGG16_TAPS)
    for i, layer in enumerate(lpips.features):
        h = layer(h)
        if i in taps:
            f = h.double()
            feats.append(f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS))
        if i == VGG16_TAPS[-1]:
            break
    return feats


@torch.no_grad()
def pairwise_lpips(lpips: LPIPS, images: Tensor) -> Tensor:
    """``[N, N]`` LPIPS distances between all pairs of ``images [N, 3, H, W]`` (in [-1, 1])."""
    if images.dim() != 4 or images.shape[0] < 2:
        raise ValueError(f"pairwise LPIPS needs [N >= 2, 3, H, W] images, got shape {list(images.shape)}")
    n = images.shape[0]
    total = torch.zeros(n, n, dtype=torch.float64, device=images.device)
    for f, lin in zip(lpips_features(lpips, images), lpips.lin):
        w = lin.weight.double().view(1, -1, 1, 1)
        hw = f.shape[2] * f.shape[3]
        flat, weighted = f.flatten(1), (f * w).flatten(1)
        sq = (flat * weighted).sum(1)
        total += (sq[:, None] + sq[None, :] - 2 * weighted @ flat.T) / hw
    total.fill_diagonal_(0)
    return total


def mean_pairwise_lpips(lpips: LPIPS, images: Tensor) -> float:
    """Mean LPIPS over the ``N(N-1)/2`` distinct pairs."""
    d = pairwise_lpips(lpips, images)
    n = d.shape[0]
    return float(d.sum() / (n * (n - 1)))


__all__ = ["pairwise_lpips", "mean_pairwise_lpips", "lpips_features"]
