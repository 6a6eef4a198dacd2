"""Training Few-shot SMIS: invert the shots, build prototypes, train the encoder on pseudo labels (ALGORITHMS.md §4).

Two stages of the shared loop (:class:`SMISTrainer`):

1. ``invert`` (``--invert-steps``, reference 2000): the shots' W+ codes, initialised as ``latent_avg + N(0, 1) /
   sqrt(style_dim)``, are optimised (Ranger, ``--invert-lr`` 1) to reproduce the photos through the frozen prior with
   fresh noise maps every step (the reference; ``--invert-noise fixed`` uses the prior's fixed maps): per shot
   ``pixel_weight * MSE + perceptual_weight * LPIPS`` (1 and 0.8), on images average-pooled to 256 px when larger.
   LPIPS is fsgan_fast's VGG16 LPIPS (the reference uses AlexNet's, whose weights we do not ship); without its
   weights (:mod:`fsgan_fast.perceptual` says where they come from) ``--perceptual auto`` falls back to the pixel
   loss alone and logs why. Each shot keeps its best code, checked every ``--invert-check``
   (50) steps and at the last step. At the stage's last step the prototypes are built from the best codes'
   matching features (:func:`fsgan_fast.models.smis.dense_prototypes`, or every annotated vector with ``--sparse``)
   and stored in the checkpoint (with a fresh noise draw, as the reference, or the fixed maps).
2. ``encoder`` (``--iters``, reference 100000, batch 2): per step, ``z ~ N(0, I)`` -> ``w`` -> the prior's image and
   features with fresh noise; pseudo masks from the prototypes (dense: nearest prototype; sparse: top-``--topk``
   matching with cosine > ``--threshold``, many-to-one), nearest-upsampled to the encoder's input side (256 px at
   most, as the reference); the encoder's W+ for the one-hot mask against ``w`` (broadcast to every layer) by MSE:
   the reference's only loss. ``--image-weight`` adds an image loss (pixel MSE, plus LPIPS when it is available)
   between the prior's image of the predicted W+ and the sample, back-propagated through the frozen prior.

Optimiser: Ranger as pSp/Fewshot-SMIS use it (:class:`Ranger`: RAdam with betas (0.95, 0.999), eps 1e-5 and the
rectification threshold 5, gradient centralisation of every multi-dimensional gradient, Lookahead k=6, alpha=0.5),
written here; ``--optim adam`` uses torch's Adam with the same betas instead.

Sample grids (``RUN/samples/step_*.png``) show, per shot, photo | mask | the current inversion (stage 1) or the
encoding of its mask (stage 2), and in stage 2 four fixed prior samples as pseudo mask | sample | the encoding of
the pseudo mask; ``RUN/samples/pseudo_masks_*.png`` holds eight samples over their pseudo masks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.data.episodes import to_model_range
from fsgan_fast.data.mask_pairs import MaskPairs, colorize, load_pairs
from fsgan_fast.models.smis import (
    SMIS,
    SMISConfig,
    dense_prototypes,
    dense_pseudo_labels,
    one_hot,
    resize_ids,
    sparse_prototypes,
    sparse_pseudo_labels,
)
from fsgan_fast.train.base import GANTrainer, RunDir, RunOptions, Stage, TrainConfig, launch
from fsgan_fast.train.loop import CheckpointError, DistEnv, RunError, broadcast_module, load_checkpoint
from fsgan_fast.utils.images import make_grid, save_image

log = logging.getLogger("fsgan_fast")

# "demo": a random-init 64 px prior with 64-channel convs and a 4-unit encoder; the pipeline end to end in a few
# minutes on a 2-core CPU. "paper": the reference settings (a GPU job, with the prior given by --stylegan).
PRESETS = {
    "demo": {
        "stylegan_size": 64,
        "stylegan_style_dim": 16,  # with few styles the pseudo masks say much about w: the loss can fall
        "stylegan_n_mlp": 4,
        "stylegan_channel_multiplier": 1,
        "stylegan_channel_max": 64,
        "encoder_blocks": (1, 1, 1, 1),
        "encoder_widths": (16, 32, 64, 64),
        "shots": 1,
        "invert_steps": 150,
        "invert_lr": 0.1,
        "iters": 500,
        "batch": 8,
        "lr": 3e-3,
        "mean_latent": 4096,
        "log_every": 10,
        "sample_every": 125,
        "ckpt_every": 250,
    },
    "paper": {
        "stylegan_style_dim": 512,
        "stylegan_n_mlp": 8,
        "stylegan_channel_multiplier": 2,
        "encoder_blocks": (3, 4, 14, 3),
        "encoder_widths": (64, 128, 256, 512),
        "invert_steps": 2000,
        "invert_lr": 1.0,
        "perceptual": "lpips",
        "iters": 100_000,
        "batch": 2,
        "lr": 1e-4,
        "mean_latent": 100_000,
        "sample_every": 1000,
        "ckpt_every": 5000,
    },
}

PREVIEW_SAMPLES = 4  # prior samples in the sample grid
PSEUDO_PREVIEWS = 8  # samples in pseudo_masks_*.png
PREVIEW_TILE = 256
INVERSION_SIDE = 256  # the reference compares inversions on 256 px average-pooled images


@dataclasses.dataclass
class SMISTrainConfig(TrainConfig):
    """Few-shot SMIS's recipe; the defaults are the reference's (see the module docstring)."""

    stylegan: str | None = option(None, "rosinality StyleGAN2 checkpoint (.pt holding 'g_ema' [and 'latent_avg'], or a "
                                  "pSp checkpoint); its size and widths replace the --stylegan-* options. Default: a "
                                  "random-init prior of the --stylegan-* options (a plumbing demo)", metavar="CKPT")
    pairs: str | None = option(None, "labelled pairs folder DIR/images/<stem>.png + DIR/masks/<stem>.png (class ids); "
                               "the same as --data DIR", metavar="DIR")
    shots: int = option(1, "labelled pairs used, the first ones in stem order (the paper: 1 or 5)", low=1)
    sparse: bool = option(False, "the masks are sparse annotations (scribbles, landmarks; id 0 = not annotated): "
                          "keep every annotated feature vector and match by top-k")
    iters: int = option(100_000, "encoder training steps (after --invert-steps inversion steps)", low=1)
    batch: int = option(2, "prior samples (pseudo-labelled masks) per encoder step", low=1)
    lr: float = option(1e-4, "encoder learning rate", low=0.0, low_open=True)
    betas: tuple[float, float] = option((0.95, 0.999), "betas of Ranger / Adam (Ranger's: 0.95, 0.999)", low=0.0,
                                        high=1.0, high_open=True)
    optim: Literal["ranger", "adam"] = option("ranger", "optimiser of the inversion and the encoder: ranger (RAdam + "
                                              "Lookahead + gradient centralisation, the reference) or adam")
    invert_steps: int = option(2000, "inversion steps of the shots (stage 1)", low=1)
    invert_lr: float = option(1.0, "inversion learning rate (the reference's Ranger lr 1)", low=0.0, low_open=True)
    invert_check: int = option(50, "steps between checks that keep each shot's best code", low=1)
    invert_noise: Literal["random", "fixed"] = option(
        "random", "StyleGAN2 noise of the inversion and of the prototypes' features: fresh maps per step (the "
                  "reference) or the prior's fixed maps")
    pixel_weight: float = option(1.0, "weight of the pixel MSE of the inversion", low=0.0)
    perceptual: Literal["auto", "lpips", "none"] = option(
        "auto", "perceptual loss of the inversion (and of --image-weight): lpips (VGG16 LPIPS; refuses without its "
                "weights), auto (lpips when its weights are found, else none, logged) or none")
    perceptual_weight: float = option(0.8, "weight of LPIPS in the inversion (and in the image loss)", low=0.0)
    vgg: str | None = option(None, "VGG16 ImageNet weights for LPIPS (torchvision's vgg16-397923af.pth); default: "
                             "$FSGAN_FAST_VGG16, then torch hub's cache", metavar="PATH")
    image_weight: float = option(0.0, "weight of an image loss between the prior's images of the predicted and the "
                                 "sampled latents (0: the reference's latent MSE alone)", low=0.0)
    topk: int = option(3, "sparse matching: pixels taken per annotated vector and image (the reference: 3)", low=1,
                       high=16)
    threshold: float = option(0.5, "sparse matching: keep matches with cosine above this (the reference: 0.5)",
                              low=0.0, high=1.0, high_open=True)
    mean_latent: int = option(100_000, "mapped samples averaged for latent_avg when the checkpoint has none (pSp: 1e5)",
                              low=1)
    encoder_weights: str | None = option(None, "IR-SE backbone weights for the encoder body (pSp's model_ir_se50.pth, "
                                         "whose RGB input layer is skipped); default: random init", metavar="PATH")

    # inputs and reporting a resumed run may change; the recipe may not
    RESUMABLE: ClassVar[frozenset[str]] = TrainConfig.RESUMABLE | {"stylegan", "pairs", "vgg", "encoder_weights"}
    # the train option that names the run's data, so that the CLI may take it in place of --data
    DATA_OPTION: ClassVar[str] = "pairs"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ema:
            raise configs.ConfigError("ema: SMIS trains an encoder to a frozen prior; there is no generator to average "
                                      "(leave --ema unset)")


# ---------------------------------------------------------------------------------------------------
# Ranger


class Ranger(torch.optim.Optimizer):
    """RAdam + Lookahead + gradient centralisation, the optimiser of pSp and Fewshot-SMIS (their ``ranger.py``).

    Per step and parameter ``p`` with gradient ``g``: ``g`` minus its mean over all but the first dimension when it
    has more than one (gradient centralisation); Adam moments with ``betas``; the RAdam rectification (SMA length
    ``rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)``, ``rho_inf = 2 / (1 - beta2) - 1``): above ``threshold`` the
    adaptive step ``lr * r_t / (1 - beta1^t) * m / (sqrt(v) + eps)`` with ``r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf /
    ((rho_inf - 4)(rho_inf - 2) rho_t) * (1 - beta2^t))``, else the momentum step ``lr * m / (1 - beta1^t)``;
    decoupled weight decay ``p -= lr * wd * p``. Every ``k`` steps Lookahead moves the slow copy ``alpha`` of the way
    to ``p`` and resets ``p`` to it. The slow copies live in the optimiser state, so ``state_dict`` resumes exactly.
    """

    def __init__(self, params, lr: float = 1e-3, *, alpha: float = 0.5, k: int = 6, threshold: float = 5.0,
                 betas: tuple[float, float] = (0.95, 0.999), eps: float = 1e-5, weight_decay: float = 0.0,
                 centralize: bool = True):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        defaults = dict(lr=lr, alpha=alpha, k=k, threshold=threshold, betas=tuple(betas), eps=eps,
                        weight_decay=weight_decay, centralize=centralize)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = float(group["lr"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                if group["centralize"] and grad.dim() > 1:
                    grad = grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                    state["slow_buffer"] = p.detach().float().clone()
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                beta2_t = beta2**t
                rho_inf = 2 / (1 - beta2) - 1
                rho_t = rho_inf - 2 * t * beta2_t / (1 - beta2_t)
                value = p.detach().float()
                if group["weight_decay"]:
                    value.add_(value, alpha=-group["weight_decay"] * lr)
                if rho_t > group["threshold"]:
                    rect = math.sqrt((1 - beta2_t) * (rho_t - 4) / (rho_inf - 4) * (rho_t - 2) / rho_t
                                     * rho_inf / (rho_inf - 2))
                    step_size = rect / (1 - beta1**t)
                    value.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size * lr)
                else:
                    value.add_(exp_avg, alpha=-lr / (1 - beta1**t))
                if t % group["k"] == 0:
                    slow = state["slow_buffer"]
                    slow.add_(value - slow, alpha=group["alpha"])
                    value.copy_(slow)
                p.copy_(value)
        return loss


# ---------------------------------------------------------------------------------------------------
# Losses


def build_perceptual(kind: str, vgg: str | None) -> nn.Module | None:
    """LPIPS (``kind="lpips"``; :class:`RunError` without its weights), None (``"none"``), or ``"auto"``: LPIPS when
    its weights are found, else None with a logged warning that says where to get them."""
    from fsgan_fast.perceptual import LPIPS, PerceptualWeightsMissing, lpips_available

    if kind == "none":
        return None
    if kind == "auto":
        reason = lpips_available(vgg)
        if reason is not None:
            log.warning("SMIS: --perceptual auto: the inversion uses the pixel loss alone. %s", reason)
            return None
    try:
        return LPIPS(vgg)
    except PerceptualWeightsMissing as e:
        raise RunError(f"--perceptual {kind}: {e}") from None


def image_losses(fake: Tensor, real: Tensor, perceptual: nn.Module | None, pixel_weight: float,
                 perceptual_weight: float) -> dict[str, Tensor]:
    """Per-image ``pixel`` MSE, ``perceptual`` LPIPS (when given) and their weighted ``total`` (``[B]`` each), on
    images average-pooled to 256 px when larger (the reference's comparison size)."""
    if fake.shape[-1] > INVERSION_SIDE:
        fake, real = F.adaptive_avg_pool2d(fake, INVERSION_SIDE), F.adaptive_avg_pool2d(real, INVERSION_SIDE)
    fake = fake.float()
    out = {"pixel": (fake - real).pow(2).mean(dim=(1, 2, 3))}
    total = pixel_weight * out["pixel"]
    if perceptual is not None:
        out["perceptual"] = perceptual(fake, real)
        total = total + perceptual_weight * out["perceptual"]
    out["total"] = total
    return out


# ---------------------------------------------------------------------------------------------------
# The trainer


class _NoBatch:
    """The loop's sampler: SMIS's data (the shots, the prior's samples) comes from the trainer itself."""

    def sample(self) -> None:
        return None


class SMISTrainer(GANTrainer):
    """The two stages of SMIS training on :class:`~fsgan_fast.train.base.GANTrainer` (module docstring).

    ``pairs``: the shots (:class:`~fsgan_fast.data.mask_pairs.MaskPairs` at the model's size, ids below
    ``label_nc``); ``generator`` (on the model's device) draws the initial codes, every z and noise map.
    ``sample_dir``: where ``pseudo_masks_*.png`` go (None: not written).
    """

    name = "smis"

    def __init__(self, model: SMIS, cfg: SMISTrainConfig, generator: torch.Generator, pairs: MaskPairs, *,
                 env: DistEnv = DistEnv(), sample_dir: Path | None = None, preview_seed: int = 0):
        super().__init__(model, cfg, generator, env=env)
        mc = model.cfg
        if len(pairs) < 1:
            raise ValueError("pairs must hold at least one shot")
        if pairs.size != model.size:
            raise ValueError(f"the pairs are {pairs.size} px but the prior is {model.size} px")
        if pairs.sparse != cfg.sparse:
            raise ValueError(f"pairs.sparse={pairs.sparse} but the train config says sparse={cfg.sparse}")
        pairs.check_classes(mc.label_nc)
        model.to(self.device).train()
        broadcast_module(model, env.world_size)
        self.images = to_model_range(pairs.images.to(self.device))
        self.masks = pairs.masks.to(self.device)
        self.names = list(pairs.names)
        shots, nl, d = len(pairs), model.n_latent, model.style_dim
        # from the seed alone, not the rank's stream: every process inverts the same shots from the same start
        init = torch.randn(shots, nl, d, generator=torch.Generator().manual_seed(cfg.seed)) / math.sqrt(d)
        self.codes = nn.Parameter(model.latent_avg.detach().unsqueeze(0) + init.to(self.device))
        self.best_codes = self.codes.detach().clone()
        self.best_loss = torch.full((shots,), math.inf, device=self.device)
        self.prototypes: dict[str, Tensor] = {}
        self.perceptual = build_perceptual(cfg.perceptual, cfg.vgg)
        if self.perceptual is not None:
            self.perceptual.to(self.device)
        self.encoder_fwd = torch.compile(model.encoder) if cfg.compile else model.encoder
        self.sample_dir = sample_dir if env.is_main else None
        pg = torch.Generator().manual_seed(preview_seed)
        self.preview_z = torch.randn(max(PREVIEW_SAMPLES, PSEUDO_PREVIEWS), d, generator=pg).to(self.device)
        self.preview_seed = preview_seed

    # -- stages

    def stages(self) -> list[Stage]:
        return [Stage("invert", self.cfg.invert_steps), Stage("encoder", self.cfg.iters)]

    def _optimizer(self, key: str, params, lr: float) -> torch.optim.Optimizer:
        params = list(params)
        if self.cfg.optim == "ranger":
            opt: torch.optim.Optimizer = Ranger(params, lr=lr, betas=self.cfg.betas)
        else:
            opt = torch.optim.Adam(params, lr=lr, betas=self.cfg.betas, fused=self.device.type == "cuda" or None)
        self.optimizers[key] = opt
        self.scalers[key] = self.precision.scaler()
        return opt

    def begin_stage(self, index: int) -> None:
        super().begin_stage(index)
        if index == 0:
            self._optimizer("invert", [self.codes], self.cfg.invert_lr)
        else:
            self.optimizers.pop("invert", None)  # the codes are done: their optimiser leaves the checkpoints
            self.scalers.pop("invert", None)
            self._optimizer("encoder", self.model.encoder.parameters(), self.cfg.lr)

    # -- state beyond networks and optimisers

    def extra_state(self) -> dict:
        return {"invert_codes": self.codes.detach().clone(), "best_codes": self.best_codes.clone(),
                "best_loss": self.best_loss.clone(), "prototypes": {k: v.clone() for k, v in self.prototypes.items()}}

    def load_extra_state(self, state: dict) -> None:
        for key in ("invert_codes", "best_codes", "best_loss", "prototypes"):
            if key not in state:
                raise CheckpointError(f"the checkpoint has no {key!r} entry (damaged, or not an SMIS checkpoint)")
        with torch.no_grad():
            self.codes.copy_(state["invert_codes"])  # in place: the inversion optimiser holds this parameter
        self.best_codes = state["best_codes"].to(self.device)
        self.best_loss = state["best_loss"].to(self.device)
        self.prototypes = {k: v.to(self.device) for k, v in state["prototypes"].items()}
        if self.stage == 1 and not self.prototypes:
            raise CheckpointError("the checkpoint is in the encoder stage but holds no prototypes")

    # -- stage 1: inversion and prototypes

    def invert_step(self) -> dict[str, Tensor]:
        first, end = self.stage_bounds()[0]
        t = self.step - first
        images = self.model.synthesize(self.codes, noise=self._invert_noise())
        losses = image_losses(images, self.images, self.perceptual, self.cfg.pixel_weight, self.cfg.perceptual_weight)
        per_shot = losses["total"].detach()
        if t % self.cfg.invert_check == 0 or self.step + 1 == end:
            better = per_shot < self.best_loss
            self.best_loss = torch.where(better, per_shot, self.best_loss)
            self.best_codes = torch.where(better.view(-1, 1, 1), self.codes.detach(), self.best_codes)
        # summed over shots: each code's gradient is that of its own inversion
        self.optimizer_step("invert", losses["total"].sum())
        out = {"invert_loss": per_shot.mean(), "invert_pixel": losses["pixel"].detach().mean(),
               "invert_best": self.best_loss.mean()}
        if "perceptual" in losses:
            out["invert_perceptual"] = losses["perceptual"].detach().mean()
        return out

    def _invert_noise(self) -> list[Tensor] | None:
        """Noise maps for the shots: a fresh draw from the run's generator, or None (the prior's fixed maps)."""
        if self.cfg.invert_noise == "fixed":
            return None
        return self.model.decoder.make_noise(len(self.images), generator=self.generator, device=self.device)

    @torch.no_grad()
    def build_prototypes(self) -> None:
        """Prototypes from the best codes' matching features (dense, or every annotated vector when sparse)."""
        mc = self.model.cfg
        _, feats = self.model.features(self.best_codes, noise=self._invert_noise(), random_noise=False)
        feats = feats.float()
        if self.cfg.sparse:
            vectors, classes = sparse_prototypes(feats, self.masks, mc.label_nc)
            self.prototypes = {"vectors": vectors, "classes": classes}
            return
        protos = dense_prototypes(feats, self.masks, mc.label_nc)
        self.prototypes = {"vectors": protos.vectors, "present": protos.present}
        absent = (~protos.present).nonzero().squeeze(1).tolist()
        if absent:
            log.warning("SMIS: class id(s) %s appear in none of the %d shot(s): the pseudo masks will never hold them",
                        absent, len(self.masks))

    # -- stage 2: pseudo labels and the encoder

    def pseudo_labels(self, feats: Tensor) -> Tensor:
        """Class ids ``[B, r, r]`` of the prior's matching features, from the stored prototypes."""
        from fsgan_fast.ops import Prototypes

        p = self.prototypes
        if self.cfg.sparse:
            return sparse_pseudo_labels(feats, p["vectors"], p["classes"], self.model.cfg.label_nc,
                                        k=self.cfg.topk, threshold=self.cfg.threshold)
        return dense_pseudo_labels(feats, Prototypes(p["vectors"], p["present"]))

    def sample_prior(self, z: Tensor, noise: list[Tensor] | None, side: int | None = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """``(w [B, D], images, pseudo masks [B, side, side])`` of latents ``z`` (the prior's fixed noise maps when
        ``noise`` is None); ``side`` defaults to the image size."""
        model = self.model
        with torch.no_grad(), self.precision.autocast():
            w = model.decoder.get_latent(z)
            images, feats = model.features(w, noise=noise, random_noise=False)
        masks = resize_ids(self.pseudo_labels(feats.float()), side or model.size)
        return w.float(), images.float(), masks

    def encode(self, masks: Tensor) -> Tensor:
        codes = self.encoder_fwd(one_hot(masks, self.model.cfg.label_nc))
        if self.model.cfg.start_from_latent_avg:
            codes = codes + self.model.latent_avg.to(codes.dtype)
        return codes

    def encoder_step(self, z: Tensor | None = None, noise: list[Tensor] | None = None) -> dict[str, Tensor]:
        """One encoder step on the prior's samples of ``z [B, style_dim]`` with the noise maps ``noise`` (both drawn
        from the run's generator when None; tests replay fixed batches)."""
        cfg, model, g = self.cfg, self.model, self.generator
        if z is None:
            z = torch.randn(cfg.batch, model.style_dim, generator=g, device=g.device).to(self.device)
        if noise is None:
            noise = model.decoder.make_noise(z.shape[0], generator=g, device=self.device)
        # nearest-upsampled straight to the encoder's input side (256 at most), as the reference
        w, images, masks = self.sample_prior(z, noise, model.encoder.input_size)
        with self.precision.autocast():
            pred = self.encode(masks)
        latent = F.mse_loss(pred.float(), w.unsqueeze(1).expand(-1, model.n_latent, -1))
        out = {"latent_mse": latent}
        total = latent
        if cfg.image_weight > 0:
            with self.precision.autocast():
                rec = model.synthesize(pred, noise=noise)
            losses = image_losses(rec, images, self.perceptual, 1.0, cfg.perceptual_weight)
            out["image_mse"] = losses["pixel"].mean()
            if "perceptual" in losses:
                out["image_perceptual"] = losses["perceptual"].mean()
            total = total + cfg.image_weight * losses["total"].mean()
        self.optimizer_step("encoder", total)
        out = {k: v.detach() for k, v in out.items()}
        out["total"] = total.detach()
        # what the pseudo masks hold: classes per mask (dense) or the labelled fraction (sparse)
        if cfg.sparse:
            out["pseudo_labelled"] = (masks > 0).float().mean()
        else:
            out["pseudo_classes"] = one_hot(masks, model.cfg.label_nc).amax(dim=(2, 3)).sum(1).mean()
        return out

    def train_step(self, _batch: None = None) -> dict[str, Tensor]:
        if self.stage == 0:
            losses = self.invert_step()
        else:
            losses = self.encoder_step()
        self.step += 1
        if self.stage == 0 and self.step == self.stage_bounds()[0][1]:
            self.build_prototypes()
        return losses

    # -- previews

    def _preview_noise(self, batch: int) -> list[Tensor]:
        g = torch.Generator(self.device).manual_seed(self.preview_seed)
        return self.model.decoder.make_noise(batch, generator=g, device=self.device)

    @torch.no_grad()
    def sample_grid(self) -> Tensor:
        """Rows of three: per shot photo | mask | inversion (stage 1) or encoding of the mask (stage 2); in stage 2
        also prior samples as pseudo mask | sample | encoding of the pseudo mask."""
        model, nc = self.model, self.model.cfg.label_nc
        was_training = model.training
        model.eval()
        try:
            masks_rgb = colorize(self.masks, nc)
            if self.stage == 0 or not self.prototypes:
                out = model.synthesize(self.codes.detach())
                cells = torch.stack([self.images, masks_rgb, out], 1).flatten(0, 1)
            else:
                enc = model.synthesize(self.encode(self.masks))
                cells = [torch.stack([self.images, masks_rgb, enc], 1).flatten(0, 1)]
                z = self.preview_z[:PREVIEW_SAMPLES]
                _, images, pseudo = self.sample_prior(z, self._preview_noise(len(z)))
                enc = model.synthesize(self.encode(pseudo))
                cells.append(torch.stack([colorize(pseudo, nc), images, enc], 1).flatten(0, 1))
                cells = torch.cat(cells)
                self._write_pseudo_masks()
        finally:
            model.train(was_training)
        cells = cells.float().clamp(-1, 1)
        if cells.shape[-1] > PREVIEW_TILE:
            cells = F.interpolate(cells, size=PREVIEW_TILE, mode="area")
        return make_grid(cells, nrow=3)

    def _write_pseudo_masks(self) -> None:
        if self.sample_dir is None:
            return
        z = self.preview_z[:PSEUDO_PREVIEWS]
        _, images, pseudo = self.sample_prior(z, self._preview_noise(len(z)))
        cells = torch.cat([images.clamp(-1, 1), colorize(pseudo, self.model.cfg.label_nc)])
        if cells.shape[-1] > PREVIEW_TILE:
            cells = F.interpolate(cells, size=PREVIEW_TILE, mode="area")
        save_image(make_grid(cells, nrow=len(z)), self.sample_dir / f"pseudo_masks_{self.step:07d}.png")


# ---------------------------------------------------------------------------------------------------
# A whole run


def _pairs_source(run: RunOptions, cfg: SMISTrainConfig) -> str:
    if cfg.pairs is None:
        return run.data
    if run.data not in (cfg.pairs, None) and os.path.abspath(run.data) != os.path.abspath(cfg.pairs):
        raise RunError(f"--data {run.data!r} and --pairs {cfg.pairs!r} name different pair sets: give one")
    return cfg.pairs


def load_prior(model_cfg: SMISConfig, path: str) -> tuple[SMISConfig, dict[str, Tensor], Tensor | None]:
    """``(model config with the checkpoint's StyleGAN2 config, the generator's state dict, its latent_avg or None)``."""
    from fsgan_fast.nn.stylegan2 import StyleGAN2Config, load_rosinality

    if not os.path.isfile(path):
        raise RunError(f"--stylegan {path!r} does not exist")
    try:
        gen, latent_avg = load_rosinality(path, lr_mlp=model_cfg.stylegan.lr_mlp)
    except (ValueError, TypeError, RuntimeError) as e:
        raise RunError(f"--stylegan {path!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    prior = StyleGAN2Config(**{f.name: getattr(gen.cfg, f.name) for f in dataclasses.fields(StyleGAN2Config)})
    if prior != model_cfg.stylegan:
        log.info("SMIS: the prior %s sets the StyleGAN2 config to %s", path, prior)
    return dataclasses.replace(model_cfg, stylegan=prior), gen.state_dict(), latent_avg


def train_run(run: RunOptions, model_cfg: SMISConfig, train_cfg: SMISTrainConfig) -> Path:
    """A whole SMIS run (:func:`fsgan_fast.train.base.launch`): prior, pairs, model, then the two stages."""

    def setup(env: DistEnv, dev: torch.device, run_dir: RunDir):
        resuming = run.resume is not None
        cfg, prior_state, latent_avg = model_cfg, None, None
        if not resuming and train_cfg.stylegan:
            cfg, prior_state, latent_avg = load_prior(cfg, train_cfg.stylegan)
        elif not resuming:
            log.warning("SMIS: no --stylegan: a random-init %d px prior; the run checks the pipeline, its images mean "
                        "nothing", cfg.size)
        source = _pairs_source(run, train_cfg)
        pairs = load_pairs(source, cfg.size, label_nc=cfg.label_nc or None, sparse=train_cfg.sparse,
                           seed=train_cfg.seed)
        if cfg.label_nc == 0:
            cfg = dataclasses.replace(cfg, label_nc=pairs.max_id() + 1)
        pairs.check_classes(cfg.label_nc)
        shots = pairs.first(train_cfg.shots)
        torch.manual_seed(train_cfg.seed)  # the same initial encoder on every process
        model = SMIS(cfg)
        if prior_state is not None:
            model.decoder.load_state_dict(prior_state)
        if train_cfg.encoder_weights and not resuming:
            _load_encoder_weights(model, train_cfg.encoder_weights)
        model.to(dev)
        if not resuming:
            if latent_avg is None:
                g = torch.Generator(dev).manual_seed(train_cfg.seed)
                latent_avg = model.decoder.mean_latent(train_cfg.mean_latent, generator=g)
            try:
                model.set_latent_avg(latent_avg.to(dev))
            except ValueError as e:
                raise RunError(f"--stylegan {train_cfg.stylegan!r}: its latent_avg does not fit: {e}") from None
        generator = torch.Generator(dev).manual_seed(train_cfg.seed + env.rank)
        trainer = SMISTrainer(model, train_cfg, generator, shots, env=env, sample_dir=run_dir.path / "samples",
                              preview_seed=train_cfg.seed)
        return trainer, _NoBatch(), {}

    return launch(run, train_cfg, setup)


def _load_encoder_weights(model: SMIS, path: str) -> None:
    from fsgan_fast.nn.psp import load_backbone

    if not os.path.isfile(path):
        raise RunError(f"--encoder-weights {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        load_backbone(model.encoder, state)
    except (ValueError, RuntimeError, OSError) as e:
        raise RunError(f"--encoder-weights {path!r}: {str(e).splitlines()[0]}") from None


def load_smis(path: str | os.PathLike, device: torch.device | str = "cpu") -> SMIS:
    """The SMIS model (prior, encoder, latent_avg) of a checkpoint, in eval mode."""
    from fsgan_fast.models.registry import model_from_state

    state = load_checkpoint(path, "smis")
    return model_from_state(state, source=repr(str(path))).to(device).eval()


def load_prototypes(path: str | os.PathLike) -> dict[str, Tensor]:
    """The prototypes a checkpoint holds (``vectors`` + ``present`` dense, ``vectors`` + ``classes`` sparse; empty
    before the inversion stage ended)."""
    return dict(load_checkpoint(path, "smis")["trainer"]["prototypes"])


def train_smis(data: str, out: str | os.PathLike, model_cfg: SMISConfig, train_cfg: SMISTrainConfig, *,
               device: str | None = None, resume: str | os.PathLike | None = None, overwrite: bool = False,
               progress: bool = True, **train_overrides) -> Path:
    """Train SMIS on ``data`` (``"builtin"`` or a pairs folder) into ``out``: the Python form of ``fsgan-fast train
    smis``. ``train_overrides`` replace fields of ``train_cfg``; a resumed run keeps the checkpoint's model config."""
    if train_overrides:
        train_cfg = dataclasses.replace(train_cfg, **train_overrides)
    if resume is not None:
        model_cfg = SMISConfig.from_dict(load_checkpoint(resume, "smis")["trainer"]["config"])
    run = RunOptions(data=str(data), out=str(out), resume=None if resume is None else str(resume),
                     overwrite=overwrite, device=device, progress=progress)
    return train_run(run, model_cfg, train_cfg)


__all__ = ["PRESETS", "Ranger", "SMISTrainConfig", "SMISTrainer", "build_perceptual", "image_losses", "load_prior",
           "load_prototypes", "load_smis", "train_run", "train_smis"]
