"""Output allocation for Python-launched kernels: :mod:`fsgan_fast.kernels._alloc`, which the (pure) kernels
import themselves; re-exported here for the ops."""

from fsgan_fast.kernels._alloc import empty, poisoned

__all__ = ["empty", "poisoned"]
