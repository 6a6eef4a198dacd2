"""lfm_fuse / lfm_apply / lfm_similarity: every backend against the float64 reference, forward and backward."""

from __future__ import annotations

import re

import pytest
import torch

import fsgan_fast
from fsgan_fast import backends
from fsgan_fast.ops import lfm as L
from fsgan_fast.ops import lfm_apply, lfm_fuse, lfm_similarity

CUDA = torch.cuda.is_available()

# (backend, device) pairs; each is skipped with the reason when it cannot run here
CASES = [("reference", "cpu"), ("cpu", "cpu"), ("triton", "cuda" if CUDA else "cpu"), ("cuda", "cuda")]
if CUDA:
    CASES.append(("reference", "cuda"))

# absolute tolerance of the fused values / gradients per dtype, for unit-variance inputs
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# a chosen match may differ from the fp64 argmax only if its cosine is this close to the best one
COS_TOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# (B, K, C, H, W, n): minimum, empty selection, full selection, primes, non-square, K up to 5
SHAPES = [
    (1, 2, 1, 1, 1, 1),
    (2, 3, 5, 4, 3, 0),
    (2, 3, 5, 4, 3, 12),
    (3, 4, 7, 5, 3, 7),
    (2, 5, 16, 8, 8, 32),
    (1, 2, 33, 7, 11, 20),
    (2, 3, 19, 3, 17, 25),
]


@pytest.fixture(params=CASES, ids=[f"{b}-{d}" for b, d in CASES])
def backend(request):
    name, device = request.param
    if device == "cuda" and not CUDA:
        pytest.skip("needs a CUDA device")
    reason = backends.why_unavailable("lfm_fuse", name, torch.device(device))
    if reason is not None:
        pytest.skip(f"backend {name!r} unavailable: {reason}")
    return name, torch.device(device)


def make_inputs(B, K, C, H, W, n, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, K, C, H, W, generator=gen, dtype=torch.float64)
    base = torch.randint(K, (B,), generator=gen)
    positions = torch.rand(B, H * W, generator=gen).argsort(dim=1)[:, :n]
    alpha = torch.rand(B, K, generator=gen, dtype=torch.float64) + 0.1
    alpha = alpha / alpha.sum(1, keepdim=True)
    return feats.to(device, dtype), base.to(device), positions.to(device), alpha.to(device, torch.float32)


def assert_close(actual, expected, atol, what):
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {list(actual.shape)} != {list(expected.shape)}"
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN at {nan_a.logical_xor(nan_e).nonzero()[:5].tolist()}"
    err = (actual - expected).abs().nan_to_num(0)
    if err.numel() and err.max() > atol:
        idx = tuple(int(i) for i in (err == err.max()).nonzero()[0])
        raise AssertionError(f"{what}: max |err| {err.max():.3e} > {atol:.1e} at {idx}: {actual[idx]} vs {expected[idx]}")


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


