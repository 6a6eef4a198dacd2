"""Reusable layers built on the hot-path ops."""

from fsgan_fast.nn.blocks import ActFirstResBlock, Conv2dBlock, kaiming_init_
from fsgan_fast.nn.local_fusion import LocalFusion, LocalFusionOutput
from fsgan_fast.nn.sle import SkipLayerExcitation

__all__ = ["LocalFusion", "LocalFusionOutput", "Conv2dBlock", "ActFirstResBlock", "kaiming_init_", "SkipLayerExcitation"]
