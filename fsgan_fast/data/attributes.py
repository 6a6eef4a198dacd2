"""Labelled image sets for conditional translation (MatchGAN): attribute files, label folders, built-in data, and the
labelled / unlabelled split of semi-supervised training.

Two kinds of labels, one layout (:class:`LabelledImages`): ``labels [N, C]`` float32 in {0, 1}, either

- ``"attributes"``: multi-hot binary attributes (CelebA). Read from a ``list_attr_celeba.txt``-format file
  (:func:`read_attribute_file`): line 1 the number of images, line 2 the attribute names, then one line per image,
  ``<file name> <value per attribute>`` with values ``1`` (set) or ``-1`` / ``0`` (not set). ``attrs`` selects and
  orders the attributes trained on. Exclusive groups (``"Black_Hair,Blond_Hair,Brown_Hair"``: at most one of them
  set, as the reference's hair colours) drop the images that break them; or
- ``"categorical"``: one label per image, stored one-hot (RaFD's emotions): one sub-folder of images per label
  (:func:`load_label_folders`).

A *class* is one distinct label vector (an attribute combination, or a category): :func:`label_classes`.
:func:`split_labelled` keeps the labels of a fraction of the images, class-balanced and deterministic from a seed,
as the reference's ``subsample.py`` does; the rest is the unlabelled pool.

``"builtin"`` (:func:`builtin_attributes`) needs no download: crops of scikit-image's colour photos, each put through
colour and texture transforms whose choice is its label: attributes Gray, Red_Tint, Blue_Tint (exclusive) and
Blurred, or (``"builtin:categorical"``) one of six transforms.

Images are decoded once into one ``uint8 [N, 3, S, S]`` tensor (centre square crop, then resize: on CelebA's aligned
178x218 images that is the reference's 178 centre crop). That holds the whole set in memory: CelebA's 160k training
images take 7.9 GB at 128 px.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast.data.builtin import builtin_classes
from fsgan_fast.data.classes import load_class_folders
from fsgan_fast.data.image_set import decode_images
from fsgan_fast.data.types import DatasetError

LABEL_KINDS = ("attributes", "categorical")
ATTRIBUTE_VALUES = {"1": True, "-1": False, "0": False}

# built-in data: colour photos (a grey photo would make "Gray" meaningless), a seeded transform per crop
BUILTIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
BUILTIN_IMAGES = 480  # 96 crops per photo
BUILTIN_ATTRIBUTES = ("Gray", "Red_Tint", "Blue_Tint", "Blurred")
BUILTIN_EXCLUSIVE = (("Red_Tint", "Blue_Tint"),)  # one tint at most: 3 tints x gray x blur = 12 classes
BUILTIN_CATEGORIES = ("Original", "Gray", "Red_Tint", "Blue_Tint", "Blurred", "Inverted")
BUILTIN_SPECS = ("builtin", "builtin:categorical")
TINTS = {"Red_Tint": (0.95, 0.15, 0.10), "Blue_Tint": (0.10, 0.25, 0.95)}
TINT_MIX = 0.45  # share of the tint colour in a tinted pixel
LUMA = (0.299, 0.587, 0.114)


@dataclasses.dataclass
class LabelledImages:
    """Images with a label vector each, and which labels training may use.

    ``images`` uint8 ``[N, 3, S, S]``; ``labels`` float32 ``[N, C]`` in {0, 1} (multi-hot attributes, or one-hot
    categories); ``names`` the C attribute / category names; ``labelled`` bool ``[N]`` (all True until
    :meth:`with_labelled`); ``exclusive``: groups of attribute names of which at most one is set in every image.
    """

    images: Tensor
    labels: Tensor
    names: list[str]
    kind: str
    labelled: Tensor | None = None
    exclusive: tuple[tuple[str, ...], ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise DatasetError(f"images must be uint8 [N, 3, S, S], got {self.images.dtype} {list(self.images.shape)}")
        N = self.images.shape[0]
        if N == 0:
            raise DatasetError(f"no images in {self.source or 'the dataset'}")
        if self.kind not in LABEL_KINDS:
            raise DatasetError(f"kind must be one of {LABEL_KINDS}, got {self.kind!r}")
        if self.labels.dim() != 2 or self.labels.shape != (N, len(self.names)):
            raise DatasetError(f"labels must be [N={N}, C={len(self.names)}], got {list(self.labels.shape)}")
        self.labels = self.labels.float()
        if not bool(((self.labels == 0) | (self.labels == 1)).all()):
            raise DatasetError("labels must hold 0 and 1 only")
        if self.kind == "categorical" and not bool((self.labels.sum(1) == 1).all()):
            raise DatasetError("categorical labels must be one-hot (exactly one 1 per image)")
        if self.labelled is None:
            self.labelled = torch.ones(N, dtype=torch.bool, device=self.images.device)
        if self.labelled.dtype != torch.bool or self.labelled.shape != (N,):
            raise DatasetError(f"labelled must be a bool mask [N={N}], got {self.labelled.dtype} "
                               f"{list(self.labelled.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def num_labelled(self) -> int:
        return int(self.labelled.sum())

    def to(self, device: torch.device | str) -> LabelledImages:
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device),
                                   labelled=self.labelled.to(device))

    def with_labelled(self, labelled: Tensor) -> LabelledImages:
        """The same images with ``labelled`` (bool ``[N]``) saying whose labels are known."""
        return dataclasses.replace(self, labelled=labelled.to(self.device))

    def classes(self) -> tuple[Tensor, Tensor]:
        """:func:`label_classes` of the labelled images: ``(classes [K, C], class of each labelled image [M])``."""
        return label_classes(self.labels[self.labelled])

    def describe(self) -> dict:
        """Counts for the run folder: images, labelled images per class (named), unlabelled images."""
        classes, index = self.classes()
        counts = torch.bincount(index, minlength=len(classes)).tolist()
        return {"source": self.source, "kind": self.kind, "names": list(self.names),
                "exclusive": [list(g) for g in self.exclusive], "images": len(self),
                "labelled": self.num_labelled, "unlabelled": len(self) - self.num_labelled,
                "labelled_per_class": {class_name(row, self.names, self.kind): n
                                       for row, n in zip(classes.tolist(), counts)}}


def class_name(vector: Sequence[float], names: Sequence[str], kind: str) -> str:
    """A label vector in words: the set attributes joined by '+' ('none' when none is), or the category."""
    on = [n for n, v in zip(names, vector) if v >= 0.5]
    if kind == "categorical":
        return on[0] if on else "?"
    return "+".join(on) if on else "none"


def label_classes(labels: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows of ``labels [N, C]`` (0/1) and each row's index among them.

    Rows are ordered by their value as a binary number whose first column is the lowest bit: one-hot categories
    come in category order, attribute combinations start with "none", then the first attribute alone, ...
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be [N, C], got shape {list(labels.shape)}")
    C = labels.shape[1]
    if C > 62:
        raise ValueError(f"at most 62 labels are supported, got {C}")
    bits = labels.round().long()
    keys = (bits << torch.arange(C, device=labels.device)).sum(1)
    uniq, index = torch.unique(keys, return_inverse=True)
    classes = ((uniq.unsqueeze(1) >> torch.arange(C, device=labels.device)) & 1).to(labels.dtype)
    return classes, index


# ---------------------------------------------------------------------------------------------------
# Labelled fraction


def split_labelled(class_index: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Which images keep their labels: a bool mask ``[N]`` with ``ceil(fraction * N)`` True.

    Class-balanced, as the reference's ``subsample.py``: the images of each class are put in one seeded random
    order, then taken round-robin over the classes (the first image of every class, then the second of every class
    that has one, ...) until enough are taken. ``class_index [N]`` (int) names each image's class. Raises
    ``ValueError`` naming ``labelled_fraction`` when ``fraction`` is not in (0, 1].
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"labelled_fraction must be a number in (0, 1], got {type(fraction).__name__}")
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise ValueError(f"labelled_fraction must be in (0, 1] (the share of images whose labels are used), "
                         f"got {fraction}")
    if not isinstance(class_index, Tensor) or class_index.dim() != 1 or class_index.is_floating_point():
        raise TypeError("class_index must be a 1-D integer tensor (one class per image)")
    N = class_index.shape[0]
    if N == 0:
        raise ValueError("class_index is empty: no images to split")
    idx = class_index.cpu().long()
    want = min(N, math.ceil(fraction * N - 1e-9))  # the tolerance: 0.1 * 30 is 3.0000000000000004, not 4
    order = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
    # rank of each image within its class, in the shuffled order
    shuffled = idx[order]
    K = int(idx.max()) + 1
    sort = torch.argsort(shuffled * N + torch.arange(N), stable=True)  # by class, then shuffled position
    first = torch.searchsorted(shuffled[sort], torch.arange(K))
    rank = torch.empty(N, dtype=torch.long)
    rank[sort] = torch.arange(N) - first[shuffled[sort]]
    # round-robin: rank 0 of every class (in class order), then rank 1, ...
    key = rank * K + shuffled
    chosen = order[torch.argsort(key, stable=True)[:want]]
    mask = torch.zeros(N, dtype=torch.bool)
    mask[chosen] = True
    return mask.to(class_index.device)


# ---------------------------------------------------------------------------------------------------
# Attribute files (CelebA's list_attr_celeba.txt format)


@dataclasses.dataclass
class AttributeTable:
    """The contents of an attribute file: ``files[i]`` has ``values[i, j]`` for attribute ``names[j]``."""

    files: list[str]
    names: list[str]
    values: Tensor  # bool [N, A]


def read_attribute_file(path: str | os.PathLike) -> AttributeTable:
    """Parse a ``list_attr_celeba.txt``-format file; :class:`DatasetError` naming the line of any defect."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DatasetError(f"attribute file {where!r} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read attribute file {where!r}: {e}") from None
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, fields) for n, fields in lines if fields]  # blank lines (a trailing newline) carry nothing
    fmt = "expected line 1: the image count, line 2: the attribute names, then '<file> <1|-1 per attribute>' lines"
    if len(lines) < 2:
        raise DatasetError(f"{where}: too short to be an attribute file ({fmt})")
    (n1, head), (n2, names) = lines[0], lines[1]
    if len(head) != 1 or not head[0].isdigit():
        raise DatasetError(f"{where} line {n1}: expected the number of images, got {' '.join(head)[:80]!r} ({fmt})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"{where} line {n2}: attribute names repeat: {', '.join(dupes)}")
    bad_names = [n for n in names if n in ATTRIBUTE_VALUES]
    if bad_names:
        raise DatasetError(f"{where} line {n2}: expected attribute names, got values ({fmt})")
    rows = lines[2:]
    if int(head[0]) != len(rows):
        raise DatasetError(f"{where}: line {n1} says {int(head[0])} images but {len(rows)} image lines follow")
    files, values = [], []
    A = len(names)
    for n, fields in rows:
        if len(fields) != A + 1:
            raise DatasetError(f"{where} line {n}: expected a file name and {A} values, got {len(fields)} fields")
        try:
            values.append([ATTRIBUTE_VALUES[v] for v in fields[1:]])
        except KeyError as e:
            raise DatasetError(f"{where} line {n}: attribute values must be 1 or -1 (or 0), got {e.args[0]!r}"
                               ) from None
        files.append(fields[0])
    seen: dict[str, int] = {}
    for (n, _), f in zip(rows, files):
        if f in seen:
            raise DatasetError(f"{where} line {n}: file {f!r} is listed twice (first on line {seen[f]})")
        seen[f] = n
    return AttributeTable(files, list(names), torch.tensor(values, dtype=torch.bool).view(len(files), A))


def _unknown(what: str, unknown: Sequence[str], known: Sequence[str], where: str) -> DatasetError:
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    listed = ", ".join(known[:50]) + (" ..." if len(known) > 50 else "")
    return DatasetError(f"{what}: unknown name(s) {', '.join(hints)} in {where}; it has: {listed}")


def select_names(names: Sequence[str], wanted: Sequence[str], what: str, where: str) -> list[int]:
    """Indices of ``wanted`` in ``names`` (all of ``names`` when ``wanted`` is empty); unknown or repeated names are
    a :class:`DatasetError` naming them."""
    if not wanted:
        return list(range(len(names)))
    dupes = sorted({n for n in wanted if list(wanted).count(n) > 1})
    if dupes:
        raise DatasetError(f"{what}: {', '.join(dupes)} given more than once")
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise _unknown(what, unknown, list(names), where)
    return [list(names).index(n) for n in wanted]


def parse_exclusive(groups: Sequence[str], names: Sequence[str], where: str = "the selected attributes"
                    ) -> tuple[tuple[str, ...], ...]:
    """Exclusive groups given as ``"A,B,C"`` strings, checked against ``names``: at least two names each, known,
    in one group at most."""
    out: list[tuple[str, ...]] = []
    used: set[str] = set()
    for text in groups:
        group = tuple(n.strip() for n in str(text).split(",") if n.strip())
        if len(group) < 2 or len(set(group)) != len(group):
            raise DatasetError(f"exclusive: each group names two or more distinct attributes separated by commas "
                               f"(e.g. Black_Hair,Blond_Hair,Brown_Hair), got {text!r}")
        unknown = [n for n in group if n not in names]
        if unknown:
            raise _unknown("exclusive", unknown, list(names), where)
        twice = sorted(used & set(group))
        if twice:
            raise DatasetError(f"exclusive: {', '.join(twice)} appear(s) in two groups; merge the groups")
        used |= set(group)
        out.append(group)
    return tuple(out)


def respects_exclusive(labels: Tensor, names: Sequence[str], groups: Sequence[Sequence[str]]) -> Tensor:
    """bool ``[N]``: rows of ``labels [N, C]`` with at most one attribute of each group set."""
    ok = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
    for group in groups:
        cols = [list(names).index(n) for n in group]
        ok &= labels[:, cols].sum(1) <= 1
    return ok


def _find_image_dir(attr_file: Path, first: str, image_dir: str | os.PathLike | None) -> Path:
    if image_dir is not None:
        folder = Path(image_dir)
        if not folder.is_dir():
            raise DatasetError(f"image_dir {str(folder)!r} is not a folder")
        return folder
    tried = [attr_file.parent, attr_file.parent / "img_align_celeba", attr_file.parent / "images"]
    for folder in tried:
        if (folder / first).is_file():
            return folder
    raise DatasetError(f"cannot find the images of {str(attr_file)!r}: its first file {first!r} is in none of "
                       f"{', '.join(repr(str(t)) for t in tried)}; pass --image-dir")


def load_attribute_file(path: str | os.PathLike, size: int, *, attrs: Sequence[str] = (),
                        exclusive: Sequence[str] = (), image_dir: str | os.PathLike | None = None) -> LabelledImages:
    """The images of an attribute file with the ``attrs`` attributes (all when empty) as multi-hot labels.

    Images breaking an ``exclusive`` group (``"A,B,C"``: at most one set) are left out, as the reference leaves out
    CelebA images with two hair colours. Images are read from ``image_dir``, by default the file's own folder or
    its ``img_align_celeba/`` or ``images/`` sub-folder (the first holding the first listed file).
    """
    path = Path(path)
    table = read_attribute_file(path)
    if not table.files:
        raise DatasetError(f"{str(path)!r} lists no images")
    cols = select_names(table.names, attrs, "attrs", repr(str(path)))
    names = [table.names[j] for j in cols]
    groups = parse_exclusive(exclusive, names)
    labels = table.values[:, cols].float()
    keep = respects_exclusive(labels, names, groups)
    if not bool(keep.any()):
        raise DatasetError(f"every image of {str(path)!r} breaks the exclusive groups {[','.join(g) for g in groups]}")
    folder = _find_image_dir(path, table.files[0], image_dir)
    files = [folder / f for f, k in zip(table.files, keep.tolist()) if k]
    images = decode_images(files, size, f"of {str(path)!r}")
    return LabelledImages(images, labels[keep], names, "attributes", exclusive=groups, source=str(path))


def load_label_folders(root: str | os.PathLike, size: int, *, names: Sequence[str] = ()) -> LabelledImages:
    """One sub-folder of images per label (RaFD's emotions): one-hot categorical labels; ``names`` selects and orders
    the label folders (all, sorted, when empty)."""
    classes = load_class_folders(root, size)
    picked = select_names(classes.names, names, "attrs", f"the label folders of {str(root)!r}")
    if len(picked) < 2:
        raise DatasetError(f"{str(root)!r}: a translation model needs two or more labels, got "
                           f"{[classes.names[i] for i in picked]}")
    data = classes.select(picked)
    index = torch.repeat_interleave(torch.arange(len(picked)), data.counts)
    labels = F.one_hot(index, len(picked)).float()
    return LabelledImages(data.images, labels, list(data.names), "categorical", source=str(root))


# ---------------------------------------------------------------------------------------------------
# Built-in data


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x)
    C = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def apply_transforms(images: Tensor, labels: Tensor, names: Sequence[str]) -> Tensor:
    """The built-in transforms named by ``labels [N, C]`` (columns ``names``) applied to float images ``[N, 3, S, S]``
    in [0, 1], in a fixed order: Inverted, Gray, one tint, Blurred ("Original" changes nothing)."""
    x = images.clone()
    col = {n: labels[:, j].bool() for j, n in enumerate(names)}
    none = torch.zeros(len(x), dtype=torch.bool)
    if col.get("Inverted", none).any():
        m = col["Inverted"]
        x[m] = 1.0 - x[m]
    if col.get("Gray", none).any():
        m = col["Gray"]
        luma = (x[m] * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x[m] = luma.expand(-1, 3, -1, -1)
    for tint, colour in TINTS.items():
        if col.get(tint, none).any():
            m = col[tint]
            x[m] = (1 - TINT_MIX) * x[m] + TINT_MIX * torch.tensor(colour).view(1, 3, 1, 1)
    if col.get("Blurred", none).any():
        m = col["Blurred"]
        x[m] = _gaussian_blur(x[m], sigma=max(1.0, images.shape[-1] / 32))
    return x


@functools.lru_cache(maxsize=4)
def _builtin_crops(size: int, per_photo: int, seed: int) -> Tensor:
    # seconds of antialiased resizing from the full photos: kept for the next run, test or notebook cell
    return builtin_classes(size, per_class=per_photo, seed=seed, photos=BUILTIN_PHOTOS).images


def builtin_attributes(size: int = 64, *, kind: str = "attributes", n: int = BUILTIN_IMAGES, seed: int = 0
                       ) -> LabelledImages:
    """``n`` crops of :data:`BUILTIN_PHOTOS`, each transformed as its random label says (no download).

    ``kind="attributes"``: Gray and Blurred each with probability 1/2, one of no tint / Red_Tint / Blue_Tint (so
    Red_Tint and Blue_Tint are exclusive): 12 classes. ``kind="categorical"``: one of :data:`BUILTIN_CATEGORIES`
    uniformly. Deterministic from ``seed``.
    """
    if kind not in LABEL_KINDS:
        raise ValueError(f"kind must be one of {LABEL_KINDS}, got {kind!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    base = _builtin_crops(size, math.ceil(n / len(BUILTIN_PHOTOS)), seed).clone()
    g = torch.Generator().manual_seed(seed + 1)
    base = base[torch.randperm(len(base), generator=g)[:n]]  # photos mixed, every photo in every class
    if kind == "attributes":
        names = list(BUILTIN_ATTRIBUTES)
        gray = torch.rand(n, generator=g) < 0.5
        tint = torch.randint(3, (n,), generator=g)  # 0: none, 1: red, 2: blue
        blur = torch.rand(n, generator=g) < 0.5
        labels = torch.stack([gray, tint == 1, tint == 2, blur], 1).float()
        groups = BUILTIN_EXCLUSIVE
    else:
        names = list(BUILTIN_CATEGORIES)
        labels = F.one_hot(torch.randint(len(names), (n,), generator=g), len(names)).float()
        groups = ()
    x = apply_transforms(base.float() / 255.0, labels, names)
    images = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    source = "builtin" if kind == "attributes" else "builtin:categorical"
    return LabelledImages(images, labels, names, kind, exclusive=groups, source=source)


def _select_builtin(data: LabelledImages, attrs: Sequence[str], exclusive: Sequence[str]) -> LabelledImages:
    cols = select_names(data.names, attrs, "attrs", f"the {data.source} data")
    names = [data.names[j] for j in cols]
    if data.kind == "categorical":
        if len(cols) < 2:
            raise DatasetError(f"attrs: a translation model needs two or more labels, got {names}")
        keep = data.labels[:, cols].sum(1) > 0
        labels = data.labels[keep][:, cols]
        return LabelledImages(data.images[keep], labels, names, data.kind, source=data.source)
    own = tuple(tuple(n for n in g if n in names) for g in data.exclusive)
    groups = tuple(g for g in own if len(g) >= 2) + parse_exclusive(exclusive, names)
    labels = data.labels[:, cols]
    keep = respects_exclusive(labels, names, groups)
    return LabelledImages(data.images[keep], labels[keep], names, data.kind, exclusive=_merge(groups),
                          source=data.source)


def _merge(groups: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    """Groups sharing a name joined into one (the data's own group and a user's may overlap)."""
    merged: list[list[str]] = []
    for g in groups:
        hits = [m for m in merged if set(m) & set(g)]
        joined = [n for m in hits for n in m] + [n for n in g if not any(n in m for m in hits)]
        merged = [m for m in merged if m not in hits] + [joined]
    return tuple(tuple(m) for m in merged)


# ---------------------------------------------------------------------------------------------------
# One entry point


def load_labelled_images(spec: str | os.PathLike, size: int, *, attrs: Sequence[str] = (),
                         exclusive: Sequence[str] = (), image_dir: str | os.PathLike | None = None,
                         seed: int = 0) -> LabelledImages:
    """``"builtin"`` / ``"builtin:categorical"``, an attribute file (``.txt``), or a folder of label folders.

    ``attrs`` selects (and orders) the attributes or label folders; ``exclusive`` adds groups of attributes of
    which at most one may be set (attribute data only; the built-in data has its own tint group).
    """
    spec = os.fspath(spec)
    expected = "expected 'builtin', 'builtin:categorical', a list_attr .txt file, or a folder of label folders"
    if spec in BUILTIN_SPECS:
        kind = "attributes" if spec == "builtin" else "categorical"
        if kind == "categorical" and exclusive:
            raise DatasetError("exclusive groups apply to attribute labels; builtin:categorical has one label per "
                               "image")
        return _select_builtin(builtin_attributes(size, kind=kind, seed=seed), attrs, exclusive)
    if spec.startswith("builtin"):
        raise DatasetError(f"unknown built-in dataset {spec!r}; choose {' or '.join(BUILTIN_SPECS)}")
    if not os.path.exists(spec):
        raise DatasetError(f"dataset {spec!r} does not exist ({expected})")
    if os.path.isdir(spec):
        if exclusive:
            raise DatasetError("exclusive groups apply to attribute files; a folder of label folders has one label "
                               "per image")
        return load_label_folders(spec, size, names=attrs)
    if spec.lower().endswith(".txt"):
        return load_attribute_file(spec, size, attrs=attrs, exclusive=exclusive, image_dir=image_dir)
    raise DatasetError(f"dataset {spec!r} is a file but not a .txt attribute file ({expected})")


__all__ = ["AttributeTable", "BUILTIN_ATTRIBUTES", "BUILTIN_CATEGORIES", "BUILTIN_EXCLUSIVE", "BUILTIN_SPECS",
           "LABEL_KINDS", "LabelledImages", "apply_transforms", "builtin_attributes", "class_name", "label_classes",
           "load_attribute_file", "load_label_folders", "load_labelled_images", "parse_exclusive",
           "read_attribute_file", "respects_exclusive", "select_names", "split_labelled"]
