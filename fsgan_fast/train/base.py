"""What every GAN trainer shares: the common train config, the trainer base class, and the run folder.

- :class:`TrainConfig`: iterations, batch, optimiser, precision, EMA, compile, seed and reporting
  intervals. A model's train config subclasses it and adds its own fields; every field is a CLI option.
- :class:`GANTrainer`: precision and a loss scaler per optimiser, named optimisers (Adam, fused on GPUs),
  EMA, the step counter, stages (SinGAN trains one scale at a time: a trainer lists its stages and
  builds each stage's networks and optimisers in :meth:`GANTrainer.begin_stage`; a run resumes inside
  a stage), and ``state_dict``/``load_state_dict`` with a config check that names every differing field.
- :class:`RunDir`: a run folder that is never overwritten by accident. :meth:`RunDir.check` validates
  everything before a byte is written (an existing run needs ``resume`` or ``overwrite``; ``out`` must be
  a writable folder); :meth:`RunDir.start` then writes ``config.json``.

The loop itself (progress bar, metrics, samples, atomic checkpoints, DDP) is :mod:`fsgan_fast.train.loop`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from fsgan_fast import configs
from fsgan_fast.configs import option
from fsgan_fast.train.loop import (
    CheckpointError,
    DistEnv,
    Precision,
    RunError,
    ema_update,
    load_checkpoint,
    optimizer_step,
    restore_checkpoint,
)


@dataclasses.dataclass
class TrainConfig:
    """Settings every GAN trainer has; a model's train config subclasses this and changes the defaults."""

    iters: int = option(100_000, "training steps (a step updates D and G once each)", low=1)
    batch: int = option(8, "images (or episodes) per step, per process under torchrun", low=1)
    lr: float = option(2e-4, "Adam learning rate", low=0.0, low_open=True)
    betas: tuple[float, float] = option((0.5, 0.999), "Adam betas", low=0.0, high=1.0, high_open=True)
    amp: Literal["none", "bf16", "fp16"] = option(
        "none", "mixed precision: bf16 autocast (recommended on GPUs) or fp16 autocast with loss scaling")
    ema: float = option(0.0, "decay of an EMA copy of G used for samples and generation (0 = off)",
                        low=0.0, high=1.0, high_open=True, flag_value=0.999)
    compile: bool = option(False, "torch.compile the networks' forward passes")
    seed: int = option(0, "seed of the weights, the data order and every random draw")
    log_every: int = option(10, "steps between metrics.jsonl lines and progress-bar updates (0 = none)", low=0)
    sample_every: int = option(500, "steps between sample grids (0 = only at the end)", low=0)
    ckpt_every: int = option(1000, "steps between checkpoints (0 = only at the end)", low=0)
    eval_every: int = option(0, "steps between evaluations with the model's paper protocol ('fsgan-fast eval', its "
                             "defaults), written to metrics.jsonl (0 = none); needs --eval-inception", low=0)
    eval_inception: str | None = option(None, "FID Inception weights pt_inception-2015-12-05-6726825d.pth for "
                                        "--eval-every (default: $FSGAN_FAST_INCEPTION)")
    eval_random_weights: bool = option(False, "evaluate with random-init networks instead (a plumbing check: the "
                                       "figures are marked not comparable)")

    # fields a resumed run may change; any other difference from the checkpoint is refused
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"iters", "log_every", "sample_every", "ckpt_every", "compile",
                                                     "eval_every", "eval_inception", "eval_random_weights"})

    def __post_init__(self) -> None:
        configs.validate(self)

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return configs.from_dict(cls, d)


@dataclasses.dataclass
class RunOptions:
    """Where a run reads and writes, and how it runs; not part of the model or its training recipe."""

    data: str = option(help="training data: 'builtin' (no download) or a path; "
                       "see the model's --help for the formats it reads")
    out: str = option(help="run folder: checkpoint.pt, config.json, metrics.jsonl, samples/")
    resume: str | None = option(None, "continue a run: --resume alone takes OUT/checkpoint.pt; the model and "
                                "training settings come from the checkpoint, and only --iters and the reporting "
                                "intervals may change", flag_value="last", metavar="CKPT")
    overwrite: bool = option(False, "replace the run already in --out (its checkpoint, metrics and samples)")
    device: str | None = option(None, "torch device (default: cuda if available, else cpu; cuda:LOCAL_RANK "
                                "under torchrun)")
    backend: Literal["auto", "reference", "triton", "cuda", "cpu"] | None = option(
        None, "implementation of the hot-path ops (default: auto; see 'fsgan-fast info')")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        configs.validate(self)

    @property
    def resume_path(self) -> Path | None:
        if self.resume is None:
            return None
        return Path(self.out) / "checkpoint.pt" if self.resume == "last" else Path(self.resume)


