"""OP-GAN (Xie et al., ECCV 2020): CycleGAN with a self-supervised Siamese patch network S that preserves objects.

No public code exists (ALGORITHMS.md §6); the networks follow the paper and CycleGAN's reference implementation:

- :class:`ResnetGenerator` (CycleGAN's ``resnet_9blocks`` / ``resnet_6blocks``): reflection-padded 7x7 conv, two
  stride-2 convs, ``n_blocks`` residual blocks (reflection pad, 3x3 conv, InstanceNorm, ReLU, twice), two
  transposed convs, a 7x7 conv to RGB and tanh. InstanceNorm without affine parameters or running statistics, convs
  with bias, weights N(0, 0.02): CycleGAN's defaults. Any image side that is a multiple of 4.
- :class:`PatchDiscriminator` (CycleGAN's ``NLayerDiscriminator``, the 70x70 PatchGAN at ``d_layers=3``): a map of
  LSGAN logits, ``[B, 1, S/8 - 2, S/8 - 2]`` at three layers.
- :class:`SiameseNet` S, one set of weights over every patch. The source image and its translation are each cut
  into a ``grid x grid`` grid (:func:`fsgan_fast.ops.patch_grid.patch_grid`; cells resized to ``patch`` pixels),
  and pairs of patches are drawn from four scenarios (:func:`fsgan_fast.ops.patch_grid.sample_patch_pairs`): D1 both
  from the source, D2 both from the translation, C1 one of each at the same cell, C2 one of each at different cells.
  A shared trunk gives every patch content features ``c`` and domain features ``d`` (``8 ns`` channels at
  ``patch / 8``: 11x11x512 at the paper's 256 px). Two heads:

  - content registration: ``c`` -> 1x1 conv -> one logit map, bilinearly resized to the patch -> a spatial attention
    ``a`` over the patch's pixels; a pair's loss is the attention-weighted pixel MSE of its two patches,
    ``mean_p w(p) * mean_channels (x1(p) - x2(p))^2`` with ``w = (a1 + a2) / 2``, for same-cell pairs; other pairs
    contribute zero (:func:`content_registration_loss`);
  - domain classification: ``cat(d1, d2)`` -> conv -> global pool -> 3 logits, cross-entropy against the pair's class
    D1 / D2 / C (= C1 or C2).

- :class:`OPGAN` holds G_ab, G_ba, D_a, D_b and S (``gen_ab``, ``gen_ba``, ``dis_a``, ``dis_b``, ``siamese``).

Choices the paper leaves open, and what we do (also in the README's OP-GAN section):

- S sees the A -> B direction only: pairs from ``real_a`` and ``G_ab(real_a)``, the source -> target direction the
  paper's domain adaptation uses (cloudy -> sunny, night -> day). Its classes are "source" and "translation", not
  absolute domains, so S over both directions would have to tell real from generated images in D1 vs D2: a second
  discriminator whose loss G, minimising L_S, would work against its own adversarial loss.
- The attention is a softmax over the patch's pixels, scaled to mean 1, of logits bounded to ±3 (``3 tanh(l / 3)``):
  so it cannot vanish (a free weighting that S minimises would go to zero) and no pixel outweighs another more than
  e^6-fold (S cannot put the whole loss on one pixel). At initialisation it is nearly uniform: a plain pixel MSE.
- The content loss is summed over same-cell pairs and divided by their number, so it reads as a per-pair MSE (with
  the balanced sampler a quarter of the pairs are C1: a mean over all pairs would be 4x smaller).
- S's trunk: conv4x4/2 (3 -> ns) -> conv4x4/2 (-> 2 ns) -> conv4x4/2 (-> 4 ns) -> conv3x3 (-> 8 ns), LeakyReLU 0.2
  after each, then one conv3x3 + LeakyReLU per branch; no normalisation layer, since a per-patch normalisation would
  erase the colour statistics that carry the domain. PyTorch's default init (S is not CycleGAN's).
- Cells are resized to ``patch`` = the cell side rounded up to a multiple of 8 (88 at 256 px, giving the paper's
  11x11 features).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import numbers
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.models import registry
from fsgan_fast.ops.patch_grid import PatchPairs, patch_grid

LRELU = 0.2
DOMAIN_CLASSES = ("D1", "D2", "C")  # the 3-way labels of PatchPairs.label
ATTENTION_BOUND = 3.0  # attention logits live in (-3, 3): pixel weights differ at most e^6-fold
S_STRIDE = 8  # S's trunk: three stride-2 convs
DIRECTIONS = ("ab", "ba")


class OPGANInputError(registry.InputError):
    """An input of OP-GAN's translation does not fit the model (a path, an image size, a direction)."""


