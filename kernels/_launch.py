"""What every Triton launcher shares: the traceable launch, the device guard, block sizes of traced sizes.

A launcher is the body of a ``torch.library.triton_op`` (registered in ``fsgan_fast/ops/``), so its Python
runs eagerly on real tensors and, when make_fx / torch.export / Inductor trace the op, on fake tensors
whose sizes may be symbolic: it must not hash, branch on or ``int()`` a size it does not need concrete.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.fx.experimental import symbolic_shapes
from triton.runtime.autotuner import Autotuner, Heuristics
from triton.runtime.jit import JITFunction

# a size's example value, without a guard on it: torch 2.11 calls it size_hint, later ones optimization_hint
_hint_of = getattr(symbolic_shapes, "optimization_hint", None) or symbolic_shapes.size_hint


def interpreted() -> bool:
    """Whether Triton's CPU interpreter runs the kernels (``TRITON_INTERPRET=1`` when they were decorated)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def wrap_triton(kernel):
    """``torch.library.wrap_triton(kernel)``, so that tracing records the launch; eagerly, inside a triton_op, it
    is the kernel itself. The interpreter's kernels (also under ``@triton.autotune``) are not ``JITFunction``s,
    which ``wrap_triton`` refuses in torch 2.11: they launch as they are (their ops are opaque custom ops, never
    traced into).

    Named like torch's function on purpose: ``triton_op`` finds a launcher's kernels by scanning its source for
    calls ``wrap_triton(<kernel>)``, and hashes their source into torch.compile's (AOTAutograd) cache keys.
    """
    inner = kernel
    while isinstance(inner, (Autotuner, Heuristics)):
        inner = inner.fn
    return torch.library.wrap_triton(kernel) if isinstance(inner, JITFunction) else kernel


def size_hint(size) -> int:
    """``size`` as an int for choosing block sizes: a traced (symbolic) size gives its example value without
    guarding on it, so a compiled graph stays dynamic in it. Only for kernels that mask every tile, where a
    block size changes the speed and never the result."""
    return size if isinstance(size, int) else _hint_of(size, fallback=64)


def device_of(t: torch.Tensor):
    """A context that makes ``t``'s GPU current: Triton launches on the current device (inputs on cuda:1 while
    cuda:0 is current). The usual case, already current, skips the context manager's cost on this
    microsecond-scale path."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


__all__ = ["device_of", "interpreted", "size_hint", "wrap_triton"]
