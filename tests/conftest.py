"""Test-wide settings: poisoned allocations, and Triton under its CPU interpreter where there is no GPU.

Both variables must be set before fsgan_fast or triton are imported, hence at conftest import time.
"""

import os

import torch

os.environ.setdefault("FSGAN_FAST_POISON", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fsgan_fast  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _reset_backend_choice():
    fsgan_fast.set_backend(None)
    yield
    fsgan_fast.set_backend(None)
