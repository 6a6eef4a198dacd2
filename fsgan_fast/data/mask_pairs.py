"""Labelled (photo, semantic mask) pairs for Few-shot SMIS: a pairs folder, or built-in pairs with derived masks.

Folder layout (``--pairs DIR``)::

    DIR/images/<stem>.<png|jpg|...>    RGB photos (any of fsgan_fast.utils.images.IMAGE_EXTENSIONS)
    DIR/masks/<stem>.png               one class id per pixel: a single-channel PNG (mode L, P, I;16 or I)
                                       (DIR/labels/ is read when there is no masks/: the reference's data folders)

Pairs are matched by file stem and sorted by it; the first ``shots`` pairs train. A mask must have its photo's
width and height. Both are centre-cropped to the largest square and resized to the model's side, the photo with
Lanczos (:func:`fsgan_fast.utils.images.read_image`), the mask with nearest neighbour over the same box, so the
labels stay on their pixels. A palette ("P") PNG is read as its indices, not its colours; RGB masks are refused
(convert colour-coded masks to ids first: each colour's index in your class list). Dense masks hold ids
``0..label_nc-1`` (remap a dataset's "void" 255 to a class first: ids are encoder channels); sparse annotations
(scribbles, landmarks) use 0 for "not annotated" and ``1..label_nc-1`` for the classes.

``"builtin"`` needs no download: five scikit-image photos with masks this module derives by colour quantisation
(k-means in RGB over the pixels of all five, so a class means the same colour range in every photo, then a mode
filter that turns speckle into regions); with ``sparse=True``, scribbles: every ``SCRIBBLE_STRIDE``-th row of each
class region's interior, the rest 0.

Every problem raises :class:`~fsgan_fast.data.types.DatasetError` naming the file or folder.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from fsgan_fast.data.classes import _is, _listdir
from fsgan_fast.data.types import DatasetError
from fsgan_fast.utils.images import IMAGE_EXTENSIONS, read_image

# the built-in pairs, in shot order (the first one is the 1-shot pair)
BUILTIN_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "immunohistochemistry")
BUILTIN_LABEL_NC = 6  # classes of the derived dense masks when --label-nc is not given
KMEANS_ITERS = 25
MODE_FILTER = 5  # side of the majority window that cleans the quantised masks
SCRIBBLE_STRIDE = 4  # builtin sparse annotations: one row in this many of each region's interior
MASK_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I", "1")


@dataclasses.dataclass
class MaskPairs:
    """``images uint8 [N, 3, S, S]`` and ``masks int64 [N, S, S]`` (class ids), one ``name`` per pair.

    ``sparse``: 0 in a mask means "not annotated" (scribbles, landmarks) rather than class 0.
    """

    images: Tensor
    masks: Tensor
    names: list[str]
    source: str = ""
    sparse: bool = False

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise DatasetError(f"images must be uint8 [N, 3, S, S], got {self.images.dtype} {list(self.images.shape)}")
        N, _, H, W = self.images.shape
        if self.masks.dtype != torch.int64 or tuple(self.masks.shape) != (N, H, W):
            raise DatasetError(f"masks must be int64 [N={N}, {H}, {W}], got {self.masks.dtype} "
                               f"{list(self.masks.shape)}")
        if len(self.names) != N:
            raise DatasetError(f"{len(self.names)} names for {N} pairs")
        if N and int(self.masks.min()) < 0:
            raise DatasetError(f"{self.source or 'masks'}: class ids must be >= 0, got {int(self.masks.min())}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def max_id(self) -> int:
        return int(self.masks.max()) if len(self) else -1

    def first(self, shots: int) -> MaskPairs:
        """The first ``shots`` pairs (in stem order); a :class:`DatasetError` when there are fewer."""
        if shots < 1:
            raise DatasetError(f"shots must be >= 1, got {shots}")
        if len(self) < shots:
            n = len(self)
            raise DatasetError(f"{shots} shots asked for, but {self.source or 'the data'} has only {n} "
                               f"pair{'s' if n != 1 else ''} (--shots at most {n})")
        return dataclasses.replace(self, images=self.images[:shots], masks=self.masks[:shots],
                                   names=self.names[:shots])

    def check_classes(self, label_nc: int) -> None:
        """Every id below ``label_nc`` (and, sparse, at least one annotated pixel); else a DatasetError naming the
        pair, the id and the option."""
        for name, mask in zip(self.names, self.masks):
            top = int(mask.max())
            if top >= label_nc:
                raise DatasetError(f"{self.source or 'masks'}: mask {name!r} holds class id {top}, but --label-nc is "
                                   f"{label_nc} (ids 0..{label_nc - 1}); raise --label-nc or fix the mask")
            if self.sparse and top == 0:
                raise DatasetError(f"{self.source or 'masks'}: sparse mask {name!r} annotates no pixel (every id is "
                                   "0, 'not annotated')")

    def to(self, device: torch.device | str) -> MaskPairs:
        return dataclasses.replace(self, images=self.images.to(device), masks=self.masks.to(device))


# ---------------------------------------------------------------------------------------------------
# Files


def _square_box(w: int, h: int) -> tuple[int, int, int, int]:
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def read_mask(path: str | os.PathLike, size: int | None = None) -> Tensor:
    """A class-id mask file as ``int64 [H, W]`` (with ``size``: centre square, nearest-resized to ``size``).

    Accepts single-channel images (L, P as palette indices, I;16, I, 1); raises :class:`DatasetError` naming the
    file for anything else (an RGB colour mask, an unreadable file).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                raise DatasetError(
                    f"mask {str(path)!r} is a {im.mode} image: masks must be single-channel class ids (PNG mode L, P, "
                    f"I;16 or I), one id per pixel; convert a colour-coded mask to ids (each colour's index) first")
            if size is not None:
                im = im.resize((size, size), Image.Resampling.NEAREST, box=_square_box(*im.size))
            arr = np.asarray(im)
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DatasetError(f"cannot read mask {str(path)!r}: {e}") from e
    return torch.from_numpy(arr.astype(np.int64))


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"cannot read {str(path)!r}: {e}") from e


