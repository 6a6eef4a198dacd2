"""lfm_fuse / lfm_apply / lfm_similarity: every backend against the float64 reference, forward and backward.

The template for an op's tests. ``OP`` names the registered op whose backends the ``backend`` fixture
(tests/ops/conftest.py) runs; tests/ops/kit.py holds the comparisons, gradcheck/opcheck and the bad-input runner.
The end of the file registers the op family's cases for the build tests (CMake library, Triton AOT compile).
"""

from __future__ import annotations

import pytest
import torch

from fsgan_fast import backends
from fsgan_fast.ops import lfm as L
from fsgan_fast.ops import lfm_apply, lfm_fuse, lfm_similarity
from tests.ops import kit
from tests.ops.kit import TOL, assert_close

OP = "lfm_fuse"

# a chosen match may differ from the fp64 argmax only if its cosine is this close to the best one
COS_TOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# (B, K, C, H, W, n): minimum, empty selection, full selection, primes, non-square, K up to 5, one past the
# kernels' 16/64 blocks in C, H*W and n
SHAPES = kit.shapes(
    (1, 2, 1, 1, 1, 1),
    (2, 3, 5, 4, 3, 0),
    (2, 3, 5, 4, 3, 12),
    (3, 4, 7, 5, 3, 7),
    (2, 5, 16, 8, 8, 32),
    (1, 2, 33, 7, 11, 20),
    (2, 3, 19, 3, 17, 25),
    (2, 2, 17, 5, 13, 17),
)


def make_inputs(B, K, C, H, W, n, dtype=torch.float32, device="cpu", seed=0):
    """(feats [B,K,C,H,W] dtype, base [B], positions [B,n] distinct, alpha [B,K] float32 on the simplex)."""
    gen = kit.generator(seed)
    feats = kit.randn((B, K, C, H, W), gen, dtype, device)
    base = kit.randint(K, (B,), gen, device)
    positions = kit.distinct(B, H * W, n, gen, device)
    alpha = kit.simplex((B, K), gen, torch.float32, device)
    return feats, base, positions, alpha


def assert_matches_are_argmax(feats, base, positions, ref_idx, dtype, what="ref_idx"):
    """Each chosen match must be a (near-)maximum of the fp64 cosine map; exact ties broken to the smallest j."""
    sim = L.lfm_similarity_reference(feats.double().cpu(), base.cpu(), positions.cpu())
    ref_idx = ref_idx.cpu()
    assert ref_idx.dtype == torch.int64 and ref_idx.shape == sim.shape[:3], what
    if sim.numel() == 0:
        return
    chosen = sim.gather(3, ref_idx.unsqueeze(-1)).squeeze(-1)
    gap = sim.max(dim=-1).values - chosen
    assert gap.max() <= COS_TOL[dtype], f"{what}: a match is {gap.max():.2e} below the best cosine"


def _leaf(t, dtype=None):
    return t.detach().cpu().to(dtype or t.dtype).requires_grad_()


