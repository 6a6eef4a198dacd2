"""Training MatchGAN: the reference iteration (ALGORITHMS.md §5, ``solver.py``) on the shared loop.

Batches (:class:`GroupBatchSampler`): ``batch = 4 x blocks`` images (16 = 4 x 4 in the reference). A labelled batch
holds ``blocks`` distinct classes (label vectors seen in the labelled set) from a shuffled class cycle, four images
of each, block after block. When part of the data is unlabelled, labelled and unlabelled batches alternate (even
iterations labelled); an unlabelled batch is ``batch`` images of the unlabelled pool.

Targets: ``blocks`` distinct classes drawn without replacement, laid out interleaved (``[a, b, c, d, a, b, c, d,
...]``), so each block of source images meets every target (:func:`interleave_targets`).

Matching (:func:`match_pairs`, the reference's ``get_pairs(triple=True)``): the position groups g1 = the first image
of every block, g2, g3, g4 the second, third and fourth; g4' = g4 rolled by one block, g4'' rolled by two. The pairs
(g1, g2) and (g3, g2) share a block (same label), (g3, g4') and (g1, g4'') come from blocks one and two apart
(different labels), so every anchor of g1 and g3 is in one positive and one negative pair: a triplet. D's pair head
classifies each pair (2-way cross entropy): on the real labelled batch for D; for G, on the fakes re-indexed so that
each block shares a target (:func:`regroup_index`), on labelled and unlabelled iterations alike.

One iteration ``i``:

- D: WGAN-GP, ``-mean(D(real)) + mean(D(fake)) + 10 GP``, plus on labelled iterations the class loss on the real
  labels (``lambda_cls``; BCE summed over attributes, or CE) and the matching loss (``lambda_match`` = 0.5).
- G, when ``(i + 1) % n_critic == 0``: ``-mean(D(fake)) + lambda_cls * cls(fake, target) + lambda_match * match``,
  plus on labelled iterations the cycle reconstruction ``lambda_rec * |G(fake, c_org) - real|`` (unknown c_org
  otherwise). With unlabelled data, ``n_critic`` must be odd, or G would only ever meet unlabelled batches.
- Adam (lr 1e-4, betas 0.5, 0.999) for both; the lr decays linearly to 0 over the last ``decay_iters``
  iterations, stepped every ``decay_every`` (:func:`decayed_lr`: a pure function of the step, so a resumed run with
  more ``--iters`` moves the decay window, as LoFGAN's).

Where we differ on purpose: D's pair head has a hidden layer by default (``pair_head="mlp"``): the reference's
single linear conv scores a pair as a sum of one term per image, which cannot tell "same label" from "different", so
its matching losses stay at ln 2 (``pair_head="linear"`` restores it; :mod:`fsgan_fast.models.matchgan`); the lr
decay reaches 0 (StarGAN's code subtracts lr / decay_iters per 1000 iterations,
0.1% in all: ``decay="official"``); a class cycle with fewer classes left than a batch needs is reshuffled (the
reference would build a smaller batch); four images of a class are drawn afresh each time (distinct when the class
has four, else with replacement) rather than from a per-class epoch; D's features are reused for the matching loss
(see :mod:`fsgan_fast.models.matchgan`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fsgan_fast import losses
from fsgan_fast.configs import ConfigError, option
from fsgan_fast.data.attributes import LabelledImages, load_labelled_images, split_labelled
from fsgan_fast.data.episodes import _same_device, to_model_range
from fsgan_fast.data.types import DatasetError
from fsgan_fast.models.matchgan import MatchGAN, MatchGANConfig, class_string, translation_grid
from fsgan_fast.train.base import GANTrainer, RunDir, RunOptions, TrainConfig, launch
from fsgan_fast.train.loop import CheckpointError, DistEnv, broadcast_module, load_checkpoint

GROUP = 4  # images per block of a labelled batch: the reference's per-class loaders give four
MIN_BLOCKS = 3  # the negatives pair blocks one and two apart: three blocks at least
PREVIEW_IMAGES = 8
PREVIEW_TARGETS = 12

# "demo": learns within minutes on a 2-core CPU on the built-in data (64 px, narrow nets, n_critic 1 so that G
# steps every iteration: odd, so G meets labelled and unlabelled batches in turn); "paper": the reference's networks
# and schedule (a GPU job); "celeba": paper plus the reference's attribute selection.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "size": 64,
        "g_conv_dim": 16,
        "d_conv_dim": 16,
        "g_repeat_num": 3,
        "d_repeat_num": 5,
        "batch": 16,
        "iters": 1000,
        "lr": 5e-4,  # 1e-4 learns too slowly for a demo: the matching losses start to fall after ~100 steps at 5e-4
        "n_critic": 1,
        "decay_iters": 500,
        "decay_every": 50,
        "labelled_fraction": 0.25,
        "sample_every": 200,
        "ckpt_every": 500,
    },
    "paper": {
        "size": 128,
        "g_conv_dim": 64,
        "d_conv_dim": 64,
        "g_repeat_num": 6,
        "d_repeat_num": 6,
        "batch": 16,
        "iters": 200_000,
        "lr": 1e-4,
        "n_critic": 5,
        "decay_iters": 100_000,
        "decay_every": 1000,
        "sample_every": 1000,
        "ckpt_every": 10_000,
    },
}
PRESETS["celeba"] = {**PRESETS["paper"], "attrs": ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"),
                     "exclusive": ("Black_Hair,Blond_Hair,Brown_Hair",)}


@dataclasses.dataclass
class MatchGANTrainConfig(TrainConfig):
    """MatchGAN's training recipe; the defaults are the reference's (batch 16, 200k iterations, Adam 1e-4 (0.5,
    0.999), n_critic 5, lambda cls 1 / rec 10 / gp 10 / match 0.5, linear lr decay over the last 100k)."""

    iters: int = option(200_000, "training iterations (a D step each, a G step every n_critic)", low=1)
    batch: int = option(16, "images per iteration: a multiple of 4, at least 12 (a labelled batch is batch/4 classes "
                        "x 4 images)", low=12)
    lr: float = option(1e-4, "Adam learning rate of G and D", low=0.0, low_open=True)
    n_critic: int = option(5, "D steps per G step (odd when part of the data is unlabelled)", low=1)
    lambda_cls: float = option(1.0, "weight of the label classification losses", low=0.0)
    lambda_rec: float = option(10.0, "weight of G's cycle reconstruction loss", low=0.0)
    lambda_gp: float = option(10.0, "weight of D's gradient penalty", low=0.0)
    lambda_match: float = option(0.5, "weight of the pair-matching losses", low=0.0)
    decay_iters: int = option(100_000, "the lr decays to 0 over the last N iterations (0 = constant lr)", low=0)
    decay_every: int = option(1000, "iterations between lr decrements", low=1)
    decay: Literal["linear", "official"] = option(
        "linear", "lr decay: linear to 0 (the paper's intent), or official (StarGAN's code: lr/decay_iters less per "
        "decrement, 0.1% in all)")
    labelled_fraction: float = option(1.0, "share of the images whose labels training uses (class-balanced, from "
                                      "--seed); the rest trains unlabelled", low=0.0, low_open=True, high=1.0)
    attrs: tuple[str, ...] = option((), "attributes (attribute file, builtin) or label folders to train on, in this "
                                    "order (default: all)", metavar="NAME")
    exclusive: tuple[str, ...] = option((), "groups of attributes 'A,B,C' of which at most one may be set (images "
                                        "with more are left out; targets respect them)", metavar="A,B,...")
    image_dir: str | None = option(None, "folder of the images of an attribute file (default: beside it, or its "
                                   "img_align_celeba/ or images/ folder)", metavar="DIR")
    flip: bool = option(True, "random horizontal flips of the training images (reference: on)")

    RESUMABLE: ClassVar[frozenset[str]] = TrainConfig.RESUMABLE | {"image_dir"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch % GROUP:
            raise ConfigError(f"batch must be a multiple of {GROUP} (blocks of {GROUP} same-label images), got "
                              f"{self.batch}")


# ---------------------------------------------------------------------------------------------------
# The reference's index rules, as pure functions


@dataclasses.dataclass(frozen=True)
class MatchPairs:
    """Pairs of batch rows: ``first[p]``, ``second[p]``, and ``same[p]`` = 1 when they share a label, else 0."""

    first: Tensor
    second: Tensor
    same: Tensor

    def to(self, device: torch.device | str) -> MatchPairs:
        return MatchPairs(self.first.to(device), self.second.to(device), self.same.to(device))


def _blocks(batch: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise TypeError(f"batch must be an int, got {type(batch).__name__}")
    if batch % GROUP or batch < GROUP * MIN_BLOCKS:
        raise ValueError(f"batch must be a multiple of {GROUP} and at least {GROUP * MIN_BLOCKS} (blocks of {GROUP} "
                         f"same-label images; negatives pair blocks one and two apart), got {batch}")
    return batch // GROUP


def match_pairs(batch: int, *, triplets: bool = True) -> MatchPairs:
    """The reference's pairs for a batch of ``batch / 4`` blocks of four same-label images (see the module doc).

    ``triplets=False``: (g1, g2) positive then (g3, g4') negative, ``batch / 2`` pairs. ``triplets=True`` (what
    training uses) appends (g1, g4'') negative and (g3, g2) positive: ``batch`` pairs.
    """
    n = _blocks(batch)
    g1 = torch.arange(n) * GROUP
    g2, g3 = g1 + 1, g1 + 2
    g4 = torch.roll(g1 + 3, 1)  # block b's g3 meets block b-1's g4
    ones, zeros = torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    if not triplets:
        return MatchPairs(torch.cat([g1, g3]), torch.cat([g2, g4]), torch.cat([ones, zeros]))
    g4b = torch.roll(g4, 1)  # two blocks back
    return MatchPairs(torch.cat([g1, g3, g1, g3]), torch.cat([g2, g4, g4b, g2]), torch.cat([ones, zeros, zeros, ones]))


def interleave_targets(target_classes: Tensor) -> Tensor:
    """Per batch row, the index of its target class: the ``blocks`` classes repeated ``[a, b, c, d, a, b, ...]``."""
    return target_classes.repeat(GROUP)


def regroup_index(batch: int) -> Tensor:
    """The rows of an interleaved-target batch in target blocks: ``x[regroup_index(B)]`` puts the four rows of each
    target together (``[0, 4, 8, 12, 1, 5, 9, 13, ...]`` at 16, the reference's ``rvrs_idx``)."""
    n = _blocks(batch)
    return torch.arange(batch).view(GROUP, n).t().flatten()


def decayed_lr(step: int, *, lr: float, iters: int, decay_iters: int, every: int,
               mode: Literal["linear", "official"] = "linear") -> float:
    """The lr of iteration ``step`` (0-based): after each iteration ``i`` with ``(i + 1) % every == 0`` and
    ``i + 1 > iters - decay_iters`` it drops by ``lr * every / decay_iters`` (``"linear"``: 0 at ``iters``) or by
    ``lr / decay_iters`` (``"official"``, StarGAN's code). Never below 0."""
    if mode not in ("linear", "official"):
        raise ValueError(f"mode must be 'linear' or 'official', got {mode!r}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if decay_iters <= 0:
        return lr
    start = max(iters - decay_iters, 0)
    drops = step // every - start // every if step > start else 0
    delta = lr / decay_iters * (every if mode == "linear" else 1)
    return max(0.0, lr - drops * delta)


def label_loss(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    """The reference's class loss: for attributes, BCE with logits summed over the attributes and averaged over the
    batch; for categories (one-hot ``labels``), cross entropy."""
    if kind == "attributes":
        if logits.shape != labels.shape:
            raise ValueError(f"logits {list(logits.shape)} and labels {list(labels.shape)} must have the same shape")
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="sum") / logits.shape[0]
    if kind == "categorical":
        return losses.classification_loss(logits, labels.argmax(1))
    raise ValueError(f"kind must be 'attributes' or 'categorical', got {kind!r}")


def match_loss(dis, features: Tensor, pairs: MatchPairs) -> Tensor:
    """2-way cross entropy of D's pair head on the pairs of ``features`` (D's trunk maps of a batch)."""
    logits = dis.pair_logits(features[pairs.first], features[pairs.second])
    return F.cross_entropy(logits.float(), pairs.same)


# ---------------------------------------------------------------------------------------------------
# Batches


@dataclasses.dataclass
class GroupBatch:
    """One iteration's images ``[B, 3, S, S]`` in [-1, 1]; ``labels [B, C]`` on labelled iterations, else None."""

    images: Tensor
    labels: Tensor | None

    @property
    def labelled(self) -> bool:
        return self.labels is not None


class GroupBatchSampler:
    """Labelled batches of ``batch / 4`` classes x 4 images, alternating with unlabelled batches when some images
    are unlabelled (see the module doc). Every draw comes from ``generator`` (on the data's device); the position
    in the alternation and the class cycle are :meth:`state_dict` (the trainer checkpoints them)."""

    def __init__(self, data: LabelledImages, batch: int, *, generator: torch.Generator, flip: bool = True):
        self.blocks = _blocks(batch)
        if not _same_device(generator.device, data.device):
            raise ValueError(f"generator is on {generator.device} but the data is on {data.device}")
        if data.num_labelled == 0:
            raise DatasetError("no labelled images: raise --labelled-fraction")
        self.data, self.batch, self.generator, self.flip = data, batch, generator, flip
        self.classes, index = data.classes()
        K = len(self.classes)
        if K < self.blocks:
            raise DatasetError(
                f"the labelled images hold {K} class(es) (label vectors), but a labelled batch of {batch} takes "
                f"{self.blocks} distinct classes of {GROUP} images: lower --batch (to {GROUP * max(K, MIN_BLOCKS)}), "
                f"label more images (--labelled-fraction) or select other attributes")
        dev = data.device
        labelled = data.labelled.nonzero().squeeze(1)
        order = torch.argsort(index, stable=True)
        self.members = labelled[order]  # labelled images, class after class
        self.counts = torch.bincount(index, minlength=K)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.max_count = max(int(self.counts.max()), GROUP)
        self.unlabelled = (~data.labelled).nonzero().squeeze(1).to(dev)
        self.cycle: list[int] = []
        self.draws = 0

    @property
    def has_unlabelled(self) -> bool:
        return len(self.unlabelled) > 0

    def is_labelled(self, draw: int) -> bool:
        """Whether batch number ``draw`` (0-based) is labelled: all are without unlabelled data, else the even ones."""
        return not self.has_unlabelled or draw % 2 == 0

    def _next_classes(self) -> Tensor:
        g = self.generator
        if len(self.cycle) < self.blocks:
            self.cycle = torch.randperm(len(self.classes), generator=g, device=g.device).tolist()
        picked, self.cycle = self.cycle[: self.blocks], self.cycle[self.blocks :]
        return torch.tensor(picked, device=self.data.device)

    def labelled_indices(self) -> Tensor:
        """Image indices of the next labelled batch: ``blocks`` classes, four images each, block after block."""
        g, dev = self.generator, self.data.device
        cls = self._next_classes()
        counts = self.counts[cls].unsqueeze(1)
        # four distinct images per class without a host loop: the four smallest of random keys, the keys of slots
        # beyond the class's count pushed above every valid one; classes with fewer than four repeat images
        keys = torch.rand(self.blocks, self.max_count, generator=g, device=dev)
        keys.masked_fill_(torch.arange(self.max_count, device=dev) >= counts, 2.0)
        distinct = keys.topk(GROUP, dim=1, largest=False).indices
        repeated = (torch.rand(self.blocks, GROUP, generator=g, device=dev) * counts).long().clamp_(max=counts - 1)
        local = torch.where(counts >= GROUP, distinct, repeated)
        return self.members[self.offsets[cls].unsqueeze(1) + local].flatten()

    def sample(self) -> GroupBatch:
        g, dev = self.generator, self.data.device
        labelled = self.is_labelled(self.draws)
        self.draws += 1
        if labelled:
            idx = self.labelled_indices()
        else:
            idx = self.unlabelled[torch.randint(len(self.unlabelled), (self.batch,), generator=g, device=dev)]
        x = to_model_range(self.data.images[idx])
        if self.flip:
            mirror = torch.rand(self.batch, generator=g, device=dev) < 0.5
            x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
        return GroupBatch(x, self.data.labels[idx] if labelled else None)

    def preview(self, n: int = PREVIEW_IMAGES, seed: int = 0) -> Tensor:
        """``n`` fixed images (fewer if the data has fewer) in [-1, 1] for sample grids, drawn once from ``seed``."""
        pick = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(seed))[:n]
        return to_model_range(self.data.images[pick.to(self.data.device)])

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "cycle": list(self.cycle)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cycle = [int(c) for c in state["cycle"]]
        if any(not 0 <= c < len(self.classes) for c in cycle):
            raise CheckpointError(f"the checkpoint's class cycle {cycle} does not fit the {len(self.classes)} classes "
                                  "of this data")
        self.draws, self.cycle = int(state["draws"]), cycle


# ---------------------------------------------------------------------------------------------------
# The trainer


class MatchGANTrainer(GANTrainer):
    """Optimisers, the lr schedule and the D/G steps of one MatchGAN (on :class:`~fsgan_fast.train.base.GANTrainer`).

    ``generator`` (on the model's device) supplies the targets and the penalty's mixing weights; share it with the
    ``sampler``, whose position this trainer checkpoints, so one checkpointed stream drives the whole run.
    """

    name = "matchgan"

    def __init__(self, model: MatchGAN, cfg: MatchGANTrainConfig, generator: torch.Generator,
                 sampler: GroupBatchSampler, *, env: DistEnv = DistEnv(), preview_seed: int = 0):
        super().__init__(model, cfg, generator, env=env)
        if sampler.batch != cfg.batch:
            raise ValueError(f"the sampler draws batches of {sampler.batch}, the config says {cfg.batch}")
        if sampler.has_unlabelled and cfg.n_critic % 2 == 0:
            raise ConfigError(f"n_critic must be odd when part of the data is unlabelled (got {cfg.n_critic}): G steps "
                              "every n_critic-th iteration and labelled iterations alternate with unlabelled ones, so "
                              "an even n_critic would never give G a labelled batch")
        kind = model.cfg.label_kind
        if kind != sampler.data.kind or list(model.cfg.labels) != list(sampler.data.names):
            raise ValueError(f"the model's labels {list(model.cfg.labels)} ({kind}) are not the data's "
                             f"{list(sampler.data.names)} ({sampler.data.kind})")
        model.to(self.device).train()
        if cfg.ema > 0 and model.gen_ema is None:
            model.enable_ema()
        broadcast_module(model, env.world_size)
        self.sampler = sampler
        self.opt_d = self.add_optimizer("d", model.dis.parameters())
        self.opt_g = self.add_optimizer("g", model.gen.parameters())
        self.targets = model.target_labels()
        if len(self.targets) < sampler.blocks:
            raise ConfigError(f"the model has {len(self.targets)} target classes; batches of {cfg.batch} draw "
                              f"{sampler.blocks} distinct ones")
        self.pairs = match_pairs(cfg.batch).to(self.device)
        self.regroup = regroup_index(cfg.batch).to(self.device)
        # compiled forwards for the losses; the penalty runs the eager D (its double backward does not compile)
        self.gen_fwd = torch.compile(model.gen) if cfg.compile else model.gen
        self.dis_fwd = torch.compile(model.dis) if cfg.compile else model.dis
        self.preview = sampler.preview(PREVIEW_IMAGES, preview_seed).to(self.device)

    # -- schedule and targets

    def lr_at(self, step: int) -> float:
        c = self.cfg
        return decayed_lr(step, lr=c.lr, iters=c.iters, decay_iters=c.decay_iters, every=c.decay_every, mode=c.decay)

    def draw_targets(self) -> Tensor:
        """Target label vectors ``[B, C]``: ``blocks`` distinct classes without replacement, interleaved."""
        g = self.generator
        keys = torch.rand(len(self.targets), generator=g, device=g.device).to(self.device)
        picked = keys.topk(self.sampler.blocks, largest=False).indices
        return self.targets[interleave_targets(picked)]

    # -- the two halves of an iteration, separately callable (tests replay them with fixed inputs)

    def d_losses(self, real: Tensor, labels: Tensor | None, fake: Tensor) -> dict[str, Tensor]:
        """D's losses on the real batch (with its labels on labelled iterations) and detached fakes."""
        c, dis = self.cfg, self.model.dis
        with self.precision.autocast():
            src_r, cls_r, feats_r = self.dis_fwd(real)
            src_f = self.dis_fwd(fake.detach())[0]

        def critic(x: Tensor) -> Tensor:
            with self.precision.autocast():
                return dis.critic(x).float()

        out = {"d_real": -src_r.float().mean(), "d_fake": src_f.float().mean(),
               "d_gp": losses.gradient_penalty(critic, real, fake, generator=self.generator)}
        total = out["d_real"] + out["d_fake"] + c.lambda_gp * out["d_gp"]
        if labels is not None:
            out["d_cls"] = label_loss(cls_r.float(), labels, self.model.cfg.label_kind)
            with self.precision.autocast():
                out["d_match"] = match_loss(dis, feats_r, self.pairs)
            total = total + c.lambda_cls * out["d_cls"] + c.lambda_match * out["d_match"]
        out["d_total"] = total
        return out

    def g_losses(self, real: Tensor, labels: Tensor | None, fake: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """G's losses for ``fake = G(real, targets)`` (interleaved targets), D frozen by the caller."""
        c = self.cfg
        with self.precision.autocast():
            src, cls, feats = self.dis_fwd(fake)
            g_match = match_loss(self.model.dis, feats[self.regroup], self.pairs)
        out = {"g_adv": -src.float().mean(), "g_cls": label_loss(cls.float(), targets, self.model.cfg.label_kind),
               "g_match": g_match}
        total = out["g_adv"] + c.lambda_cls * out["g_cls"] + c.lambda_match * out["g_match"]
        if labels is not None:
            with self.precision.autocast():
                rec = self.gen_fwd(fake, labels)
            out["g_rec"] = (real - rec.float()).abs().mean()
            total = total + c.lambda_rec * out["g_rec"]
        out["g_total"] = total
        return out

    def train_step(self, batch: GroupBatch) -> dict[str, Tensor]:
        real, labels = batch.images, batch.labels
        if real.shape[0] != self.cfg.batch:
            raise ValueError(f"expected a batch of {self.cfg.batch} images, got {real.shape[0]}")
        self.set_lr(self.lr_at(self.step))
        targets = self.draw_targets()
        g_step = (self.step + 1) % self.cfg.n_critic == 0
        with torch.set_grad_enabled(g_step), self.precision.autocast():
            fake = self.gen_fwd(real, targets)  # one forward serves D (detached) and, on G steps, G
        fake = fake.float()
        d = self.d_losses(real, labels, fake)
        self.optimizer_step("d", d["d_total"])
        out = dict(d)
        if g_step:
            self.model.dis.requires_grad_(False)  # G's step needs no D gradients
            try:
                gl = self.g_losses(real, labels, fake, targets)
                self.optimizer_step("g", gl["g_total"])
            finally:
                self.model.dis.requires_grad_(True)
            self.update_ema()
            out.update(gl)
        self.step += 1
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def sample_grid(self) -> Tensor:
        """The preview images, one row each: the source, then its translations to (up to 12 of) the model's classes."""
        targets = self.targets
        if len(targets) > PREVIEW_TARGETS:
            targets = targets[torch.linspace(0, len(targets) - 1, PREVIEW_TARGETS).round().long()]
        out = self.model.translate(self.preview, targets, batch_size=len(self.preview))
        return translation_grid(self.preview, out).float()

    # -- state: the sampler's place in the alternation and the class cycle

    def extra_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "sampler" not in state:
            raise CheckpointError("the checkpoint has no 'sampler' entry (damaged or from another trainer)")
        self.sampler.load_state_dict(state["sampler"])


# ---------------------------------------------------------------------------------------------------
# A whole run


def prepare_data(spec: str, model_cfg: MatchGANConfig, train_cfg: MatchGANTrainConfig
                 ) -> tuple[LabelledImages, MatchGANConfig]:
    """The run's images with their labelled split, and ``model_cfg`` with the labels, groups and classes of the data."""
    data = load_labelled_images(spec, model_cfg.size, attrs=train_cfg.attrs, exclusive=train_cfg.exclusive,
                                image_dir=train_cfg.image_dir, seed=train_cfg.seed)
    _, index = data.classes()
    data = data.with_labelled(split_labelled(index, train_cfg.labelled_fraction, seed=train_cfg.seed))
    classes, _ = data.classes()
    cfg = dataclasses.replace(model_cfg, labels=tuple(data.names), label_kind=data.kind,
                              exclusive=tuple(",".join(g) for g in data.exclusive),
                              classes=tuple(class_string(v) for v in classes.tolist()))
    return data, cfg


def load_matchgan(path: str | os.PathLike, device: torch.device | str = "cpu") -> MatchGAN:
    """The MatchGAN (G, D and EMA G when trained with one) of a checkpoint, in eval mode."""
    from fsgan_fast.models.registry import model_from_state

    state = load_checkpoint(path, "matchgan")
    return model_from_state(state, source=repr(str(path))).to(device).eval()


def train_run(run: RunOptions, model_cfg: MatchGANConfig, train_cfg: MatchGANTrainConfig) -> Path:
    """A whole MatchGAN run (:func:`fsgan_fast.train.base.launch`): data and split, model, sampler, trainer, loop."""

    def setup(env: DistEnv, dev: torch.device, run_dir: RunDir):
        data, cfg = prepare_data(run.data, model_cfg, train_cfg)
        torch.manual_seed(train_cfg.seed)  # the same initial weights on every process
        model = MatchGAN(cfg)
        generator = torch.Generator(dev).manual_seed(train_cfg.seed + env.rank)
        sampler = GroupBatchSampler(data.to(dev), train_cfg.batch, generator=generator, flip=train_cfg.flip)
        trainer = MatchGANTrainer(model, train_cfg, generator, sampler, env=env, preview_seed=train_cfg.seed)
        return trainer, sampler, {"labels.json": json.dumps(data.describe(), indent=1)}

    return launch(run, train_cfg, setup)


def train_matchgan(
    data: str,
    out: str | os.PathLike,
    model_cfg: MatchGANConfig,
    train_cfg: MatchGANTrainConfig,
    *,
    device: str | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **train_overrides,
) -> Path:
    """Train MatchGAN on ``data`` (see :func:`fsgan_fast.data.attributes.load_labelled_images`) into ``out``: the
    Python form of ``fsgan-fast train matchgan``. ``train_overrides`` replace fields of ``train_cfg``; a resumed run
    keeps the checkpoint's model config."""
    if train_overrides:
        train_cfg = dataclasses.replace(train_cfg, **train_overrides)
    if resume is not None:
        model_cfg = MatchGANConfig.from_dict(load_checkpoint(resume, "matchgan")["trainer"]["config"])
    run = RunOptions(data=str(data), out=str(out), resume=None if resume is None else str(resume),
                     overwrite=overwrite, device=device, progress=progress)
    return train_run(run, model_cfg, train_cfg)


__all__ = ["GROUP", "PRESETS", "GroupBatch", "GroupBatchSampler", "MatchGANTrainConfig", "MatchGANTrainer",
           "MatchPairs", "decayed_lr", "interleave_targets", "label_loss", "load_matchgan", "match_loss", "match_pairs",
           "prepare_data", "regroup_index", "train_matchgan", "train_run"]
