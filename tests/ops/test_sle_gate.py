"""sle_gate: every backend against the float64 reference, forward and all four gradients.

The gate is a tiny MLP on a 4x4 pool of ``x_low``; the multiply and its backward reduction stream ``x_high``. The
shapes aim at both halves: pools with overlapping bins (h, w not multiples of 4, or below 4), channel and batch
counts one past the kernels' blocks, spatial sizes past one and several streaming tiles. Under Triton's CPU
interpreter a subset of the grid runs (``INTERPRETED``); compiled backends run all of it. The end of the file
registers the family's cases for the CMake and Triton AOT build tests."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsgan_fast import backends
from fsgan_fast.ops import sle_gate
from tests.ops import kit
from tests.ops.kit import assert_close

# the module: the package attribute fsgan_fast.ops.sle_gate is the function, which `import ... as` would find
S = importlib.import_module("fsgan_fast.ops.sle_gate")

OP = "sle_gate"
ACTS = ("swish", "lrelu")
LAYOUTS = {"contig": torch.contiguous_format, "cl": torch.channels_last}


def _param(shape) -> pytest.param:
    B, Cl, h, w, Ch, H, W = shape
    return pytest.param(tuple(shape), id=f"B{B}-lo{Cl}x{h}x{w}-hi{Ch}x{H}x{W}")


# (B, Cl, h, w, Ch, H, W): all ones; h=w=4 (one pixel per bin); overlapping bins (5, 7, 6, 13, 11) and bins
# repeating pixels (h or w < 4); Ch one past 16/32/64 (the gate's blocks); H*W one past 1024 (25x41) and past
# 8192 (91x91: several pixel slices per plane, whose partial sums of dy*x the backward adds); then B one past 16
# (the gate kernels' batch block) and Cl = 17 (odd: a partial last chunk of x_low's channels), the costly ones under
# the interpreter
SHAPES = [
    _param(s)
    for s in (
        (1, 1, 1, 1, 1, 1, 1),
        (2, 3, 4, 4, 5, 4, 4),
        (2, 5, 5, 7, 6, 3, 5),
        (2, 4, 2, 9, 17, 6, 7),
        (3, 7, 8, 6, 33, 5, 5),
        (1, 2, 13, 11, 65, 3, 2),
        (1, 3, 4, 3, 4, 25, 41),
        (1, 2, 5, 5, 2, 91, 91),
        (17, 3, 5, 6, 5, 4, 3),
        (2, 17, 6, 10, 16, 8, 8),
    )
]
SMALL = SHAPES[2]  # the default for the tests that are not about shapes


def _interpreted_subset() -> set:
    """The (shape, dtype, act) cases Triton's CPU interpreter runs (~0.1 s per program instance, every shape costs
    seconds): every shape in float32, the cheap ones also in one 16-bit dtype, the acts alternating so that each
    dtype meets both. Compiled backends run the whole grid."""
    cases = set()
    for i, p in enumerate(SHAPES):
        cases.add((p.values[0], torch.float32, ACTS[i % 2]))
        if i < 8:
            cases.add((p.values[0], (torch.float16, torch.bfloat16)[i % 2], ACTS[(i // 2) % 2]))
    return cases


INTERPRETED = _interpreted_subset()


def _interpreter_budget(backend, *case) -> None:
    if backend.name == "triton" and backends.triton_interpreted() and case not in INTERPRETED:
        pytest.skip("Triton interpreter: a subset of the grid (INTERPRETED) keeps this file's run short; "
                    "the whole grid runs on a GPU")


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Thousands of ops on tensors of tens of elements (gradcheck, opcheck, the references): intra-op threads only
    add their wake-ups, which cost seconds per test on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(B, Cl, h, w, Ch, H, W, dtype=torch.float32, wdtype=None, device="cpu", seed=0,
                low_layout="contig", high_layout="contig"):
    """(x_low, x_high, w1, w2): unit normal activations; weights scaled by their fan-in so that the gate stays
    away from the sigmoid's flat ends (a saturated gate would hide gradient errors)."""
    gen = kit.generator(seed)
    wdtype = wdtype or dtype
    x_low = kit.randn((B, Cl, h, w), gen, dtype, device).contiguous(memory_format=LAYOUTS[low_layout])
    x_high = kit.randn((B, Ch, H, W), gen, dtype, device).contiguous(memory_format=LAYOUTS[high_layout])
    w1 = (kit.randn((Ch, Cl, 4, 4), gen) * (2 / math.sqrt(Cl * 16))).to(device, wdtype)
    w2 = (kit.randn((Ch, Ch, 1, 1), gen) * (2 / math.sqrt(Ch))).to(device, wdtype)
    return x_low, x_high, w1, w2


