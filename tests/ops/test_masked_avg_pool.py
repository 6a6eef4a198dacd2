"""masked_avg_pool: every backend against the float64 reference, both pooling rules, forward and backward.

Masks come as soft weights, one-hot labels (with classes missing from some or all images) and bools, at the feature
grid's size or another one (SMIS: 256x256 masks over a 64x64 grid).
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from fsgan_fast.ops import Prototypes, masked_avg_pool
from tests.ops import kit
from tests.ops.kit import TOL, assert_close

MAP = importlib.import_module("fsgan_fast.ops.masked_avg_pool")

OP = "masked_avg_pool"

# (B, C, H, W, M, H', W'): minimum, masks finer (odd ratios, SMIS's 4x), masks coarser (nearest upsampling), same
# size, one past the kernels' 16/32 blocks in C and M and past 64 pixels
SHAPES = kit.shapes(
    (1, 1, 1, 1, 1, 1, 1),
    (2, 5, 6, 7, 3, 13, 9),
    (1, 3, 8, 8, 2, 32, 32),
    (3, 17, 5, 4, 4, 5, 4),
    (2, 33, 9, 9, 17, 4, 3),
    (2, 7, 5, 13, 5, 11, 2),
)


def make_inputs(B, C, H, W, M, Hm, Wm, dtype=torch.float32, device="cpu", seed=0, masks="soft"):
    """(feats [B,C,H,W] dtype, masks [B,M,Hm,Wm]). ``masks``: "soft" (weights in [0.1, 1.1), every class everywhere),
    "onehot" (float32 one-hot of random labels over M+1 values: label M is unlabelled, so classes go missing), or
    "bool" (the same labels as bools)."""
    gen = kit.generator(seed)
    feats = kit.randn((B, C, H, W), gen, dtype, device)
    if masks == "soft":
        return feats, (torch.rand(B, M, Hm, Wm, generator=gen, dtype=torch.float64) + 0.1).float().to(device)
    labels = kit.randint(M + 1, (B, Hm, Wm), gen)
    onehot = F.one_hot(labels, M + 1)[..., :M].permute(0, 3, 1, 2).contiguous()
    return feats, (onehot.bool() if masks == "bool" else onehot.float()).to(device)


def _leaf(t, dtype=None):
    return t.detach().cpu().to(dtype or t.dtype).requires_grad_()


# ---------------------------------------------------------------------------------------------------
# Forward and backward against the reference


@pytest.mark.parametrize("per_image", [False, True], ids=["global", "per_image"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", kit.FLOAT_DTYPES, ids=str)
def test_masked_avg_pool_matches_reference(backend, shape, dtype, per_image):
    backend.require(dtype)
    B, C, H, W, M, Hm, Wm = shape
    feats, masks = make_inputs(*shape, dtype=dtype, device=backend.device)
    feats.requires_grad_(True)
    masks.requires_grad_(True)
    vectors, present = backend.run(masked_avg_pool, feats, masks, per_image=per_image)
    assert isinstance(vectors, torch.Tensor) and vectors.dtype == dtype and vectors.shape == (M, C)
    assert present.dtype == torch.bool and bool(present.all())

    f64, m64 = _leaf(feats, torch.float64), _leaf(masks, torch.float64)
    expected, _ = MAP.masked_avg_pool_reference(f64, m64, per_image)
    grad = kit.randn((M, C), kit.generator(1))
    vectors.backward(grad.to(backend.device, dtype))
    expected.backward(grad)
    assert feats.grad.dtype == dtype and masks.grad.dtype == torch.float32
    # a mean of many terms: its rounding error stays ~1 ulp; the mask gradient sums C products
    checks = [(vectors, expected, TOL[dtype], "vectors"), (feats.grad, f64.grad, TOL[dtype], "grad feats"),
              (masks.grad, m64.grad, max(TOL[dtype], TOL[torch.float32]) * C**0.5, "grad masks")]
    for got, want, atol, what in checks:
        assert_close(got, want, atol, what)
    if dtype in kit.LOW_PRECISION:  # and within 2x the error of the reference run in the same precision
        f16, m16 = _leaf(feats), _leaf(masks)
        same, _ = MAP.masked_avg_pool_reference(f16, m16, per_image)
        same.backward(grad.to(dtype))
        for (got, want, _, what), lowp in zip(checks, (same, f16.grad, m16.grad)):
            kit.assert_close_lowp(got, want, lowp, what, floor=TOL[dtype] / 8)


@pytest.mark.parametrize("per_image", [False, True], ids=["global", "per_image"])
def test_masked_avg_pool_empty_classes(backend, per_image):
    """One-hot labels where class 0 is in no image and class 2 only in image 1: zeros, present False, no NaN."""
    B, C, H, W, M = 3, 6, 5, 4, 4
    feats, masks = make_inputs(B, C, H, W, M, 10, 8, masks="onehot", seed=2)
    masks = masks.clone()
    labels = masks.argmax(1) + masks.sum(1).eq(0).long() * M  # back to labels, M = unlabelled
    labels[labels == 0] = M
    labels[(labels == 2) & (torch.arange(B).view(B, 1, 1) != 1)] = 3
    masks = F.one_hot(labels, M + 1)[..., :M].permute(0, 3, 1, 2).float().contiguous()
    assert masks[:, 0].sum() == 0 and masks[1, 2].sum() > 0 and masks[[0, 2], 2].sum() == 0  # setup
    f = feats.to(backend.device).requires_grad_()
    vectors, present = backend.run(masked_avg_pool, f, masks.to(backend.device), per_image=per_image)
    assert present.tolist() == [False, True, True, True]
    assert_close(vectors[0], torch.zeros(C), 0, "absent class")
    expected, _ = MAP.masked_avg_pool_reference(feats.double(), masks.double(), per_image)
    assert_close(vectors, expected, TOL[torch.float32], "vectors")
    vectors.sum().backward()
    assert bool(f.grad.isfinite().all())


def test_masked_avg_pool_known_answer(backend):
    """Image 0: a 2x2 grid, class 0 on three pixels of value 1, 2, 3 and class 1 on one of value 10; image 1: class 0
    on one pixel of value 7. Global mean of class 0 = (1+2+3+7)/4; per image = (2 + 7)/2."""
    feats = torch.tensor([[[[1.0, 2.0], [3.0, 10.0]]], [[[7.0, 0.5], [0.25, 0.125]]]])  # [2, 1, 2, 2]
    masks = torch.zeros(2, 2, 2, 2)
    masks[0, 0] = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    masks[0, 1, 1, 1] = 1.0
    masks[1, 0, 0, 0] = 1.0
    feats = torch.cat([feats, -2 * feats], dim=1)  # a second channel, scaled
    f, m = backend.to(feats, masks)
    got = backend.run(masked_avg_pool, f, m)
    assert isinstance(got, Prototypes)
    assert_close(got.vectors, torch.tensor([[13 / 4, -13 / 2], [10.0, -20.0]]), 1e-6, "global")
    got = backend.run(masked_avg_pool, f, m, per_image=True)
    assert_close(got.vectors, torch.tensor([[9 / 2, -9.0], [10.0, -20.0]]), 1e-6, "per image")
    # soft weights: class 0 of image 0 weighted 1, 3, 0, 0 -> (1*1 + 3*2) / 4
    masks[0, 0] = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    got = backend.run(masked_avg_pool, *backend.to(feats[:1], masks[:1]))
    assert_close(got.vectors[0], torch.tensor([7 / 4, -7 / 2]), 1e-6, "soft")


def test_masked_avg_pool_bool_masks_equal_float(backend):
    feats, masks = make_inputs(2, 5, 6, 6, 3, 12, 12, masks="bool", device=backend.device, seed=3)
    assert masks.dtype == torch.bool
    for per_image in (False, True):
        got = backend.run(masked_avg_pool, feats, masks, per_image=per_image)
        want = backend.run(masked_avg_pool, feats, masks.float(), per_image=per_image)
        assert_close(got.vectors, want.vectors, 0, "vectors")
        assert got.present.tolist() == want.present.tolist()
    f = feats.clone().requires_grad_()
    backend.run(masked_avg_pool, f, masks).vectors.sum().backward()  # bool masks: no gradient, feats still get one
    assert f.grad is not None and bool(f.grad.isfinite().all())


def test_masked_avg_pool_noncontiguous(backend):
    feats, masks = make_inputs(2, 6, 5, 4, 3, 5, 4, device=backend.device, seed=4)
    strided_f = feats.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    strided_m = masks.transpose(2, 3).contiguous().transpose(2, 3)
    assert not strided_f.is_contiguous() and not strided_m.is_contiguous()
    got = backend.run(masked_avg_pool, strided_f, strided_m, per_image=True)
    expected, _ = MAP.masked_avg_pool_reference(feats.double().cpu(), masks.double().cpu(), True)
    assert_close(got.vectors, expected, TOL[torch.float32], "vectors")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
def test_masked_avg_pool_nonfinite_features_like_reference(backend):
    """A NaN feature reaches every class of its image through the masked sums (0 * NaN), as in the reference; an
    absent class stays an exact zero."""
    feats, masks = make_inputs(2, 4, 4, 4, 3, 4, 4, masks="onehot", seed=5)
    masks[:, 2] = 0
    feats[0, 1, 2, 3] = float("nan")
    feats[1, 2, 0, 0] = float("inf")
    for per_image in (False, True):
        got = backend.run(masked_avg_pool, *backend.to(feats, masks), per_image=per_image)
        expected, present = MAP.masked_avg_pool_reference(feats.double(), masks.double(), per_image)
        assert_close(got.vectors, expected, TOL[torch.float32], "vectors")
        assert got.present.tolist() == present.tolist() == [True, True, False]


def test_masked_avg_pool_is_deterministic(backend):
    feats, masks = make_inputs(3, 12, 9, 9, 5, 20, 20, device=backend.device, seed=6)
    first = backend.run(masked_avg_pool, feats, masks, per_image=True)
    second = backend.run(masked_avg_pool, feats, masks, per_image=True)
    assert_close(second.vectors, first.vectors, 0, "vectors of the second run")


# ---------------------------------------------------------------------------------------------------
# The reference itself


@pytest.mark.parametrize("sizes", [(64, 256), (256, 64), (7, 13), (13, 7), (20, 14), (3, 10), (100, 33), (5, 5)])
def test_nearest_index_is_torch_nearest(sizes):
    out, src = sizes
    x = torch.arange(src, dtype=torch.float32).view(1, 1, src, 1)
    want = F.interpolate(x, size=(out, 1), mode="nearest").view(-1).long()
    assert MAP.nearest_index(out, src).tolist() == want.tolist()


def test_resize_masks_is_interpolate():
    _, masks = make_inputs(2, 1, 1, 1, 3, 37, 23, seed=7)
    want = F.interpolate(masks, size=(9, 31), mode="nearest")
    assert_close(MAP.resize_masks(masks, (9, 31)), want, 0, "resized")


def test_reference_backward_formula_matches_autograd():
    feats, masks = make_inputs(3, 5, 4, 6, 4, 4, 6, dtype=torch.float64, seed=8)
    masks = masks.double()
    masks[0, 1] = 0  # class 1 missing from image 0: per image, a count of 2
    for per_image in (False, True):
        f, w = feats.clone().requires_grad_(), masks.clone().requires_grad_()
        vectors, _ = MAP.pool_reference(f, w, per_image)
        grad = kit.randn(vectors.shape, kit.generator(1))
        vectors.backward(grad)
        gf, gw = MAP.pool_backward_reference(grad, feats, masks, per_image)
        assert_close(gf, f.grad, 1e-12, "grad feats")
        assert_close(gw, w.grad, 1e-12, "grad weights")


def test_masked_avg_pool_gradcheck_float64(fp64_backend):
    feats, masks = make_inputs(2, 3, 3, 4, 3, 5, 7, dtype=torch.float64, seed=9)
    f, m = feats.requires_grad_(), masks.double().requires_grad_()  # soft: every weight > 0, smooth everywhere
    for per_image in (False, True):
        kit.gradcheck(lambda f, m: fp64_backend.run(masked_avg_pool, f, m, per_image=per_image).vectors, f, m)
    _, onehot = make_inputs(2, 3, 3, 4, 3, 5, 7, masks="onehot", seed=9)  # empty classes: feats only
    kit.gradcheck(lambda f: fp64_backend.run(masked_avg_pool, f, onehot.double(), per_image=True).vectors, f)


# ---------------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, torch.export


def test_masked_avg_pool_opcheck(backend):
    feats, masks = make_inputs(2, 4, 3, 3, 3, 3, 3, device=backend.device)
    feats.requires_grad_()
    masks.requires_grad_()
    for per_image in (False, True):
        kit.opcheck("masked_avg_pool", (feats, masks, per_image, backend.name))


def test_masked_avg_pool_under_torch_compile_fullgraph():
    feats, masks = make_inputs(2, 6, 4, 4, 3, 8, 8)
    kit.assert_compiles(lambda f, m: masked_avg_pool(f, m, per_image=True), feats.requires_grad_(),
                        masks.requires_grad_())


def test_masked_avg_pool_torch_export():
    feats, masks = make_inputs(2, 6, 4, 4, 3, 8, 8)
    kit.assert_exports(lambda f, m: tuple(masked_avg_pool(f, m, backend="reference")), (feats, masks),
                       tuple(MAP.masked_avg_pool_reference(feats, masks)))


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, before any kernel runs, on every backend

BAD = kit.bad_inputs(
    ("feats rank", lambda f, m: (f[0], m), ValueError, r"feats must be 4-D"),
    ("masks rank", lambda f, m: (f, m[:, 0]), ValueError, r"masks must be 4-D"),
    ("batch", lambda f, m: (f, m[:1]), ValueError, r"masks must have one mask stack per image of feats \(B=2\)"),
    ("int masks", lambda f, m: (f, m.long()), TypeError, r"masks must be a floating or bool tensor"),
    ("int feats", lambda f, m: (f.long(), m), TypeError, r"feats must be a floating"),
    ("no classes", lambda f, m: (f, m[:, :0]), ValueError, r"masks must have no empty dimension"),
    ("empty feats", lambda f, m: (f[:, :0], m), ValueError, r"feats must have no empty dimension"),
    ("not a tensor", lambda f, m: (f, m.tolist()), TypeError, r"masks must be a torch.Tensor"),
    ("masks device", lambda f, m: (f, m.cpu()), ValueError, r"masks is on cpu but feats is on cuda", ("cuda",)),
)


@pytest.mark.parametrize("case", BAD)
def test_masked_avg_pool_bad_input(backend, case):
    kit.expect_bad_input(backend, masked_avg_pool, make_inputs(2, 4, 3, 3, 3, 6, 6, device=backend.device), case)


def test_masked_avg_pool_bad_per_image():
    feats, masks = make_inputs(2, 4, 3, 3, 3, 6, 6)
    with pytest.raises(TypeError, match="per_image must be a bool"):
        masked_avg_pool(feats, masks, per_image=1)


# ---------------------------------------------------------------------------------------------------
# Cases for the build tests: tests/test_cmake_build.py (the CMake library's CPU kernel) and
# tests/ops/test_triton_compile.py (every Triton variant the launcher picks, compiled for real GPUs)


@kit.native_cases("masked_avg_pool")
def masked_avg_pool_native_cases():
    feats, masks = make_inputs(3, 7, 5, 6, 4, 5, 6, dtype=torch.float64, masks="onehot", seed=11)
    weights = masks.double()
    return [kit.NativeCase("_masked_avg_pool_cpu", (feats, weights, per_image), MAP.pool_reference(feats, weights,
                                                                                                   per_image))
            for per_image in (False, True)]


# (B, C, H, W, M): SMIS's few-shot sets (1 and 5 shots of 512 channels on a 64x64 grid, 19 classes), the benchmark's
# 8x512x64x64 with 20 classes, many classes, a tiny odd one
AOT_SHAPES = [(1, 512, 64, 64, 19), (5, 512, 64, 64, 19), (8, 512, 64, 64, 20), (2, 256, 32, 32, 150), (1, 3, 5, 7, 2)]


@kit.aot_variants("masked_avg_pool", AOT_SHAPES)
def masked_avg_pool_aot_variants(shape, dtype):
    from fsgan_fast.kernels import masked_avg_pool as kernels

    B, C, H, W, M = shape
    t = kit.TRITON_TYPES[dtype]
    cfg = dict(kernels._config(C, M, H * W))
    warps = cfg.pop("num_warps")
    signature = dict(f_ptr=f"*{t}", w_ptr="*fp32", out_ptr=f"*{t}", present_ptr="*i1", B="i32", C="i32", M="i32",
                     P="i32")
    for per_image in (False, True):
        yield kit.AotVariant("masked_avg_pool", kernels._masked_avg_pool_kernel, signature,
                             dict(PER_IMAGE=per_image, **cfg), warps)
