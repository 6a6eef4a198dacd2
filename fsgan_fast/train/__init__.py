"""Training: the shared loop (:mod:`fsgan_fast.train.loop`) and one trainer per model."""

from fsgan_fast.train.lofgan import PRESETS, LoFGANTrainConfig, LoFGANTrainer, load_lofgan, train_lofgan
from fsgan_fast.train.loop import CheckpointError, DistEnv, LoopConfig, fit, load_checkpoint

__all__ = [
    "CheckpointError",
    "DistEnv",
    "LoFGANTrainConfig",
    "LoFGANTrainer",
    "LoopConfig",
    "PRESETS",
    "fit",
    "load_checkpoint",
    "load_lofgan",
    "train_lofgan",
]
