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

        Given indices are validated (a host sync on a GPU) unless ``check_indices=False``; drawn ones never
        need it. Callers that drew them with :meth:`sample` themselves pass ``check_indices=False``.
        """
        if not isinstance(feats, Tensor) or feats.dim() != 5:
            raise ValueError(f"LocalFusion expects feats of shape [B, K, C, H, W], got {getattr(feats, 'shape', feats)}")
        B, K, C, H, W = feats.shape
        given = base is not None and positions is not None and alpha is not None
        if not given:
            s_base, s_pos, s_alpha = self.sample(B, K, H, W, feats.device, generator)
            base = s_base if base is None else base
            positions = s_pos if positions is None else positions
            alpha = s_alpha if alpha is None else alpha
        check = given if check_indices is None else check_indices
        fused, ref_idx = lfm_fuse(feats, base, positions, alpha, backend=self.backend, check_indices=check)
        return LocalFusionOutput(fused, base, positions, ref_idx, alpha)
