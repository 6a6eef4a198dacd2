"""Few-shot SMIS (Endo & Kanamori 2021): semantic masks to photos from 1-5 labelled examples, with a frozen
StyleGAN2 prior, prototype pseudo-labels and a pSp encoder (ALGORITHMS.md §4).

The model (:class:`SMIS`) is three parts, all in one checkpoint, so generation needs nothing else:

- ``decoder``: a frozen :class:`~fsgan_fast.nn.stylegan2.StyleGAN2Generator` (rosinality layout; loaded from a
  ``g_ema`` checkpoint for real use, random-init for tests and the built-in demo).
- ``encoder``: pSp's :class:`~fsgan_fast.nn.psp.GradualStyleEncoder`, one-hot masks (``label_nc`` channels) ->
  W+ ``[N, n_latent, style_dim]``; ``latent_avg`` ``[n_latent, style_dim]`` is added to its output when
  ``start_from_latent_avg`` (pSp's ``--start_from_latent_avg``).
- mask -> w+ -> image, with optional style mixing: the layers of ``latent_layers`` take (``alpha`` = None) or
  blend towards (``w + alpha (w_rand - w)``) the w of a random z, pSp's ``--latent_mask`` multi-modal outputs.

The pseudo-labelling maths of training (steps 2 and 3) lives here too, as plain functions on feature maps:

- :func:`dense_prototypes`: SMIS's ``compute_rep_vec``: per class, the masked average of the features (masks
  nearest-resized to the feature grid) per shot, summed over the shots containing the class and divided by their
  count (:func:`fsgan_fast.ops.masked_avg_pool` with ``per_image=True``), then L2-normalised. Absent classes keep
  a zero vector and ``present = False``.
- :func:`dense_pseudo_labels`: per pixel, the present prototype of highest cosine (:func:`fsgan_fast.ops.cosine_topk`,
  k=1); ties go to the lower class id.
- :func:`sparse_prototypes`: every annotated feature vector (id >= 1; 0 = not annotated), L2-normalised, with its
  class: ``compute_rep_vecs``, no averaging.
- :func:`sparse_pseudo_labels`: each stored vector takes its ``k`` (3) most similar pixels of each image; pixels
  below or at the cosine ``threshold`` (0.5) are dropped; a pixel reached by several vectors (many-to-one) takes
  the class of the best score, ties to the lower class id (the reference's dedupe + greedy running max over
  classes); everything else is 0. Vectorised: one scatter-max over ``[B, classes * H * W]``.

Differences from the reference code, on purpose: only present prototypes compete for a pixel (the reference's
argmax also sees the zero vectors of absent classes, which win where every present cosine is negative); generation
uses the decoder's fixed noise buffers (pSp's inference
``randomize_noise=False``) unless asked otherwise; the feature resolution is clipped to the generator's size (32 px
test models match at 32); the export graph runs the modulated convs "unfused" (the style scales the activations,
demodulation scales the outputs), which equals the grouped-conv form mathematically and gives ONNX a static conv
``group`` for any batch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import numbers
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.models import registry
from fsgan_fast.nn.psp import EncoderConfig, GradualStyleEncoder
from fsgan_fast.nn.stylegan2 import ModulatedConv2d, StyleGAN2Config, StyleGAN2Generator

FEATURE_RES = 64  # the paper's matching layer: the 64x64 block's second conv
MIX_FROM = 8  # "auto" style mixing starts here (README: --latent_mask 8..17 at 1024 px), or at n_latent // 2
SPARSE_TOPK, SPARSE_THRESHOLD = 3, 0.5


class SMISInputError(registry.InputError):
    """A mask or option does not fit the model (size, class ids, layer range)."""


# ---------------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass
class SMISConfig:
    """The SMIS model: its StyleGAN2 prior, the encoder and the label set. Defaults: the paper's networks (the
    StyleGAN2 fields are replaced by the checkpoint's own when training starts from ``--stylegan``)."""

    stylegan: StyleGAN2Config = option(help="the StyleGAN2 prior", prefix="stylegan",
                                       factory=lambda: StyleGAN2Config(size=256))
    encoder: EncoderConfig = option(help="the pSp encoder", prefix="encoder", factory=EncoderConfig)
    label_nc: int = option(0, "semantic classes = encoder input channels (ids 0..N-1; sparse masks: 0 = not "
                           "annotated); 0: from the pairs (max id + 1; builtin: 6)", low=0)
    feature_res: int = option(FEATURE_RES, "StyleGAN2 block whose second conv's output is matched to the "
                              "prototypes (the paper: 64; clipped to the generator's size)", low=4)
    start_from_latent_avg: bool = option(True, "add the prior's average latent to the encoder output "
                                         "(pSp's --start_from_latent_avg)")

    def __post_init__(self) -> None:
        configs.validate(self)
        if self.feature_res & (self.feature_res - 1):
            raise ValueError(f"feature_res must be a power of two >= 4, got {self.feature_res}")

    @property
    def size(self) -> int:
        return self.stylegan.size

    @property
    def matching_res(self) -> int:
        return min(self.feature_res, self.stylegan.size)

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SMISConfig:
        return configs.from_dict(cls, d)


