"""SinGAN (Shaham et al., ICCV 2019): a pyramid of small patch GANs learnt from one image, coarse to fine.

The networks of the official code (ALGORITHMS.md §3):

- one :class:`ScaleGenerator` and one :class:`ScaleDiscriminator` per scale: five ConvBlocks worth of 3x3 valid
  convolutions (head, three body blocks, tail; conv + BatchNorm + LeakyReLU(0.2) except the tails), N channels with
  N = min(nfc * 2^floor(n/4), max_nfc) (32..128 by default); G's tail is conv -> 3 + tanh, D's conv -> 1 (a WGAN patch
  critic, receptive field 11x11). Convs start as N(0, 0.02), BatchNorm weights as N(1, 0.02) with bias 0.
- the step of scale n (:meth:`SinGAN.scale_step`): ``up, g_in = pyramid_inject(prev, size_n, noise, amp_n,
  scale=1/r)`` (the previous scale's image resized by 1/r with SinGAN's MATLAB-style cubic and cropped top-left,
  plus the scaled noise, zero-padded by 5), then ``pyramid_blend(up, tanh(G_n(g_in)))``. No clamp after the add,
  as the official code.

:class:`SinGAN` holds every scale (generators, critics), the noise amplitudes, the fixed reconstruction noise of
scale 0 (1 channel; every other scale reconstructs from zero noise), the training image at the finest scale (the
background of harmonisation and editing) and, in its config, the pyramid's sizes and factor r: one checkpoint file
is a whole model. ``trained`` counts the finished scales, so a checkpoint of a run in progress generates at its
finest finished scale.

The applications of the paper are in :mod:`fsgan_fast.apps.singan`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.models import registry

KERNEL = 3
BLOCKS = 5  # head + 3 body + tail
PAD = BLOCKS * (KERNEL - 1) // 2  # 5: what the valid convs take off each side
LRELU = 0.2
WIDTH_EVERY = 4  # scales between doublings of the width


class SinGANInputError(registry.InputError):
    """A generation input does not fit the model (scale out of range, image too small, mask mismatch)."""


@dataclasses.dataclass
class SinGANConfig:
    """The pyramid and the networks; the defaults are the official ones. ``heights``, ``widths`` and ``r`` are set
    from the training image (:func:`fsgan_fast.ops.build_pyramid`), coarsest scale first."""

    scale_factor: float = option(0.75, "pyramid factor between scales before adjustment (the final r is fitted to "
                                 "the image so the coarsest scale's short side is --min-size)",
                                 low=0.1, high=0.95)
    min_size: int = option(25, "short side of the coarsest scale in pixels (18 for super-resolution, 20 for "
                           "animation in the paper)", low=11)
    max_size: int = option(250, "long side of the finest scale: the image is shrunk to it first", low=11)
    nfc: int = option(32, "channels at the coarsest scale; doubled every 4 scales", low=1)
    max_nfc: int = option(128, "cap of the channel doubling", low=1)
    edge: Literal["official", "symmetric"] = option(
        "official", "borders of the MATLAB-style resize between scales: official (drops the taps past the top/left "
        "edges, mirrors at bottom/right, as the reference code) or symmetric (mirrors at all four)")
    animation: bool = option(False, "draw the noise over the padded border too (the official animation_train mode, "
                             "for smoother animations)")
    heights: tuple[int, ...] = option((), "image heights per scale, coarsest first (set from the data)", cli=False)
    widths: tuple[int, ...] = option((), "image widths per scale, coarsest first (set from the data)", cli=False)
    r: float = option(0.0, "the fitted factor between scales (set from the data)", low=0.0, cli=False)

    def __post_init__(self) -> None:
        configs.validate(self)
        if len(self.heights) != len(self.widths):
            raise configs.ConfigError(f"heights and widths must have one entry per scale, got {len(self.heights)} "
                                      f"and {len(self.widths)}")
        if self.heights and not 0 < self.r < 1 and len(self.heights) > 1:
            raise configs.ConfigError(f"r must be in (0, 1) for a pyramid of {len(self.heights)} scales, got {self.r}")
        if self.max_nfc < self.nfc:
            raise configs.ConfigError(f"max_nfc ({self.max_nfc}) must be >= nfc ({self.nfc})")
        if self.max_size < self.min_size:
            raise configs.ConfigError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return list(zip(self.heights, self.widths))

    def width(self, n: int) -> int:
        """Channels of scale n: nfc * 2^floor(n/4), capped at max_nfc."""
        return min(self.nfc * 2 ** (n // WIDTH_EVERY), self.max_nfc)

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SinGANConfig:
        return configs.from_dict(cls, d)


# ---------------------------------------------------------------------------------------------------
# Networks


def _init_(module: nn.Module) -> None:
    """The official init: convs N(0, 0.02) (bias left at PyTorch's default), BatchNorm N(1, 0.02) and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ConvBlock(nn.Sequential):
    """conv3x3 (no padding: every block trims one pixel per side) -> BatchNorm -> LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, KERNEL, 1, 0), nn.BatchNorm2d(cout), nn.LeakyReLU(LRELU))


class _ScaleNet(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.width = width
        self.head = ConvBlock(3, width)
        self.body = nn.Sequential(*(ConvBlock(width, width) for _ in range(BLOCKS - 2)))
        self.tail = nn.Conv2d(width, out_channels, KERNEL, 1, 0)
        _init_(self)

    def features(self, x: Tensor) -> Tensor:
        return self.tail(self.body(self.head(x)))


class ScaleGenerator(_ScaleNet):
    """``g_in [B, 3, H+10, W+10] -> tanh residual [B, 3, H, W]``: the image part of one scale's step."""

    def __init__(self, width: int):
        super().__init__(width, 3)

    def forward(self, g_in: Tensor) -> Tensor:
        return torch.tanh(self.features(g_in))


class ScaleDiscriminator(_ScaleNet):
    """``image [B, 3, H, W] -> patch scores [B, 1, H-10, W-10]`` (a WGAN critic: no activation)."""

    def __init__(self, width: int):
        super().__init__(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


# ---------------------------------------------------------------------------------------------------
# The pyramid


def _ops():
    from fsgan_fast import ops

    return ops


def _check_scale_factor(name: str, v: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise SinGANInputError(f"{name} must be a positive number, got {v!r}")
    return float(v)


class SinGAN(nn.Module):
    """Every scale of a SinGAN, with what generation needs (see the module docstring).

    Randomness: every draw takes an optional ``torch.Generator``; ``noise=`` replaces the draws with given maps
    (one per scale, see :meth:`noise_shape`), which is what the exported graph takes as inputs.
    """

    def __init__(self, cfg: SinGANConfig):
        super().__init__()
        self.cfg = cfg
        S = len(cfg.heights)
        self.gens = nn.ModuleList(ScaleGenerator(cfg.width(n)) for n in range(S))
        self.dis = nn.ModuleList(ScaleDiscriminator(cfg.width(n)) for n in range(S))
        self.register_buffer("noise_amp", torch.ones(S))
        h0, w0 = self._noise_hw(0, cfg.sizes[0]) if S else (1, 1)
        self.register_buffer("z_opt0", torch.zeros(1, 1, h0, w0))
        self.register_buffer("real", torch.zeros(1, 3, *(cfg.sizes[-1] if S else (1, 1))))
        self.register_buffer("trained", torch.zeros((), dtype=torch.long))

    # -- shapes

    @property
    def num_scales(self) -> int:
        return len(self.gens)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return self.cfg.sizes

    @property
    def finished(self) -> int:
        """Scales trained to the end (a run in progress generates up to the last of them)."""
        return int(self.trained)

    def _noise_hw(self, n: int, size: tuple[int, int]) -> tuple[int, int]:
        return (size[0] + 2 * PAD, size[1] + 2 * PAD) if self.cfg.animation else size

    def noise_shape(self, n: int, batch: int = 1, size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """The noise of scale ``n`` for images of ``size`` (default: the scale's own): 1 channel at scale 0 (shared by
        the three colours, as the official code), 3 elsewhere; over the padded border in animation mode."""
        size = self.sizes[n] if size is None else size
        return (batch, 1 if n == 0 else 3, *self._noise_hw(n, size))

    def draw_noise(self, n: int, batch: int = 1, size: tuple[int, int] | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
        shape = self.noise_shape(n, batch, size)
        where = generator.device if generator is not None else self.noise_amp.device
        return torch.randn(shape, generator=generator, device=where).to(self.noise_amp.device)

    def z_opt(self, n: int, batch: int = 1) -> Tensor:
        """The fixed reconstruction noise of scale ``n``: the stored map at scale 0, zeros elsewhere."""
        if n == 0:
            return self.z_opt0.expand(batch, -1, -1, -1)
        return self.noise_amp.new_zeros(self.noise_shape(n, batch))

    def _check_stop(self, stop: int | None) -> int:
        limit = self.finished or self.num_scales
        stop = limit if stop is None else stop
        if not 1 <= stop <= self.num_scales:
            raise SinGANInputError(f"the model has {self.num_scales} scales: cannot stop after {stop}")
        return stop

    # -- one scale

    def _step_scale(self, prev_hw: Sequence[int], size: Sequence[int]) -> float | None:
        """1/r when resizing by it covers ``size`` (the official step, then a top-left crop); else None: resize
        straight to ``size`` (odd sizes of arbitrary-aspect sampling can come out a pixel short)."""
        from fsgan_fast.ops.imresize import output_length

        s = 1.0 / self.cfg.r
        return s if all(output_length(d, s) >= want for d, want in zip(prev_hw, size)) else None

    def upsample(self, image: Tensor, n: int, size: tuple[int, int] | None = None) -> Tensor:
        """``image`` (an output of scale n-1) brought to scale ``n``'s size as :meth:`scale_step` does."""
        size = tuple(self.sizes[n] if size is None else size)
        s = self._step_scale(image.shape[-2:], size)
        if s is None:
            return _ops().imresize(image, size=size, edge=self.cfg.edge)
        return _ops().imresize(image, s, edge=self.cfg.edge)[..., :size[0], :size[1]]

    def scale_step(self, n: int, prev: Tensor | None, noise: Tensor, amp: float | Tensor | None = None, *,
                   size: tuple[int, int] | None = None, upsample: bool = True, mask: Tensor | None = None) -> Tensor:
        """Scale ``n``'s image from the previous scale's ``prev`` (None at scale 0: zeros) and its ``noise``:
        ``pyramid_inject`` (resize, add the scaled noise, zero-pad), G_n's residual, ``pyramid_blend``.

        ``upsample=False``: ``prev`` is already at this scale (injection). ``amp`` defaults to the learnt one;
        ``mask`` limits the residual to a region (``up + mask * residual``).
        """
        size = tuple(size or self.sizes[n])
        amp = self.noise_amp[n] if amp is None else amp
        scale = self._step_scale(prev.shape[-2:], size) if prev is not None and upsample else None
        ops = _ops()
        up, g_in = ops.pyramid_inject(prev, size, noise, amp, pad=PAD, scale=scale, edge=self.cfg.edge)
        return ops.pyramid_blend(up, self.gens[n](g_in), mask)

    # -- chains of scales

    def run_scales(self, start: int, stop: int, prev: Tensor | None, noises: Sequence[Tensor], *,
                   sizes: Sequence[tuple[int, int]] | None = None, upsample_first: bool = True) -> Tensor:
        """Scales ``start .. stop-1`` from ``prev`` (an output of scale start-1, or None at 0) with ``noises[i]`` at
        scale ``start + i``; returns the image of scale ``stop - 1``."""
        for i, n in enumerate(range(start, stop)):
            size = sizes[i] if sizes is not None else None
            prev = self.scale_step(n, prev, noises[i], size=size, upsample=upsample_first or i > 0)
        return prev

    @torch.no_grad()
    def reconstruct(self, stop: int | None = None) -> Tensor:
        """The reconstruction of the training image at scale ``stop - 1`` (default: the finest trained) from the fixed
        noise: ``[1, 3, h, w]``."""
        stop = self._check_stop(stop)
        return self.run_scales(0, stop, None, [self.z_opt(n) for n in range(stop)])

    def sample_sizes(self, stop: int, scale_v: float = 1.0, scale_h: float = 1.0) -> list[tuple[int, int]]:
        """Image sizes per scale for outputs ``scale_v`` x ``scale_h`` times the training image's."""
        out = []
        for n, (h, w) in enumerate(self.sizes[:stop]):
            hh, ww = round(scale_v * h), round(scale_h * w)
            if hh < 1 or ww < 1:
                raise SinGANInputError(f"scale_v={scale_v}, scale_h={scale_h} make scale {n} empty ({hh}x{ww})")
            out.append((hh, ww))
        return out

    @torch.no_grad()
    def sample(self, n: int, *, scale_v: float = 1.0, scale_h: float = 1.0, gen_start_scale: int = 0,
               noise: Sequence[Tensor] | None = None, generator: torch.Generator | None = None,
               stop: int | None = None) -> Tensor:
        """``n`` random images ``[n, 3, H, W]`` of the finest trained scale (or scale ``stop - 1``).

        ``scale_v`` / ``scale_h`` stretch every scale's noise (arbitrary size and aspect). Scales below
        ``gen_start_scale`` use the reconstruction noise: the layout of the training image is kept and only finer
        detail varies (needs ``scale_v = scale_h = 1``). ``noise``: one map per scale (:meth:`noise_shape`).
        """
        stop = self._check_stop(stop)
        scale_v = _check_scale_factor("scale_v", scale_v)
        scale_h = _check_scale_factor("scale_h", scale_h)
        if not 0 <= gen_start_scale < stop:
            raise SinGANInputError(f"gen_start_scale must be in 0..{stop - 1}, got {gen_start_scale}")
        if gen_start_scale and (scale_v, scale_h) != (1.0, 1.0):
            raise SinGANInputError("gen_start_scale > 0 keeps the training image's layout, which has its size: use "
                                   "scale_v = scale_h = 1 with it")
        sizes = self.sample_sizes(stop, scale_v, scale_h)
        if noise is not None:
            if len(noise) != stop:
                raise SinGANInputError(f"noise must hold one map per scale ({stop}), got {len(noise)}")
            for k, z in enumerate(noise):
                if tuple(z.shape) != self.noise_shape(k, n, sizes[k]):
                    raise SinGANInputError(f"noise[{k}] must have shape {list(self.noise_shape(k, n, sizes[k]))}, "
                                           f"got {list(z.shape)}")
            noises = list(noise)
        else:
            noises = [self.z_opt(k, n) if k < gen_start_scale else self.draw_noise(k, n, sizes[k], generator)
                      for k in range(stop)]
        return self.run_scales(0, stop, None, noises, sizes=sizes)

    def injection_input(self, image: Tensor, start_scale: int) -> Tensor:
        """``image`` (training-image sized) brought to scale ``start_scale`` as the official apps do: downscaled by
        r^(N-n+1), cropped to scale n-1, upsampled by 1/r and cropped to scale n (scale 0: downscaled by r^N)."""
        N = self.num_scales - 1
        r = self.cfg.r
        ops = _ops()
        if start_scale == 0:
            x = ops.imresize(image, r ** N, edge=self.cfg.edge) if N else image
            h, w = self.sizes[0]
            return x[..., :h, :w]
        x = ops.imresize(image, r ** (N - start_scale + 1), edge=self.cfg.edge)
        h, w = self.sizes[start_scale - 1]
        return self.upsample(x[..., :h, :w], start_scale)

    @torch.no_grad()
    def inject(self, image: Tensor, start_scale: int, n: int = 1, *, generator: torch.Generator | None = None,
               noise: Sequence[Tensor] | None = None) -> Tensor:
        """Generation that starts at scale ``start_scale`` from ``image`` ``[1|B, 3, H, W]`` at the finest scale's
        size (paint-to-image, harmonisation, editing): ``[n, 3, H, W]``. Scales below ``start_scale`` are skipped;
        coarse scales keep the image's layout, fine ones its colours and little else."""
        stop = self._check_stop(None)
        if stop != self.num_scales:
            raise SinGANInputError(f"injection needs a fully trained model ({self.finished} of {self.num_scales} "
                                   "scales are)")
        if not 0 <= start_scale < stop:
            raise SinGANInputError(f"the injection scale must be in 0..{stop - 1}, got {start_scale}")
        image = self.check_image("image", image)
        x = self.injection_input(image, start_scale)
        x = x.expand(n, -1, -1, -1) if x.shape[0] == 1 else x
        if noise is None:
            noise = [self.draw_noise(k, x.shape[0], generator=generator) for k in range(start_scale, stop)]
        return self.run_scales(start_scale, stop, x, noise, upsample_first=False)

    def check_image(self, name: str, image: Tensor) -> Tensor:
        """An image ``[B, 3, H, W]`` at the finest scale's size, on the model's device."""
        if not isinstance(image, Tensor) or not image.is_floating_point():
            raise SinGANInputError(f"{name} must be a float tensor in [-1, 1]")
        if image.dim() != 4 or image.shape[1] != 3:
            raise SinGANInputError(f"{name} must be RGB images [B, 3, H, W], got shape {list(image.shape)}")
        if tuple(image.shape[-2:]) != self.sizes[-1]:
            raise SinGANInputError(f"{name} must be {self.sizes[-1][0]}x{self.sizes[-1][1]} (the training image's "
                                   f"size), got {image.shape[-2]}x{image.shape[-1]}")
        return image.to(self.noise_amp.device, torch.float32)

    @torch.no_grad()
    def initialise_from_previous(self, n: int) -> bool:
        """Copy scale n-1's trained G and D into scale n when their widths match (the official init); True if done."""
        if n < 1 or self.cfg.width(n) != self.cfg.width(n - 1):
            return False
        self.gens[n].load_state_dict(self.gens[n - 1].state_dict())
        self.dis[n].load_state_dict(self.dis[n - 1].state_dict())
        return True

    def generators_only(self) -> SinGAN:
        """A copy without the critics (for export and deployment)."""
        clone = copy.deepcopy(self)
        clone.dis = nn.ModuleList()
        return clone


# ---------------------------------------------------------------------------------------------------
# Export: the whole pyramid as one graph, the noise of every scale as inputs


class SinGANInference(nn.Module):
    """``(noise0, ..., noiseN) -> images [B, 3, H, W]``: random generation through every trained scale."""

    def __init__(self, model: SinGAN, stop: int, sizes: Sequence[tuple[int, int]]):
        super().__init__()
        self.model = model
        self.stop = stop
        self.sizes = [tuple(s) for s in sizes]

    def forward(self, *noises: Tensor) -> Tensor:
        return self.model.run_scales(0, self.stop, None, list(noises), sizes=self.sizes)


@dataclasses.dataclass
class SinGANExportOptions:
    """The options of ``fsgan-fast export singan``."""

    scale_v: float = option(1.0, "output height relative to the training image (every scale's noise is sized by it)",
                            low=0.0, low_open=True)
    scale_h: float = option(1.0, "output width relative to the training image", low=0.0, low_open=True)

    def __post_init__(self) -> None:
        configs.validate(self)


def singan_graph(model: nn.Module, *, scale_v: float = 1.0, scale_h: float = 1.0):
    """The :class:`~fsgan_fast.export.graphs.GeneratorGraph` of a SinGAN: one noise input per scale."""
    from fsgan_fast.export.graphs import BATCH_INPUTS_KEY, GeneratorGraph

    if not isinstance(model, SinGAN):
        raise TypeError(f"expected a SinGAN, got {type(model).__name__}")
    stop = model._check_stop(None)
    gens = model.generators_only().eval().requires_grad_(False)
    sizes = gens.sample_sizes(stop, scale_v, scale_h)
    shapes = [gens.noise_shape(k, 1, sizes[k]) for k in range(stop)]
    names = tuple(f"noise{k}" for k in range(stop))

    def sample(B: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, ...]:
        where = generator.device if generator is not None else device
        return tuple(torch.randn((B, *s[1:]), generator=generator, device=where).to(device) for s in shapes)

    H, W = sizes[-1]
    meta = {
        "fsgan_fast.model": "singan",
        "fsgan_fast.config": json.dumps(model.cfg.to_dict()),
        "fsgan_fast.inputs": "; ".join(f"{nm}: [B, {s[1]}, {s[2]}, {s[3]}] N(0, 1)" for nm, s in zip(names, shapes)),
        "fsgan_fast.outputs": f"images: [B, 3, {H}, {W}] (about [-1, 1])",
        BATCH_INPUTS_KEY: json.dumps(list(names)),
    }
    return GeneratorGraph(model="singan", module=SinGANInference(gens, stop, sizes).eval(), input_names=names,
                          output_names=("images",), batch_inputs=names, sample=sample, metadata=meta)


# ---------------------------------------------------------------------------------------------------
# fsgan-fast generate singan


@dataclasses.dataclass
class SinGANGenerateOptions:
    """The options of ``fsgan-fast generate singan`` (random samples; the other applications: ``fsgan-fast app``)."""

    scale_v: float = option(1.0, "output height relative to the training image (arbitrary size and aspect)",
                            low=0.0, low_open=True)
    scale_h: float = option(1.0, "output width relative to the training image", low=0.0, low_open=True)
    gen_start_scale: int = option(0, "scales below this one reuse the reconstruction noise: the training image's "
                                  "layout stays, finer details vary", low=0)

    def __post_init__(self) -> None:
        configs.validate(self)


def generate_command(model: SinGAN, opts: SinGANGenerateOptions, *, n: int, out, generator: torch.Generator,
                     batch_size: int) -> list:
    """Write ``out/<i>.png`` per sample and ``out/grid.png``."""
    from fsgan_fast.utils.images import save_grid, save_image

    if model.finished == 0:
        raise SinGANInputError("the checkpoint has no finished scale yet")
    chunks = []
    for start in range(0, n, batch_size):
        chunks.append(model.sample(min(batch_size, n - start), scale_v=opts.scale_v, scale_h=opts.scale_h,
                                   gen_start_scale=opts.gen_start_scale, generator=generator).clamp(-1, 1))
    width = len(str(max(n - 1, 0)))
    written = []
    if chunks:
        fakes = torch.cat(chunks)
        written = [save_image(img, out / f"{i:0{width}d}.png") for i, img in enumerate(fakes)]
        written.append(save_grid(fakes, out / "grid.png", min(n, 4)))
    return written


def _auto_preset(data: str | None) -> str:
    return "paper" if torch.cuda.is_available() else "demo"


registry.register(registry.ModelSpec(
    name="singan",
    summary="SinGAN: a pyramid of patch GANs learnt from one image; samples, harmonisation, editing, "
            "paint-to-image, super-resolution, animation (ICCV 2019)",
    description=(
        "Train SinGAN on one image, coarse to fine, one scale at a time (a stage per scale; lower scales frozen). "
        "Writes RUN/checkpoint.pt (all scales, noise amplitudes, the reconstruction noise; checkpointed at every "
        "scale's end and every --ckpt-every iterations, resumable inside a scale), RUN/samples/scale_NN.png (the "
        "real, its reconstruction and random samples at each finished scale), RUN/samples/step_*.png, "
        "RUN/metrics.jsonl and RUN/config.json. --data: one image file, or 'builtin' (scikit-image's 'rocket' photo; "
        "'builtin:NAME' picks another of its bundled photos). --iters counts iterations per scale (each: 3 D steps "
        "and 3 G steps). --fast (CUDA) captures each scale's iteration in a CUDA graph. Applications: "
        "'fsgan-fast generate singan' (random samples, any size) and "
        "'fsgan-fast app singan APP' (inject, harmonize, edit, paint, sr, animate)."
    ),
    model_config=SinGANConfig,
    train_config="fsgan_fast.train.singan:SinGANTrainConfig",
    presets="fsgan_fast.train.singan:PRESETS",
    auto_preset=_auto_preset,
    preset_help=("'demo' = images shrunk to 64 px, 250 iterations per scale (about 5 minutes on a 2-core CPU); "
                 "'paper' = the paper's schedule (250 px, 25 px coarsest, factor 0.75, 2000 iterations per scale); "
                 "auto = paper on a GPU, else demo"),
    build=SinGAN,
    train="fsgan_fast.train.singan:train_run",
    graph=singan_graph,
    export_options=SinGANExportOptions,
    model_types=(SinGAN,),
    generate=generate_command,
    generate_options=SinGANGenerateOptions,
    apps="fsgan_fast.apps.singan:APPS",
    evaluate="fsgan_fast.metrics.protocols:evaluate_singan",
    eval_options="fsgan_fast.metrics.protocols:SinGANEvalOptions",
))


__all__ = ["SinGANConfig", "SinGAN", "ScaleGenerator", "ScaleDiscriminator", "ConvBlock", "SinGANInference",
           "SinGANExportOptions", "SinGANGenerateOptions", "SinGANInputError", "singan_graph", "generate_command",
           "PAD"]
