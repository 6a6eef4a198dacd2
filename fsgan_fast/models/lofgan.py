"""LoFGAN (Gu et al., ICCV 2021): k-shot image generation by fusing local representations.

The networks of the official code (ALGORITHMS.md §1), restated:

- :class:`LoFGANGenerator`: an encoder of reflect-padded conv + BatchNorm + LeakyReLU(0.2) blocks
  (5x5 stride 1, then 3x3 stride 2 per further width in ``gen_channels``), the Local Fusion Module
  (:class:`fsgan_fast.nn.LocalFusion`) over the K encoded shots, and a mirrored decoder (nearest x2 +
  3x3 block per stage, then a 5x5 conv to RGB + tanh, no norm).
- :class:`LoFGANDiscriminator`: FUNIT-style. Spectral-normed 5x5 stem, stages of pre-activation
  ResBlocks + reflect pad 1 + 3x3/2 average pool, a last ResBlock, global average pooling, and two
  linear heads without spectral norm (adversarial logit and class logits).
- :class:`LoFGAN`: the pair, an optional EMA copy of G, and generation / similarity-map utilities.

Differences from the official code, on purpose: the base shot is drawn per batch row
(``shared_base=True`` restores one per batch); the unused ``LocalFusionModule.W`` is left out; batch
size 1 works; the heads are ``nn.Linear`` on the pooled features (identical to its 1x1 convs).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import numbers
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fsgan_fast import configs
from fsgan_fast.models import registry
from fsgan_fast.configs import option
from fsgan_fast.nn.ema import WithEMAGenerator
from fsgan_fast.nn.blocks import ActFirstResBlock, Conv2dBlock, kaiming_init_
from fsgan_fast.nn.local_fusion import LocalFusion, LocalFusionOutput
from fsgan_fast.ops import lfm_fuse, lfm_similarity
from fsgan_fast.utils.figures import similarity_figure


@dataclasses.dataclass
class LoFGANConfig:
    """Hyper-parameters of the LoFGAN networks; the defaults are the official 128 px model.

    ``size`` must be a multiple of ``2 ** (len(gen_channels) - 1)``, the encoder's downsampling (16 by
    default), which gives the feature grid ``feature_size``. ``shots`` is the K of training episodes (the
    generator itself accepts any K >= 2). ``n_classes`` (D's class head) is set from the data.
    """

    size: int = option(128, "image side in pixels (a multiple of 2^(len(gen-channels)-1); 64, 128, 256 tested)",
                       low=16)
    shots: int = option(3, "K, images per episode (>= 2: a base and references)", low=2)
    n_classes: int = option(85, "seen classes (D's class head); set from the data", low=1, cli=False)
    gen_channels: tuple[int, ...] = option((32, 64, 128, 128, 128), "G encoder widths (the decoder mirrors them)",
                                           low=1)
    dis_channels: int = option(64, "D stem width (doubled per stage)", low=1)
    dis_max_channels: int = option(1024, "D width cap", low=1)
    rate: float = option(0.5, "eta, the fraction of base feature positions fused", low=0.0, low_open=True, high=1.0)
    shared_base: bool = option(False, "one base shot per batch, as the official code (default: one per row)")

    def __post_init__(self) -> None:
        configs.validate(self)
        if len(self.gen_channels) < 2 or min(self.gen_channels) < 1:
            raise ValueError(f"gen_channels needs >= 2 positive widths, got {self.gen_channels}")
        if self.size < 16 or self.size % self.downsample:
            raise ValueError(
                f"size must be >= 16 and a multiple of the encoder's downsampling {self.downsample} "
                f"(2 ** (len(gen_channels) - 1)), got {self.size}"
            )
        if self.shots < 2:
            raise ValueError(f"shots (K) must be >= 2 (a base and at least one reference), got {self.shots}")
        if self.n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {self.n_classes}")
        if self.dis_channels < 1 or self.dis_max_channels < self.dis_channels:
            raise ValueError(
                f"need 1 <= dis_channels <= dis_max_channels, got {self.dis_channels} and {self.dis_max_channels}"
            )
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"rate (eta) must lie in (0, 1], got {self.rate}")

    @property
    def downsample(self) -> int:
        """Image side / feature side: 2 per stride-2 encoder block."""
        return 2 ** (len(self.gen_channels) - 1)

    @property
    def feature_size(self) -> int:
        """Side of the fused feature grid (8 at 128 px by default)."""
        return self.size // self.downsample

    @property
    def dis_stages(self) -> int:
        """Number of D downsampling stages: halve the map until it is 8x8 or smaller (64: 3, 128: 4, 256: 5)."""
        return max(0, math.ceil(math.log2(self.size / 8)))

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoFGANConfig:
        return configs.from_dict(cls, d)


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_images(name: str, x: object, shape: str, dim: int, channels: int, side: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (images in [-1, 1]), got dtype {x.dtype}")
    if x.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D {shape}, got {x.dim()}-D shape {list(x.shape)}")
    if x.shape[-3] != channels or x.shape[-2] != side or x.shape[-1] != side:
        raise ValueError(
            f"{name} must be {shape} with {channels} channels and side {side}, got shape {list(x.shape)}"
        )
    return x


def _check_shots(x: Tensor, where: str) -> None:
    K = x.shape[-4]
    if K < 2:
        raise ValueError(f"{where} needs K >= 2 shots (one base and at least one reference), got K={K}")


# ---------------------------------------------------------------------------------------------------
# Networks


class LoFGANGenerator(nn.Module):
    """Encoder -> Local Fusion Module -> decoder. See the module docstring."""

    def __init__(self, cfg: LoFGANConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.gen_channels
        enc = [Conv2dBlock(3, ch[0], 5)]
        enc += [Conv2dBlock(ch[i - 1], ch[i], 3, stride=2) for i in range(1, len(ch))]
        self.encoder = nn.Sequential(*enc)
        self.fusion = LocalFusion(cfg.rate, shared_base=cfg.shared_base)
        dec: list[nn.Module] = []
        for i in range(len(ch) - 1, 0, -1):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), Conv2dBlock(ch[i], ch[i - 1], 3)]
        dec.append(Conv2dBlock(ch[0], 3, 5, norm="none", act="tanh"))
        self.decoder = nn.Sequential(*dec)

    def encode(self, xs: Tensor) -> Tensor:
        """``[B, K, 3, S, S] -> [B, K, C, S/16, S/16]`` (C = ``gen_channels[-1]``)."""
        _check_images("xs", xs, "[B, K, 3, S, S]", 5, 3, self.cfg.size)
        B, K = xs.shape[:2]
        return self.encoder(xs.flatten(0, 1)).unflatten(0, (B, K))

    def decode(self, fused: Tensor) -> Tensor:
        """``[B, C, h, w] -> [B, 3, S, S]`` in [-1, 1] (tanh)."""
        _check_images("fused", fused, "[B, C, h, w]", 4, self.cfg.gen_channels[-1], self.cfg.feature_size)
        return self.decoder(fused)

    def forward(
        self,
        xs: Tensor,
        generator: torch.Generator | None = None,
        *,
        base: Tensor | None = None,
        positions: Tensor | None = None,
        alpha: Tensor | None = None,
        check_indices: bool | None = None,
    ) -> tuple[Tensor, LocalFusionOutput]:
        """One fake per episode: ``xs [B, K, 3, S, S] -> (fake [B, 3, S, S], LocalFusionOutput)``.

        The fusion's base, positions and alpha are drawn from ``generator`` (or the default RNG of xs's
        device) unless given; pass the recorded ones to replay a generation. Given ones are validated
        unless ``check_indices=False`` (see :class:`~fsgan_fast.nn.LocalFusion`). K may differ from
        ``cfg.shots`` but must be >= 2.
        """
        if isinstance(xs, Tensor) and xs.dim() == 4:
            raise ValueError(
                f"xs must be a batch of episodes [B, K, 3, S, S], got 4-D shape {list(xs.shape)}: add the batch "
                "dimension (xs.unsqueeze(0)) or use LoFGAN.generate(shots, n) for one episode"
            )
        _check_images("xs", xs, "[B, K, 3, S, S]", 5, 3, self.cfg.size)
        _check_shots(xs, "LoFGANGenerator")
        feats = self.encode(xs)
        out = self.fusion(feats, generator, base=base, positions=positions, alpha=alpha, check_indices=check_indices)
        return self.decode(out.fused), out


class LoFGANDiscriminator(nn.Module):
    """FUNIT-style D with an adversarial and a class head. See the module docstring.

    The number of downsampling stages comes from the image side: ``cfg.dis_stages`` halvings bring the
    map to 8x8 or smaller (64 px: 3, 128 px: 4 as the official code, 256 px: 5). Widths:
    stem ``dis_channels``, then ``min(2 * width, dis_max_channels)`` per stage and for the last block
    (official 128 px: 64 -> 128 -> 256 -> 512 -> 1024, last block 1024 -> 1024).
    """

    def __init__(self, cfg: LoFGANConfig):
        super().__init__()
        self.cfg = cfg
        nf = cfg.dis_channels
        self.stem = Conv2dBlock(3, nf, 5, norm="none", act="none", sn=True)
        stages: list[nn.Module] = []
        for _ in range(cfg.dis_stages):
            nf_out = min(2 * nf, cfg.dis_max_channels)
            stages.append(nn.Sequential(ActFirstResBlock(nf, nf_out), nn.ReflectionPad2d(1), nn.AvgPool2d(3, 2)))
            nf = nf_out
        self.stages = nn.Sequential(*stages)
        nf_out = min(2 * nf, cfg.dis_max_channels)
        self.final = ActFirstResBlock(nf, nf_out)
        self.adv_head = kaiming_init_(nn.Linear(nf_out, 1))
        self.cls_head = kaiming_init_(nn.Linear(nf_out, cfg.n_classes))

    def features(self, x: Tensor) -> Tensor:
        """``[N, 3, S, S] -> [N, C, s, s]``, the map the heads pool."""
        return self.final(self.stages(self.stem(x)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [N, 3, S, S] -> (adversarial logit [N], class logits [N, n_classes])``."""
        if isinstance(x, Tensor) and x.dim() == 5:
            raise ValueError(
                f"x must be images [N, 3, S, S], got 5-D shape {list(x.shape)}: flatten episodes with x.flatten(0, 1)"
            )
        _check_images("x", x, "[N, 3, S, S]", 4, 3, self.cfg.size)
        h = self.features(x).mean(dim=(2, 3))
        return self.adv_head(h).squeeze(1), self.cls_head(h)


