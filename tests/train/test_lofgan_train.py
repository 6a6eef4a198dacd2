"""LoFGAN training on the CPU: it learns, it resumes exactly, data parallelism averages the right gradients.

Run with ``torchrun`` this file is also the DDP worker of :func:`test_ddp_matches_single_process`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsgan_fast.data import EpisodeSampler, builtin_classes
from fsgan_fast.train.lofgan import LoFGANLossWeights
from fsgan_fast.models.lofgan import LoFGAN, LoFGANConfig
from fsgan_fast.train.lofgan import LoFGANTrainConfig, LoFGANTrainer, load_lofgan, train_lofgan
from fsgan_fast.train.loop import (
    CheckpointError,
    Precision,
    all_reduce_gradients,
    constant_then_linear,
    ema_update,
    load_checkpoint,
    save_checkpoint,
    setup_distributed,
)

ROOT = Path(__file__).resolve().parents[2]
# 32 px, 8x8 feature grid (two stride-2 encoder blocks), two D stages: ~0.1 s per step on 2 cores
TINY = LoFGANConfig(size=32, gen_channels=(16, 32, 32), dis_channels=16, dis_max_channels=64)


def window_means(path: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in path.read_text().splitlines()]


def test_training_learns(tmp_path):
    """In 60 steps G's local reconstruction and D's class loss clearly fall (means over 10-step windows).

    A constant lr of 4e-4 (the official 1e-4 decays over the second half) keeps the test short; over four
    seeds the last windows sit at 0.6-0.75 of the first.
    """
    cfg = LoFGANTrainConfig(iters=60, batch=8, lr=4e-4, decay_start=1.0)
    train_lofgan("builtin", tmp_path, TINY, cfg, log_every=10, sample_every=0, progress=False, device="cpu")
    for key in ("g_local", "d_cls"):
        means = window_means(tmp_path / "metrics.jsonl", key)
        assert len(means) == 6
        assert (means[-1] + means[-2]) / 2 < 0.85 * means[0], f"{key} did not fall: {means}"
    assert (tmp_path / "samples" / "step_0000060.png").is_file()


def test_resume_is_exact(tmp_path):
    """2 steps, checkpoint, resume to 4 == 4 uninterrupted steps, bit for bit (weights, EMA, Adam, RNG)."""
    cfg = LoFGANTrainConfig(iters=4, batch=4, ema=0.9)
    # on the CPU: CUDA's reflect-pad and cuDNN weight gradients add with atomics, so GPU runs drift in the last bit
    kw = dict(log_every=1, sample_every=0, progress=False, device="cpu")
    train_lofgan("builtin", tmp_path / "a", TINY, cfg, **kw)
    train_lofgan("builtin", tmp_path / "b", TINY, LoFGANTrainConfig(iters=2, batch=4, ema=0.9), **kw)
    train_lofgan("builtin", tmp_path / "b", TINY, cfg, resume=tmp_path / "b" / "checkpoint.pt", **kw)
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt", "lofgan") for run in ("a", "b"))
    assert a["step"] == b["step"] == 4
    for key in ("model", "opt_g", "opt_d", "scaler_g", "scaler_d"):
        torch.testing.assert_close(a["trainer"][key], b["trainer"][key], rtol=0, atol=0, msg=key)
    assert any(k.startswith("gen_ema.") for k in a["trainer"]["model"])
    torch.testing.assert_close(a["rng"], b["rng"], rtol=0, atol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert window_means(tmp_path / "a" / "metrics.jsonl", "g_total") == window_means(tmp_path / "b" / "metrics.jsonl", "g_total")


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not an fsgan_fast checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    save_checkpoint(tmp_path / "other.pt", {"format": 1, "model": "fastgan", "step": 0, "trainer": {}, "rng": []})
    with pytest.raises(CheckpointError, match="a 'fastgan' checkpoint, not a 'lofgan' one"):
        load_lofgan(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="fastgan"):
        train_lofgan("builtin", tmp_path / "run", TINY, LoFGANTrainConfig(iters=1), resume=tmp_path / "other.pt",
                     device="cpu")


def test_lr_schedule_and_ema():
    f = constant_then_linear(100, 50)
    assert [f(0), f(50), f(51), f(75), f(99), f(100)] == [1.0, 1.0, 0.98, 0.5, 0.02, 0.0]
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.9 * a.weight.detach() + 0.1 * b.weight.detach()
    ema_update(a, b, 0.9)
    torch.testing.assert_close(a.weight.detach(), expected)


def _trainer(amp: str = "none", weights: LoFGANLossWeights | None = None, seed: int = 0,
             compile: bool = False) -> LoFGANTrainer:
    torch.manual_seed(seed)
    cfg = LoFGANTrainConfig(iters=10, batch=4, amp=amp, weights=weights or LoFGANLossWeights(), compile=compile)
    return LoFGANTrainer(LoFGAN(TINY), cfg, torch.Generator().manual_seed(seed))


def test_compiled_steps_match_eager_without_graph_breaks():
    """--compile: the same losses as eager over two steps, and no graph breaks in the compiled G and D
    (the fusion's randomness is drawn outside the compiled G)."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, compiled = _trainer(), _trainer(compile=True)
    batches = [EpisodeSampler(builtin_classes(32, per_class=4), 4, 3, seed=s).sample() for s in (1, 2)]
    for batch in batches:
        want, got = eager.train_step(batch), compiled.train_step(batch)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=2e-4, atol=2e-5, msg=key)
    # (the second step's losses come from the updated weights; the weights themselves are not compared:
    # Adam turns the rounding noise in the ~0 gradients of conv biases before BatchNorm into full steps)
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    torch._dynamo.reset()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_step_runs(amp):
    trainer = _trainer(amp)
    assert trainer.precision.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    sampler = EpisodeSampler(builtin_classes(32, per_class=4), 4, 3, generator=trainer.generator)
    before = [p.detach().clone() for p in trainer.model.gen.parameters()]
    for _ in range(4):  # fp16 skips the first steps while the GradScaler lowers its scale from 2**16
        losses = trainer.train_step(sampler.sample())
        assert all(torch.isfinite(v) for v in losses.values()), losses
    assert any(not torch.equal(p, q) for p, q in zip(before, trainer.model.gen.parameters()))
    with pytest.raises(ValueError, match="amp must be one of"):
        Precision("fp8", torch.device("cpu"))