# ---------------------------------------------------------------------------------------------------
# Forward and backward against the reference


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", kit.FLOAT_DTYPES, ids=str)
def test_lfm_fuse_matches_reference(backend, shape, dtype):
    backend.require(dtype)
    B, K, C, H, W, n = shape
    feats, base, positions, alpha = make_inputs(*shape, dtype=dtype, device=backend.device)
    feats.requires_grad_(True)
    alpha.requires_grad_(True)
    fused, ref_idx = backend.run(lfm_fuse, feats, base, positions, alpha)
    assert fused.dtype == dtype and fused.shape == (B, C, H, W)
    assert_matches_are_argmax(feats, base, positions, ref_idx, dtype)

    # values and gradients against the fp64 reference replaying the backend's own matches
    idx = (base.cpu(), positions.cpu(), ref_idx.cpu())
    x64, a64 = _leaf(feats, torch.float64), _leaf(alpha, torch.float64)
    expected = L.lfm_apply_reference(x64, idx[0], idx[1], idx[2], a64)
    grad = kit.randn(fused.shape, kit.generator(1))
    fused.backward(grad.to(backend.device, dtype))
    expected.backward(grad)
    scale = max(1.0, n / max(H * W, 1) * K)  # repeated matches sum several terms
    alpha_scale = max(1, C * n) ** 0.5 * 4  # grad alpha sums n*C products: its error grows with them
    assert alpha.grad.dtype == torch.float32
    checks = [(fused, expected, TOL[dtype], "fused"), (feats.grad, x64.grad, TOL[dtype] * scale, "grad feats"),
              (alpha.grad, a64.grad, max(TOL[dtype], TOL[alpha.dtype]) * alpha_scale, "grad alpha")]
    for got, want, atol, what in checks:
        assert_close(got, want, atol, what)
    if dtype in kit.LOW_PRECISION:  # and within 2x the error of the reference run in the same precision
        x16, a16 = _leaf(feats), _leaf(alpha)
        same = L.lfm_apply_reference(x16, idx[0], idx[1], idx[2], a16)
        same.backward(grad.to(dtype))
        for (got, want, _, what), lowp in zip(checks, (same, x16.grad, a16.grad)):
            kit.assert_close_lowp(got, want, lowp, what)


@pytest.mark.parametrize("shape", SHAPES[1:5])
def test_lfm_apply_matches_reference(backend, shape):
    B, K, C, H, W, n = shape
    _, base, positions, alpha = make_inputs(*shape, device=backend.device)
    gen = kit.generator(3)
    x = kit.randn((B, K, 3, H, W), gen, torch.float32, backend.device).requires_grad_()  # C' = 3, like images
    ref_idx = kit.randint(H * W, (B, K - 1, n), gen, backend.device)  # repeats allowed
    alpha = alpha.requires_grad_()
    out = backend.run(lfm_apply, x, base, positions, ref_idx, alpha)
    x64, a64 = _leaf(x, torch.float64), _leaf(alpha, torch.float64)
    expected = L.lfm_apply_reference(x64, base.cpu(), positions.cpu(), ref_idx.cpu(), a64)
    assert_close(out, expected, TOL[torch.float32], "lfm_apply")
    grad = kit.randn(out.shape, gen)
    out.backward(grad.to(backend.device, out.dtype))
    expected.backward(grad)
    assert_close(x.grad, x64.grad, TOL[torch.float32] * K, "grad x")
    assert_close(alpha.grad, a64.grad, 1e-4, "grad alpha")


def test_lfm_fuse_noncontiguous_and_int32(backend):
    feats, base, positions, alpha = make_inputs(2, 4, 6, 5, 4, 9, device=backend.device)
    # a permuted view of the same values: C and H swapped in memory
    strided = feats.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)
    assert not strided.is_contiguous()
    fused, ref_idx = backend.run(lfm_fuse, strided, base.int(), positions.int(), alpha.t().contiguous().t())
    exp_fused, exp_idx = L.lfm_fuse_reference(feats.double().cpu(), base.cpu(), positions.cpu(), alpha.double().cpu())
    assert_close(ref_idx, exp_idx, 0, "ref_idx")
    assert_close(fused, exp_fused, TOL[torch.float32], "fused")


def test_lfm_fuse_ties_go_to_smallest_index(backend):
    """Constant reference maps make every cosine equal: every match must be position 0."""
    feats, base, positions, alpha = make_inputs(2, 3, 8, 4, 4, 10, device=backend.device)
    feats = feats[:, :, :, :1, :1].expand(-1, -1, -1, 4, 4).contiguous()
    _, ref_idx = backend.run(lfm_fuse, feats, base, positions, alpha)
    assert_close(ref_idx, torch.zeros_like(ref_idx), 0, "ref_idx")