# ---------------------------------------------------------------------------------------------------
# The pair, EMA, generation


class LoFGAN(WithEMAGenerator, nn.Module):
    """G and D of one LoFGAN, plus an optional EMA copy of G (``gen_ema``: see
    :class:`~fsgan_fast.nn.ema.WithEMAGenerator`)."""

    def __init__(self, cfg: LoFGANConfig):
        super().__init__()
        self.cfg = cfg
        self.gen = LoFGANGenerator(cfg)
        self.dis = LoFGANDiscriminator(cfg)
        self.gen_ema: LoFGANGenerator | None = None

    def _prepare_shots(self, shots: Tensor, gen: LoFGANGenerator, where: str) -> Tensor:
        if isinstance(shots, Tensor) and shots.dim() == 5:
            raise ValueError(
                f"{where} takes the shots of one episode [K, 3, S, S], got 5-D shape {list(shots.shape)}: "
                "call it per episode, or run model.gen(xs) on a batch of episodes"
            )
        _check_images("shots", shots, "[K, 3, S, S]", 4, 3, self.cfg.size)
        _check_shots(shots, where)
        p = next(gen.parameters())
        shots = shots.to(device=p.device, dtype=p.dtype)
        lo, hi = shots.aminmax()
        if not (lo >= -1.001 and hi <= 1.001):  # also catches NaN
            raise ValueError(
                f"shots must be images scaled to [-1, 1], got values in [{lo.item():.4g}, {hi.item():.4g}] "
                "(map uint8 images with x / 127.5 - 1)"
            )
        return shots

    @torch.no_grad()
    def generate(
        self,
        shots: Tensor,
        n: int,
        generator: torch.Generator | None = None,
        *,
        batch_size: int = 64,
        use_ema: bool = True,
    ) -> Tensor:
        """``n`` images ``[n, 3, S, S]`` in [-1, 1] from the shots ``[K, 3, S, S]`` (in [-1, 1]) of one episode.

        Every sample draws its own base shot, positions and alpha (even with ``shared_base``). All of
        them are drawn up front from ``generator`` (or the default RNG of the model's device), so the
        result does not depend on ``batch_size``, which only bounds how many images are decoded at once.
        The shots are encoded once. Runs in eval mode (BatchNorm running statistics) and restores the
        mode after; uses ``gen_ema`` when ``use_ema`` and it is enabled, else ``gen``.
        """
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        gen = self.pick(use_ema)
        shots = self._prepare_shots(shots, gen, "generate")
        n, batch_size = int(n), int(batch_size)
        K, side, f = shots.shape[0], self.cfg.size, self.cfg.feature_size
        was_training = gen.training
        gen.eval()
        try:
            feats = gen.encode(shots.unsqueeze(0))  # [1, K, C, f, f]
            # one per-row base on top of what the layer samples, so shared_base does not tie samples together
            _, positions, alpha = gen.fusion.sample(n, K, f, f, shots.device, generator)
            where = generator.device if generator is not None else shots.device
            base = torch.randint(K, (n,), generator=generator, device=where).to(shots.device)
            out = [shots.new_empty(0, 3, side, side)]
            for s in range(0, n, batch_size):
                e = min(n, s + batch_size)
                fused = gen.fusion(  # indices drawn just above: valid, no check (a host sync per chunk)
                    feats.expand(e - s, -1, -1, -1, -1), base=base[s:e], positions=positions[s:e], alpha=alpha[s:e],
                    check_indices=False,
                ).fused
                out.append(gen.decode(fused))
            return torch.cat(out)
        finally:
            gen.train(was_training)

    @torch.no_grad()
    def similarity_maps(
        self, shots: Tensor, generator: torch.Generator | None = None, *, use_ema: bool = True
    ) -> dict[str, Any]:
        """The data of the paper's similarity figure (§4.5) for one generation from ``shots [K, 3, S, S]``.

        Draws a base shot, ``n`` positions and alpha as :meth:`generate` does, and returns (h = w =
        ``cfg.feature_size``, R = K - 1 references, all tensors on the model's device)::

            maps       [R, n, h, w]  cosine similarity of selected base vector t with every position of
                                     reference r (``ops.lfm_similarity``)
            base       int           the base shot
            ref_shots  [R]           shot index of each reference
            positions  [n]           selected flat base positions (row-major on the h x w grid)
            ref_idx    [R, n]        matched flat position in each reference (argmax of ``maps``)
            alpha      [K]           fusion weights
            fake       [3, S, S]     the generated image
            shots      [K, 3, S, S]  the input, for :func:`similarity_figure`
        """
        gen = self.pick(use_ema)
        shots = self._prepare_shots(shots, gen, "similarity_maps")
        K, f = shots.shape[0], self.cfg.feature_size
        was_training = gen.training
        gen.eval()
        try:
            feats = gen.encode(shots.unsqueeze(0))
            _, positions, alpha = gen.fusion.sample(1, K, f, f, shots.device, generator)
            where = generator.device if generator is not None else shots.device
            base = torch.randint(K, (1,), generator=generator, device=where).to(shots.device)
            out = gen.fusion(feats, base=base, positions=positions, alpha=alpha, check_indices=False)
            maps = lfm_similarity(feats, base, positions)[0].unflatten(-1, (f, f))
            fake = gen.decode(out.fused)[0]
        finally:
            gen.train(was_training)
        b = int(base.item())
        return {
            "maps": maps,
            "base": b,
            "ref_shots": torch.tensor([s for s in range(K) if s != b], device=shots.device),
            "positions": positions[0],
            "ref_idx": out.ref_idx[0],
            "alpha": alpha[0],
            "fake": fake,
            "shots": shots,
        }