def _leaves64(*tensors):
    return [t.detach().cpu().double().requires_grad_() for t in tensors]


def reference64(x_low, x_high, w1, w2, act, grad):
    """(y, grad_x_low, grad_x_high, grad_w1, grad_w2) of the float64 reference on the same (rounded) values."""
    leaves = _leaves64(x_low, x_high, w1, w2)
    y = S.sle_gate_reference(*leaves, act)
    grads = torch.autograd.grad(y, leaves, grad.detach().cpu().double())
    return (y.detach(), *grads)


def assert_near(got, want, what, act_dtype=None):
    """``got`` against the float64 ``want``: the op accumulates in the opmath of the activations' dtype
    ``act_dtype`` (``got``'s by default), so an error relative to the largest value, plus one rounding into
    ``got``'s dtype."""
    act_dtype = act_dtype or got.dtype
    want = want.detach()
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    acc = 1e-11 if act_dtype == torch.float64 else 1e-5
    rtol = 0.0 if got.dtype == torch.float64 else torch.finfo(got.dtype).eps
    assert_close(got, want, acc * scale, what, rtol=rtol)


def _is_layout(t, layout):
    """``t`` laid out as ``layout`` (for channels_last: and not also plainly contiguous, as the op decides)."""
    if layout == "contig":
        return t.is_contiguous()
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def run_and_check(backend, shape, dtype, act, wdtype=None, low_layout="contig", high_layout="contig", seed=0):
    """Forward and backward through the public op on ``backend``, every output against the fp64 reference."""
    wdtype = wdtype or dtype
    x_low, x_high, w1, w2 = make_inputs(*shape, dtype=dtype, wdtype=wdtype, device=backend.device, seed=seed,
                                        low_layout=low_layout, high_layout=high_layout)
    leaves = [t.requires_grad_() for t in (x_low, x_high, w1, w2)]
    y = backend.run(sle_gate, *leaves, act)
    assert y.dtype == dtype and y.shape == x_high.shape and y.device == x_high.device
    grad = kit.randn(y.shape, kit.generator(seed + 1), dtype, backend.device)
    # torch.autograd.grad hands back what the backward produced (AccumulateGrad would restride it to the leaf)
    got = torch.autograd.grad(y, leaves, grad)
    want = reference64(x_low, x_high, w1, w2, act, grad)
    names = ("y", "grad x_low", "grad x_high", "grad w1", "grad w2")
    assert_near(y, want[0], "y")
    for name, g, x, w in zip(names[1:], got, leaves, want[1:]):
        assert g.dtype == x.dtype and g.shape == x.shape, f"{name}: {g.dtype} {list(g.shape)}"
        assert_near(g, w, name, dtype)
    # the house rule besides: at most 2x the error of the reference in that precision; except that Triton's CPU
    # interpreter (3.8) truncates float32 -> bfloat16 where a GPU rounds to nearest: one ulp, within the bound above
    truncates = backend.name == "triton" and backends.triton_interpreted() and dtype == torch.bfloat16
    if dtype in kit.LOW_PRECISION and not truncates:
        same = [t.detach().cpu().requires_grad_() for t in leaves]
        y_same = S.sle_gate_reference(*same, act)
        for name, g, lowp, w in zip(names, (y, *got), (y_same, *torch.autograd.grad(y_same, same, grad.cpu())), want):
            kit.assert_close_lowp(g, w, lowp, name)
    return y, got


# ---------------------------------------------------------------------------------------------------
# Forward and backward against the reference


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", kit.FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_sle_gate_matches_reference(backend, shape, dtype, act):
    backend.require(dtype)
    _interpreter_budget(backend, shape, dtype, act)
    run_and_check(backend, shape, dtype, act)


