"""Triton kernels, one module per op; installed as ``fsgan_fast.kernels``. Pure functions, no dispatch."""