# ---------------------------------------------------------------------------------------------------
# Export: the generator with its randomness as inputs


class LoFGANInference(nn.Module):
    """LoFGAN's generator with the fusion's randomness as inputs.

    Batch of episodes (default): ``shots [B, K, 3, S, S], base [B], positions [B, n], alpha [B, K]``.
    Single episode (``single_episode=True``): ``shots [K, 3, S, S]`` encoded once and shared by the B
    generations, which is what generation at scale from one episode wants.
    ``base``/``positions`` are int64; ``alpha`` float in the model's dtype. Indices are not checked
    inside the graph (no host sync): draw them with the graph's ``sample`` or the documented distributions.
    """

    def __init__(self, gen: LoFGANGenerator, single_episode: bool = False):
        super().__init__()
        self.gen = gen
        self.single_episode = single_episode

    def forward(self, shots: Tensor, base: Tensor, positions: Tensor, alpha: Tensor) -> Tensor:
        if self.single_episode:
            feats = self.gen.encode(shots.unsqueeze(0))
            feats = feats.expand(base.shape[0], -1, -1, -1, -1)
        else:
            feats = self.gen.encode(shots)
        fused, _ = lfm_fuse(feats, base, positions, alpha, check_indices=False)
        return self.gen.decode(fused)


@dataclasses.dataclass
class LoFGANExportOptions:
    """LoFGAN's own export options (``fsgan-fast export lofgan``)."""

    single_episode: bool = option(False, "shots [K,3,S,S] encoded once and shared by the batch (generation at "
                                  "scale from one episode); default: a batch of episodes [B,K,3,S,S]")
    use_ema: bool = option(True, "export the EMA generator when the checkpoint has one (--no-ema: the trained G)",
                           flag="ema")

    def __post_init__(self) -> None:
        configs.validate(self)


