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

:func:`train_lofgan` builds the whole run (data, split, model, trainer) and calls :func:`fit`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from fsgan_fast.data import ClassSplit, EpisodeSampler, ImageClasses, load_classes, split_classes, to_model_range
from fsgan_fast.losses import (
    RECON_MODES,
    LoFGANLossWeights,
    classification_loss,
    hinge_d_loss,
    hinge_g_loss,
    local_reconstruction_loss,
    r1_class_penalty,
)
from fsgan_fast.models.lofgan import LoFGAN, LoFGANConfig
from fsgan_fast.train.loop import (
    AMP_MODES,
    DistEnv,
    LoopConfig,
    Precision,
    broadcast_module,
    constant_then_linear,
    ema_update,
    fit,
    load_checkpoint,
    optimizer_step,
    setup_distributed,
)
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
class LoFGANTrainConfig:
    """Optimisation settings; the defaults are the official ones (batch 8, 100k iterations).

    ``batch`` is per process under torchrun. ``ema``: decay of an EMA copy of G (0 = off).
    ``recon``: ``"nearest"`` (official) or ``"area"`` downsampling in the local reconstruction loss.
    ``decay_start``: fraction of ``iters`` after which the lr decays linearly to 0.
    """

    iters: int = 100_000
    batch: int = 8
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    decay_start: float = 0.5
    amp: str = "none"
    ema: float = 0.0
    recon: str = "nearest"
    flip: bool = False
    compile: bool = False
    weights: LoFGANLossWeights = dataclasses.field(default_factory=LoFGANLossWeights)

    def __post_init__(self) -> None:
        if isinstance(self.weights, dict):
            self.weights = LoFGANLossWeights(**self.weights)
        self.betas = tuple(self.betas)
        if self.batch < 1 or self.iters < 1:
            raise ValueError(f"batch and iters must be >= 1, got {self.batch} and {self.iters}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema decay must lie in [0, 1) (0 = off), got {self.ema}")
        if not 0.0 <= self.decay_start <= 1.0:
            raise ValueError(f"decay_start must lie in [0, 1], got {self.decay_start}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.recon not in RECON_MODES:
            raise ValueError(f"recon must be one of {RECON_MODES}, got {self.recon!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class LoFGANTrainer:
    """Optimisers, lr schedule, precision and the D/G steps of one LoFGAN (a :class:`~fsgan_fast.train.loop.Trainer`).

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
        self.model, self.cfg, self.generator, self.env = model, cfg, generator, env
        device = generator.device
        model.to(device).train()
        if cfg.ema > 0 and model.gen_ema is None:
            model.enable_ema()
        broadcast_module(model, env.world_size)

        def adam(params):
            # fused: one kernel for all of a net's parameters on the GPU (D has dozens of tensors)
            return torch.optim.Adam(
                params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None
            )

        self.opt_g, self.opt_d = adam(model.gen.parameters()), adam(model.dis.parameters())
        # the lr is a pure function of the step (no scheduler state), so a resumed run may change iters
        self.lr_factor = constant_then_linear(cfg.iters, int(cfg.iters * cfg.decay_start))
        self.step = 0  # iterations done
        self.precision = Precision(cfg.amp, device)
        self.scaler_g, self.scaler_d = self.precision.scaler(), self.precision.scaler()
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
        lr = self.cfg.lr * self.lr_factor(self.step)
        for opt in (self.opt_d, self.opt_g):
            for group in opt.param_groups:
                group["lr"] = lr
        with torch.no_grad(), self.precision.autocast():
            fake, _ = self.gen_fwd(xs, self.generator, **self._drawn_fusion(xs))
        d = self.d_losses(xs, labels, fake)
        optimizer_step(d["d_total"], self.opt_d, self.scaler_d, self.env.world_size)
        self.model.dis.requires_grad_(False)  # G's step needs no D gradients
        try:
            g = self.g_losses(xs, labels)
            optimizer_step(g["g_total"], self.opt_g, self.scaler_g, self.env.world_size)
        finally:
            self.model.dis.requires_grad_(True)
        if self.model.gen_ema is not None:
            ema_update(self.model.gen_ema, self.model.gen, self.cfg.ema)
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

    def state_dict(self) -> dict:
        return {
            "config": self.model.cfg.to_dict(),
            "train": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "step": self.step,
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self.model.cfg.to_dict():
            raise ValueError(
                f"the checkpoint's model config {state['config']} differs from this model's {self.model.cfg.to_dict()}"
            )
        model_state = state["model"]
        if not any(k.startswith("gen_ema.") for k in model_state):
            self.model.gen_ema = None  # the checkpoint has no EMA: start one from its G below if asked
        self.model.load_state_dict(model_state)
        if self.cfg.ema > 0 and self.model.gen_ema is None:
            self.model.enable_ema()
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])


# ---------------------------------------------------------------------------------------------------
# A whole run


def load_lofgan(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoFGAN:
    """The LoFGAN (G, D and EMA G when trained with one) of a checkpoint, in eval mode."""
    state = load_checkpoint(path, "lofgan")
    model = LoFGAN(LoFGANConfig.from_dict(state["trainer"]["config"]))
    model.load_state_dict(state["trainer"]["model"])
    return model.to(device).eval()


def preview_shots(data: ImageClasses, classes: list[int], shots: int, seed: int) -> Tensor:
    """``[len(classes), K, 3, S, S]`` in [-1, 1]: K distinct random images of each class (seeded)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for c in classes:
        imgs = data.class_images(c)
        rows.append(to_model_range(imgs[torch.randperm(len(imgs), generator=g)[:shots]].cpu()))
    return torch.stack(rows)


def train_lofgan(
    data: str,
    out: str | os.PathLike,
    model_cfg: LoFGANConfig,
    train_cfg: LoFGANTrainConfig,
    *,
    seen: int | None = None,
    split: str = "random",
    seed: int = 0,
    device: str | None = None,
    resume: str | os.PathLike | None = None,
    log_every: int = 10,
    sample_every: int = 500,
    ckpt_every: int = 1000,
    progress: bool = True,
) -> Path:
    """Train LoFGAN on ``data`` (``"builtin"``, a ``.npy`` file or a folder of class folders) into ``out``.

    The seen/unseen class split is drawn once (``split``: ``"random"`` with ``seed``, or ``"first"``
    for the official ``.npy`` files) and saved as ``out/split.json``; resuming reuses it.
    ``model_cfg.n_classes`` is set to the number of seen classes. ``out/config.json`` records the
    settings. Returns the checkpoint path. Under ``torchrun`` every process runs this; each draws
    its own episodes (seed + rank) and rank 0 writes the files.
    """
    env, dev = setup_distributed(device)
    out = Path(out)
    if resume is not None:  # the architecture comes from the checkpoint
        model_cfg = LoFGANConfig.from_dict(load_checkpoint(resume, "lofgan")["trainer"]["config"])
    classes = load_classes(data, model_cfg.size, seed=seed)
    split_path = out / "split.json"
    if resume is not None and split_path.exists():
        class_split = ClassSplit.load(split_path, classes.names)
    else:
        class_split = split_classes(classes.names, seen, mode=split, seed=seed)
    train_data = classes.select(class_split.seen)
    train_data.check_shots(model_cfg.shots)
    model_cfg = dataclasses.replace(model_cfg, n_classes=train_data.num_classes)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        class_split.save(split_path)
        settings = {"data": data, "seed": seed, "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
                    "world_size": env.world_size}
        (out / "config.json").write_text(json.dumps(settings, indent=1))

    # the same initial weights on every process; a different episode stream per process
    torch.manual_seed(seed)
    model = LoFGAN(model_cfg)
    generator = torch.Generator(dev).manual_seed(seed + env.rank)
    sampler = EpisodeSampler(
        train_data.to(dev), train_cfg.batch, model_cfg.shots, generator=generator, flip=train_cfg.flip
    )
    # preview: up to 4 seen classes, then up to 4 unseen ones (few-shot generalisation at a glance)
    seen_rows = preview_shots(train_data, list(range(min(4, train_data.num_classes))), model_cfg.shots, seed)
    unseen = classes.select(class_split.unseen) if class_split.unseen else None
    rows = [seen_rows]
    if unseen is not None:
        usable = [c for c in range(unseen.num_classes) if unseen.counts[c] >= model_cfg.shots][:4]
        if usable:
            rows.append(preview_shots(unseen, usable, model_cfg.shots, seed))
    trainer = LoFGANTrainer(model, train_cfg, generator, env=env, preview=torch.cat(rows).to(dev), preview_seed=seed)
    loop = LoopConfig(out, train_cfg.iters, log_every=log_every, sample_every=sample_every, ckpt_every=ckpt_every,
                      progress=progress)
    fit(trainer, sampler, loop, env, resume=resume)
    return out / "checkpoint.pt"


__all__ = ["PRESETS", "LoFGANTrainConfig", "LoFGANTrainer", "load_lofgan", "preview_shots", "train_lofgan"]