def test_lfm_fuse_repeated_matches_sum_gradients(backend):
    """References built from two distinct columns: many positions match the same j, gradients add up there."""
    B, K, C, H, W, n = 2, 3, 6, 4, 4, 12
    feats, base, positions, alpha = make_inputs(B, K, C, H, W, n, device=backend.device)
    gen = kit.generator(4)
    pattern = kit.randint(2, (B, K, 1, H * W), gen, backend.device)
    two_columns = feats.view(B, K, C, H * W)[..., :2]
    feats = torch.where(pattern == 0, two_columns[..., :1], two_columns[..., 1:]).view(B, K, C, H, W).contiguous()
    feats.requires_grad_()
    fused, ref_idx = backend.run(lfm_fuse, feats, base, positions, alpha)
    assert_matches_are_argmax(feats, base, positions, ref_idx, torch.float32)
    for row in ref_idx.view(-1, n).cpu():
        assert row.unique().numel() <= 2, "test setup: expected every match to hit one of two columns"
    grad = kit.randn(fused.shape, gen, torch.float32, backend.device)
    fused.backward(grad)
    x64 = _leaf(feats, torch.float64)
    L.lfm_apply_reference(x64, base.cpu(), positions.cpu(), ref_idx.cpu(), alpha.double().cpu()).backward(grad.double().cpu())
    assert_close(feats.grad, x64.grad, 1e-4, "grad feats")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
def test_lfm_fuse_nan_matches_like_torch_argmax(backend):
    """NaN cosines win the argmax, the first one on ties, as torch.argmax does in the reference."""
    B, K, C, H, W, n = 3, 3, 8, 4, 5, 9
    feats, base, positions, alpha = make_inputs(B, K, C, H, W, n, seed=7)
    base = torch.tensor([0, 1, 2])
    x = feats.view(B, K, C, H * W).clone()
    x[0, 1, 3, 7] = float("nan")  # one reference column of row 0: every position of that row matches it
    x[0, 1, 0, 11] = float("nan")  # a later NaN column of the same map loses to the first
    x[1, 1, 2, positions[1, 4]] = float("nan")  # a selected base vector of row 1: its cosines are all NaN
    x[2, 0, 5, 2] = float("nan")  # row 2: reference 0 has a NaN column; reference 1 stays finite
    x[2, 2, 1, positions[2, 3]] = float("inf")  # row 2: an infinite base vector, NaN cosines (inf / inf) everywhere
    x = x.view(B, K, C, H, W)
    fused, ref_idx = backend.run(lfm_fuse, *backend.to(x, base, positions, alpha))
    exp_fused, exp_idx = L.lfm_fuse_reference(x.double(), base, positions, alpha.double())
    assert exp_idx[0, 0].eq(7).all() and exp_idx[1, :, 4].eq(0).all() and exp_idx[2, :, 3].eq(0).all()  # setup
    assert exp_idx[2, 0, :3].eq(2).all()
    assert_close(ref_idx, exp_idx, 0, "ref_idx")
    assert_close(fused, exp_fused, TOL[torch.float32], "fused")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
