"""FastGAN (Liu et al., ICLR 2021): skip-layer excitation in G, a self-supervised auto-encoding D.

The networks of the official code (ALGORITHMS.md §2), restated and generalised to any power-of-two size >= 128:

- :class:`Generator`: z -> 4x4 (transposed conv + BN + GLU), then one up-block per resolution up to ``size``
  (nearest x2, 3x3 conv, BN, GLU; the "comp" blocks at 8, 32, 128, 512, 2048 add a second conv and a
  :class:`NoiseInjection` after each conv). Skip-layer excitation (:class:`fsgan_fast.nn.SkipLayerExcitation`)
  gates the 64, 128, 256 and 512 maps with channel gates computed from the 4, 8, 16 and 32 maps. Two heads: a
  3x3 conv to RGB at ``size`` and a 1x1 conv to RGB at 128.
- :class:`Discriminator`: a stem that brings the image to 256x256 (128x128 for 128 px inputs), stride-2
  "comp" down-blocks ((main + direct) / 2) to 8x8, D-side SLE (256 -> 32, 128 -> 16, 64 -> 8), a 5x5 logit
  head; a second branch on the 128 px image with its own 5x5 logit head; and three small decoders that
  reconstruct 128 px images from the 8x8 map, the small branch's 8x8 map and one quadrant of the 16x16 map.

Every conv is spectral-normed and bias-free; conv weights start as N(0, 0.02), BatchNorm weights as
N(1, 0.02) with zero bias, as the official ``weights_init``.

Differences from the official code, on purpose:

- tanh on both outputs at every size (``out_tanh=True``); the official code applies it only at 1024 px (issue #9:
  the author forgot it at 256/512). ``out_tanh=False`` restores linear outputs.
- Sizes 128 and >= 2048 work (the official code supports 256/512/1024; 128 crashes, issue #18). At 128 px G
  has a single head (the 1x1 conv on the 128 map) and returns that image twice; D's stem keeps 128x128 and
  uses four comp down-blocks, so the 256x256 -> 32x32 SLE link does not exist. Above 1024 px the channel
  tables keep halving and the blocks keep alternating (2048 is a comp block).
- D returns logits per image, ``[B, 50]`` (25 from the big branch, then 25 from the small one), where the
  official code flattens the whole batch into one vector.
- The decoder quadrant may be drawn per sample (``part`` a ``[B]`` tensor) as well as once per batch (an int,
  the official behaviour).
- Noise is explicit when wanted: ``noise=`` takes the maps (see :meth:`Generator.make_noise`),
  ``noise_generator=`` draws them from a ``torch.Generator``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import numbers
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.nn.ema import WithEMAGenerator
from fsgan_fast.models import registry
from fsgan_fast.nn.sle import SkipLayerExcitation

# Width multipliers per resolution, times ngf / ndf (official tables). Above 1024 they keep halving (_width).
G_WIDTHS = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}
D_WIDTHS = {4: 16, 8: 16, 16: 8, 32: 4, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}
# The decoders' widths at 16, 32, 64, 128 px, times dec_ngf (the official code fixes dec_ngf at 32).
DEC_WIDTHS = {16: 4, 32: 2, 64: 2, 128: 1}

G_SLE_TARGETS = (64, 128, 256, 512)  # gated by the map at target // 16
D_SLE_TARGETS = (32, 16, 8)  # gated by the map at target * 8
LOW_RES = (4, 8, 16, 32)  # G's SLE sources
SMALL = 128  # the second image / D branch / decoder output side
QUADRANTS = 4
LRELU = 0.2


def _width(table: dict[int, float], base: int, res: int) -> int:
    mult = table[res] if res in table else 128 / res  # 1024: 0.125 = 128/1024, so halving continues
    return int(mult * base)  # truncation, as the official code


def _is_comp(res: int) -> bool:
    """G's comp blocks sit at odd powers of two: 8, 32, 128, 512, 2048, ..."""
    return int(math.log2(res)) % 2 == 1