# ---------------------------------------------------------------------------------------------------
# Forward and backward against the reference


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lfm_fuse_matches_reference(backend, shape, dtype):
    name, device = backend
    if backends.why_unavailable("lfm_fuse", name, device, dtype):
        pytest.skip(backends.why_unavailable("lfm_fuse", name, device, dtype))
    feats, base, positions, alpha = make_inputs(*shape, dtype=dtype, device=device)
    feats.requires_grad_(True)
    alpha.requires_grad_(True)
    fused, ref_idx = lfm_fuse(feats, base, positions, alpha, backend=name)
    assert fsgan_fast.last_backend("lfm_fuse") == name
    assert fused.dtype == dtype and fused.shape == (shape[0], shape[2], shape[3], shape[4])
    assert_matches_are_argmax(feats, base, positions, ref_idx, dtype)

    # values and gradients against the fp64 reference replaying the backend's own matches
    x64, a64 = feats.detach().double().cpu().requires_grad_(), alpha.detach().double().cpu().requires_grad_()
    expected = L.lfm_apply_reference(x64, base.cpu(), positions.cpu(), ref_idx.cpu(), a64)
    assert_close(fused, expected, TOL[dtype], "fused")

    grad = torch.randn(fused.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fused.backward(grad.to(device, dtype))
    expected.backward(grad)
    scale = max(1.0, shape[5] / max(shape[3] * shape[4], 1) * shape[1])  # repeated matches sum several terms
    assert_close(feats.grad, x64.grad, TOL[dtype] * scale, "grad feats")
    # grad alpha sums n*C products: its error grows with them
    assert alpha.grad.dtype == torch.float32
    assert_close(alpha.grad, a64.grad, TOL[dtype] * max(1, shape[2] * shape[5]) ** 0.5 * 4, "grad alpha")


@pytest.mark.parametrize("shape", SHAPES[1:5], ids=[str(s) for s in SHAPES[1:5]])
def test_lfm_apply_matches_reference(backend, shape):
    name, device = backend
    B, K, C, H, W, n = shape
    _, base, positions, alpha = make_inputs(*shape, device=device)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, K, 3, H, W, generator=gen).to(device).requires_grad_()  # C' = 3, like images
    ref_idx = torch.randint(H * W, (B, K - 1, n), generator=gen).to(device)  # repeats allowed
    alpha = alpha.requires_grad_()
    out = lfm_apply(x, base, positions, ref_idx, alpha, backend=name)
    assert fsgan_fast.last_backend("lfm_apply") == name
    x64, a64 = x.detach().double().cpu().requires_grad_(), alpha.detach().double().cpu().requires_grad_()
    expected = L.lfm_apply_reference(x64, base.cpu(), positions.cpu(), ref_idx.cpu(), a64)
    assert_close(out, expected, TOL[torch.float32], "lfm_apply")
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(grad.to(device, out.dtype))
    expected.backward(grad)
    assert_close(x.grad, x64.grad, TOL[torch.float32] * K, "grad x")
    assert_close(alpha.grad, a64.grad, 1e-4, "grad alpha")


def test_lfm_fuse_noncontiguous_and_int32(backend):
    name, device = backend
    feats, base, positions, alpha = make_inputs(2, 4, 6, 5, 4, 9, device=device)
    # a permuted view of the same values: C and H swapped in memory
    strided = feats.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)
    assert not strided.is_contiguous()
    fused, ref_idx = lfm_fuse(strided, base.int(), positions.int(), alpha.t().contiguous().t(), backend=name)
    exp_fused, exp_idx = L.lfm_fuse_reference(feats.double().cpu(), base.cpu(), positions.cpu(), alpha.double().cpu())
    assert torch.equal(ref_idx.cpu(), exp_idx)
    assert_close(fused, exp_fused, TOL[torch.float32], "fused")


def test_lfm_fuse_ties_go_to_smallest_index(backend):
    """Constant reference maps make every cosine equal: every match must be position 0."""
    name, device = backend
    feats, base, positions, alpha = make_inputs(2, 3, 8, 4, 4, 10, device=device)
    feats = feats[:, :, :, :1, :1].expand(-1, -1, -1, 4, 4).contiguous()
    _, ref_idx = lfm_fuse(feats, base, positions, alpha, backend=name)
    assert (ref_idx == 0).all(), ref_idx


def test_lfm_fuse_repeated_matches_sum_gradients(backend):
    """References built from two distinct columns: many positions match the same j, gradients add up there."""
    name, device = backend
    B, K, C, H, W, n = 2, 3, 6, 4, 4, 12
    feats, base, positions, alpha = make_inputs(B, K, C, H, W, n, device=device)
    gen = torch.Generator().manual_seed(4)
    pattern = torch.randint(2, (B, K, 1, H * W), generator=gen).to(device)
    two_columns = feats.view(B, K, C, H * W)[..., :2]
    feats = torch.where(pattern == 0, two_columns[..., :1], two_columns[..., 1:]).view(B, K, C, H, W).contiguous()
    feats.requires_grad_()
    fused, ref_idx = lfm_fuse(feats, base, positions, alpha, backend=name)
    assert_matches_are_argmax(feats, base, positions, ref_idx, torch.float32)
    for row in ref_idx.view(-1, n).cpu():
        assert row.unique().numel() <= 2, "test setup: expected every match to hit one of two columns"
    grad = torch.randn(fused.shape, generator=gen).to(device)
    fused.backward(grad)
    x64 = feats.detach().double().cpu().requires_grad_()
    L.lfm_apply_reference(x64, base.cpu(), positions.cpu(), ref_idx.cpu(), alpha.double().cpu()).backward(grad.double().cpu())
    assert_close(feats.grad, x64.grad, 1e-4, "grad feats")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