def test_lfm_apply_nonfinite_gradients_stay_at_their_matches(backend):
    """inf/-inf/NaN in the incoming gradient reach exactly the elements the reference sends them to."""
    B, K, C, H, W, n = 3, 3, 20, 4, 5, 11
    x, base, positions, alpha = make_inputs(B, K, C, H, W, n, seed=8)
    gen = kit.generator(9)
    ref_idx = kit.randint(H * W, (B, K - 1, n), gen)
    ref_idx[0, 0, 1] = ref_idx[0, 0, 2]  # two positions sending to one column: +inf and -inf meet there
    grad = kit.randn((B, C, H * W), gen)
    grad[0, 3, positions[0, 1]] = float("inf")
    grad[0, 3, positions[0, 2]] = float("-inf")
    grad[0, 4, positions[0, 5]] = float("inf")
    grad[1, 6, positions[1, 0]] = float("nan")
    grad[1, 7, positions[1, 3]] = float("-inf")
    unselected = next(j for j in range(H * W) if not positions[2].eq(j).any())
    grad[2, 8, unselected] = float("inf")  # reaches the base map only; row 2's alpha gradients stay finite
    grad = grad.view(B, C, H, W)
    x32, a32 = x.clone().requires_grad_(), alpha.clone().requires_grad_()
    out = backend.run(lfm_apply, *backend.to(x32, base, positions, ref_idx, a32))
    out.backward(grad.to(backend.device, torch.float32))
    x64, a64 = x.double().requires_grad_(), alpha.double().requires_grad_()
    L.lfm_apply_reference(x64, base, positions, ref_idx, a64).backward(grad)
    assert x64.grad.isinf().any() and x64.grad.isnan().any() and a64.grad[2].isfinite().all()  # setup
    assert_close(x32.grad, x64.grad, 1e-4, "grad x")
    assert_close(a32.grad, a64.grad, 1e-4, "grad alpha")


def test_triton_launchers_refuse_int32_overflow():
    if not backends.triton_installed():
        pytest.skip("the 'triton' package is not installed")
    from fsgan_fast.kernels import lfm as triton_lfm

    triton_lfm._check_sizes(5, 256, 256, 128)  # the benchmark size passes
    with pytest.raises(ValueError, match="below 2\\^31"):
        triton_lfm._check_sizes(3, 2**16, 2**15 + 1, 10)
    with pytest.raises(ValueError, match="below 2\\^31"):
        triton_lfm._check_sizes(2**12, 1, 2**20, 2**20)


def test_lfm_backward_is_deterministic(backend):
    if backend.name == "reference" and backend.device.type == "cuda":
        pytest.skip("the reference's scatter_add_ adds with atomics on CUDA: not deterministic, and not meant to be")
    feats, base, positions, alpha = make_inputs(2, 4, 12, 6, 6, 30, device=backend.device, seed=5)
    grads = []
    for _ in range(2):
        x = feats.clone().requires_grad_()
        fused, _ = backend.run(lfm_fuse, x, base, positions, alpha)
        fused.backward(torch.ones_like(fused) * 0.37 + fused.detach())
        grads.append(x.grad)
    assert_close(grads[1], grads[0], 0, "grad feats of the second run")


def test_lfm_fuse_empty_batch(backend):
    feats, base, positions, alpha = make_inputs(0, 3, 4, 3, 3, 4, device=backend.device)
    fused, ref_idx = backend.run(lfm_fuse, feats, base, positions, alpha)
    assert fused.shape == (0, 4, 3, 3) and ref_idx.shape == (0, 2, 4)


# ---------------------------------------------------------------------------------------------------
# The reference itself


def test_reference_hand_worked_example():
    """LoFGAN's steps worked by hand: K=3 shots of C=2 channels on a 1x3 grid, base shot 1."""
    feats = torch.tensor(
        [
            [
                [[[1.0, 0.0, 2.0]], [[0.0, 1.0, 2.0]]],  # shot 0: columns (1,0), (0,1), (2,2)
                [[[3.0, 1.0, 0.0]], [[1.0, 0.0, -1.0]]],  # shot 1 (base): (3,1), (1,0), (0,-1)
                [[[0.0, -1.0, 4.0]], [[2.0, 0.0, 1.0]]],  # shot 2: (0,2), (-1,0), (4,1)
            ]
        ],
        dtype=torch.float64,
    )
    base = torch.tensor([1])
    positions = torch.tensor([[0, 2]])
    alpha = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    fused, ref_idx = L.lfm_fuse_reference(feats, base, positions, alpha)
    # base (3,1): vs shot 0 cosines 0.949, 0.316, 0.894 -> j=0; vs shot 2: 0.316, -0.949, 0.997 -> j=2
    # base (0,-1): vs shot 0: 0, -1, -0.707 -> j=0; vs shot 2: -1, 0, -0.243 -> j=1
    assert ref_idx.tolist() == [[[0, 0], [2, 1]]]
    # position 0: 0.5*(3,1) + 0.2*(1,0) + 0.3*(4,1) = (2.9, 0.8); position 2: 0.5*(0,-1) + 0.2*(1,0) + 0.3*(-1,0) = (-0.1, -0.5)
    expected = torch.tensor([[[[2.9, 1.0, -0.1]], [[0.8, 0.0, -0.5]]]], dtype=torch.float64)
    assert_close(fused, expected, 1e-12, "fused")
    sim = lfm_similarity(feats, base, positions)
    assert sim.shape == (1, 2, 2, 3)
    assert_close(sim[0, 1, 0, 2], torch.tensor(13 / (10**0.5 * 17**0.5), dtype=torch.float64), 1e-12, "cosine")