@pytest.mark.parametrize("high_layout", LAYOUTS)
@pytest.mark.parametrize("low_layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_sle_gate_layouts_are_kept(backend, low_layout, high_layout, dtype):
    """y and grad x_high take x_high's layout, grad x_low takes x_low's; values as in the contiguous case."""
    backend.require(dtype)
    if (low_layout, high_layout) == ("contig", "contig") or (dtype != torch.float32 and low_layout != high_layout):
        _interpreter_budget(backend, "layouts covered by the other cases")
    # C > 1 and H, W > 1, so channels_last differs from contiguous; Cl = 9 is one past a multiple of the 2, 4 or 8
    # consecutive channels a kernel program takes from channels_last x_low
    shape = (2, 9, 6, 7, 6, 5, 3)
    y, (g_low, g_high, _, _) = run_and_check(backend, shape, dtype, "swish", low_layout=low_layout,
                                             high_layout=high_layout)
    assert _is_layout(y, high_layout), f"y strides {y.stride()}, x_high is {high_layout}"
    assert _is_layout(g_high, high_layout), f"grad x_high strides {g_high.stride()}, x_high is {high_layout}"
    assert _is_layout(g_low, low_layout), f"grad x_low strides {g_low.stride()}, x_low is {low_layout}"


def test_sle_gate_backward_op_keeps_layouts_and_takes_any_grad_layout(backend):
    """The backward op itself: an incoming gradient in the other layout than x_high is read correctly, and the
    outputs keep their inputs' layouts."""
    x_low, x_high, w1, w2 = make_inputs(2, 3, 5, 6, 4, 5, 7, device=backend.device, low_layout="cl")
    _, gate, pooled, hidden = torch.ops.fsgan_fast.sle_gate(x_low, x_high, w1, w2, "lrelu", backend.name)
    grad = kit.randn(x_high.shape, kit.generator(3), torch.float32, backend.device)
    out = torch.ops.fsgan_fast.sle_gate_backward(grad.contiguous(memory_format=torch.channels_last), x_low, x_high,
                                                  w1, w2, gate, pooled, hidden, "lrelu", backend.name)
    want = reference64(x_low, x_high, w1, w2, "lrelu", grad)[1:]
    for name, g, w in zip(("grad x_low", "grad x_high", "grad w1", "grad w2"), out, want):
        assert_near(g, w, name)
    assert _is_layout(out[0], "cl") and _is_layout(out[1], "contig")


@pytest.mark.parametrize("act", ACTS)
def test_sle_gate_backward_op_past_batch_blocks(backend, act):
    """The backward op alone, from the reference's saved state (the forward's pool is what costs under the
    interpreter): B = 65, one past a multiple of every power-of-two batch block up to 64."""
    x_low, x_high, w1, w2 = make_inputs(65, 2, 3, 5, 3, 2, 3, device=backend.device, seed=9)
    _, gate, pooled, hidden = S.sle_gate_forward_reference(x_low, x_high, w1, w2, act)
    grad = kit.randn(x_high.shape, kit.generator(10), torch.float32, backend.device)
    out = torch.ops.fsgan_fast.sle_gate_backward(grad, x_low, x_high, w1, w2, gate, pooled, hidden, act, backend.name)
    want = reference64(x_low, x_high, w1, w2, act, grad)[1:]
    for name, g, w in zip(("grad x_low", "grad x_high", "grad w1", "grad w2"), out, want):
        assert_near(g, w, name)


def test_sle_gate_other_strides_are_copied(backend):
    """Neither contiguous nor channels_last (sliced, permuted): read correctly, y contiguous."""
    x_low, x_high, w1, w2 = make_inputs(2, 3, 10, 7, 4, 6, 10, device=backend.device)
    x_low = x_low[:, :, ::2]  # 5 x 7, every other row
    x_high = x_high.transpose(2, 3)  # 10 x 6, H and W swapped in memory
    w1 = w1.transpose(2, 3)  # a transposed weight: the op copies it
    y = backend.run(sle_gate, x_low, x_high, w1, w2, "swish")
    want = S.sle_gate_reference(*_leaves64(x_low, x_high, w1, w2), "swish")
    assert_near(y, want, "y")
    assert y.is_contiguous()


@pytest.mark.parametrize("dtype, wdtype, act", [(torch.float16, torch.float32, "swish"),
                                                 (torch.float32, torch.float16, "lrelu"),
                                                 (torch.bfloat16, torch.float64, "lrelu")],
                         ids=["float16-weights-float32", "float32-weights-float16", "bfloat16-weights-float64"])
def test_sle_gate_weights_in_another_dtype(backend, dtype, wdtype, act):
    """Weights need not share the activations' dtype (autocast, fp32 master weights): each grad in its tensor's."""
    backend.require(dtype)
    run_and_check(backend, (2, 5, 7, 6, 17, 5, 6), dtype, act, wdtype=wdtype)


@pytest.mark.parametrize("shape, act", [(SHAPES[2].values[0], "swish"), (SHAPES[4].values[0], "lrelu")],
                         ids=[SHAPES[2].id, SHAPES[4].id])
def test_sle_gate_saved_state_matches_reference(backend, shape, act):
    """What the forward saves for the backward (gate, pooled map, pre-activation hidden), in opmath."""
    x_low, x_high, w1, w2 = make_inputs(*shape, device=backend.device)
    y, gate, pooled, hidden = torch.ops.fsgan_fast.sle_gate(x_low, x_high, w1, w2, act, backend.name)
    want = S.sle_gate_forward_reference(*[t.double().cpu() for t in (x_low, x_high, w1, w2)], act)
    for name, got, w in zip(("y", "gate", "pooled", "hidden"), (y, gate, pooled, hidden), want):
        assert got.dtype == (torch.float32 if name != "y" else x_high.dtype), f"{name}: {got.dtype}"
        assert_near(got, w, name)


def test_sle_gate_hand_worked_example(backend):
    """x_low constant per channel, so every pooled bin is that constant; w1 constant per (out, in) pair; w2 = I.

    Channels c = (1, -2); w1[o, i] = a[o][i] / 16 with a = [[1, 0], [0, -1]]: hidden = (1, 2).
    Swish: act = (1 * s(1), 2 * s(2)); gate = s(act); y = x_high * gate.
    Backward with dy = 1: d gate_o = sum x_high[o]; d pre_o = d gate_o * g_o (1 - g_o); d hidden_o = d pre_o *
    swish'(hidden_o); every pooled bin of channel i gets sum_o d hidden_o a[o][i] / 16, and with h = w = 8 every
    bin is 2x2, so grad x_low[i] = that / 4 at every pixel.
    """
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    dtype = torch.float64 if backend.unavailable(torch.float64) is None else torch.float32
    dev = backend.device
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # float32: a few ulp of values up to ~18
    c, a = (1.0, -2.0), ((1.0, 0.0), (0.0, -1.0))
    x_low = torch.tensor(c, dtype=dtype).view(1, 2, 1, 1).repeat(1, 1, 8, 8).to(dev).requires_grad_()
    x_high = (torch.arange(2 * 3 * 5, dtype=dtype).view(1, 2, 3, 5) / 10 - 1).to(dev).requires_grad_()
    w1 = (torch.tensor(a, dtype=dtype).view(2, 2, 1, 1).repeat(1, 1, 4, 4) / 16).to(dev).requires_grad_()
    w2 = torch.eye(2, dtype=dtype).view(2, 2, 1, 1).to(dev).requires_grad_()
    y = backend.run(sle_gate, x_low, x_high, w1, w2, "swish")

    hidden = [1.0, 2.0]
    act = [h * sig(h) for h in hidden]
    gate = [sig(v) for v in act]
    assert_close(y, x_high.detach() * torch.tensor(gate, dtype=dtype, device=dev).view(1, 2, 1, 1), tol, "y")

    y.backward(torch.ones_like(y))
    d_gate = [float(x_high[0, o].detach().sum()) for o in range(2)]  # -4.5 and 18
    d_pre = [d_gate[o] * gate[o] * (1 - gate[o]) for o in range(2)]
    d_act = [d_pre[o] for o in range(2)]  # w2 = I
    d_hidden = [d_act[o] * sig(h) * (1 + h * (1 - sig(h))) for o, h in enumerate(hidden)]
    per_bin = [sum(d_hidden[o] * a[o][i] for o in range(2)) / 16 for i in range(2)]
    want_low = torch.tensor(per_bin, dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 8, 8) / 4
    assert_close(x_low.grad, want_low, tol, "grad x_low")
    assert_close(x_high.grad, torch.tensor(gate, dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 3, 5), tol,
                 "grad x_high")
    # grad w2[o, k] = d pre_o * act_k; grad w1[o, i, :, :] = d hidden_o * c_i at every tap
    want_w2 = torch.tensor([[d_pre[o] * act[k] for k in range(2)] for o in range(2)], dtype=torch.float64)
    assert_close(w2.grad.view(2, 2), want_w2, tol, "grad w2")
    want_w1 = torch.tensor([[d_hidden[o] * c[i] for i in range(2)] for o in range(2)], dtype=torch.float64)
    assert_close(w1.grad, want_w1.view(2, 2, 1, 1).expand(2, 2, 4, 4), tol, "grad w1")


def test_sle_gate_hand_worked_lrelu(backend):
    """LeakyReLU(0.1) with a negative hidden unit: hidden = (1, -2) gives act = (1, -0.2), gate = (s(1), s(-0.2))."""
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    x_low = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).repeat(2, 1, 5, 3).to(backend.device)  # bins overlap
    x_high = kit.randn((2, 2, 4, 6), kit.generator(4), torch.float32, backend.device)
    w1 = (torch.eye(2).view(2, 2, 1, 1).repeat(1, 1, 4, 4) / 16).to(backend.device)
    w2 = torch.eye(2).view(2, 2, 1, 1).to(backend.device)
    y = backend.run(sle_gate, x_low, x_high, w1, w2, "lrelu")
    gate = torch.tensor([sig(1.0), sig(-0.2)], device=backend.device).view(1, 2, 1, 1)
    assert_close(y, x_high * gate, 1e-5, "y")


