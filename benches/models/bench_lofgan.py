"""LoFGAN end to end: one training iteration (episode gather + D step + G step) and generation, per backend.

On a GPU: the official 128 px model, batch 8, K=3, in fp32 and bf16 autocast (plus torch.compile in
bf16). On the CPU: the README demo's 64 px model (the 128 px one takes tens of seconds per step on 2
cores), eager fp32 only. The backend picks the implementation of the local-fusion ops (``lfm_fuse`` in
G, ``lfm_apply`` in the loss); one that cannot run here is skipped with the reason. Each case checks
G against the reference backend once before timing.
"""

from __future__ import annotations

import math

import pytest
import torch

import fsgan_fast
from benches.conftest import DEVICE, timed
from fsgan_fast import backends
from fsgan_fast.data import EpisodeSampler, ImageClasses
from fsgan_fast.losses import local_reconstruction_loss
from fsgan_fast.models.lofgan import LoFGAN, LoFGANConfig
from fsgan_fast.train.lofgan import PRESETS, LoFGANTrainConfig, LoFGANTrainer
from fsgan_fast.train.loop import Precision

ON_GPU = DEVICE.type == "cuda"
B, K = 8, 3
if ON_GPU:
    CONFIG_NAME, MODEL_CFG = "paper", LoFGANConfig(size=128, shots=K, n_classes=85)
else:
    _demo = PRESETS["demo"]
    CONFIG_NAME = "demo"
    MODEL_CFG = LoFGANConfig(
        size=_demo["size"], shots=K, n_classes=13, gen_channels=_demo["gen_channels"],
        dis_channels=_demo["dis_channels"], dis_max_channels=_demo["dis_max_channels"],
    )
BACKENDS = ["reference", "cpu", "triton", "cuda"]
# (amp, mode): fp32 and bf16 eager everywhere a GPU is; compile once, in bf16 (minutes of compilation per case)
RUNS = [("none", "eager"), ("bf16", "eager"), ("bf16", "compiled")] if ON_GPU else [("none", "eager")]
DTYPES = {"none": torch.float32, "bf16": torch.bfloat16}
COMPILED_BACKEND = "cuda"
GEN_INNER = 5 if ON_GPU else 1


def _skip_reason(backend: str, amp: str) -> str | None:
    if backend == "triton" and not ON_GPU:
        return "Triton timings are meaningful on a GPU only (the CPU interpreter is a correctness tool)"
    for op in ("lfm_fuse", "lfm_apply", "lfm_apply_backward"):
        reason = backends.why_unavailable(op, backend, DEVICE, DTYPES[amp])
        if reason is not None:
            return reason
    return None