def test_reference_backward_formula_matches_autograd():
    feats, base, positions, alpha = make_inputs(3, 4, 5, 3, 4, 8, dtype=torch.float64)
    x, a = feats.clone().requires_grad_(), alpha.double().requires_grad_()
    fused, ref_idx = L.lfm_fuse_reference(x, base, positions, a)
    grad = kit.randn(fused.shape, kit.generator(2))
    fused.backward(grad)
    gx, ga = L.lfm_apply_backward_reference(grad, feats, base, positions, ref_idx, alpha.double())
    assert_close(gx, x.grad, 1e-12, "grad feats")
    assert_close(ga, a.grad, 1e-12, "grad alpha")


def test_lfm_gradcheck_float64(fp64_backend):
    feats, base, positions, alpha = make_inputs(2, 3, 4, 3, 3, 5, dtype=torch.float64)
    feats, alpha = feats.requires_grad_(), alpha.double().requires_grad_()
    kit.gradcheck(lambda f, a: fp64_backend.run(lfm_fuse, f, base, positions, a)[0], feats, alpha)
    _, ref_idx = fp64_backend.run(lfm_fuse, feats, base, positions, alpha)
    x = kit.randn((2, 3, 2, 3, 3), kit.generator(1)).requires_grad_()
    kit.gradcheck(lambda x, a: fp64_backend.run(lfm_apply, x, base, positions, ref_idx, a), x, alpha)


# ---------------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, torch.export


def test_lfm_opcheck(backend):
    feats, base, positions, alpha = make_inputs(2, 3, 4, 3, 3, 5, device=backend.device)
    feats.requires_grad_()
    kit.opcheck("lfm_fuse", (feats, base, positions, alpha, backend.name))
    _, ref_idx = backend.run(lfm_fuse, feats, base, positions, alpha)
    kit.opcheck("lfm_apply", (feats, base, positions, ref_idx, alpha, backend.name))
    grad = kit.randn((2, 4, 3, 3), kit.generator(1), torch.float32, backend.device)
    kit.opcheck("lfm_apply_backward", (grad, feats.detach(), base, positions, ref_idx, alpha, backend.name))


def test_lfm_fuse_under_torch_compile_fullgraph():
    feats, base, positions, alpha = make_inputs(2, 3, 8, 4, 4, 8)
    kit.assert_compiles(lambda f, b, p, a: lfm_fuse(f, b, p, a, check_indices=False),
                        feats.requires_grad_(), base, positions, alpha.requires_grad_())


def test_lfm_fuse_torch_export():
    feats, base, positions, alpha = make_inputs(2, 3, 8, 4, 4, 8)
    kit.assert_exports(lambda f, b, p, a: lfm_fuse(f, b, p, a, check_indices=False, backend="reference"),
                       (feats, base, positions, alpha), L.lfm_fuse_reference(feats, base, positions, alpha))


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, before any kernel runs, on every backend

