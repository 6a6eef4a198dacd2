"""imresize: the matlab resize matrices against an independent port of SinGAN's resizer (numpy, with its uint
tap indices), every backend against the float64 reference, gradients, PyTorch's own resize for the torch modes,
and bad input. The end of the file registers the family's cases for the CMake and Triton AOT build tests."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsgan_fast import backends
from fsgan_fast.ops import imresize
from tests.ops import kit
from tests.ops.kit import assert_close

R = importlib.import_module("fsgan_fast.ops.imresize")  # the module (the package attribute is the function)

OP = "imresize"


# ---------------------------------------------------------------------------------------------------
# The resize matrices against SinGAN's resizer (written again here from its description: a per-output loop of
# the cubic kernel's taps, the tap positions cast to unsigned as the reference does)


def _reference_cubic(x):
    ax = np.abs(x)
    return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
            + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def singan_matrix(n_in: int, scale: float, mirror_negative: bool = False) -> np.ndarray:
    n_out = int(np.ceil(n_in * scale))
    aa = scale < 1
    width = 4.0 / scale if aa else 4.0
    mat = np.zeros((n_out, n_in))
    for k in range(1, n_out + 1):
        centre = k / scale + 0.5 * (1 - 1 / scale)
        left = np.floor(centre - width / 2)
        taps = []
        for t in range(int(np.ceil(width) + 2)):
            pos = left + t - 1
            if pos < 0 and not mirror_negative:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pos_u = float(np.uint64(np.int64(pos)))  # two's complement: ~1.8e19, as np.uint gives
                w = scale * _reference_cubic(scale * (centre - pos_u - 1)) if aa else _reference_cubic(centre - pos_u - 1)
                taps.append((0, w))  # weight 0 in practice; its index does not matter
                continue
            d = centre - pos - 1
            w = scale * _reference_cubic(scale * d) if aa else _reference_cubic(d)
            m = int(pos) % (2 * n_in)
            taps.append((m if m < n_in else 2 * n_in - 1 - m, w))
        total = sum(w for _, w in taps) or 1.0
        for i, w in taps:
            mat[k - 1, i] += w / total
    return mat


@pytest.mark.parametrize("n, scale", [(250, 0.75), (183, 250 / 275), (40, 1 / 0.794), (25, 4 / 3), (7, 0.5),
                                      (100, 0.3), (33, 2.0), (5, 1.26)])
@pytest.mark.parametrize("edge", R.EDGES)
def test_matlab_matrix_is_singans_resizer(n, scale, edge):
    got = R.resize_matrix(n, R.output_length(n, scale), scale, "matlab", edge)
    want = singan_matrix(n, scale, mirror_negative=edge == "symmetric")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-13)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)  # weights sum to one


def test_edges_differ_only_at_the_top_left():
    """The official edge drops the taps before the first pixel; both mirror past the last one."""
    off = R.resize_matrix(60, 45, 0.75, "matlab", "official")
    sym = R.resize_matrix(60, 45, 0.75, "matlab", "symmetric")
    rows = np.flatnonzero(np.abs(off - sym).max(1) > 1e-12)
    assert rows.size and rows.max() < 3, rows  # only the first output rows see a tap left of pixel 0


def test_hand_worked_upscale_by_two():
    """Upscaling by 2 (no antialiasing): output pixel 2 (1-based) sits at input coordinate 1.25 (2/2 + 0.5*(1 - 1/2)),
    so its taps at 0-based inputs 0..2 get cubic(0.25), cubic(0.75), cubic(1.75) (normalised)."""
    mat = R.resize_matrix(4, 8, 2.0, "matlab", "symmetric")
    w = _reference_cubic(np.array([1.25, 0.25, 0.75, 1.75]))  # taps at input -1 (mirrored to 0), 0, 1, 2
    w = w / w.sum()
    np.testing.assert_allclose(mat[1, :3], [w[0] + w[1], w[2], w[3]], atol=1e-14)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(13, 17), (40, 9), (7, 7)])
def test_torch_modes_are_f_interpolate(mode, size):
    x = kit.randn((2, 3, 11, 14), kit.generator(3))
    want = F.interpolate(x, size=size, mode=mode, align_corners=False)
    assert_close(R.imresize_reference(x, size=size, mode=mode), want, 1e-12, mode)


def test_output_size_is_the_references_ceil():
    x = kit.randn((1, 3, 183, 275), kit.generator(1), torch.float32)
    assert imresize(x, 250 / 275, backend="reference").shape[-2:] == (167, 250)
    assert imresize(x, (0.5, 0.25), backend="reference").shape[-2:] == (92, 69)


# ---------------------------------------------------------------------------------------------------
# Every backend against the float64 reference

CASES = [
    ((2, 3, 25, 31), 0.75),
    ((1, 3, 32, 32), 1 / 0.794),
    ((2, 1, 9, 40), (1.26, 0.5)),
    ((1, 3, 5, 5), 2.0),
    ((3, 2, 50, 21), 0.3),
]


def _run_and_check(backend, shape, scale, dtype, edge="official", mode="matlab", size=None):
    backend.require(dtype)
    x = kit.randn(shape, kit.generator(7), dtype, backend.device).requires_grad_()
    kw = dict(mode=mode, edge=edge, size=size)
    y = backend.run(imresize, x, None if size else scale, **kw)
    x64 = x.detach().double().cpu().requires_grad_()
    want = R.imresize_reference(x64, None if size else scale, **kw)
    assert y.dtype == dtype and y.is_contiguous()
    tol = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert_close(y, want, tol * 2, "y")
    grad = kit.randn(y.shape, kit.generator(8), dtype, backend.device)
    (gx,) = torch.autograd.grad(y, x, grad)
    (wx,) = torch.autograd.grad(want, x64, grad.double().cpu())
    assert_close(gx, wx, tol * 4, "grad x")


@pytest.mark.parametrize("dtype", kit.FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape, scale", CASES, ids=[f"{'x'.join(map(str, s))}-{c}" for s, c in CASES])
def test_imresize_matches_reference(backend, shape, scale, dtype):
    _run_and_check(backend, shape, scale, dtype)


@pytest.mark.parametrize("edge", R.EDGES)
@pytest.mark.parametrize("mode, size", [("matlab", (20, 9)), ("bicubic", (17, 30)), ("bilinear", (6, 11))])
def test_imresize_modes_and_edges(backend, mode, size, edge):
    _run_and_check(backend, (2, 3, 12, 14), None, torch.float32, edge=edge, mode=mode, size=size)


def test_imresize_takes_any_layout(backend):
    x = kit.randn((2, 3, 10, 12), kit.generator(2), torch.float32, backend.device).contiguous(
        memory_format=torch.channels_last)
    assert_close(backend.run(imresize, x, 0.75), R.imresize_reference(x.double().cpu(), 0.75), 4e-6, "y")


def test_imresize_gradcheck_float64(fp64_backend):
    x = kit.randn((1, 2, 6, 7), kit.generator(4), torch.float64, fp64_backend.device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fp64_backend.run(imresize, t, 0.75), (x,))


def test_imresize_opcheck(backend):
    x = kit.randn((1, 2, 6, 7), kit.generator(4), torch.float32, backend.device).requires_grad_()
    t = R.tables(x, *R.plan(x.shape[-2:], scale=1.26))
    kit.opcheck("imresize", (x, *t.forward, *t.backward, backend.name))


def test_imresize_under_torch_compile_fullgraph(backend):
    x = kit.randn((2, 3, 9, 8), kit.generator(5), torch.float32, backend.device)
    kit.assert_compiles(lambda t: imresize(t, 0.75, backend=backend.name), x.requires_grad_())


def test_imresize_lowering_reference_leaves_only_standard_ops():
    x = kit.randn((1, 3, 9, 8), kit.generator(5), torch.float32)

    class Resize(torch.nn.Module):
        def forward(self, t):
            return imresize(t, 1.26)

    with backends.lowering("reference"):
        program = torch.export.export(Resize(), (x,))
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert names and all(n.startswith("aten.") for n in names), names
    assert_close(program.module()(x), R.imresize_reference(x.double(), 1.26), 2e-6, "y")


# ---------------------------------------------------------------------------------------------------
# Bad input

BAD = kit.bad_inputs(
    ("x rank", lambda x, s: (x[0], s), ValueError, r"x must be 4-D"),
    ("int x", lambda x, s: (x.long(), s), TypeError, "x must be a floating tensor"),
    ("empty x", lambda x, s: (x[:, :, :0], s), ValueError, "x must have no empty dimension"),
    ("zero scale", lambda x, s: (x, 0.0), ValueError, "scale must be a positive finite number"),
    ("nan scale", lambda x, s: (x, float("nan")), ValueError, "scale must be a positive finite number"),
    ("three scales", lambda x, s: (x, (0.5, 0.5, 0.5)), ValueError, "scale must be a positive finite number"),
)


@pytest.mark.parametrize("case", BAD)
def test_imresize_bad_input(backend, case):
    x = kit.randn((1, 3, 8, 8), kit.generator(0), torch.float32, backend.device)
    kit.expect_bad_input(backend, imresize, (x, 0.75), case)


def test_imresize_needs_scale_or_size():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="exactly one of scale and size"):
        imresize(x)
    with pytest.raises(ValueError, match="exactly one of scale and size"):
        imresize(x, 0.5, size=(4, 4))
    with pytest.raises(ValueError, match="mode must be one of"):
        imresize(x, 0.5, mode="area")
    with pytest.raises(ValueError, match="edge must be one of"):
        imresize(x, 0.5, edge="reflect")
    with pytest.raises(ValueError, match="size must be two positive ints"):
        imresize(x, size=(0, 4))


# ---------------------------------------------------------------------------------------------------
# Cases for the build tests


@kit.native_cases("imresize")
def imresize_native_cases():
    cases = []
    for shape, scale in ((2, 3, 9, 11), 0.75), ((1, 2, 4, 6), 1.26):
        x = kit.randn(shape, kit.generator(11))
        t = R.tables(x, *R.plan(x.shape[-2:], scale=scale))
        cases.append(kit.NativeCase("_imresize_cpu", (x, *t.forward), (R.taps_reference(x, *t.forward),)))
    return cases


@kit.aot_variants("imresize", [(1,)])
def imresize_aot_variants(shape, dtype):
    from fsgan_fast.kernels import imresize as kernels

    for op, kernel, signature, constexprs, warps in kernels.aot_variants(shape, dtype):
        yield kit.AotVariant(op, kernel, signature, constexprs, warps)
