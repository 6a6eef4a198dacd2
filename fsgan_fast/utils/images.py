"""Image files <-> tensors and image grids, with PIL (torchvision is not a dependency).

Conventions: a decoded image is ``uint8 [3, H, W]`` RGB; model images are float in ``[-1, 1]``.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import warnings
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive); the content is not read."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# Image.open is where PIL checks the pixel count against Image.MAX_IMAGE_PIXELS; its warning (over the
# limit) is turned into an error there. warnings.catch_warnings swaps process-wide state, so concurrent
# read_image calls (load_class_folders decodes in threads) take turns; only the header parse is held.
_OPEN_LOCK = threading.Lock()


PIXEL_LIMIT_ENV = "FSGAN_FAST_MAX_IMAGE_PIXELS"  # the CLI user's way to raise PIL's bomb limit ("none": no limit)
_KEEP = object()


def _pixel_limit() -> object:
    value = os.environ.get(PIXEL_LIMIT_ENV)
    if value is None or not value.strip():
        return _KEEP
    if value.strip().lower() in ("none", "off"):
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"{PIXEL_LIMIT_ENV} must be a positive pixel count or 'none', got {value!r}")
    return limit


def _open(path: str | os.PathLike) -> Image.Image:
    limit = _pixel_limit()
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        if limit is not _KEEP:
            Image.MAX_IMAGE_PIXELS = limit  # restored below: the lock keeps other loaders of ours out meanwhile
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _int_bits(im: Image.Image, arr: np.ndarray) -> int:
    """Bit depth of an integer image: a TIFF's BitsPerSample, else 16 for "I;16*", else ("I", 32-bit)
    16 when the values fit (16-bit PNG and PGM open as "I") and 31 (PIL's int32) when they do not."""
    tag = getattr(im, "tag_v2", None)
    bits = tag.get(258) if tag is not None else None  # BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    if isinstance(bits, int) and 1 <= bits <= 32:
        return min(bits, 31)
    if im.mode.startswith("I;16"):
        return 16
    return 16 if arr.size == 0 or int(arr.max()) <= 0xFFFF else 31


def _to_8bit(im: Image.Image) -> Image.Image:
    """An 8-bit "L" or "RGB" image. High-bit-depth grey is scaled by its full range, not clipped at 255.

    ``convert("RGB")`` clips "I;16" / "I" values at 255 (a 16-bit image turns white) and "F" values the
    same way, so those modes are scaled here: 16 bits by 1/257, "I" by its bit depth, float from [0, 1]
    (or [0, 255] when some value exceeds 1). Every other mode (1, L, P, LA, RGBA, CMYK, ...) keeps PIL's
    conversion. Raises ``ValueError`` for negative, non-finite or out-of-range values.
    """
    if im.mode in ("L", "RGB"):
        return im
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im.convert("RGB")
    arr = np.asarray(im)
    if im.mode == "F":
        if not np.isfinite(arr).all():
            raise ValueError(f"float image has {int((~np.isfinite(arr)).sum())} NaN/inf pixels")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise ValueError(f"float image values span [{lo:.4g}, {hi:.4g}]; expected [0, 1] or [0, 255]")
        scaled = arr.astype(np.float64) * (255.0 if hi <= 1.0 else 1.0)
    else:
        # "I;16", "I;16B", "I;16L", "I;16N" are unsigned 16-bit; plain "I" is int32 of some bit depth
        bits = _int_bits(im, arr)
        arr = arr.astype(np.int64)
        if arr.size and int(arr.min()) < 0:
            raise ValueError(f"{im.mode} image has negative values (min {int(arr.min())}); expected unsigned data")
        top = (1 << bits) - 1
        if arr.size and int(arr.max()) > top:
            raise ValueError(f"{im.mode} image has values up to {int(arr.max())}, over its {bits}-bit range")
        scaled = arr * (255.0 / top)  # 16 bits: value / 257
    return Image.fromarray(np.rint(scaled).clip(0, 255).astype(np.uint8))  # 2-D uint8: mode "L"


def read_image(path: str | os.PathLike, size: int | None = None) -> Tensor:
    """Decode an image file to ``uint8 [3, H, W]`` RGB.

    With ``size``, the largest centred square is cropped and resized to ``size x size`` (Lanczos,
    which antialiases when shrinking), so any aspect ratio works without distortion. 16-bit, 32-bit
    and float greyscale images are scaled to 8 bits over their full range; grey becomes RGB.
    Raises ``ValueError`` naming the file when it cannot be read: not an image, truncated, values that
    do not map to 8 bits, or more pixels than PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    try:
        with _open(path) as im:
            im = _to_8bit(im).convert("RGB")
            if size is not None:
                w, h = im.size
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                im = im.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
            arr = np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(
            f"cannot read image {str(path)!r}: {e} If the file is trusted, set {PIXEL_LIMIT_ENV}=<pixels> (or "
            f"'none') for the command line, or raise PIL.Image.MAX_IMAGE_PIXELS in Python (now "
            f"{Image.MAX_IMAGE_PIXELS}; None disables the check); or downscale the image"
        ) from e
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as e:
        # truncated or corrupt files raise OSError mostly, but some decoders leak the others
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
