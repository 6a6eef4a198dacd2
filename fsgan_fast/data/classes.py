"""Few-shot image classes: every image of every class in one uint8 tensor, and the seen/unseen split.

Sources: a folder with one sub-folder per class (any common image format), the official LoFGAN
``.npy`` layout ``[classes, images, H, W, 3]`` (uint8, or float in [0, 1]), or ``"builtin"``
(:mod:`fsgan_fast.data.builtin`, photos shipped with scikit-image).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast.data.builtin import builtin_classes
from fsgan_fast.data.types import DatasetError, ImageClasses
from fsgan_fast.utils.images import IMAGE_EXTENSIONS, is_image_file, read_image

# from_array converts this many values at a time (as float64 when checking floats: 32 MiB)
_CHUNK_VALUES = 1 << 22


def from_array(array: np.ndarray | Tensor, size: int | None = None, source: str = "array") -> ImageClasses:
    """``[classes, images, H, W, 3]`` uint8, or float in [0, 1], to :class:`ImageClasses` at ``size``.

    Converted (and resized) a chunk of images at a time, so a memory-mapped ``.npy`` is never copied
    whole. Raises :class:`DatasetError` naming ``source`` for another layout or dtype, NaN or infinite
    values (which would train on black pixels), or float values outside [0, 1].
    """
    if array.ndim != 5 or array.shape[-1] != 3:
        raise DatasetError(f"{source}: expected [classes, images, H, W, 3], got shape {list(array.shape)}")
    C, M, H, W, _ = array.shape
    if C == 0 or M == 0 or H == 0 or W == 0:
        raise DatasetError(f"{source}: no images (shape {list(array.shape)})")
    if isinstance(array, Tensor):
        is_float, ok = array.is_floating_point(), array.dtype == torch.uint8 or array.is_floating_point()
    else:
        is_float = bool(np.issubdtype(array.dtype, np.floating))
        ok = is_float or array.dtype == np.uint8
    if not ok:
        raise DatasetError(f"{source}: dtype must be uint8 or float in [0, 1], got {array.dtype}")
    N = C * M
    flat = array.reshape(N, H, W, 3)  # a view of a memory-mapped file: chunks are read in below
    out_h, out_w = (size, size) if size is not None else (H, W)
    out = torch.empty(N, 3, out_h, out_w, dtype=torch.uint8)
    step = max(1, _CHUNK_VALUES // (H * W * 3))
    n_nan = n_inf = 0
    first_bad = -1
    lo, hi = math.inf, -math.inf
    for start in range(0, N, step):
        part = _host_chunk(flat[start : start + step], np.float64 if is_float else np.uint8)
        if is_float:
            x = part.double()
            finite = torch.isfinite(x)
            if not bool(finite.all()):
                nan = int(torch.isnan(x).sum())
                n_nan, n_inf = n_nan + nan, n_inf + int((~finite).sum()) - nan
                if first_bad < 0:
                    first_bad = start + int((~finite).flatten(1).any(1).nonzero()[0])
                x = x[finite]
            if x.numel():
                lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
            if n_nan or n_inf or lo < -1e-3 or hi > 1 + 1e-3:
                continue  # an error is coming: only gather its statistics
            part = (x * 255).round_().clamp_(0, 255).to(torch.uint8)
        part = part.permute(0, 3, 1, 2)
        if size is not None and (H, W) != (size, size):
            part = resize_uint8(part, size)
        out[start : start + step] = part
    if n_nan or n_inf:
        c, m = divmod(first_bad, M)
        raise DatasetError(
            f"{source}: {n_nan + n_inf} of {N * H * W * 3} values are not finite ({n_nan} NaN, {n_inf} inf), "
            f"the first in class {c} image {m}; float images must lie in [0, 1]"
        )
    if lo < -1e-3 or hi > 1 + 1e-3:
        hint = "; divide 0..255 data by 255, or save it as uint8" if 1 < hi <= 255 and lo >= 0 else ""
        raise DatasetError(f"{source}: float images must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]{hint}")
    return ImageClasses(out, torch.full((C,), M, dtype=torch.int64), [f"class_{c:04d}" for c in range(C)], source)


def _host_chunk(part: np.ndarray | Tensor, dtype: type) -> Tensor:
    """A CPU tensor of ``part``; numpy data as ``dtype``, in native byte order (torch rejects big-endian)."""
    if isinstance(part, Tensor):
        return part.detach().cpu()
    return torch.from_numpy(np.array(part, dtype=dtype))  # a copy: memory-mapped pages are read-only


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
    """The official LoFGAN ``.npy`` layout (e.g. ``flower_c8189_s128_data_rgb.npy``); see :func:`from_array`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {str(path)!r} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {str(path)!r} as a .npy array: {e}") from e
    if not isinstance(array, np.ndarray):  # np.load opens a zip (.npz) whatever its suffix
        array.close()
        raise DatasetError(f"{str(path)!r} is a .npz archive, not a .npy array: save one array with np.save")
    return from_array(array, size, source=str(path))