BAD_FUSE = kit.bad_inputs(
    ("rank", lambda f, b, p, a: (f[0], b, p, a), ValueError, "feats must be 5-D"),
    ("K<2", lambda f, b, p, a: (f[:, :1], b, p, a[:, :1]), ValueError, "feats needs K >= 2"),
    ("float positions", lambda f, b, p, a: (f, b, p.float(), a), TypeError, "positions must be an integer"),
    ("int feats", lambda f, b, p, a: (f.long(), b, p, a), TypeError, "feats must be a floating"),
    ("base shape", lambda f, b, p, a: (f, b[:1], p, a), ValueError, r"base must have shape \[2\]"),
    ("alpha shape", lambda f, b, p, a: (f, b, p, a[:, :2]), ValueError, r"alpha must have shape \[2, 3\]"),
    ("positions rows", lambda f, b, p, a: (f, b, p[:1], a), ValueError, r"positions must have shape \[B=2"),
    ("n > P", lambda f, b, p, a: (f, b, torch.arange(17, device=p.device).repeat(2, 1), a), ValueError,
     r"positions selects n=17 .* H\*W=16"),
    ("base range", lambda f, b, p, a: (f, b + 3, p, a), ValueError, r"base must lie in \[0, K=3\)"),
    ("positions range", lambda f, b, p, a: (f, b, p + 16, a), ValueError, r"positions must lie in \[0, H\*W=16\)"),
    ("negative position", lambda f, b, p, a: (f, b, p - 100, a), ValueError, "positions must lie in"),
    ("repeated", lambda f, b, p, a: (f, b, torch.cat([p[:, :1], p[:, :1]], 1), a), ValueError,
     "positions must be distinct"),
    ("not a tensor", lambda f, b, p, a: (f, [0, 1], p, a), TypeError, "base must be a torch.Tensor"),
    ("positions device", lambda f, b, p, a: (f, b, p.cpu(), a), ValueError, "positions is on cpu but feats is on cuda",
     ("cuda",)),
    ("alpha device", lambda f, b, p, a: (f, b, p, a.cpu()), ValueError, "alpha is on cpu but feats is on cuda",
     ("cuda",)),
)

BAD_APPLY = kit.bad_inputs(
    ("ref_idx shape", lambda x, b, p, r, a: (x, b, p, r[:, :, :5], a), ValueError,
     r"ref_idx must have shape \[2, 2, 6\]"),
    ("ref_idx range", lambda x, b, p, r, a: (x, b, p, r + 16, a), ValueError, r"ref_idx must lie in \[0, H\*W=16\)"),
    ("float ref_idx", lambda x, b, p, r, a: (x, b, p, r.float(), a), TypeError, "ref_idx must be an integer"),
    ("x rank", lambda x, b, p, r, a: (x[0], b, p, r, a), ValueError, "x must be 5-D"),
    ("ref_idx device", lambda x, b, p, r, a: (x, b, p, r.cpu(), a), ValueError, "ref_idx is on cpu but x is on cuda",
     ("cuda",)),
)


@pytest.mark.parametrize("case", BAD_FUSE)
def test_lfm_fuse_bad_input(backend, case):
    kit.expect_bad_input(backend, lfm_fuse, make_inputs(2, 3, 4, 4, 4, 6, device=backend.device), case)


@pytest.mark.parametrize("case", BAD_APPLY)
def test_lfm_apply_bad_input(backend, case):
    x, base, positions, alpha = make_inputs(2, 3, 4, 4, 4, 6, device=backend.device)
    ref_idx = kit.randint(16, (2, 2, 6), kit.generator(1), backend.device)
    kit.expect_bad_input(backend, lfm_apply, (x, base, positions, ref_idx, alpha), case)