# ---------------------------------------------------------------------------------------------------
# Masks


def _check_ids(name: str, ids: object, num_classes: int, *, size: int | None = None) -> Tensor:
    """``ids`` as int64 ``[B, H, W]`` class ids in ``0..num_classes-1`` (one host sync for the range)."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class ids, got dtype {ids.dtype}")
    if ids.dim() == 2:
        ids = ids.unsqueeze(0)
    if ids.dim() != 3 or ids.shape[0] == 0 or ids.shape[1] == 0 or ids.shape[2] == 0:
        raise ValueError(f"{name} must be class ids [B, H, W] (or one [H, W]), got shape {list(ids.shape)}")
    if size is not None and (ids.shape[1] != size or ids.shape[2] != size):
        raise SMISInputError(f"{name} must be {size}x{size} (the model's size), got {ids.shape[1]}x{ids.shape[2]}; "
                             "resize it with nearest neighbour (fsgan_fast.data.mask_pairs.read_mask(path, size))")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num_classes:
        raise SMISInputError(f"{name} holds class ids in [{lo}, {hi}], but there are {num_classes} classes "
                             f"(ids 0..{num_classes - 1})")
    return ids.long()


def one_hot(ids: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Class ids ``[B, H, W]`` -> one-hot ``[B, num_classes, H, W]`` (by comparison: the same graph in every
    exporter, an ``Equal`` in ONNX)."""
    classes = torch.arange(num_classes, device=ids.device).view(1, -1, 1, 1)
    return (ids.unsqueeze(1) == classes).to(dtype)


def resize_ids(ids: Tensor, size: int) -> Tensor:
    """Nearest-neighbour resize of class ids ``[B, H, W]`` to ``size x size`` (torch's ``nearest`` index rule)."""
    if ids.shape[-1] == size and ids.shape[-2] == size:
        return ids
    return F.interpolate(ids.unsqueeze(1).float(), size=(size, size), mode="nearest").squeeze(1).long()


# ---------------------------------------------------------------------------------------------------
# Prototypes and pseudo labels (steps 2 and 3)


def _check_feats(feats: object) -> Tensor:
    if not isinstance(feats, Tensor) or not feats.is_floating_point():
        raise TypeError(f"feats must be a floating tensor [B, C, H, W], got "
                        f"{feats.dtype if isinstance(feats, Tensor) else type(feats).__name__}")
    if feats.dim() != 4 or 0 in feats.shape:
        raise ValueError(f"feats must be [B, C, H, W] with no empty dimension, got shape {list(feats.shape)}")
    return feats


def dense_prototypes(feats: Tensor, masks: Tensor, num_classes: int):
    """SMIS's dense prototypes (module docstring): ``Prototypes(vectors [num_classes, C] L2-normalised, present)``.

    ``feats [B, C, h, w]`` are the shots' features, ``masks [B, H, W]`` their class ids (any size; nearest-resized
    to the feature grid)."""
    from fsgan_fast.ops import Prototypes, masked_avg_pool

    feats = _check_feats(feats)
    ids = _check_ids("masks", masks, num_classes)
    if ids.shape[0] != feats.shape[0]:
        raise ValueError(f"masks must hold one mask per feature map (B={feats.shape[0]}), got {ids.shape[0]}")
    pooled = masked_avg_pool(feats, one_hot(ids, num_classes, feats.dtype), per_image=True)
    return Prototypes(F.normalize(pooled.vectors, dim=1), pooled.present)


def dense_pseudo_labels(feats: Tensor, prototypes) -> Tensor:
    """Class ids ``int64 [B, h, w]``: per pixel of ``feats [B, C, h, w]``, the present prototype of highest
    cosine (ties: the lower id). ``prototypes``: :class:`fsgan_fast.ops.Prototypes` (``vectors [M, C]``,
    ``present [M]``)."""
    from fsgan_fast.ops import cosine_topk

    feats = _check_feats(feats)
    vectors, present = prototypes
    if vectors.dim() != 2 or present.shape != (vectors.shape[0],) or present.dtype != torch.bool:
        raise ValueError(f"prototypes must be (vectors [M, C], present [M] bool), got {list(vectors.shape)} and "
                         f"{present.dtype} {list(present.shape)}")
    if vectors.shape[1] != feats.shape[1]:
        raise ValueError(f"prototypes have {vectors.shape[1]} channels but feats {feats.shape[1]}: they come from "
                         "another layer or generator")
    ids = present.nonzero().squeeze(1)
    if ids.numel() == 0:
        raise ValueError("no class is present among the prototypes: the shots' masks label nothing")
    idx, _ = cosine_topk(feats, vectors[ids].to(feats.dtype), k=1)
    # only present prototypes compete: an absent class's zero vector (cosine 0) must never win
    return ids.to(feats.device)[idx[:, 0]]


