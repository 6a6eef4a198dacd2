"""Training SinGAN: coarse to fine, one scale per stage of the shared loop (ALGORITHMS.md §3).

Stage n trains scale n's G and D; scales below are frozen in eval mode (BatchNorm on running statistics, as the
official code after each scale). At the start of a stage (:meth:`SinGANTrainer.begin_stage`): scale n starts from
scale n-1's trained weights when the widths match; the reconstruction through the finished scales is computed once
(fixed noise z_opt: the stored map at scale 0, zeros above) and sets amp_n = 0.1 * RMSE(upsampled
reconstruction, real_n) (amp_0 = 1); fresh Adam optimisers (lr 5e-4, betas (0.5, 0.999)) for G_n and D_n.

One iteration (a loop step): one noise map for the iteration; 3 D steps, each with a fresh random image from the
finished scales: WGAN loss -mean D(real) + mean D(fake) + 0.1 * GP, the GP with one scalar interpolation weight and
the gradient norm over channels per pixel; then 3 G steps: -mean D(fake) + 10 * MSE(G(rec), real_n). Every G step
draws a **fresh** fake from the current G (the official code reuses the last D step's graph, stale after the
first step, and fails on torch >= 1.5). The lr drops 10x after 80% of a scale's iterations (1600 of 2000).

Differences from the official code, on purpose: scale 0's reconstruction noise is drawn once (the paper's fixed
z*; ``--resample-z-opt`` restores the official redraw every iteration); the resize between scales stays in float on
the device (the official code rounds through uint8 on the CPU); D's gradient penalty uses the detached fake.

``--fast`` (CUDA devices): the whole iteration (3 D + 3 G steps, their backward passes and Adam updates) is
captured once per scale in a CUDA graph and replayed; the iteration's random inputs (the noise map, the three
random images from the finished scales, the three GP weights) are drawn eagerly as in the eager mode and copied into
the graph's static input buffers, so every replay trains on fresh noise. Adam runs with ``capturable=True`` and a
tensor lr (the 10x drop is a write into it). The first iteration of a scale runs eagerly on a side stream (the
warm-up the capture needs) and counts as a training iteration.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.data.types import DatasetError
from fsgan_fast.models.singan import SinGAN, SinGANConfig
from fsgan_fast.train.base import GANTrainer, RunDir, RunOptions, Stage, TrainConfig, launch
from fsgan_fast.train.loop import DistEnv, RunError, load_checkpoint
from fsgan_fast.utils.images import make_grid, save_image

# "demo": recognisable samples in about 5 minutes on a 2-core CPU (the image shrunk to 64 px: 5 scales of
# 25..64 px, the paper's widths and losses); "paper": the paper's schedule (a GPU job).
PRESETS = {
    "demo": {"max_size": 64, "iters": 250, "sample_every": 0, "ckpt_every": 125, "log_every": 10},
    "paper": {"max_size": 250, "min_size": 25, "scale_factor": 0.75, "iters": 2000, "sample_every": 500,
              "ckpt_every": 500, "log_every": 10},
}

BUILTIN_PHOTO = "rocket"  # scikit-image's bundled photos (no download); 'builtin:NAME' picks another
PREVIEW_SAMPLES = 6


@dataclasses.dataclass
class SinGANTrainConfig(TrainConfig):
    """SinGAN's recipe; the defaults are the official ones."""

    iters: int = option(2000, "iterations per scale (each: --d-steps D steps and --g-steps G steps)", low=1)
    batch: int = option(1, "SinGAN trains on its one image: always 1", low=1, high=1)
    lr: float = option(5e-4, "Adam learning rate of G and D", low=0.0, low_open=True)
    d_steps: int = option(3, "D steps per iteration", low=1)
    g_steps: int = option(3, "G steps per iteration", low=1)
    gp_weight: float = option(0.1, "weight of the WGAN gradient penalty", low=0.0)
    rec_weight: float = option(10.0, "weight of the reconstruction loss (alpha; 100 for super-resolution)", low=0.0)
    noise_amp: float = option(0.1, "noise amplitude of a scale per unit RMSE of the upsampled reconstruction", low=0.0)
    decay_at: float = option(0.8, "fraction of a scale's iterations after which the lr drops 10x (1600 of 2000)",
                             low=0.0, high=1.0)
    resample_z_opt: bool = option(False, "redraw scale 0's reconstruction noise every iteration, keeping the last "
                                  "draw (the official code; the paper keeps one fixed draw)")
    fast: bool = option(False, "capture each scale's iteration (3 D + 3 G steps with their Adam updates) in a CUDA "
                        "graph and replay it with fresh noise (CUDA devices only)")
    sample_every: int = option(500, "iterations between sample grids (0 = at the end of each scale only)", low=0)
    ckpt_every: int = option(500, "iterations between checkpoints (0 = at the end of each scale only)", low=0)
    # SinGAN generates with the trained G itself (no EMA copy), and --fast (CUDA graphs) is its compiled path:
    # these two base options are no command-line options here, and a config file setting them is refused
    ema: float = option(0.0, cli=False)
    compile: bool = option(False, cli=False)

    # the stage boundaries are iters apart: a resumed run keeps them
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"log_every", "sample_every", "ckpt_every", "compile"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.amp != "none":
            raise configs.ConfigError("amp: SinGAN trains in fp32 (its nets are tiny and its losses need the range)")
        if self.ema:
            raise configs.ConfigError("ema: SinGAN keeps no EMA copy of G (its samples come from the trained G)")
        if self.compile:
            raise configs.ConfigError("compile: SinGAN's compiled path is --fast (each iteration as a CUDA graph)")