def _listdir(folder: Path, what: str) -> list[Path]:
    """Sorted entries of ``folder``, or a :class:`DatasetError` (permissions, I/O) naming it."""
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        raise DatasetError(f"cannot list {what} {str(folder)!r}: {e.strerror or e}") from e


def _is(kind: str, path: Path) -> bool:
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except OSError as e:  # e.g. a folder that can be listed but not searched
        raise DatasetError(f"cannot access {str(path)!r}: {e.strerror or e}") from e


def load_class_folders(root: str | os.PathLike, size: int, workers: int = 8) -> ImageClasses:
    """One sub-folder of ``root`` per class (sorted by name); every image file in it, resized to ``size``.

    Images are centre-cropped to a square first (:func:`fsgan_fast.utils.images.read_image`). Hidden
    folders and files (``.*``, e.g. macOS ``._x.jpg`` companions) and files without an image suffix are
    ignored; nested folders are not searched. Raises :class:`DatasetError` for an unreadable folder, a
    class folder without images, or image files that cannot be decoded (all of them counted, the first named).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist")
    entries = _listdir(root, "dataset folder")
    folders = [p for p in entries if not p.name.startswith(".") and _is("dir", p)]
    if not folders:
        loose = sum(1 for p in entries if is_image_file(p) and _is("file", p))
        hint = f"; it holds {loose} image files itself: pass its parent folder" if loose else ""
        raise DatasetError(f"no class folders in {str(root)!r}: expected one sub-folder of images per class{hint}")
    files, empty = [], []
    for d in folders:
        listed = [f for f in _listdir(d, "class folder") if not f.name.startswith(".") and _is("file", f)]
        images = [f for f in listed if is_image_file(f)]
        files.append(images)
        if not images:
            # else an empty class fails later in check_shots if seen, and is silently useless if unseen
            n = len(listed)
            empty.append(f"{d.name!r} ({n} other file{'s' * (n != 1)})" if n else f"{d.name!r} (empty)")
    if empty:
        raise DatasetError(
            f"{len(empty)} of {len(folders)} class folders of {str(root)!r} have no image files: "
            f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}; images are files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} directly inside the class folder"
        )
    flat = [f for per_class in files for f in per_class]

    def read(f: Path) -> Tensor | ValueError:
        try:
            return read_image(f, size)
        except ValueError as e:
            return e

    # decoding releases the GIL, so threads overlap it without worker processes
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        images = list(pool.map(read, flat))
    bad = [r for r in images if isinstance(r, ValueError)]
    if bad:
        many = f"{len(bad)} of {len(flat)} image files in {str(root)!r} cannot be read, the first: "
        raise DatasetError(f"{many if len(bad) > 1 else ''}{bad[0]}") from bad[0]
    counts = torch.tensor([len(per_class) for per_class in files], dtype=torch.int64)
    return ImageClasses(torch.stack(images), counts, [d.name for d in folders], str(root))


def load_classes(spec: str | os.PathLike, size: int, seed: int = 0) -> ImageClasses:
    """``"builtin"``, a ``.npy`` file, or a folder of class folders, at ``size`` pixels."""
    spec = os.fspath(spec)
    expected = "expected a folder of class folders, a .npy file, or 'builtin'"
    if spec == "builtin":
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
