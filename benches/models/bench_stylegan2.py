"""StyleGAN2 generation (the frozen prior of Few-shot SMIS): z -> mapping -> synthesis with fresh noise, batch 8.

On a GPU: config-f (style_dim 512, 8 mapping layers, channel_multiplier 2) at 64 and 256 px, in fp32, bf16 and fp16
autocast (eager), and torch.compile in bf16. On the CPU: the same layout narrowed (``channel_max=8``, style_dim 32,
2 mapping layers) at 64 and 256 px, fp32 eager only, so that CI runs each case in seconds; the other rows skip there.
``upfirdn2d`` and the fused bias + leaky ReLU run as composite PyTorch (see ``fsgan_fast/nn/stylegan2.py``): the
compiled rows are where they get fused. Each case checks its images once before timing: fp32 eager against per-sample generation
(the batch-grouped modulated convs must not mix samples), the others against fp32 eager.
"""

from __future__ import annotations

import pytest
import torch

from benches.conftest import DEVICE, skip_reason, timed
from fsgan_fast.nn.stylegan2 import NoiseInjection, StyleGAN2Config, StyleGAN2Generator

ON_GPU = DEVICE.type == "cuda"
BATCH = 8
SIZES = [64, 256]
DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (amp, mode): compile once, in bf16 (its compilation is the slow part of the stage); all but the first are GPU rows
RUNS = [("none", "eager"), ("bf16", "eager"), ("fp16", "eager"), ("bf16", "compiled")]
CONFIG_NAME = "config-f" if ON_GPU else "narrow"


def model_config(size: int) -> StyleGAN2Config:
    if ON_GPU:
        return StyleGAN2Config(size=size)  # config-f: the defaults
    return StyleGAN2Config(size=size, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=8)


def _build(size: int) -> StyleGAN2Generator:
    torch.manual_seed(0)
    gen = StyleGAN2Generator(model_config(size)).to(DEVICE).eval()
    with torch.no_grad():  # noise weights start at 0: give them trained-like values so noise is not a no-op
        for m in gen.modules():
            if isinstance(m, NoiseInjection):
                m.weight.fill_(0.1)
    return gen


def _generate(gen: StyleGAN2Generator, run, z: torch.Tensor, amp: str, seed: int = 1) -> torch.Tensor:
    """Fresh noise maps (drawn eagerly: a torch.Generator inside the compiled graph would break it), then ``run``."""
    noise = gen.make_noise(z.shape[0], generator=torch.Generator(DEVICE).manual_seed(seed))
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=DTYPES[amp], enabled=amp != "none"):
        return run(z, noise=noise).image


def _check(gen, run, z: torch.Tensor, amp: str) -> None:
    noise = gen.make_noise(BATCH, generator=torch.Generator(DEVICE).manual_seed(2))
    with torch.no_grad():
        want = gen(z, noise=noise).image
        if amp == "none" and run is gen:  # per-sample generation, with each sample's own noise maps
            ref = torch.cat([gen(z[i: i + 1], noise=[n[i: i + 1] for n in noise]).image for i in range(BATCH)])
            err = ((want - ref).abs().max() / ref.abs().max()).item()
            assert err < 1e-4, f"batched vs per-sample: max relative error {err:.2e}"
            return
        with torch.autocast(DEVICE.type, dtype=DTYPES[amp], enabled=amp != "none"):
            got = run(z, noise=noise).image.float()
    assert torch.isfinite(got).all(), f"{amp}: non-finite images"
    err = ((got - want).abs().mean() / want.abs().mean()).item()
    assert err < 5e-2, f"{amp}: mean relative error {err:.2e} against fp32 eager"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("amp, mode", RUNS, ids=[f"{a}-{m}" for a, m in RUNS])
def bench_stylegan2_generate(benchmark, amp, mode, size):
    if not ON_GPU and (amp, mode) != ("none", "eager"):
        pytest.skip("half-precision autocast and torch.compile rows are timed on the GPU only")
    reason = skip_reason((), mode)
    if reason:
        pytest.skip(reason)
    benchmark.group = f"stylegan2/generate/{CONFIG_NAME}-b{BATCH}s{size}/{amp}"
    gen = _build(size)
    z = torch.randn(BATCH, gen.style_dim, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    if mode == "compiled":
        torch._dynamo.reset()
        run = torch.compile(gen)
    else:
        run = gen
    _check(gen, run, z, amp)
    assert _generate(gen, run, z, amp).shape == (BATCH, 3, size, size)  # also warms up (and compiles) this shape
    if ON_GPU:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    inner = 5 if ON_GPU else 1
    extra = {"model": "stylegan2", "pass": "generate", "shape": {"B": BATCH, "size": size},
             "dtype": str(DTYPES[amp]).removeprefix("torch."), "config": CONFIG_NAME, "mode": mode}
    timed(benchmark, lambda: _generate(gen, run, z, amp), inner=inner, rounds=30 if ON_GPU else 3,
          warmup=3 if ON_GPU else 1, extra=extra)
    if ON_GPU:
        benchmark.extra_info["peak_gpu_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["images_per_s"] = BATCH * inner / stats.stats.median
