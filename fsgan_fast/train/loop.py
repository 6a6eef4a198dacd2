"""The training loop every model's trainer shares (LoFGAN now; FastGAN, SinGAN, ... reuse it).

A trainer (:class:`Trainer`) owns its networks, optimisers and one training step. This module owns
what surrounds a step: precision (bf16/fp16 autocast, GradScaler), data parallelism across processes
started by ``torchrun``, learning-rate schedules, EMA, checkpoints with exact resume, the progress bar,
sample grids and the metrics log.

A run directory holds ``checkpoint.pt`` (the latest; exact resume), ``metrics.jsonl`` (one line per
``log_every`` steps: step, lr, it/s, window means of every loss) and ``samples/step_XXXXXXX.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from fsgan_fast.utils.images import save_image

CHECKPOINT_FORMAT = 1
AMP_MODES = ("none", "bf16", "fp16")


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable, or belongs to another model."""


class RunError(ValueError):
    """A run cannot start or continue as asked (folder, device, resume point); printed as one line by the CLI."""


# ---------------------------------------------------------------------------------------------------
# Processes and devices


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """This process's place in a ``torchrun`` job (a single process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls) -> "DistEnv":
        """Read ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE``, which ``torchrun`` sets for every process."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def setup_distributed(device: str | None = None) -> tuple[DistEnv, torch.device]:
    """Pick this process's device and, under ``torchrun``, join the process group.

    ``device=None`` takes ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU. A plain
    ``"cuda"`` also maps to ``cuda:LOCAL_RANK``, so every process gets its own GPU. The backend is
    NCCL on GPUs and gloo on the CPU.
    """
    env = DistEnv.from_environ()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise RunError(f"device {device!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RunError(f"device {device!r} requested but torch sees no CUDA device here (use --device cpu)")
        if dev.index is None:
            dev = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(dev)
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return env, dev


def all_reduce_gradients(params: Iterable[nn.Parameter], world_size: int) -> None:
    """Average ``.grad`` over all processes with one flat all-reduce.

    Done by hand rather than with ``DistributedDataParallel``: GAN steps alternate networks, run D in
    G's step without updating it, and need double backward for gradient penalties, none of which fits
    DDP's one-forward-one-backward hooks. A missing grad counts as zeros so every rank sends the same layout.
    """
    if world_size == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat.div_(world_size)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))


def broadcast_module(module: nn.Module, world_size: int) -> None:
    """Copy rank 0's parameters and buffers to every process (identical starting points)."""
    if world_size == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


# ---------------------------------------------------------------------------------------------------
# Precision, optimisation, EMA


class Precision:
    """``none`` (fp32), ``bf16`` (autocast) or ``fp16`` (autocast + a GradScaler per optimiser)."""

    def __init__(self, mode: str, device: torch.device):
        if mode not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {mode!r}")
        self.mode = mode
        self.device = torch.device(device)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 only; a disabled scaler is a pass-through (scale() returns the loss)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.mode == "fp16")


def optimizer_step(
    loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, world_size: int = 1
) -> None:
    """zero grads, backward (scaled), average grads over processes, step (skipped on inf), update the scale."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    all_reduce_gradients((p for g in optimizer.param_groups for p in g["params"]), world_size)
    scaler.step(optimizer)
    scaler.update()


def constant_then_linear(total: int, decay_start: int) -> Callable[[int], float]:
    """LR factor for step ``i``: 1 up to ``decay_start``, then linear to 0 at ``total``.

    LoFGAN uses ``decay_start = total // 2`` (its ``update_lr``). Use with ``LambdaLR`` stepped once per
    iteration, so iteration ``i`` runs at ``lr * factor(i)``.
    """
    if not 0 <= decay_start <= total:
        raise ValueError(f"need 0 <= decay_start <= total, got {decay_start} and {total}")

    def factor(i: int) -> float:
        if i <= decay_start:
            return 1.0
        return max(0.0, (total - i) / (total - decay_start))

    return factor


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for parameters; buffers (BN statistics) are copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)  # one launch per dtype/device
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write atomically (temp file + rename), so an interrupted save never leaves a broken checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, model: str | None = None) -> dict:
    """Read a checkpoint written by :func:`fit` on the CPU; with ``model``, check that it is one of that model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types (pickle, zip, runtime) for a bad file
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    if not isinstance(state, dict) or "model" not in state or "format" not in state:
        raise CheckpointError(f"{str(path)!r} is not an fsgan_fast checkpoint (no 'model'/'format' keys)")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format {state['format']}, this version reads {CHECKPOINT_FORMAT}"
        )
    if model is not None and state["model"] != model:
        raise CheckpointError(f"{str(path)!r} is a {state['model']!r} checkpoint, not a {model!r} one")
    return state