# ---------------------------------------------------------------------------------------------------
# The run folder

RUN_FILES = ("checkpoint.pt", "config.json", "metrics.jsonl")


class RunDir:
    """A run folder: checked first, written only once everything is known to be valid."""

    def __init__(self, out: str | os.PathLike, *, resume: str | os.PathLike | None = None, overwrite: bool = False,
                 env: DistEnv = DistEnv()):
        self.path = Path(out)
        self.resume = Path(resume) if resume is not None else None
        self.overwrite = overwrite
        self.env = env

    def check(self) -> None:
        """Raise :class:`RunError` when the folder cannot hold this run; writes nothing."""
        p = self.path
        if self.resume is not None and self.overwrite:
            raise RunError("--resume and --overwrite contradict each other: continue the run or replace it")
        if p.exists() and not p.is_dir():
            raise RunError(f"--out {str(p)!r} is a file, not a folder")
        if self.resume is not None:
            if not self.resume.is_file():
                raise RunError(f"nothing to resume: {str(self.resume)!r} does not exist")
        elif p.is_dir() and not self.overwrite and self.env.is_main and self.holds_run():
            # (only rank 0 judges: under torchrun another rank may look after rank 0 began writing)
            raise RunError(
                f"{str(p)!r} already holds a run ({', '.join(self.run_files())}); pass --resume to continue it, "
                "--overwrite to replace it, or choose another --out")
        # the nearest existing ancestor must be writable, or the first checkpoint would fail hours in
        existing = p
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise RunError(f"cannot write the run folder {str(p)!r}: {str(existing)!r} is not writable")

    def run_files(self) -> list[str]:
        found = [name for name in RUN_FILES if (self.path / name).exists()]
        if (self.path / "samples").is_dir():
            found.append("samples/")
        return found

    def holds_run(self) -> bool:
        return bool(self.run_files())

    def start(self, config: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        """Create the folder (clearing an old run under ``overwrite``) and write ``config.json`` + ``extra``.

        Rank 0 only writes; files are replaced atomically.
        """
        if not self.env.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if self.overwrite and self.resume is None:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / "samples", ignore_errors=True)
        for name, text in {"config.json": json.dumps(config, indent=1), **(extra or {})}.items():
            tmp = self.path / (name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path / name)


# ---------------------------------------------------------------------------------------------------
# Trainers


@dataclasses.dataclass(frozen=True)
class Stage:
    """A part of training with its own networks or optimisers (SinGAN: one scale); ``iters`` steps long."""

    name: str
    iters: int


