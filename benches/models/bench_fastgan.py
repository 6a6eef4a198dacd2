"""FastGAN end to end: one training iteration (G forward, DiffAugment, D step with its three reconstruction
decoders, G step, EMA) and generation, per backend of the skip-layer-excitation op.

On a GPU: the paper's model (nz=256, ngf=ndf=64) at 256 and 1024 px, batch 8, in fp32 and bf16 autocast (plus
torch.compile in bf16 for one backend); generation also in fp16 autocast. The official code's 188 ms (256 px)
and 269 ms (1024 px) per iteration use LPIPS, so the train step does too when the VGG16 weights are found
(``extra_info["recon"]`` says which loss ran). On the CPU: a tiny 128 px model once (fp32, eager), so CI runs
each case in seconds. The backend picks the implementation of ``sle_gate`` (forward and backward); one that
cannot run here is skipped with the reason. Each case checks G against the reference backend once before timing.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import fsgan_fast
from benches.conftest import DEVICE, timed
from fsgan_fast import backends
from fsgan_fast.data.image_set import ImageSampler
from fsgan_fast.models.fastgan import FastGAN, FastGANConfig, Generator
from fsgan_fast.perceptual import lpips_available
from fsgan_fast.train.fastgan import FastGANTrainConfig, FastGANTrainer
from fsgan_fast.train.loop import Precision

ON_GPU = DEVICE.type == "cuda"
GEN_BATCH = 8
if ON_GPU:
    CONFIG_NAME, SIZES, TRAIN_BATCH = "paper", [256, 1024], 8
else:  # G and D at 128 px with narrow widths: a train step takes well under a second on 2 cores
    CONFIG_NAME, SIZES, TRAIN_BATCH = "tiny", [128], 2


def model_config(size: int) -> FastGANConfig:
    if ON_GPU:
        return FastGANConfig(size=size)  # the defaults are the official networks
    return FastGANConfig(size=size, nz=64, ngf=8, ndf=8, dec_ngf=8)


BACKENDS = ["reference", "cpu", "triton", "cuda"]
# (amp, mode): fp32 and bf16 eager on a GPU; compile once, in bf16 (minutes of compilation per case)
RUNS = [("none", "eager"), ("bf16", "eager"), ("bf16", "compiled")] if ON_GPU else [("none", "eager")]
GEN_AMPS = ["none", "bf16", "fp16"] if ON_GPU else ["none"]
DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILED_BACKEND = "cuda"
GEN_INNER = 5 if ON_GPU else 1
# the reference's loss when its weights are here (GPU figures comparable with the paper's), else MSE
RECON = "lpips" if lpips_available() is None else "mse"


def _skip_reason(backend: str, amp: str) -> str | None:
    if backend == "triton" and not ON_GPU:
        return "Triton timings are meaningful on a GPU only (the CPU interpreter is a correctness tool)"
    # the op resolves its backward with the forward, so both must be there even for generation
    for op in ("sle_gate", "sle_gate_backward"):
        reason = backends.why_unavailable(op, backend, DEVICE, DTYPES[amp])
        if reason is not None:
            return reason
    return None


def _images(size: int, n: int = 32) -> torch.Tensor:
    """Random uint8 images: the timing does not depend on their content."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g).to(DEVICE)


def _extra(backend: str, passes: str, amp: str, mode: str, batch: int, size: int) -> dict:
    return {
        "model": "fastgan",
        "backend": backend,
        "pass": passes,
        "shape": {"B": batch, "size": size},
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


def _calibrated_eval_copy(gen: Generator) -> Generator:
    """An eval-mode copy of G whose BatchNorm statistics come from one real batch.

    A fresh G's running statistics (0, 1) meet activations of ~1e-3: its eval-mode images are ~1e-5 and every SLE
    gate sits at sigmoid(~0), which would hide a wrong kernel. The copy leaves the timed model untouched
    (a train-mode forward also steps spectral norm's power iteration).
    """
    gen = copy.deepcopy(gen)
    bns = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: the stats of the batch below
    g = torch.Generator().manual_seed(2)
    gen.train()
    with torch.no_grad(), fsgan_fast.use_backend("reference"):
        gen(torch.randn(4, gen.cfg.nz, generator=g).to(DEVICE), noise=gen.make_noise(4, generator=g, device=DEVICE))
    return gen.eval()


def _check_against_reference(gen: Generator, backend: str, precision: Precision) -> None:
    """G with ``backend`` gives the reference backend's images for the same z and noise maps (eval mode)."""
    gen = _calibrated_eval_copy(gen)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, gen.cfg.nz, generator=g).to(DEVICE)
    noise = gen.make_noise(2, generator=g, device=DEVICE)
    out = {}
    for name in ("reference", backend):
        with fsgan_fast.use_backend(name), torch.no_grad(), precision.autocast():
            out[name] = gen(z, noise=noise)[0].float()
        assert fsgan_fast.last_backend("sle_gate") == name
    ref, got = out["reference"], out[backend]
    assert ref.std() > 1e-2, "the check needs images that are not flat"
    if precision.dtype is None:
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        assert err <= 1e-3, f"{backend}: max relative error {err:.2e} against the reference backend"
    else:  # rounding differs inside the gate and compounds through the up-blocks: compare on average
        err = (got - ref).abs().mean().item()
        assert err < 2e-2, f"{backend}: mean |err| {err:.2e} against the reference backend in {precision.mode}"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("amp, mode", RUNS, ids=[f"{a}-{m}" for a, m in RUNS])
