"""pyramid_inject / pyramid_blend (SinGAN's scale step) on every backend against the float64 reference, forward and
gradients; SinGAN's pyramid schedule against the numbers of the official code; bad input. The end of the file
registers the family's cases for the CMake and Triton AOT build tests."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from fsgan_fast import backends
from fsgan_fast.ops import build_pyramid, pyramid_blend, pyramid_inject
from tests.ops import kit
from tests.ops.kit import assert_close

P = importlib.import_module("fsgan_fast.ops.pyramid")
R = importlib.import_module("fsgan_fast.ops.imresize")

OP = "pyramid_inject"
TOL = {torch.float64: 1e-12, torch.float32: 4e-6, torch.float16: 8e-3, torch.bfloat16: 6e-2}

# (prev shape or None, size, scale, noise channels, noise padded, pad)
CASES = {
    "coarsest": (None, (25, 31), None, 1, False, 5),
    "between-scales": ((2, 3, 25, 31), (32, 39), 1 / 0.794, 3, False, 5),
    "to-size": ((1, 3, 20, 13), (26, 17), None, 1, False, 5),
    "down": ((2, 3, 30, 30), (22, 22), None, 3, False, 2),
    "padded-noise": ((1, 3, 12, 10), (15, 12), 1.26, 3, True, 5),
    "no-pad": ((2, 3, 9, 9), (11, 11), 1.26, 1, False, 0),
}


def _inputs(case, dtype, device, seed=0):
    prev_shape, size, scale, cn, padded, pad = case
    g = kit.generator(seed)
    B = prev_shape[0] if prev_shape else 2
    prev = None if prev_shape is None else kit.randn(prev_shape, g, dtype, device)
    H, W = size
    noise = kit.randn((B, cn, H + 2 * pad * padded, W + 2 * pad * padded), g, dtype, device)
    amp = (torch.rand(B, generator=g, dtype=torch.float64) + 0.1).to(device, torch.float64 if dtype == torch.float64
                                                                         else torch.float32)
    return prev, size, scale, noise, amp, pad


@pytest.mark.parametrize("dtype", kit.FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_pyramid_inject_matches_reference(backend, name, dtype):
    backend.require(dtype)
    prev, size, scale, noise, amp, pad = _inputs(CASES[name], dtype, backend.device)
    leaves = [t.requires_grad_() for t in (prev, noise, amp) if t is not None]
    up, g_in = backend.run(pyramid_inject, prev, size, noise, amp, pad=pad, scale=scale)
    assert up.dtype == g_in.dtype == dtype
    assert up.shape[-2:] == size and g_in.shape[-2:] == (size[0] + 2 * pad, size[1] + 2 * pad)
    ref = [None if t is None else t.detach().double().cpu().requires_grad_() for t in (prev, noise, amp)]
    want_up, want_g = P.pyramid_inject_reference(ref[0], size, ref[1], ref[2], pad=pad, scale=scale)
    scale_tol = 1.0 + float(amp.max())  # g_in adds amp * noise
    assert_close(up, want_up, 2 * TOL[dtype], "up")
    assert_close(g_in, want_g, 2 * TOL[dtype] * scale_tol, "g_in")
    if pad:
        assert not g_in[..., :pad, :].any() or CASES[name][4]  # the zero border (unless the noise covers it)
    gu = kit.randn(up.shape, kit.generator(1), dtype, backend.device)
    gg = kit.randn(g_in.shape, kit.generator(2), dtype, backend.device)
    got = torch.autograd.grad((up.double() * gu.double()).sum() + (g_in.double() * gg.double()).sum(), leaves)
    want = torch.autograd.grad((want_up * gu.double().cpu()).sum() + (want_g * gg.double().cpu()).sum(),
                               [t for t in ref if t is not None])
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, 8 * TOL[dtype] * scale_tol * math.sqrt(b[0].numel() if b.dim() == 1 else 1), f"grad {i}")


def test_pyramid_inject_coarsest_is_padded_noise(backend):
    """prev=None: up = 0 and g_in = zero_pad(amp * noise): SinGAN's first scale, one noise channel for all three."""
    noise = kit.randn((2, 1, 7, 9), kit.generator(3), torch.float32, backend.device)
    up, g_in = backend.run(pyramid_inject, None, (7, 9), noise, 0.5, pad=5)
    assert up.shape == (2, 3, 7, 9) and not up.any()
    assert_close(g_in, F.pad(0.5 * noise.expand(2, 3, 7, 9), (5,) * 4), 1e-7, "g_in")


def test_scale_then_crop_is_singans_step(backend):
    """With scale: resize by 1/r (output ceil) then keep the top-left of it, which differs from resizing to the size."""
    prev = kit.randn((1, 3, 25, 25), kit.generator(4), torch.float32, backend.device)
    r = (25 / 250) ** 0.1
    full = R.imresize_reference(prev.double().cpu(), 1 / r)
    assert full.shape[-2:] == (32, 32)
    noise = torch.zeros(1, 3, 31, 31, device=backend.device)  # zero noise: g_in's inside is up
    up, _ = backend.run(pyramid_inject, prev, (31, 31), noise, 1.0, scale=1 / r)
    assert_close(up, full[..., :31, :31], 4e-6, "up")
    direct, _ = backend.run(pyramid_inject, prev, (31, 31), noise, 1.0)
    assert (direct.cpu() - up.cpu()).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mask_batch", [None, 1, 2])