def test_sle_gate_backward_is_deterministic(backend):
    """Two identical runs give bitwise identical gradients (the d gate reduction over H*W, here in several slices per
    plane, has a fixed order)."""
    x_low, x_high, w1, w2 = make_inputs(2, 5, 6, 7, 3, 91, 91, device=backend.device, seed=5)
    grad = kit.randn(x_high.shape, kit.generator(6), torch.float32, backend.device)
    runs = []
    for _ in range(2):
        leaves = [t.detach().clone().requires_grad_() for t in (x_low, x_high, w1, w2)]
        y = backend.run(sle_gate, *leaves, "swish")
        runs.append(torch.autograd.grad(y, leaves, grad))
    for name, a, b in zip(("grad x_low", "grad x_high", "grad w1", "grad w2"), *runs):
        assert_close(b, a, 0, f"{name} of the second run")


# ---------------------------------------------------------------------------------------------------
# The reference itself


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 13])
def test_pool_matrix_is_adaptive_avg_pool(n):
    x = kit.randn((1, 1, n, 2 * n + 1), kit.generator(n))
    pooled = S.pool_matrix(n, torch.float64, "cpu") @ x[0, 0] @ S.pool_matrix(2 * n + 1, torch.float64, "cpu").t()
    assert_close(pooled, F.adaptive_avg_pool2d(x, 4)[0, 0], 1e-12, "pooled")