def _data(cfg: LoFGANConfig, per_class: int = 16) -> ImageClasses:
    """Random uint8 images: the timing does not depend on their content."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (cfg.n_classes * per_class, 3, cfg.size, cfg.size), dtype=torch.uint8, generator=g)
    counts = torch.full((cfg.n_classes,), per_class, dtype=torch.int64)
    return ImageClasses(images, counts, [str(c) for c in range(cfg.n_classes)]).to(DEVICE)


def _extra(backend: str, passes: str, amp: str, mode: str, batch: int) -> dict:
    return {
        "model": "lofgan",
        "backend": backend,
        "pass": passes,
        "shape": {"B": batch, "K": K, "size": MODEL_CFG.size},
        "dtype": str(DTYPES[amp]).removeprefix("torch."),
        "config": CONFIG_NAME,
        "mode": mode,
    }


def _gpu_memory_reset() -> None:
    if ON_GPU:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _record_gpu_memory(benchmark) -> None:
    if ON_GPU:
        benchmark.extra_info["peak_gpu_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20


def _check_against_reference(model: LoFGAN, sampler: EpisodeSampler, backend: str, precision: Precision) -> None:
    """Eager G (fake and local loss) with ``backend`` equals the reference backend on fixed fusion randomness."""
    xs, _ = sampler.sample()
    f = MODEL_CFG.feature_size
    base, positions, alpha = model.gen.fusion.sample(B, K, f, f, DEVICE, torch.Generator(DEVICE).manual_seed(1))
    out = {}
    for name in ("reference", backend):
        with fsgan_fast.use_backend(name), torch.no_grad(), precision.autocast():
            fake, fusion = model.gen(xs, base=base, positions=positions, alpha=alpha)
            out[name] = (fake.float(), local_reconstruction_loss(xs, fake.float(), fusion))
    assert fsgan_fast.last_backend("lfm_fuse") == backend
    if precision.dtype is None:
        torch.testing.assert_close(out[backend], out["reference"], rtol=1e-3, atol=1e-4)
    else:  # low precision: near-tied cosine matches may pick other cells; compare on average
        assert (out[backend][0] - out["reference"][0]).abs().mean() < 2e-2


@pytest.mark.parametrize("amp, mode", RUNS, ids=[f"{a}-{m}" for a, m in RUNS])
@pytest.mark.parametrize("backend", BACKENDS)
def bench_lofgan_train_step(benchmark, backend, amp, mode):
    reason = _skip_reason(backend, amp)
    if reason:
        pytest.skip(reason)
    if mode == "compiled" and backend != COMPILED_BACKEND:
        pytest.skip(f"the compiled train step is timed with the {COMPILED_BACKEND} backend only (minutes of compilation "
                    "per case; the stage must fit one 10-minute device call)")
    benchmark.group = f"lofgan/train_step/{CONFIG_NAME}-b{B}k{K}s{MODEL_CFG.size}/{amp}/{mode}"
    torch._dynamo.reset()  # compiled graphs bake in the backend chosen when they were traced
    torch.manual_seed(0)
    generator = torch.Generator(DEVICE).manual_seed(0)
    trainer = LoFGANTrainer(
        LoFGAN(MODEL_CFG), LoFGANTrainConfig(iters=100_000, batch=B, amp=amp, compile=mode == "compiled"), generator
    )
    sampler = EpisodeSampler(_data(MODEL_CFG), B, K, generator=generator)
    _check_against_reference(trainer.model, sampler, backend, trainer.precision)
    with fsgan_fast.use_backend(backend):
        losses = trainer.train_step(sampler.sample())  # also warms up (and compiles) this shape
        assert all(math.isfinite(v) for v in torch.stack(list(losses.values())).tolist()), losses
        assert fsgan_fast.last_backend("lfm_fuse") == backend
        _gpu_memory_reset()
        timed(benchmark, lambda: trainer.train_step(sampler.sample()), inner=1, rounds=30 if ON_GPU else 3,
              warmup=3 if ON_GPU else 1, extra=_extra(backend, "train_step", amp, mode, B))
    _record_gpu_memory(benchmark)


@pytest.mark.parametrize("batch", [8, 64] if ON_GPU else [8])
@pytest.mark.parametrize("amp", sorted({a for a, _ in RUNS}))
@pytest.mark.parametrize("backend", BACKENDS)
def bench_lofgan_generate(benchmark, backend, amp, batch):
    reason = _skip_reason(backend, amp)
    if reason:
        pytest.skip(reason)
    benchmark.group = f"lofgan/generate/{CONFIG_NAME}-b{batch}k{K}s{MODEL_CFG.size}/{amp}"
    torch.manual_seed(0)
    model = LoFGAN(MODEL_CFG).to(DEVICE).eval()
    shots = torch.rand(K, 3, MODEL_CFG.size, MODEL_CFG.size, device=DEVICE) * 2 - 1
    precision = Precision(amp, DEVICE)
    sampler = EpisodeSampler(_data(MODEL_CFG, per_class=K), B, K, generator=torch.Generator(DEVICE).manual_seed(0))
    _check_against_reference(model, sampler, backend, precision)

    def generate() -> torch.Tensor:
        with precision.autocast():
            return model.generate(shots, batch, torch.Generator(DEVICE).manual_seed(0), batch_size=batch)

    with fsgan_fast.use_backend(backend):
        assert generate().shape == (batch, 3, MODEL_CFG.size, MODEL_CFG.size)
        _gpu_memory_reset()
        timed(benchmark, generate, inner=GEN_INNER, rounds=30 if ON_GPU else 3, warmup=3 if ON_GPU else 1,
              extra=_extra(backend, "generate", amp, "eager", batch))
    _record_gpu_memory(benchmark)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["images_per_s"] = batch * GEN_INNER / stats.stats.median
