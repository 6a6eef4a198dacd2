"""cosine_topk: the eager baseline (normalise + einsum + topk), the reference, torch.compile of the baseline, Triton,
CUDA (and the CPU kernel on CPU).

Groups ``cosine_topk/<pass>/<shape>/<dtype>``. The target (OPS.md §5): the fused kernels >= 5x the eager baseline
on the GPU at 8x512x64x64 against 20 prototypes (dense pseudo labels, k=1), where the baseline writes the normalised
features and the [B, M, H*W] similarity to memory and the fast paths read the features once. Each case checks its
result once before timing; a backend that cannot run here is skipped with the reason, never timed under its name.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fsgan_fast
from benches.conftest import DEVICE, skip_reason, timed
from fsgan_fast.ops import cosine_topk
from fsgan_fast.ops.cosine_topk import EPS, cosine_topk_reference
from tests.ops.test_cosine_topk import assert_valid_topk, make_inputs

ON_GPU = DEVICE.type == "cuda"
# (B, C, H, W, M, k, over): dense labels (the target) and SMIS's sparse rule (200 stored vectors, top-3 pixels);
# on the CPU, small versions that CI runs
SHAPES = ({"dense_b8c512s64m20": (8, 512, 64, 64, 20, 1, "prototypes"),
           "sparse_b1c512s64m200k3": (1, 512, 64, 64, 200, 3, "pixels")} if ON_GPU else
          {"dense_b2c64s16m20": (2, 64, 16, 16, 20, 1, "prototypes"),
           "sparse_b1c64s16m50k3": (1, 64, 16, 16, 50, 3, "pixels")})
VARIANTS = ["eager", "reference", "compiled", "triton", "cuda", "cpu"]
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32]


def eager_baseline(feats, prototypes, k, over):
    """What one writes without the op: normalise both sides, one einsum, topk (ties unspecified)."""
    f = F.normalize(feats.float(), dim=1, eps=EPS)
    q = F.normalize(prototypes.float(), dim=1, eps=EPS)
    sim = torch.einsum("bchw,mc->bmhw", f, q)
    if over == "pixels":
        score, idx = sim.flatten(2).topk(k, dim=2)
    else:
        score, idx = sim.topk(k, dim=1)
    return idx, score.to(feats.dtype)


def _runner(variant: str):
    if variant == "eager":
        return eager_baseline
    if variant == "reference":
        return lambda f, q, k, over: cosine_topk_reference(f, q, k, over=over)
    if variant == "compiled":
        torch._dynamo.reset()
        return torch.compile(eager_baseline, dynamic=False)
    return lambda f, q, k, over: cosine_topk(f, q, k, over=over, backend=variant)


def _bytes(shape, dtype, passes: str) -> int:
    B, C, H, W, M, k, over = shape
    e = torch.tensor([], dtype=dtype).element_size()
    out = B * (M if over == "pixels" else H * W) * k * (8 + e)
    fwd = B * C * H * W * e + M * C * 4 + out  # read the features once, write idx and score
    # backward: read the features and the gradient of the scores, write the features' gradient
    return fwd if passes == "fwd" else fwd + 2 * B * C * H * W * e + out


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("passes", ["fwd", "fwdbwd"])
def bench_cosine_topk(benchmark, variant, shape_name, passes, dtype):
    reason = skip_reason("cosine_topk", variant, dtype)
    if reason:
        pytest.skip(reason)
    shape = SHAPES[shape_name]
    B, C, H, W, M, k, over = shape
    benchmark.group = f"cosine_topk/{passes}/{shape_name}/{str(dtype).removeprefix('torch.')}"
    feats, protos = make_inputs(B, C, H, W, M, dtype=dtype, device=DEVICE)
    protos = protos.float()
    run = _runner(variant)

    # correctness once, on the inputs that are timed
    idx, score = run(feats, protos, k, over)
    assert_valid_topk(feats, protos, idx, score, k, over, dtype, variant)
    if variant not in ("eager", "reference", "compiled"):
        assert fsgan_fast.last_backend("cosine_topk") == variant

    if passes == "fwd":

        def step():
            run(feats, protos, k, over)

    else:
        x = feats.clone().requires_grad_()
        grad = torch.randn(score.shape, device=DEVICE, dtype=dtype)

        def step():
            _, s = run(x, protos, k, over)
            s.backward(grad)

    timed(
        benchmark,
        step,
        inner=20 if ON_GPU else 1,
        rounds=50 if ON_GPU else 3,
        graph=True,
        extra={
            "op": "cosine_topk",
            "backend": variant,
            "pass": passes,
            "shape": {"B": B, "C": C, "H": H, "W": W, "M": M, "k": k, "over": over},
            "dtype": str(dtype).removeprefix("torch."),
            "bytes": _bytes(shape, dtype, passes),
        },
    )
