"""Datasets: few-shot image classes (folders, official .npy, built-in photos) and k-shot episodes.

No import cycle: ``types`` (ImageClasses, DatasetError) imports no other data module, ``builtin`` and
``episodes`` import ``types``, and ``classes`` imports ``types`` and ``builtin``.
"""

from fsgan_fast.data.builtin import PHOTOS, builtin_classes
from fsgan_fast.data.classes import (
    ClassSplit,
    from_array,
    load_class_folders,
    load_classes,
    load_npy,
    split_classes,
)
from fsgan_fast.data.episodes import EpisodeSampler, to_model_range
from fsgan_fast.data.types import DatasetError, ImageClasses

__all__ = [
    "ClassSplit",
    "DatasetError",
    "EpisodeSampler",
    "ImageClasses",
    "PHOTOS",
    "builtin_classes",
    "from_array",
    "load_class_folders",
    "load_classes",
    "load_npy",
    "split_classes",
    "to_model_range",
]
