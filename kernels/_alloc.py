"""Output buffers of the Triton launchers (re-exported as ``fsgan_fast.ops._alloc``).

With ``FSGAN_FAST_POISON=1`` (the test suite sets it) new buffers are filled with NaN (integers with
-1), so a kernel that forgets to write an element fails the comparison instead of passing on a zero.
"""

from __future__ import annotations

import os

import torch


def poisoned() -> bool:
    """Whether new buffers are poisoned (``FSGAN_FAST_POISON``, read at each call)."""
    return os.environ.get("FSGAN_FAST_POISON", "0") not in ("", "0")


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty``, NaN- or -1-filled when :func:`poisoned`."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if poisoned():
        out.fill_(float("nan") if dtype.is_floating_point else -1)
    return out


__all__ = ["empty", "poisoned"]
