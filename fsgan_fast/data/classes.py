"""Few-shot image classes: every image of every class in one uint8 tensor, and the seen/unseen split.

Sources: a folder with one sub-folder per class (any common image format), the official LoFGAN
``.npy`` layout ``[classes, images, H, W, 3]`` (uint8, or float in [0, 1]), or ``"builtin"``
(:mod:`fsgan_fast.data.builtin`, photos shipped with scikit-image).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast.utils.images import is_image_file, read_image


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
        if len(self.names) != len(self.counts):
            raise DatasetError(f"{len(self.names)} class names for {len(self.counts)} classes")
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


def from_array(array: np.ndarray | Tensor, size: int | None = None, source: str = "array") -> ImageClasses:
    """``[classes, images, H, W, 3]`` uint8, or float in [0, 1], to :class:`ImageClasses` at ``size``."""
    if array.ndim != 5 or array.shape[-1] != 3:
        raise DatasetError(f"{source}: expected [classes, images, H, W, 3], got shape {list(array.shape)}")
    C, M, H, W, _ = array.shape
    if C == 0 or M == 0:
        raise DatasetError(f"{source}: no images (shape {list(array.shape)})")
    x = torch.as_tensor(np.array(array)).reshape(C * M, H, W, 3)  # a copy: reads a memory-mapped file in
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise DatasetError(f"{source}: dtype must be uint8 or float in [0, 1], got {x.dtype}")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise DatasetError(f"{source}: float images must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]")
        x = (x.float() * 255).round_().clamp_(0, 255).to(torch.uint8)
    x = x.permute(0, 3, 1, 2).contiguous()
    if size is not None and (H, W) != (size, size):
        x = resize_uint8(x, size)
    return ImageClasses(x, torch.full((C,), M, dtype=torch.int64), [f"class_{c:04d}" for c in range(C)], source)


def resize_uint8(images: Tensor, size: int, chunk: int = 256) -> Tensor:
    """Antialiased bilinear resize of ``uint8 [N, 3, H, W]`` to ``size x size``, in chunks to bound memory."""
    out = [
        F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for part in images.split(chunk)
    ]
    return torch.cat(out)


def load_npy(path: str | os.PathLike, size: int | None = None) -> ImageClasses:
    """The official LoFGAN ``.npy`` layout (e.g. ``flower_c8189_s128_data_rgb.npy``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {str(path)!r} does not exist")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {str(path)!r} as a .npy array: {e}") from e
    return from_array(array, size, source=str(path))


def load_class_folders(root: str | os.PathLike, size: int, workers: int = 8) -> ImageClasses:
    """One sub-folder of ``root`` per class (sorted by name); every image file in it, resized to ``size``.

    Images are centre-cropped to a square first (:func:`fsgan_fast.utils.images.read_image`). Hidden
    folders and non-image files are ignored; an unreadable image raises :class:`DatasetError`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"no class folders in {str(root)!r}: expected one sub-folder of images per class")
    files = [sorted(f for f in d.iterdir() if f.is_file() and is_image_file(f)) for d in folders]
    flat = [f for per_class in files for f in per_class]
    if not flat:
        raise DatasetError(f"no image files in the class folders of {str(root)!r}")
    # decoding releases the GIL, so threads overlap it without worker processes
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            images = list(pool.map(lambda f: read_image(f, size), flat))
        except ValueError as e:
            raise DatasetError(str(e)) from e
    counts = torch.tensor([len(per_class) for per_class in files], dtype=torch.int64)
    return ImageClasses(torch.stack(images), counts, [d.name for d in folders], str(root))


def load_classes(spec: str, size: int, seed: int = 0) -> ImageClasses:
    """``"builtin"``, a ``.npy`` file, or a folder of class folders, at ``size`` pixels."""
    expected = "expected a folder of class folders, a .npy file, or 'builtin'"
    if spec == "builtin":
        from fsgan_fast.data.builtin import builtin_classes

        return builtin_classes(size, seed=seed)
    if spec.lower().endswith(".npy"):
        return load_npy(spec, size)
    if not os.path.exists(spec):
        raise DatasetError(f"dataset {spec!r} does not exist ({expected})")
    if not os.path.isdir(spec):
        raise DatasetError(f"dataset {spec!r} is a file but not .npy ({expected})")
    return load_class_folders(spec, size)


# ---------------------------------------------------------------------------------------------------
# Seen / unseen split


@dataclasses.dataclass
class ClassSplit:
    """Which classes train the model (seen) and which are held out for few-shot evaluation (unseen)."""

    seen: list[int]
    unseen: list[int]
    names: list[str]
    mode: str
    seed: int

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "seed": self.seed,
            "seen": self.seen,
            "unseen": self.unseen,
            "seen_names": [self.names[c] for c in self.seen],
            "unseen_names": [self.names[c] for c in self.unseen],
            "names": self.names,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ClassSplit":
        return cls(list(d["seen"]), list(d["unseen"]), list(d["names"]), d["mode"], int(d["seed"]))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, names: Sequence[str] | None = None) -> "ClassSplit":
        """Read a saved split; with ``names``, check that it was made for these classes."""
        split = cls.from_dict(json.loads(Path(path).read_text()))
        if names is not None and list(names) != split.names:
            raise DatasetError(
                f"the split saved in {str(path)!r} was made for {len(split.names)} other classes "
                f"({', '.join(split.names[:3])}...), not the {len(names)} classes of this dataset"
            )
        return split


def split_classes(names: Sequence[str], seen: int | None = None, *, mode: str = "random", seed: int = 0) -> ClassSplit:
    """Split classes into ``seen`` training classes and the unseen rest.

    ``mode="random"`` shuffles with ``seed``; ``mode="first"`` takes the first ``seen`` classes, as the
    official LoFGAN code does with its ``.npy`` files (flower: 85, animal: 119, vggface: 1802).
    ``seen`` defaults to 80% of the classes (at least one).
    """
    C = len(names)
    if C == 0:
        raise DatasetError("no classes to split")
    n_seen = max(1, round(0.8 * C)) if seen is None else seen
    if not 1 <= n_seen <= C:
        raise DatasetError(f"seen must be between 1 and the number of classes ({C}), got {n_seen}")
    if mode == "first":
        order = list(range(C))
    elif mode == "random":
        order = torch.randperm(C, generator=torch.Generator().manual_seed(seed)).tolist()
    else:
        raise ValueError(f"split mode must be 'random' or 'first', got {mode!r}")
    return ClassSplit(sorted(order[:n_seen]), sorted(order[n_seen:]), list(names), mode, seed)


__all__ = [
    "DatasetError",
    "ImageClasses",
    "ClassSplit",
    "from_array",
    "resize_uint8",
    "load_npy",
    "load_class_folders",
    "load_classes",
    "split_classes",
]