def lofgan_graph(model: nn.Module, *, single_episode: bool = False, use_ema: bool = True):
    """The :class:`~fsgan_fast.export.graphs.GeneratorGraph` of a LoFGAN (the pair or its generator)."""
    from fsgan_fast.export.graphs import BATCH_INPUTS_KEY, INDEX_BOUNDS_KEY, GeneratorGraph

    which = "gen"
    if isinstance(model, LoFGAN):
        which = "gen_ema" if use_ema and model.gen_ema is not None else "gen"
        gen = getattr(model, which)
    elif isinstance(model, LoFGANGenerator):
        gen = model
    else:
        raise TypeError(f"expected a LoFGAN or LoFGANGenerator, got {type(model).__name__}")
    gen = copy.deepcopy(gen).eval().requires_grad_(False)
    cfg = gen.cfg
    K, S, f = cfg.shots, cfg.size, cfg.feature_size
    n = gen.fusion.num_positions(f, f)

    def sample(B: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, ...]:
        where = generator.device if generator is not None else device
        shape = (K, 3, S, S) if single_episode else (B, K, 3, S, S)
        shots = torch.rand(shape, generator=generator, device=where) * 2 - 1
        _, positions, alpha = gen.fusion.sample(B, K, f, f, device, generator)
        # a base per sample, whatever shared_base says, as LoFGAN.generate draws them
        base = torch.randint(K, (B,), generator=generator, device=where)
        return shots.to(device), base.to(device), positions, alpha.to(device)

    batch_inputs = ("base", "positions", "alpha") if single_episode else ("shots", "base", "positions", "alpha")
    meta = {
        "fsgan_fast.model": "lofgan",
        "fsgan_fast.config": json.dumps(cfg.to_dict()),
        "fsgan_fast.single_episode": str(int(single_episode)),
        "fsgan_fast.generator": which,
        "fsgan_fast.inputs": (
            f"shots: {'[K' if single_episode else '[B, K'}, 3, {S}, {S}] images in [-1, 1], K={K}; "
            f"base: [B] int64 in [0, K); positions: [B, {n}] int64, distinct per row, in [0, {f * f}) "
            f"(flat positions of the {f}x{f} feature grid); alpha: [B, K] U(0,1) normalised to sum 1 per row"
        ),
        "fsgan_fast.outputs": f"images: [B, 3, {S}, {S}] in [-1, 1]",
        INDEX_BOUNDS_KEY: json.dumps({"base": K, "positions": f * f}),
        BATCH_INPUTS_KEY: json.dumps(list(batch_inputs)),
    }
    return GeneratorGraph(
        model="lofgan",
        module=LoFGANInference(gen, single_episode).eval(),
        input_names=("shots", "base", "positions", "alpha"),
        output_names=("images",),
        batch_inputs=batch_inputs,
        sample=sample,
        metadata=meta,
    )


