"""bias_act (StyleGAN2's fused bias + leaky ReLU): every backend against the float64 reference, forward and both
gradients, on ranks 2 to 5, odd sizes, sizes past the kernels' block, no bias, strided inputs, non-finite values;
gradcheck and gradgradcheck, opcheck of both ops, torch.compile; bad input. The end of the file registers the
family's cases for the CMake and Triton AOT build tests."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from fsgan_fast import backends
from fsgan_fast.nn import stylegan2
from fsgan_fast.ops import bias_act
from tests.ops import kit
from tests.ops.kit import assert_close

BA = importlib.import_module("fsgan_fast.ops.bias_act")  # the module: the package attribute is the function

OP = "bias_act"
TOL = {torch.float64: 1e-13, torch.float32: 2e-6}  # |y| <= ~10: a few float32 ulps
# (act, alpha, gain, with bias): StyleGAN2's fused_leaky_relu, no bias, EqualLinear without activation, other slopes
CONFIGS = {
    "lrelu": ("lrelu", 0.2, None, True),
    "lrelu-nobias": ("lrelu", 0.2, None, False),
    "linear": ("linear", 0.2, None, True),
    "lrelu-a0-g3": ("lrelu", 0.0, 3.0, True),
}
# rank 2 (EqualLinear), 3, 4 (convs), 5; ones; odd and prime sizes; 1037 elements per channel slice and 3x1037 in
# all: past the Triton block (1024) with a partial last block
SHAPES = [(1, 1), (3, 5), (2, 3, 7), (2, 5, 3, 4), (1, 7, 5, 3), (2, 3, 1, 2, 3), (1, 3, 17, 61)]


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Many ops on tiny tensors: intra-op threads only add wake-ups on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(shape, dtype=torch.float32, device="cpu", seed=0, with_bias=True):
    """(x, bias): x ~ N(0, 1) and bias ~ N(0, 0.5), so x + bias takes both signs in every channel."""
    g = kit.generator(seed)
    x = kit.randn(shape, g, dtype, device)
    bias = (kit.randn((shape[1],), g) * 0.5).to(device, dtype) if with_bias else None
    return x, bias


def _check_against_reference(backend, x, bias, act, alpha, gain, what=""):
    """Forward and both gradients of ``backend`` against the float64 reference; fp16/bf16 by the low-precision rule
    (error <= 2x that of the reference run in the same precision)."""
    dtype = x.dtype
    leaves = [t.detach().clone().requires_grad_() for t in (x, bias) if t is not None]
    xs = leaves[0]
    bs = leaves[1] if bias is not None else None
    y = backend.run(bias_act, xs, bs, act=act, alpha=alpha, gain=gain)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    grad = kit.randn(x.shape, kit.generator(7), dtype, backend.device)
    got = torch.autograd.grad(y, leaves, grad)
    assert backends.last_backend("bias_act_backward") == backend.name

    def reference(t_dtype):
        ref = [t.detach().cpu().to(t_dtype).requires_grad_() for t in leaves]
        out = BA.bias_act_reference(ref[0], ref[1] if bias is not None else None, act=act, alpha=alpha, gain=gain)
        return out, torch.autograd.grad(out, ref, grad.cpu().to(t_dtype))

    want_y, want_g = reference(torch.float64)
    n_sum = x.numel() // x.shape[1]  # terms in each bias gradient
    if dtype in TOL:
        assert_close(y, want_y, TOL[dtype], f"{what} y")
        assert_close(got[0], want_g[0], TOL[dtype], f"{what} grad_x")
        if bias is not None:
            assert_close(got[1], want_g[1], TOL[dtype] * math.sqrt(n_sum) * 4, f"{what} grad_bias")
    else:
        lowp_y, lowp_g = reference(dtype)
        cases = [("y", y, want_y, lowp_y), ("grad_x", got[0], want_g[0], lowp_g[0])]
        if bias is not None:
            cases.append(("grad_bias", got[1], want_g[1], lowp_g[1]))
        for name, a, e, same in cases:
            # grad_bias sums rounded grad_x terms (as NVlabs' db = dx.sum()), the reference unrounded ones
            floor = _ulp(dtype, e) * (math.sqrt(n_sum) if name == "grad_bias" else 1)
            if dtype == torch.bfloat16 and backend.name == "triton" and backends.triton_interpreted():
                floor *= 2  # the CPU interpreter truncates float32 -> bfloat16 (a GPU rounds to nearest)
            kit.assert_close_lowp(a, e, same, f"{what} {name}", floor=floor)


def _ulp(dtype: torch.dtype, values: torch.Tensor) -> float:
    """One unit in the last place of ``dtype`` at the largest |value|."""
    top = float(values.detach().abs().max()) if values.numel() else 0.0
    return 2.0 ** math.floor(math.log2(top)) * torch.finfo(dtype).eps if top > 0 else 0.0


# ---------------------------------------------------------------------------------------------------
# Forward and backward against the reference


@pytest.mark.parametrize("dtype", kit.FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_bias_act_matches_reference(backend, config, shape, dtype):
    backend.require(dtype)
    act, alpha, gain, with_bias = CONFIGS[config]
    x, bias = make_inputs(shape, dtype, backend.device, with_bias=with_bias)
    _check_against_reference(backend, x, bias, act, alpha, gain, f"{backend} {config}")


def test_bias_act_strided_inputs(backend):
    """A transposed and sliced x and a strided bias give what their contiguous copies give."""
    x, bias = make_inputs((4, 3, 6, 5), torch.float32, backend.device)
    x_t = x.transpose(2, 3)[:, :, ::2]  # [4, 3, 3, 6], not contiguous
    wide = make_inputs((1, 6), torch.float32, backend.device, seed=3)[0].view(6)
    b_s = wide[::2]  # [3], stride 2
    assert not x_t.is_contiguous() and not b_s.is_contiguous()
    _check_against_reference(backend, x_t, b_s, "lrelu", 0.2, None, f"{backend} strided")
    y = backend.run(bias_act, x_t, b_s)
    assert torch.equal(y, backend.run(bias_act, x_t.contiguous(), b_s.contiguous()))


def test_bias_act_channels_last_input(backend):
    x, bias = make_inputs((2, 5, 4, 3), torch.float32, backend.device, seed=4)
    _check_against_reference(backend, x.contiguous(memory_format=torch.channels_last), bias, "lrelu", 0.2, None,
                             f"{backend} channels_last")


def test_bias_act_defaults_are_stylegan2s_fused_leaky_relu(backend):
    """The defaults: ``leaky_relu(x + b, 0.2) * sqrt(2)`` (rosinality's fused_leaky_relu); linear's gain is 1."""
    x, bias = make_inputs((3, 4, 5), torch.float64 if backend.unavailable(torch.float64) is None else torch.float32,
                          backend.device)
    want = F.leaky_relu(x + bias.view(1, -1, 1), 0.2) * math.sqrt(2)
    assert_close(backend.run(bias_act, x, bias), want, TOL[x.dtype] * 4, "lrelu defaults")
    assert_close(backend.run(bias_act, x, bias, act="linear"), x + bias.view(1, -1, 1), TOL[x.dtype] * 4, "linear")


def test_bias_act_empty_batch(backend):
    x, bias = make_inputs((0, 3, 4), torch.float32, backend.device)
    x.requires_grad_()
    y = backend.run(bias_act, x, bias.requires_grad_())
    assert y.shape == (0, 3, 4)
    gx, gb = torch.autograd.grad(y.sum(), [x, bias])
    assert gx.shape == x.shape and torch.equal(gb, torch.zeros_like(gb))


def test_bias_act_non_finite_values(backend):
    """inf stays inf (times gain, or alpha * gain below 0) and NaN stays NaN, at the same places as the reference."""
    x, bias = make_inputs((2, 3, 4), torch.float32, backend.device, seed=5)
    x[0, 0, 0], x[0, 1, 1], x[1, 2, 3] = float("inf"), float("-inf"), float("nan")
    y = backend.run(bias_act, x, bias)
    assert_close(y, BA.bias_act_reference(x.double().cpu(), bias.double().cpu()), TOL[torch.float32], "y")
    # the edges of "x > 0" (the CPU kernel tests it on the bits): signed zeros, subnormals, infinities, NaN
    for dtype in (torch.float32, torch.float64):
        if backend.unavailable(dtype) is not None:
            continue
        tiny = torch.finfo(dtype).tiny / 4
        edge = torch.tensor([0.0, -0.0, tiny, -tiny, 1.0, -1.0, float("inf"), float("-inf"), float("nan")],
                            dtype=dtype, device=backend.device).view(1, 9)
        want = torch.tensor([0.0, 0.0, tiny * 3, -tiny * 0.5 * 3, 3.0, -1.5, float("inf"), float("-inf"),
                             float("nan")], dtype=torch.float64)
        assert_close(backend.run(bias_act, edge, None, alpha=0.5, gain=3.0), want.view(1, 9), 0.0, f"{dtype} edges")


# ---------------------------------------------------------------------------------------------------
# Autograd and registration


@pytest.mark.parametrize("config", ["lrelu", "lrelu-nobias", "linear"])
def test_bias_act_gradcheck_float64(fp64_backend, config):
    act, alpha, gain, with_bias = CONFIGS[config]
    x, bias = make_inputs((2, 3, 2, 3), torch.float64, fp64_backend.device, seed=8, with_bias=with_bias)
    # keep x + bias at least 0.1 away from the kink (x = -bias), where finite differences cross it
    v = x if bias is None else x + bias.view(1, -1, 1, 1)
    x = x + torch.where(v >= 0, 0.1, -0.1)
    inputs = [x.requires_grad_()] + ([bias.requires_grad_()] if bias is not None else [])

    def fn(*t):
        return fp64_backend.run(bias_act, t[0], t[1] if len(t) > 1 else None, act=act, alpha=alpha, gain=gain)

    kit.gradcheck(fn, *inputs, gradgrad=True)


def test_bias_act_double_backward_matches_reference(backend):
    """StyleGAN2's path-length and R1 penalties differentiate through gradients: d/dgrad of the backward."""
    x, bias = make_inputs((2, 3, 5), torch.float32, backend.device, seed=9)
    x.requires_grad_()
    bias.requires_grad_()
    y = backend.run(bias_act, x, bias)
    (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    got = torch.autograd.grad((gx * gx).sum(), [x, bias])
    xr, br = x.detach().double().cpu().requires_grad_(), bias.detach().double().cpu().requires_grad_()
    yr = BA.bias_act_reference(xr, br)
    (gxr,) = torch.autograd.grad((yr * yr).sum(), xr, create_graph=True)
    want = torch.autograd.grad((gxr * gxr).sum(), [xr, br])
    assert_close(got[0], want[0], 1e-4, "grad of grad, x")
    assert_close(got[1], want[1], 1e-4, "grad of grad, bias")


def test_bias_act_opcheck(backend):
    x, bias = make_inputs((2, 3, 2, 3), torch.float32, backend.device, seed=10)
    kit.opcheck("bias_act", (x.requires_grad_(), bias.requires_grad_(), "lrelu", 0.2, math.sqrt(2), backend.name))
    kit.opcheck("bias_act", (x, None, "linear", 0.2, 1.0, backend.name))
    y = torch.ops.fsgan_fast.bias_act(x.detach(), bias.detach(), "lrelu", 0.2, math.sqrt(2), backend.name)
    grad = kit.randn(x.shape, kit.generator(11), torch.float32, backend.device)
    kit.opcheck("bias_act_backward", (grad.requires_grad_(), y, "lrelu", 0.2, math.sqrt(2), backend.name))


def test_bias_act_under_torch_compile_fullgraph(backend):
    x, bias = make_inputs((2, 3, 4), torch.float32, backend.device, seed=12)
    kit.assert_compiles(lambda a, b: bias_act(a, b, backend=backend.name), x.requires_grad_(), bias.requires_grad_())


def test_stylegan2_fused_leaky_relu_runs_the_op():
    """nn.stylegan2's fused_leaky_relu (FusedLeakyReLU, EqualLinear's activation, StyledConv) is this op."""
    x, bias = make_inputs((2, 4, 3, 3), torch.float32)
    backends.forget_last_backend("bias_act")
    y = stylegan2.fused_leaky_relu(x, bias)
    assert backends.last_backend("bias_act") is not None
    assert_close(y, F.leaky_relu(x.double() + bias.double().view(1, -1, 1, 1), 0.2) * math.sqrt(2), 1e-5, "y")


# ---------------------------------------------------------------------------------------------------
# Bad input: raised before any kernel runs, on every backend

BAD = kit.bad_inputs(
    ("rank 1", lambda x, b: (x[0, :, 0], b), ValueError, r"x must be at least 2-D \[N, C, \.\.\.\]"),
    ("bias shape", lambda x, b: (x, b[:2]), ValueError, r"bias must have shape \[3\]"),
    ("bias 2-D", lambda x, b: (x, b.view(1, 3)), ValueError, r"bias must have shape \[3\]"),
    ("bias dtype", lambda x, b: (x, b.double()), TypeError, "bias must have x's dtype"),
    ("int x", lambda x, b: (x.long(), b), TypeError, "x must be a floating tensor"),
    ("int bias", lambda x, b: (x, b.long()), TypeError, "bias must be a floating tensor"),
    ("x not a tensor", lambda x, b: (x.tolist(), b), TypeError, "x must be a torch.Tensor"),
    ("bias device", lambda x, b: (x, b.to("meta")), ValueError, "bias is on meta"),
)


@pytest.mark.parametrize("case", BAD)
def test_bias_act_bad_input(backend, case):
    x, bias = make_inputs((2, 3, 4), torch.float32, backend.device)
    kit.expect_bad_input(backend, bias_act, (x, bias), case)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(act="relu"), ValueError, r"act must be one of \('lrelu', 'linear'\), got 'relu'"),
        (dict(alpha=-0.1), ValueError, "alpha must be finite and >= 0"),
        (dict(alpha=float("nan")), ValueError, "alpha must be finite"),
        (dict(alpha="0.2"), TypeError, "alpha must be a number"),
        (dict(gain=0.0), ValueError, "gain must be finite and > 0"),
        (dict(gain=-1.0), ValueError, "gain must be finite and > 0"),
        (dict(gain=torch.tensor(2.0)), TypeError, "gain must be a number or None"),
    ],
    ids=["act", "alpha<0", "alpha nan", "alpha str", "gain 0", "gain<0", "gain tensor"],
)
def test_bias_act_bad_arguments(backend, kwargs, exc, match):
    x, bias = make_inputs((2, 3, 4), torch.float32, backend.device)
    with pytest.raises(exc, match=match):
        backend.run(bias_act, x, bias, **kwargs)


