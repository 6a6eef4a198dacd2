"""lfm_fuse: reference (eager) vs torch.compile of the reference vs Triton vs CUDA (vs the CPU kernel on CPU).

Groups ``lfm_fuse/<pass>/<shape>``; each case checks its result against the float64 reference once
before timing. A backend that cannot run here is skipped with the reason, never timed under its name.
"""

from __future__ import annotations

import pytest
import torch

import fsgan_fast
from benches.conftest import DEVICE, skip_reason, timed
from fsgan_fast.ops import lfm_fuse
from fsgan_fast.ops.lfm import lfm_apply_reference, lfm_fuse_reference
from tests.ops.test_lfm import assert_close, assert_matches_are_argmax, make_inputs

# (B, K, C, H, W, n): PERFORMANCE.md's two sizes (n = 0.5 * H * W, LoFGAN's eta)
SHAPES = {"b8k3c128s8": (8, 3, 128, 8, 8, 32), "b64k5c256s16": (64, 5, 256, 16, 16, 128)}
VARIANTS = ["reference", "compiled", "triton", "cuda", "cpu"]
DTYPES = [torch.float32, torch.bfloat16] if DEVICE.type == "cuda" else [torch.float32]
ON_GPU = DEVICE.type == "cuda"


def _runner(variant: str):
    if variant == "reference":
        return lfm_fuse_reference
    if variant == "compiled":
        torch._dynamo.reset()
        return torch.compile(lfm_fuse_reference, dynamic=False)
    return lambda f, b, p, a: lfm_fuse(f, b, p, a, backend=variant, check_indices=False)


def _bytes(shape, dtype, passes: str) -> int:
    B, K, C, H, W, n = shape
    e = torch.tensor([], dtype=dtype).element_size()
    fwd = (B * K * C * H * W + B * C * H * W) * e  # read every shot once, write the fused map
    if passes == "fwd":
        return fwd
    # backward: read grad and the features it weights, write grad_feats
    return fwd + (B * C * H * W + B * K * C * H * W + B * K * C * H * W) * e


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("passes", ["fwd", "fwdbwd"])
def bench_lfm_fuse(benchmark, variant, shape_name, passes, dtype):
    reason = skip_reason("lfm_fuse", variant, dtype)
    if reason:
        pytest.skip(reason)
    shape = SHAPES[shape_name]
    benchmark.group = f"lfm_fuse/{passes}/{shape_name}/{str(dtype).removeprefix('torch.')}"
    feats, base, positions, alpha = make_inputs(*shape, dtype=dtype, device=DEVICE)
    run = _runner(variant)

    # correctness once, on the inputs that are timed
    fused, ref_idx = run(feats, base, positions, alpha)
    assert_matches_are_argmax(feats, base, positions, ref_idx, dtype)
    expected = lfm_apply_reference(feats.double().cpu(), base.cpu(), positions.cpu(), ref_idx.cpu(), alpha.double().cpu())
    assert_close(fused, expected, {torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype], f"{variant} fused")
    if variant not in ("reference", "compiled"):
        assert fsgan_fast.last_backend("lfm_fuse") == variant

    if passes == "fwd":

        def step():
            run(feats, base, positions, alpha)

    else:
        x = feats.clone().requires_grad_()
        a = alpha.clone().requires_grad_()
        grad = torch.randn(fused.shape, device=DEVICE, dtype=dtype)

        def step():
            out, _ = run(x, base, positions, a)
            out.backward(grad)

    B, K, C, H, W, n = shape
    timed(
        benchmark,
        step,
        inner=20 if ON_GPU else 1,
        rounds=50 if ON_GPU else 3,
        graph=True,
        extra={
            "op": "lfm_fuse",
            "backend": variant,
            "pass": passes,
            "shape": {"B": B, "K": K, "C": C, "H": H, "W": W, "n": n},
            "dtype": str(dtype).removeprefix("torch."),
            "check_indices": False,
            "bytes": _bytes(shape, dtype, passes),
        },
    )