def test_lfm_fuse_nan_matches_like_torch_argmax(backend):
    """NaN cosines win the argmax, the first one on ties, as torch.argmax does in the reference."""
    name, device = backend
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
    fused, ref_idx = lfm_fuse(x.to(device), base.to(device), positions.to(device), alpha.to(device), backend=name)
    exp_fused, exp_idx = L.lfm_fuse_reference(x.double(), base, positions, alpha.double())
    assert exp_idx[0, 0].eq(7).all() and exp_idx[1, :, 4].eq(0).all() and exp_idx[2, :, 3].eq(0).all()  # setup
    assert exp_idx[2, 0, :3].eq(2).all()
    assert torch.equal(ref_idx.cpu(), exp_idx)
    assert_close(fused, exp_fused, TOL[torch.float32], "fused")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
def test_lfm_apply_nonfinite_gradients_stay_at_their_matches(backend):
    """inf/-inf/NaN in the incoming gradient reach exactly the elements the reference sends them to."""
    name, device = backend
    B, K, C, H, W, n = 3, 3, 20, 4, 5, 11
    x, base, positions, alpha = make_inputs(B, K, C, H, W, n, seed=8)
    gen = torch.Generator().manual_seed(9)
    ref_idx = torch.randint(H * W, (B, K - 1, n), generator=gen)
    ref_idx[0, 0, 1] = ref_idx[0, 0, 2]  # two positions sending to one column: +inf and -inf meet there
    grad = torch.randn(B, C, H * W, generator=gen, dtype=torch.float64)
    grad[0, 3, positions[0, 1]] = float("inf")
    grad[0, 3, positions[0, 2]] = float("-inf")
    grad[0, 4, positions[0, 5]] = float("inf")
    grad[1, 6, positions[1, 0]] = float("nan")
    grad[1, 7, positions[1, 3]] = float("-inf")
    unselected = next(j for j in range(H * W) if not positions[2].eq(j).any())
    grad[2, 8, unselected] = float("inf")  # reaches the base map only; row 2's alpha gradients stay finite
    grad = grad.view(B, C, H, W)
    x32, a32 = x.clone().requires_grad_(), alpha.clone().requires_grad_()
    out = lfm_apply(x32.to(device), base.to(device), positions.to(device), ref_idx.to(device), a32.to(device),
                    backend=name)
    out.backward(grad.to(device, torch.float32))
    x64, a64 = x.double().requires_grad_(), alpha.double().requires_grad_()
    L.lfm_apply_reference(x64, base, positions, ref_idx, a64).backward(grad)
    assert x64.grad.isinf().any() and x64.grad.isnan().any() and a64.grad[2].isfinite().all()  # setup
    for got, want in ((x32.grad, x64.grad), (a32.grad, a64.grad)):
        got = got.detach().double().cpu()
        assert torch.equal(got.isnan(), want.isnan()), (got.isnan() ^ want.isnan()).nonzero()[:5].tolist()
        assert torch.equal(got.isposinf(), want.isposinf()) and torch.equal(got.isneginf(), want.isneginf())
        finite = want.isfinite()
        assert torch.allclose(got[finite], want[finite], rtol=0, atol=1e-4)


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
    name, device = backend
    if name == "reference" and device.type == "cuda":
        pytest.skip("the reference's scatter_add_ adds with atomics on CUDA: not deterministic, and not meant to be")
    feats, base, positions, alpha = make_inputs(2, 4, 12, 6, 6, 30, device=device, seed=5)
    grads = []
    for _ in range(2):
        x = feats.clone().requires_grad_()
        fused, _ = lfm_fuse(x, base, positions, alpha, backend=name)
        fused.backward(torch.ones_like(fused) * 0.37 + fused.detach())
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])