@dataclasses.dataclass
class FastGANConfig:
    """Hyper-parameters of the FastGAN networks; the defaults are the official model at 256 px.

    ``size`` is any power of two >= 128. Widths follow the official tables: G has ``ngf * m`` channels at each
    resolution (m = 16, 8, 4, 2, 2, 1, 1/2, 1/4, 1/8 from 4 to 1024 px, halving further above), D ``ndf * m``
    (m = 16, 16, 8, 4, 2, 1, 1/2, 1/4, 1/8), truncated to integers; a width that truncates to 0 is an error.
    """

    size: int = option(256, "image side in pixels: a power of two >= 128 (the paper: 256, 512, 1024)", low=128)
    nz: int = option(256, "latent size", low=1)
    ngf: int = option(64, "G width base (channels at 128 px)", low=1)
    ndf: int = option(64, "D width base (channels at 128 px)", low=1)
    dec_ngf: int = option(32, "width base of D's reconstruction decoders (128-64-64-32 channels at 32)", low=1)
    sle_act: Literal["swish", "lrelu"] = option("swish", "activation inside the SLE gates: swish (the code) or "
                                                "lrelu (the paper's text)")
    out_tanh: bool = option(True, "tanh on G's outputs at every size (the official code: only at 1024)")

    def __post_init__(self) -> None:
        configs.validate(self)
        if self.size < SMALL or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= {SMALL} (128, 256, 512, 1024, ...), got {self.size}")
        for who, widths, base in (("G", self.gen_widths(), "ngf"), ("D", self.dis_widths(), "ndf")):
            zero = sorted(res for res, w in widths.items() if w < 1)
            if zero:
                raise ValueError(
                    f"{base}={getattr(self, base)} is too small for size {self.size}: {who} would have 0 channels at "
                    f"{zero} (widths are int({base} * multiplier)); raise {base}"
                )

    def gen_widths(self) -> dict[int, int]:
        """G's channels per resolution, 4 .. size."""
        return {r: _width(G_WIDTHS, self.ngf, r) for r in _resolutions(4, self.size)}

    def dis_widths(self) -> dict[int, int]:
        """The ``ndf`` table entries D uses: its map at side r has ``dis_widths()[2 r]`` channels (the official
        indexing; the rf head's hidden width is the entry at 8). Keys 8 .. size, and up to 512 at 256 px, whose
        256x256 stem map has the 512 entry's width."""
        hi = max(self.size, 2 * min(self.size, 256))
        return {r: _width(D_WIDTHS, self.ndf, r) for r in _resolutions(8, hi)}

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FastGANConfig:
        return configs.from_dict(cls, d)


