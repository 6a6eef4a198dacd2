"""SIFID (SinGAN, Shaham et al. 2019): the Fréchet distance between the internal patch statistics of one real and
one generated image.

Each image's 64-channel Inception stem maps (before the first max-pool, at the image's own resolution; see
:meth:`~fsgan_fast.metrics.inception.FIDInception.early`) are read as ``h * w`` samples of a 64-d Gaussian, and
the two Gaussians are compared with :func:`~fsgan_fast.metrics.frechet.frechet_distance`, as SinGAN's
``SIFID/sifid_score.py`` does. SinGAN's code took those layers from torchvision's ImageNet Inception; here they
come from the FID Inception file (same layer names and shapes), so figures are close to but not exactly theirs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fsgan_fast.metrics.frechet import FeatureStats, frechet_distance
from fsgan_fast.metrics.inception import FIDInception


def patch_stats(inception: FIDInception, image: Tensor) -> FeatureStats:
    """Mean and covariance over the spatial positions of one image's stem maps (``image [3, H, W]`` or
    ``[1, 3, H, W]`` in [-1, 1])."""
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"patch_stats takes one image [3, H, W], got shape {list(image.shape)}")
    maps = inception.early(x)[0]  # [64, h, w]
    return FeatureStats.of(maps.flatten(1).T)


def sifid(inception: FIDInception, real: Tensor, fakes: Tensor) -> list[float]:
    """SIFID of each of ``fakes [N, 3, H', W']`` against the single ``real [3, H, W]`` (all in [-1, 1])."""
    if not isinstance(fakes, Tensor) or fakes.dim() != 4:
        raise ValueError(f"fakes must be [N, 3, H, W], got "
                         f"{list(fakes.shape) if isinstance(fakes, Tensor) else type(fakes).__name__}")
    ref = patch_stats(inception, real)
    mu, cov = ref.mean, ref.cov
    out = []
    with torch.no_grad():
        for fake in fakes:
            s = patch_stats(inception, fake)
            out.append(frechet_distance(mu, cov, s.mean, s.cov))
    return out


__all__ = ["sifid", "patch_stats"]
