"""Reusable layers built on the hot-path ops."""

from fsgan_fast.nn.blocks import ActFirstResBlock, Conv2dBlock, kaiming_init_
from fsgan_fast.nn.local_fusion import LocalFusion, LocalFusionOutput
from fsgan_fast.nn.sle import SkipLayerExcitation
from fsgan_fast.nn.stylegan2 import StyleGAN2Config, StyleGAN2Generator, load_rosinality, save_rosinality

__all__ = ["LocalFusion", "LocalFusionOutput", "Conv2dBlock", "ActFirstResBlock", "kaiming_init_", "SkipLayerExcitation",
           "StyleGAN2Config", "StyleGAN2Generator", "load_rosinality", "save_rosinality"]
