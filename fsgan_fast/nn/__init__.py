"""Reusable layers built on the hot-path ops."""

from fsgan_fast.nn.local_fusion import LocalFusion, LocalFusionOutput

__all__ = ["LocalFusion", "LocalFusionOutput"]