def test_out_of_range_indices_never_crash_unchecked(backend):
    """With checks off, bad indices must not read or write out of bounds (results are unspecified)."""
    if backend.name == "reference":
        pytest.skip("the reference is the spec; out-of-range gathers raise there (or assert on a GPU)")
    feats, base, positions, alpha = make_inputs(2, 3, 4, 4, 4, 6, device=backend.device)
    positions = positions.clone()
    positions[0, 0] = 1000
    base = base.clone()
    base[1] = 7
    fused, ref_idx = backend.run(lfm_fuse, feats, base, positions, alpha, check_indices=False)
    if backend.device.type == "cuda":
        torch.cuda.synchronize()
    assert fused.shape == (2, 4, 4, 4)


# ---------------------------------------------------------------------------------------------------
# Cases for the build tests: tests/test_cmake_build.py (the CMake library's CPU kernels) and
# tests/ops/test_triton_compile.py (every Triton variant the launchers pick, compiled for real GPUs)


@kit.native_cases("lfm")
def lfm_native_cases():
    x, base, pos, _ = make_inputs(3, 4, 5, 6, 7, 11, dtype=torch.float64, seed=11)
    pos = pos.contiguous()  # the private ops take what the public op passes them: contiguous, int64
    gen = kit.generator(12)
    alpha = kit.randn((3, 4), gen).abs()  # the private ops take alpha in the opmath dtype, used as given
    grad = kit.randn((3, 5, 6, 7), gen)
    fused, ref_idx = L.lfm_fuse_reference(x, base, pos, alpha)
    grads = L.lfm_apply_backward_reference(grad, x, base, pos, ref_idx, alpha)
    return [
        kit.NativeCase("_lfm_fuse_cpu", (x, base, pos, alpha), (fused, ref_idx)),
        kit.NativeCase("_lfm_apply_cpu", (x, base, pos, ref_idx, alpha), (fused,)),
        kit.NativeCase("_lfm_apply_backward_cpu", (grad, x, base, pos, ref_idx, alpha), grads),
    ]


# (B, K, C, H, W, n): the benchmark sizes of PERFORMANCE.md, LoFGAN's 64/128/256 px generators (8x8 feature
# grid, half the positions selected), and tiny/odd shapes that take the smallest blocks
AOT_SHAPES = [
    (8, 3, 128, 8, 8, 32),
    (64, 5, 256, 16, 16, 128),
    (1, 3, 128, 8, 8, 32),
    (64, 3, 128, 8, 8, 32),
    (8, 3, 256, 16, 16, 128),
    (2, 2, 3, 5, 7, 1),
]


@kit.aot_variants("lfm", AOT_SHAPES)
def lfm_aot_variants(shape, dtype):
    from fsgan_fast.kernels import lfm as kernels

    B, K, C, H, W, n = shape
    t = kit.TRITON_TYPES[dtype]
    cfg = dict(kernels._fwd_config(B, C, H * W, n, dtype))
    warps = cfg.pop("num_warps")
    signature = dict(x_ptr=f"*{t}", base_ptr="*i64", pos_ptr="*i64", alpha_ptr="*fp32", idx_ptr="*i64",
                     out_ptr=f"*{t}", K="i32", C="i32", P="i32", n="i32", num_t_blocks="i32", blocks_per_row="i32")
    for op, match in (("lfm_fuse", True), ("lfm_apply", False)):
        yield kit.AotVariant(op, kernels._lfm_fwd_kernel, signature, dict(MATCH=match, **cfg), warps)
    cfg = dict(kernels._bwd_config(C, H * W, n, dtype))
    warps = cfg.pop("num_warps")
    signature = dict(grad_ptr=f"*{t}", x_ptr=f"*{t}", base_ptr="*i64", pos_ptr="*i64", idx_ptr="*i64",
                     alpha_ptr="*fp32", gx_ptr=f"*{t}", ga_ptr="*fp32", K="i32", C="i32", P="i32", n="i32")
    yield kit.AotVariant("lfm_apply_backward", kernels._lfm_bwd_kernel, signature, cfg, warps)
