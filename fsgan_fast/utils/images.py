"""Image files <-> tensors and image grids, with PIL (torchvision is not a dependency).

Conventions: a decoded image is ``uint8 [3, H, W]`` RGB; model images are float in ``[-1, 1]``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | os.PathLike, size: int | None = None) -> Tensor:
    """Decode an image file to ``uint8 [3, H, W]`` RGB.

    With ``size``, the largest centred square is cropped and resized to ``size x size`` (Lanczos,
    which antialiases when shrinking), so any aspect ratio works without distortion.
    Raises ``ValueError`` naming the file when it cannot be read.
    """
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                w, h = im.size
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                im = im.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def to_uint8(images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Float images in ``value_range`` (clamped) to uint8 on the CPU; uint8 input passes through."""
    images = images.detach()
    if images.dtype == torch.uint8:
        return images.cpu()
    lo, hi = value_range
    scaled = (images.float() - lo) * (255.0 / (hi - lo))
    return scaled.round_().clamp_(0, 255).to(torch.uint8).cpu()


def save_image(image: Tensor, path: str | os.PathLike, value_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
    """Write one ``[3, H, W]`` (or ``[1, H, W]``) image; the format follows the file suffix."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"save_image expects [3, H, W] or [1, H, W], got {list(image.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = to_uint8(image, value_range).permute(1, 2, 0).numpy()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)
    return path


def make_grid(images: Tensor | Sequence[Tensor], nrow: int, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile ``[N, C, H, W]`` images into ``[C, H', W']``, ``nrow`` images per row, row-major.

    ``pad_value`` is in the images' own range (1.0 is white for images in [-1, 1]).
    """
    if not isinstance(images, Tensor):
        images = torch.stack(list(images))
    if images.dim() != 4:
        raise ValueError(f"make_grid expects [N, C, H, W], got {list(images.shape)}")
    N, C, H, W = images.shape
    if N == 0:
        raise ValueError("make_grid needs at least one image")
    ncol = max(1, min(nrow, N))
    rows = math.ceil(N / ncol)
    grid = images.new_full((C, rows * (H + padding) + padding, ncol * (W + padding) + padding), pad_value)
    for i in range(N):
        r, c = divmod(i, ncol)
        y, x = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, y : y + H, x : x + W] = images[i]
    return grid


def save_grid(
    images: Tensor, path: str | os.PathLike, nrow: int, value_range: tuple[float, float] = (-1.0, 1.0)
) -> Path:
    """:func:`make_grid` then :func:`save_image`, padding in white."""
    return save_image(make_grid(images, nrow, pad_value=value_range[1]), path, value_range)


__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "read_image", "to_uint8", "save_image", "make_grid", "save_grid"]