def test_bias_act_native_ops_check_their_inputs():
    """The C++ ops mirror the Python checks (the private ops can be called directly, e.g. from AOTInductor)."""
    if backends.why_unavailable("bias_act", "cpu", torch.device("cpu"), torch.float32):
        pytest.skip("the cpu backend is unavailable")
    x, bias = make_inputs((2, 3, 4), torch.float32)
    op = torch.ops.fsgan_fast._bias_act_cpu
    with pytest.raises(ValueError, match=r"bias must have shape \[C=3\]"):
        op(x, bias[:2], "lrelu", 0.2, 1.0)
    with pytest.raises(ValueError, match="act must be 'lrelu' or 'linear'"):
        op(x, bias, "relu", 0.2, 1.0)
    with pytest.raises(ValueError, match="x must be contiguous"):
        op(x.transpose(1, 2), None, "lrelu", 0.2, 1.0)
    with pytest.raises(TypeError, match="grad must have y's dtype"):
        torch.ops.fsgan_fast._bias_act_backward_cpu(x.double(), x, "lrelu", 0.2, 1.0)


# ---------------------------------------------------------------------------------------------------
# Cases for the build tests


@kit.native_cases("bias_act")
def bias_act_native_cases():
    cases = []
    for act, with_bias, shape in (("lrelu", True, (2, 5, 3, 4)), ("linear", True, (3, 4)), ("lrelu", False, (2, 3, 7))):
        x, bias = make_inputs(shape, torch.float64, seed=13, with_bias=with_bias)
        gain = BA.DEFAULT_GAIN[act]
        y = BA.bias_act_reference(x, bias, act=act, alpha=0.2, gain=gain)
        cases.append(kit.NativeCase("_bias_act_cpu", (x, bias, act, 0.2, gain), (y,)))
        grad = kit.randn(shape, kit.generator(14))
        cases.append(kit.NativeCase("_bias_act_backward_cpu", (grad, y, act, 0.2, gain),
                                    (BA.bias_act_backward_reference(grad, y, act, 0.2, gain),)))
    return cases


@kit.aot_variants("bias_act", [(1,)])
def bias_act_aot_variants(shape, dtype):
    from fsgan_fast.kernels import bias_act as kernels

    for op, kernel, signature, constexprs, warps in kernels.aot_variants(shape, dtype):
        yield kit.AotVariant(op, kernel, signature, constexprs, warps)
