"""Hot-path ops: one module per op, each with its reference, custom op and public function."""

from fsgan_fast.ops.lfm import lfm_apply, lfm_fuse, lfm_similarity

__all__ = ["lfm_fuse", "lfm_apply", "lfm_similarity"]
