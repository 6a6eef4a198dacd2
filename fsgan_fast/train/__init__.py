"""Training: the shared trainer and run folder (:mod:`~fsgan_fast.train.base`), the loop
(:mod:`~fsgan_fast.train.loop`) and one small module per model for what is its own."""

from fsgan_fast.train.base import GANTrainer, RunDir, RunOptions, Stage, TrainConfig
from fsgan_fast.train.lofgan import PRESETS, LoFGANTrainConfig, LoFGANTrainer, load_lofgan, train_lofgan
from fsgan_fast.train.loop import CheckpointError, DistEnv, LoopConfig, RunError, fit, load_checkpoint

__all__ = [
    "CheckpointError",
    "DistEnv",
    "GANTrainer",
    "LoFGANTrainConfig",
    "LoFGANTrainer",
    "LoopConfig",
    "PRESETS",
    "RunDir",
    "RunError",
    "RunOptions",
    "Stage",
    "TrainConfig",
    "fit",
    "load_checkpoint",
    "load_lofgan",
    "train_lofgan",
]
