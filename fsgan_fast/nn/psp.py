"""pSp's GradualStyleEncoder (Richardson et al. 2021): an IR-SE residual backbone, a feature pyramid, and one
map-to-style head per StyleGAN2 layer, mapping ``label_nc``-channel semantic masks to W+ codes.

Contract of :class:`GradualStyleEncoder` ``(x [N, label_nc, H, W]) -> w+ [N, n_latent, style_dim]``:

1. ``x`` (a one-hot mask, float) is resized (nearest) to ``input_size`` when its side differs (Fewshot-SMIS feeds
   256x256 masks whatever the generator's size).
2. ``input_layer``: 3x3 conv (no bias) -> BatchNorm -> PReLU, to ``widths[0]`` channels.
3. ``body``: four stages of IR-SE bottlenecks (:class:`BottleneckIRSE`: BN -> conv3x3 -> PReLU -> conv3x3 (stride) ->
   BN -> squeeze-excitation, plus a max-pool or 1x1-conv+BN shortcut); stage j has ``blocks[j]`` units of
   ``widths[j]`` channels, its first unit with stride 2. IR-SE-50 is blocks (3, 4, 14, 3), widths (64, 128, 256,
   512). Taps: c1 after stage 2 (side /4), c2 after stage 3 (/8), c3 after stage 4 (/16).
4. FPN: ``p2 = up(c3) + latlayer1(c2)``, ``p1 = up(p2) + latlayer2(c1)`` (1x1 convs to ``widths[3]``, bilinear with
   ``align_corners=True``).
5. Heads (:class:`GradualStyleBlock`: stride-2 3x3 convs + LeakyReLU(0.01) down to 1x1, then an EqualLinear):
   styles ``0..coarse-1`` from c3, ``coarse..middle-1`` from p2, the rest from p1 (pSp: coarse 3, middle 7).

Module and parameter names are pSp's (``input_layer``, ``body.i.res_layer``/``shortcut_layer``, ``styles``,
``latlayer1/2``), so IR-SE-50 backbone weights (pSp's ``model_ir_se50.pth``, without its 3-channel input layer) load
with :func:`load_backbone`, and the ``encoder.*`` part of a pSp checkpoint loads directly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.nn.stylegan2 import EqualLinear

# the IR-SE depths of pSp's get_blocks: units per stage
IR_SE_DEPTHS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
STAGES = 4


@dataclasses.dataclass
class EncoderConfig:
    """The encoder's shape; the defaults are pSp's GradualStyleEncoder on IR-SE-50."""

    blocks: tuple[int, ...] = option((3, 4, 14, 3), "IR-SE units per stage, four stages (IR-SE-50: 3,4,14,3; -100: "
                                     "3,13,30,3; -152: 3,8,36,3)")
    widths: tuple[int, ...] = option((64, 128, 256, 512), "channels of the four stages (the FPN and heads read the "
                                     "last)")
    se_reduction: int = option(16, "squeeze-excitation reduction of the IR-SE units", low=1)
    input_size: int = option(256, "side the masks are resized to before encoding (pSp: 256; the generator's size when "
                             "smaller)", low=32)
    coarse: int = option(3, "styles predicted from the coarsest map c3 (pSp: 3)", low=1)
    middle: int = option(7, "styles before this index come from c3 or p2, the rest from p1 (pSp: 7)", low=1)

    def __post_init__(self) -> None:
        configs.validate(self)
        for name in ("blocks", "widths"):
            value = getattr(self, name)
            if len(value) != STAGES or min(value) < 1:
                raise ValueError(f"{name} must be {STAGES} positive ints (one per stage), got {value}")
        if self.input_size & (self.input_size - 1):
            raise ValueError(f"input_size must be a power of two >= 32, got {self.input_size}")
        if self.middle < self.coarse:
            raise ValueError(f"middle ({self.middle}) must be >= coarse ({self.coarse})")

    @classmethod
    def ir_se(cls, depth: int, **kw: Any) -> EncoderConfig:
        """pSp's IR-SE-``depth`` (50, 100 or 152) with the other fields from ``kw``."""
        if depth not in IR_SE_DEPTHS:
            raise ValueError(f"depth must be one of {sorted(IR_SE_DEPTHS)}, got {depth}")
        return cls(blocks=IR_SE_DEPTHS[depth], **kw)

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)


# ---------------------------------------------------------------------------------------------------
# Layers


