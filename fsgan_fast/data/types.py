"""The types every data module shares: :class:`ImageClasses` and :class:`DatasetError`.

They live here, below :mod:`~fsgan_fast.data.classes`, :mod:`~fsgan_fast.data.builtin` and
:mod:`~fsgan_fast.data.episodes`, so that those modules import only downwards (no import cycle).
Every name is re-exported from :mod:`fsgan_fast.data` and :mod:`fsgan_fast.data.classes`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import Tensor


class DatasetError(ValueError):
    """The dataset is missing, unreadable, or cannot feed the requested episodes."""


@dataclasses.dataclass
class ImageClasses:
    """Images grouped by class, stored class after class in one ``uint8 [N, 3, S, S]`` tensor.

    Keeping everything in one tensor (on the training device) makes an episode a single gather:
    no DataLoader, no workers. ``counts[c]`` images of class ``c`` start at ``offsets[c]``.
    """

    images: Tensor  # [N, 3, S, S] uint8
    counts: Tensor  # [C] int64
    names: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise DatasetError(f"images must be uint8 [N, 3, S, S], got {self.images.dtype} {list(self.images.shape)}")
        if self.counts.dim() != 1:
            raise DatasetError(f"counts must be 1-D [classes], got shape {list(self.counts.shape)}")
        if len(self.names) != len(self.counts):
            raise DatasetError(f"{len(self.names)} class names for {len(self.counts)} classes")
        # a negative count would shift every later class's offset: images silently attributed to the wrong class
        if len(self.counts) and int(self.counts.min()) < 0:
            raise DatasetError(f"class counts must be >= 0, got {self.counts.tolist()[:10]}")
        if int(self.counts.sum()) != self.images.shape[0]:
            raise DatasetError(
                f"class counts sum to {int(self.counts.sum())} but there are {self.images.shape[0]} images"
            )
        self.counts = self.counts.to(torch.int64)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def offsets(self) -> Tensor:
        return torch.cumsum(self.counts, 0) - self.counts

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> "ImageClasses":
        """The same classes with images and counts on ``device``."""
        return dataclasses.replace(self, images=self.images.to(device), counts=self.counts.to(device))

    def class_images(self, c: int) -> Tensor:
        """``uint8 [counts[c], 3, S, S]`` images of class ``c``."""
        start = int(self.offsets[c])
        return self.images[start : start + int(self.counts[c])]

    def select(self, classes: Sequence[int]) -> "ImageClasses":
        """The given classes only, re-indexed ``0..len(classes)-1`` in the given order."""
        classes = list(classes)
        if not classes:
            raise DatasetError(f"selecting no classes from {self.source or 'the dataset'}")
        return ImageClasses(
            torch.cat([self.class_images(c) for c in classes]),
            self.counts[classes].clone(),
            [self.names[c] for c in classes],
            self.source,
        )

    def check_shots(self, shots: int) -> None:
        """Raise :class:`DatasetError` naming every class with fewer than ``shots`` images."""
        if self.num_classes == 0:
            raise DatasetError(f"no classes in {self.source or 'the dataset'}")
        small = [f"{n!r} ({int(c)})" for n, c in zip(self.names, self.counts.tolist()) if c < shots]
        if small:
            raise DatasetError(
                f"episodes need {shots} distinct images per class, but {len(small)} class(es) of "
                f"{self.source or 'the dataset'} have fewer: {', '.join(small[:10])}{' ...' if len(small) > 10 else ''}"
            )


__all__ = ["DatasetError", "ImageClasses"]