# ---------------------------------------------------------------------------------------------------
# fsgan-fast generate lofgan


@dataclasses.dataclass
class LoFGANGenerateOptions:
    """The inputs of ``fsgan-fast generate lofgan``."""

    shots: tuple[str, ...] = option(help="K >= 2 images of one class (centre-cropped and resized to the model size)",
                                    metavar="IMAGE")
    similarity: bool = option(False, "also write OUT/similarity.png: the fusion's cosine-similarity maps "
                              "(paper section 4.5)")
    use_ema: bool = option(True, "use the EMA generator when the checkpoint has one (--no-ema: the trained G)",
                           flag="ema")

    def __post_init__(self) -> None:
        configs.validate(self)
        if len(self.shots) < 2:
            raise configs.ConfigError(f"--shots needs at least 2 images (a base and a reference), got {len(self.shots)}")


def generate_command(model: LoFGAN, opts: LoFGANGenerateOptions, *, n: int, out: Path, generator: torch.Generator,
                     batch_size: int) -> list[Path]:
    """Write ``out/<i>.png`` per generation, ``out/grid.png`` (shots on the first row) and, if asked, the figure."""
    from fsgan_fast.utils.images import read_image, save_grid, save_image

    if not opts.use_ema and model.gen_ema is None:
        raise configs.ConfigError("--no-ema given but the checkpoint has no EMA generator to skip")
    p = next(model.parameters())
    try:
        shots = torch.stack([read_image(path, model.cfg.size) for path in opts.shots]).float().div_(127.5).sub_(1)
    except ValueError as e:  # unreadable files are the user's input, not a crash
        raise configs.ConfigError(str(e)) from None
    shots = shots.to(p.device)
    fakes = model.generate(shots, n, generator, batch_size=batch_size, use_ema=opts.use_ema)
    width = len(str(max(n - 1, 0)))
    written = [save_image(img, out / f"{i:0{width}d}.png") for i, img in enumerate(fakes)]
    ncol = max(len(shots), min(n, 8))
    blank = torch.ones(ncol - len(shots), *shots.shape[1:], device=shots.device)  # pad the shots row with white
    written.append(save_grid(torch.cat([shots, blank, fakes]), out / "grid.png", ncol))
    if opts.similarity:
        maps = model.similarity_maps(shots, generator, use_ema=opts.use_ema)
        written.append(save_image(similarity_figure(shots, maps), out / "similarity.png", (0.0, 1.0)))
    return written


