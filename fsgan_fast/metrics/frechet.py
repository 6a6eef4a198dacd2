"""Fréchet distance between Gaussians fitted to features (FID, SIFID), in float64.

``d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))``. The trace of the matrix square root is taken by
eigendecomposition of the symmetric product ``sqrt(S1) S2 sqrt(S1)``, which has the same eigenvalues as ``S1 S2``
and, being symmetric PSD, real ones: no complex parts to discard, unlike ``scipy.linalg.sqrtm``. When the
covariances are singular (fewer samples than dimensions) and round-off makes eigenvalues clearly negative, both
covariances get ``eps * I`` added, as pytorch-fid does, with a warning.

:class:`FeatureStats` accumulates mean and covariance over batches in float64, so features never need to be
held together (a shift by the first batch's mean keeps the sums well conditioned).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

FRECHET_EPS = 1e-6


class FeatureStats:
    """Streaming mean and unbiased covariance (``np.cov`` convention, ``N - 1``) of ``[N, D]`` feature batches."""

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.n = 0
        self._shift: Tensor | None = None
        self._sum: Tensor | None = None
        self._outer: Tensor | None = None

    def update(self, features: Tensor | np.ndarray) -> FeatureStats:
        """Add ``features [N, D]`` (any float dtype, any device); returns self."""
        f = torch.as_tensor(features)
        if f.dim() != 2:
            raise ValueError(f"features must be [N, D], got shape {list(f.shape)}")
        if self.dim is None:
            self.dim = int(f.shape[1])
        if f.shape[1] != self.dim:
            raise ValueError(f"features have {f.shape[1]} dimensions, these statistics hold {self.dim}")
        if f.shape[0] == 0:
            return self
        f = f.detach().to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(f).all()):
            raise ValueError("features hold NaN/inf values (did the images or the network diverge?)")
        if self._shift is None:
            self._shift = f.mean(0)
            self._sum = torch.zeros(self.dim, dtype=torch.float64)
            self._outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        c = f - self._shift
        self._sum += c.sum(0)
        self._outer += c.T @ c
        self.n += int(f.shape[0])
        return self

    @classmethod
    def of(cls, features: Tensor | np.ndarray) -> FeatureStats:
        return cls().update(features)

    def _check(self, what: str) -> None:
        if self.n < 2:
            raise ValueError(f"{what} needs at least 2 feature vectors for a covariance, got {self.n}")

    @property
    def mean(self) -> np.ndarray:
        self._check("the mean")
        return (self._shift + self._sum / self.n).numpy()

    @property
    def cov(self) -> np.ndarray:
        self._check("the covariance")
        m = self._sum / self.n
        cov = (self._outer - self.n * torch.outer(m, m)) / (self.n - 1)
        return ((cov + cov.T) / 2).numpy()


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> tuple[float, float]:
    """``(tr sqrt(S1 S2), most negative eigenvalue relative to the largest)``."""
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    scale = max(float(np.abs(w).max()), 1e-300)
    return float(np.sqrt(np.clip(w, 0, None)).sum()), float(w.min()) / scale


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = FRECHET_EPS) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"the means have different sizes: {mu1.shape} vs {mu2.shape} (features of different layers?)")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must be [{d}, {d}] to match the means, got {list(s.shape)}")
        if not np.isfinite(s).all():
            raise ValueError(f"{name} holds NaN/inf values")
    diff = mu1 - mu2
    tr_sqrt, worst = _trace_sqrt_product(sigma1, sigma2)
    if worst < -1e-6:  # singular product: round-off pushed eigenvalues below zero
        warnings.warn(f"Fréchet distance: the covariance product is singular (fewer samples than feature "
                      f"dimensions?); adding {eps:g} to the diagonals", RuntimeWarning, stacklevel=2)
        offset = np.eye(d) * eps
        tr_sqrt, _ = _trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def fid_from_stats(real: FeatureStats, fake: FeatureStats, *, eps: float = FRECHET_EPS) -> float:
    """FID between two accumulated feature sets; warns when a set has no more samples than dimensions."""
    if real.dim != fake.dim:
        raise ValueError(f"feature sizes differ: {real.dim} vs {fake.dim}")
    for name, s in (("real", real), ("generated", fake)):
        s._check(f"the {name} set")
        if s.n <= s.dim:
            warnings.warn(f"the {name} set has {s.n} samples for {s.dim}-dimensional features: its covariance is "
                          f"singular and the FID is biased upwards (not comparable to papers' figures)",
                          RuntimeWarning, stacklevel=2)
    return frechet_distance(real.mean, real.cov, fake.mean, fake.cov, eps=eps)


__all__ = ["FeatureStats", "frechet_distance", "fid_from_stats", "FRECHET_EPS"]
