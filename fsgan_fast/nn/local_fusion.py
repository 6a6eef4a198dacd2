"""LoFGAN's Local Fusion Module as a layer: samples the randomness, then calls ``ops.lfm_fuse``."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from fsgan_fast.ops import lfm_fuse


class LocalFusionOutput(NamedTuple):
    """Everything the local reconstruction loss needs to replay the fusion on the images."""

    fused: Tensor  # [B, C, H, W]
    base: Tensor  # [B] int64, base shot of each row
    positions: Tensor  # [B, n] int64, selected flat positions of the base map
    ref_idx: Tensor  # [B, K-1, n] int64, matched flat position in each reference
    alpha: Tensor  # [B, K] fusion weights, rows sum to 1


class LocalFusion(nn.Module):
    """Local selection, matching and replacement over ``feats [B, K, C, H, W]``.

    Each call samples, from ``generator`` (or the default RNG of the features' device):
    the base shot per row (``shared_base=True`` draws one for the whole batch, as the official
    code does), ``n = int(rate * H * W)`` distinct positions per row, and alpha ~ U(0, 1) normalised
    over the K shots. Any of them can be given instead (e.g. to replay a generation).
    """

    def __init__(self, rate: float = 0.5, *, shared_base: bool = False, backend: str | None = None):
        super().__init__()
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate (eta) must lie in (0, 1], got {rate}")
        self.rate = float(rate)
        self.shared_base = shared_base
        self.backend = backend

    def extra_repr(self) -> str:
        return f"rate={self.rate}, shared_base={self.shared_base}"

    def num_positions(self, H: int, W: int) -> int:
        return int(self.rate * H * W)

    def sample(
        self, B: int, K: int, H: int, W: int, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(base [B], positions [B, n], alpha [B, K] float32) drawn on the generator's device, moved to ``device``."""
        where = generator.device if generator is not None else device
        n = self.num_positions(H, W)
        if self.shared_base:
            base = torch.randint(K, (1,), generator=generator, device=where).expand(B)
        else:
            base = torch.randint(K, (B,), generator=generator, device=where)
        # a random permutation per row, cut to n: distinct positions without a host loop
        positions = torch.rand(B, H * W, generator=generator, device=where).argsort(dim=1)[:, :n]
        alpha = torch.rand(B, K, generator=generator, device=where)
        alpha = alpha / alpha.sum(dim=1, keepdim=True)
        return (
            base.to(device, non_blocking=True).contiguous(),
            positions.to(device, non_blocking=True).contiguous(),
            alpha.to(device, non_blocking=True),
        )

    def forward(
        self,
        feats: Tensor,
        generator: torch.Generator | None = None,
        *,
        base: Tensor | None = None,
        positions: Tensor | None = None,
        alpha: Tensor | None = None,
        check_indices: bool | None = None,
    ) -> LocalFusionOutput:
        """Fuse ``feats [B, K, C, H, W]``, drawing what is not given from ``generator``.

        Whatever is given (``base [B]`` in [0, K), ``positions [B, n]`` in [0, H*W) and distinct per row,
        finite ``alpha [B, K]``) is validated, even when the rest is drawn, with one host sync on a GPU,
        unless ``check_indices=False``; drawn ones never need it. Callers that drew them with
        :meth:`sample` themselves pass ``check_indices=False``. Shapes, dtypes and devices are always checked.
        """
        if not isinstance(feats, Tensor) or feats.dim() != 5:
            raise ValueError(f"LocalFusion expects feats of shape [B, K, C, H, W], got {getattr(feats, 'shape', feats)}")
        B, K, C, H, W = feats.shape
        any_given = base is not None or positions is not None or alpha is not None
        _check_given(feats, base, positions, alpha, values=any_given if check_indices is None else check_indices)
        if base is None or positions is None or alpha is None:
            s_base, s_pos, s_alpha = self.sample(B, K, H, W, feats.device, generator)
            base = s_base if base is None else base
            positions = s_pos if positions is None else positions
            alpha = s_alpha if alpha is None else alpha
        # given ones were validated above and drawn ones are valid: the op need not check (or sync) again
        fused, ref_idx = lfm_fuse(feats, base, positions, alpha, backend=self.backend, check_indices=False)
        return LocalFusionOutput(fused, base, positions, ref_idx, alpha)


def _check_given(
    feats: Tensor, base: Tensor | None, positions: Tensor | None, alpha: Tensor | None, values: bool
) -> None:
    """Type, shape and device of each given argument; with ``values``, their values too (one host sync)."""
    B, K, C, H, W = feats.shape
    P = H * W
    for name, t, want in (("base", base, "int"), ("positions", positions, "int"), ("alpha", alpha, "float")):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"LocalFusion: {name} must be a torch.Tensor, got {type(t).__name__}")
        is_int = not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
        if not (is_int if want == "int" else t.is_floating_point()):
            kind = "an integer" if want == "int" else "a floating"
            raise TypeError(f"LocalFusion: {name} must be {kind} tensor, got dtype {t.dtype}")
        if t.device != feats.device:
            raise ValueError(f"LocalFusion: {name} is on {t.device} but feats is on {feats.device}")
    if base is not None and tuple(base.shape) != (B,):
        raise ValueError(f"LocalFusion: base must have shape [B={B}] (one base shot per row), got {list(base.shape)}")
    if positions is not None and (positions.dim() != 2 or positions.shape[0] != B or positions.shape[1] > P):
        raise ValueError(
            f"LocalFusion: positions must have shape [B={B}, n] with n <= H*W={P}, got {list(positions.shape)}"
        )
    if alpha is not None and tuple(alpha.shape) != (B, K):
        raise ValueError(
            f"LocalFusion: alpha must have shape [B={B}, K={K}] (one weight per row and shot), got {list(alpha.shape)}"
        )
    if not values or B == 0 or torch.compiler.is_compiling():
        return
    # every flag first, then one host sync; the details are looked up only on failure
    zero = torch.zeros((), dtype=torch.bool, device=feats.device)
    bad_base = ((base < 0) | (base >= K)) if base is not None else None
    bad_pos = dup = None
    if positions is not None and positions.shape[1] > 0:
        bad_pos = (positions < 0) | (positions >= P)
        srt = positions.sort(dim=1).values
        dup = srt[:, 1:] == srt[:, :-1]
    bad_alpha = ~torch.isfinite(alpha) if alpha is not None else None
    masks = (bad_base, bad_pos, dup, bad_alpha)
    flags = torch.stack([m.any() if m is not None else zero for m in masks]).tolist()
    if flags[0]:
        row = int(bad_base.nonzero()[0, 0])
        raise ValueError(f"LocalFusion: base must lie in [0, K={K}), got {int(base[row])} in row {row}")
    if flags[1]:
        row, col = bad_pos.nonzero()[0].tolist()
        bad = int(positions[row, col])
        raise ValueError(f"LocalFusion: positions must lie in [0, H*W={P}), got {bad} in row {row}")
    if flags[2]:
        row, col = dup.nonzero()[0].tolist()
        value = int(positions.sort(dim=1).values[row, col])
        raise ValueError(f"LocalFusion: positions must be distinct within each row; row {row} repeats {value}")
    if flags[3]:
        row, col = bad_alpha.nonzero()[0].tolist()
        raise ValueError(f"LocalFusion: alpha must be finite, got {float(alpha[row, col])} in row {row}, shot {col}")
