"""Feature extraction for the metrics: images/s of the FID Inception (pool3 at 299 px, FID/KID) and of its stem
(SIFID), random-init weights (the speed does not depend on them).

On the CPU: batch 4 in fp32 (a 2-core CI machine does a few images/s at 299 px). On a GPU: batch 50 (pytorch-fid's
default) in fp32 and fp16; ``extra_info["images_per_s"]`` holds the figure. fp16 is timed, not used by the
protocols: they extract in fp32.
"""

from __future__ import annotations

import pytest
import torch

from benches.conftest import DEVICE, timed
from fsgan_fast.metrics.inception import FIDInception

ON_GPU = DEVICE.type == "cuda"
BATCH = 50 if ON_GPU else 4
DTYPES = ["float32", "float16"] if ON_GPU else ["float32"]


@pytest.fixture(scope="module")
def inception():
    return FIDInception(random_weights=True).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("features", ["pool3", "early"])
def bench_metrics_features(benchmark, inception, features, dtype):
    dt = getattr(torch, dtype)
    net = inception.to(dt)
    # pool3: generated images at 128 px, resized to 299 inside; early: a SinGAN-sized 250x188 image
    shape = (BATCH, 3, 128, 128) if features == "pool3" else (1, 3, 188, 250)
    x = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(DEVICE, dt)
    fn = net.pool3 if features == "pool3" else net.early
    out = fn(x)
    assert torch.isfinite(out).all()
    benchmark.group = f"metrics/{features}"
    timed(benchmark, lambda: fn(x), inner=1, rounds=5 if ON_GPU else 2, warmup=1, extra={
        "model": "metrics", "pass": f"inception_{features}", "dtype": dtype, "shape": list(shape)})
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["images_per_s"] = shape[0] / stats.stats.median
    inception.to(torch.float32)
