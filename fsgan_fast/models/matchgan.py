"""MatchGAN (Sun, Bhatt, Pan, Shen; ICIP 2020): a semi-supervised StarGAN with a pair-matching loss.

The networks of the reference code (ALGORITHMS.md §5, StarGAN's ``model.py``), restated:

- :class:`Generator`: the target label vector tiled over the image and concatenated to it (3 + C channels), a 7x7
  conv, two 4x4 stride-2 convs (``g_conv_dim`` -> x4 channels), ``g_repeat_num`` residual blocks (3x3 conv, norm,
  ReLU, 3x3 conv, norm), two 4x4 stride-2 transposed convs back, a 7x7 conv to RGB and tanh. Every conv is
  bias-free and followed by an affine InstanceNorm and ReLU.
- :class:`Discriminator`: ``d_repeat_num`` 4x4 stride-2 convs (``d_conv_dim``, doubling) with LeakyReLU(0.01) make
  the trunk, a ``k x k`` map with ``k = size / 2^d_repeat_num`` (2 at 128 px). Three bias-free heads on it: ``src``
  (3x3 conv to one PatchGAN logit per cell), ``cls`` (k x k conv to the C label logits) and ``pair`` on the channel
  concatenation of two images' trunk maps, 2 logits (different / same label): MatchGAN's addition.

Labels are either multi-hot binary attributes (``label_kind="attributes"``, CelebA) or one category stored one-hot
(``"categorical"``, RaFD). The config records the label names, the exclusive attribute groups and the *classes*:
the label vectors seen in the labelled training data, from which training draws its target labels.

Differences from the reference code, on purpose:

- ⚠ The pair head has a hidden layer (``pair_head="mlp"``: a 1x1 conv to ``pair_hidden`` channels and LeakyReLU
  before the k x k conv to 2 logits). The reference's head is that k x k conv alone, linear in the concatenation, so
  its same-vs-different logit is ``a(x1) + b(x2)``, one term per image: it cannot express "these two share a label"
  (for pairs drawn as the reference draws them, whose images are alike in distribution whether positive or
  negative, no such sum does better than chance), and both matching losses stay at ln 2 in training.
  ``pair_head="linear"`` is the reference's head.
- InstanceNorm keeps no running statistics. The reference tracks them but never uses them (its G is never put in
  eval mode), so the computation is the same, and eval mode, generation and export use per-image statistics too.
- D returns its trunk map with the logits, so the matching loss reuses the features of the batch D has just seen
  rather than running the trunk again on the paired images (the same values and gradients: D has no batch-coupled
  layer).
- G accepts any image side that is a multiple of 4 (it is fully convolutional); D needs ``size``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import numbers
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from fsgan_fast import configs
from fsgan_fast.configs import ConfigError, option
from fsgan_fast.models import registry
from fsgan_fast.nn.ema import WithEMAGenerator

LRELU = 0.01
CELEBA_ATTRS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
CELEBA_EXCLUSIVE = ("Black_Hair,Blond_Hair,Brown_Hair",)
MAX_ENUMERATED_LABELS = 20  # without recorded classes, every valid combination of at most this many attributes
TARGET_SEPARATORS = ",+"  # "Black_Hair,Male" or "Black_Hair+Male" (as grids name their columns)


class MatchGANInputError(registry.InputError):
    """A translation input does not fit the model (unknown label name, exclusive attributes set together, ...)."""


@dataclasses.dataclass
class MatchGANConfig:
    """Hyper-parameters of the MatchGAN networks; the defaults are the reference's CelebA model at 128 px.

    ``size`` must be a multiple of ``2 ** d_repeat_num`` (D's trunk map is ``size / 2^d_repeat_num`` cells wide).
    ``labels``, ``label_kind``, ``exclusive`` and ``classes`` are set from the data by training: the label names
    (C = len(labels), the width of G's label input and of D's class head), the groups of attributes of which at most
    one is set (``"A,B,C"`` each), and the target label vectors (``"0110..."`` strings, one character per label;
    empty: every vector the exclusive groups allow).
    """

    size: int = option(128, "image side in pixels: a multiple of 2^d-repeat-num (the paper: 128)", low=4)
    g_conv_dim: int = option(64, "G width: channels of its first conv (x4 in the residual blocks)", low=1)
    d_conv_dim: int = option(64, "D width: channels of its first conv (doubled per stride-2 conv)", low=1)
    g_repeat_num: int = option(6, "residual blocks in G", low=0)
    d_repeat_num: int = option(6, "stride-2 convs in D's trunk", low=1)
    labels: tuple[str, ...] = option(CELEBA_ATTRS, "label names (attributes or categories); set from the data",
                                     cli=False)
    label_kind: Literal["attributes", "categorical"] = option(
        "attributes", "multi-hot binary attributes or one category per image; set from the data", cli=False)
    exclusive: tuple[str, ...] = option(CELEBA_EXCLUSIVE, "attribute groups 'A,B,C' with at most one set; set from "
                                        "the data", cli=False)
    classes: tuple[str, ...] = option((), "target label vectors as 0/1 strings; set from the labelled data", cli=False)
    pair_head: Literal["mlp", "linear"] = option(
        "mlp", "D's pair head on the channel-concatenated trunk maps: mlp (a 1x1 conv to pair-hidden channels, "
        "LeakyReLU, then the k x k conv to 2 logits: it can compare the two images) or linear (the reference code's "
        "single k x k conv, whose logit is a sum of one term per image and so cannot tell same from different)")
    pair_hidden: int = option(256, "hidden channels of the mlp pair head", low=1)

    def __post_init__(self) -> None:
        configs.validate(self)
        if self.size % 4:
            raise ConfigError(f"size must be a multiple of 4 (G halves it twice), got {self.size}")
        if self.size % (2 ** self.d_repeat_num):
            raise ConfigError(f"size {self.size} must be a multiple of 2^d_repeat_num = {2 ** self.d_repeat_num} "
                              f"(D's trunk halves it d_repeat_num times); lower d_repeat_num or change size")
        self._validate_labels()

    def _validate_labels(self) -> None:
        from fsgan_fast.data.attributes import parse_exclusive
        from fsgan_fast.data.types import DatasetError

        names = self.labels
        minimum = 2 if self.label_kind == "categorical" else 1
        if len(names) < minimum:
            raise ConfigError(f"labels must name at least {minimum} {self.label_kind}, got {list(names)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"labels must be distinct, got {list(names)}")
        bad = [n for n in names if not n or any(ch.isspace() or ch in TARGET_SEPARATORS for ch in n)]
        if bad:
            raise ConfigError(f"label names may not be empty or hold spaces, ',' or '+': {bad}")
        if self.label_kind == "categorical" and self.exclusive:
            raise ConfigError("exclusive groups apply to attribute labels, not categorical ones")
        try:
            parse_exclusive(self.exclusive, names, "labels")
        except DatasetError as e:
            raise ConfigError(str(e)) from None
        C = len(names)
        for c in self.classes:
            if len(c) != C or set(c) - {"0", "1"}:
                raise ConfigError(f"classes must be strings of {C} characters 0/1 (one per label), got {c!r}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError("classes must be distinct")
        vectors = self.class_vectors()
        if self.label_kind == "categorical" and not bool((vectors.sum(1) == 1).all()):
            raise ConfigError("categorical classes must be one-hot strings")
        if self.label_kind == "attributes" and not bool(self.allows(vectors).all()):
            raise ConfigError(f"classes break the exclusive groups {list(self.exclusive)}")

    @property
    def c_dim(self) -> int:
        return len(self.labels)

    @property
    def trunk_side(self) -> int:
        """Side of D's trunk map (and of its class and pair heads' kernels)."""
        return self.size // 2 ** self.d_repeat_num

    def exclusive_groups(self) -> list[list[int]]:
        """The exclusive groups as label indices."""
        return [[self.labels.index(n.strip()) for n in g.split(",") if n.strip()] for g in self.exclusive]

    def allows(self, vectors: Tensor) -> Tensor:
        """bool ``[K]``: which label vectors ``[K, C]`` set at most one attribute of each exclusive group."""
        ok = torch.ones(vectors.shape[0], dtype=torch.bool)
        for group in self.exclusive_groups():
            ok &= vectors[:, group].sum(1) <= 1
        return ok

    def class_vectors(self) -> Tensor:
        """The target label vectors ``[K, C]`` float32: the recorded ``classes``, else every one-hot category, or
        every attribute combination the exclusive groups allow (the reference's 16 for CelebA's five)."""
        C = self.c_dim
        if self.classes:
            return torch.tensor([[float(ch) for ch in c] for c in self.classes])
        if self.label_kind == "categorical":
            return torch.eye(C)
        if C > MAX_ENUMERATED_LABELS:
            raise ConfigError(f"{C} attributes have too many combinations to enumerate: give classes")
        every = torch.tensor(list(itertools.product((0.0, 1.0), repeat=C))).flip(1)  # first label = lowest bit
        return every[self.allows(every)]

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MatchGANConfig:
        return configs.from_dict(cls, d)


def class_string(vector: Sequence[float]) -> str:
    """A 0/1 label vector as the string :attr:`MatchGANConfig.classes` records."""
    return "".join("1" if v >= 0.5 else "0" for v in vector)


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_images(name: str, x: object, side: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor of images in [-1, 1], got dtype {x.dtype}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must be images [B, 3, H, W], got shape {list(x.shape)}")
    if side is not None and (x.shape[2] != side or x.shape[3] != side):
        raise ValueError(f"{name} must be images [B, 3, {side}, {side}] (the model's size), got {list(x.shape)}")
    if side is None and (x.shape[2] % 4 or x.shape[3] % 4):
        raise ValueError(f"{name} height and width must be multiples of 4 (G halves them twice), got "
                         f"{list(x.shape)}")
    return x


def _check_labels(name: str, c: object, batch: int, c_dim: int) -> Tensor:
    if not isinstance(c, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(c).__name__}")
    if not c.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor of 0/1 label vectors, got dtype {c.dtype}")
    if c.dim() != 2 or c.shape[1] != c_dim:
        raise ValueError(f"{name} must be label vectors [B, {c_dim}], got shape {list(c.shape)}")
    if c.shape[0] != batch:
        raise ValueError(f"{name} holds {c.shape[0]} label vectors for {batch} images")
    return c


# ---------------------------------------------------------------------------------------------------
# Networks


def _norm(ch: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(ch, affine=True)  # no running statistics: see the module docstring


class ResidualBlock(nn.Module):
    """``x + (conv3x3 -> IN -> ReLU -> conv3x3 -> IN)(x)``, convs bias-free."""

    def __init__(self, ch: int):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1, bias=False), _norm(ch), nn.ReLU(),
                                  nn.Conv2d(ch, ch, 3, 1, 1, bias=False), _norm(ch))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.main(x)


class Generator(nn.Module):
    """StarGAN's G: ``(images [B, 3, H, W] in [-1, 1], labels [B, C]) -> images [B, 3, H, W] in [-1, 1]``."""

    def __init__(self, cfg: MatchGANConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.g_conv_dim
        self.stem = nn.Sequential(nn.Conv2d(3 + cfg.c_dim, d, 7, 1, 3, bias=False), _norm(d), nn.ReLU())
        down: list[nn.Module] = []
        for _ in range(2):
            down += [nn.Conv2d(d, 2 * d, 4, 2, 1, bias=False), _norm(2 * d), nn.ReLU()]
            d *= 2
        self.down = nn.Sequential(*down)
        self.blocks = nn.Sequential(*[ResidualBlock(d) for _ in range(cfg.g_repeat_num)])
        up: list[nn.Module] = []
        for _ in range(2):
            up += [nn.ConvTranspose2d(d, d // 2, 4, 2, 1, bias=False), _norm(d // 2), nn.ReLU()]
            d //= 2
        self.up = nn.Sequential(*up)
        self.to_rgb = nn.Sequential(nn.Conv2d(d, 3, 7, 1, 3, bias=False), nn.Tanh())

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        images = _check_images("images", images)
        labels = _check_labels("labels", labels, images.shape[0], self.cfg.c_dim)
        B, _, H, W = images.shape
        tiled = labels.to(images.dtype).view(B, -1, 1, 1).expand(-1, -1, H, W)
        x = self.stem(torch.cat([images, tiled], dim=1))
        return self.to_rgb(self.up(self.blocks(self.down(x))))


class Discriminator(nn.Module):
    """StarGAN's PatchGAN D with class logits, plus MatchGAN's pair head."""

    def __init__(self, cfg: MatchGANConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_conv_dim
        layers: list[nn.Module] = [nn.Conv2d(3, d, 4, 2, 1), nn.LeakyReLU(LRELU)]
        for _ in range(1, cfg.d_repeat_num):
            layers += [nn.Conv2d(d, 2 * d, 4, 2, 1), nn.LeakyReLU(LRELU)]
            d *= 2
        self.trunk = nn.Sequential(*layers)
        self.channels = d
        k = cfg.trunk_side
        self.src_head = nn.Conv2d(d, 1, 3, 1, 1, bias=False)
        self.cls_head = nn.Conv2d(d, cfg.c_dim, k, bias=False)
        if cfg.pair_head == "linear":
            self.pair_head: nn.Module = nn.Conv2d(2 * d, 2, k, bias=False)
        else:
            self.pair_head = nn.Sequential(nn.Conv2d(2 * d, cfg.pair_hidden, 1), nn.LeakyReLU(LRELU),
                                           nn.Conv2d(cfg.pair_hidden, 2, k, bias=False))

    def features(self, images: Tensor) -> Tensor:
        """The trunk map ``[B, channels, k, k]``."""
        return self.trunk(_check_images("images", images, self.cfg.size))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(src [B, 1, k, k] PatchGAN logits, cls [B, C] label logits, trunk map [B, channels, k, k])``."""
        h = self.features(images)
        return self.src_head(h), self.cls_head(h).flatten(1), h

    def critic(self, images: Tensor) -> Tensor:
        """The PatchGAN logits alone (what WGAN-GP's penalty differentiates)."""
        return self.src_head(self.features(images))

    def pair_logits(self, first: Tensor, second: Tensor) -> Tensor:
        """``[P, 2]`` logits (index 1: same label) of pairs of trunk maps ``[P, channels, k, k]`` each."""
        if first.shape != second.shape or first.dim() != 4 or first.shape[1] != self.channels:
            raise ValueError(f"first and second must be trunk maps [P, {self.channels}, k, k] of the same shape, got "
                             f"{list(first.shape)} and {list(second.shape)}")
        return self.pair_head(torch.cat([first, second], dim=1)).flatten(1)


# ---------------------------------------------------------------------------------------------------
# The pair, label handling, translation


class MatchGAN(WithEMAGenerator, nn.Module):
    """G and D of one MatchGAN, plus an optional EMA copy of G (off in the reference recipe)."""

    def __init__(self, cfg: MatchGANConfig):
        super().__init__()
        self.cfg = cfg
        self.gen = Generator(cfg)
        self.dis = Discriminator(cfg)
        self.gen_ema: Generator | None = None

    # -- labels

    def target_labels(self) -> Tensor:
        """The classes training draws targets from, ``[K, C]`` float32 on the model's device."""
        return self.cfg.class_vectors().to(next(self.parameters()).device)

    def class_names(self) -> list[str]:
        from fsgan_fast.data.attributes import class_name

        return [class_name(v, self.cfg.labels, self.cfg.label_kind) for v in self.cfg.class_vectors().tolist()]

    def label_vector(self, spec: str) -> Tensor:
        """A target label from its words: ``"none"`` or attribute names joined by ',' or '+' (attributes), or a
        category's name. Raises :class:`MatchGANInputError` naming an unknown label or a broken exclusive group."""
        names = list(self.cfg.labels)
        words = [w for w in spec.replace("+", ",").split(",") if w.strip()]
        words = [w.strip() for w in words]
        if self.cfg.label_kind == "categorical":
            if len(words) != 1 or words[0] not in names:
                raise MatchGANInputError(f"target {spec!r}: expected one of the categories {', '.join(names)}")
        elif words != ["none"]:
            unknown = [w for w in words if w not in names]
            if unknown:
                raise MatchGANInputError(f"target {spec!r}: unknown attribute(s) {unknown}; the model's attributes: "
                                         f"{', '.join(names)} (or 'none')")
        vector = torch.zeros(len(names))
        for w in words:
            if w != "none":
                vector[names.index(w)] = 1.0
        if not bool(self.cfg.allows(vector[None])[0]):
            raise MatchGANInputError(f"target {spec!r} sets two attributes of an exclusive group "
                                     f"({', '.join(self.cfg.exclusive)}): at most one of each may be set")
        return vector

    def flip_targets(self, source: Tensor) -> Tensor:
        """StarGAN's test targets: ``[N, C, C]``, for each image and each label j, the image's own labels
        ``source [N, C]`` with label j changed: an attribute toggled, except that an attribute of an exclusive group
        is set and the others of its group cleared (the reference's hair colours); a category: one-hot j."""
        source = source.float()
        N, C = source.shape
        if self.cfg.label_kind == "categorical":
            return torch.eye(C, device=source.device).expand(N, C, C).clone()
        out = source[:, None, :].repeat(1, C, 1)
        group_of = {j: g for g in self.cfg.exclusive_groups() for j in g}
        for j in range(C):
            if j in group_of:
                out[:, j, group_of[j]] = 0.0
                out[:, j, j] = 1.0
            else:
                out[:, j, j] = 1.0 - source[:, j]
        return out

    @torch.no_grad()
    def predict_labels(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """D's reading of each image's labels, ``[N, C]`` 0/1: attributes with a positive logit, or the top category."""
        images = _check_images("images", images, self.cfg.size)
        was = self.dis.training
        self.dis.eval()
        try:
            logits = torch.cat([self.dis(images[s : s + batch_size])[1] for s in range(0, len(images), batch_size)])
        finally:
            self.dis.train(was)
        if self.cfg.label_kind == "categorical":
            return torch.nn.functional.one_hot(logits.argmax(1), self.cfg.c_dim).float()
        return (logits > 0).float()

    @torch.no_grad()
    def translate(self, images: Tensor, targets: Tensor, *, batch_size: int = 16, use_ema: bool = True) -> Tensor:
        """Every image to every target: ``images [N, 3, S, S]`` and ``targets [T, C]`` (shared) or ``[N, T, C]`` (per
        image) give ``[N, T, 3, S, S]``, with the EMA generator when there is one and ``use_ema``."""
        images = _check_images("images", images)
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(targets, Tensor) or not targets.is_floating_point():
            raise TypeError("targets must be a floating tensor of label vectors")
        N = images.shape[0]
        if targets.dim() == 2:
            targets = targets.expand(N, -1, -1)
        if targets.dim() != 3 or targets.shape[0] != N or targets.shape[2] != self.cfg.c_dim:
            raise ValueError(f"targets must be [T, {self.cfg.c_dim}] or [N={N}, T, {self.cfg.c_dim}], got "
                             f"{list(targets.shape)}")
        gen = self.pick(use_ema)
        p = next(gen.parameters())
        T = targets.shape[1]
        out = images.new_empty(N, T, *images.shape[1:])
        for s in range(0, N, batch_size):
            x = images[s : s + batch_size].to(p.device, p.dtype)
            for t in range(T):
                out[s : s + batch_size, t] = gen(x, targets[s : s + batch_size, t].to(p.device, p.dtype)).to(out)
        return out


def translation_grid(images: Tensor, translations: Tensor, padding: int = 2) -> Tensor:
    """``[3, H', W']``: one row per image, the source then its translations (``images [N, 3, S, S]``,
    ``translations [N, T, 3, S, S]``), white padding."""
    from fsgan_fast.utils.images import make_grid

    N, T = translations.shape[:2]
    cells = torch.cat([images[:, None].to(translations), translations], dim=1).flatten(0, 1)
    return make_grid(cells, nrow=T + 1, padding=padding)


# ---------------------------------------------------------------------------------------------------
# Export: the generator, image and target label in


class MatchGANInference(nn.Module):
    """``(image [B, 3, S, S] in [-1, 1], labels [B, C]) -> images [B, 3, S, S]``."""

    def __init__(self, gen: Generator):
        super().__init__()
        self.gen = gen

    def forward(self, image: Tensor, labels: Tensor) -> Tensor:
        return self.gen(image, labels)


@dataclasses.dataclass
class MatchGANExportOptions:
    """MatchGAN's own export options (``fsgan-fast export matchgan``)."""

    use_ema: bool = option(True, "export the EMA generator when the checkpoint has one (--no-ema: the trained G)",
                           flag="ema")

    def __post_init__(self) -> None:
        configs.validate(self)


def matchgan_graph(model: nn.Module, *, use_ema: bool = True):
    """The :class:`~fsgan_fast.export.graphs.GeneratorGraph` of a MatchGAN (the pair or its generator): inputs an
    image and a target label vector per batch row."""
    from fsgan_fast.export.graphs import BATCH_INPUTS_KEY, GeneratorGraph

    which = "gen"
    if isinstance(model, MatchGAN):
        which = "gen_ema" if use_ema and model.gen_ema is not None else "gen"
        gen = getattr(model, which)
    elif isinstance(model, Generator):
        gen = model
    else:
        raise TypeError(f"expected a MatchGAN or its Generator, got {type(model).__name__}")
    gen = copy.deepcopy(gen).eval().requires_grad_(False)
    cfg = gen.cfg
    classes = cfg.class_vectors()
    S, C = cfg.size, cfg.c_dim

    def sample(B: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, ...]:
        # random images stand in for real ones; the labels are classes the model was trained on
        where = generator.device if generator is not None else torch.device("cpu")
        image = torch.rand(B, 3, S, S, generator=generator, device=where) * 2 - 1
        pick = torch.randint(len(classes), (B,), generator=generator, device=where)
        return image.to(device), classes.to(where)[pick].to(device)

    names = ("image", "labels")
    meta = {
        "fsgan_fast.model": "matchgan",
        "fsgan_fast.config": json.dumps(cfg.to_dict()),
        "fsgan_fast.generator": which,
        "fsgan_fast.labels": json.dumps(list(cfg.labels)),
        "fsgan_fast.inputs": (f"image: [B, 3, {S}, {S}] in [-1, 1]; labels: [B, {C}] target {cfg.label_kind} "
                              f"({', '.join(cfg.labels)}) as 0/1 floats" +
                              (", one-hot" if cfg.label_kind == "categorical" else "")),
        "fsgan_fast.outputs": f"images: [B, 3, {S}, {S}] in [-1, 1]",
        BATCH_INPUTS_KEY: json.dumps(list(names)),
    }
    return GeneratorGraph(model="matchgan", module=MatchGANInference(gen).eval(), input_names=names,
                          output_names=("images",), batch_inputs=names, sample=sample, metadata=meta)


# ---------------------------------------------------------------------------------------------------
# fsgan-fast translate matchgan (= fsgan-fast app matchgan translate)


@dataclasses.dataclass
class TranslateOptions:
    """The inputs of ``fsgan-fast translate matchgan``."""

    images: tuple[str, ...] = option(help="images to translate: files, or folders whose image files are all taken "
                                     "(centre-cropped and resized to the model's size)", metavar="PATH")
    targets: tuple[str, ...] = option(
        ("classes",), "target labels, one grid column each: 'classes' (every label vector the model trained on), "
        "'flip' (per label, the image's own labels as D reads them with that label changed: StarGAN's test figure), "
        "or a label: attribute names joined by ',' ('none' for no attribute), or a category", metavar="TARGET")
    rows: int = option(8, "input images per grid file (one row each)", low=1)
    batch_size: int = option(16, "images translated at once", low=1)
    use_ema: bool = option(True, "use the EMA generator when the checkpoint has one (--no-ema: the trained G)",
                           flag="ema")

    def __post_init__(self) -> None:
        configs.validate(self)
        if not self.images:
            raise ConfigError("images: give at least one image file or folder")
        if not self.targets:
            raise ConfigError("targets: give at least one target")


def _input_files(paths: Sequence[str]) -> list[Path]:
    from fsgan_fast.utils.images import is_image_file

    files: list[Path] = []
    for text in paths:
        p = Path(text)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and is_image_file(f) and not f.name.startswith("."))
            if not found:
                raise MatchGANInputError(f"images: the folder {text!r} holds no image files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise MatchGANInputError(f"images: {text!r} does not exist")
    return files


def read_inputs(paths: Sequence[str], size: int) -> tuple[Tensor, list[Path]]:
    """Image files (or folders of them) as ``[N, 3, size, size]`` in [-1, 1], and the files in order."""
    from fsgan_fast.utils.images import read_image

    files = _input_files(paths)
    images = []
    for f in files:
        try:
            images.append(read_image(f, size))
        except ValueError as e:
            raise MatchGANInputError(f"images: {e}") from None
    return torch.stack(images).float() / 127.5 - 1.0, files


def target_columns(model: MatchGAN, specs: Sequence[str], images: Tensor, *, batch_size: int = 64
                   ) -> tuple[Tensor, list[str]]:
    """The grid's columns: per-image targets ``[N, T, C]`` and a name per column, from ``specs`` (see
    :class:`TranslateOptions`)."""
    from fsgan_fast.data.attributes import class_name

    N, C = images.shape[0], model.cfg.c_dim
    columns: list[Tensor] = []
    names: list[str] = []
    for spec in specs:
        if spec == "classes":
            vectors = model.cfg.class_vectors()
            columns += [v.expand(N, C) for v in vectors]
            names += [class_name(v, model.cfg.labels, model.cfg.label_kind) for v in vectors.tolist()]
        elif spec == "flip":
            source = model.predict_labels(images.to(next(model.parameters()).device), batch_size).cpu()
            flipped = model.flip_targets(source)
            columns += [flipped[:, j] for j in range(C)]
            verb = "to" if model.cfg.label_kind == "categorical" else "flip"
            names += [f"{verb} {n}" for n in model.cfg.labels]
        else:
            columns.append(model.label_vector(spec).expand(N, C))
            names.append(spec)
    return torch.stack(columns, dim=1), names


def translate_command(model: MatchGAN, opts: TranslateOptions, *, out: Path, generator: torch.Generator
                      ) -> list[Path]:
    """Write ``out/grid_<k>.png`` (``opts.rows`` images per file, one row each: the source, then one translation
    per target) and ``out/columns.txt`` (the column titles, then the source file of each row)."""
    from fsgan_fast.utils.images import save_image

    if not opts.use_ema and model.gen_ema is None:
        raise ConfigError("--no-ema given but the checkpoint has no EMA generator to skip")
    images, files = read_inputs(opts.images, model.cfg.size)
    targets, names = target_columns(model, opts.targets, images, batch_size=opts.batch_size)
    device = next(model.parameters()).device
    translations = model.translate(images.to(device), targets, batch_size=opts.batch_size, use_ema=opts.use_ema)
    written = []
    chunks = range(0, len(images), opts.rows)
    width = max(3, len(str(len(chunks) - 1)))
    for k, s in enumerate(chunks):
        grid = translation_grid(images[s : s + opts.rows], translations[s : s + opts.rows].cpu())
        written.append(save_image(grid, out / f"grid_{k:0{width}d}.png"))
    text = "columns: source | " + " | ".join(names) + "\n"
    text += "".join(f"grid_{s // opts.rows:0{width}d} row {s % opts.rows}: {f}\n" for s, f in enumerate(files))
    (out / "columns.txt").write_text(text)
    return written + [out / "columns.txt"]


APPS = {
    "translate": registry.ModelApp(
        "translate images to target labels: side-by-side grids, one row per image", translate_command,
        TranslateOptions,
        "Translate each input image to every target label with the checkpoint's generator. Writes OUT/grid_000.png "
        "(and more grids for more than --rows images): one row per image, the source first, then one column per "
        "target, and OUT/columns.txt naming the columns and rows. 'fsgan-fast translate matchgan' is the same "
        "command."),
}


def _auto_preset(data: str | None) -> str:
    from fsgan_fast.data.attributes import BUILTIN_SPECS

    if data in BUILTIN_SPECS:
        return "demo"
    if data is not None and str(data).lower().endswith(".txt"):
        return "celeba"
    return "paper"


registry.register(registry.ModelSpec(
    name="matchgan",
    summary="MatchGAN: semi-supervised StarGAN with a pair-matching loss, attribute/label translation (ICIP 2020)",
    description=(
        "Train MatchGAN on labelled images, of which only --labelled-fraction keep their labels (class-balanced, "
        "from --seed); the rest train without labels on every other iteration. Writes RUN/checkpoint.pt (latest; "
        "exact resume), RUN/metrics.jsonl (every loss term), RUN/samples/step_*.png (fixed images, one row each: "
        "the source, then its translations to the model's classes), RUN/labels.json (labelled images per class) and "
        "RUN/config.json. --data: 'builtin' (crops of scikit-image photos whose colour/texture transforms are their "
        "attributes Gray, Red_Tint, Blue_Tint, Blurred; no download), 'builtin:categorical' (one of six transforms "
        "per image), a CelebA-format attribute file list_attr_celeba.txt (images beside it, in its img_align_celeba/ "
        "or images/ folder, or --image-dir; --attrs selects attributes, --exclusive 'A,B,C' groups of which at most "
        "one may be set), or a folder of label folders (RaFD-style, one category per image). Translate with "
        "'fsgan-fast translate matchgan'. Options left unset come from --preset."
    ),
    model_config=MatchGANConfig,
    train_config="fsgan_fast.train.matchgan:MatchGANTrainConfig",
    presets="fsgan_fast.train.matchgan:PRESETS",
    auto_preset=_auto_preset,
    preset_help=("'demo' = 64 px, G/D widths 16, 3 residual blocks, lr 5e-4, n_critic 1, a quarter of the images "
                 "labelled, batch 16, 1000 steps (about 4 minutes on a 2-core CPU); 'paper' = the reference networks "
                 "and schedule (128 px, widths 64, lr 1e-4, batch 16, n_critic 5, 200k steps, the lr decaying to 0 "
                 "over the last 100k); 'celeba' = paper with the attributes Black_Hair Blond_Hair Brown_Hair Male "
                 "Young, the three hair colours exclusive; auto = demo for builtin data, celeba for a .txt attribute "
                 "file, else paper"),
    build=MatchGAN,
    train="fsgan_fast.train.matchgan:train_run",
    graph=matchgan_graph,
    export_options=MatchGANExportOptions,
    model_types=(MatchGAN, Generator),
    apps=APPS,
))


__all__ = ["MatchGANConfig", "Generator", "Discriminator", "ResidualBlock", "MatchGAN", "MatchGANInference",
           "MatchGANExportOptions", "MatchGANInputError", "TranslateOptions", "matchgan_graph", "translate_command",
           "translation_grid", "target_columns", "read_inputs", "class_string", "CELEBA_ATTRS", "CELEBA_EXCLUSIVE"]
