"""Hot-path ops: one module per op, each with its reference, custom op and public function."""

from fsgan_fast.ops.imresize import imresize
from fsgan_fast.ops.lfm import lfm_apply, lfm_fuse, lfm_similarity
from fsgan_fast.ops.pyramid import Pyramid, build_pyramid, pyramid_blend, pyramid_inject
from fsgan_fast.ops.sle_gate import sle_gate

__all__ = [
    "lfm_fuse",
    "lfm_apply",
    "lfm_similarity",
    "sle_gate",
    "imresize",
    "pyramid_inject",
    "pyramid_blend",
    "build_pyramid",
    "Pyramid",
]
