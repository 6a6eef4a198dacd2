"""Unconditional image sets (FastGAN): one folder of images at any size, or the built-in photos.

Everything is decoded once into one ``uint8 [N, 3, S, S]`` tensor on the training device, so a batch is a
single gather (no DataLoader, no workers): a few hundred images at 1024 px are ~1 GB, which a GPU holds easily.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fsgan_fast.data.builtin import builtin_classes
from fsgan_fast.data.classes import _is, _listdir, from_array
from fsgan_fast.data.episodes import _same_device, to_model_range
from fsgan_fast.data.types import DatasetError
from fsgan_fast.utils.images import IMAGE_EXTENSIONS, is_image_file, read_image

# the built-in set: 25 random crops of each of four photos bundled with scikit-image (100 images, the size of
# FastGAN's "100-shot" datasets); a set of a few subjects learns visibly within minutes on a CPU
BUILTIN_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
BUILTIN_PER_PHOTO = 25


def builtin_images(size: int, seed: int = 0) -> Tensor:
    """``uint8 [100, 3, size, size]``: random square crops of :data:`BUILTIN_PHOTOS` (seeded, no download)."""
    return builtin_classes(size, per_class=BUILTIN_PER_PHOTO, seed=seed, photos=BUILTIN_PHOTOS).images


def _image_files(root: Path) -> list[Path]:
    """Image files under ``root``, searched recursively (a flat folder or one of sub-folders), sorted, hidden skipped."""
    found, stack = [], [root]
    while stack:
        folder = stack.pop()
        for entry in _listdir(folder, "image folder"):
            if entry.name.startswith("."):
                continue
            if _is("dir", entry):
                stack.append(entry)
            elif is_image_file(entry) and _is("file", entry):
                found.append(entry)
    return sorted(found)


def load_image_folder(root: str | os.PathLike, size: int, workers: int = 8) -> Tensor:
    """Every image file under ``root`` (sub-folders included), centre-cropped to a square and resized to ``size``."""
    root = Path(root)
    files = _image_files(root)
    if not files:
        raise DatasetError(f"no image files under {str(root)!r} (files ending in {', '.join(IMAGE_EXTENSIONS)})")
    return decode_images(files, size, f"under {str(root)!r}", workers)


def decode_images(files: list[Path], size: int, where: str, workers: int = 8) -> Tensor:
    """``uint8 [N, 3, size, size]`` of ``files`` (centre-cropped, resized), decoded on ``workers`` threads; a missing
    or unreadable file is a DatasetError naming how many and the first (``where``: "under 'DIR'", say)."""
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(files)} image files {where} are missing, the first: "
                           f"{str(missing[0])!r}")

    def read(f: Path) -> Tensor | ValueError:
        try:
            return read_image(f, size)
        except ValueError as e:
            return e

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:  # decoding releases the GIL
        images = list(pool.map(read, files))
    bad = [r for r in images if isinstance(r, ValueError)]
    if bad:
        many = f"{len(bad)} of {len(files)} image files {where} cannot be read, the first: "
        raise DatasetError(f"{many if len(bad) > 1 else ''}{bad[0]}") from bad[0]
    return torch.stack(images)


def load_images(spec: str | os.PathLike, size: int, seed: int = 0) -> Tensor:
    """``"builtin"``, a folder of images (searched recursively), or a ``.npy`` ``[N, H, W, 3]`` / ``[C, N, H, W, 3]``
    array, as ``uint8 [N, 3, size, size]``."""
    spec = os.fspath(spec)
    expected = "expected a folder of images, a .npy file, or 'builtin'"
    if spec == "builtin":
        return builtin_images(size, seed)
    if spec.lower().endswith(".npy"):
        return _load_npy_images(spec, size)
    if not os.path.exists(spec):
        raise DatasetError(f"dataset {spec!r} does not exist ({expected})")
    if not os.path.isdir(spec):
        raise DatasetError(f"dataset {spec!r} is a file but not .npy ({expected})")
    return load_image_folder(spec, size)


def _load_npy_images(path: str, size: int) -> Tensor:
    if not os.path.isfile(path):
        raise DatasetError(f"dataset {path!r} does not exist")
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {path!r} as a .npy array: {e}") from e
    if arr.ndim == 4:  # [N, H, W, 3]: one "class" for from_array, which reads it a chunk at a time
        arr = arr[None]
    return from_array(arr, size, path).images


class ImageSampler:
    """Draws batches ``[B, 3, S, S]`` float32 in [-1, 1] from ``images`` (uint8 ``[N, 3, S, S]``).

    Uniform with replacement, each image mirrored horizontally with probability 1/2 when ``flip`` (FastGAN's
    RandomHorizontalFlip). Every draw comes from ``generator`` (on the images' device), so a run replays exactly.
    """

    def __init__(self, images: Tensor, batch: int, *, generator: torch.Generator, flip: bool = True):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DatasetError(f"images must be uint8 [N, 3, S, S], got {images.dtype} {list(images.shape)}")
        if images.shape[0] == 0:
            raise DatasetError("the image set is empty")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if not _same_device(generator.device, images.device):
            raise ValueError(f"generator is on {generator.device} but the images are on {images.device}")
        self.images, self.batch, self.generator, self.flip = images, batch, generator, flip

    def sample(self) -> Tensor:
        g, dev = self.generator, self.images.device
        idx = torch.randint(self.images.shape[0], (self.batch,), generator=g, device=dev)
        x = to_model_range(self.images[idx])
        if self.flip:
            mirror = torch.rand(self.batch, generator=g, device=dev) < 0.5
            x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
        return x


__all__ = ["BUILTIN_PHOTOS", "ImageSampler", "builtin_images", "load_image_folder", "load_images"]