def gradient_penalty(dis: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor | float) -> Tensor:
    """WGAN-GP as the official code: one scalar interpolation weight ``alpha`` (U(0, 1)) for the image, the gradient
    norm taken over channels at each pixel, ``mean((|g| - 1)^2)`` over pixels."""
    x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(dis(x).sum(), x, create_graph=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


class _NoBatch:
    """The loop's sampler: SinGAN's data is the pyramid the trainer holds."""

    def sample(self) -> None:
        return None


class SinGANTrainer(GANTrainer):
    """Stages, optimisers and the iteration of SinGAN (see the module docstring).

    ``reals``: the pyramid's images ``[1, 3, h, w]``, coarsest first; ``generator`` (on the model's device) draws
    every noise map and GP weight. ``sample_dir``: where ``scale_NN.png`` goes at the end of each scale.
    """

    name = "singan"

    def __init__(self, model: SinGAN, cfg: SinGANTrainConfig, generator: torch.Generator, reals: list[Tensor], *,
                 env: DistEnv = DistEnv(), sample_dir: Path | None = None):
        super().__init__(model, cfg, generator, env=env)
        if len(reals) != model.num_scales:
            raise ValueError(f"the model has {model.num_scales} scales but the pyramid {len(reals)}")
        for n, (real, size) in enumerate(zip(reals, model.sizes)):
            if tuple(real.shape) != (1, 3, *size):
                raise ValueError(f"reals[{n}] must be [1, 3, {size[0]}, {size[1]}], got {list(real.shape)}")
        model.to(self.device)
        self.reals = [r.to(self.device, torch.float32) for r in reals]
        with torch.no_grad():
            model.real.copy_(self.reals[-1])
        self.sample_dir = sample_dir if env.is_main else None
        self.rec_prev: Tensor | None = None  # the reconstruction of scale n-1 (fixed while scale n trains)
        self.preview_seed = cfg.seed
        if cfg.fast and self.device.type != "cuda":
            raise RunError("--fast captures CUDA graphs: it needs a CUDA device (train without it on the CPU)")
        self.fast = cfg.fast
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple | None = None
        self._static_losses: dict[str, Tensor] = {}

    # -- stages

    def stages(self) -> list[Stage]:
        return [Stage(f"scale {n} ({h}x{w})", self.cfg.iters) for n, (h, w) in enumerate(self.model.sizes)]

    def begin_stage(self, index: int) -> None:
        super().begin_stage(index)
        m = self.model
        for k in range(index):  # finished scales: frozen, BatchNorm on running statistics
            for net in (m.gens[k], m.dis[k]):
                net.eval().requires_grad_(False)
        if index == 0 and not bool((m.z_opt0 != 0).any()):
            with torch.no_grad():
                m.z_opt0.copy_(m.draw_noise(0, generator=self.generator))
        m.initialise_from_previous(index)
        for net in (m.gens[index], m.dis[index]):
            net.train().requires_grad_(True)
        self._graph, self._static, self._static_losses = None, None, {}  # a new scale: a new graph
        self._optimizer("g", m.gens[index].parameters())
        self._optimizer("d", m.dis[index].parameters())
        self.prepare_stage()

    def _optimizer(self, key: str, params) -> None:
        if not self.fast:
            self.add_optimizer(key, params)
            return
        # capturable Adam with its lr in a device tensor: a graph replays the update, and the lr drop is a write
        self.optimizers[key] = torch.optim.Adam(list(params), lr=torch.tensor(self.cfg.lr, device=self.device),
                                                betas=self.cfg.betas, capturable=True, foreach=True)
        self.scalers[key] = self.precision.scaler()

    def set_lr(self, lr: float, *keys: str) -> None:
        for key in keys or tuple(self.optimizers):
            for group in self.optimizers[key].param_groups:
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(lr)  # in place, no host sync: the captured update reads it
                else:
                    group["lr"] = lr

    @torch.no_grad()
    def prepare_stage(self, set_amp: bool = True) -> None:
        """The fixed reconstruction entering this scale, and (``set_amp``) this scale's noise amplitude from it."""
        n, m = self.stage, self.model
        if n == 0:
            self.rec_prev = None
            if set_amp:
                m.noise_amp[0] = 1.0
            return
        self.rec_prev = m.run_scales(0, n, None, [m.z_opt(k) for k in range(n)])
        if not set_amp:
            return
        rmse = F.mse_loss(m.upsample(self.rec_prev, n), self.reals[n]).sqrt()
        m.noise_amp[n] = self.cfg.noise_amp * rmse

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.fast:  # the loaded lr may be a float or a CPU tensor: the graph needs it on the device
            for opt in self.optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = torch.as_tensor(float(group["lr"]), device=self.device)
        # the reconstruction from the loaded weights (begin_stage ran before they were loaded); the saved amp stays
        self.prepare_stage(set_amp=False)

    # -- one iteration

    @torch.no_grad()
    def random_prev(self, n: int) -> Tensor | None:
        """A random image of scale n-1 from the finished scales (None at scale 0)."""
        if n == 0:
            return None
        m = self.model
        return m.run_scales(0, n, None, [m.draw_noise(k, generator=self.generator) for k in range(n)])

    def train_step(self, _batch: None = None) -> dict[str, Tensor]:
        n, m, cfg = self.stage, self.model, self.cfg
        first, _ = self.stage_bounds()[n]
        self.set_lr(cfg.lr * (0.1 if self.step - first >= int(cfg.decay_at * cfg.iters) else 1.0))
        if n == 0 and cfg.resample_z_opt:
            with torch.no_grad():
                m.z_opt0.copy_(m.draw_noise(0, generator=self.generator))
        g = self.generator
        noise = m.draw_noise(n, generator=g)
        prevs = [self.random_prev(n) for _ in range(cfg.d_steps)]
        alphas = torch.rand(cfg.d_steps, generator=g, device=g.device).to(self.device)
        losses = self._replay(noise, prevs, alphas) if self.fast else self.iteration(noise, prevs, alphas)
        self.step += 1
        if self.step == first + cfg.iters:
            self.finish_scale(n)
        return losses

    def iteration(self, noise: Tensor, prevs: list[Tensor | None], alphas: Tensor) -> dict[str, Tensor]:
        """One iteration of the scale in training on given random inputs: the noise map, one random image of the
        scale below per D step (None at scale 0) and one GP weight per D step. What ``--fast`` captures."""
        n, m, cfg = self.stage, self.model, self.cfg
        dis, real = m.dis[n], self.reals[n]
        for prev, alpha in zip(prevs, alphas):
            with torch.no_grad():
                fake = m.scale_step(n, prev, noise)
            d_real, d_fake = dis(real).mean(), dis(fake).mean()
            gp = gradient_penalty(dis, real, fake, alpha)
            d_loss = d_fake - d_real + cfg.gp_weight * gp
            self.optimizer_step("d", d_loss)

        prev = prevs[-1]  # G's steps use the last D step's image, as the official code
        dis.requires_grad_(False)  # G's steps need no D gradients
        try:
            for _ in range(cfg.g_steps):
                fake = m.scale_step(n, prev, noise)  # fresh: the official code reuses a stale graph here
                g_adv = -dis(fake).mean()
                rec = F.mse_loss(m.scale_step(n, self.rec_prev, m.z_opt(n)), real)
                self.optimizer_step("g", g_adv + cfg.rec_weight * rec)
        finally:
            dis.requires_grad_(True)
        return {"d_loss": d_loss.detach(), "gp": gp.detach(), "g_adv": g_adv.detach(), "rec": rec.detach(),
                "amp": m.noise_amp[n].detach().clone()}

    def _replay(self, noise: Tensor, prevs: list[Tensor | None], alphas: Tensor) -> dict[str, Tensor]:
        """:meth:`iteration` through the scale's CUDA graph: captured on the scale's first iteration (after that
        iteration ran eagerly on a side stream as the warm-up), then replayed with the inputs copied in."""
        if self._graph is None:
            self._static = (noise.clone(), [None if p is None else p.clone() for p in prevs], alphas.clone())
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                losses = self.iteration(*self._static)  # this iteration's update, and the warm-up
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._static_losses = self.iteration(*self._static)
            self._graph = graph
            return {k: v.clone() for k, v in losses.items()}
        s_noise, s_prevs, s_alphas = self._static
        s_noise.copy_(noise)
        for buf, prev in zip(s_prevs, prevs):
            if buf is not None:
                buf.copy_(prev)
        s_alphas.copy_(alphas)
        self._graph.replay()
        return {k: v.clone() for k, v in self._static_losses.items()}

    def finish_scale(self, n: int) -> None:
        """Mark scale n trained and write ``scale_NN.png``: the real, the reconstruction, random samples."""
        self.model.trained.fill_(n + 1)
        if self.sample_dir is not None:
            save_image(self.sample_grid(), self.sample_dir / f"scale_{n:02d}.png")

    @torch.no_grad()
    def sample_grid(self) -> Tensor:
        """Real, reconstruction and random samples of the scale in training (its G in eval mode for the preview)."""
        n, m = self.stage, self.model
        gen = m.gens[n]
        was_training = gen.training
        gen.eval()
        try:
            g = torch.Generator(self.device).manual_seed(self.preview_seed)
            rec = m.run_scales(0, n + 1, None, [m.z_opt(k) for k in range(n + 1)])
            noises = [m.draw_noise(k, PREVIEW_SAMPLES, generator=g) for k in range(n + 1)]
            fakes = m.run_scales(0, n + 1, None, noises)
        finally:
            gen.train(was_training)
        return make_grid(torch.cat([self.reals[n], rec, fakes]).clamp(-1, 1), nrow=4)


# ---------------------------------------------------------------------------------------------------
# Data and a whole run


def load_single_image(spec: str) -> Tensor:
    """``"builtin"`` / ``"builtin:NAME"`` (a scikit-image photo) or an image file, as ``[1, 3, H, W]`` in [-1, 1]."""
    from fsgan_fast.utils.images import read_image

    if spec == "builtin" or spec.startswith("builtin:"):
        from fsgan_fast.data.builtin import PHOTOS, _photo

        name = spec.partition(":")[2] or BUILTIN_PHOTO
        if name not in PHOTOS:
            raise DatasetError(f"--data builtin:{name}: no such photo; choose from {', '.join(PHOTOS)}")
        return (_photo(name)[None] / 127.5 - 1.0).contiguous()
    if not os.path.exists(spec):
        raise DatasetError(f"--data {spec!r} does not exist (SinGAN trains on one image file, or 'builtin')")
    if os.path.isdir(spec):
        raise DatasetError(f"--data {spec!r} is a folder: SinGAN trains on one image file")
    try:
        image = read_image(spec)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    return (image[None].float() / 127.5 - 1.0).contiguous()


def build_model_config(image: Tensor, model_cfg: SinGANConfig) -> tuple[SinGANConfig, list[Tensor]]:
    """The pyramid of ``image`` for ``model_cfg`` and the config with its sizes and r filled in."""
    from fsgan_fast import ops

    H, W = image.shape[-2:]
    if min(H, W) < model_cfg.min_size:
        raise DatasetError(f"the image is {H}x{W}: its short side must be at least --min-size {model_cfg.min_size}")
    pyr = ops.build_pyramid(image, scale_factor=model_cfg.scale_factor, min_size=model_cfg.min_size,
                            max_size=model_cfg.max_size, edge=model_cfg.edge)
    sizes = [tuple(int(v) for v in s) for s in pyr.sizes]
    cfg = dataclasses.replace(model_cfg, heights=tuple(h for h, _ in sizes), widths=tuple(w for _, w in sizes),
                              r=float(pyr.r))
    return cfg, [x.float() for x in pyr.reals]


def train_run(run: RunOptions, model_cfg: SinGANConfig, train_cfg: SinGANTrainConfig) -> Path:
    """A whole SinGAN run (:func:`fsgan_fast.train.base.launch`): the pyramid, the model, then one stage per scale."""

    def setup(env: DistEnv, dev: torch.device, run_dir: RunDir):
        image = load_single_image(run.data)
        cfg, reals = build_model_config(image, model_cfg)
        if model_cfg.heights and (model_cfg.heights, model_cfg.widths) != (cfg.heights, cfg.widths):
            raise RunError(f"--data gives the pyramid {cfg.sizes}, the checkpoint has {model_cfg.sizes}: resume with "
                           "the image the run was trained on")
        if model_cfg.heights:
            cfg = model_cfg  # resumed: the checkpoint's r exactly
        torch.manual_seed(train_cfg.seed)
        model = SinGAN(cfg)
        generator = torch.Generator(dev).manual_seed(train_cfg.seed + env.rank)
        trainer = SinGANTrainer(model, train_cfg, generator, reals, env=env, sample_dir=run_dir.path / "samples")
        return trainer, _NoBatch(), {}

    return launch(run, train_cfg, setup)


def train_singan(data: str, out: str | os.PathLike, model_cfg: SinGANConfig | None = None,
                 train_cfg: SinGANTrainConfig | None = None, *, device: str | None = None,
                 resume: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
                 **train_overrides) -> Path:
    """Train SinGAN on one image (``"builtin"`` or a file) into ``out``: the Python form of ``fsgan-fast train
    singan``. A resumed run keeps the checkpoint's model config."""
    model_cfg = model_cfg or SinGANConfig()
    train_cfg = dataclasses.replace(train_cfg or SinGANTrainConfig(), **train_overrides)
    if resume is not None:
        model_cfg = SinGANConfig.from_dict(load_checkpoint(resume, "singan")["trainer"]["config"])
    run = RunOptions(data=str(data), out=str(out), resume=None if resume is None else str(resume),
                     overwrite=overwrite, device=device, progress=progress)
    return train_run(run, model_cfg, train_cfg)


def load_singan(path: str | os.PathLike, device: torch.device | str = "cpu") -> SinGAN:
    """The SinGAN of a checkpoint, in eval mode."""
    from fsgan_fast.models.registry import model_from_state

    state = load_checkpoint(path, "singan")
    return model_from_state(state, source=repr(str(path))).to(device).eval()


__all__ = ["PRESETS", "SinGANTrainConfig", "SinGANTrainer", "build_model_config", "gradient_penalty",
           "load_single_image", "load_singan", "train_run", "train_singan"]
