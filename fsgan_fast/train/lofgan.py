"""Training LoFGAN: the official iteration (ALGORITHMS.md §1) on the shared loop.

One iteration, as the official ``dis_update`` then ``gen_update``:

- D: a fake per episode from G under ``no_grad``; D on the B*K real shots and the B fakes in one
  forward; ``adv * hinge(real, fake) + cls_d * CE(real classes) + gp * R1`` where R1 is the squared
  gradient of the mean true-class logit w.r.t. the real episodes, summed and divided by B (the
  official ``calc_grad2`` on the 5-D input; ALGORITHMS.md's "B*K" is K times smaller).
- G: a fresh fake (new fusion randomness); ``adv * -D(fake) + cls_g * CE(fake class) + local * L1``
  local reconstruction (``losses.local_reconstruction_loss``). D is frozen for this step. The official
  code also runs D on the reals here and ignores the result; that forward is skipped.
- Adam (lr 1e-4, betas (0.9, 0.999), weight decay 1e-4) for both nets; the lr is constant for the first
  half of the run, then decays linearly to 0 (the official ``update_lr``). Optional EMA of G (not official).

With reals and fakes in one D forward and the unused forward skipped, an iteration runs D twice where
the official code runs it four times, so D's spectral-norm power iteration advances half as often.

:func:`train_run` (the CLI's) and :func:`train_lofgan` (its Python form) build the whole run (data, split,
model, trainer) on :func:`fsgan_fast.train.base.launch`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.data import ClassSplit, EpisodeSampler, ImageClasses, load_classes, split_classes, to_model_range
from fsgan_fast.losses import (
    classification_loss,
    hinge_d_loss,
    hinge_g_loss,
    local_reconstruction_loss,
    r1_class_penalty,
)
from fsgan_fast.models.lofgan import LoFGAN, LoFGANConfig
from fsgan_fast.train.base import GANTrainer, RunDir, RunOptions, TrainConfig, launch
from fsgan_fast.train.loop import DistEnv, RunError, broadcast_module, constant_then_linear, load_checkpoint
from fsgan_fast.utils.images import make_grid


# Defaults of ``fsgan-fast train lofgan --preset``: "demo" trains something visible in a few minutes on a
# 2-core CPU (64 px, narrow nets, 300 steps, ~0.8 s each); "paper" is the official 128 px model and
# schedule (100k steps: a GPU job).
PRESETS = {
    "demo": {
        "size": 64,
        "gen_channels": (32, 64, 64, 64),
        "dis_channels": 16,
        "dis_max_channels": 128,
        "batch": 8,
        "iters": 300,
        "sample_every": 50,
        "ckpt_every": 100,
    },
    "paper": {
        "size": 128,
        "gen_channels": (32, 64, 128, 128, 128),
        "dis_channels": 64,
        "dis_max_channels": 1024,
        "batch": 8,
        "iters": 100_000,
        "sample_every": 1000,
        "ckpt_every": 5000,
    },
}


@dataclasses.dataclass
class LoFGANLossWeights:
    """LoFGAN's loss weights (official configs).

    D: ``adv * hinge_d + cls_d * CE(real) + gp * r1_class_penalty``;
    G: ``adv * hinge_g + cls_g * CE(fake) + local * local_reconstruction``.
    """

    adv: float = option(1.0, "weight of the hinge adversarial losses", low=0.0)
    cls_d: float = option(1.0, "weight of D's class loss on real images", low=0.0)
    cls_g: float = option(1.0, "weight of G's class loss on fakes", low=0.0)
    local: float = option(0.5, "weight of G's local reconstruction loss", low=0.0)
    gp: float = option(10.0, "weight of D's R1 penalty on the true-class logit", low=0.0)

    def __post_init__(self) -> None:
        configs.validate(self)


@dataclasses.dataclass
class LoFGANTrainConfig(TrainConfig):
    """LoFGAN's training recipe; the defaults are the official ones (batch 8, 100k iterations, Adam 1e-4).

    ``batch`` is per process under torchrun. ``ema``: decay of an EMA copy of G (0 = off).
    ``recon``: ``"nearest"`` (official) or ``"area"`` downsampling in the local reconstruction loss.
    ``decay_start``: fraction of ``iters`` after which the lr decays linearly to 0.
    """

    iters: int = option(100_000, "training steps (one D step + one G step each)", low=1)
    batch: int = option(8, "episodes per step (per process under torchrun)", low=1)
    lr: float = option(1e-4, "Adam learning rate of G and D; constant for the first decay_start of the run, "
                       "then linear decay to 0", low=0.0, low_open=True)
    betas: tuple[float, float] = option((0.9, 0.999), "Adam betas", low=0.0, high=1.0, high_open=True)
    amp: Literal["none", "bf16", "fp16"] = option(
        "none", "mixed precision: bf16 autocast (recommended on GPUs), or fp16 autocast with loss scaling (D's "
        "pass over the real images, which the R1 penalty differentiates twice, stays fp32)")
    compile: bool = option(False, "torch.compile G and D (D's penalty pass stays eager)")
    weight_decay: float = option(1e-4, "Adam weight decay", low=0.0)
    decay_start: float = option(0.5, "fraction of the run after which the lr decays linearly to 0", low=0.0, high=1.0)
    recon: Literal["nearest", "area"] = option(
        "nearest", "downsampling in the local reconstruction loss: nearest (official) or area (cell means)")
    flip: bool = option(False, "random horizontal flips of the shots (off officially)")
    weights: LoFGANLossWeights = option(help="loss weights", factory=LoFGANLossWeights, prefix="w")
    seen: int | None = option(None, "number of seen (training) classes; the rest are held out (default: 80%)", low=1)
    split: Literal["random", "first"] = option(
        "random", "seen classes: a seeded random choice, or the first --seen ones (official .npy files: flower 85, "
        "animal 119, vggface 1802)")

    def __post_init__(self) -> None:
        if isinstance(self.weights, dict):  # checkpoints and config.json hold it as a dict
            self.weights = configs.from_dict(LoFGANLossWeights, self.weights)
        super().__post_init__()


class LoFGANTrainer(GANTrainer):
    """Optimisers, lr schedule, precision and the D/G steps of one LoFGAN (on :class:`~fsgan_fast.train.base.GANTrainer`).

    ``generator`` (on the model's device) supplies the fusion randomness; share it with the
    :class:`~fsgan_fast.data.EpisodeSampler` so one checkpointed stream drives the whole run.
    ``preview [R, K, 3, S, S]`` in [-1, 1]: fixed shots whose generations :meth:`sample_grid` shows.
    """

    name = "lofgan"

    def __init__(
        self,
        model: LoFGAN,
        cfg: LoFGANTrainConfig,
        generator: torch.Generator,
        *,
        env: DistEnv = DistEnv(),
        preview: Tensor | None = None,
        preview_seed: int = 0,
    ):
        super().__init__(model, cfg, generator, env=env)
        model.to(self.device).train()
        if cfg.ema > 0 and model.gen_ema is None:
            model.enable_ema()
        broadcast_module(model, env.world_size)
        self.opt_d = self.add_optimizer("d", model.dis.parameters(), weight_decay=cfg.weight_decay)
        self.opt_g = self.add_optimizer("g", model.gen.parameters(), weight_decay=cfg.weight_decay)
        self.scaler_g, self.scaler_d = self.scalers["g"], self.scalers["d"]
        # the lr is a pure function of the step (no scheduler state), so a resumed run may change iters
        self.lr_factor = constant_then_linear(cfg.iters, int(cfg.iters * cfg.decay_start))
        # torch.compile cannot differentiate its graphs twice, so D's penalty forward stays eager
        self.gen_fwd = torch.compile(model.gen) if cfg.compile else model.gen
        self.dis_fwd_g = torch.compile(model.dis) if cfg.compile else model.dis
        self.preview = preview
        self.preview_seed = preview_seed

    # -- the two halves of an iteration, separately callable (tests replay them with fixed inputs)

    def d_losses(self, xs: Tensor, labels: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """D's losses on real episodes ``xs [B, K, 3, S, S]`` (classes ``labels [B]``) and fakes ``[B, 3, S, S]``."""
        B, K = xs.shape[:2]
        w = self.cfg.weights
        real = xs.detach().requires_grad_(True)  # 5-D: the penalty divides by B, as the official code does
        if self.precision.mode == "fp16":
            # The penalty's input gradients (of a mean over B*K logits) and their double backward fall below
            # fp16's range, and loss scaling cannot serve both directions at once: under fp16 the real
            # images go through D in fp32 (as in the official code), the fakes in fp16.
            adv_r, cls_r = self.model.dis(real.flatten(0, 1))
            with self.precision.autocast():
                adv_f, cls_f = self.model.dis(fake.detach().to(real.dtype))
            adv, cls = torch.cat([adv_r.float(), adv_f.float()]), torch.cat([cls_r.float(), cls_f.float()])
        else:
            with self.precision.autocast():
                adv, cls = self.model.dis(torch.cat([real.flatten(0, 1), fake.detach().to(real.dtype)]))
            adv, cls = adv.float(), cls.float()
        labels_k = labels.repeat_interleave(K)
        cls_real = cls[: B * K]
        out = {
            "d_adv": hinge_d_loss(adv[: B * K], adv[B * K :]),
            "d_cls": classification_loss(cls_real, labels_k),
            "d_gp": r1_class_penalty(real, cls_real, labels_k),
        }
        out["d_total"] = w.adv * out["d_adv"] + w.cls_d * out["d_cls"] + w.gp * out["d_gp"]
        return out

    def _drawn_fusion(self, xs: Tensor) -> dict:
        """With a compiled G, the fusion's randomness is drawn here, eagerly: random ops taking a generator
        break torch.compile's graph. Same generator, same calls, so the same draws as inside G."""
        if not self.cfg.compile:
            return {}
        B, K, f = xs.shape[0], xs.shape[1], self.model.cfg.feature_size
        base, positions, alpha = self.model.gen.fusion.sample(B, K, f, f, xs.device, self.generator)
        return dict(base=base, positions=positions, alpha=alpha, check_indices=False)

    def g_losses(self, xs: Tensor, labels: Tensor, **fusion: Tensor) -> dict[str, Tensor]:
        """G's losses; ``fusion`` may fix the fusion's ``base`` / ``positions`` / ``alpha`` (else drawn)."""
        w = self.cfg.weights
        fusion = fusion or self._drawn_fusion(xs)
        with self.precision.autocast():
            fake, fused = self.gen_fwd(xs, self.generator, **fusion)
            adv, cls = self.dis_fwd_g(fake)
        out = {
            "g_adv": hinge_g_loss(adv.float()),
            "g_cls": classification_loss(cls.float(), labels),
            "g_local": local_reconstruction_loss(xs, fake.float(), fused, self.cfg.recon),
        }
        out["g_total"] = w.adv * out["g_adv"] + w.cls_g * out["g_cls"] + w.local * out["g_local"]
        return out

    def train_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        xs, labels = batch
        self.set_lr(self.cfg.lr * self.lr_factor(self.step))
        with torch.no_grad(), self.precision.autocast():
            fake, _ = self.gen_fwd(xs, self.generator, **self._drawn_fusion(xs))
        d = self.d_losses(xs, labels, fake)
        self.optimizer_step("d", d["d_total"])
        self.model.dis.requires_grad_(False)  # G's step needs no D gradients
        try:
            g = self.g_losses(xs, labels)
            self.optimizer_step("g", g["g_total"])
        finally:
            self.model.dis.requires_grad_(True)
        self.update_ema()
        self.step += 1
        return {k: v.detach() for k, v in {**d, **g}.items()}

    def lr(self) -> float:
        """The lr of the most recent step."""
        return self.cfg.lr * self.lr_factor(max(self.step - 1, 0))

    @torch.no_grad()
    def sample_grid(self, n: int = 6) -> Tensor:
        """One row per preview episode: its K shots, then ``n`` generations (EMA G when enabled)."""
        if self.preview is None:
            raise ValueError("LoFGANTrainer was built without preview shots")
        g = torch.Generator(self.generator.device).manual_seed(self.preview_seed)  # the same draws every time
        rows = [torch.cat([shots, self.model.generate(shots, n, g)]) for shots in self.preview]
        return make_grid(torch.cat(rows).float(), nrow=self.preview.shape[1] + n)


# ---------------------------------------------------------------------------------------------------
# A whole run


def load_lofgan(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoFGAN:
    """The LoFGAN (G, D and EMA G when trained with one) of a checkpoint, in eval mode."""
    from fsgan_fast.models.registry import model_from_state

    state = load_checkpoint(path, "lofgan")
    return model_from_state(state, source=repr(str(path))).to(device).eval()


def preview_shots(data: ImageClasses, classes: list[int], shots: int, seed: int) -> Tensor:
    """``[len(classes), K, 3, S, S]`` in [-1, 1]: K distinct random images of each class (seeded)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for c in classes:
        imgs = data.class_images(c)
        rows.append(to_model_range(imgs[torch.randperm(len(imgs), generator=g)[:shots]].cpu()))
    return torch.stack(rows)


def _class_split(path: Path, names: list[str], resume: bool, cfg: LoFGANTrainConfig) -> ClassSplit:
    if resume and path.exists():
        try:
            return ClassSplit.load(path, names)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise RunError(f"{str(path)!r} is damaged or does not fit the data ({e}); restore it, or start a new run "
                           "(the split decides which classes the checkpoint was trained on)") from None
    return split_classes(names, cfg.seen, mode=cfg.split, seed=cfg.seed)


def train_run(run: RunOptions, model_cfg: LoFGANConfig, train_cfg: LoFGANTrainConfig) -> Path:
    """A whole LoFGAN run (:func:`fsgan_fast.train.base.launch`): data, split, model and trainer, then the loop.

    The seen/unseen class split is drawn once (``train_cfg.split``: ``"random"`` with the seed, or
    ``"first"`` for the official ``.npy`` files) and saved as ``out/split.json``; resuming reuses it.
    ``model_cfg.n_classes`` is set to the number of seen classes. Returns the checkpoint path. Under
    ``torchrun`` every process runs this; each draws its own episodes (seed + rank), rank 0 writes files.
    """

    def setup(env: DistEnv, dev: torch.device, run_dir: RunDir):
        classes = load_classes(run.data, model_cfg.size, seed=train_cfg.seed)
        class_split = _class_split(run_dir.path / "split.json", classes.names, run.resume is not None, train_cfg)
        train_data = classes.select(class_split.seen)
        train_data.check_shots(model_cfg.shots)
        cfg = dataclasses.replace(model_cfg, n_classes=train_data.num_classes)
        # the same initial weights on every process; a different episode stream per process
        torch.manual_seed(train_cfg.seed)
        model = LoFGAN(cfg)
        generator = torch.Generator(dev).manual_seed(train_cfg.seed + env.rank)
        sampler = EpisodeSampler(train_data.to(dev), train_cfg.batch, cfg.shots, generator=generator,
                                 flip=train_cfg.flip)
        # preview: up to 4 seen classes, then up to 4 unseen ones (few-shot generalisation at a glance)
        seed = train_cfg.seed
        rows = [preview_shots(train_data, list(range(min(4, train_data.num_classes))), cfg.shots, seed)]
        unseen = classes.select(class_split.unseen) if class_split.unseen else None
        if unseen is not None:
            usable = [c for c in range(unseen.num_classes) if unseen.counts[c] >= cfg.shots][:4]
            if usable:
                rows.append(preview_shots(unseen, usable, cfg.shots, seed))
        trainer = LoFGANTrainer(model, train_cfg, generator, env=env, preview=torch.cat(rows).to(dev),
                                preview_seed=seed)
        return trainer, sampler, {"split.json": json.dumps(class_split.to_dict(), indent=1)}

    return launch(run, train_cfg, setup)


def train_lofgan(
    data: str,
    out: str | os.PathLike,
    model_cfg: LoFGANConfig,
    train_cfg: LoFGANTrainConfig,
    *,
    device: str | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **train_overrides,
) -> Path:
    """Train LoFGAN on ``data`` (``"builtin"``, a ``.npy`` file or a folder of class folders) into ``out``.

    The Python form of ``fsgan-fast train lofgan``: :func:`train_run` with the run options spelled out.
    ``train_overrides`` replace fields of ``train_cfg`` (``seed=``, ``seen=``, ``split=``, ``log_every=``,
    ``sample_every=``, ``ckpt_every=``). A resumed run keeps the checkpoint's model config.
    """
    if train_overrides:
        train_cfg = dataclasses.replace(train_cfg, **train_overrides)
    if resume is not None:  # the architecture comes from the checkpoint
        model_cfg = LoFGANConfig.from_dict(load_checkpoint(resume, "lofgan")["trainer"]["config"])
    run = RunOptions(data=str(data), out=str(out), resume=None if resume is None else str(resume),
                     overwrite=overwrite, device=device, progress=progress)
    return train_run(run, model_cfg, train_cfg)


__all__ = ["PRESETS", "LoFGANLossWeights", "LoFGANTrainConfig", "LoFGANTrainer", "load_lofgan", "preview_shots",
           "train_lofgan", "train_run"]