class GANTrainer:
    """Base of every model's trainer (a :class:`fsgan_fast.train.loop.Trainer`).

    Subclasses set ``name`` (the registry name, also the checkpoint's ``model``), create their optimisers
    with :meth:`add_optimizer` (in ``__init__``, or per stage in :meth:`begin_stage`), and implement
    ``train_step`` and ``sample_grid``. ``model.cfg`` must be a config dataclass; ``model.gen_ema`` (if the
    model has one) is updated by :meth:`update_ema`.
    """

    name: str = "model"

    def __init__(self, model: nn.Module, cfg: TrainConfig, generator: torch.Generator, *, env: DistEnv = DistEnv()):
        self.model, self.cfg, self.generator, self.env = model, cfg, generator, env
        self.device = generator.device
        self.precision = Precision(cfg.amp, self.device)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self.step = 0  # steps done, over all stages
        self.stage = 0  # index into stages()
        self.begun_stage: int | None = None  # the stage whose networks and optimisers exist

    # -- stages

    def stages(self) -> list[Stage]:
        """The stages of training, in order; one stage of ``cfg.iters`` steps unless a subclass says otherwise."""
        return [Stage("train", self.cfg.iters)]

    def begin_stage(self, index: int) -> None:
        """Called before the first step of stage ``index`` (and on resume inside it): build its optimisers.

        Subclasses extend it and call ``super().begin_stage(index)``.
        """
        self.stage = self.begun_stage = index

    def stage_bounds(self) -> list[tuple[int, int]]:
        """``[(first step, end step)]`` of each stage in global steps."""
        out, start = [], 0
        for s in self.stages():
            out.append((start, start + s.iters))
            start += s.iters
        return out

    def total_iters(self) -> int:
        return sum(s.iters for s in self.stages())

    # -- optimisation

    def add_optimizer(self, key: str, params, *, lr: float | None = None, betas: tuple[float, float] | None = None,
                      weight_decay: float = 0.0) -> torch.optim.Optimizer:
        """Adam over ``params`` (fused into one kernel per net on GPUs) and a loss scaler for it, under ``key``."""
        opt = torch.optim.Adam(list(params), lr=self.cfg.lr if lr is None else lr,
                               betas=self.cfg.betas if betas is None else betas, weight_decay=weight_decay,
                               fused=self.device.type == "cuda" or None)
        self.optimizers[key] = opt
        self.scalers[key] = self.precision.scaler()
        return opt

    def set_lr(self, lr: float, *keys: str) -> None:
        for key in keys or tuple(self.optimizers):
            for group in self.optimizers[key].param_groups:
                group["lr"] = lr

    def optimizer_step(self, key: str, loss: Tensor) -> None:
        """zero grads, (scaled) backward, gradient all-reduce under torchrun, step, update the scale."""
        optimizer_step(loss, self.optimizers[key], self.scalers[key], self.env.world_size)

    def update_ema(self) -> None:
        ema = getattr(self.model, "gen_ema", None)
        if ema is not None and self.cfg.ema > 0:
            ema_update(ema, self.model.gen, self.cfg.ema)

    def lr(self) -> float:
        """The lr of the most recent step (first optimiser), for the log."""
        opt = next(iter(self.optimizers.values()), None)
        return float(opt.param_groups[0]["lr"]) if opt is not None else 0.0

    # -- state

    def extra_state(self) -> dict[str, Any]:
        """Subclass state beyond networks, optimisers and scalers (kept under the same checkpoint dict)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        state = {
            "config": configs.to_dict(self.model.cfg),
            "train": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "step": self.step,
            "stage": self.stage,
        }
        for key, opt in self.optimizers.items():
            state[f"opt_{key}"] = opt.state_dict()
            state[f"scaler_{key}"] = self.scalers[key].state_dict()
        state.update(self.extra_state())
        return state

    def check_compatible(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint whose model config, or training settings beyond ``RESUMABLE``, differ."""
        for key in ("config", "train", "model", "step"):
            if key not in state:
                raise CheckpointError(f"the checkpoint's trainer state has no {key!r} entry (damaged or not written "
                                      "by this trainer)")
        # through JSON: checkpoints of older versions hold tuples where to_dict now gives lists
        model_diff = configs.differences(_plain(state["config"]), configs.to_dict(self.model.cfg))
        if model_diff:
            raise CheckpointError("the checkpoint's model differs from this one in " + _describe_diff(model_diff)
                                  + ": a resumed run keeps its model (drop these options, or start a new run)")
        saved_train = _upgrade_train(_plain(state["train"]), self.cfg)
        train_diff = {k: v for k, v in configs.differences(saved_train, self.cfg.to_dict()).items()
                      if k.split(".")[0] not in type(self.cfg).RESUMABLE}
        if train_diff:
            raise CheckpointError("the checkpoint was trained with other settings: " + _describe_diff(train_diff)
                                  + f"; a resumed run may change only {', '.join(sorted(type(self.cfg).RESUMABLE))}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_compatible(state)
        stage = int(state.get("stage", 0))
        if stage != self.begun_stage:
            self.begin_stage(stage)
        with_ema = hasattr(self.model, "enable_ema")  # models with nn.ema.WithEMAGenerator
        if with_ema and "model" in state and not any(k.startswith("gen_ema.") for k in state["model"]):
            self.model.gen_ema = None  # the checkpoint has no EMA: start one from its G below if asked
        self.model.load_state_dict(state["model"])
        for key, opt in self.optimizers.items():
            for name in (f"opt_{key}", f"scaler_{key}"):
                if name not in state:
                    raise CheckpointError(f"the checkpoint has no {name!r} entry (damaged or from another trainer)")
            opt.load_state_dict(state[f"opt_{key}"])
            self.scalers[key].load_state_dict(state[f"scaler_{key}"])
        self.step = int(state["step"])
        if with_ema and getattr(self.cfg, "ema", 0) > 0 and self.model.gen_ema is None:
            self.model.enable_ema()
        self.load_extra_state(state)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d))


def _describe_diff(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in diff.items())