def test_lfm_fuse_empty_batch(backend):
    name, device = backend
    feats, base, positions, alpha = make_inputs(0, 3, 4, 3, 3, 4, device=device)
    fused, ref_idx = lfm_fuse(feats, base, positions, alpha, backend=name)
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
    torch.testing.assert_close(fused, expected)
    sim = lfm_similarity(feats, base, positions)
    assert sim.shape == (1, 2, 2, 3)
    torch.testing.assert_close(sim[0, 1, 0, 2], torch.tensor(13 / (10**0.5 * 17**0.5), dtype=torch.float64))


def test_reference_backward_formula_matches_autograd():
    feats, base, positions, alpha = make_inputs(3, 4, 5, 3, 4, 8, dtype=torch.float64)
    x, a = feats.clone().requires_grad_(), alpha.double().requires_grad_()
    fused, ref_idx = L.lfm_fuse_reference(x, base, positions, a)
    grad = torch.randn_like(fused)
    fused.backward(grad)
    gx, ga = L.lfm_apply_backward_reference(grad, feats, base, positions, ref_idx, alpha.double())
    torch.testing.assert_close(gx, x.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(ga, a.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_lfm_gradcheck_float64(name):
    if backends.why_unavailable("lfm_fuse", name, torch.device("cpu"), torch.float64):
        pytest.skip(backends.why_unavailable("lfm_fuse", name, torch.device("cpu"), torch.float64))
    feats, base, positions, alpha = make_inputs(2, 3, 4, 3, 3, 5, dtype=torch.float64)
    alpha = alpha.double().requires_grad_()
    feats.requires_grad_()
    assert torch.autograd.gradcheck(lambda f, a: lfm_fuse(f, base, positions, a, backend=name)[0], (feats, alpha))
    _, ref_idx = lfm_fuse(feats, base, positions, alpha, backend=name)
    x = torch.randn(2, 3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: lfm_apply(x, base, positions, ref_idx, a, backend=name), (x, alpha))


# ---------------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, torch.export


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_lfm_opcheck(name):
    if backends.why_unavailable("lfm_fuse", name, torch.device("cpu")):
        pytest.skip(backends.why_unavailable("lfm_fuse", name, torch.device("cpu")))
    feats, base, positions, alpha = make_inputs(2, 3, 4, 3, 3, 5)
    feats.requires_grad_()
    torch.library.opcheck(torch.ops.fsgan_fast.lfm_fuse, (feats, base, positions, alpha, name))
    _, ref_idx = lfm_fuse(feats, base, positions, alpha, backend=name)
    torch.library.opcheck(torch.ops.fsgan_fast.lfm_apply, (feats, base, positions, ref_idx, alpha, name))
    grad = torch.randn(2, 4, 3, 3)
    torch.library.opcheck(torch.ops.fsgan_fast.lfm_apply_backward, (grad, feats.detach(), base, positions, ref_idx, alpha, name))


def test_lfm_fuse_under_torch_compile_fullgraph():
    feats, base, positions, alpha = make_inputs(2, 3, 8, 4, 4, 8)

    def step(f, b, p, a):
        fused, ref_idx = lfm_fuse(f, b, p, a, check_indices=False)
        return (fused * 2).sum(), ref_idx

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = feats.clone().requires_grad_()
    loss, ref_idx = compiled(x, base, positions, alpha)
    loss.backward()
    x_ref = feats.clone().requires_grad_()
    loss_ref, ref_idx_ref = step(x_ref, base, positions, alpha)
    loss_ref.backward()
    assert torch.equal(ref_idx, ref_idx_ref)
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_lfm_fuse_torch_export():
    feats, base, positions, alpha = make_inputs(2, 3, 8, 4, 4, 8)

    class Fuse(torch.nn.Module):
        def forward(self, f, b, p, a):
            return lfm_fuse(f, b, p, a, check_indices=False, backend="reference")

    program = torch.export.export(Fuse(), (feats, base, positions, alpha))
    got = program.module()(feats, base, positions, alpha)
    want = L.lfm_fuse_reference(feats, base, positions, alpha)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0])


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error before any kernel runs, on every backend