def test_pool_matrix_by_hand():
    # n=5: bins [0,2) [1,3) [2,4) [3,5); n=2: bins [0,1) [0,1) [1,2) [1,2)
    half = 0.5
    want5 = torch.tensor([[half, half, 0, 0, 0], [0, half, half, 0, 0], [0, 0, half, half, 0], [0, 0, 0, half, half]])
    assert_close(S.pool_matrix(5, torch.float64, "cpu"), want5, 0, "pool 5")
    want2 = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    assert_close(S.pool_matrix(2, torch.float64, "cpu"), want2, 0, "pool 2")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], SHAPES[6]])
def test_reference_backward_formula_matches_autograd(shape, act):
    x_low, x_high, w1, w2 = make_inputs(*shape, dtype=torch.float64, seed=2)
    grad = kit.randn(x_high.shape, kit.generator(3))
    want = reference64(x_low, x_high, w1, w2, act, grad)
    y, gate, pooled, hidden = S.sle_gate_forward_reference(x_low, x_high, w1, w2, act)
    assert_close(y, want[0], 1e-12, "y")
    got = S.sle_gate_backward_reference(grad, x_low, x_high, w1, w2, gate, pooled, hidden, act)
    for name, g, w in zip(("grad x_low", "grad x_high", "grad w1", "grad w2"), got, want[1:]):
        assert_close(g, w, 1e-12, name)


def test_gate_value_reference_is_the_layer_formula():
    """FastGAN's SEBlock spelled with modules: pool, conv4x4, Swish, conv1x1, sigmoid."""
    x_low, x_high, w1, w2 = make_inputs(2, 5, 9, 6, 7, 3, 3, dtype=torch.float64)
    conv1, conv2 = nn.Conv2d(5, 7, 4, bias=False).double(), nn.Conv2d(7, 7, 1, bias=False).double()
    conv1.weight.data.copy_(w1)
    conv2.weight.data.copy_(w2)
    block = nn.Sequential(nn.AdaptiveAvgPool2d(4), conv1, nn.SiLU(), conv2, nn.Sigmoid())
    assert_close(S.sle_gate_value_reference(x_low, w1, w2, "swish"), block(x_low), 1e-12, "gate")
    block[2] = nn.LeakyReLU(0.1)
    assert_close(S.sle_gate_value_reference(x_low, w1, w2, "lrelu"), block(x_low), 1e-12, "gate lrelu")


