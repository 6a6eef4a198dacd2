"""Two-domain image sets for unpaired image-to-image translation (OP-GAN): domains A and B, no pairing needed.

Sources (:func:`load_two_domains`):

- ``"builtin"``: no download. Random square crops of four scikit-image photos (the FastGAN built-in set), split
  alternately into two halves; domain A is the first half as it is, domain B the second half through
  :func:`builtin_transform`, a fixed colour and texture change. The domains share subjects but no image, so
  training is truly unpaired; because B is a known function of A, the set also carries the exact translation
  of every A image (``target_ab``), the ground truth that a translation can be scored against.
- a folder holding ``trainA/`` and ``trainB/`` (the CycleGAN dataset layout; ``testA/``, ``testB/`` are not read);
- two folders, one per domain (``data_b=``; ``--data-b`` on the command line).

Folders are searched recursively; every image is centre-cropped to a square and resized to ``size``, then kept
as ``uint8 [N, 3, size, size]`` on the training device, so a batch is one gather per domain (as
:mod:`fsgan_fast.data.image_set`, whose loader and sampler this module reuses).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast.data.image_set import ImageSampler, builtin_images, load_image_folder
from fsgan_fast.data.types import DatasetError

DOMAIN_FOLDERS = ("trainA", "trainB")  # CycleGAN's layout

# builtin_transform: a hue rotation by 120 degrees (R, G, B) <- (B, R, G), a gamma that brightens mid-tones, and an
# unsharp mask (3x3 box blur, amount 1) that hardens every edge. Each step is a fixed, invertible-in-practice map
# that a ResNet generator can represent: a colour change any pixel shows and a texture change only neighbourhoods show.
HUE_ORDER = (2, 0, 1)
GAMMA = 0.75
SHARPEN = 1.0


@dataclasses.dataclass
class TwoDomains:
    """Images of domains A and B, ``uint8 [N_a, 3, S, S]`` and ``uint8 [N_b, 3, S, S]``.

    ``target_ab``: the exact B-domain version of every A image when the domains are related by a known transform
    (the built-in set), else None.
    """

    a: Tensor
    b: Tensor
    source: str
    target_ab: Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("a", "b"):
            x = getattr(self, name)
            if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
                shown = f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
                raise DatasetError(f"domain {name.upper()} must be uint8 images [N, 3, S, S], got {shown}")
            if x.shape[0] == 0:
                raise DatasetError(f"domain {name.upper()} of {self.source or 'the dataset'} holds no images")
        if self.a.shape[2:] != self.b.shape[2:]:
            raise DatasetError(f"the domains must have one image size, got A {list(self.a.shape[2:])} and "
                               f"B {list(self.b.shape[2:])}")
        if self.target_ab is not None and self.target_ab.shape != self.a.shape:
            raise DatasetError(f"target_ab must match domain A's shape {list(self.a.shape)}, got "
                               f"{list(self.target_ab.shape)}")

    @property
    def size(self) -> int:
        return self.a.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.a.device

    def to(self, device: torch.device | str) -> TwoDomains:
        target = None if self.target_ab is None else self.target_ab.to(device)
        return dataclasses.replace(self, a=self.a.to(device), b=self.b.to(device), target_ab=target)

    def domain(self, name: str) -> Tensor:
        """The images of domain ``"a"`` or ``"b"``."""
        if name not in ("a", "b"):
            raise ValueError(f"domain must be 'a' or 'b', got {name!r}")
        return self.a if name == "a" else self.b


# ---------------------------------------------------------------------------------------------------
# The built-in pair of domains


def builtin_transform(images: Tensor) -> Tensor:
    """Domain A -> domain B of the built-in set: ``uint8 [N, 3, S, S]`` (or float in [0, 1], returned as float) through
    the hue rotation ``(R, G, B) <- (B, R, G)``, the gamma ``x ** 0.75`` and an unsharp mask
    ``x + 1.0 * (x - box3x3(x))`` with replicated borders, clamped to [0, 1]."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shown = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be [N, 3, S, S], got {shown}")
    as_uint8 = images.dtype == torch.uint8
    if not as_uint8 and not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating in [0, 1], got dtype {images.dtype}")
    x = images.float() / 255.0 if as_uint8 else images.float()
    x = x[:, list(HUE_ORDER)].clamp(0, 1).pow(GAMMA)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = (x + SHARPEN * (x - blurred)).clamp(0, 1)
    return (x * 255).round_().to(torch.uint8) if as_uint8 else x.to(images.dtype)