def test_pyramid_blend_matches_reference(mask_batch, dtype):
    for backend in kit.backend_cases("pyramid_blend"):
        if backend.unavailable(dtype) is not None:
            continue
        g = kit.generator(5)
        up = kit.randn((2, 3, 6, 7), g, dtype, backend.device).requires_grad_()
        res = kit.randn((2, 3, 6, 7), g, dtype, backend.device).requires_grad_()
        mask = None if mask_batch is None else torch.rand(mask_batch, 1, 6, 7, generator=g).to(
            backend.device, dtype).requires_grad_()
        out = backend.run(pyramid_blend, up, res, mask, op="pyramid_blend")
        leaves = [t for t in (up, res, mask) if t is not None]
        ref = [t.detach().double().cpu().requires_grad_() for t in leaves]
        want = ref[0] + (ref[1] if mask is None else ref[2] * ref[1])
        assert_close(out, want, 2 * TOL[dtype], f"{backend} out")
        grad = kit.randn(out.shape, kit.generator(6), dtype, backend.device)
        for i, (a, b) in enumerate(zip(torch.autograd.grad(out, leaves, grad),
                                       torch.autograd.grad(want, ref, grad.double().cpu()))):
            assert_close(a, b, 8 * TOL[dtype] * 4, f"{backend} grad {i}")


def test_pyramid_inject_gradcheck_float64(fp64_backend):
    prev, size, scale, noise, amp, pad = _inputs(CASES["between-scales"], torch.float64, fp64_backend.device)
    prev, noise = prev[:1, :, :6, :7], noise[:1, :, :8, :9]
    amp = amp[:1].double()
    leaves = [t.requires_grad_() for t in (prev, noise, amp)]
    assert torch.autograd.gradcheck(
        lambda p, n, a: fp64_backend.run(pyramid_inject, p, (8, 9), n, a, pad=2, scale=1.26), leaves)


def test_pyramid_inject_opcheck(backend):
    prev, size, scale, noise, amp, pad = _inputs(CASES["no-pad"], torch.float32, backend.device)
    prev, noise, amp = prev.requires_grad_(), noise.requires_grad_(), amp.requires_grad_()
    t = R.tables(prev, *R.plan(prev.shape[-2:], scale=scale, crop=size))
    kit.opcheck("pyramid_inject", (prev, *t.forward, *t.backward, noise, amp, 2, backend.name))


def test_pyramid_inject_under_torch_compile_fullgraph(backend):
    prev, size, scale, noise, amp, pad = _inputs(CASES["between-scales"], torch.float32, backend.device)
    kit.assert_compiles(lambda p, n: pyramid_inject(p, size, n, amp, scale=scale, backend=backend.name),
                        prev.requires_grad_(), noise.requires_grad_())


def test_pyramid_lowering_reference_leaves_only_standard_ops():
    prev, size, scale, noise, amp, pad = _inputs(CASES["between-scales"], torch.float32, "cpu")

    class Step(torch.nn.Module):
        def forward(self, p, n, residual):
            up, g_in = pyramid_inject(p, size, n, 0.3, scale=scale)
            return pyramid_blend(up, residual), g_in

    residual = torch.randn(2, 3, *size)
    with backends.lowering("reference"):
        program = torch.export.export(Step(), (prev, noise, residual))
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert names and all(n.startswith("aten.") for n in names), names
    out, g_in = program.module()(prev, noise, residual)
    want_up, want_g = P.pyramid_inject_reference(prev.double(), size, noise.double(), 0.3, scale=scale)
    assert_close(out, want_up + residual.double(), 1e-5, "out")
    assert_close(g_in, want_g, 1e-5, "g_in")


# ---------------------------------------------------------------------------------------------------
# SinGAN's pyramid schedule (adjust_scales2image / creat_reals_pyramid)


@pytest.mark.parametrize("h, w, n_levels, r, first, last", [
    (250, 250, 11, 0.794, (25, 25), (250, 250)),  # the paper's 250 px image: 11 scales, r ~ 0.794
    (183, 275, 8, None, (25, 38), (167, 250)),  # a landscape photo: 8 levels from 25x38 to 167x250
    (500, 333, None, None, None, (250, 167)),
])
def test_build_pyramid_matches_the_official_schedule(h, w, n_levels, r, first, last):
    p = build_pyramid(torch.rand(1, 3, h, w) * 2 - 1, backend="reference")
    num_scales, stop_scale, scale1 = P.pyramid_schedule(h, w)
    assert len(p) == stop_scale + 1 == p.stop_scale + 1 and p.num_scales == num_scales
    if n_levels is not None:
        assert len(p) == n_levels
    if r is not None:
        assert abs(p.r - r) < 1e-3
    if first is not None:
        assert p.sizes[0] == first
    assert p.sizes[-1] == last
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(p.sizes, p.sizes[1:]))
    assert p.sizes[0][0] == 25 or p.sizes[0][1] == 25 or min(p.sizes[0]) in (25, 26)