@pytest.mark.parametrize("backend", BACKENDS)
def bench_fastgan_train_step(benchmark, backend, amp, mode, size):
    reason = _skip_reason(backend, amp)
    if reason:
        pytest.skip(reason)
    if mode == "compiled" and backend != COMPILED_BACKEND:
        pytest.skip(f"the compiled train step is timed with the {COMPILED_BACKEND} backend only (minutes of "
                    "compilation per case; the stage must fit one 10-minute device call)")
    cfg = model_config(size)
    benchmark.group = f"fastgan/train_step/{CONFIG_NAME}-b{TRAIN_BATCH}s{size}/{amp}/{mode}"
    torch._dynamo.reset()  # compiled graphs bake in the backend chosen when they were traced
    torch.manual_seed(0)
    generator = torch.Generator(DEVICE).manual_seed(0)
    train_cfg = FastGANTrainConfig(iters=100_000, batch=TRAIN_BATCH, amp=amp, compile=mode == "compiled", recon=RECON)
    trainer = FastGANTrainer(FastGAN(cfg), train_cfg, generator)
    sampler = ImageSampler(_images(size), TRAIN_BATCH, generator=generator)
    _check_against_reference(trainer.model.gen, backend, trainer.precision)
    with fsgan_fast.use_backend(backend):
        losses = trainer.train_step(sampler.sample())  # also warms up (and compiles) this shape
        assert all(math.isfinite(v) for v in torch.stack(list(losses.values())).tolist()), losses
        assert fsgan_fast.last_backend("sle_gate") == backend
        _gpu_memory_reset()
        extra = {**_extra(backend, "train_step", amp, mode, TRAIN_BATCH, size), "recon": RECON}
        timed(benchmark, lambda: trainer.train_step(sampler.sample()), inner=1, rounds=30 if ON_GPU else 3,
              warmup=3 if ON_GPU else 1, extra=extra)
    _record_gpu_memory(benchmark)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("amp", GEN_AMPS)
@pytest.mark.parametrize("backend", BACKENDS)
def bench_fastgan_generate(benchmark, backend, amp, size):
    reason = _skip_reason(backend, amp)
    if reason:
        pytest.skip(reason)
    cfg = model_config(size)
    benchmark.group = f"fastgan/generate/{CONFIG_NAME}-b{GEN_BATCH}s{size}/{amp}"
    torch.manual_seed(0)
    model = FastGAN(cfg).to(DEVICE).eval()
    precision = Precision(amp, DEVICE)
    _check_against_reference(model.gen, backend, precision)

    def generate() -> torch.Tensor:
        with precision.autocast():
            return model.generate(GEN_BATCH, torch.Generator(DEVICE).manual_seed(0), batch_size=GEN_BATCH)

    with fsgan_fast.use_backend(backend):
        assert generate().shape == (GEN_BATCH, 3, size, size)
        assert fsgan_fast.last_backend("sle_gate") == backend
        _gpu_memory_reset()
        timed(benchmark, generate, inner=GEN_INNER, rounds=30 if ON_GPU else 3, warmup=3 if ON_GPU else 1,
              extra=_extra(backend, "generate", amp, "eager", GEN_BATCH, size))
    _record_gpu_memory(benchmark)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["images_per_s"] = GEN_BATCH * GEN_INNER / stats.stats.median