@pytest.mark.parametrize("act", ACTS)
def test_sle_gate_gradcheck_float64(fp64_backend, act):
    # h = 5 (overlapping bins), w = 3 (pixels in two bins); few elements: a forward per element and direction
    x_low, x_high, w1, w2 = make_inputs(2, 2, 5, 3, 3, 2, 3, dtype=torch.float64, seed=7)
    leaves = [t.requires_grad_() for t in (x_low, x_high, w1, w2)]
    kit.gradcheck(lambda *a: fp64_backend.run(sle_gate, *a, act), *leaves)


# ---------------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, torch.export, the export lowerings


def test_sle_gate_opcheck(backend):
    # tiny: opcheck runs the op (forward and backward) a dozen times
    x_low, x_high, w1, w2 = make_inputs(1, 2, 5, 3, 3, 2, 3, device=backend.device)
    x_high = x_high.contiguous(memory_format=torch.channels_last)
    for t in (x_low, x_high, w1, w2):
        t.requires_grad_()
    kit.opcheck("sle_gate", (x_low, x_high, w1, w2, "swish", backend.name))
    _, gate, pooled, hidden = torch.ops.fsgan_fast.sle_gate(x_low, x_high, w1, w2, "swish", backend.name)
    grad = kit.randn(x_high.shape, kit.generator(1), torch.float32, backend.device)
    kit.opcheck("sle_gate_backward", (grad, *(t.detach() for t in (x_low, x_high, w1, w2)), gate.detach(),
                                      pooled.detach(), hidden.detach(), "lrelu", backend.name))


def test_sle_gate_under_torch_compile_fullgraph(backend):
    """One graph (the backend chosen at trace time), outputs and all four grads as eager's."""
    x_low, x_high, w1, w2 = make_inputs(1, 3, 5, 6, 4, 3, 5, device=backend.device)
    kit.assert_compiles(lambda a, b, c, d: sle_gate(a, b, c, d, "swish", backend=backend.name),
                        *(t.requires_grad_() for t in (x_low, x_high, w1, w2)))


class Gate(nn.Module):
    """The smallest module around the op: the layer without spectral norm."""

    def __init__(self, w1, w2, act="lrelu"):
        super().__init__()
        self.w1, self.w2, self.act = nn.Parameter(w1), nn.Parameter(w2), act

    def forward(self, x_low, x_high):
        return sle_gate(x_low, x_high, self.w1, self.w2, self.act)


def _op_names(program) -> set[str]:
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


def test_sle_gate_torch_export():
    x_low, x_high, w1, w2 = make_inputs(2, 3, 5, 6, 4, 3, 5)
    kit.assert_exports(lambda a, b: Gate(w1, w2)(a, b), (x_low, x_high),
                       S.sle_gate_reference(x_low, x_high, w1, w2, "lrelu"))
    program = torch.export.export(Gate(w1, w2), (x_low, x_high))
    assert "fsgan_fast.sle_gate.default" in _op_names(program)


def test_sle_gate_lowering_reference_leaves_only_standard_ops():
    """What ONNX / TensorRT / AOTInductor get under lowering('reference'): aten ops only, nothing of fsgan_fast."""
    x_low, x_high, w1, w2 = make_inputs(2, 3, 5, 6, 4, 3, 5, low_layout="cl")
    with backends.lowering("reference"):
        program = torch.export.export(Gate(w1, w2), (x_low, x_high))
    names = _op_names(program)
    assert names and all(n.startswith("aten.") for n in names), names
    assert any("adaptive_avg_pool2d" in n for n in names) and any("sigmoid" in n for n in names), names
    assert_near(program.module()(x_low, x_high), S.sle_gate_reference(*_leaves64(x_low, x_high, w1, w2), "lrelu"), "y")


def test_sle_gate_lowering_calls_the_private_kernel(backend):
    """Under the 'native' / 'triton' lowering the traced graph holds the backend's private kernel op."""
    if backend.name == "reference":
        pytest.skip("the reference lowering is tested on its own (standard ops only)")
    mode, impl = ("triton", "triton") if backend.name == "triton" else ("native", backend.device.type)
    x_low, x_high, w1, w2 = make_inputs(2, 3, 5, 6, 4, 3, 5, device=backend.device)
    with backends.lowering(mode):
        program = torch.export.export(Gate(w1, w2), (x_low, x_high))
    assert f"fsgan_fast._sle_gate_{impl}.default" in _op_names(program), _op_names(program)
    assert_near(program.module()(x_low, x_high), S.sle_gate_reference(*_leaves64(x_low, x_high, w1, w2), "lrelu"), "y")


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, before any kernel runs, on every backend

