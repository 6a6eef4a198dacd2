"""Hot-path ops: one module per op, each with its reference, custom op and public function."""

from fsgan_fast.ops.bias_act import bias_act
from fsgan_fast.ops.crop_resize import crop_resize, crop_resize_indexed
from fsgan_fast.ops.cosine_topk import cosine_topk
from fsgan_fast.ops.imresize import imresize
from fsgan_fast.ops.lfm import lfm_apply, lfm_fuse, lfm_similarity
from fsgan_fast.ops.masked_avg_pool import Prototypes, masked_avg_pool
from fsgan_fast.ops.patch_grid import grid_boxes, patch_grid, sample_patch_pairs
from fsgan_fast.ops.pyramid import Pyramid, build_pyramid, pyramid_blend, pyramid_inject
from fsgan_fast.ops.sle_gate import sle_gate

__all__ = [
    "masked_avg_pool",
    "Prototypes",
    "cosine_topk",
    "lfm_fuse",
    "lfm_apply",
    "lfm_similarity",
    "sle_gate",
    "imresize",
    "pyramid_inject",
    "pyramid_blend",
    "build_pyramid",
    "Pyramid",
    "crop_resize",
    "crop_resize_indexed",
    "patch_grid",
    "grid_boxes",
    "sample_patch_pairs",
    "bias_act",
]