def _upgrade_train(saved: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """Checkpoints written before a field existed hold no value for it: compare it as its current value."""
    current = cfg.to_dict()
    return {**{k: v for k, v in current.items() if k not in saved}, **saved}


def resume_trainer(trainer: GANTrainer, path: str | os.PathLike, env: DistEnv = DistEnv()) -> int:
    """Load a checkpoint into ``trainer`` (checked) and return its step; refuses when nothing is left to train."""
    state = load_checkpoint(path, trainer.name)
    try:
        start = restore_checkpoint(trainer, state, env)
    except KeyError as e:
        raise CheckpointError(f"{str(path)!r} is missing the entry {e} (damaged, or from another version)") from None
    total = trainer.total_iters()
    if start >= total:
        raise RunError(f"the checkpoint {str(path)!r} is at step {start} and this run ends at step {total}: nothing "
                       f"to train; raise --iters above {start} to continue")
    return start


def launch(run: RunOptions, train_cfg: TrainConfig, setup) -> Path:
    """Run a whole training job: check the run folder, set up the processes, build, resume, write, fit.

    ``setup(env, device, run_dir) -> (trainer, sampler, extra_files)`` loads the data and builds the model
    and trainer (everything that can fail on bad input); ``extra_files`` (``{name: text}``) are written
    beside ``config.json`` (LoFGAN: its class split). Nothing is written before ``setup`` and the resume
    check have passed. Returns the checkpoint path.
    """
    from fsgan_fast.train.loop import LoopConfig, fit, setup_distributed

    out = Path(run.out)
    resume = run.resume_path
    run_dir = RunDir(out, resume=resume, overwrite=run.overwrite, env=DistEnv.from_environ())
    run_dir.check()
    env, device = setup_distributed(run.device)
    trainer, sampler, extra = setup(env, device, run_dir)
    evaluate = periodic_evaluation(trainer, run, train_cfg, out)
    start = resume_trainer(trainer, resume, env) if resume is not None else 0
    record = {"model": trainer.name, "data": run.data, "model_config": configs.to_dict(trainer.model.cfg),
              "train_config": train_cfg.to_dict(), "world_size": env.world_size}
    run_dir.start(record, extra)
    loop = LoopConfig(out, trainer.total_iters(), log_every=train_cfg.log_every, sample_every=train_cfg.sample_every,
                      ckpt_every=train_cfg.ckpt_every, progress=run.progress, eval_every=train_cfg.eval_every,
                      evaluate=evaluate)
    fit(trainer, sampler, loop, env, start=start)
    return out / "checkpoint.pt"


def periodic_evaluation(trainer: GANTrainer, run: RunOptions, train_cfg: TrainConfig, out: Path):
    """``--eval-every``: a callable running the model's registered protocol (``fsgan-fast eval MODEL`` with its
    defaults, on the run's data and checkpoint folder) and returning its metrics for metrics.jsonl; None when off.
    Refuses, before anything is written, a model without a protocol or a run without the Inception weights."""
    if not train_cfg.eval_every:
        return None
    import types

    from fsgan_fast.models import registry

    spec = registry.get(trainer.name)
    if spec.evaluate is None:
        raise RunError(f"--eval-every: {spec.name} has no evaluation protocol")
    inception = train_cfg.eval_inception or os.environ.get("FSGAN_FAST_INCEPTION")
    if train_cfg.eval_random_weights and train_cfg.eval_inception:
        raise RunError("--eval-inception and --eval-random-weights exclude each other: give one")
    if not train_cfg.eval_random_weights:
        if not inception:
            raise RunError("--eval-every needs the FID Inception weights: --eval-inception FILE or $FSGAN_FAST_INCEPTION "
                           "(pt_inception-2015-12-05-6726825d.pth from https://github.com/mseitzer/pytorch-fid/releases/"
                           "download/fid_weights/pt_inception-2015-12-05-6726825d.pth), or --eval-random-weights")
        if not os.path.isfile(inception):
            raise RunError(f"--eval-inception {inception!r} is not a file")
    options = types.SimpleNamespace(ckpt=str(out / "checkpoint.pt"), data=run.data, inception=inception,
                                    random_weights=train_cfg.eval_random_weights, batch_size=50,
                                    seed=train_cfg.seed, device=None)
    protocol, model_options = spec.get("evaluate"), spec.get("eval_options")

    def evaluate() -> dict[str, Any]:
        model = trainer.model
        was_training = model.training
        try:
            results = protocol(model, model_options() if model_options else None, options=options,
                               device=trainer.device)
        finally:
            model.train(was_training)
        figures = {f"eval_{k}": v for k, v in results.get("metrics", {}).items() if isinstance(v, (int, float))}
        return {**figures, "eval_comparable": bool(results.get("comparable", True))}

    return evaluate


def resolve_device(device: str | None) -> None:
    """Clear error for a device this machine does not have (before anything is built or written)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise RunError(f"--device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {device} asked for, but torch sees no CUDA device here (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RunError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise RunError(f"--device must be cpu or cuda[:N], got {device!r}")


__all__ = ["TrainConfig", "RunOptions", "RunDir", "Stage", "GANTrainer", "launch", "resume_trainer", "resolve_device",
           "RUN_FILES"]