BAD = kit.bad_inputs(
    ("x_low rank", lambda lo, hi, w1, w2, a: (lo[0], hi, w1, w2, a), ValueError, r"x_low must be 4-D \[B, Cl, h, w\]"),
    ("x_high rank", lambda lo, hi, w1, w2, a: (lo, hi[..., None], w1, w2, a), ValueError,
     r"x_high must be 4-D \[B, Ch, H, W\], got 5-D"),
    ("batch", lambda lo, hi, w1, w2, a: (lo, hi[:1], w1, w2, a), ValueError,
     "x_low and x_high must have the same batch size, got 2 and 1"),
    ("w1 channels", lambda lo, hi, w1, w2, a: (lo, hi, w1[:, :-1], w2, a), ValueError,
     r"w1 must have shape \[4, 3, 4, 4\] \(\[Ch, Cl, 4, 4\]"),
    ("x_low channels", lambda lo, hi, w1, w2, a: (lo[:, :2], hi, w1, w2, a), ValueError,
     r"w1 must have shape \[4, 2, 4, 4\]"),
    ("w1 3x3", lambda lo, hi, w1, w2, a: (lo, hi, w1[..., :3, :3], w2, a), ValueError,
     r"w1 must have shape \[4, 3, 4, 4\] .*got \[4, 3, 3, 3\]"),
    ("w1 rank", lambda lo, hi, w1, w2, a: (lo, hi, w1.flatten(1), w2, a), ValueError, r"w1 must have shape"),
    ("w2 shape", lambda lo, hi, w1, w2, a: (lo, hi, w1, w2[:-1], a), ValueError,
     r"w2 must have shape \[4, 4, 1, 1\] \(\[Ch, Ch, 1, 1\]"),
    ("w2 as matrix", lambda lo, hi, w1, w2, a: (lo, hi, w1, w2[..., 0, 0], a), ValueError, r"w2 must have shape"),
    ("dtype mismatch", lambda lo, hi, w1, w2, a: (lo, hi.double(), w1, w2, a), TypeError,
     "x_low and x_high must share a dtype, got torch.float32 and torch.float64"),
    ("int x_low", lambda lo, hi, w1, w2, a: (lo.long(), hi, w1, w2, a), TypeError,
     "x_low must be a floating tensor, got dtype torch.int64"),
    ("int x_high", lambda lo, hi, w1, w2, a: (lo, hi.int(), w1, w2, a), TypeError, "x_high must be a floating"),
    ("bool w1", lambda lo, hi, w1, w2, a: (lo, hi, w1 > 0, w2, a), TypeError, "w1 must be a floating"),
    ("int w2", lambda lo, hi, w1, w2, a: (lo, hi, w1, w2.long(), a), TypeError, "w2 must be a floating"),
    ("list x_low", lambda lo, hi, w1, w2, a: (lo.tolist(), hi, w1, w2, a), TypeError, "x_low must be a torch.Tensor"),
    ("unknown act", lambda lo, hi, w1, w2, a: (lo, hi, w1, w2, "relu"), ValueError,
     r"act must be one of \('swish', 'lrelu'\), got 'relu'"),
    ("act case", lambda lo, hi, w1, w2, a: (lo, hi, w1, w2, "Swish"), ValueError, "act must be one of"),
    ("empty batch", lambda lo, hi, w1, w2, a: (lo[:0], hi[:0], w1, w2, a), ValueError,
     r"x_low must have no empty dimension, got shape \[0, 3, 5, 7\]"),
    ("empty x_high", lambda lo, hi, w1, w2, a: (lo, hi[:, :, :0], w1, w2, a), ValueError,
     "x_high must have no empty dimension"),
    ("empty x_low", lambda lo, hi, w1, w2, a: (lo[..., :0], hi, w1, w2, a), ValueError,
     "x_low must have no empty dimension"),
    ("empty Ch", lambda lo, hi, w1, w2, a: (lo, hi[:, :0], w1[:0], w2[:0, :0], a), ValueError,
     "x_high must have no empty dimension"),
    # meta tensors pass every shape check: the device check is the one that must catch them
    ("w1 device", lambda lo, hi, w1, w2, a: (lo, hi, w1.to("meta"), w2, a), ValueError,
     "w1 is on meta but x_high is on"),
    ("x_low device", lambda lo, hi, w1, w2, a: (lo.to("meta"), hi, w1, w2, a), ValueError,
     "x_low is on meta but x_high is on"),
    ("w2 on cpu", lambda lo, hi, w1, w2, a: (lo, hi, w1, w2.cpu(), a), ValueError, "w2 is on cpu but x_high is on cuda",
     ("cuda",)),
    ("x_high on cpu", lambda lo, hi, w1, w2, a: (lo, hi.cpu(), w1, w2, a), ValueError,
     "x_low is on cuda.* but x_high is on cpu", ("cuda",)),
)


