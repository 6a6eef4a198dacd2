"""StyleGAN2 generator (Karras et al. 2020, config-f) in the rosinality ``stylegan2-pytorch`` parameter layout.

The frozen prior of Few-shot SMIS: a rosinality ``g_ema`` state dict loads into :class:`StyleGAN2Generator`
with ``load_state_dict(strict=True)`` and gives the same images, because the maths is that implementation's:

1. Mapping ``style``: ``PixelNorm`` (index 0: ``x * rsqrt(mean(x^2, channels) + 1e-8)``), then ``n_mlp``
   :class:`EqualLinear` layers (indices 1..n_mlp) with ``lr_mul = lr_mlp`` (0.01): stored weights are
   ``randn / lr_mul``, used as ``weight * lr_mul / sqrt(in)``, bias ``* lr_mul``, then fused leaky ReLU
   (``leaky_relu(x + b, 0.2) * sqrt(2)``).
2. Synthesis: ``input.input`` a learned ``[1, 512, 4, 4]`` constant; ``conv1`` and ``to_rgb1`` at 4 px; per
   resolution r = 8 .. size, ``convs[2k]`` (upsampling) and ``convs[2k+1]``, then ``to_rgbs[k]``.
   A :class:`StyledConv` is modulated conv -> noise (``+ weight * noise``, weight starts at 0) -> fused leaky
   ReLU with a per-channel bias.
3. :class:`ModulatedConv2d`: ``w = W / sqrt(in * k * k) * s`` with ``s = modulation(style)`` (an EqualLinear
   whose bias starts at 1), demodulated as ``w * rsqrt(sum_{in,kh,kw} w^2 + 1e-8)`` (not in ToRGB), run as one
   conv grouped over the batch. Upsampling convs: transposed conv, stride 2, padding 0, then :class:`Blur` with
   the FIR ``outer(k, k) / sum * 4`` and pads ``((p + 1) // 2 + 1, p // 2 + 1)``, ``p = len(k) - 2 - (ksize - 1)``.
4. :class:`ToRGB`: a 1x1 modulated conv without demodulation + bias; the running RGB skip is upsampled with
   :class:`Upsample` (``upfirdn2d(up=2)`` with the FIR ``* 4``, pads ``((p + 1) // 2 + 1, p // 2)``,
   ``p = len(k) - 2``) and added.
5. Style indices: ``conv1`` takes w[0], ``to_rgb1`` w[1]; the block at 2^j takes w[2j-5], w[2j-4] and its ToRGB
   w[2j-3], so ``n_latent = 2 log2(size) - 2`` (18 at 1024 px). Noise layer i has side ``2 ** ((i + 5) // 2)``;
   ``noises.noise_i`` are fixed ``[1, 1, r, r]`` buffers used by ``randomize_noise=False``.

``fused_leaky_relu`` (the bias_act of NVlabs' code) is the op :func:`fsgan_fast.ops.bias_act` with
``act="lrelu"`` (reference, Triton, CUDA and C++ CPU backends). ``upfirdn2d`` stays composite PyTorch (zero
insertion by reshape + pad, then a per-channel grouped conv2d with the flipped FIR), which ``torch.compile``
fuses; a custom kernel for it (the ops/ pattern: reference + fast path + bench) is future work.

Deviations, all invisible with the default config: truncation applies for every ``truncation != 1``
(rosinality ignores psi > 1), ToRGB's skip upsampler uses ``cfg.blur_kernel`` (rosinality always uses
[1, 3, 3, 1] there), inputs are validated, and all randomness can come from a caller's ``torch.Generator``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.ops import bias_act

SQRT2 = math.sqrt(2.0)
MIN_SIZE, MAX_SIZE = 32, 1024
DEMOD_EPS = 1e-8  # rosinality's, inside rsqrt, for PixelNorm and demodulation alike


# ---------------------------------------------------------------------------------------------------
# Config and output


@dataclasses.dataclass
class StyleGAN2Config:
    """Hyper-parameters of the rosinality ``Generator``; the defaults but ``size`` are config-f."""

    size: int = option(64, "image side: a power of two in 32..1024 (FFHQ 1024, LSUN 256, cars 512)", low=MIN_SIZE,
                       high=MAX_SIZE)
    style_dim: int = option(512, "width of z, w and the mapping network", low=1)
    n_mlp: int = option(8, "EqualLinear layers of the mapping network", low=1)
    channel_multiplier: int = option(2, "channels at 64 px are 256 * this (config-f: 2)", low=1)
    lr_mlp: float = option(0.01, "learning-rate multiplier of the mapping network (scales its stored weights)",
                           low=0.0, low_open=True)
    blur_kernel: tuple[int, ...] = option((1, 3, 3, 1), "taps of the separable FIR of up-sampling (outer product)")
    channel_max: int | None = option(None, "cap on every layer's channels (None: rosinality's table as is; small "
                                     "values make tiny test and CPU-benchmark networks)", low=1)

    def __post_init__(self) -> None:
        configs.validate(self)
        if self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two in {MIN_SIZE}..{MAX_SIZE}, got {self.size}")
        if len(self.blur_kernel) < 2 or sum(self.blur_kernel) == 0:
            raise ValueError(f"blur_kernel must have >= 2 taps with a non-zero sum, got {self.blur_kernel}")

    @property
    def log_size(self) -> int:
        return self.size.bit_length() - 1

    @property
    def n_latent(self) -> int:
        return 2 * self.log_size - 2

    @property
    def num_layers(self) -> int:
        return 2 * self.log_size - 3

    def channels(self) -> dict[int, int]:
        """Channels per resolution, all of 4..1024: rosinality's table (512 up to 32 px, then 256, 128, 64, 32, 16
        times ``channel_multiplier``), each capped at ``channel_max``."""
        cm = self.channel_multiplier
        table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
                 1024: 16 * cm}
        cap = self.channel_max if self.channel_max is not None else max(table.values())
        return {r: min(c, cap) for r, c in table.items()}

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StyleGAN2Config:
        return configs.from_dict(cls, d)


class StyleGAN2Output(NamedTuple):
    image: Tensor  # [N, 3, size, size], roughly in [-1, 1]
    latents: Tensor | None  # [N, n_latent, style_dim] when return_latents
    features: dict[int, Tensor]  # {res: output of the block's last conv}, for the requested resolutions


# ---------------------------------------------------------------------------------------------------
# Composite ops (upfirdn2d; fused_leaky_relu is the bias_act op, see the module docstring)


def fused_leaky_relu(x: Tensor, bias: Tensor, negative_slope: float = 0.2, scale: float = SQRT2) -> Tensor:
    """``leaky_relu(x + bias, negative_slope) * scale`` with ``bias`` ``[C]`` added along dim 1 of ``x``."""
    if bias.ndim != 1 or x.ndim < 2 or x.shape[1] != bias.shape[0]:
        raise ValueError(f"bias must be [C] with C = x.shape[1]; got x {tuple(x.shape)}, bias {tuple(bias.shape)}")
    return bias_act(x, bias.to(x.dtype), act="lrelu", alpha=negative_slope, gain=scale)


def _pads4(pad: Sequence[int]) -> tuple[int, int, int, int]:
    if len(pad) == 2:
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:
        return tuple(pad)  # type: ignore[return-value]
    raise ValueError(f"pad must be (p0, p1) or (x0, x1, y0, y1), got {pad!r}")


def upfirdn2d(x: Tensor, kernel: Tensor, *, up: int = 1, down: int = 1, pad: Sequence[int] = (0, 0)) -> Tensor:
    """Upsample (zero insertion), FIR filter, downsample, per channel, as NVlabs'/rosinality's ``upfirdn2d``.

    ``x`` ``[N, C, H, W]``; ``kernel`` ``[kh, kw]``; ``pad`` ``(p0, p1)`` for both axes or ``(x0, x1, y0, y1)``
    (negative values crop). Each input sample is followed by ``up - 1`` zeros, the result is padded, convolved
    with ``kernel`` (a true convolution: the kernel is flipped for ``conv2d``'s correlation) and every
    ``down``-th output kept. Output side: ``(H * up + p0 + p1 - kh) // down + 1``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be 2-D [kh, kw], got shape {tuple(kernel.shape)}")
    if up < 1 or down < 1:
        raise ValueError(f"up and down must be >= 1, got up={up}, down={down}")
    x0, x1, y0, y1 = _pads4(pad)
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(n, c, h * up, w * up)
    x = F.pad(x, (x0, x1, y0, y1))  # F.pad crops on negative pads
    kh, kw = kernel.shape
    if x.shape[-2] < kh or x.shape[-1] < kw:
        raise ValueError(f"padded input {tuple(x.shape[-2:])} is smaller than the kernel {(kh, kw)}")
    weight = torch.flip(kernel, (0, 1)).to(x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


def make_blur_kernel(taps: Sequence[int | float]) -> Tensor:
    """The normalised separable FIR ``outer(taps, taps) / sum``, float32 ``[len, len]``."""
    k = torch.tensor(list(taps), dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


# ---------------------------------------------------------------------------------------------------
# Layers (names and parameters as rosinality's, so state dicts match key for key)


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + DEMOD_EPS)


class EqualLinear(nn.Module):
    """Linear with the equalised learning rate: stored ``weight ~ N(0, 1) / lr_mul``, used ``* lr_mul / sqrt(in)``.

    ``activation="fused_lrelu"`` adds the (``lr_mul``-scaled) bias inside :func:`fused_leaky_relu`.
    """

    def __init__(self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: str | None = None):
        super().__init__()
        if activation not in (None, "fused_lrelu"):
            raise ValueError(f"activation must be None or 'fused_lrelu', got {activation!r}")
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class FusedLeakyReLU(nn.Module):
    """Per-channel bias + leaky ReLU(0.2) * sqrt(2); the bias (``activate.bias``) starts at 0."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class Upsample(nn.Module):
    """2x upsampling of the RGB skip: ``upfirdn2d(up=2)`` with the FIR times ``factor ** 2`` (keeps the mean)."""

    def __init__(self, taps: Sequence[int], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_blur_kernel(taps) * factor**2)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    """FIR filter (no resampling) after a transposed conv; ``upsample_factor`` scales the FIR by its square."""

    def __init__(self, taps: Sequence[int], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated (and by default demodulated) conv; ``upsample=True`` doubles the side. See step 3 above."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, *,
                 demodulate: bool = True, upsample: bool = False, blur_kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def modulated_weight(self, style: Tensor) -> Tensor:
        """The per-sample weights ``[N, out, in, k, k]`` for styles ``[N, style_dim]``."""
        # in fp32 at least, also under autocast: demodulation sums in * k * k squares (4608 at 512 channels)
        s = self.modulation(style).view(-1, 1, self.in_channel, 1, 1)
        s = s.float() if s.dtype in (torch.float16, torch.bfloat16) else s
        weight = self.scale * self.weight.to(s.dtype) * s
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + DEMOD_EPS)
        return weight

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        n, c, h, w = x.shape
        k, out_c = self.kernel_size, self.out_channel
        weight = self.modulated_weight(style).to(x.dtype)
        # one conv over the whole batch: samples become groups, each with its own weights
        x = x.reshape(1, n * c, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * c, out_c, k, k)  # conv_transpose wants [in, out/groups]
            out = F.conv_transpose2d(x, weight, stride=2, padding=0, groups=n)
            return self.blur(out.view(n, out_c, out.shape[-2], out.shape[-1]))
        out = F.conv2d(x, weight.reshape(n * out_c, c, k, k), padding=self.padding, groups=n)
        return out.view(n, out_c, h, w)

    def extra_repr(self) -> str:
        return (f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, demodulate={self.demodulate}, "
                f"upsample={self.upsample}")


def _sample_noise(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


class NoiseInjection(nn.Module):
    """``x + weight * noise`` with one learned scalar ``weight`` (starts at 0); noise ``[N or 1, 1, H, W]``."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        n, _, h, w = x.shape
        if noise is None:
            noise = _sample_noise((n, 1, h, w), x, generator)
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class ConstantInput(nn.Module):
    """The learned ``[1, C, 4, 4]`` start of synthesis, repeated over the batch."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int | Tensor) -> Tensor:
        """``batch``: the batch size, or (as rosinality) any tensor whose first dim is it."""
        n = batch.shape[0] if isinstance(batch, Tensor) else batch
        return self.input.expand(n, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated conv -> noise -> bias + leaky ReLU * sqrt(2) (keys ``conv.*``, ``noise.weight``, ``activate.bias``)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, *,
                 upsample: bool = False, blur_kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise, generator))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) + bias, plus the upsampled RGB of the previous resolution."""

    def __init__(self, in_channel: int, style_dim: int, *, upsample: bool = True,
                 blur_kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# ---------------------------------------------------------------------------------------------------
# The generator


class StyleGAN2Generator(nn.Module):
    """rosinality's ``Generator`` (see the module docstring), with the 64 px features SMIS matches on.

    Attributes as rosinality: ``size``, ``style_dim``, ``log_size``, ``n_latent`` (styles per image),
    ``num_layers`` (noise inputs), ``channels`` ({res: channels}).
    """

    def __init__(self, cfg: StyleGAN2Config | None = None):
        super().__init__()
        cfg = StyleGAN2Config() if cfg is None else cfg
        if not isinstance(cfg, StyleGAN2Config):
            raise TypeError(f"cfg must be a StyleGAN2Config, got {type(cfg).__name__}")
        self.cfg = cfg
        self.size, self.style_dim, self.log_size = cfg.size, cfg.style_dim, cfg.log_size
        self.n_latent, self.num_layers = cfg.n_latent, cfg.num_layers
        self.channels = cfg.channels()
        blur = tuple(cfg.blur_kernel)

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(cfg.style_dim, cfg.style_dim, lr_mul=cfg.lr_mlp, activation="fused_lrelu")
            for _ in range(cfg.n_mlp)
        ])
        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, cfg.style_dim, blur_kernel=blur)
        self.to_rgb1 = ToRGB(c4, cfg.style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty, as in rosinality (kept for attribute parity)
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            side = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, side, side))
        in_channel = c4
        for j in range(3, self.log_size + 1):
            out_channel = self.channels[2**j]
            self.convs.append(StyledConv(in_channel, out_channel, 3, cfg.style_dim, upsample=True, blur_kernel=blur))
            self.convs.append(StyledConv(out_channel, out_channel, 3, cfg.style_dim, blur_kernel=blur))
            self.to_rgbs.append(ToRGB(out_channel, cfg.style_dim, blur_kernel=blur))
            in_channel = out_channel

    # ---- latents and noise

    @property
    def resolutions(self) -> list[int]:
        return [2**j for j in range(2, self.log_size + 1)]

    def _device(self) -> torch.device:
        return self.input.input.device

    def get_latent(self, z: Tensor) -> Tensor:
        """The mapping network: ``z [..., style_dim] -> w [..., style_dim]`` (PixelNorm over the last dim)."""
        if not isinstance(z, Tensor):
            raise TypeError(f"z must be a Tensor, got {type(z).__name__}")
        if z.ndim < 2 or z.shape[-1] != self.style_dim:
            raise ValueError(f"z must be [N, {self.style_dim}], got shape {tuple(z.shape)}")
        lead = z.shape[:-1]
        return self.style(z.reshape(-1, self.style_dim)).reshape(*lead, self.style_dim)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> Tensor:
        """Mean of ``n`` mapped ``z ~ N(0, I)``: ``[1, style_dim]``, the usual ``truncation_latent``."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        device = generator.device if generator is not None else self._device()
        z = torch.randn(n, self.style_dim, generator=generator, device=device).to(self._device())
        return self.style(z).mean(0, keepdim=True)

    def make_noise(self, batch: int = 1, *, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> list[Tensor]:
        """Fresh noise maps ``[batch, 1, r, r]``, one per noise layer (``num_layers``), for ``forward(noise=...)``."""
        device = torch.device(device) if device is not None else self._device()
        src = generator.device if generator is not None else device
        return [torch.randn(batch, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), generator=generator,
                            device=src).to(device) for i in range(self.num_layers)]

    # ---- argument checks

    def _style_list(self, styles: Any, input_is_latent: bool) -> list[Tensor]:
        if isinstance(styles, Tensor):
            styles = [styles]
        elif not (isinstance(styles, (list, tuple)) and 1 <= len(styles) <= 2
                  and all(isinstance(s, Tensor) for s in styles)):
            raise TypeError("styles must be a Tensor [N, style_dim] or [N, n_latent, style_dim], or a list of two "
                            f"[N, style_dim] Tensors for style mixing; got {type(styles).__name__}")
        styles = list(styles)
        d, nl = self.style_dim, self.n_latent
        for s in styles:
            if not s.is_floating_point():
                raise TypeError(f"styles must be floating point, got {s.dtype}")
            ok = (s.ndim == 2 and s.shape[1] == d) or (len(styles) == 1 and s.ndim == 3 and s.shape[1:] == (nl, d))
            if not ok:
                want = f"[N, {d}]" if len(styles) == 2 else f"[N, {d}] or [N, {nl}, {d}]"
                raise ValueError(f"styles must be {want}, got shape {tuple(s.shape)}")
            if s.shape[0] != styles[0].shape[0] or s.shape[0] == 0:
                raise ValueError(f"styles must share one non-zero batch size, got {[tuple(t.shape) for t in styles]}")
        return styles if input_is_latent else [self.get_latent(s) for s in styles]

    def _noise_list(self, noise: Any, randomize: bool, batch: int, generator: torch.Generator | None,
                    like: Tensor) -> list[Tensor | None]:
        if noise is None:
            if not randomize:
                return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
            if generator is None:
                return [None] * self.num_layers  # each NoiseInjection draws from the global RNG, as rosinality
            return self.make_noise(batch, generator=generator, device=like.device)
        if not isinstance(noise, (list, tuple)) or len(noise) != self.num_layers:
            got = f"{type(noise).__name__} of length {len(noise)}" if isinstance(noise, (list, tuple)) \
                else type(noise).__name__
            raise ValueError(f"noise must be a list of {self.num_layers} tensors (or None entries), one per noise "
                             f"layer, got {got}")
        for i, t in enumerate(noise):
            side = 2 ** ((i + 5) // 2)
            if t is not None and (not isinstance(t, Tensor) or t.ndim != 4 or t.shape[0] not in (1, batch)
                                  or tuple(t.shape[1:]) != (1, side, side)):
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"noise[{i}] must be [1 or {batch}, 1, {side}, {side}], got {got}")
        return list(noise)

    def _truncate(self, latent: Tensor, truncation: float, truncation_latent: Tensor | None) -> Tensor:
        if truncation_latent is None:
            raise ValueError("truncation_latent is required when truncation != 1 (e.g. generator.mean_latent())")
        if not isinstance(truncation_latent, Tensor):
            raise TypeError(f"truncation_latent must be a Tensor, got {type(truncation_latent).__name__}")
        d, nl = self.style_dim, self.n_latent
        if truncation_latent.numel() == d:
            center = truncation_latent.reshape(1, 1, d)
        elif truncation_latent.numel() == nl * d and truncation_latent.shape[-1] == d:
            center = truncation_latent.reshape(1, nl, d)  # a per-layer average (pSp stores some so)
        else:
            raise ValueError(f"truncation_latent must hold {d} or {nl}x{d} values ([1, {d}] or [{nl}, {d}]), "
                             f"got shape {tuple(truncation_latent.shape)}")
        center = center.to(latent.device, latent.dtype)
        return center + truncation * (latent - center)

    # ---- synthesis

    def forward(self, styles: Tensor | Sequence[Tensor], *, input_is_latent: bool = False,
                noise: Sequence[Tensor | None] | None = None, randomize_noise: bool = True,
                truncation: float = 1.0, truncation_latent: Tensor | None = None, inject_index: int | None = None,
                return_latents: bool = False, return_features: Sequence[int] | int = (),
                noise_generator: torch.Generator | None = None) -> StyleGAN2Output:
        """Images for z (``input_is_latent=False``) or w codes.

        ``styles``: ``[N, style_dim]`` (one code for every layer), ``[N, n_latent, style_dim]`` (w+ / z+, one per
        layer) or a list of two ``[N, style_dim]`` codes: the first drives layers ``< inject_index``, the second
        the rest (``inject_index`` drawn from 1..n_latent-1 when None, with ``noise_generator`` if given).
        ``noise``: ``num_layers`` maps ``[1 or N, 1, r, r]`` (None entries are sampled); when None, fresh noise
        (``randomize_noise``, from ``noise_generator`` if given) or the fixed ``noises.noise_i`` buffers.
        ``truncation`` psi: ``w <- c + psi (w - c)`` with ``c = truncation_latent``, for psi != 1.
        ``return_features``: resolutions whose last conv output (before ToRGB) is returned, e.g. ``(64,)``
        -> ``features[64]`` ``[N, channels[64], 64, 64]``. Raises ValueError/TypeError naming the argument.
        """
        if not isinstance(truncation, (int, float)) or isinstance(truncation, bool) or not math.isfinite(truncation):
            raise ValueError(f"truncation must be a finite number, got {truncation!r}")
        if isinstance(return_features, int):
            return_features = (return_features,)
        wanted = set(return_features)
        bad = sorted(r for r in wanted if r not in self.resolutions)
        if bad:
            raise ValueError(f"return_features must be resolutions in {self.resolutions}, got {bad}")
        styles = self._style_list(styles, input_is_latent)
        batch, nl = styles[0].shape[0], self.n_latent

        if len(styles) == 1:
            s = styles[0]
            latent = s if s.ndim == 3 else s.unsqueeze(1).expand(batch, nl, self.style_dim)
        else:
            if inject_index is None:
                src = noise_generator.device if noise_generator is not None else "cpu"
                inject_index = int(torch.randint(1, nl, (), generator=noise_generator, device=src))
            if not isinstance(inject_index, int) or not 0 <= inject_index <= nl:
                raise ValueError(f"inject_index must be an int in 0..{nl}, got {inject_index!r}")
            latent = torch.cat([styles[0].unsqueeze(1).expand(batch, inject_index, -1),
                                styles[1].unsqueeze(1).expand(batch, nl - inject_index, -1)], dim=1)
        if truncation != 1:
            latent = self._truncate(latent, float(truncation), truncation_latent)

        noise = self._noise_list(noise, randomize_noise, batch, noise_generator, latent)
        features: dict[int, Tensor] = {}
        out = self.conv1(self.input(batch).to(latent.dtype), latent[:, 0], noise[0], noise_generator)
        if 4 in wanted:
            features[4] = out
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * k](out, latent[:, i], noise[2 * k + 1], noise_generator)
            out = self.convs[2 * k + 1](out, latent[:, i + 1], noise[2 * k + 2], noise_generator)
            res = 2 ** (k + 3)
            if res in wanted:  # SMIS's matching features at res 64 (rosinality/pSp's capture at i == 7)
                features[res] = out
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return StyleGAN2Output(skip, latent if return_latents else None, features)


# ---------------------------------------------------------------------------------------------------
# rosinality checkpoints


def _read_checkpoint(path: str | os.PathLike) -> Mapping:
    # rosinality's train.py pickles its argparse Namespace under "args": allow exactly that beside tensors
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{os.fspath(path)} holds objects beyond tensors and plain containers ({e}); if you "
                         "trust the file, load it with torch.load(..., weights_only=False) and pass the dict") from None


def _extract_state(obj: Any, key: str) -> tuple[dict[str, Tensor], Tensor | None]:
    if not isinstance(obj, Mapping):
        raise TypeError(f"path_or_state must be a path or a dict, got {type(obj).__name__}")
    latent_avg = obj.get("latent_avg")
    if isinstance(obj.get(key), Mapping):
        return dict(obj[key]), latent_avg
    if "style.1.weight" in obj:  # a raw generator state dict
        return dict(obj), None
    if isinstance(obj.get("state_dict"), Mapping) and any(k.startswith("decoder.") for k in obj["state_dict"]):
        # a pSp checkpoint: the generator sits under "decoder." beside the encoder
        sd = obj["state_dict"]
        return {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}, latent_avg
    raise ValueError(f"checkpoint has no {key!r} entry and is not a generator state dict (no 'style.1.weight'); "
                     f"its top-level keys: {sorted(map(str, obj))[:8]}")


def infer_config(state: Mapping[str, Tensor], *, size: int | None = None, channel_multiplier: int | None = None,
                 lr_mlp: float = 0.01) -> StyleGAN2Config:
    """The :class:`StyleGAN2Config` a rosinality generator state dict was written from (``lr_mlp`` is not stored)."""
    if "style.1.weight" not in state:
        raise ValueError("state dict lacks 'style.1.weight' (mapping layer 1): not a rosinality generator")
    style_dim = state["style.1.weight"].shape[1]
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in state:
        n_mlp += 1
    if size is None:
        n_rgbs = sum(1 for k in state if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
        size = 2 ** (n_rgbs + 2)
    if "input.input" not in state:
        raise ValueError("state dict lacks 'input.input' (the constant input): not a rosinality generator")
    width4 = state["input.input"].shape[1]
    channel_max = None if width4 == 512 else width4  # only networks narrowed with channel_max start below 512
    if channel_multiplier is None:
        channel_multiplier = _infer_channel_multiplier(state, size, channel_max)
    return StyleGAN2Config(size=size, style_dim=style_dim, n_mlp=n_mlp, channel_multiplier=channel_multiplier,
                           lr_mlp=lr_mlp, channel_max=channel_max)


def _infer_channel_multiplier(state: Mapping[str, Tensor], size: int, channel_max: int | None) -> int:
    """From the widths of the blocks at 64 px and up: ``(256, 128, 64, 32, 16) * channel_multiplier``."""
    factors = {}  # res -> (width, table factor); block at 2^j has its first conv at convs.{2 (j - 3)}
    for j in range(6, size.bit_length()):
        w = state.get(f"convs.{2 * (j - 3)}.conv.weight")
        if w is not None:
            factors[2**j] = (w.shape[1], 2**14 // 2**j)
    if not factors:
        return 2  # below 64 px every layer has 512 channels: the multiplier changes nothing
    for res, (width, factor) in factors.items():
        if channel_max is None or width < channel_max:  # an uncapped width gives the multiplier exactly
            if width % factor:
                raise ValueError(f"the {res} px block has {width} channels, not a multiple of {factor}: "
                                 "pass channel_multiplier")
            return width // factor
    # every width capped at channel_max: the smallest multiplier that reaches the cap at the top resolution
    return max(1, -(-channel_max // min(f for _, f in factors.values())))


def _check_keys(gen: StyleGAN2Generator, state: Mapping[str, Tensor]) -> None:
    expected = gen.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
    if wrong:
        problems.append(f"{len(wrong)} keys with other shapes, e.g. {wrong[:3]}")
    if problems:
        c = gen.cfg
        raise ValueError(f"checkpoint does not fit a StyleGAN2 generator of size {c.size}, style_dim {c.style_dim}, "
                         f"n_mlp {c.n_mlp}, channel_multiplier {c.channel_multiplier}: " + "; ".join(problems))


def load_rosinality(path_or_state: str | os.PathLike | Mapping, *, size: int | None = None,
                    channel_multiplier: int | None = None, key: str = "g_ema",
                    lr_mlp: float = 0.01) -> tuple[StyleGAN2Generator, Tensor | None]:
    """A :class:`StyleGAN2Generator` from a rosinality ``.pt`` (or the dict already loaded), and its ``latent_avg``.

    Accepts ``{"g_ema": state, ...}`` (``key`` picks another entry, e.g. ``"g"``), a raw generator state dict,
    or a pSp checkpoint (``state_dict`` with ``decoder.*`` keys). ``size`` / ``channel_multiplier`` override
    what is inferred from the keys; ``style_dim`` and ``n_mlp`` are always inferred. ``latent_avg`` is returned
    as stored (None when absent). The generator is on the CPU, in eval mode. Raises ValueError naming the first
    missing / unexpected / mis-shaped keys.
    """
    obj = _read_checkpoint(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) else path_or_state
    state, latent_avg = _extract_state(obj, key)
    gen = StyleGAN2Generator(infer_config(state, size=size, channel_multiplier=channel_multiplier, lr_mlp=lr_mlp))
    _check_keys(gen, state)
    gen.load_state_dict(state, strict=True)
    return gen.eval(), latent_avg


def save_rosinality(generator: StyleGAN2Generator, path: str | os.PathLike, latent_avg: Tensor | None = None) -> None:
    """Write ``{"g_ema": state_dict[, "latent_avg": ...]}`` (CPU tensors), the layout rosinality tools read.

    Written to a temporary file first, then renamed, so a crash never leaves a truncated checkpoint.
    """
    if not isinstance(generator, StyleGAN2Generator):
        raise TypeError(f"generator must be a StyleGAN2Generator, got {type(generator).__name__}")
    ckpt: dict[str, Any] = {"g_ema": {k: v.detach().cpu() for k, v in generator.state_dict().items()}}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg.detach().cpu()
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


__all__ = [
    "StyleGAN2Config", "StyleGAN2Generator", "StyleGAN2Output", "load_rosinality", "save_rosinality",
    "infer_config", "upfirdn2d", "fused_leaky_relu", "make_blur_kernel", "ModulatedConv2d", "StyledConv", "ToRGB",
    "NoiseInjection", "EqualLinear", "Upsample", "Blur", "PixelNorm", "ConstantInput", "FusedLeakyReLU",
]
