"""Training OP-GAN: CycleGAN's iteration plus the Siamese network S's self-supervised losses, on the shared loop.

One iteration (``fake_b = G_ab(real_a)``, ``fake_a = G_ba(real_b)``, then alternating updates):

1. D and S with G fixed.
   - D_a, D_b: the LSGAN loss ``0.5 (mean (D(real) - 1)^2 + mean D(fake)^2)`` (:func:`fsgan_fast.losses.lsgan_d_loss`)
     on the real images and on fakes drawn from a history of ``pool_size`` = 50 earlier fakes per domain
     (:class:`ImagePool`, CycleGAN's: once full, each new fake replaces a random stored one with probability 1/2 and
     the stored one is shown instead). One Adam step over both Ds.
   - S on ``(real_a, fake_b)`` (detached) and pairs of patches drawn for this step
     (:func:`fsgan_fast.ops.patch_grid.sample_patch_pairs`: ``pairs`` of each scenario D1, D2, C1, C2 per image):
     ``L_S = w_content * L_content + w_domain * L_domain`` (:class:`fsgan_fast.models.opgan.SiameseNet`). One Adam step.
2. G with D and S fixed: ``L_adv(G_ab) + L_adv(G_ba) + lambda_cyc (|G_ba(fake_b) - real_a|_1 + |G_ab(fake_a) -
   real_b|_1) + lambda_cyc * lambda_idt (|G_ab(real_b) - real_b|_1 + |G_ba(real_a) - real_a|_1) + lambda_ss * L_S``,
   with ``L_adv = mean (D(fake) - 1)^2`` and L_S on the same pairs through the non-detached ``fake_b``. One Adam step
   over both Gs.

The defaults are CycleGAN's (batch 1, Adam 2e-4 with betas (0.5, 0.999) for every network, lambda_cyc = 10,
lambda_idt = 0.5, a pool of 50, the lr constant for the first half of the run and then linear to 0) and the paper's
weight 1 on L_S. The paper names the order "S and D, then G" (CycleGAN's code updates G first); either way every
network sees the others' latest weights once per iteration.

Randomness: the data order comes from the run's generator; the patch pairs and the pools' choices from a host
generator seeded by the run's seed and the step, so they cost no device sync and a resumed run replays them exactly.
The pools' contents are saved in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.data.episodes import to_model_range
from fsgan_fast.data.two_domain import TwoDomains, TwoDomainSampler, load_two_domains
from fsgan_fast.losses import lsgan_d_loss, lsgan_g_loss
from fsgan_fast.models.opgan import OPGAN, OPGANConfig, SiameseOutput
from fsgan_fast.ops.patch_grid import PatchPairs, sample_patch_pairs
from fsgan_fast.train.base import GANTrainer, RunDir, RunOptions, TrainConfig, launch
from fsgan_fast.train.loop import CheckpointError, DistEnv, broadcast_module, constant_then_linear, load_checkpoint
from fsgan_fast.utils.images import make_grid

# "demo": visible translation and falling self-supervised losses within minutes on a 2-core CPU (64 px, narrow nets,
# batch 4); "paper": CycleGAN's networks at 256 px with batch 1 (a GPU job: 200 epochs of ~1000 images).
PRESETS = {
    "demo": {
        "size": 64,
        "ngf": 16,
        "ndf": 16,
        "ns": 16,
        "n_blocks": 6,
        "batch": 4,
        "iters": 400,
        "sample_every": 50,
        "ckpt_every": 100,
    },
    "paper": {
        "size": 256,
        "ngf": 64,
        "ndf": 64,
        "ns": 64,
        "n_blocks": 9,
        "batch": 1,
        "iters": 200_000,
        "sample_every": 1000,
        "ckpt_every": 5000,
    },
}

PREVIEW_IMAGES = 4  # rows of the sample grids
_HOST_SEED_STRIDE = 1_000_003  # host generator of step s: seed * stride + s


@dataclasses.dataclass
class OPGANTrainConfig(TrainConfig):
    """OP-GAN's training recipe; the defaults are CycleGAN's (batch 1, Adam 2e-4 (0.5, 0.999), lambda_cyc 10,
    lambda_idt 0.5, pool 50, linear lr decay over the second half) and the paper's (L_S weight 1)."""

    iters: int = option(200_000, "training steps (one D step, one S step and one G step each)", low=1)
    batch: int = option(1, "images of each domain per step (CycleGAN: 1)", low=1)
    lr: float = option(2e-4, "Adam learning rate of G, D and S; constant for the first decay_start of the run, then "
                       "linear decay to 0", low=0.0, low_open=True)
    ema: float = option(0.0, "OP-GAN keeps no EMA generator: must stay 0", low=0.0, high=0.0)
    decay_start: float = option(0.5, "fraction of the run after which the lr decays linearly to 0", low=0.0, high=1.0)
    lambda_cyc: float = option(10.0, "weight of the cycle losses |G_ba(G_ab(a)) - a|_1 and |G_ab(G_ba(b)) - b|_1",
                               low=0.0)
    lambda_idt: float = option(0.5, "weight of the identity losses |G_ab(b) - b|_1 and |G_ba(a) - a|_1, relative to "
                               "lambda_cyc (CycleGAN's lambda_identity; 0 = off)", low=0.0)
    lambda_ss: float = option(1.0, "weight of S's self-supervised loss L_S in G's loss (the paper: 1)", low=0.0)
    w_content: float = option(1.0, "weight of the content-registration loss inside L_S", low=0.0)
    w_domain: float = option(1.0, "weight of the 3-way domain-classification loss inside L_S", low=0.0)
    pairs: int = option(4, "patch pairs of each scenario (D1, D2, C1, C2) per image and step", low=1)
    pool_size: int = option(50, "earlier fakes per domain that D is shown (CycleGAN's image pool; 0 = only the "
                            "newest)", low=0)
    flip: bool = option(True, "random horizontal flips of the real images (CycleGAN: on)")
    data_b: str | None = option(None, "domain B's image folder, when --data names domain A's (instead of a folder "
                                "with trainA/ and trainB/)", metavar="DIR")

    RESUMABLE: ClassVar[frozenset[str]] = TrainConfig.RESUMABLE | {"data_b"}