@pytest.mark.parametrize("case", BAD)
def test_sle_gate_bad_input(backend, case):
    x_low, x_high, w1, w2 = make_inputs(2, 3, 5, 7, 4, 6, 6, device=backend.device)
    kit.expect_bad_input(backend, sle_gate, (x_low, x_high, w1, w2, "swish"), case)


def test_sle_gate_triton_refuses_float64():
    """fp64 is not a Triton dtype: an explicit request says so instead of running something else."""
    device = torch.device("cuda" if kit.CUDA else "cpu")  # where the triton backend runs
    reason = backends.why_unavailable("sle_gate", "triton", device, torch.float32)
    if reason is not None:
        pytest.skip(f"backend 'triton' unavailable: {reason}")
    x_low, x_high, w1, w2 = make_inputs(*SMALL.values[0], dtype=torch.float64, device=device)
    with pytest.raises(backends.BackendUnavailableError, match="triton.*not torch.float64"):
        sle_gate(x_low, x_high, w1, w2, backend="triton")


# ---------------------------------------------------------------------------------------------------
# Cases for the build tests: tests/test_cmake_build.py (the CMake library's CPU kernels) and
# tests/ops/test_triton_compile.py (every Triton variant the launchers pick, compiled for real GPUs)


@kit.native_cases("sle_gate")
def sle_gate_native_cases():
    """The private ops take what the public op passes them (``_prep``): activations contiguous or channels_last,
    weights contiguous in opmath, the saved state in opmath; float64 here, so the comparison is tight."""
    cases = []
    for act, (low, high), shape in (("swish", ("contig", "contig"), (2, 5, 7, 6, 17, 5, 9)),
                                    ("lrelu", ("cl", "cl"), (3, 3, 2, 9, 6, 7, 4))):
        x_low, x_high, w1, w2 = make_inputs(*shape, dtype=torch.float64, seed=11, low_layout=low, high_layout=high)
        grad = kit.randn(x_high.shape, kit.generator(12)).contiguous(memory_format=LAYOUTS[high])
        fwd = S.sle_gate_forward_reference(x_low, x_high, w1, w2, act)
        bwd = S.sle_gate_backward_reference(grad, x_low, x_high, w1, w2, *fwd[1:], act)
        cases += [kit.NativeCase("_sle_gate_cpu", (x_low, x_high, w1, w2, act), fwd),
                  kit.NativeCase("_sle_gate_backward_cpu", (grad, x_low, x_high, w1, w2, *fwd[1:], act), bwd)]
    return cases


# (B, Cl, h, w, Ch, H, W): FastGAN's generator SLE pairs at ngf=64 (4->64, 8->128, 16->256, 32->512: the
# benchmark's x_high 8x64x128^2, 8x32x256^2, 8x16x512^2 and their x_low) and a tiny odd shape that takes the
# smallest blocks. Other batch sizes of these pairs add a handful of variants to a hundred-odd compiles: left out.
# the smallest and largest FastGAN pairs (4x4 -> 64x64 gates 1024 channels; 32x32 -> 512x512 has the most pixel
# slices) and an odd tiny one with overlapping bins: the block-size heuristics' extremes, kept few because every
# variant costs a ptxas run per architecture in CI
AOT_SHAPES = [
    (8, 1024, 4, 4, 128, 64, 64),
    (8, 128, 32, 32, 16, 512, 512),
    (2, 3, 5, 7, 17, 6, 7),
]


@kit.aot_variants("sle_gate", AOT_SHAPES)
def sle_gate_aot_variants(shape, dtype):
    """What sle_gate_fwd / sle_gate_bwd launch for ``shape`` in ``dtype`` (both layouts, both acts), as the kernels
    module enumerates it from the launchers' own config functions. A kernel that reads no tensor of the activations'
    dtype (the gate's, all float32) is the same in every dtype: yielded with float32 only, compiled once."""
    from fsgan_fast.kernels import sle_gate as kernels

    t = kit.TRITON_TYPES[dtype]
    for op, kernel, signature, constexprs, warps in kernels.aot_variants(shape, dtype):
        if dtype == torch.float32 or f"*{t}" in signature.values():
            yield kit.AotVariant(op, kernel, signature, constexprs, warps)