def builtin_two_domains(size: int, seed: int = 0) -> TwoDomains:
    """The built-in set at ``size`` pixels: 50 images per domain (see the module docstring), with ``target_ab``."""
    crops = builtin_images(size, seed)  # crops grouped by photo: alternate indices split every photo in two
    a, b_source = crops[0::2].contiguous(), crops[1::2].contiguous()
    return TwoDomains(a, builtin_transform(b_source), source="builtin", target_ab=builtin_transform(a))


# ---------------------------------------------------------------------------------------------------
# Folders


def _domain_folder(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{what} {str(path)!r} is a file, not a folder of images")
    return path


def load_two_domains(data: str | os.PathLike, size: int, *, data_b: str | os.PathLike | None = None,
                     seed: int = 0) -> TwoDomains:
    """Domains A and B at ``size`` pixels from ``"builtin"``, a folder with ``trainA/`` and ``trainB/``, or domain A's
    folder ``data`` plus domain B's folder ``data_b``. Raises :class:`DatasetError` naming what is missing."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    spec = os.fspath(data)
    if spec == "builtin":
        if data_b is not None:
            raise DatasetError("--data builtin holds both domains: drop --data-b")
        return builtin_two_domains(size, seed)
    root = Path(spec)
    if data_b is not None:
        a_dir = _domain_folder(root, "domain A (--data)")
        b_dir = _domain_folder(Path(data_b), "domain B (--data-b)")
        return TwoDomains(load_image_folder(a_dir, size), load_image_folder(b_dir, size),
                          source=f"{spec} + {os.fspath(data_b)}")
    if not root.exists():
        raise DatasetError(f"dataset {spec!r} does not exist (expected 'builtin', a folder with trainA/ and trainB/, "
                           "or domain A's folder with --data-b naming domain B's)")
    if not root.is_dir():
        raise DatasetError(f"dataset {spec!r} is a file: give a folder with trainA/ and trainB/, or 'builtin'")
    missing = [name for name in DOMAIN_FOLDERS if not (root / name).is_dir()]
    if missing:
        raise DatasetError(f"{spec!r} has no {' and no '.join(f'{m}/' for m in missing)} sub-folder: two-domain data "
                           "is a folder with trainA/ and trainB/ (CycleGAN's layout), or domain A's folder given with "
                           "--data and domain B's with --data-b")
    return TwoDomains(load_image_folder(root / "trainA", size), load_image_folder(root / "trainB", size), source=spec)


# ---------------------------------------------------------------------------------------------------
# Batches


class TwoDomainSampler:
    """Draws ``(a [B, 3, S, S], b [B, 3, S, S])`` float32 in [-1, 1]: independent uniform draws (with replacement)
    from each domain, each image mirrored with probability 1/2 when ``flip`` (CycleGAN's RandomHorizontalFlip).
    Every draw comes from ``generator`` (on the images' device), so a run replays exactly."""

    def __init__(self, data: TwoDomains, batch: int, *, generator: torch.Generator, flip: bool = True):
        if not isinstance(data, TwoDomains):
            raise TypeError(f"data must be TwoDomains, got {type(data).__name__}")
        self.data = data
        self.a = ImageSampler(data.a, batch, generator=generator, flip=flip)
        self.b = ImageSampler(data.b, batch, generator=generator, flip=flip)
        self.generator = generator

    def sample(self) -> tuple[Tensor, Tensor]:
        return self.a.sample(), self.b.sample()


__all__ = ["DOMAIN_FOLDERS", "TwoDomains", "TwoDomainSampler", "builtin_transform", "builtin_two_domains",
           "load_two_domains"]