def _files_by_stem(folder: Path, what: str, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in _listdir(folder, what):
        if entry.name.startswith(".") or not _is("file", entry) or entry.suffix.lower() not in suffixes:
            continue
        if entry.stem in found:
            raise DatasetError(f"{what} {str(folder)!r} holds two files with the stem {entry.stem!r}: "
                               f"{found[entry.stem].name} and {entry.name}")
        found[entry.stem] = entry
    return found


def load_pair_folder(root: str | os.PathLike, size: int, *, sparse: bool = False) -> MaskPairs:
    """``root/images`` + ``root/masks`` matched by stem (module docstring), at ``size x size``."""
    root = Path(root)
    layout = "a pairs folder holds images/<stem>.png (photos) and masks/<stem>.png (class ids)"
    if not root.exists():
        raise DatasetError(f"pairs folder {str(root)!r} does not exist ({layout})")
    if not root.is_dir():
        raise DatasetError(f"pairs folder {str(root)!r} is a file ({layout})")
    mask_dir = root / "masks" if (root / "masks").is_dir() or not (root / "labels").is_dir() else root / "labels"
    for sub in (root / "images", mask_dir):
        if not sub.is_dir():
            raise DatasetError(f"pairs folder {str(root)!r} has no {sub.name}/ sub-folder ({layout})")
    images = _files_by_stem(root / "images", "image folder", IMAGE_EXTENSIONS)
    masks = _files_by_stem(mask_dir, "mask folder", IMAGE_EXTENSIONS)
    if not images:
        raise DatasetError(f"no image files in {str(root / 'images')!r} ({', '.join(IMAGE_EXTENSIONS)})")
    unmatched = sorted(set(images) - set(masks))
    if unmatched:
        raise DatasetError(f"{len(unmatched)} photo(s) in {str(root / 'images')!r} have no mask of the same stem in "
                           f"{mask_dir.name}/: {', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DatasetError(f"{len(orphans)} mask(s) in {str(mask_dir)!r} have no photo of the same stem in "
                           f"images/: {', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}")
    stems = sorted(images)
    out_images, out_masks = [], []
    for stem in stems:
        img_size, mask_size = _image_size(images[stem]), _image_size(masks[stem])
        if img_size != mask_size:
            raise DatasetError(f"pair {stem!r}: the photo is {img_size[0]}x{img_size[1]} but the mask "
                               f"{mask_size[0]}x{mask_size[1]} (width x height); a mask labels its photo's pixels")
        try:
            out_images.append(read_image(images[stem], size))
        except ValueError as e:
            raise DatasetError(str(e)) from None
        out_masks.append(read_mask(masks[stem], size))
    return MaskPairs(torch.stack(out_images), torch.stack(out_masks), stems, source=str(root), sparse=sparse)


# ---------------------------------------------------------------------------------------------------
# Built-in pairs: masks derived from the photos


def _kmeans(points: Tensor, k: int, iters: int, generator: torch.Generator) -> Tensor:
    """Cluster centres ``[k, D]`` of ``points [N, D]``: k-means++ seeding from ``generator``, then Lloyd steps.

    A cluster that empties keeps its centre (it cannot happen with k-means++ seeds on distinct points, but the
    photos are small)."""
    n = points.shape[0]
    centres = [points[int(torch.randint(n, (), generator=generator))]]
    d2 = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        centres.append(points[int(torch.multinomial(probs, 1, generator=generator))])
        d2 = torch.minimum(d2, ((points - centres[-1]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(points, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c)
    return c


def mode_filter(masks: Tensor, num_classes: int, window: int = MODE_FILTER) -> Tensor:
    """Each pixel of ``masks int64 [N, H, W]`` replaced by the most frequent id in its ``window`` (odd) square
    (ties: the smallest id; the border replicated)."""
    if window % 2 == 0 or window < 1:
        raise ValueError(f"window must be an odd size >= 1, got {window}")
    onehot = F.one_hot(masks, num_classes).permute(0, 3, 1, 2).float()
    pad = window // 2
    votes = F.avg_pool2d(F.pad(onehot, (pad,) * 4, mode="replicate"), window, stride=1)
    return votes.argmax(1)


def derive_masks(images: Tensor, num_classes: int, *, seed: int = 0) -> Tensor:
    """Dense masks ``int64 [N, S, S]`` with ids ``0..num_classes-1`` for ``uint8 [N, 3, S, S]`` photos: k-means over
    the RGB values of all photos together (one palette, so an id means similar colours in every photo), ids ordered
    by the centre's brightness (dark first), then a mode filter."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    g = torch.Generator().manual_seed(seed)
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).float() / 255.0
    centres = _kmeans(pixels, num_classes, KMEANS_ITERS, g)
    order = centres.sum(1).argsort()
    centres = centres[order]
    ids = torch.cdist(pixels, centres).argmin(1).view(images.shape[0], *images.shape[2:])
    return mode_filter(ids, num_classes)


def scribbles(masks: Tensor, num_classes: int, stride: int = SCRIBBLE_STRIDE) -> Tensor:
    """Sparse annotations from dense masks (ids ``0..num_classes-1``): class ``c`` becomes id ``c + 1`` on every
    ``stride``-th row of its region's interior (the region eroded by one pixel), every other pixel 0."""
    onehot = F.one_hot(masks, num_classes).permute(0, 3, 1, 2).float()
    # erosion: a pixel is interior when its whole 3x3 neighbourhood holds its class
    interior = -F.max_pool2d(-onehot, 3, stride=1, padding=1) > 0.5
    rows = torch.zeros(masks.shape[-2], dtype=torch.bool, device=masks.device)
    rows[stride // 2 :: stride] = True
    keep = interior.any(1) & rows.view(1, -1, 1)
    return torch.where(keep, masks + 1, torch.zeros_like(masks))


@functools.lru_cache(maxsize=4)
def _builtin_photos(size: int) -> Tensor:
    """``uint8 [5, 3, size, size]``: the centre squares of :data:`BUILTIN_PHOTOS` (decoded once per size)."""
    from fsgan_fast.data.builtin import _photo

    photos = []
    for name in BUILTIN_PHOTOS:
        photo = _photo(name)
        left, top, right, bottom = _square_box(photo.shape[2], photo.shape[1])
        crop = photo[None, :, top:bottom, left:right]
        photos.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
    return torch.stack(photos).round_().clamp_(0, 255).to(torch.uint8)


def builtin_pairs(size: int, label_nc: int = BUILTIN_LABEL_NC, *, sparse: bool = False, seed: int = 0) -> MaskPairs:
    """Five scikit-image photos (:data:`BUILTIN_PHOTOS`, centre squares at ``size``) with derived masks: dense ids
    ``0..label_nc-1``, or (``sparse``) scribbles of ``label_nc - 1`` classes with ids ``1..label_nc-1``."""
    classes = label_nc - 1 if sparse else label_nc
    if classes < 1:
        raise DatasetError(f"--label-nc {label_nc} leaves no class to derive (sparse masks reserve id 0 for "
                           "'not annotated')")
    images = _builtin_photos(size).clone()
    masks = derive_masks(images, classes, seed=seed)
    if sparse:
        masks = scribbles(masks, classes)
    return MaskPairs(images, masks, list(BUILTIN_PHOTOS), source="builtin", sparse=sparse)


def load_pairs(spec: str | os.PathLike, size: int, *, label_nc: int | None = None, sparse: bool = False,
               seed: int = 0) -> MaskPairs:
    """``"builtin"`` (masks derived with ``label_nc`` classes, default :data:`BUILTIN_LABEL_NC`) or a pairs folder."""
    spec = os.fspath(spec)
    if spec == "builtin":
        return builtin_pairs(size, label_nc or BUILTIN_LABEL_NC, sparse=sparse, seed=seed)
    return load_pair_folder(spec, size, sparse=sparse)


# ---------------------------------------------------------------------------------------------------
# Showing masks


def palette(num_classes: int) -> Tensor:
    """``uint8 [num_classes, 3]``: the PASCAL VOC colour map (id 0 black, then well-separated colours), by bit
    interleaving of the id, so any number of classes gets distinct colours."""
    ids = torch.arange(num_classes)
    out = torch.zeros(num_classes, 3, dtype=torch.int64)
    c = ids.clone()
    for j in range(8):
        for ch in range(3):
            out[:, ch] |= ((c >> ch) & 1) << (7 - j)
        c = c >> 3
    return out.to(torch.uint8)


def colorize(masks: Tensor, num_classes: int) -> Tensor:
    """Class ids ``[..., H, W]`` as colour images ``float [..., 3, H, W]`` in [-1, 1] (the :func:`palette`).

    Ids outside ``0..num_classes-1`` (-1 for "no label") are shown white."""
    if masks.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
        raise TypeError(f"masks must be an integer tensor of class ids, got {masks.dtype}")
    colours = torch.cat([palette(num_classes), torch.full((1, 3), 255, dtype=torch.uint8)]).to(masks.device)
    ids = masks.long()
    ids = torch.where((ids >= 0) & (ids < num_classes), ids, torch.full_like(ids, num_classes))
    rgb = colours[ids].float() / 127.5 - 1.0  # [..., H, W, 3]
    return rgb.movedim(-1, -3).contiguous()


def save_mask(mask: Tensor, path: str | os.PathLike) -> Path:
    """Write ``int [H, W]`` class ids (0..255) as a single-channel PNG that :func:`read_mask` reads back."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [H, W], got {list(mask.shape)}")
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > 255):
        raise ValueError(f"mask ids must lie in 0..255 for an 8-bit PNG, got [{int(mask.min())}, {int(mask.max())}]")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.to(torch.uint8).cpu().numpy(), mode="L").save(path)
    return path


def write_pair_folder(pairs: MaskPairs, root: str | os.PathLike) -> Path:
    """``pairs`` as a pairs folder (``root/images/<name>.png``, ``root/masks/<name>.png``): the layout
    :func:`load_pair_folder` reads, e.g. to start from the built-in pairs and edit them."""
    from fsgan_fast.utils.images import save_image

    root = Path(root)
    for image, mask, name in zip(pairs.images, pairs.masks, pairs.names):
        save_image(image, root / "images" / f"{name}.png")
        save_mask(mask, root / "masks" / f"{name}.png")
    return root


__all__ = ["BUILTIN_LABEL_NC", "BUILTIN_PHOTOS", "MaskPairs", "builtin_pairs", "colorize", "derive_masks",
           "load_pair_folder", "load_pairs", "mode_filter", "palette", "read_mask", "save_mask", "scribbles",
           "write_pair_folder"]