def _rng_state(generator: torch.Generator) -> dict:
    """This process's random state: the training generator and torch's global CPU / CUDA generators."""
    cuda = torch.cuda.get_rng_state() if generator.device.type == "cuda" else None
    return {"generator": generator.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(generator: torch.Generator, state: dict) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and generator.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------------------------------
# The loop


class Trainer(Protocol):
    """What :func:`fit` needs from a model's trainer."""

    name: str  # the checkpoint's "model" key, e.g. "lofgan"
    generator: torch.Generator  # every random draw of a step comes from it (checkpointed per process)

    def train_step(self, batch: Any) -> dict[str, Tensor]:
        """One iteration; returns detached scalar losses (no host sync needed)."""

    def lr(self) -> float:
        """The current learning rate, for the log."""

    def sample_grid(self) -> Tensor:
        """``[3, H, W]`` in [-1, 1]: what this model's samples look like now."""

    def state_dict(self) -> dict:
        """Everything identical on every process: config, networks, optimisers, schedules, scalers."""

    def load_state_dict(self, state: dict) -> None: ...


class Sampler(Protocol):
    def sample(self) -> Any: ...


@dataclasses.dataclass
class LoopConfig:
    """Where and how long to train, and how often to report (0: samples / checkpoints at the end only)."""

    out: Path
    iters: int
    log_every: int = 10  # 0: no metrics log
    sample_every: int = 500
    ckpt_every: int = 1000
    progress: bool = True
    eval_every: int = 0  # 0: no evaluation
    evaluate: Callable[[], dict] | None = None  # the figures of one evaluation (rank 0 only)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        for name in ("log_every", "sample_every", "ckpt_every", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class MetricsLog:
    """Appends JSON lines to ``path``; on resume, drops lines past the checkpoint's step first.

    A line that does not parse (the half-written last line of a killed run) is dropped with a warning.
    """

    def __init__(self, path: Path, start_step: int):
        self.path = path
        kept = []
        if start_step > 0 and path.exists():
            dropped = 0
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    keep = int(record["step"]) <= start_step
                except (ValueError, KeyError, TypeError):
                    dropped += 1 if line.strip() else 0
                    continue
                if keep:
                    kept.append(line)
            if dropped:
                warnings.warn(f"{path}: dropped {dropped} unreadable line(s) (a run killed while writing?)",
                              RuntimeWarning, stacklevel=2)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def checkpoint_state(trainer: Trainer, step: int, env: DistEnv) -> dict | None:
    """The checkpoint of ``trainer`` after ``step`` steps; collective under torchrun (None off rank 0)."""
    rng = _rng_state(trainer.generator)
    if env.world_size > 1:
        per_rank: list = [None] * env.world_size
        dist.all_gather_object(per_rank, rng)
    else:
        per_rank = [rng]
    if not env.is_main:
        return None
    return {
        "format": CHECKPOINT_FORMAT,
        "model": trainer.name,
        "step": step,
        "trainer": trainer.state_dict(),
        "rng": per_rank,
    }


def restore_checkpoint(trainer: Trainer, state: dict, env: DistEnv) -> int:
    """Load ``state`` into ``trainer`` and this process's random state; returns the step to continue from."""
    if state["model"] != trainer.name:
        raise CheckpointError(f"this is a {state['model']!r} checkpoint, not a {trainer.name!r} one")
    trainer.load_state_dict(state["trainer"])
    if len(state["rng"]) == env.world_size:
        _set_rng_state(trainer.generator, state["rng"][env.rank])
    else:
        warnings.warn(
            f"the checkpoint was written by {len(state['rng'])} process(es), this run has {env.world_size}: "
            "random streams restart from their seeds, so the run continues but not bit-exactly",
            RuntimeWarning,
            stacklevel=2,
        )
    return int(state["step"])


def _flush(window: dict[str, list[Tensor]]) -> dict[str, float]:
    """Window means of every loss with one host sync."""
    keys = list(window)
    means = torch.stack([torch.stack(window[k]).float().mean() for k in keys]).tolist()
    return dict(zip(keys, means))


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: says where the run stopped and which checkpoint is intact."""

    def __init__(self, step: int, checkpoint: Path | None, checkpoint_step: int | None):
        self.step, self.checkpoint, self.checkpoint_step = step, checkpoint, checkpoint_step
        where = (f"{self.checkpoint} (step {checkpoint_step}) is intact: resume with --resume"
                 if checkpoint is not None else "no checkpoint was written yet")
        super().__init__(f"interrupted at step {step}; {where}")


def fit(
    trainer: Trainer,
    sampler: Sampler,
    cfg: LoopConfig,
    env: DistEnv = DistEnv(),
    resume: str | os.PathLike | None = None,
    *,
    start: int | None = None,
) -> int:
    """Train until ``cfg.iters`` steps, optionally resuming from a checkpoint; returns the last step.

    ``start``: the step a trainer already restored (see :func:`fsgan_fast.train.base.resume_trainer`)
    continues from; else ``resume`` names a checkpoint to restore here. Only rank 0 writes files and
    shows progress (its own losses: they are not averaged over processes, which would cost a collective
    per log line). A checkpoint is written every ``ckpt_every`` steps, at the end of every stage and at
    the end; resuming from it replays the uninterrupted run exactly on the CPU (networks, optimisers,
    schedules, scalers, EMA and every random stream are restored). On GPUs, non-deterministic kernels
    can make a resumed run drift from an uninterrupted one. Trainers with stages (``stage_bounds()``)
    get ``begin_stage(i)`` before the first step of stage ``i``. Ctrl-C raises
    :class:`TrainingInterrupted` naming the last intact checkpoint (checkpoints are written atomically).
    """
    if start is None:
        start = 0
        if resume is not None:
            start = restore_checkpoint(trainer, load_checkpoint(resume, trainer.name), env)
    bounds = trainer.stage_bounds() if hasattr(trainer, "stage_bounds") else [(0, cfg.iters)]
    stage_of_start = {b[0]: i for i, b in enumerate(bounds)}
    stage_ends = {b[1] for b in bounds}
    ckpt_path = cfg.out / "checkpoint.pt"
    log = MetricsLog(cfg.out / "metrics.jsonl", start) if env.is_main else None
    show = cfg.progress and env.is_main
    bar = tqdm(total=cfg.iters, initial=start, desc=trainer.name, dynamic_ncols=True, disable=not show)
    window: dict[str, list[Tensor]] = {}
    t_window, n_window = time.perf_counter(), 0
    saved: int | None = start if resume is not None or start > 0 else None
    done = start
    try:
        for step in range(start, cfg.iters):
            index = stage_of_start.get(step)
            # a fresh stage; on resume, the checkpoint's stage was already begun by load_state_dict
            if index is not None and hasattr(trainer, "begin_stage") and getattr(trainer, "begun_stage", None) != index:
                trainer.begin_stage(index)
                if len(bounds) > 1:
                    bar.set_description(f"{trainer.name} {trainer.stages()[trainer.stage].name}")
            losses = trainer.train_step(sampler.sample())
            if cfg.log_every:
                for k, v in losses.items():
                    window.setdefault(k, []).append(v)
            done, n_window = step + 1, n_window + 1
            bar.update(1)
            last = done == cfg.iters
            if window and cfg.log_every and (done % cfg.log_every == 0 or last):
                means = _flush(window)
                elapsed = time.perf_counter() - t_window
                if log is not None:
                    log.write({"step": done, "lr": trainer.lr(), "it_s": n_window / elapsed, "time": time.time(),
                               **means})
                bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()}, refresh=False)
                window, t_window, n_window = {}, time.perf_counter(), 0
            stage_end = done in stage_ends and len(bounds) > 1
            if env.is_main and ((cfg.sample_every and done % cfg.sample_every == 0) or last or stage_end):
                save_image(trainer.sample_grid(), cfg.out / "samples" / f"step_{done:07d}.png")
            if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or last or stage_end:
                state = checkpoint_state(trainer, done, env)
                if state is not None:
                    save_checkpoint(ckpt_path, state)
                saved = done
            if cfg.evaluate is not None and cfg.eval_every and (done % cfg.eval_every == 0 or last) and env.is_main:
                figures = cfg.evaluate()
                if log is not None:
                    log.write({"step": done, "time": time.time(), **figures})
    except KeyboardInterrupt:
        bar.close()
        raise TrainingInterrupted(done, ckpt_path if saved is not None else None, saved) from None
    bar.close()
    return cfg.iters


__all__ = [
    "AMP_MODES",
    "CheckpointError",
    "DistEnv",
    "RunError",
    "TrainingInterrupted",
    "LoopConfig",
    "MetricsLog",
    "Precision",
    "Sampler",
    "Trainer",
    "all_reduce_gradients",
    "broadcast_module",
    "checkpoint_state",
    "constant_then_linear",
    "ema_update",
    "fit",
    "load_checkpoint",
    "optimizer_step",
    "restore_checkpoint",
    "save_checkpoint",
    "setup_distributed",
]
