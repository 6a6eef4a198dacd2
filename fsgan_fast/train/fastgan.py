"""Training FastGAN: the reference iteration (ALGORITHMS.md §2) on the shared loop.

One iteration, as the reference ``train.py``:

- G forward once on fresh ``z ~ N(0, I)``: the full-size image and the 128 px one.
- DiffAugment (``policy``, default ``"color,translation"``) on the reals and, independently, on each of the two
  fake outputs.
- D: on the augmented reals (and their nearest-resized 128 px copy) with the reconstruction decoders, on the
  detached fakes without them. ``mean(relu(0.8 + 0.2u - d_real)) + mean(relu(0.8 + 0.2u + d_fake))`` with u
  uniform per logit (the reference's randomised hinge margins), plus the reconstruction loss summed over the
  batch for each of the three decoders (whole image from the last 8x8 features, the 128 px branch, one quadrant
  of the 16x16 features against the same quadrant of the full-size real image). One Adam step.
- G: ``-mean(D(fakes))`` through the same (non-detached) augmented fakes, D frozen. One Adam step. Then EMA.

The reconstruction loss (``recon``) is LPIPS on VGG16 features, as in the reference; without the VGG16 weights
(:mod:`fsgan_fast.perceptual` says where they come from) ``recon="auto"`` falls back to MSE with a warning, and
``"lpips"`` refuses with the same message. The reference draws one quadrant per step for the whole batch
(``part="batch"``); ``part="sample"`` draws one per image.

Where we differ on purpose (ALGORITHMS.md's defects): tanh on every output size (``out_tanh``), generation and
samples with BatchNorm in eval mode, any power-of-two size from 128 up, optimisers built before a resume loads them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast import configs
from fsgan_fast.augment import diff_augment
from fsgan_fast.configs import option
from fsgan_fast.data.image_set import ImageSampler, load_images
from fsgan_fast.models.fastgan import FastGAN, FastGANConfig, reconstruction_targets
from fsgan_fast.perceptual import PerceptualWeightsMissing, reconstruction_loss
from fsgan_fast.train.base import GANTrainer, RunDir, RunOptions, TrainConfig, launch
from fsgan_fast.train.loop import DistEnv, RunError, broadcast_module, load_checkpoint
from fsgan_fast.utils.images import make_grid

# "demo": visible learning within minutes on a 2-core CPU (128 px, narrow nets, MSE reconstruction, since LPIPS's
# VGG16 costs seconds per step there); "paper": the reference model and schedule (a GPU job).
PRESETS = {
    "demo": {
        "size": 128,
        "ngf": 8,
        "ndf": 8,
        "dec_ngf": 8,
        "batch": 8,
        "iters": 400,
        "ema": 0.98,  # 0.999 averages over ~1000 steps: longer than the whole demo
        "recon": "mse",
        "sample_every": 100,
        "ckpt_every": 200,
    },
    "paper": {
        "ngf": 64,
        "ndf": 64,
        "dec_ngf": 32,
        "batch": 8,
        "iters": 50_000,
        "recon": "lpips",
        "sample_every": 1000,
        "ckpt_every": 5000,
    },
}

AUGMENT_POLICIES = ("color", "translation", "cutout")
PREVIEW_SAMPLES = 16
PREVIEW_TILE = 256  # sample grids downscale larger images to this side, so a 1024 px grid stays a few MB


@dataclasses.dataclass
class FastGANTrainConfig(TrainConfig):
    """FastGAN's training recipe; the defaults are the reference's (batch 8, 50k steps, Adam 2e-4 (0.5, 0.999),
    EMA 0.999 of G's parameters, DiffAugment color+translation, LPIPS reconstruction)."""

    iters: int = option(50_000, "training steps (one D step + one G step each)", low=1)
    ema: float = option(0.999, "decay of the EMA copy of G used for samples and generation (0 = off)",
                        low=0.0, high=1.0, high_open=True, flag_value=0.999)
    policy: str = option("color,translation", "DiffAugment policy: comma-separated of color, translation, cutout "
                         "('none' = no augmentation)")
    recon: Literal["lpips", "mse", "l1", "auto"] = option(
        "lpips", "D's reconstruction loss: lpips (VGG16, the reference), mse, l1, or auto (lpips when the VGG16 "
        "weights are found, else mse with a warning)")
    vgg: str | None = option(None, "VGG16 ImageNet weights for LPIPS (torchvision's vgg16-397923af.pth); default: "
                             "$FSGAN_FAST_VGG16, then torch hub's cache", metavar="PATH")
    part: Literal["batch", "sample"] = option(
        "batch", "quadrant of D's part decoder: one per step for the whole batch (reference) or one per image")
    rec_weight: float = option(1.0, "weight of D's reconstruction loss", low=0.0)
    flip: bool = option(True, "random horizontal flips of the real images (reference: on)")

    RESUMABLE: ClassVar[frozenset[str]] = TrainConfig.RESUMABLE | {"vgg"}

    def __post_init__(self) -> None:
        super().__post_init__()
        self.policy = normalise_policy(self.policy)


def normalise_policy(policy: str) -> str:
    names = [p.strip() for p in policy.split(",") if p.strip()]
    if names in ([], ["none"]):
        return "none"
    bad = [p for p in names if p not in AUGMENT_POLICIES]
    if bad:
        raise configs.ConfigError(f"policy: unknown DiffAugment op(s) {bad}; choose from {', '.join(AUGMENT_POLICIES)} "
                                  "(comma-separated) or 'none'")
    return ",".join(dict.fromkeys(names))


def hinge_margin_d_loss(logits: Tensor, real: bool, generator: torch.Generator) -> Tensor:
    """The reference's randomised hinge: ``mean(relu(0.8 + 0.2u -/+ logits))``, u ~ U(0, 1) per logit."""
    u = torch.rand(logits.shape, generator=generator, device=generator.device).to(logits.device, logits.dtype)
    return F.relu(0.8 + 0.2 * u + (-logits if real else logits)).mean()


class FastGANTrainer(GANTrainer):
    """Optimisers, precision and the D/G steps of one FastGAN (on :class:`~fsgan_fast.train.base.GANTrainer`).

    ``generator`` (on the model's device) supplies z, the augmentations, the margins and the quadrants; share it
    with the :class:`~fsgan_fast.data.image_set.ImageSampler` so one checkpointed stream drives the whole run.
    """

    name = "fastgan"

    def __init__(self, model: FastGAN, cfg: FastGANTrainConfig, generator: torch.Generator, *,
                 env: DistEnv = DistEnv(), preview_seed: int = 0):
        super().__init__(model, cfg, generator, env=env)
        model.to(self.device).train()
        if cfg.ema > 0 and model.gen_ema is None:
            model.enable_ema()
        broadcast_module(model, env.world_size)
        self.opt_d = self.add_optimizer("d", model.dis.parameters())
        self.opt_g = self.add_optimizer("g", model.gen.parameters())
        try:
            self.recon_loss = reconstruction_loss(cfg.recon, vgg_path=cfg.vgg).to(self.device)
        except PerceptualWeightsMissing as e:
            raise RunError(f"--recon {cfg.recon}: {e}") from None
        self.gen_fwd = torch.compile(model.gen) if cfg.compile else model.gen
        self.dis_fwd = torch.compile(model.dis) if cfg.compile else model.dis
        g = torch.Generator().manual_seed(preview_seed)
        self.preview_z = torch.randn(PREVIEW_SAMPLES, model.cfg.nz, generator=g).to(self.device)

    def augment(self, x: Tensor) -> Tensor:
        if self.cfg.policy == "none":
            return x
        return diff_augment(x, self.cfg.policy, generator=self.generator)

    def draw_part(self, batch: int) -> int | Tensor:
        """The part decoder's quadrant: one for the batch (an int, as the reference) or one per image.

        The batch's quadrant slices tensors, so it must be a Python int: drawn on the host from the run's seed and
        the step (reproducible, resumes exactly), never read back from a GPU generator (a sync every step)."""
        g = self.generator
        if self.cfg.part == "sample":
            return torch.randint(4, (batch,), generator=g, device=g.device).to(self.device)
        host = torch.Generator().manual_seed((g.initial_seed() * 1_000_003 + self.step) % 2**63)
        return int(torch.randint(4, (), generator=host))

    # -- the two halves of an iteration, separately callable (tests replay them with fixed inputs)

    def d_losses(self, real: Tensor, fake_big: Tensor, fake_small: Tensor, part: int | Tensor) -> dict[str, Tensor]:
        """D's losses on augmented reals ``[B, 3, S, S]`` and augmented fakes (full size and 128 px)."""
        g = self.generator
        real128 = F.interpolate(real, size=128, mode="nearest") if real.shape[-1] != 128 else real
        with self.precision.autocast():
            logits_r, recs = self.dis_fwd(real, real128, part=part)
            logits_f = self.dis_fwd(fake_big.detach(), fake_small.detach())
        targets = reconstruction_targets(real, part, size=recs[0].shape[-1])
        # the reference sums each decoder's LPIPS over the batch (not a mean): kept, it sets the balance with the hinge
        rec = {name: self.recon_loss(r.float(), t.float()).sum()
               for name, r, t in zip(("d_rec_big", "d_rec_small", "d_rec_part"), recs, targets)}
        out = {"d_real": hinge_margin_d_loss(logits_r.float(), True, g),
               "d_fake": hinge_margin_d_loss(logits_f.float(), False, g), **rec}
        out["d_rec"] = sum(rec.values())
        out["d_total"] = out["d_real"] + out["d_fake"] + self.cfg.rec_weight * out["d_rec"]
        return out

    def g_losses(self, fake_big: Tensor, fake_small: Tensor) -> dict[str, Tensor]:
        with self.precision.autocast():
            logits = self.dis_fwd(fake_big, fake_small)
        return {"g_adv": -logits.float().mean()}

    def train_step(self, real: Tensor) -> dict[str, Tensor]:
        B = real.shape[0]
        g = self.generator
        z = torch.randn(B, self.model.cfg.nz, generator=g, device=g.device).to(self.device)
        noise = self.model.gen.make_noise(B, generator=g, device=self.device)  # drawn eagerly: compile-friendly
        with self.precision.autocast():
            fake_big, fake_small = self.gen_fwd(z, noise=noise)
        real = self.augment(real)
        fake_big, fake_small = self.augment(fake_big.float()), self.augment(fake_small.float())
        d = self.d_losses(real, fake_big, fake_small, self.draw_part(B))
        self.optimizer_step("d", d["d_total"])
        self.model.dis.requires_grad_(False)  # G's step needs no D gradients
        try:
            gl = self.g_losses(fake_big, fake_small)
            self.optimizer_step("g", gl["g_adv"])
        finally:
            self.model.dis.requires_grad_(True)
        self.update_ema()
        self.step += 1
        return {k: v.detach() for k, v in {**d, **gl}.items()}

    @torch.no_grad()
    def sample_grid(self) -> Tensor:
        """``PREVIEW_SAMPLES`` generations from fixed latents (EMA G when enabled, BatchNorm in eval mode)."""
        g = torch.Generator(self.device).manual_seed(0)  # the same noise inputs every time
        images = self.model.generate(len(self.preview_z), z=self.preview_z, generator=g)
        if images.shape[-1] > PREVIEW_TILE:
            images = F.interpolate(images, size=PREVIEW_TILE, mode="area")
        return make_grid(images.float(), nrow=8)


# ---------------------------------------------------------------------------------------------------
# A whole run


def load_fastgan(path: str | os.PathLike, device: torch.device | str = "cpu") -> FastGAN:
    """The FastGAN (G, D and EMA G when trained with one) of a checkpoint, in eval mode."""
    from fsgan_fast.models.registry import model_from_state

    state = load_checkpoint(path, "fastgan")
    return model_from_state(state, source=repr(str(path))).to(device).eval()


def train_run(run: RunOptions, model_cfg: FastGANConfig, train_cfg: FastGANTrainConfig) -> Path:
    """A whole FastGAN run (:func:`fsgan_fast.train.base.launch`): images, model and trainer, then the loop."""

    def setup(env: DistEnv, dev: torch.device, run_dir: RunDir):
        images = load_images(run.data, model_cfg.size, seed=train_cfg.seed).to(dev)
        torch.manual_seed(train_cfg.seed)  # the same initial weights on every process
        model = FastGAN(model_cfg)
        generator = torch.Generator(dev).manual_seed(train_cfg.seed + env.rank)
        sampler = ImageSampler(images, train_cfg.batch, generator=generator, flip=train_cfg.flip)
        trainer = FastGANTrainer(model, train_cfg, generator, env=env, preview_seed=train_cfg.seed)
        return trainer, sampler, {}

    return launch(run, train_cfg, setup)


def train_fastgan(
    data: str,
    out: str | os.PathLike,
    model_cfg: FastGANConfig,
    train_cfg: FastGANTrainConfig,
    *,
    device: str | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **train_overrides,
) -> Path:
    """Train FastGAN on ``data`` (``"builtin"``, a folder of images or a ``.npy``) into ``out``: the Python form of
    ``fsgan-fast train fastgan``. ``train_overrides`` replace fields of ``train_cfg``; a resumed run keeps the
    checkpoint's model config."""
    if train_overrides:
        train_cfg = dataclasses.replace(train_cfg, **train_overrides)
    if resume is not None:
        model_cfg = FastGANConfig.from_dict(load_checkpoint(resume, "fastgan")["trainer"]["config"])
    run = RunOptions(data=str(data), out=str(out), resume=None if resume is None else str(resume),
                     overwrite=overwrite, device=device, progress=progress)
    return train_run(run, model_cfg, train_cfg)


__all__ = ["PRESETS", "FastGANTrainConfig", "FastGANTrainer", "hinge_margin_d_loss", "load_fastgan",
           "train_fastgan", "train_run"]