def _bad_cases():
    def mut(fn):
        return fn

    return [
        ("rank", mut(lambda f, b, p, a: (f[0], b, p, a)), ValueError, "5-D"),
        ("K<2", mut(lambda f, b, p, a: (f[:, :1], b, p, a[:, :1])), ValueError, "K >= 2"),
        ("float positions", mut(lambda f, b, p, a: (f, b, p.float(), a)), TypeError, "positions must be an integer"),
        ("int feats", mut(lambda f, b, p, a: (f.long(), b, p, a)), TypeError, "feats must be a floating"),
        ("base shape", mut(lambda f, b, p, a: (f, b[:1], p, a)), ValueError, r"base must have shape \[2\]"),
        ("alpha shape", mut(lambda f, b, p, a: (f, b, p, a[:, :2])), ValueError, r"alpha must have shape \[2, 3\]"),
        ("positions rows", mut(lambda f, b, p, a: (f, b, p[:1], a)), ValueError, r"positions must have shape \[B=2"),
        ("n > P", mut(lambda f, b, p, a: (f, b, torch.arange(17, device=p.device).repeat(2, 1), a)), ValueError, "H\\*W=16"),
        ("base range", mut(lambda f, b, p, a: (f, b + 3, p, a)), ValueError, r"base must lie in \[0, K=3\)"),
        ("positions range", mut(lambda f, b, p, a: (f, b, p + 16, a)), ValueError, r"positions must lie in \[0, H\*W=16\)"),
        ("negative position", mut(lambda f, b, p, a: (f, b, p - 100, a)), ValueError, "positions must lie in"),
        ("repeated", mut(lambda f, b, p, a: (f, b, torch.cat([p[:, :1], p[:, :1]], 1), a)), ValueError, "distinct"),
        ("not a tensor", mut(lambda f, b, p, a: (f, [0, 1], p, a)), TypeError, "base must be a torch.Tensor"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_lfm_fuse_bad_input(backend, case):
    name, device = backend
    _, mutate, exc, pattern = case
    args = mutate(*make_inputs(2, 3, 4, 4, 4, 6, device=device))
    with pytest.raises(exc, match=pattern):
        lfm_fuse(*args, backend=name)


def test_lfm_apply_bad_ref_idx():
    feats, base, positions, alpha = make_inputs(2, 3, 4, 4, 4, 6)
    with pytest.raises(ValueError, match=re.escape("ref_idx must have shape [2, 2, 6]")):
        lfm_apply(feats, base, positions, torch.zeros(2, 3, 6, dtype=torch.long), alpha)
    with pytest.raises(ValueError, match="ref_idx must lie in"):
        lfm_apply(feats, base, positions, torch.full((2, 2, 6), 16), alpha)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_lfm_fuse_device_mismatch():
    feats, base, positions, alpha = make_inputs(2, 3, 4, 4, 4, 6, device="cuda")
    with pytest.raises(ValueError, match="positions is on cpu but feats is on cuda"):
        lfm_fuse(feats, base, positions.cpu(), alpha)


def test_out_of_range_indices_never_crash_unchecked(backend):
    """With checks off, bad indices must not read or write out of bounds (results are unspecified)."""
    name, device = backend
    if name == "reference":
        pytest.skip("the reference is the spec; out-of-range gathers raise there (or assert on a GPU)")
    feats, base, positions, alpha = make_inputs(2, 3, 4, 4, 4, 6, device=device)
    positions = positions.clone()
    positions[0, 0] = 1000
    base = base.clone()
    base[1] = 7
    fused, ref_idx = lfm_fuse(feats, base, positions, alpha, backend=name, check_indices=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert fused.shape == (2, 4, 4, 4)