def sparse_prototypes(feats: Tensor, masks: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Every annotated feature vector and its class: ``(vectors [V, C] L2-normalised, classes [V] int64 >= 1)``.

    ``masks [B, H, W]``: ids, 0 = not annotated; nearest-resized to the feature grid first (as the reference),
    so annotations thinner than the grid's step can vanish: an error says so."""
    feats = _check_feats(feats)
    ids = _check_ids("masks", masks, num_classes)
    if ids.shape[0] != feats.shape[0]:
        raise ValueError(f"masks must hold one mask per feature map (B={feats.shape[0]}), got {ids.shape[0]}")
    h, w = feats.shape[-2:]
    grid = F.interpolate(ids.unsqueeze(1).float(), size=(h, w), mode="nearest").squeeze(1).long()
    b, y, x = (grid >= 1).nonzero(as_tuple=True)
    if b.numel() == 0:
        raise ValueError(f"no annotated pixel (id >= 1) survives the resize of the sparse masks to the {h}x{w} "
                         "feature grid: draw thicker scribbles, or more of them")
    vectors = F.normalize(feats[b, :, y, x], dim=1)
    return vectors, grid[b, y, x]


def sparse_pseudo_labels(feats: Tensor, vectors: Tensor, classes: Tensor, num_classes: int, *, k: int = SPARSE_TOPK,
                         threshold: float = SPARSE_THRESHOLD) -> Tensor:
    """Sparse pseudo labels ``int64 [B, h, w]`` (0 = unlabelled) by top-``k`` matching with many-to-one assignment
    (module docstring)."""
    from fsgan_fast.ops import cosine_topk

    feats = _check_feats(feats)
    if not isinstance(vectors, Tensor) or vectors.dim() != 2 or vectors.shape[1] != feats.shape[1]:
        raise ValueError(f"vectors must be [V, C={feats.shape[1]}], got "
                         f"{list(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__}")
    if not isinstance(classes, Tensor) or classes.shape != (vectors.shape[0],) or classes.is_floating_point():
        raise ValueError(f"classes must be an integer tensor [V={vectors.shape[0]}], one class per vector")
    if classes.numel() and (int(classes.min()) < 1 or int(classes.max()) >= num_classes):
        raise ValueError(f"classes must lie in 1..{num_classes - 1} (0 means 'not annotated'), got "
                         f"[{int(classes.min())}, {int(classes.max())}]")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold < 1.0:
        # the reference's running best starts at 0: a match must beat cosine 0 whatever the threshold
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    B, _, h, w = feats.shape
    P = h * w
    idx, score = cosine_topk(feats, vectors.to(feats.dtype), k=k, threshold=threshold, over="pixels")  # [B, V, k]
    keep = idx >= 0
    slot = classes.to(feats.device).view(1, -1, 1) * P + idx.clamp_min(0)  # (class, pixel) -> one flat slot
    values = torch.where(keep, score.float(), torch.full_like(score, -math.inf, dtype=torch.float32))
    best = torch.full((B, num_classes * P), -math.inf, device=feats.device)
    best.scatter_reduce_(1, slot.reshape(B, -1), values.reshape(B, -1), reduce="amax")
    best = best.view(B, num_classes, P)
    label = best.argmax(1)  # the first maximum: ties go to the lower class, as the greedy running max
    label = torch.where(torch.isfinite(best.amax(1)), label, torch.zeros_like(label))
    return label.view(B, h, w)


# ---------------------------------------------------------------------------------------------------
# Style mixing


def parse_latent_mask(text: str | Sequence[int] | None, n_latent: int) -> tuple[int, ...]:
    """The W+ layers that take the random style: ``"auto"`` (``min(8, n_latent // 2)`` .. last: the finer half,
    pSp's README ``8..17`` at 1024 px), ``"none"``/``""`` (no mixing), or indices and inclusive ranges such as
    ``"8-17"``, ``"8..17"``, ``"4,6,9-11"``. Raises :class:`SMISInputError` for a layer out of range."""
    if text is None:
        return ()
    if not isinstance(text, str):
        layers = tuple(int(v) for v in text)
    else:
        spec = text.strip().lower()
        if spec in ("", "none", "off"):
            return ()
        if spec == "auto":
            return tuple(range(min(MIX_FROM, n_latent // 2), n_latent))
        layers_list: list[int] = []
        for part in spec.replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:(?:-|\.\.)(\d+))?", part)
            if m is None:
                raise SMISInputError(f"latent mask {text!r}: expected layer indices and ranges like '8-17' or "
                                     "'4,6,9-11', or 'auto' / 'none'")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise SMISInputError(f"latent mask {text!r}: the range {lo}-{hi} is empty")
            layers_list += range(lo, hi + 1)
        layers = tuple(layers_list)
    bad = sorted({v for v in layers if not 0 <= v < n_latent})
    if bad:
        raise SMISInputError(f"latent mask layers {bad} are out of range: this prior has {n_latent} W+ layers "
                             f"(0..{n_latent - 1})")
    return tuple(sorted(set(layers)))


def mix_styles(codes: Tensor, inject: Tensor, layers: Tensor, alpha: float | None = None) -> Tensor:
    """``codes [N, L, D]`` with the layers where ``layers [L]`` (bool) is set replaced by (``alpha`` None) or blended
    towards (``codes + alpha (inject - codes)``) ``inject`` (``[N, D]`` or ``[N, L, D]``)."""
    if inject.dim() == 2:
        inject = inject.unsqueeze(1)
    a = 1.0 if alpha is None else float(alpha)
    weight = layers.to(codes.dtype).view(1, -1, 1) * a
    return codes + weight * (inject.to(codes.dtype) - codes)


# ---------------------------------------------------------------------------------------------------
# The unfused synthesis (export): the same maths with a static conv group


def _modulated_conv_unfused(conv: ModulatedConv2d, x: Tensor, style: Tensor) -> Tensor:
    """:class:`ModulatedConv2d` as ``conv(x * s, W) * d``: identical to its grouped form (``d`` is the per-sample,
    per-output demodulation), with one shared weight whatever the batch."""
    s = conv.modulation(style)  # [N, in]
    weight = conv.weight[0] * conv.scale  # [out, in, k, k]
    x = x * s.to(x.dtype).unsqueeze(-1).unsqueeze(-1)
    if conv.upsample:
        out = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2, padding=0)
    else:
        out = F.conv2d(x, weight.to(x.dtype), padding=conv.padding)
    if conv.demodulate:
        # sum_{in,kh,kw} (W s)^2 = (s^2) @ sum_{kh,kw} W^2
        energy = (s * s) @ weight.pow(2).sum(dim=(2, 3)).t()
        out = out * torch.rsqrt(energy + 1e-8).to(out.dtype).unsqueeze(-1).unsqueeze(-1)
    if conv.upsample:
        out = conv.blur(out)
    return out


def synthesize_unfused(decoder: StyleGAN2Generator, latent: Tensor, noise: Sequence[Tensor]) -> Tensor:
    """``decoder(latent, input_is_latent=True, noise=noise)`` (w+ ``[N, n_latent, D]``) with unfused modulated
    convs; the decoder's own modules supply every weight."""
    out = decoder.input(latent.shape[0]).to(latent.dtype)
    c1 = decoder.conv1
    out = c1.activate(c1.noise(_modulated_conv_unfused(c1.conv, out, latent[:, 0]), noise[0]))
    skip = _modulated_conv_unfused(decoder.to_rgb1.conv, out, latent[:, 1]) + decoder.to_rgb1.bias.to(out.dtype)
    i = 1
    for k, to_rgb in enumerate(decoder.to_rgbs):
        for j in (0, 1):
            layer = decoder.convs[2 * k + j]
            out = layer.activate(layer.noise(_modulated_conv_unfused(layer.conv, out, latent[:, i + j]),
                                             noise[2 * k + 1 + j]))
        skip = (_modulated_conv_unfused(to_rgb.conv, out, latent[:, i + 2]) + to_rgb.bias.to(out.dtype)
                + to_rgb.upsample(skip))
        i += 2
    return skip


# ---------------------------------------------------------------------------------------------------
# The model


class SMIS(nn.Module):
    """Frozen StyleGAN2 ``decoder`` + pSp ``encoder`` + ``latent_avg``: masks -> W+ -> images (module docstring)."""

    def __init__(self, cfg: SMISConfig):
        super().__init__()
        if not isinstance(cfg, SMISConfig):
            raise TypeError(f"cfg must be an SMISConfig, got {type(cfg).__name__}")
        if cfg.label_nc < 1:
            raise ValueError("label_nc is 0 ('from the pairs'): set it to the number of classes before building the "
                             "model (training resolves it from the data)")
        self.cfg = cfg
        self.decoder = StyleGAN2Generator(cfg.stylegan)
        self.decoder.requires_grad_(False).eval()
        d = self.decoder
        self.encoder = GradualStyleEncoder(cfg.encoder, label_nc=cfg.label_nc, n_latent=d.n_latent,
                                           style_dim=d.style_dim, image_size=d.size)
        self.register_buffer("latent_avg", torch.zeros(d.n_latent, d.style_dim))

    @property
    def n_latent(self) -> int:
        return self.decoder.n_latent

    @property
    def style_dim(self) -> int:
        return self.decoder.style_dim

    @property
    def size(self) -> int:
        return self.decoder.size

    def train(self, mode: bool = True) -> SMIS:
        super().train(mode)
        self.decoder.eval()  # the prior is frozen whatever the mode
        return self

    def set_latent_avg(self, latent_avg: Tensor) -> None:
        """Store the prior's average latent (``[D]``, ``[1, D]`` or ``[n_latent, D]``, as pSp checkpoints hold it)."""
        nl, d = self.n_latent, self.style_dim
        if not isinstance(latent_avg, Tensor) or latent_avg.shape[-1] != d or latent_avg.numel() not in (d, nl * d):
            got = list(latent_avg.shape) if isinstance(latent_avg, Tensor) else type(latent_avg).__name__
            raise ValueError(f"latent_avg must be [{d}], [1, {d}] or [{nl}, {d}], got {got}")
        with torch.no_grad():
            self.latent_avg.copy_(latent_avg.reshape(-1, d).expand(nl, d))

    # -- masks -> codes -> images

    def masks_to_input(self, masks: Tensor) -> Tensor:
        """Class ids ``[B, S, S]`` (or ``[S, S]``) or one-hot / soft masks ``[B, label_nc, S, S]`` -> the encoder's
        float input, checked."""
        c, S = self.cfg, self.size
        p = self.latent_avg
        if isinstance(masks, Tensor) and masks.is_floating_point():
            if masks.dim() != 4 or masks.shape[1] != c.label_nc or masks.shape[0] == 0:
                raise SMISInputError(f"float masks must be one-hot [B, label_nc={c.label_nc}, {S}, {S}], got shape "
                                     f"{list(masks.shape)}")
            if masks.shape[-2:] != (S, S):
                raise SMISInputError(f"masks must be {S}x{S} (the model's size), got "
                                     f"{masks.shape[-2]}x{masks.shape[-1]}")
            return masks.to(p.device, p.dtype)
        ids = _check_ids("masks", masks, c.label_nc, size=S)
        return one_hot(ids.to(p.device), c.label_nc, p.dtype)

    def encode(self, masks: Tensor) -> Tensor:
        """W+ codes ``[B, n_latent, style_dim]`` of masks (see :meth:`masks_to_input`)."""
        codes = self.encoder(self.masks_to_input(masks))
        if self.cfg.start_from_latent_avg:
            codes = codes + self.latent_avg.to(codes.dtype)
        return codes

    def synthesize(self, codes: Tensor, *, random_noise: bool = False, noise: Sequence[Tensor] | None = None,
                   noise_generator: torch.Generator | None = None) -> Tensor:
        """Images ``[B, 3, S, S]`` of W+ codes: the decoder's fixed noise buffers unless ``random_noise`` or
        ``noise`` (maps as :meth:`StyleGAN2Generator.make_noise`)."""
        return self.decoder(codes, input_is_latent=True, noise=noise, randomize_noise=random_noise,
                            noise_generator=noise_generator).image

    def random_w(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` mapped random latents ``w [n, style_dim]`` (z ~ N(0, I) from ``generator``)."""
        p = self.latent_avg
        where = generator.device if generator is not None else p.device
        z = torch.randn(n, self.style_dim, generator=generator, device=where).to(p.device, p.dtype)
        return self.decoder.get_latent(z)

    def layer_mask(self, layers: str | Sequence[int] | None) -> Tensor:
        """``bool [n_latent]``: the layers of :func:`parse_latent_mask`."""
        mask = torch.zeros(self.n_latent, dtype=torch.bool, device=self.latent_avg.device)
        mask[list(parse_latent_mask(layers, self.n_latent))] = True
        return mask

    def forward(self, masks: Tensor, *, latent_layers: str | Sequence[int] | None = None, inject: Tensor | None = None,
                alpha: float | None = None, random_noise: bool = False,
                noise_generator: torch.Generator | None = None) -> Tensor:
        """Images ``[B, 3, S, S]`` of masks; with ``latent_layers`` (see :func:`parse_latent_mask`), those layers
        take the style ``inject`` (``w [B, style_dim]`` or ``[B, n_latent, style_dim]``; drawn from
        ``noise_generator`` when None)."""
        codes = self.encode(masks)
        layers = self.layer_mask(latent_layers)
        if bool(layers.any()):
            if inject is None:
                inject = self.random_w(codes.shape[0], noise_generator)
            if inject.shape[0] != codes.shape[0] or inject.shape[-1] != self.style_dim:
                raise SMISInputError(f"inject must be [B={codes.shape[0]}, {self.style_dim}] or [B, {self.n_latent}, "
                                     f"{self.style_dim}], got {list(inject.shape)}")
            codes = mix_styles(codes, inject, layers, alpha)
        return self.synthesize(codes, random_noise=random_noise, noise_generator=noise_generator)

    @torch.no_grad()
    def generate(self, masks: Tensor, n: int = 1, generator: torch.Generator | None = None, *,
                 latent_layers: str | Sequence[int] | None = "auto", alpha: float | None = None,
                 random_noise: bool = False, batch_size: int = 16) -> tuple[Tensor, Tensor]:
        """``(plain [B, 3, S, S], mixed [B, n, 3, S, S])``: each mask's encoding, and ``n`` multi-modal outputs per
        mask, each mixing the ``latent_layers`` with another random style (all drawn up front from ``generator``,
        so the result does not depend on ``batch_size``). In eval mode; the mode is restored."""
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if alpha is not None and not (isinstance(alpha, numbers.Real) and 0.0 <= float(alpha) <= 1.0):
            raise SMISInputError(f"alpha must lie in [0, 1], got {alpha!r}")
        was_training = self.training
        self.eval()
        try:
            x = self.masks_to_input(masks)
            B = x.shape[0]
            layers = self.layer_mask(latent_layers)
            codes = torch.cat([self.encode(x[s : s + batch_size]) for s in range(0, B, batch_size)])
            inject = self.random_w(B * n, generator)  # drawn before any noise: fixed by the seed
            noise_gen = generator if random_noise else None
            plain = torch.cat([self.synthesize(codes[s : s + batch_size], random_noise=random_noise,
                                               noise_generator=noise_gen) for s in range(0, B, batch_size)])
            mixed_codes = mix_styles(codes.repeat_interleave(n, 0), inject, layers, alpha)
            mixed = [plain.new_empty(0, 3, self.size, self.size)]
            for s in range(0, B * n, batch_size):
                mixed.append(self.synthesize(mixed_codes[s : s + batch_size], random_noise=random_noise,
                                             noise_generator=noise_gen))
            return plain, torch.cat(mixed).view(B, n, 3, self.size, self.size)
        finally:
            self.train(was_training)

    # -- pseudo labels of the prior's samples (training's step 3)

    def features(self, w: Tensor, *, noise: Sequence[Tensor] | None = None, random_noise: bool = True,
                 noise_generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(images [B, 3, S, S], matching features [B, C, r, r])`` of ``w`` (``[B, D]`` or W+)."""
        r = self.cfg.matching_res
        out = self.decoder(w, input_is_latent=True, noise=noise, randomize_noise=random_noise,
                           noise_generator=noise_generator, return_features=(r,))
        return out.image, out.features[r]


# ---------------------------------------------------------------------------------------------------
# Export: masks (and the mixing style) in, images out


class SMISInference(nn.Module):
    """``(mask [B, S, S] int64, [z [B, style_dim]], [*noise maps]) -> images [B, 3, S, S]``: one-hot, encoder,
    optional style mixing of the fixed ``layers`` with ``w = mapping(z)``, the unfused synthesis."""

    def __init__(self, model: SMIS, layers: Tensor, alpha: float | None, noise: str):
        super().__init__()
        self.encoder = model.encoder
        self.decoder = model.decoder
        self.register_buffer("latent_avg", model.latent_avg.clone())
        self.register_buffer("layers", layers.clone())
        self.label_nc, self.start_from_latent_avg = model.cfg.label_nc, model.cfg.start_from_latent_avg
        self.mixing, self.alpha, self.noise = bool(layers.any()), alpha, noise

    def forward(self, mask: Tensor, *rest: Tensor) -> Tensor:
        codes = self.encoder(one_hot(mask, self.label_nc, self.latent_avg.dtype))
        if self.start_from_latent_avg:
            codes = codes + self.latent_avg
        if self.mixing:
            z, rest = rest[0], rest[1:]
            codes = mix_styles(codes, self.decoder.get_latent(z), self.layers, self.alpha)
        if self.noise == "input":
            noise = list(rest)
        else:
            noise = [getattr(self.decoder.noises, f"noise_{i}") for i in range(self.decoder.num_layers)]
        return synthesize_unfused(self.decoder, codes, noise)


@dataclasses.dataclass
class SMISExportOptions:
    """SMIS's own export options (``fsgan-fast export smis``)."""

    latent_mask: str = option("none", "W+ layers that take a random style (a graph input z [B, style_dim]): "
                              "'none', 'auto' (the finer half), or e.g. '8-17'")
    alpha: float | None = option(None, "blend the mixed layers towards the random style by this much (default: "
                                 "replace them)", low=0.0, high=1.0)
    noise: Literal["fixed", "input"] = option("fixed", "StyleGAN2 noise: the prior's fixed maps (pSp's inference) or "
                                              "graph inputs drawn N(0, 1) by the caller")

    def __post_init__(self) -> None:
        configs.validate(self)


def smis_graph(model: nn.Module, *, latent_mask: str = "none", alpha: float | None = None, noise: str = "fixed"):
    """The :class:`~fsgan_fast.export.graphs.GeneratorGraph` of an SMIS model: mask -> image."""
    from fsgan_fast.export.graphs import BATCH_INPUTS_KEY, INDEX_BOUNDS_KEY, GeneratorGraph

    if not isinstance(model, SMIS):
        raise TypeError(f"expected an SMIS model, got {type(model).__name__}")
    if noise not in ("fixed", "input"):
        raise ValueError(f"noise must be 'fixed' or 'input', got {noise!r}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    model = copy.deepcopy(model).eval().requires_grad_(False)
    layers = model.layer_mask(latent_mask)
    module = SMISInference(model, layers, alpha, noise).eval()
    cfg, S, D = model.cfg, model.size, model.style_dim
    sides = [2 ** ((i + 5) // 2) for i in range(model.decoder.num_layers)] if noise == "input" else []
    names = ("mask",) + (("z",) if module.mixing else ()) + tuple(f"noise{i}" for i in range(len(sides)))

    def sample(B: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, ...]:
        # random blobs, not per-pixel noise: a mask of a few regions, as a user's mask looks
        where = generator.device if generator is not None else device
        coarse = torch.randint(cfg.label_nc, (B, 1, 4, 4), generator=generator, device=where).float()
        mask = F.interpolate(coarse, size=(S, S), mode="nearest")[:, 0].long()
        inputs = [mask]
        if module.mixing:
            inputs.append(torch.randn(B, D, generator=generator, device=where))
        inputs += [torch.randn(B, 1, r, r, generator=generator, device=where) for r in sides]
        return tuple(t.to(device) for t in inputs)

    layer_list = parse_latent_mask(latent_mask, model.n_latent)
    meta = {
        "fsgan_fast.model": "smis",
        "fsgan_fast.config": json.dumps(cfg.to_dict()),
        "fsgan_fast.latent_mask": ",".join(map(str, layer_list)) or "none",
        "fsgan_fast.alpha": "replace" if alpha is None else str(alpha),
        "fsgan_fast.noise": noise,
        "fsgan_fast.inputs": f"mask: [B, {S}, {S}] int64 class ids 0..{cfg.label_nc - 1}" + (
            f"; z: [B, {D}] N(0, 1) (the mixed style)" if module.mixing else "") + (
            "; " + ", ".join(f"noise{i}: [B, 1, {r}, {r}] N(0, 1)" for i, r in enumerate(sides)) if sides else ""),
        "fsgan_fast.outputs": f"images: [B, 3, {S}, {S}] (about [-1, 1])",
        BATCH_INPUTS_KEY: json.dumps(list(names)),
        INDEX_BOUNDS_KEY: json.dumps({"mask": cfg.label_nc}),
    }
    return GeneratorGraph(model="smis", module=module, input_names=names, output_names=("images",),
                          batch_inputs=names, sample=sample, metadata=meta)


# ---------------------------------------------------------------------------------------------------
# fsgan-fast generate smis


@dataclasses.dataclass
class SMISGenerateOptions:
    """The options of ``fsgan-fast generate smis`` (``--n``: outputs per mask)."""

    mask: tuple[str, ...] = option(help="mask files: single-channel PNGs of class ids (the training masks' "
                                   "format), centre-cropped and nearest-resized to the model's size; --n outputs "
                                   "are written per mask", metavar="M.png")
    latent_mask: str = option("auto", "W+ layers that take a random style per output (multi-modal results): 'auto' "
                              "(the finer half; pSp's 8-17 at 1024 px), 'none', or e.g. '8-17', '4,6,9-11'")
    alpha: float | None = option(None, "blend the mixed layers towards the random style by this much (default: "
                                 "replace them)", low=0.0, high=1.0)
    random_noise: bool = option(False, "fresh StyleGAN2 noise per output (default: the prior's fixed noise maps, "
                                "as pSp's inference)")

    def __post_init__(self) -> None:
        configs.validate(self)
        if not self.mask:
            raise configs.ConfigError("--mask needs at least one file")


def generate_command(model: SMIS, opts: SMISGenerateOptions, *, n: int, out: Path, generator: torch.Generator,
                     batch_size: int) -> list[Path]:
    """Per mask ``M.png``: ``out/M_<i>.png`` (``n`` multi-modal outputs), ``out/M_mask.png`` (the mask in colour),
    ``out/M_plain.png`` (its encoding unmixed) and ``out/M_grid.png`` (mask | plain | outputs)."""
    from fsgan_fast.data.mask_pairs import colorize, read_mask
    from fsgan_fast.data.types import DatasetError
    from fsgan_fast.utils.images import save_grid, save_image

    device = model.latent_avg.device
    masks, stems = [], []
    for path in opts.mask:
        try:
            masks.append(read_mask(path, model.size))
        except DatasetError as e:
            raise SMISInputError(str(e)) from None
        stems.append(Path(path).stem)
    masks_t = torch.stack(masks)
    _check_ids("--mask", masks_t, model.cfg.label_nc)  # a clear error naming the ids, before any work
    layers = parse_latent_mask(opts.latent_mask, model.n_latent)
    plain, mixed = model.generate(masks_t.to(device), n, generator, latent_layers=layers, alpha=opts.alpha,
                                  random_noise=opts.random_noise, batch_size=batch_size)
    width = len(str(max(n - 1, 0)))
    written: list[Path] = []
    seen: dict[str, int] = {}
    for b, stem in enumerate(stems):
        if stem in seen:  # two masks with one stem (different folders): keep both
            seen[stem] += 1
            stem = f"{stem}-{seen[stem]}"
        seen.setdefault(stem, 0)
        written += [save_image(img.clamp(-1, 1), out / f"{stem}_{i:0{width}d}.png") for i, img in enumerate(mixed[b])]
        colour = colorize(masks_t[b], model.cfg.label_nc).to(plain.device)
        written.append(save_image(colour, out / f"{stem}_mask.png"))
        written.append(save_image(plain[b].clamp(-1, 1), out / f"{stem}_plain.png"))
        row = torch.cat([colour[None], plain[b : b + 1].clamp(-1, 1), mixed[b].clamp(-1, 1)])
        written.append(save_grid(row, out / f"{stem}_grid.png", row.shape[0]))
    return written


def _auto_preset(data: str | None) -> str:
    return "demo" if data == "builtin" else "paper"


registry.register(registry.ModelSpec(
    name="smis",
    summary="Few-shot SMIS: semantic masks to photos from 1-5 labelled pairs, a frozen StyleGAN2 prior, prototype "
            "pseudo-labels and a pSp encoder (Endo & Kanamori 2021)",
    description=(
        "Train a pSp encoder from masks to a frozen StyleGAN2's W+ with 1-5 labelled (photo, mask) pairs. Stage 1 "
        "inverts the shots into the prior (--invert-steps, pixel MSE + LPIPS when its weights are found) and builds "
        "one prototype per class from the 64x64 features (every annotated vector with --sparse); stage 2 trains "
        "the encoder on pseudo masks of the prior's random samples against their w (latent MSE; --image-weight adds "
        "an image loss). --stylegan CKPT: a rosinality StyleGAN2 checkpoint (a dict with 'g_ema', e.g. from "
        "rosinality/stylegan2-pytorch or the pSp / Fewshot-SMIS releases); without it a random-init prior (a plumbing "
        "demo). --data: 'builtin' (five scikit-image photos with masks derived by colour quantisation, no download) "
        "or a pairs folder DIR/images/<stem>.png + DIR/masks/<stem>.png (single-channel class ids 0..N-1; remap a "
        "'void' 255 first); --pairs DIR names the same folder. Writes RUN/checkpoint.pt (prior, encoder, "
        "prototypes; exact resume), RUN/metrics.jsonl, RUN/samples/step_*.png (shots: photo | mask | encoding; "
        "prior samples: pseudo mask | sample | encoding of the pseudo mask), RUN/samples/pseudo_masks_*.png and "
        "RUN/config.json. Options left unset come from --preset."
    ),
    model_config=SMISConfig,
    train_config="fsgan_fast.train.smis:SMISTrainConfig",
    presets="fsgan_fast.train.smis:PRESETS",
    auto_preset=_auto_preset,
    preset_help=("'demo' = a random-init 64 px prior (style_dim 16, 64-channel convs), a 4-unit encoder, 1 shot, "
                 "150 inversion steps and 500 encoder steps of batch 8 (a few minutes on a 2-core CPU); 'paper' = the "
                 "reference settings (IR-SE-50 encoder, Ranger, inversion lr 1 for 2000 steps, encoder lr 1e-4, "
                 "batch 2, 100000 steps) for the prior of --stylegan; auto = demo for --data builtin, else paper"),
    build=SMIS,
    train="fsgan_fast.train.smis:train_run",
    graph=smis_graph,
    export_options=SMISExportOptions,
    model_types=(SMIS,),
    generate=generate_command,
    generate_options=SMISGenerateOptions,
))


__all__ = ["SMISConfig", "SMIS", "SMISInference", "SMISExportOptions", "SMISGenerateOptions", "SMISInputError",
           "dense_prototypes", "dense_pseudo_labels", "sparse_prototypes",
           "sparse_pseudo_labels", "parse_latent_mask", "mix_styles", "one_hot", "resize_ids", "smis_graph",
           "synthesize_unfused", "generate_command"]