@dataclasses.dataclass
class OPGANConfig:
    """Hyper-parameters of the OP-GAN networks; the defaults are the paper's (CycleGAN at 256 px, S with 512-channel
    11x11 features)."""

    size: int = option(256, "training image side in pixels (a multiple of 4; the paper: 256)", low=4)
    ngf: int = option(64, "G width: channels of its first conv (ngf, 2 ngf, 4 ngf in the residual blocks)", low=1)
    ndf: int = option(64, "D width: channels of the PatchGAN's first conv (doubling per layer, at most 8 ndf)", low=1)
    n_blocks: int | None = option(None, "residual blocks in each G (default: 9 at >= 256 px, 6 below, as CycleGAN)",
                                  low=1)
    d_layers: int = option(3, "stride-2 layers of each PatchGAN D (3: the 70x70 PatchGAN)", low=1)
    ns: int = option(64, "S width base: its content and domain features have 8 ns channels (the paper: 512)", low=1)
    grid: int = option(3, "S cuts images into grid x grid cells (the paper: 3)", low=2)
    patch: int | None = option(None, "side S resizes every cell to, a multiple of 8 (default: the cell side rounded "
                               "up to one; 88 at 256 px, where S's features are the paper's 11x11)", low=8)

    def __post_init__(self) -> None:
        configs.validate(self)
        if self.size % 4:
            raise configs.ConfigError(f"size must be a multiple of 4 (G down- and upsamples twice by 2), got "
                                      f"{self.size}")
        if self.n_blocks is None:
            self.n_blocks = 9 if self.size >= 256 else 6
        if self.patch is None:
            self.patch = S_STRIDE * math.ceil(self.size / self.grid / S_STRIDE)
        elif self.patch % S_STRIDE:
            raise configs.ConfigError(f"patch must be a multiple of {S_STRIDE} (S downsamples three times by 2), "
                                      f"got {self.patch}")
        if self.size < self.grid:
            raise configs.ConfigError(f"size {self.size} is smaller than grid {self.grid}: cells would be empty")
        side = self.dis_side()
        if side < 1:
            raise configs.ConfigError(
                f"size {self.size} is too small for a {self.d_layers}-layer PatchGAN (its logit map would be "
                f"{side}x{side}); use size >= {3 * 2 ** self.d_layers} or fewer --d-layers")

    def dis_side(self, side: int | None = None) -> int:
        """The side of D's logit map for images of ``side`` (default: ``size``) pixels."""
        s = self.size if side is None else side
        for _ in range(self.d_layers):
            s = (s + 2 - 4) // 2 + 1  # conv 4x4, stride 2, padding 1
        return s - 2  # two conv 4x4, stride 1, padding 1

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OPGANConfig:
        return configs.from_dict(cls, d)


# ---------------------------------------------------------------------------------------------------
# Validation


