"""A built-in few-shot dataset that needs no download: each scikit-image photo is one class.

A class's images are random square crops of its photo at random scales, resized to the model size.
Everything is drawn from one seeded generator, so the dataset is identical on every machine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fsgan_fast.data.types import ImageClasses

# photos bundled in the scikit-image wheel (no pooch download); grey ones are repeated over RGB
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "clock",
    "retina",
    "colorwheel",
    "brick",
    "grass",
    "gravel",
    "cell",
)
# crop side as a fraction of the photo's shorter side
MIN_SCALE, MAX_SCALE = 0.35, 0.85


def _photo(name: str) -> torch.Tensor:
    from skimage import data as skdata

    arr = np.asarray(getattr(skdata, name)())
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1).float()


def builtin_classes(size: int = 64, per_class: int = 32, seed: int = 0, photos: tuple[str, ...] = PHOTOS) -> ImageClasses:
    """One class per photo of ``photos`` (default :data:`PHOTOS`), ``per_class`` crops each, ``size x size`` pixels."""
    gen = torch.Generator().manual_seed(seed)
    images = []
    for name in photos:
        photo = _photo(name)
        _, H, W = photo.shape
        for _ in range(per_class):
            side = int(min(H, W) * (MIN_SCALE + (MAX_SCALE - MIN_SCALE) * torch.rand((), generator=gen).item()))
            y = int(torch.randint(H - side + 1, (), generator=gen))
            x = int(torch.randint(W - side + 1, (), generator=gen))
            crop = photo[None, :, y : y + side, x : x + side]
            resized = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            images.append(resized[0])
    stacked = torch.stack(images).round_().clamp_(0, 255).to(torch.uint8)
    counts = torch.full((len(photos),), per_class, dtype=torch.int64)
    return ImageClasses(stacked, counts, list(photos), source="builtin")


__all__ = ["PHOTOS", "builtin_classes"]