# ---------------------------------------------------------------------------------------------------
# CycleGAN's history of fakes


class ImagePool:
    """The last ``size`` fakes of one domain (CycleGAN's ``ImagePool``), so that D also sees earlier generators.

    :meth:`query` takes a batch of new fakes and returns as many images: while the pool fills, the new fakes
    themselves (each stored); once full, for each image with probability 1/2 a random stored fake (the new one takes
    its place), else the new fake. ``size=0`` returns the batch unchanged.
    """

    def __init__(self, size: int):
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size must be an int >= 0, got {size!r}")
        self.size = size
        self.images: Tensor | None = None  # [size, 3, S, S] once the first batch arrives
        self.count = 0

    def query(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The images D sees in place of ``images [B, 3, S, S]`` (detached); choices drawn from ``generator`` (CPU)."""
        images = images.detach()
        if self.size == 0:
            return images
        if self.images is None:
            self.images = images.new_empty(self.size, *images.shape[1:])
        elif self.images.shape[1:] != images.shape[1:]:
            raise ValueError(f"the pool holds {list(self.images.shape[1:])} images, got {list(images.shape[1:])}")
        B = images.shape[0]
        # drawn for every image, stored or not, so the stream does not depend on the fill level
        swap = (torch.rand(B, generator=generator) < 0.5).tolist()
        slot = torch.randint(self.size, (B,), generator=generator).tolist()
        out = []
        for i in range(B):
            new = images[i]
            if self.count < self.size:
                self.images[self.count] = new
                self.count += 1
                out.append(new)
            elif swap[i]:
                out.append(self.images[slot[i]].clone())
                self.images[slot[i]] = new
            else:
                out.append(new)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        stored = self.images[: self.count].cpu().clone() if self.images is not None else torch.empty(0)
        return {"size": self.size, "images": stored}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        if int(state["size"]) != self.size:
            raise CheckpointError(f"the checkpoint's image pool holds {state['size']} images, this run's {self.size}")
        stored = state["images"]
        self.count = int(stored.shape[0])
        self.images = None
        if self.count:
            self.images = stored.new_empty(self.size, *stored.shape[1:]).to(device)
            self.images[: self.count] = stored.to(device)


# ---------------------------------------------------------------------------------------------------
# The trainer


class OPGANTrainer(GANTrainer):
    """Optimisers (``g``: G_ab + G_ba, ``d``: D_a + D_b, ``s``: S), the lr schedule, the image pools and the three
    updates of one OP-GAN iteration (on :class:`~fsgan_fast.train.base.GANTrainer`).

    ``batch`` for :meth:`train_step` is ``(real_a, real_b)``, each ``[B, 3, S, S]`` in [-1, 1]
    (:class:`~fsgan_fast.data.two_domain.TwoDomainSampler`). ``preview``: ``(a, b)`` images for the sample grids.
    """

    name = "opgan"

    def __init__(self, model: OPGAN, cfg: OPGANTrainConfig, generator: torch.Generator, *, env: DistEnv = DistEnv(),
                 preview: tuple[Tensor, Tensor] | None = None):
        super().__init__(model, cfg, generator, env=env)
        model.to(self.device).train()
        broadcast_module(model, env.world_size)
        self.add_optimizer("g", [*model.gen_ab.parameters(), *model.gen_ba.parameters()])
        self.add_optimizer("d", [*model.dis_a.parameters(), *model.dis_b.parameters()])
        self.add_optimizer("s", model.siamese.parameters())
        # the lr is a pure function of the step (no scheduler state), so a resumed run may change iters
        self.lr_factor = constant_then_linear(cfg.iters, int(cfg.iters * cfg.decay_start))
        self.pool_a, self.pool_b = ImagePool(cfg.pool_size), ImagePool(cfg.pool_size)
        compile_ = torch.compile if cfg.compile else (lambda m: m)
        self.gen_ab, self.gen_ba = compile_(model.gen_ab), compile_(model.gen_ba)
        self.dis_a, self.dis_b = compile_(model.dis_a), compile_(model.dis_b)
        self.preview = None if preview is None else tuple(p.to(self.device) for p in preview)

    def host_generator(self) -> torch.Generator:
        """This step's CPU generator for the pairs and the pools: a function of the run's seed and the step."""
        seed = (self.generator.initial_seed() * _HOST_SEED_STRIDE + self.step) % 2**63
        return torch.Generator().manual_seed(seed)

    def draw_pairs(self, batch: int, generator: torch.Generator) -> PatchPairs:
        """This step's patch pairs (on the host; S moves them to its device after checking them)."""
        return sample_patch_pairs(batch, self.model.cfg.grid, self.cfg.pairs, generator=generator)

    # -- the parts of an iteration, separately callable (tests replay them with fixed inputs)

    def d_losses(self, real_a: Tensor, real_b: Tensor, fake_a: Tensor, fake_b: Tensor) -> dict[str, Tensor]:
        """The LSGAN losses of D_a (real A vs ``fake_a``) and D_b (real B vs ``fake_b``); pass detached (pooled)
        fakes."""
        with self.precision.autocast():
            logits = [self.dis_a(real_a), self.dis_a(fake_a), self.dis_b(real_b), self.dis_b(fake_b)]
        la_r, la_f, lb_r, lb_f = (t.float() for t in logits)
        out = {"d_a": lsgan_d_loss(la_r, la_f), "d_b": lsgan_d_loss(lb_r, lb_f)}
        out["d_total"] = out["d_a"] + out["d_b"]
        return out

    def siamese(self, real_a: Tensor, fake_b: Tensor, pairs: PatchPairs) -> SiameseOutput:
        with self.precision.autocast():
            return self.model.siamese(real_a, fake_b, pairs)

    def ss_loss(self, out: SiameseOutput) -> Tensor:
        """``L_S = w_content * L_content + w_domain * L_domain``."""
        return self.cfg.w_content * out.content.float() + self.cfg.w_domain * out.domain.float()

    def s_losses(self, real_a: Tensor, fake_b: Tensor, pairs: PatchPairs) -> dict[str, Tensor]:
        """S's losses on ``real_a`` and its (detached) translation ``fake_b``."""
        out = self.siamese(real_a, fake_b.detach(), pairs)
        return {"s_content": out.content.float(), "s_domain": out.domain.float(), "s_acc": out.accuracy(),
                "s_total": self.ss_loss(out)}

    def g_losses(self, real_a: Tensor, real_b: Tensor, fake_a: Tensor, fake_b: Tensor,
                 pairs: PatchPairs) -> dict[str, Tensor]:
        """G's losses through the (non-detached) fakes of this step; D and S are used, not trained."""
        cfg = self.cfg
        with self.precision.autocast():
            adv_a, adv_b = self.dis_a(fake_a), self.dis_b(fake_b)
            rec_a, rec_b = self.gen_ba(fake_b), self.gen_ab(fake_a)
            if cfg.lambda_idt > 0:
                idt_ab, idt_ba = self.gen_ab(real_b), self.gen_ba(real_a)
        out = {
            "g_adv_a": lsgan_g_loss(adv_a.float()),
            "g_adv_b": lsgan_g_loss(adv_b.float()),
            "g_cyc_a": F.l1_loss(rec_a.float(), real_a),
            "g_cyc_b": F.l1_loss(rec_b.float(), real_b),
        }
        if cfg.lambda_idt > 0:
            out["g_idt_ab"] = F.l1_loss(idt_ab.float(), real_b)
            out["g_idt_ba"] = F.l1_loss(idt_ba.float(), real_a)
        ss = self.siamese(real_a, fake_b, pairs)
        out.update(g_ss_content=ss.content.float(), g_ss_domain=ss.domain.float(), g_ss=self.ss_loss(ss))
        total = out["g_adv_a"] + out["g_adv_b"] + cfg.lambda_cyc * (out["g_cyc_a"] + out["g_cyc_b"])
        if cfg.lambda_idt > 0:
            total = total + cfg.lambda_cyc * cfg.lambda_idt * (out["g_idt_ab"] + out["g_idt_ba"])
        out["g_total"] = total + cfg.lambda_ss * out["g_ss"]
        return out

    def train_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        real_a, real_b = batch
        self.set_lr(self.cfg.lr * self.lr_factor(self.step))
        host = self.host_generator()
        with self.precision.autocast():
            fake_b, fake_a = self.gen_ab(real_a), self.gen_ba(real_b)
        fake_b, fake_a = fake_b.float(), fake_a.float()
        # draws in a fixed order from this step's host generator: pools, then pairs
        shown_a, shown_b = self.pool_a.query(fake_a, host), self.pool_b.query(fake_b, host)
        pairs = self.draw_pairs(real_a.shape[0], host)

        d = self.d_losses(real_a, real_b, shown_a, shown_b)
        self.optimizer_step("d", d["d_total"])
        s = self.s_losses(real_a, fake_b, pairs)
        self.optimizer_step("s", s["s_total"])

        fixed = (self.model.dis_a, self.model.dis_b, self.model.siamese)
        for net in fixed:  # G's step needs no D or S gradients
            net.requires_grad_(False)
        try:
            g = self.g_losses(real_a, real_b, fake_a, fake_b, pairs)
            self.optimizer_step("g", g["g_total"])
        finally:
            for net in fixed:
                net.requires_grad_(True)
        self.step += 1
        return {k: v.detach() for k, v in {**d, **s, **g}.items()}

    def lr(self) -> float:
        """The lr of the most recent step."""
        return self.cfg.lr * self.lr_factor(max(self.step - 1, 0))

    @torch.no_grad()
    def sample_grid(self) -> Tensor:
        """One row per preview pair: A | G_ab(A) | B | G_ba(B)."""
        if self.preview is None:
            raise ValueError("OPGANTrainer was built without preview images")
        a, b = self.preview
        fake_b, fake_a = self.model.translate(a, "ab"), self.model.translate(b, "ba")
        rows = torch.stack([a, fake_b, b, fake_a], dim=1).flatten(0, 1)
        return make_grid(rows.float(), nrow=4)

    # -- state beyond networks and optimisers

    def extra_state(self) -> dict[str, Any]:
        return {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for key, pool in (("pool_a", self.pool_a), ("pool_b", self.pool_b)):
            if key not in state:
                raise CheckpointError(f"the checkpoint has no {key!r} entry (damaged, or not written by OP-GAN's "
                                      "trainer)")
            pool.load_state_dict(state[key], self.device)


# ---------------------------------------------------------------------------------------------------
# A whole run


def preview_images(data: TwoDomains, n: int = PREVIEW_IMAGES) -> tuple[Tensor, Tensor]:
    """``n`` images of each domain, evenly spread over the sets (so the grid shows several subjects), in [-1, 1]."""
    picks = []
    for images in (data.a, data.b):
        idx = torch.linspace(0, images.shape[0] - 1, min(n, images.shape[0])).round().long()
        picks.append(to_model_range(images[idx.to(images.device)]))
    return picks[0], picks[1]


def load_opgan(path: str | os.PathLike, device: torch.device | str = "cpu") -> OPGAN:
    """The OP-GAN (both generators, both discriminators and S) of a checkpoint, in eval mode."""
    from fsgan_fast.models.registry import model_from_state

    state = load_checkpoint(path, "opgan")
    return model_from_state(state, source=repr(str(path))).to(device).eval()


def train_run(run: RunOptions, model_cfg: OPGANConfig, train_cfg: OPGANTrainConfig) -> Path:
    """A whole OP-GAN run (:func:`fsgan_fast.train.base.launch`): the two domains, model and trainer, then the loop."""

    def setup(env: DistEnv, dev: torch.device, run_dir: RunDir):
        data = load_two_domains(run.data, model_cfg.size, data_b=train_cfg.data_b, seed=train_cfg.seed).to(dev)
        torch.manual_seed(train_cfg.seed)  # the same initial weights on every process
        model = OPGAN(model_cfg)
        generator = torch.Generator(dev).manual_seed(train_cfg.seed + env.rank)
        sampler = TwoDomainSampler(data, train_cfg.batch, generator=generator, flip=train_cfg.flip)
        trainer = OPGANTrainer(model, train_cfg, generator, env=env, preview=preview_images(data))
        return trainer, sampler, {}

    return launch(run, train_cfg, setup)


def train_opgan(
    data: str,
    out: str | os.PathLike,
    model_cfg: OPGANConfig,
    train_cfg: OPGANTrainConfig,
    *,
    device: str | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **train_overrides,
) -> Path:
    """Train OP-GAN on ``data`` (``"builtin"``, a folder with trainA/ and trainB/, or domain A's folder with
    ``data_b=``) into ``out``: the Python form of ``fsgan-fast train opgan``. ``train_overrides`` replace fields of
    ``train_cfg``; a resumed run keeps the checkpoint's model config."""
    if train_overrides:
        train_cfg = dataclasses.replace(train_cfg, **train_overrides)
    if resume is not None:
        model_cfg = configs.from_dict(OPGANConfig, load_checkpoint(resume, "opgan")["trainer"]["config"])
    run = RunOptions(data=str(data), out=str(out), resume=None if resume is None else str(resume),
                     overwrite=overwrite, device=device, progress=progress)
    return train_run(run, model_cfg, train_cfg)


__all__ = ["PRESETS", "ImagePool", "OPGANTrainConfig", "OPGANTrainer", "load_opgan", "preview_images",
           "train_opgan", "train_run"]
