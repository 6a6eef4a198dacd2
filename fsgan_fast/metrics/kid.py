"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
``k(x, y) = (x·y / D + 1)³``, averaged over random subsets.

Subsets are drawn as torch-fidelity draws them (``numpy.random.RandomState(seed).choice(n, size, replace=False)``,
first set then second, per subset), so the same seed gives the same figure as ``torch_fidelity``.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, **kernel) -> float:
    """Unbiased MMD² of two equal-size samples: off-diagonal means of k(x, x') and k(y, y'), minus twice the
    mean of k(x, y) (all pairs, as in the KID paper)."""
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(f"MMD needs two samples of the same size >= 2, got {x.shape[0]} and {y.shape[0]}")
    kxx, kyy = polynomial_kernel(x, x, **kernel), polynomial_kernel(y, y, **kernel)
    kxy = polynomial_kernel(x, y, **kernel)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def _as_features(f, name: str) -> np.ndarray:
    a = f.detach().cpu().double().numpy() if isinstance(f, Tensor) else np.asarray(f, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be [N, D] features, got shape {list(a.shape)}")
    return a


def kid(features_1, features_2, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 0,
        degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> dict[str, float]:
    """``{"kid_mean", "kid_std"}`` over ``subsets`` random subsets of ``subset_size`` from each ``[N, D]`` set.

    ``subset_size`` larger than a set is an error (torch-fidelity's rule); pass ``min(1000, n)`` for small sets.
    """
    x, y = _as_features(features_1, "features_1"), _as_features(features_2, "features_2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    if subset_size < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    if subset_size > min(len(x), len(y)):
        raise ValueError(f"KID subset_size {subset_size} exceeds the smaller set ({len(x)} and {len(y)} samples): "
                         f"lower subset_size or add samples")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        a = x[rng.choice(len(x), subset_size, replace=False)]
        b = y[rng.choice(len(y), subset_size, replace=False)]
        values[i] = mmd2_unbiased(a, b, degree=degree, gamma=gamma, coef0=coef0)
    return {"kid_mean": float(values.mean()), "kid_std": float(values.std())}


__all__ = ["kid", "mmd2_unbiased", "polynomial_kernel", "KID_SUBSETS", "KID_SUBSET_SIZE"]