def check_images(name: str, x: object, *, batch: int | None = None, multiple: int = 1) -> Tensor:
    """``x`` as a floating ``[B, 3, H, W]`` batch (B >= 1), optionally of ``batch`` images, with H and W multiples of
    ``multiple``; TypeError / ValueError naming ``name``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor of images in [-1, 1], got dtype {x.dtype}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must be RGB images [B, 3, H, W], got shape {list(x.shape)}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} must hold at least one non-empty image, got shape {list(x.shape)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} must hold {batch} images (the batch of the other input), got {x.shape[0]}")
    if x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(f"{name}'s height and width must be multiples of {multiple}, got {x.shape[2]}x{x.shape[3]}")
    return x


def check_pairs(pairs: object, batch: int, grid: int) -> PatchPairs:
    """``pairs`` as :class:`PatchPairs` of a batch of ``batch`` source / translated images cut into ``grid x grid``
    cells; index values are checked on the host (pairs are drawn there), so they never reach a kernel out of range."""
    return _check_pairs(pairs, 2 * batch * grid * grid,
                        f"{batch} source and {batch} translated images ({grid}x{grid} cells each)")


def _check_pairs(pairs: object, count: int, what: str) -> PatchPairs:
    if not isinstance(pairs, PatchPairs):
        raise TypeError(f"pairs must be PatchPairs (fsgan_fast.ops.patch_grid.sample_patch_pairs), "
                        f"got {type(pairs).__name__}")
    n = pairs.first.shape[0] if pairs.first.dim() == 1 else -1
    for field in ("first", "second", "label", "same_cell"):
        t = getattr(pairs, field)
        if not isinstance(t, Tensor) or t.is_floating_point() or t.is_complex():
            raise TypeError(f"pairs.{field} must be an integer (same_cell: bool) tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(f"pairs.{field} must be 1-D with one entry per pair like pairs.first, got shape "
                             f"{list(t.shape)}")
    if n == 0:
        raise ValueError("pairs holds no pair")
    if pairs.first.device.type == "cpu":
        for field in ("first", "second"):
            t = getattr(pairs, field)
            if bool(((t < 0) | (t >= count)).any()):
                raise ValueError(f"pairs.{field} must index the {count} patches of {what}, got values in "
                                 f"[{int(t.min())}, {int(t.max())}]")
        if bool(((pairs.label < 0) | (pairs.label >= len(DOMAIN_CLASSES))).any()):
            raise ValueError(f"pairs.label must be classes 0..{len(DOMAIN_CLASSES) - 1} (D1, D2, C)")
    return pairs


def pairs_to(pairs: PatchPairs, device: torch.device) -> PatchPairs:
    """``pairs`` with every tensor on ``device`` (unchanged when already there)."""
    if pairs.first.device == device:
        return pairs
    return PatchPairs(*(t.to(device, non_blocking=True) for t in
                        (pairs.first, pairs.second, pairs.scenario, pairs.label, pairs.same_cell)))


# ---------------------------------------------------------------------------------------------------
# CycleGAN's networks


def _init_(module: nn.Module) -> nn.Module:
    """CycleGAN's ``init_type='normal'``: conv weights N(0, 0.02), biases 0 (its InstanceNorm has no parameters)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _norm(ch: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """``x + [reflect pad 1, conv3x3, IN, ReLU, reflect pad 1, conv3x3, IN](x)``."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm(ch), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm(ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: images ``[B, 3, H, W]`` in [-1, 1] (H, W multiples of 4) -> the same shape."""

    def __init__(self, cfg: OPGANConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.ngf
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, c, 7), _norm(c), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(c * mult, c * mult * 2, 3, stride=2, padding=1), _norm(c * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(4 * c) for _ in range(cfg.n_blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(c * mult, c * mult // 2, 3, stride=2, padding=1, output_padding=1),
                       _norm(c * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7), nn.Tanh()]
        self.net = _init_(nn.Sequential(*layers))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(check_images("images", images, multiple=4))


class PatchDiscriminator(nn.Module):
    """CycleGAN's ``NLayerDiscriminator``: images ``[B, 3, S, S]`` -> LSGAN logits ``[B, 1, s, s]``
    (:meth:`OPGANConfig.dis_side`): conv4x4/2 + LReLU, ``d_layers - 1`` x [conv4x4/2, IN, LReLU], conv4x4/1, IN,
    LReLU, conv4x4/1 to one channel; widths ndf, 2 ndf, ... capped at 8 ndf."""

    def __init__(self, cfg: OPGANConfig):
        super().__init__()
        self.cfg = cfg
        w = lambda i: cfg.ndf * min(2 ** i, 8)  # noqa: E731
        layers: list[nn.Module] = [nn.Conv2d(3, w(0), 4, 2, 1), nn.LeakyReLU(LRELU, True)]
        for i in range(1, cfg.d_layers):
            layers += [nn.Conv2d(w(i - 1), w(i), 4, 2, 1), _norm(w(i)), nn.LeakyReLU(LRELU, True)]
        n = cfg.d_layers
        layers += [nn.Conv2d(w(n - 1), w(n), 4, 1, 1), _norm(w(n)), nn.LeakyReLU(LRELU, True),
                   nn.Conv2d(w(n), 1, 4, 1, 1)]
        self.net = _init_(nn.Sequential(*layers))

    def forward(self, images: Tensor) -> Tensor:
        images = check_images("images", images)
        if self.cfg.dis_side(min(images.shape[2:])) < 1:
            raise ValueError(f"images of {images.shape[2]}x{images.shape[3]} are too small for a "
                             f"{self.cfg.d_layers}-layer PatchGAN")
        return self.net(images)


# ---------------------------------------------------------------------------------------------------
# The Siamese patch network


def patch_attention(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Pixel weights ``[N, 1, h, w]`` of mean 1 from S's content logits ``[N, 1, f, f]``: bilinearly resized to
    ``size = (h, w)``, bounded to ±3 by ``3 tanh(l / 3)``, a softmax over the ``h * w`` pixels times ``h * w``."""
    if not isinstance(logits, Tensor) or logits.dim() != 4 or logits.shape[1] != 1:
        shown = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be one map per patch [N, 1, f, f], got {shown}")
    up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    bounded = ATTENTION_BOUND * torch.tanh(up / ATTENTION_BOUND)
    n_pixels = size[0] * size[1]
    return torch.softmax(bounded.flatten(1), dim=1).view_as(up) * n_pixels


def content_registration_loss(patches: Tensor, attention: Tensor, pairs: PatchPairs) -> Tensor:
    """OP-GAN's content-registration loss over ``pairs`` of ``patches [M, C, h, w]`` with pixel weights
    ``attention [M, 1, h, w]`` (:func:`patch_attention`).

    A same-cell pair (``pairs.same_cell``) costs ``mean_p w(p) * mean_c (x1[c, p] - x2[c, p])^2`` with
    ``w = (a1 + a2) / 2``; other pairs cost zero. Returns the sum over pairs divided by the number of same-cell pairs
    (0 when there is none, with the graph kept). Zero for identical patches, whatever the attention.
    """
    if not isinstance(patches, Tensor) or patches.dim() != 4:
        raise ValueError(f"patches must be [M, C, h, w], got {getattr(patches, 'shape', type(patches).__name__)}")
    if not isinstance(attention, Tensor) or attention.shape != (patches.shape[0], 1, *patches.shape[2:]):
        raise ValueError(f"attention must be [M, 1, h, w] = {[patches.shape[0], 1, *patches.shape[2:]]}, got "
                         f"{list(getattr(attention, 'shape', []))}")
    pairs = pairs_to(_check_pairs(pairs, patches.shape[0], "patches"), patches.device)
    first, second, same = pairs.first, pairs.second, pairs.same_cell.to(patches.dtype)
    sq = (patches[first] - patches[second]).pow(2).mean(dim=1, keepdim=True)  # [N, 1, h, w]
    weight = 0.5 * (attention[first] + attention[second])
    per_pair = (weight * sq).mean(dim=(1, 2, 3))
    return (per_pair * same).sum() / same.sum().clamp(min=1.0)


@dataclasses.dataclass
class SiameseOutput:
    """What S computes on one batch: the two losses, the logits ``[N, 3]`` of every pair and its labels ``[N]``, and
    the attention ``[M, 1, h, w]`` of every patch (source patches first, then translated ones)."""

    content: Tensor
    domain: Tensor
    logits: Tensor
    labels: Tensor
    attention: Tensor

    def accuracy(self) -> Tensor:
        """Fraction of pairs whose 3-way class S gets right (detached)."""
        return (self.logits.detach().argmax(1) == self.labels).float().mean()


class SiameseNet(nn.Module):
    """S: a shared-weight conv trunk over patches ``[N, 3, p, p]`` with a content branch and a domain branch (``8 ns``
    channels at ``p / 8``), the content head (1x1 conv to one attention logit map) and the domain classifier over a
    pair's concatenated domain features (conv3x3/2 + LReLU, global average pool, linear to the 3 classes)."""

    def __init__(self, cfg: OPGANConfig):
        super().__init__()
        self.cfg = cfg
        ns = cfg.ns
        act = lambda: nn.LeakyReLU(LRELU, True)  # noqa: E731
        self.trunk = nn.Sequential(
            nn.Conv2d(3, ns, 4, 2, 1), act(), nn.Conv2d(ns, 2 * ns, 4, 2, 1), act(),
            nn.Conv2d(2 * ns, 4 * ns, 4, 2, 1), act(), nn.Conv2d(4 * ns, 8 * ns, 3, 1, 1), act(),
        )
        self.content = nn.Sequential(nn.Conv2d(8 * ns, 8 * ns, 3, 1, 1), act())
        self.domain = nn.Sequential(nn.Conv2d(8 * ns, 8 * ns, 3, 1, 1), act())
        self.content_head = nn.Conv2d(8 * ns, 1, 1)
        self.classifier = nn.Sequential(nn.Conv2d(16 * ns, 8 * ns, 3, 2, 1), act(), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten(), nn.Linear(8 * ns, len(DOMAIN_CLASSES)))

    def features(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """``(content, domain)`` features ``[N, 8 ns, p / 8, p / 8]`` of ``patches [N, 3, p, p]``."""
        patches = check_images("patches", patches, multiple=S_STRIDE)
        h = self.trunk(patches)
        return self.content(h), self.domain(h)

    def classify(self, domain_first: Tensor, domain_second: Tensor) -> Tensor:
        """3-way logits ``[N, 3]`` (D1, D2, C) of pairs from their domain features."""
        return self.classifier(torch.cat([domain_first, domain_second], dim=1))

    def patches(self, source: Tensor, translated: Tensor) -> Tensor:
        """Every cell of the source images, then of the translated ones: ``[2 B grid^2, 3, patch, patch]``, indexed
        as :class:`PatchPairs` says (one ``patch_grid`` launch for both)."""
        p = self.cfg.patch
        both = torch.cat([source, translated])
        return patch_grid(both, self.cfg.grid, (p, p)).flatten(0, 1)

    def forward(self, source: Tensor, translated: Tensor, pairs: PatchPairs) -> SiameseOutput:
        """S on source images ``[B, 3, H, W]``, their translations (same shape) and ``pairs`` drawn for that batch:
        the content-registration and domain-classification losses (both differentiable w.r.t. S and
        ``translated``)."""
        source = check_images("source", source)
        translated = check_images("translated", translated, batch=source.shape[0])
        if translated.shape != source.shape:
            raise ValueError(f"translated must have source's shape {list(source.shape)}, got {list(translated.shape)}")
        pairs = check_pairs(pairs, source.shape[0], self.cfg.grid)
        patches = self.patches(source, translated)
        content, domain = self.features(patches)
        attention = patch_attention(self.content_head(content), tuple(patches.shape[-2:]))
        pairs = pairs_to(pairs, patches.device)
        logits = self.classify(domain[pairs.first], domain[pairs.second])
        return SiameseOutput(
            content=content_registration_loss(patches, attention, pairs),
            domain=F.cross_entropy(logits.float(), pairs.label),
            logits=logits,
            labels=pairs.label,
            attention=attention,
        )


# ---------------------------------------------------------------------------------------------------
# The model


class OPGAN(nn.Module):
    """G_ab, G_ba (``gen_ab``, ``gen_ba``), D_a, D_b (``dis_a``, ``dis_b``) and S (``siamese``) of one OP-GAN."""

    def __init__(self, cfg: OPGANConfig):
        super().__init__()
        self.cfg = cfg
        self.gen_ab = ResnetGenerator(cfg)
        self.gen_ba = ResnetGenerator(cfg)
        self.dis_a = PatchDiscriminator(cfg)
        self.dis_b = PatchDiscriminator(cfg)
        self.siamese = SiameseNet(cfg)

    def generator(self, direction: str) -> ResnetGenerator:
        """G_ab for ``"ab"`` (domain A -> B), G_ba for ``"ba"``."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'ab' (A -> B) or 'ba' (B -> A), got {direction!r}")
        return self.gen_ab if direction == "ab" else self.gen_ba

    @torch.no_grad()
    def translate(self, images: Tensor, direction: str = "ab", *, batch_size: int = 16) -> Tensor:
        """``images [N, 3, H, W]`` in [-1, 1] (H, W multiples of 4) translated by G_ab (``"ab"``) or G_ba (``"ba"``),
        ``batch_size`` at a time, on the model's device; returned there, in [-1, 1]. InstanceNorm keeps no running
        statistics, so train and eval mode translate alike."""
        gen = self.generator(direction)
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        images = check_images("images", images, multiple=4)
        p = next(gen.parameters())
        out = [gen(images[i:i + batch_size].to(p.device, p.dtype)) for i in range(0, images.shape[0], batch_size)]
        return torch.cat(out)


# ---------------------------------------------------------------------------------------------------
# Export: one generator, images in, images out


@dataclasses.dataclass
class OPGANExportOptions:
    """OP-GAN's own export options (``fsgan-fast export opgan``)."""

    direction: Literal["ab", "ba"] = option("ab", "which generator: ab = G_ab (domain A -> B), ba = G_ba (B -> A)")

    def __post_init__(self) -> None:
        configs.validate(self)


def opgan_graph(model: nn.Module, *, direction: str = "ab"):
    """The :class:`~fsgan_fast.export.graphs.GeneratorGraph` of one OP-GAN generator: ``source [B, 3, S, S]`` in
    [-1, 1] -> ``images [B, 3, S, S]``. ``model``: the OPGAN (``direction`` picks G_ab or G_ba) or a bare
    :class:`ResnetGenerator`."""
    from fsgan_fast.export.graphs import BATCH_INPUTS_KEY, GeneratorGraph

    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'ab' or 'ba', got {direction!r}")
    if isinstance(model, OPGAN):
        gen, which = model.generator(direction), f"gen_{direction}"
    elif isinstance(model, ResnetGenerator):
        gen, which = model, "generator"
    else:
        raise TypeError(f"expected an OPGAN or its ResnetGenerator, got {type(model).__name__}")
    gen = copy.deepcopy(gen).eval().requires_grad_(False)
    cfg = gen.cfg
    S = cfg.size

    def sample(B: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, ...]:
        # stand-in images: replace them with real ones of the source domain
        where = generator.device if generator is not None else device
        return ((torch.rand(B, 3, S, S, generator=generator, device=where) * 2 - 1).to(device),)

    src, dst = ("A", "B") if direction == "ab" or which == "generator" else ("B", "A")
    meta = {
        "fsgan_fast.model": "opgan",
        "fsgan_fast.config": json.dumps(cfg.to_dict()),
        "fsgan_fast.generator": which,
        "fsgan_fast.direction": direction if which != "generator" else "",
        "fsgan_fast.inputs": f"source: [B, 3, {S}, {S}] in [-1, 1], domain-{src} images",
        "fsgan_fast.outputs": f"images: [B, 3, {S}, {S}] in [-1, 1], their domain-{dst} translations",
        BATCH_INPUTS_KEY: json.dumps(["source"]),
    }
    return GeneratorGraph(model="opgan", module=gen, input_names=("source",), output_names=("images",),
                          batch_inputs=("source",), sample=sample, metadata=meta)


# ---------------------------------------------------------------------------------------------------
# fsgan-fast translate opgan (= fsgan-fast app opgan translate)


@dataclasses.dataclass
class TranslateOptions:
    """The inputs of ``fsgan-fast translate opgan``."""

    images: tuple[str, ...] = option(("builtin",), "what to translate: image files, folders of images (searched "
                                     "recursively), or 'builtin' (the built-in set's images of the source domain, "
                                     "evenly spread)", metavar="PATH")
    direction: Literal["ab", "ba"] = option("ab", "ab: domain A -> B with G_ab; ba: B -> A with G_ba")
    n: int = option(16, "translate at most N images, in file-name order (0 = all)", low=0)
    size: int | None = option(None, "images are centre-cropped to a square and resized to this side, a multiple of 4 "
                              "(default: the training size)", low=4)
    per_row: int = option(4, "source | translation pairs per row of the grid", low=1)
    batch_size: int = option(16, "images translated at once", low=1)

    def __post_init__(self) -> None:
        configs.validate(self)
        if self.size is not None and self.size % 4:
            raise configs.ConfigError(f"size must be a multiple of 4, got {self.size}")


def _translate_inputs(opts: TranslateOptions, side: int) -> tuple[Tensor, list[str]]:
    """``(uint8 [N, 3, side, side], names)`` of what ``opts.images`` name, at most ``opts.n``."""
    from fsgan_fast.data.image_set import _image_files
    from fsgan_fast.data.types import DatasetError
    from fsgan_fast.utils.images import read_image

    limit = opts.n or None
    if tuple(opts.images) == ("builtin",):
        from fsgan_fast.data.two_domain import builtin_two_domains

        domain = builtin_two_domains(side).domain(opts.direction[0])
        # evenly spread, so that a few images show every photo of the set
        count = domain.shape[0] if limit is None else min(limit, domain.shape[0])
        picks = torch.linspace(0, domain.shape[0] - 1, count).round().long().tolist()
        return domain[picks], [f"builtin_{opts.direction[0]}{i:03d}" for i in picks]
    if not opts.images:
        raise OPGANInputError("--images: give at least one image file or folder (or 'builtin')")
    files = []
    for given in opts.images:
        path = Path(given)
        if given == "builtin" or not path.exists():
            raise OPGANInputError(f"--images {given!r} does not exist (image files, folders of images, or 'builtin' "
                                  "alone)")
        try:
            found = [path] if path.is_file() else _image_files(path)
        except DatasetError as e:
            raise OPGANInputError(f"--images: {e}") from None
        if not found:
            raise OPGANInputError(f"--images {given!r} holds no image files")
        files += found
    files = files[:limit]
    try:
        images = torch.stack([read_image(f, side) for f in files])
    except ValueError as e:
        raise OPGANInputError(f"--images: {e}") from None
    return images, [f.stem for f in files]


def translate_command(model: OPGAN, opts: TranslateOptions, *, out: Path, generator: torch.Generator) -> list[Path]:
    """Write ``out/<i>_<name>.png`` per translation and ``out/grid.png``: rows of ``per_row`` side-by-side
    source | translation pairs."""
    from fsgan_fast.utils.images import save_grid, save_image

    side = opts.size or model.cfg.size
    images, names = _translate_inputs(opts, side)
    source = images.float().div_(127.5).sub_(1.0)
    translated = model.translate(source, opts.direction, batch_size=opts.batch_size).float().cpu()
    width = len(str(max(len(names) - 1, 0)))
    written = [save_image(img, out / f"{i:0{width}d}_{name}.png") for i, (img, name) in
               enumerate(zip(translated, names))]
    pairs = torch.stack([source, translated], dim=1).flatten(0, 1)  # source, translation, source, ...
    written.append(save_grid(pairs, out / "grid.png", 2 * min(opts.per_row, len(names))))
    return written


APPS = {
    "translate": registry.ModelApp(
        "translate images A -> B (or B -> A) and write side-by-side source | translation grids", translate_command,
        TranslateOptions,
        "Translate images with a trained OP-GAN: --images are image files, folders of images or 'builtin'; "
        "--direction ab uses G_ab (domain A -> B), ba uses G_ba. Writes OUT/<i>_<name>.png per image and "
        "OUT/grid.png (source | translation pairs, --per-row to a row)."),
}


def _auto_preset(data: str | None) -> str:
    return "demo" if data == "builtin" else "paper"


registry.register(registry.ModelSpec(
    name="opgan",
    summary="OP-GAN: CycleGAN with a self-supervised Siamese patch network that preserves objects, unpaired "
            "two-domain translation (ECCV 2020)",
    description=(
        "Train OP-GAN on two unpaired image domains A and B. Writes RUN/checkpoint.pt (latest; exact resume), "
        "RUN/metrics.jsonl (every loss term: LSGAN D/G, cycle, identity, S's content and domain losses and "
        "accuracy), RUN/samples/step_*.png (rows of A | G_ab(A) | B | G_ba(B) for fixed images) and "
        "RUN/config.json. --data: 'builtin' (crops of scikit-image photos; domain B is a fixed colour and texture "
        "transform of other crops; no download), a folder with trainA/ and trainB/ (CycleGAN's layout), or domain "
        "A's folder with --data-b naming domain B's. Options left unset come from --preset. Then "
        "'fsgan-fast translate opgan --ckpt RUN/checkpoint.pt --out DIR' writes side-by-side grids, and "
        "'fsgan-fast export opgan --direction ab|ba' exports either generator."
    ),
    model_config=OPGANConfig,
    train_config="fsgan_fast.train.opgan:OPGANTrainConfig",
    presets="fsgan_fast.train.opgan:PRESETS",
    auto_preset=_auto_preset,
    preset_help=("'demo' = 64 px, narrow networks (ngf=ndf=ns=16, 6 blocks), batch 4, 400 steps (3-4 minutes on a "
                 "2-core CPU); 'paper' = the reference networks at 256 px (9 blocks, S with 11x11x512 features), "
                 "batch 1, 200000 steps; auto = demo for --data builtin, else paper"),
    build=OPGAN,
    train="fsgan_fast.train.opgan:train_run",
    graph=opgan_graph,
    export_options=OPGANExportOptions,
    model_types=(OPGAN, ResnetGenerator),
    apps=APPS,
))


__all__ = ["OPGANConfig", "OPGAN", "ResnetGenerator", "ResnetBlock", "PatchDiscriminator", "SiameseNet",
           "SiameseOutput", "OPGANExportOptions", "OPGANInputError", "TranslateOptions", "APPS", "DOMAIN_CLASSES",
           "check_images", "check_pairs", "pairs_to", "content_registration_loss", "opgan_graph",
           "patch_attention", "translate_command"]
