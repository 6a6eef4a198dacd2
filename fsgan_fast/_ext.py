"""Loads the compiled extension ``fsgan_fast._C`` if it built; the ops work without it.

Importing ``_C`` registers the CPU/CUDA kernels (``TORCH_LIBRARY_IMPL``) of the private ops that
``fsgan_fast.ops`` defines. A failed load is logged once and reported by ``fsgan_fast.info()``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from types import ModuleType

import torch

log = logging.getLogger("fsgan_fast")

C: ModuleType | None = None
load_error: str | None = None


def load() -> None:
    global C, load_error
    if C is not None or load_error is not None:
        return
    if os.environ.get("FSGAN_FAST_DISABLE_EXT", "0") not in ("", "0"):
        load_error = "disabled by FSGAN_FAST_DISABLE_EXT"
        return
    try:
        C = importlib.import_module("fsgan_fast._C")
    except (ImportError, OSError) as exc:  # not built (FSGAN_FAST_BUILD_EXT=0) or ABI mismatch
        load_error = f"{type(exc).__name__}: {exc}"
        log.info("fsgan_fast._C not loaded: %s", load_error)


def built_with_cuda() -> bool:
    return C is not None and bool(C.cuda_built())


_kernels_found: set[tuple[str, str]] = set()


def has_kernel(private_op: str, dispatch_key: str) -> bool:
    # asked on every op call: a kernel once registered stays (~13 us per query otherwise); absence is asked
    # again, since the extension may register it later
    if (private_op, dispatch_key) in _kernels_found:
        return True
    if torch._C._dispatch_has_kernel_for_dispatch_key(f"fsgan_fast::{private_op}", dispatch_key):
        _kernels_found.add((private_op, dispatch_key))
        return True
    return False


def package_version() -> str:
    try:
        return importlib.metadata.version("fsgan-fast")
    except importlib.metadata.PackageNotFoundError:
        return "uninstalled"


def module_version(name: str) -> str | None:
    try:
        return importlib.import_module(name).__version__
    except ImportError:
        return None
