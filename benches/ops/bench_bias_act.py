"""StyleGAN2's fused bias + leaky ReLU (``bias_act``) per backend, against eager PyTorch's unfused
``F.leaky_relu(x + b.view(1, C, 1, 1), 0.2) * sqrt(2)`` (rosinality's fallback path: three passes over x).

Groups ``bias_act/<fwd|fwd+bwd>/<shape>``: on a GPU the StyleGAN2 generator's activations at 64 px (8x512x64x64,
the 1024 px config's 64 px block) and 256 px (8x256x256x256), and the mapping network's EqualLinear (8x512,
launch-bound); on the CPU smaller stand-ins. Every case checks its result against the float64 reference once
before timing; ``bytes`` is the HBM floor (read x, write y; backward: read grad and y, write grad_x).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import fsgan_fast
from benches.conftest import DEVICE, skip_reason, timed
from fsgan_fast.ops import bias_act

BA = importlib.import_module("fsgan_fast.ops.bias_act")

ON_GPU = DEVICE.type == "cuda"
SHAPES = {
    "b8c512s64": (8, 512, 64, 64) if ON_GPU else (2, 64, 32, 32),
    "b8c256s256": (8, 256, 256, 256) if ON_GPU else (2, 32, 64, 64),
    "b8c512-linear-layer": (8, 512),
}
VARIANTS = ["eager", "reference", "compiled", "triton", "cuda", "cpu"]
PASSES = ["fwd", "fwd+bwd"]


def eager_flrelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x + bias.view(1, -1, *([1] * (x.dim() - 2))), 0.2) * math.sqrt(2)


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("mode", PASSES)
@pytest.mark.parametrize("variant", VARIANTS)
def bench_bias_act(benchmark, variant, mode, shape_name):
    reason = skip_reason(("bias_act", "bias_act_backward"), variant)
    if reason:
        pytest.skip(reason)
    shape = SHAPES[shape_name]
    benchmark.group = f"bias_act/{mode}/{shape_name}"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(DEVICE)
    bias = (torch.randn(shape[1], generator=g) * 0.5).to(DEVICE)
    backward = mode == "fwd+bwd"
    if backward:
        x.requires_grad_()
        bias.requires_grad_()
    grad = torch.randn(shape, generator=g).to(DEVICE)

    if variant == "eager":
        fn = eager_flrelu
    elif variant == "reference":
        fn = BA.bias_act_reference
    elif variant == "compiled":
        fn = torch.compile(eager_flrelu, fullgraph=True)
    else:
        def fn(a, b):
            return bias_act(a, b, backend=variant)

    def step():
        y = fn(x, bias)
        if backward:
            torch.autograd.grad(y, (x, bias), grad)
        return y

    y = step()
    want = BA.bias_act_reference(x.detach().double(), bias.detach().double())
    assert float((y.detach().double() - want).abs().max()) < 1e-5
    if variant in ("triton", "cuda", "cpu"):
        assert fsgan_fast.last_backend("bias_act") == variant

    n = math.prod(shape)
    timed(
        benchmark,
        step,
        inner=20 if ON_GPU else 2,
        rounds=30 if ON_GPU else 3,
        graph=variant != "compiled" and not backward,
        extra={
            "op": "bias_act",
            "backend": variant,
            "pass": mode,
            "shape": {"N": shape[0], "C": shape[1], "rest": list(shape[2:])},
            "dtype": "float32",
            "bytes": n * 4 * (2 + (4 if backward else 0)),  # bwd: grad, y, grad_x, and grad_x again for the bias sum
        },
    )
