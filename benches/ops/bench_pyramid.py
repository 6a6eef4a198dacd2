"""SinGAN's scale step: ``pyramid_inject`` (resize by 1/r, crop, noise, pad) per backend, against the eager
reference and against the official code's path (a uint8 round trip through numpy on the CPU for every resize).

Groups ``pyramid_inject/<shape>``: SinGAN trains at batch 1, so the finest step of a 250 px image (199^2 -> 250^2)
and the coarsest (25^2 -> 32^2) are launch-bound; generating 64 samples at once is the batched case. Each case
checks its result against the float64 reference once before timing, and on a GPU also times a CUDA-graph replay
(``graph_us_per_call``): SinGAN's fused training mode captures whole scale steps.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import fsgan_fast
from benches.conftest import DEVICE, skip_reason, timed
from fsgan_fast.ops import pyramid_inject

P = importlib.import_module("fsgan_fast.ops.pyramid")
R = importlib.import_module("fsgan_fast.ops.imresize")

ON_GPU = DEVICE.type == "cuda"
RATIO = (25 / 250) ** 0.1  # r of a 250 px image
# name -> (B, h, w, H, W)
SHAPES = {
    "b1s199to250": (1, 199, 199, 250, 250),
    "b1s25to32": (1, 25, 25, 32, 32),
    "b64s199to250": (64, 199, 199, 250, 250) if ON_GPU else (4, 63, 63, 80, 80),
}
VARIANTS = ["official", "reference", "triton", "cuda", "cpu"]


def official_step(prev: torch.Tensor, size, noise, amp: float, pad: int = 5):
    """What the official code does between scales: the image to uint8 HWC numpy on the CPU (batch element 0 only,
    truncating), the resize there in float64, back to the device, crop, then noise and the two pads as separate
    ops. Our numpy resize stands in for the reference's (the same matrices, applied along each axis)."""
    img = ((prev[0].permute(1, 2, 0) + 1) / 2 * 255).clamp(0, 255).cpu().numpy().astype(np.uint8)
    rows = R.resize_matrix(prev.shape[2], R.output_length(prev.shape[2], 1 / RATIO), 1 / RATIO, "matlab", "official")
    cols = R.resize_matrix(prev.shape[3], R.output_length(prev.shape[3], 1 / RATIO), 1 / RATIO, "matlab", "official")
    out = np.einsum("yh,hwc->ywc", rows, img.astype(np.float64))
    out = np.einsum("xw,ywc->yxc", cols, out)
    up = torch.from_numpy(out / 255).permute(2, 0, 1)[None].to(prev.device, torch.float32) * 2 - 1
    up = up[:, :, : size[0], : size[1]]
    pad_fn = torch.nn.ZeroPad2d(pad)
    return up, pad_fn(up) + amp * pad_fn(noise)


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("variant", VARIANTS)
def bench_pyramid_inject(benchmark, variant, shape_name):
    reason = skip_reason("pyramid_inject", variant)
    if reason:
        pytest.skip(reason)
    B, h, w, H, W = SHAPES[shape_name]
    if variant == "official" and B > 1:
        pytest.skip("the official code resizes batch element 0 only")
    benchmark.group = f"pyramid_inject/{shape_name}"
    g = torch.Generator().manual_seed(0)
    prev = (torch.rand(B, 3, h, w, generator=g) * 2 - 1).to(DEVICE)
    noise = torch.randn(B, 3, H, W, generator=g).to(DEVICE)
    amp = 0.1

    if variant == "official":
        def step():
            return official_step(prev, (H, W), noise, amp)
    elif variant == "reference":
        def step():
            return P.pyramid_inject_reference(prev, (H, W), noise, amp, scale=1 / RATIO)
    else:
        def step():
            return pyramid_inject(prev, (H, W), noise, amp, scale=1 / RATIO, backend=variant)

    up, g_in = step()
    want_up, want_g = P.pyramid_inject_reference(prev.double(), (H, W), noise.double(), amp, scale=1 / RATIO)
    tol = 2.5 / 255 if variant == "official" else 1e-5  # the official path quantises to uint8
    assert float((up.double() - want_up).abs().max()) < tol and float((g_in.double() - want_g).abs().max()) < tol
    if variant not in ("official", "reference"):
        assert fsgan_fast.last_backend("pyramid_inject") == variant

    timed(
        benchmark,
        step,
        inner=20 if ON_GPU else 1,
        rounds=30 if ON_GPU else 3,
        graph=variant not in ("official",),
        extra={
            "op": "pyramid_inject",
            "backend": variant,
            "pass": "fwd",
            "shape": {"B": B, "C": 3, "h": h, "w": w, "H": H, "W": W, "pad": 5},
            "dtype": "float32",
            "bytes": (B * 3 * (h * w + H * W + H * W + (H + 10) * (W + 10))) * 4,
        },
    )