class SEModule(nn.Module):
    """Squeeze-excitation: ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))`` with 1x1 convs (no bias)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIRSE(nn.Module):
    """pSp's ``bottleneck_IR_SE``: ``res_layer(x) + shortcut_layer(x)``."""

    def __init__(self, in_channel: int, depth: int, stride: int, se_reduction: int = 16):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)  # a strided identity
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, se_reduction),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """A map-to-style head: ``log2(spatial)`` stride-2 3x3 convs with LeakyReLU(0.01) take a ``spatial`` map to 1x1,
    then an EqualLinear gives one style ``[N, out_c]``."""

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        if spatial < 2 or spatial & (spatial - 1):
            raise ValueError(f"spatial must be a power of two >= 2, got {spatial}")
        self.out_c = out_c
        num_pools = int(math.log2(spatial))
        modules: list[nn.Module] = [nn.Conv2d(in_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        for _ in range(num_pools - 1):
            modules += [nn.Conv2d(out_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*modules)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_c))


def _upsample_add(x: Tensor, y: Tensor) -> Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


# ---------------------------------------------------------------------------------------------------
# The encoder


class GradualStyleEncoder(nn.Module):
    """Masks ``[N, label_nc, H, W]`` -> W+ codes ``[N, n_latent, style_dim]`` (module docstring).

    ``image_size``: the generator's side; masks are encoded at ``min(cfg.input_size, image_size)``.
    """

    def __init__(self, cfg: EncoderConfig, *, label_nc: int, n_latent: int, style_dim: int, image_size: int):
        super().__init__()
        if not isinstance(cfg, EncoderConfig):
            raise TypeError(f"cfg must be an EncoderConfig, got {type(cfg).__name__}")
        for name, value, low in (("label_nc", label_nc, 1), ("n_latent", n_latent, 1), ("style_dim", style_dim, 1),
                                 ("image_size", image_size, 32)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.cfg = cfg
        self.label_nc, self.n_latent, self.style_dim = label_nc, n_latent, style_dim
        self.input_size = min(cfg.input_size, image_size)
        w = cfg.widths
        self.input_layer = nn.Sequential(nn.Conv2d(label_nc, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]),
                                         nn.PReLU(w[0]))
        units: list[nn.Module] = []
        in_channel = w[0]
        for depth, count in zip(w, cfg.blocks):
            for i in range(count):
                units.append(BottleneckIRSE(in_channel, depth, 2 if i == 0 else 1, cfg.se_reduction))
                in_channel = depth
        self.body = nn.Sequential(*units)
        ends = [sum(cfg.blocks[: j + 1]) for j in range(STAGES)]
        self.taps = (ends[1] - 1, ends[2] - 1, ends[3] - 1)  # body indices after which c1, c2, c3 are read
        self.coarse = min(cfg.coarse, n_latent)
        self.middle = min(max(cfg.middle, self.coarse), n_latent)
        side = self.input_size
        spatial = [side // 16] * self.coarse + [side // 8] * (self.middle - self.coarse) + \
                  [side // 4] * (n_latent - self.middle)
        self.styles = nn.ModuleList(GradualStyleBlock(w[3], style_dim, s) for s in spatial)
        self.latlayer1 = nn.Conv2d(w[2], w[3], 1)
        self.latlayer2 = nn.Conv2d(w[1], w[3], 1)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor (one-hot masks), got "
                            f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.label_nc or x.shape[0] == 0 or x.shape[2] != x.shape[3]:
            raise ValueError(f"x must be square one-hot masks [N>=1, label_nc={self.label_nc}, H, H], got shape "
                             f"{list(x.shape)}")
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="nearest")
        x = self.input_layer(x)
        c1 = c2 = c3 = x
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == self.taps[0]:
                c1 = x
            elif i == self.taps[1]:
                c2 = x
            elif i == self.taps[2]:
                c3 = x
        latents = [self.styles[j](c3) for j in range(self.coarse)]
        p2 = _upsample_add(c3, self.latlayer1(c2))
        latents += [self.styles[j](p2) for j in range(self.coarse, self.middle)]
        p1 = _upsample_add(p2, self.latlayer2(c1))
        latents += [self.styles[j](p1) for j in range(self.middle, self.n_latent)]
        return torch.stack(latents, dim=1)


def load_backbone(encoder: GradualStyleEncoder, state: Mapping[str, Tensor]) -> list[str]:
    """Copy IR-SE backbone weights (pSp's ``model_ir_se50.pth`` layout: ``input_layer.*``, ``body.*``, ...) into
    ``encoder``'s body; the input layer, heads and FPN keep their init (the file's input layer reads RGB).

    Returns the names loaded; raises ValueError when a body key is missing or has another shape (the file is for
    another depth or width).
    """
    own = encoder.state_dict()
    body = {k: v for k, v in own.items() if k.startswith("body.")}
    missing = [k for k in body if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in body.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or wrong:
        raise ValueError("the backbone weights do not fit this encoder (blocks "
                         f"{encoder.cfg.blocks}, widths {encoder.cfg.widths}): "
                         + "; ".join(p for p in (f"{len(missing)} missing keys, e.g. {missing[:3]}" if missing else "",
                                                 f"shapes differ for {wrong[:3]}" if wrong else "") if p))
    encoder.load_state_dict({**own, **{k: state[k] for k in body}})
    return sorted(body)


__all__ = ["EncoderConfig", "GradualStyleEncoder", "GradualStyleBlock", "BottleneckIRSE", "SEModule", "IR_SE_DEPTHS",
           "load_backbone"]
