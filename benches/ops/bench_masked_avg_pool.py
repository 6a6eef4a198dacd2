"""masked_avg_pool: the eager baseline (nearest resize + einsum), the reference, torch.compile of the baseline,
Triton, CUDA (and the CPU kernel on CPU).

Groups ``masked_avg_pool/<pass>/<shape>/<dtype>``. SMIS computes prototypes once per few-shot set (5 shots of 512
channels on a 64x64 grid, 19 classes from 256x256 masks), so this op has no speed target: the rows show that the
fast paths are not slower than the eager code they replace. Each case checks its result once before timing; a
backend that cannot run here is skipped with the reason.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fsgan_fast
from benches.conftest import DEVICE, skip_reason, timed
from fsgan_fast.ops import masked_avg_pool
from fsgan_fast.ops.masked_avg_pool import masked_avg_pool_reference
from tests.ops.kit import assert_close
from tests.ops.test_masked_avg_pool import make_inputs

ON_GPU = DEVICE.type == "cuda"
# (B, C, H, W, M, H', W'): SMIS's 5-shot set and a batch of 8 with 20 classes; small on the CPU (CI)
SHAPES = ({"b5c512s64m19": (5, 512, 64, 64, 19, 256, 256), "b8c512s64m20": (8, 512, 64, 64, 20, 64, 64)} if ON_GPU
          else {"b2c64s16m19": (2, 64, 16, 16, 19, 64, 64)})
VARIANTS = ["eager", "reference", "compiled", "triton", "cuda", "cpu"]
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32]


def eager_baseline(feats, masks, per_image):
    """What one writes without the op (the global rule): interpolate the masks, one einsum, divide."""
    w = F.interpolate(masks.float(), size=feats.shape[-2:], mode="nearest")
    sums = torch.einsum("bmhw,bchw->mc", w, feats.float())
    total = w.sum((0, 2, 3))
    return (sums / total.clamp_min(1e-12)[:, None]).to(feats.dtype), total > 0


def _runner(variant: str):
    if variant == "eager":
        return eager_baseline
    if variant == "reference":
        return masked_avg_pool_reference
    if variant == "compiled":
        torch._dynamo.reset()
        return torch.compile(eager_baseline, dynamic=False)
    return lambda f, m, per_image: masked_avg_pool(f, m, per_image=per_image, backend=variant)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("passes", ["fwd", "fwdbwd"])
def bench_masked_avg_pool(benchmark, variant, shape_name, passes, dtype):
    reason = skip_reason("masked_avg_pool", variant, dtype)
    if reason:
        pytest.skip(reason)
    shape = SHAPES[shape_name]
    B, C, H, W, M, Hm, Wm = shape
    benchmark.group = f"masked_avg_pool/{passes}/{shape_name}/{str(dtype).removeprefix('torch.')}"
    feats, masks = make_inputs(*shape, dtype=dtype, device=DEVICE, masks="onehot")
    per_image = False  # the eager baseline's rule
    run = _runner(variant)

    # correctness once, on the inputs that are timed
    vectors, present = run(feats, masks, per_image)
    expected, expected_present = masked_avg_pool_reference(feats.double(), masks.double(), per_image)
    assert_close(vectors, expected, {torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype], f"{variant} vectors")
    assert present.tolist() == expected_present.tolist()
    if variant not in ("eager", "reference", "compiled"):
        assert fsgan_fast.last_backend("masked_avg_pool") == variant

    if passes == "fwd":

        def step():
            run(feats, masks, per_image)

    else:
        x = feats.clone().requires_grad_()
        grad = torch.randn(vectors.shape, device=DEVICE, dtype=dtype)

        def step():
            v, _ = run(x, masks, per_image)
            v.backward(grad)

    e = torch.tensor([], dtype=dtype).element_size()
    nbytes = B * C * H * W * e + B * M * H * W * 4 + M * C * e  # features once, the sampled masks, the vectors
    timed(
        benchmark,
        step,
        inner=20 if ON_GPU else 1,
        rounds=30 if ON_GPU else 3,
        graph=True,
        extra={
            "op": "masked_avg_pool",
            "backend": variant,
            "pass": passes,
            "shape": {"B": B, "C": C, "H": H, "W": W, "M": M, "Hm": Hm, "Wm": Wm},
            "dtype": str(dtype).removeprefix("torch."),
            "per_image": per_image,
            "bytes": nbytes if passes == "fwd" else 3 * nbytes,
        },
    )