def test_fp16_penalty_is_computed_in_fp32():
    """Under fp16 AMP the R1 penalty (and D's gradient from it) is what fp32 training computes: its
    input gradients would underflow in fp16."""
    g = torch.Generator().manual_seed(5)
    xs = torch.rand(4, 3, 3, 32, 32, generator=g) * 2 - 1
    labels = torch.randint(TINY.n_classes, (4,), generator=g)
    fake = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    out = {}
    for amp in ("none", "fp16"):
        trainer = _trainer(amp)
        losses = trainer.d_losses(xs, labels, fake)
        losses["d_gp"].backward()
        out[amp] = (losses["d_gp"].detach(), [p.grad.clone() for p in trainer.model.dis.parameters() if p.grad is not None])
    torch.testing.assert_close(out["fp16"][0], out["none"][0], rtol=1e-4, atol=0)
    assert len(out["fp16"][1]) == len(out["none"][1]) > 0
    for a, b in zip(out["fp16"][1], out["none"][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-9)


# ---------------------------------------------------------------------------------------------------
# Data parallelism: two gloo processes under torchrun vs one process


def _case(seed: int = 0, weights: LoFGANLossWeights | None = None):
    """A fresh trainer (same weights every call) and one fixed batch of 8 episodes with its randomness."""
    trainer = _trainer(weights=weights, seed=seed)
    g = torch.Generator().manual_seed(123)
    xs = torch.rand(8, 3, 3, 32, 32, generator=g) * 2 - 1
    labels = torch.randint(TINY.n_classes, (8,), generator=g)
    fake = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    base, positions, alpha = trainer.model.gen.fusion.sample(8, 3, 8, 8, torch.device("cpu"), g)
    return trainer, xs, labels, fake, {"base": base, "positions": positions, "alpha": alpha}


def _grads(rows: slice, weights: LoFGANLossWeights | None = None, world_size: int = 1) -> dict[str, list[torch.Tensor]]:
    """D's and G's gradients on the episodes ``rows`` of the fixed batch, averaged over ``world_size`` processes."""
    trainer, xs, labels, fake, fusion = _case(weights=weights)
    dis, gen = trainer.model.dis, trainer.model.gen
    trainer.d_losses(xs[rows], labels[rows], fake[rows])["d_total"].backward()
    all_reduce_gradients(dis.parameters(), world_size)
    dis.requires_grad_(False)
    part = {k: v[rows] for k, v in fusion.items()}
    trainer.g_losses(xs[rows], labels[rows], **part)["g_total"].backward()
    all_reduce_gradients(gen.parameters(), world_size)
    return {"d": [p.grad.clone() for p in dis.parameters()], "g": [p.grad.clone() for p in gen.parameters()]}


def _ddp_worker(out: str) -> None:
    env, device = setup_distributed("cpu")
    assert env.world_size == 2 and torch.distributed.get_backend() == "gloo"
    rows = slice(4 * env.rank, 4 * env.rank + 4)
    result = {"full": _grads(rows, world_size=2), "no_gp": _grads(rows, LoFGANLossWeights(gp=0.0), world_size=2)}
    if env.is_main:
        torch.save(result, out)
    torch.distributed.destroy_process_group()


def test_ddp_matches_single_process(tmp_path):
    """torchrun, 2 CPU processes (gloo), 4 episodes each, gradients averaged across them.

    Every loss term that is a per-sample mean gives the gradient of the concatenated batch of 8 (checked
    with the R1 weight at 0). BatchNorm in G normalises per process and the official R1 penalty scales
    with 1 / batch, so the full losses give the mean of the two processes' own gradients, which is
    what data parallelism promises; that is checked too.
    """
    out = tmp_path / "grads.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = torch.load(out)
    whole = _grads(slice(0, 8), LoFGANLossWeights(gp=0.0))
    assert_grads_close(ddp["no_gp"]["d"], whole["d"])
    halves = [_grads(slice(0, 4)), _grads(slice(4, 8))]
    for net in ("d", "g"):
        assert_grads_close(ddp["full"][net], [(a + b) / 2 for a, b in zip(halves[0][net], halves[1][net])])


def assert_grads_close(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    """Equal up to float32 summation order: 1e-4 relative to each tensor's largest entry, plus 1e-6."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6 + 1e-4 * float(e.abs().max()), msg=lambda m: f"parameter {i}: {m}")


if __name__ == "__main__":
    _ddp_worker(sys.argv[1])