def test_build_pyramid_levels_are_resized_copies():
    img = torch.rand(1, 3, 60, 80) * 2 - 1
    p = build_pyramid(img, max_size=80, backend="reference")
    for i, level in enumerate(p.reals):
        want = R.imresize_reference(img.double(), p.r ** (p.stop_scale - i)) if i < p.stop_scale else img.double()
        assert_close(level, want, 1e-5, f"level {i}")


def test_build_pyramid_refuses_tiny_images():
    with pytest.raises(ValueError, match="smaller than min_size=25"):
        build_pyramid(torch.rand(1, 3, 20, 60))


# ---------------------------------------------------------------------------------------------------
# Bad input

BAD = kit.bad_inputs(
    ("prev rank", lambda p, s, n, a: (p[0], s, n, a), ValueError, r"prev must be 4-D"),
    ("noise rank", lambda p, s, n, a: (p, s, n[0], a), ValueError, r"noise must be 4-D"),
    ("batch", lambda p, s, n, a: (p[:1], s, n, a), ValueError, "prev and noise must have the same batch size"),
    ("noise channels", lambda p, s, n, a: (p, s, torch.cat([n, n[:, :1]], 1), a), ValueError,
     "noise must have 1 or C=3 channels"),
    ("noise size", lambda p, s, n, a: (p, s, n[..., :-1], a), ValueError, "noise must be 11x11"),
    ("size", lambda p, s, n, a: (p, (11, 0), n, a), ValueError, "size must be two positive ints"),
    ("dtype", lambda p, s, n, a: (p.double(), s, n, a), TypeError, "prev and noise must share a dtype"),
    ("int prev", lambda p, s, n, a: (p.long(), s, n, a), TypeError, "prev must be a floating tensor"),
    ("amp shape", lambda p, s, n, a: (p, s, n, a[:1]), ValueError, r"amp must be a number, a 0-d tensor or one value"),
    ("amp string", lambda p, s, n, a: (p, s, n, "0.1"), TypeError, "amp must be a finite number"),
    ("prev device", lambda p, s, n, a: (p.to("meta"), s, n, a), ValueError, "prev is on meta"),
)


@pytest.mark.parametrize("case", BAD)
def test_pyramid_inject_bad_input(backend, case):
    prev, size, scale, noise, amp, pad = _inputs(CASES["no-pad"], torch.float32, backend.device)
    kit.expect_bad_input(backend, pyramid_inject, (prev, size, noise, amp), case)


def test_crop_larger_than_the_resize_is_refused():
    prev = torch.randn(1, 3, 10, 10)
    with pytest.raises(ValueError, match="cannot crop height 13"):
        pyramid_inject(prev, (14, 13), torch.randn(1, 3, 14, 13), 1.0, scale=1.26)


def test_pyramid_blend_bad_input():
    up = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="residual must have up's shape"):
        pyramid_blend(up, up[:, :2])
    with pytest.raises(ValueError, match=r"mask must have shape \[B=2 or 1, 1, 4, 5\]"):
        pyramid_blend(up, up, torch.rand(2, 3, 4, 5))
    with pytest.raises(TypeError, match="mask must be a floating tensor"):
        pyramid_blend(up, up, torch.ones(1, 1, 4, 5, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------
# Cases for the build tests


@kit.native_cases("pyramid")
def pyramid_native_cases():
    cases = []
    for name in ("between-scales", "padded-noise", "coarsest"):
        prev, size, scale, noise, amp, pad = _inputs(CASES[name], torch.float64, "cpu", seed=11)
        if prev is None:
            prev = torch.zeros(noise.shape[0], 3, 1, 1, dtype=torch.float64)
            fwd = P._empty_tables(size, prev.device, torch.float64)[0]
        else:
            fwd = R.tables(prev, *R.plan(prev.shape[-2:], scale=scale, crop=size)).forward
        args = (prev, *fwd, noise, amp.double(), pad)
        cases.append(kit.NativeCase("_pyramid_inject_cpu", args, P.inject_reference(*args)))
    up, res = kit.randn((2, 3, 4, 5), kit.generator(12)), kit.randn((2, 3, 4, 5), kit.generator(13))
    mask = torch.rand(1, 1, 4, 5, generator=kit.generator(14), dtype=torch.float64)
    cases += [kit.NativeCase("_pyramid_blend_cpu", (up, res, None), (P.blend_reference(up, res),)),
              kit.NativeCase("_pyramid_blend_cpu", (up, res, mask), (P.blend_reference(up, res, mask),))]
    return cases


@kit.aot_variants("pyramid", [(1,)])
def pyramid_aot_variants(shape, dtype):
    from fsgan_fast.kernels import pyramid as kernels

    for op, kernel, signature, constexprs, warps in kernels.aot_variants(shape, dtype):
        yield kit.AotVariant(op, kernel, signature, constexprs, warps)