def _resolutions(lo: int, hi: int) -> list[int]:
    out, r = [], lo
    while r <= hi:
        out.append(r)
        r *= 2
    return out


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_float(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    return x


def _check_images(name: str, x: object, side: int, batch: int | None = None) -> Tensor:
    x = _check_float(name, x)
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != side or x.shape[3] != side:
        raise ValueError(f"{name} must be images [B, 3, {side}, {side}], got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image, got shape {list(x.shape)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} must have the batch size {batch} of the other input, got {x.shape[0]}")
    return x


def _check_part(part: object, batch: int, device: torch.device) -> int | Tensor:
    """``part`` as an int in 0..3 or a long tensor [batch] on ``device``."""
    if isinstance(part, Tensor):
        if part.dtype in (torch.bool,) or part.is_floating_point() or part.is_complex():
            raise TypeError(f"part must be an integer tensor of quadrants 0..3, got dtype {part.dtype}")
        if part.dim() == 0:
            return _check_part(int(part), batch, device)
        if part.shape != (batch,):
            raise ValueError(f"part must be an int or a tensor [B={batch}] of quadrants, got shape {list(part.shape)}")
        # one small host sync; a quadrant out of range would otherwise be an index error deep in a kernel
        if bool(((part < 0) | (part >= QUADRANTS)).any()):
            raise ValueError(f"part values must be quadrants 0..3, got {part.tolist()}")
        return part.to(device=device, dtype=torch.long)
    if isinstance(part, bool) or not isinstance(part, numbers.Integral):
        raise TypeError(f"part must be None, an int 0..3 or a [B] integer tensor, got {type(part).__name__}")
    if not 0 <= int(part) < QUADRANTS:
        raise ValueError(f"part must be a quadrant 0..3 (0: top-left, 1: top-right, 2: bottom-left, 3: "
                         f"bottom-right), got {part}")
    return int(part)


def quadrant_crop(images: Tensor, part: int | Tensor) -> Tensor:
    """One quadrant of ``images [B, C, H, W]`` (H, W even): ``[B, C, H/2, W/2]``.

    ``part`` is an int (the same quadrant for the whole batch) or an integer tensor ``[B]`` (one per sample);
    quadrant q covers rows ``q // 2`` and columns ``q % 2`` of the 2x2 split: 0 ``[:H/2, :W/2]``,
    1 ``[:H/2, W/2:]``, 2 ``[H/2:, :W/2]``, 3 ``[H/2:, W/2:]``. Differentiable in ``images``.
    """
    images = _check_float("images", images)
    if images.dim() != 4 or images.shape[2] % 2 or images.shape[3] % 2 or images.shape[0] == 0:
        raise ValueError(f"images must be [B, C, H, W] with B >= 1 and even H, W, got shape {list(images.shape)}")
    B, _, H, W = images.shape
    part = _check_part(part, B, images.device)
    h, w = H // 2, W // 2
    if isinstance(part, int):
        row, col = divmod(part, 2)
        return images[:, :, row * h:(row + 1) * h, col * w:(col + 1) * w]
    # [B, C, 2, h, 2, w]: advanced indices on dims 0, 2, 4 gather only the crops, giving [B, C, h, w]
    grid = images.unflatten(3, (2, w)).unflatten(2, (2, h))
    return grid[torch.arange(B, device=images.device), :, part // 2, :, part % 2, :]


def reconstruction_targets(real: Tensor, part: int | Tensor, size: int = SMALL) -> tuple[Tensor, Tensor, Tensor]:
    """The targets of D's three decoders for the real batch ``real [B, 3, S, S]``, each nearest-resized to ``size``.

    Returns ``(whole, whole, quadrant)``: the whole image (target of ``rec_big``), the same tensor again (target of
    ``rec_small``: D's small branch sees the real image resized the same way) and the ``part`` quadrant of the
    full-resolution image (target of ``rec_part``), as the official code. ``whole`` is also D's ``img128`` input
    for reals when ``size`` is 128.
    """
    real = _check_float("real", real)
    if real.dim() != 4:
        raise ValueError(f"real must be images [B, C, S, S], got shape {list(real.shape)}")
    whole = F.interpolate(real, size=(size, size), mode="nearest")
    quad = F.interpolate(quadrant_crop(real, part), size=(size, size), mode="nearest")
    return whole, whole, quad


# ---------------------------------------------------------------------------------------------------
# Layers


def _init_(module: nn.Module) -> nn.Module:
    """The official init: convs N(0, 0.02), BatchNorm weight N(1, 0.02) and bias 0. Call before spectral norm
    wraps a conv, so that the norm's power iteration starts from the weights that are trained."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    return module


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> nn.Module:
    return spectral_norm(_init_(nn.Conv2d(cin, cout, k, stride, padding, bias=False)))


def _bn(ch: int) -> nn.BatchNorm2d:
    return _init_(nn.BatchNorm2d(ch))


def _sle(ch_low: int, ch_high: int, act: str) -> SkipLayerExcitation:
    """An SLE layer whose convs get the official init (before their spectral norm)."""
    return SkipLayerExcitation(ch_low, ch_high, act=act, init=_init_)


def _up() -> nn.Module:
    return nn.Upsample(scale_factor=2, mode="nearest")


class NoiseInjection(nn.Module):
    """``x + w * noise`` with a scalar ``w`` (initialised to 0) and one noise map ``[B, 1, H, W]`` shared by all
    channels: given, or drawn from N(0, 1) on each call (from ``generator`` if given)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        if noise is None:
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype, generator=generator)
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class UpBlock(nn.Module):
    """nearest x2 -> conv3x3 (cin -> 2 cout) -> BN -> GLU."""

    noise_maps = 0

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(_up(), _conv(cin, 2 * cout, 3, 1, 1), _bn(2 * cout), nn.GLU(dim=1))

    def forward(self, x: Tensor, noise: Sequence[Tensor | None] = (),
                generator: torch.Generator | None = None) -> Tensor:  # no noise: same call as UpBlockComp
        return self.body(x)


class UpBlockComp(nn.Module):
    """nearest x2 -> [conv3x3 -> noise -> BN -> GLU] twice (cin -> cout -> cout); takes two noise maps."""

    noise_maps = 2

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = _up()
        self.conv1, self.noise1, self.bn1 = _conv(cin, 2 * cout, 3, 1, 1), NoiseInjection(), _bn(2 * cout)
        self.conv2, self.noise2, self.bn2 = _conv(cout, 2 * cout, 3, 1, 1), NoiseInjection(), _bn(2 * cout)
        self.glu = nn.GLU(dim=1)

    def forward(self, x: Tensor, noise: Sequence[Tensor | None] = (None, None),
                generator: torch.Generator | None = None) -> Tensor:
        x = self.glu(self.bn1(self.noise1(self.conv1(self.up(x)), noise[0], generator)))
        return self.glu(self.bn2(self.noise2(self.conv2(x), noise[1], generator)))


class DownBlock(nn.Module):
    """conv4x4 stride 2 -> BN -> LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(_conv(cin, cout, 4, 2, 1), _bn(cout), nn.LeakyReLU(LRELU))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class DownBlockComp(nn.Module):
    """``(main + direct) / 2``; main: conv4x4/2 -> BN -> LReLU -> conv3x3 -> BN -> LReLU; direct: avgpool 2 ->
    conv1x1 -> BN -> LReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(_conv(cin, cout, 4, 2, 1), _bn(cout), nn.LeakyReLU(LRELU),
                                  _conv(cout, cout, 3, 1, 1), _bn(cout), nn.LeakyReLU(LRELU))
        self.direct = nn.Sequential(nn.AvgPool2d(2, 2), _conv(cin, cout, 1), _bn(cout), nn.LeakyReLU(LRELU))

    def forward(self, x: Tensor) -> Tensor:
        return (self.main(x) + self.direct(x)) / 2


class SimpleDecoder(nn.Module):
    """D's reconstruction decoder: adaptive avg pool to 8x8 -> 4 x [nearest x2, conv3x3, BN, GLU] -> conv3x3 to
    RGB -> tanh, a 128x128 image from any ``[B, cin, h, w]`` map."""

    def __init__(self, cin: int, base: int):
        super().__init__()
        widths = [cin] + [int(DEC_WIDTHS[r] * base) for r in (16, 32, 64, 128)]
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(8)]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [_up(), _conv(a, 2 * b, 3, 1, 1), _bn(2 * b), nn.GLU(dim=1)]
        layers += [_conv(widths[-1], 3, 3, 1, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


# ---------------------------------------------------------------------------------------------------
# Generator


class Generator(nn.Module):
    """z ``[B, nz]`` -> (image ``[B, 3, size, size]``, image ``[B, 3, 128, 128]``). See the module docstring.

    Submodules: ``init`` (4x4), ``blocks[str(res)]`` for res = 8 .. size, ``sle[str(target)]`` for the SLE targets
    64/128/256/512 that exist (gated by the map at target / 16), ``to_128`` and, above 128 px, ``to_big``.
    At 128 px there is only ``to_128`` and both outputs are the same tensor.
    """

    def __init__(self, cfg: FastGANConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.gen_widths()
        self.init = nn.Sequential(spectral_norm(_init_(nn.ConvTranspose2d(cfg.nz, 2 * w[4], 4, 1, 0, bias=False))),
                                  _bn(2 * w[4]), nn.GLU(dim=1))
        self.resolutions = _resolutions(8, cfg.size)
        self.blocks = nn.ModuleDict({
            str(r): (UpBlockComp if _is_comp(r) else UpBlock)(w[r // 2], w[r]) for r in self.resolutions
        })
        self.sle_targets = tuple(t for t in G_SLE_TARGETS if t <= cfg.size)
        self.sle = nn.ModuleDict({str(t): _sle(w[t // 16], w[t], cfg.sle_act) for t in self.sle_targets})
        self.to_128 = _conv(w[SMALL], 3, 1)
        self.to_big = _conv(w[cfg.size], 3, 3, 1, 1) if cfg.size > SMALL else None

    # -- noise ----------------------------------------------------------------------------------------

    def noise_shapes(self, batch: int) -> list[tuple[int, int, int, int]]:
        """Shapes of the noise maps :meth:`forward` takes, in order: two ``[batch, 1, r, r]`` per comp block,
        by increasing resolution r (8, 8, 32, 32, 128, 128, ...)."""
        return [(batch, 1, r, r) for r in self.resolutions for _ in range(self.blocks[str(r)].noise_maps)]

    def make_noise(self, batch: int, *, generator: torch.Generator | None = None, device: Any = None,
                   dtype: torch.dtype | None = None) -> list[Tensor]:
        """Standard-normal noise maps for :meth:`forward` (``noise=``), drawn from ``generator`` if given.

        The maps are drawn on the generator's device (so a CPU generator gives the same maps for any model device)
        and then moved to ``device`` (default: the generator's device, else the default one).
        """
        where = generator.device if generator is not None else device
        maps = [torch.randn(s, generator=generator, device=where, dtype=dtype) for s in self.noise_shapes(batch)]
        return maps if device is None else [m.to(device) for m in maps]

    def _noise_by_res(self, noise: Sequence[Tensor] | None, batch: int) -> dict[int, list[Tensor | None]]:
        shapes = self.noise_shapes(batch)
        if noise is None:
            maps: list[Tensor | None] = [None] * len(shapes)
        else:
            if isinstance(noise, Tensor) or len(noise) != len(shapes):
                got = "a tensor" if isinstance(noise, Tensor) else f"{len(noise)} maps"
                raise ValueError(f"noise must be a list of {len(shapes)} maps of shapes {shapes} "
                                 f"(see Generator.noise_shapes), got {got}")
            for i, (n, s) in enumerate(zip(noise, shapes)):
                _check_float(f"noise[{i}]", n)
                if tuple(n.shape) != s:
                    raise ValueError(f"noise[{i}] must have shape {list(s)}, got {list(n.shape)}")
            maps = list(noise)
        out: dict[int, list[Tensor | None]] = {}
        it = iter(maps)
        for r in self.resolutions:
            out[r] = [next(it) for _ in range(self.blocks[str(r)].noise_maps)]
        return out

    # -- forward --------------------------------------------------------------------------------------

    def _check_z(self, name: str, z: object) -> Tensor:
        z = _check_float(name, z)
        if z.dim() != 2 or z.shape[1] != self.cfg.nz or z.shape[0] == 0:
            hint = " (flatten [B, nz, 1, 1] with z.flatten(1))" if z.dim() == 4 else ""
            raise ValueError(f"{name} must be latents [B, nz={self.cfg.nz}] with B >= 1, got shape "
                             f"{list(z.shape)}{hint}")
        return z

    def _low(self, z: Tensor, noise: dict[int, list[Tensor | None]], generator: torch.Generator | None,
             repeat: int = 1) -> dict[int, Tensor]:
        """The 4..32 maps (the SLE sources); ``repeat`` tiles each given noise map over a concatenated batch."""
        x = self.init(z.view(*z.shape, 1, 1))
        feats = {4: x}
        for r in LOW_RES[1:]:
            maps = noise[r]
            if repeat > 1:
                maps = [None if n is None else n.repeat(repeat, 1, 1, 1) for n in maps]
            x = self.blocks[str(r)](x, maps, generator)
            feats[r] = x
        return feats

    def sle_sources(self, z: Tensor, *, noise: Sequence[Tensor] | None = None,
                    noise_generator: torch.Generator | None = None) -> dict[int, Tensor]:
        """The low-resolution maps ``{4, 8, 16, 32: [B, C_r, r, r]}`` that feed G's SLE gates (and its main path).

        ``noise`` is the full list :meth:`forward` takes (only the 8 and 32 px maps are used), so the maps equal
        the ones a ``forward`` with the same arguments computes.
        """
        z = self._check_z("z", z)
        return self._low(z, self._noise_by_res(noise, z.shape[0]), noise_generator)

    def forward(self, z: Tensor, *, noise: Sequence[Tensor] | None = None,
                noise_generator: torch.Generator | None = None, style_z: Tensor | None = None,
                style_res: Collection[int] | None = None) -> tuple[Tensor, Tensor]:
        """``z [B, nz] -> (img [B, 3, size, size], img128 [B, 3, 128, 128])``, in [-1, 1] when ``cfg.out_tanh``.

        ``noise``: the maps of :meth:`noise_shapes` (default: fresh N(0, 1) each call, drawn from
        ``noise_generator`` if given).

        Style mixing (the paper's Fig. 7): with ``style_z`` (``[B, nz]`` or ``[1, nz]``), the main path is
        ``z``'s and the SLE gates are computed from ``style_z``'s low-resolution maps, which keeps the content
        and changes the style. ``style_res`` picks which sources (of 4, 8, 16, 32) come from ``style_z`` (default
        all). Both latents run through the 4..32 px blocks as one concatenated batch, with the same noise maps
        per sample, so ``style_z=z`` reproduces ``forward(z)`` in eval mode. In train mode BatchNorm's batch
        statistics then cover both halves: mix styles in eval mode.
        """
        z = self._check_z("z", z)
        B = z.shape[0]
        by_res = self._noise_by_res(noise, B)
        if noise is None:  # draw once per sample so that a style batch shares the content's maps
            drawn = iter(self.make_noise(B, generator=noise_generator, device=z.device, dtype=z.dtype))
            by_res = {r: [next(drawn) for _ in maps] for r, maps in by_res.items()}

        if style_z is None:
            content = sources = self._low(z, by_res, noise_generator)
        else:
            style_z = self._check_z("style_z", style_z)
            if style_z.shape[0] not in (1, B):
                raise ValueError(f"style_z must have batch 1 or B={B}, got shape {list(style_z.shape)}")
            chosen = set(LOW_RES if style_res is None else style_res)
            if not chosen <= set(LOW_RES):
                raise ValueError(f"style_res must be a subset of {LOW_RES}, got {sorted(chosen)}")
            both = self._low(torch.cat([z, style_z.expand(B, -1)]), by_res, noise_generator, repeat=2)
            content = {r: f[:B] for r, f in both.items()}
            sources = {r: (f[B:] if r in chosen else f[:B]) for r, f in both.items()}

        x = content[LOW_RES[-1]]
        x128 = x
        for r in self.resolutions:
            if r <= LOW_RES[-1]:
                continue
            x = self.blocks[str(r)](x, by_res[r], noise_generator)
            if r in self.sle_targets:
                x = self.sle[str(r)](sources[r // 16], x)
            if r == SMALL:
                x128 = x
        img128 = self.to_128(x128)
        img = self.to_big(x) if self.to_big is not None else img128
        if self.cfg.out_tanh:
            img128 = torch.tanh(img128)
            img = torch.tanh(img) if self.to_big is not None else img128
        return img, img128

    def style_mix(self, z_content: Tensor, z_style: Tensor, *, noise: Sequence[Tensor] | None = None,
                  noise_generator: torch.Generator | None = None,
                  style_res: Collection[int] | None = None) -> tuple[Tensor, Tensor]:
        """``forward(z_content, style_z=z_style, ...)``: content from ``z_content``, SLE gates from ``z_style``."""
        return self(z_content, noise=noise, noise_generator=noise_generator, style_z=z_style, style_res=style_res)


# ---------------------------------------------------------------------------------------------------
# Discriminator


class Discriminator(nn.Module):
    """(img ``[B, 3, size, size]``, img128 ``[B, 3, 128, 128]``) -> logits ``[B, 50]`` (+ reconstructions of reals).

    Big branch: ``stem`` brings the image to 256x256 (conv3x3 at 256 px; conv4x4/2 + LReLU, then conv4x4/2 + BN +
    LReLU per further halving above; at 128 px a conv3x3 keeps 128x128), then ``down`` (comp blocks) halves to
    8x8. The map at side r has ``cfg.dis_widths()[2 r]`` channels. ``sle[str(t)]`` gates the t x t map (t = 32,
    16, 8) with the map at 8 t (absent at 128 px for t = 32). ``rf_big``: conv1x1 -> BN -> LReLU -> conv4x4 valid,
    5x5 logits. Small branch: ``small`` (conv4x4/2 + LReLU, three DownBlocks) to 8x8, ``rf_small`` conv4x4 valid.
    Decoders: ``decoder_big`` (8x8 map), ``decoder_small`` (small branch's 8x8 map), ``decoder_part`` (a quadrant
    of the 16x16 map), each to ``[B, 3, 128, 128]``.
    """

    def __init__(self, cfg: FastGANConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.dis_widths()

        def ch(side: int) -> int:  # channels of the big branch's map at this side
            return w[2 * side]

        top = 256 if cfg.size >= 256 else cfg.size
        if cfg.size <= 256:
            stem: list[nn.Module] = [_conv(3, ch(top), 3, 1, 1), nn.LeakyReLU(LRELU)]
        else:
            side = cfg.size // 2
            stem = [_conv(3, ch(side), 4, 2, 1), nn.LeakyReLU(LRELU)]
            while side > top:
                stem += [_conv(ch(side), ch(side // 2), 4, 2, 1), _bn(ch(side // 2)), nn.LeakyReLU(LRELU)]
                side //= 2
        self.stem = nn.Sequential(*stem)
        self.sides = _resolutions(8, top)[::-1]  # map sides of the big branch: top, ..., 16, 8
        self.down = nn.ModuleList([DownBlockComp(ch(s), ch(s // 2)) for s in self.sides[:-1]])
        self.sle_targets = tuple(t for t in D_SLE_TARGETS if 8 * t <= top)
        self.sle = nn.ModuleDict({str(t): _sle(ch(8 * t), ch(t), cfg.sle_act) for t in self.sle_targets})
        self.rf_big = nn.Sequential(_conv(ch(8), w[8], 1), _bn(w[8]), nn.LeakyReLU(LRELU), _conv(w[8], 1, 4))

        small: list[nn.Module] = [_conv(3, w[256], 4, 2, 1), nn.LeakyReLU(LRELU)]
        small += [DownBlock(a, b) for a, b in ((w[256], w[128]), (w[128], w[64]), (w[64], w[32]))]
        self.small = nn.Sequential(*small)
        self.rf_small = _conv(w[32], 1, 4)

        self.decoder_big = SimpleDecoder(ch(8), cfg.dec_ngf)
        self.decoder_small = SimpleDecoder(w[32], cfg.dec_ngf)
        self.decoder_part = SimpleDecoder(ch(16), cfg.dec_ngf)

    def features(self, img: Tensor) -> dict[int, Tensor]:
        """The big branch's maps by side (top .. 8), after the D-side SLE gates."""
        x = self.stem(_check_images("img", img, self.cfg.size))
        feats = {self.sides[0]: x}
        for block, side in zip(self.down, self.sides[1:]):
            x = block(x)
            if side in self.sle_targets:
                x = self.sle[str(side)](feats[8 * side], x)
            feats[side] = x
        return feats

    def forward(self, img: Tensor, img128: Tensor, *,
                part: int | Tensor | None = None) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Logits ``[B, 50]`` (big branch's 5x5, then the small branch's 5x5, row-major).

        ``part=None`` (fakes): logits only. ``part`` an int 0..3 (one quadrant for the batch, as the official code)
        or an integer tensor ``[B]`` (per sample): ``(logits, (rec_big, rec_small, rec_part))``, each
        ``[B, 3, 128, 128]``, to compare with :func:`reconstruction_targets` of the real batch and the same part.
        Reals go in as ``(real, reconstruction_targets(real, part)[0])``; fakes as G's two outputs.
        """
        img = _check_images("img", img, self.cfg.size)
        B = img.shape[0]
        img128 = _check_images("img128", img128, SMALL, B)
        if part is not None:
            part = _check_part(part, B, img.device)
        feats = self.features(img)
        small = self.small(img128)
        logits = torch.cat([self.rf_big(feats[8]).flatten(1), self.rf_small(small).flatten(1)], dim=1)
        if part is None:
            return logits
        rec_big = self.decoder_big(feats[8])
        rec_small = self.decoder_small(small)
        rec_part = self.decoder_part(quadrant_crop(feats[16], part))
        return logits, (rec_big, rec_small, rec_part)


# ---------------------------------------------------------------------------------------------------
# The pair, generation and style mixing


class FastGAN(WithEMAGenerator, nn.Module):
    """G and D of one FastGAN, plus an optional EMA copy of G (``gen_ema``: see
    :class:`~fsgan_fast.nn.ema.WithEMAGenerator`)."""

    def __init__(self, cfg: FastGANConfig):
        super().__init__()
        self.cfg = cfg
        self.gen = Generator(cfg)
        self.dis = Discriminator(cfg)
        self.gen_ema: Generator | None = None

    @torch.no_grad()
    def generate(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        z: Tensor | None = None,
        batch_size: int = 64,
        use_ema: bool = True,
    ) -> Tensor:
        """``n`` images ``[n, 3, size, size]`` in [-1, 1], in eval mode (BatchNorm running statistics; the reference
        generates in training mode) with the EMA generator when there is one.

        The latents (``z [n, nz]``, else drawn up front from ``generator``) do not depend on ``batch_size``; the
        noise maps are drawn per batch from ``generator``.
        """
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        gen = self.pick(use_ema)
        p = next(gen.parameters())
        if z is None:
            where = generator.device if generator is not None else p.device
            z = torch.randn(n, self.cfg.nz, generator=generator, device=where)
        z = gen._check_z("z", z)
        if z.shape[0] != n:
            raise ValueError(f"z holds {z.shape[0]} latents but n={n}")
        z = z.to(p.device, p.dtype)
        was_training = gen.training
        gen.eval()
        try:
            out = [z.new_empty(0, 3, self.cfg.size, self.cfg.size)]
            for s in range(0, n, batch_size):
                zb = z[s : s + batch_size]
                noise = gen.make_noise(zb.shape[0], generator=generator, dtype=p.dtype)
                out.append(gen(zb, noise=[m.to(p.device) for m in noise])[0])
            return torch.cat(out)
        finally:
            gen.train(was_training)

    @torch.no_grad()
    def style_mix_grid(self, contents: int, styles: int, generator: torch.Generator | None = None, *,
                       use_ema: bool = True, batch_size: int = 64) -> Tensor:
        """The paper's style-mixing figure as one grid ``[(contents + 1) * (styles + 1), 3, S, S]`` (row-major, ``styles
        + 1`` per row): the first row holds the style images, the first column the content images, and cell (i, j)
        the content of row i with the SLE gates of style j. One noise sample is shared by every image, so only
        the latents differ; the top-left cell is white."""
        gen = self.pick(use_ema)
        p = next(gen.parameters())
        where = generator.device if generator is not None else p.device
        zc = torch.randn(contents, self.cfg.nz, generator=generator, device=where).to(p.device, p.dtype)
        zs = torch.randn(styles, self.cfg.nz, generator=generator, device=where).to(p.device, p.dtype)
        one = [m.to(p.device) for m in gen.make_noise(1, generator=generator, dtype=p.dtype)]
        was_training = gen.training
        gen.eval()
        try:
            def run(z: Tensor, style: Tensor | None = None) -> Tensor:
                parts = []
                for s in range(0, z.shape[0], batch_size):
                    zb = z[s : s + batch_size]
                    noise = [m.expand(zb.shape[0], -1, -1, -1) for m in one]
                    sb = None if style is None else style[s : s + batch_size]
                    parts.append(gen(zb, noise=noise, style_z=sb)[0])
                return torch.cat(parts)

            style_row = run(zs)
            content_col = run(zc)
            mixed = run(zc.repeat_interleave(styles, 0), zs.repeat(contents, 1))
        finally:
            gen.train(was_training)
        S = self.cfg.size
        cells = [torch.ones(1, 3, S, S, device=p.device, dtype=style_row.dtype), style_row]
        for i in range(contents):
            cells += [content_col[i : i + 1], mixed[i * styles : (i + 1) * styles]]
        return torch.cat(cells)


# ---------------------------------------------------------------------------------------------------
# Export: the generator with its noise maps as inputs


class FastGANInference(nn.Module):
    """``(z [B, nz], *noise maps [B, 1, r, r]) -> images [B, 3, S, S]``: the generator with its randomness as inputs,
    so every runtime gives the same images for the same inputs (``noise="zero"`` drops the maps: z alone)."""

    def __init__(self, gen: Generator, noise: str = "input"):
        super().__init__()
        self.gen = gen
        self.noise = noise

    def forward(self, z: Tensor, *noise: Tensor) -> Tensor:
        if self.noise == "zero":
            noise = tuple(z.new_zeros(s) for s in self.gen.noise_shapes(z.shape[0]))
        return self.gen(z, noise=list(noise))[0]


@dataclasses.dataclass
class FastGANExportOptions:
    """FastGAN's own export options (``fsgan-fast export fastgan``)."""

    noise: Literal["input", "zero"] = option(
        "input", "the noise-injection maps: graph inputs (drawn N(0,1) by the caller, as in training) or zeros "
        "(z is the only input; textures lose their per-sample noise)")
    use_ema: bool = option(True, "export the EMA generator when the checkpoint has one (--no-ema: the trained G)",
                           flag="ema")

    def __post_init__(self) -> None:
        configs.validate(self)


def fastgan_graph(model: nn.Module, *, noise: str = "input", use_ema: bool = True):
    """The :class:`~fsgan_fast.export.graphs.GeneratorGraph` of a FastGAN (the pair or its generator)."""
    from fsgan_fast.export.graphs import BATCH_INPUTS_KEY, GeneratorGraph

    which = "gen"
    if isinstance(model, FastGAN):
        which = "gen_ema" if use_ema and model.gen_ema is not None else "gen"
        gen = getattr(model, which)
    elif isinstance(model, Generator):
        gen = model
    else:
        raise TypeError(f"expected a FastGAN or its Generator, got {type(model).__name__}")
    if noise not in ("input", "zero"):
        raise ValueError(f"noise must be 'input' or 'zero', got {noise!r}")
    gen = copy.deepcopy(gen).eval().requires_grad_(False)
    cfg = gen.cfg
    n_maps = len(gen.noise_shapes(1)) if noise == "input" else 0
    names = ("z",) + tuple(f"noise{i}" for i in range(n_maps))

    def sample(B: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, ...]:
        where = generator.device if generator is not None else device
        z = torch.randn(B, cfg.nz, generator=generator, device=where)
        maps = gen.make_noise(B, generator=generator, device=where) if n_maps else []
        return tuple(t.to(device) for t in (z, *maps))

    sides = [s[-1] for s in gen.noise_shapes(1)]
    meta = {
        "fsgan_fast.model": "fastgan",
        "fsgan_fast.config": json.dumps(cfg.to_dict()),
        "fsgan_fast.generator": which,
        "fsgan_fast.noise": noise,
        "fsgan_fast.inputs": f"z: [B, {cfg.nz}] N(0, 1)" + (
            "; " + ", ".join(f"noise{i}: [B, 1, {r}, {r}] N(0, 1)" for i, r in enumerate(sides)) if n_maps else ""),
        "fsgan_fast.outputs": f"images: [B, 3, {cfg.size}, {cfg.size}]" + (" in [-1, 1]" if cfg.out_tanh else ""),
        BATCH_INPUTS_KEY: json.dumps(list(names)),
    }
    return GeneratorGraph(model="fastgan", module=FastGANInference(gen, noise).eval(), input_names=names,
                          output_names=("images",), batch_inputs=names, sample=sample, metadata=meta)


# ---------------------------------------------------------------------------------------------------
# fsgan-fast generate fastgan


@dataclasses.dataclass
class FastGANGenerateOptions:
    """The options of ``fsgan-fast generate fastgan``."""

    style_mix: int = option(0, "also write OUT/style_mix.png: N content latents (rows) x N style latents (columns), "
                            "each cell the row's content with the column's SLE gates (0 = off)", low=0, metavar="N")
    use_ema: bool = option(True, "use the EMA generator when the checkpoint has one (--no-ema: the trained G)",
                           flag="ema")

    def __post_init__(self) -> None:
        configs.validate(self)


def generate_command(model: FastGAN, opts: FastGANGenerateOptions, *, n: int, out: Path,
                     generator: torch.Generator, batch_size: int) -> list[Path]:
    """Write ``out/<i>.png`` per generation, ``out/grid.png`` and, with ``--style-mix N``, ``out/style_mix.png``."""
    from fsgan_fast.utils.images import save_grid, save_image

    if not opts.use_ema and model.gen_ema is None:
        raise configs.ConfigError("--no-ema given but the checkpoint has no EMA generator to skip")
    fakes = model.generate(n, generator, batch_size=batch_size, use_ema=opts.use_ema)
    width = len(str(max(n - 1, 0)))
    written = [save_image(img, out / f"{i:0{width}d}.png") for i, img in enumerate(fakes)]
    if n:
        written.append(save_grid(fakes, out / "grid.png", min(n, 8)))
    if opts.style_mix:
        k = opts.style_mix
        grid = model.style_mix_grid(k, k, generator, use_ema=opts.use_ema, batch_size=batch_size)
        written.append(save_grid(grid, out / "style_mix.png", k + 1))
    return written


def _auto_preset(data: str | None) -> str:
    return "demo" if data == "builtin" else "paper"


registry.register(registry.ModelSpec(
    name="fastgan",
    summary="FastGAN: skip-layer excitation and a self-supervised D, few-shot generation at 128-1024 px (ICLR 2021)",
    description=(
        "Train FastGAN on a few hundred (or fewer) images of one domain. Writes RUN/checkpoint.pt (latest; exact "
        "resume), RUN/metrics.jsonl, RUN/samples/step_*.png (16 generations from fixed latents, EMA G) and "
        "RUN/config.json. --data: 'builtin' (100 crops of four scikit-image photos, no download), a folder of "
        "images (sub-folders searched; centre-cropped to squares), or a .npy [N, H, W, 3]. D's reconstruction "
        "loss is LPIPS on VGG16 (--recon lpips) and needs torchvision's vgg16-397923af.pth (--vgg PATH, "
        "$FSGAN_FAST_VGG16 or torch hub's cache) and 'pip install --no-deps lpips'; --recon auto falls back to MSE without "
        "them. Options left unset come from --preset."
    ),
    model_config=FastGANConfig,
    train_config="fsgan_fast.train.fastgan:FastGANTrainConfig",
    presets="fsgan_fast.train.fastgan:PRESETS",
    auto_preset=_auto_preset,
    preset_help=("'demo' = 128 px, ngf=ndf=dec_ngf=8, batch 8, 400 steps, EMA 0.98, MSE reconstruction (about "
                 "5 minutes on a 2-core CPU); 'paper' = the reference model (ngf=ndf=64, LPIPS, batch 8, 50000 steps) "
                 "at --size (256 by default; 512, 1024); auto = demo for --data builtin, else paper"),
    build=FastGAN,
    train="fsgan_fast.train.fastgan:train_run",
    graph=fastgan_graph,
    export_options=FastGANExportOptions,
    model_types=(FastGAN, Generator),
    generate=generate_command,
    generate_options=FastGANGenerateOptions,
    evaluate="fsgan_fast.metrics.protocols:evaluate_fastgan",
    eval_options="fsgan_fast.metrics.protocols:FastGANEvalOptions",
))


__all__ = ["FastGANConfig", "Generator", "Discriminator", "FastGAN", "FastGANInference", "FastGANExportOptions",
           "FastGANGenerateOptions", "fastgan_graph", "generate_command", "NoiseInjection", "UpBlock", "UpBlockComp",
           "DownBlock", "DownBlockComp", "SimpleDecoder", "quadrant_crop", "reconstruction_targets"]
