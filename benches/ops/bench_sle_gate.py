"""sle_gate: eager reference vs torch.compile of it vs Triton vs CUDA (vs the CPU kernel on the CPU).

Groups ``sle_gate/<pass>/<shape>/<dtype>``. The shapes are FastGAN's generator SLE pairs at ngf=64 (nfc =
64 x {8: 8, 16: 4, 32: 2, 128: 1, 256: .5, 512: .25}): x_low 8x512x8^2 gates x_high 8x64x128^2, 8x256x16^2 gates
8x32x256^2, 8x128x32^2 gates 8x16x512^2 (PERFORMANCE.md's three sizes); on the CPU a small pair, so that CI runs
every case once quickly. Each case checks its result (and for fwdbwd its four gradients) against the float64
reference once before timing; a backend that cannot run here is skipped with the reason.

The op is memory-bound: ``bytes`` is what must move (fwd: read x_high and x_low, write y; fwdbwd adds reading dy
and x_high, writing d x_high and d x_low), and benches/conftest.py turns it into the HBM floor (``hbm_floor_us``,
from a measured device-to-device copy) and ``pct_hbm_floor``.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import fsgan_fast
from benches.conftest import DEVICE, skip_reason, timed
from fsgan_fast.ops import sle_gate
from tests.ops import kit
from tests.ops.test_sle_gate import make_inputs

S = importlib.import_module("fsgan_fast.ops.sle_gate")  # the module (the package attribute is the function)

ON_GPU = DEVICE.type == "cuda"
# name -> (B, Cl, h, w, Ch, H, W)
if ON_GPU:
    SHAPES = {
        "b8c64s128": (8, 512, 8, 8, 64, 128, 128),  # SLE 8 -> 128
        "b8c32s256": (8, 256, 16, 16, 32, 256, 256),  # SLE 16 -> 256
        "b8c16s512": (8, 128, 32, 32, 16, 512, 512),  # SLE 32 -> 512
    }
else:  # the same kind of pair, small enough for a 2-core CI machine
    SHAPES = {"b2c16s64": (2, 128, 16, 16, 16, 64, 64)}
VARIANTS = ["reference", "compiled", "triton", "cuda", "cpu"]
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32]
ACT = "swish"  # FastGAN's code


def _runner(variant: str):
    if variant == "reference":
        return S.sle_gate_reference
    if variant == "compiled":
        torch._dynamo.reset()
        return torch.compile(S.sle_gate_reference, dynamic=False)
    return lambda *a: sle_gate(*a, backend=variant)


def _bytes(shape, dtype, passes: str) -> int:
    B, Cl, h, w, Ch, H, W = shape
    e = torch.tensor([], dtype=dtype).element_size()
    n_high, n_low = B * Ch * H * W, B * Cl * h * w
    fwd = (2 * n_high + n_low) * e  # read x_high and x_low, write y (the gate's weights are noise)
    # backward: read dy and x_high (d gate and d x_high in one pass), write d x_high and d x_low
    return fwd if passes == "fwd" else fwd + (3 * n_high + n_low) * e


def _check(got, want, dtype, what, rel=1e-5):
    """On the device, to keep the big shapes quick: the float64 ``want`` within a float32 accumulation error
    relative to its largest value (``rel``), plus two roundings into ``dtype``."""
    want = want.detach()
    scale = max(1.0, float(want.abs().max()))
    err = (got.detach().double() - want).abs()
    bound = rel * scale + 2 * torch.finfo(dtype).eps * want.abs()
    bad = err > bound
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())}/{bad.numel()} off; max |err| {float(err.max()):.3e} "
                                 f"(scale {scale:.3g})")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("passes", ["fwd", "fwdbwd"])
def bench_sle_gate(benchmark, variant, shape_name, passes, dtype):
    reason = skip_reason(("sle_gate", "sle_gate_backward"), variant, dtype)  # the forward resolves the backward too
    if reason:
        pytest.skip(reason)
    shape = SHAPES[shape_name]
    benchmark.group = f"sle_gate/{passes}/{shape_name}/{str(dtype).removeprefix('torch.')}"
    # weights in float32, as the layer keeps them (under autocast too)
    inputs = make_inputs(*shape, dtype=dtype, wdtype=torch.float32, device=DEVICE)
    leaves = [t.requires_grad_(passes == "fwdbwd") for t in inputs]
    run = _runner(variant)

    # correctness once, on the inputs that are timed, against float64 (on the device)
    ref_leaves = [t.detach().double().requires_grad_() for t in inputs]
    want = S.sle_gate_reference(*ref_leaves, ACT)
    y = run(*leaves, ACT)
    assert y.dtype == dtype
    # the eager reference's convolutions run in cuDNN's default TF32 on a GPU (first GPU run: 1.3e-3 off), and in
    # bf16 it computes in bf16 (3.2e-2 off): the baseline is timed as users run it and checked to that accuracy;
    # our kernels accumulate in float32 and keep float32's
    rel = 1e-5
    if variant in ("reference", "compiled") and ON_GPU:
        rel = 5e-3 if dtype == torch.float32 else 3e-2
    _check(y, want, dtype, f"{variant} y", rel)
    ran = None
    if variant not in ("reference", "compiled"):  # never time a fallback under the fast name
        ran = fsgan_fast.last_backend("sle_gate")
        assert ran == variant, f"sle_gate ran {ran!r}, not {variant!r}"
    grad = kit.randn(y.shape, kit.generator(1), dtype, DEVICE)
    if passes == "fwdbwd":
        got = torch.autograd.grad(y, leaves, grad)
        want_grads = torch.autograd.grad(want, ref_leaves, grad.double())
        for name, g, w in zip(("x_low", "x_high", "w1", "w2"), got, want_grads):
            _check(g, w, g.dtype, f"{variant} grad {name}", rel)
    del want, ref_leaves, y

    if passes == "fwd":

        def step():
            run(*leaves, ACT)

    else:

        def step():
            # autograd.grad, not backward(): no accumulation into .grad, which would add traffic of its own
            torch.autograd.grad(run(*leaves, ACT), leaves, grad)

    B, Cl, h, w, Ch, H, W = shape
    timed(
        benchmark,
        step,
        inner=20 if ON_GPU else 1,
        rounds=50 if ON_GPU else 3,
        graph=True,
        extra={
            "op": "sle_gate",
            "backend": variant,
            "pass": passes,
            "shape": {"B": B, "C": Ch, "H": H, "W": W},
            "low_shape": {"B": B, "C": Cl, "H": h, "W": w},
            "dtype": str(dtype).removeprefix("torch."),
            "weights_dtype": "float32",
            "act": ACT,
            "last_backend": ran,
            "bytes": _bytes(shape, dtype, passes),
        },
    )