def _auto_preset(data: str | None) -> str:
    return "demo" if data == "builtin" else "paper"


registry.register(registry.ModelSpec(
    name="lofgan",
    summary="LoFGAN: k-shot generation by fusing local features (ICCV 2021)",
    description=(
        "Train LoFGAN on few-shot image classes. Writes RUN/checkpoint.pt (latest; exact resume), "
        "RUN/metrics.jsonl, RUN/samples/step_*.png (rows: K shots, then generations; seen classes first, then "
        "unseen), RUN/split.json (seen/unseen classes) and RUN/config.json. --data: 'builtin' (16 photo classes "
        "from scikit-image, no download), a folder with one sub-folder of images per class, or an official LoFGAN "
        ".npy [classes, images, H, W, 3]. Options left unset come from --preset. Multi-GPU: "
        "torchrun --nproc_per_node N -m fsgan_fast.cli train lofgan ..."
    ),
    model_config=LoFGANConfig,
    train_config="fsgan_fast.train.lofgan:LoFGANTrainConfig",
    presets="fsgan_fast.train.lofgan:PRESETS",
    auto_preset=_auto_preset,
    preset_help=("'demo' = 64 px, G 32,64,64,64, D 16..128, batch 8, 300 steps (minutes on a CPU); 'paper' = the "
                 "official 128 px model, batch 8, 100000 steps; auto = demo for --data builtin, else paper"),
    build=LoFGAN,
    train="fsgan_fast.train.lofgan:train_run",
    graph=lofgan_graph,
    export_options=LoFGANExportOptions,
    model_types=(LoFGAN, LoFGANGenerator),
    generate=generate_command,
    generate_options=LoFGANGenerateOptions,
    evaluate="fsgan_fast.metrics.protocols:evaluate_lofgan",
    eval_options="fsgan_fast.metrics.protocols:LoFGANEvalOptions",
))


__all__ = ["LoFGANConfig", "LoFGANGenerator", "LoFGANDiscriminator", "LoFGAN", "LoFGANInference", "lofgan_graph",
           "LoFGANExportOptions", "LoFGANGenerateOptions", "similarity_figure"]
