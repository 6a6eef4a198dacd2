"""cosine_topk: every backend against the float64 reference, over the prototypes and the pixels, forward and backward.

Random inputs rarely tie exactly, but the backends' float32 cosines differ from the float64 ones by a few ulp, so
the selection is checked as the lfm tests check their argmax: each chosen entry's float64 cosine must be within
COS_TOL of the true rank-j cosine, the indices distinct, and the scores the chosen pairs' cosines. Exact ties are
built from small integers, whose cosines every backend computes exactly.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from fsgan_fast.ops import cosine_topk
from tests.ops import kit
from tests.ops.kit import TOL, assert_close

CT = importlib.import_module("fsgan_fast.ops.cosine_topk")  # the module: the package's `cosine_topk` is the function

OP = "cosine_topk"

# a chosen entry may differ from the float64 rank-j cosine only by this much (the selection runs in float32 on the
# inputs as given, whatever their dtype)
COS_TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}

# (B, C, H, W, M): minimum, primes, one past the kernels' 16/32/64 blocks in C, M and H*W, a single row, M > 64
SHAPES = kit.shapes(
    (1, 1, 1, 1, 1),
    (2, 5, 3, 7, 4),
    (1, 33, 5, 13, 17),
    (2, 17, 9, 8, 3),
    (1, 3, 1, 11, 65),
)
KS = {"prototypes": (1, 3), "pixels": (1, 3)}


def make_inputs(B, C, H, W, M, dtype=torch.float32, device="cpu", seed=0):
    """(feats [B,C,H,W] dtype, prototypes [M,C] dtype): standard normal, so cosines spread over (-1, 1)."""
    gen = kit.generator(seed)
    return kit.randn((B, C, H, W), gen, dtype, device), kit.randn((M, C), gen, dtype, device)


def chosen_cosines(feats, prototypes, idx, over):
    """float64 cosines of the pairs ``idx`` names (differentiable w.r.t. float64 feats and prototypes)."""
    sim = CT.cosine_similarity_reference(feats, prototypes)  # [B, M, P]
    B = sim.shape[0]
    if over == "pixels":
        return sim.gather(2, idx)
    return sim.gather(1, idx.reshape(B, idx.shape[1], sim.shape[2])).reshape(idx.shape)


def assert_valid_topk(feats, prototypes, idx, score, k, over, dtype, what="topk"):
    """The backend's (idx, score) is a top-k of the float64 cosines: shapes, distinct indices, each entry within
    COS_TOL of the true rank-j cosine, and score the chosen pair's cosine (within the score dtype's TOL)."""
    f64, q64 = feats.detach().double().cpu(), prototypes.detach().double().cpu()
    B, C, H, W = feats.shape
    M = prototypes.shape[0]
    shape = (B, M, k) if over == "pixels" else (B, k, H, W)
    assert idx.dtype == torch.int64 and tuple(idx.shape) == shape, f"{what}: idx {idx.dtype} {list(idx.shape)}"
    assert score.dtype == feats.dtype and tuple(score.shape) == shape, f"{what}: score {score.dtype}"
    idx, score = idx.cpu(), score.cpu()
    n = H * W if over == "pixels" else M
    assert bool(((idx >= 0) & (idx < n)).all()), f"{what}: index out of [0, {n})"
    dim = 2 if over == "pixels" else 1
    srt = idx.sort(dim=dim).values
    assert bool((srt.narrow(dim, 1, k - 1) != srt.narrow(dim, 0, k - 1)).all()), f"{what}: repeated index in a row"
    got = chosen_cosines(f64, q64, idx, over)
    want = CT.topk_reference(f64, q64, k, over == "pixels")[1]
    gap = (want - got).abs().max().item()
    assert gap <= COS_TOL[dtype], f"{what}: a chosen entry is {gap:.2e} off the rank-j cosine"
    assert_close(score, got, TOL[dtype], f"{what} score")


def _leaf(t, dtype=None):
    return t.detach().cpu().to(dtype or t.dtype).requires_grad_()


# ---------------------------------------------------------------------------------------------------
# Forward and backward against the reference


@pytest.mark.parametrize("over", ["prototypes", "pixels"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", kit.FLOAT_DTYPES, ids=str)
def test_cosine_topk_matches_reference(backend, shape, dtype, over):
    backend.require(dtype)
    B, C, H, W, M = shape
    feats, protos = make_inputs(*shape, dtype=dtype, device=backend.device)
    n = M if over == "prototypes" else H * W
    for k in sorted({min(k, n) for k in KS[over]}):
        f, q = feats.clone().requires_grad_(), protos.clone().requires_grad_()
        idx, score = backend.run(cosine_topk, f, q, k, over=over)
        assert_valid_topk(f, q, idx, score, k, over, dtype, f"k={k}")
        # gradients against autograd of the float64 cosines of the same pairs
        grad = kit.randn(score.shape, kit.generator(k))
        score.backward(grad.to(backend.device, dtype))
        f64, q64 = _leaf(f, torch.float64), _leaf(q, torch.float64)
        expected = chosen_cosines(f64, q64, idx.cpu(), over)
        expected.backward(grad)
        assert f.grad.dtype == dtype and q.grad.dtype == dtype
        # 1/|f| and 1/|q| scale the gradients: relative tolerance too (16-bit rounding of large entries)
        rtol = TOL[dtype] if dtype in kit.LOW_PRECISION else 0.0
        assert_close(f.grad, f64.grad, TOL[dtype] * max(1.0, math.sqrt(k)), f"k={k} grad feats", rtol=rtol)
        assert_close(q.grad, q64.grad, TOL[dtype] * max(1.0, math.sqrt(B * n * k)), f"k={k} grad prototypes",
                     rtol=rtol)
        if dtype in kit.LOW_PRECISION:  # within 2x the error of the reference run in the same precision
            f16, q16 = _leaf(f), _leaf(q)
            _, same = CT.cosine_topk_reference(f16, q16, k, over=over)
            kit.assert_close_lowp(score, chosen_cosines(f64, q64, idx.cpu(), over), same, f"k={k} score",
                                  floor=TOL[dtype] / 8)


def test_cosine_topk_prototypes_in_another_dtype(backend):
    """16-bit features with float32 prototypes (AMP): the prototypes are read as float32 and get a float32 grad."""
    feats, protos = make_inputs(2, 6, 3, 5, 7, dtype=torch.float32, device=backend.device)
    for dtype in (torch.float16, torch.float64):
        if backend.unavailable(dtype):
            continue
        f, q = feats.to(dtype), protos.clone().requires_grad_()
        idx, score = backend.run(cosine_topk, f, q, 2)
        assert score.dtype == dtype
        assert_valid_topk(f, q, idx, score, 2, "prototypes", dtype)
        score.float().sum().backward()
        assert q.grad.dtype == torch.float32 and bool(q.grad.isfinite().all())


def test_cosine_topk_noncontiguous_features(backend):
    feats, protos = make_inputs(2, 6, 5, 4, 9, device=backend.device)
    strided = feats.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)  # C and H swapped in memory
    assert not strided.is_contiguous()
    for over in ("prototypes", "pixels"):
        idx, score = backend.run(cosine_topk, strided, protos.t().contiguous().t(), 3, over=over)
        assert_valid_topk(feats, protos, idx, score, 3, over, torch.float32, over)


# Hand-built cosines: C=4, prototypes e1, e2, e1 (a copy), 2*e1 (same direction), e3; a pixel along e1+e2 ties the
# first four exactly, a pixel along e3 matches only the last, a zero pixel ties everything at 0.
TIE_PROTOTYPES = [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0]]


def _tie_inputs(device):
    q = torch.tensor(TIE_PROTOTYPES, dtype=torch.float32, device=device)
    pixels = torch.tensor([[3, 3, 0, 0], [0, 0, 5, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    return pixels.t().reshape(1, 4, 2, 2).contiguous().to(device), q


def test_cosine_topk_ties_go_to_lower_prototype(backend):
    feats, q = _tie_inputs(backend.device)
    idx, score = backend.run(cosine_topk, feats, q, 5)
    s2 = 1 / math.sqrt(2)
    expected_idx = torch.tensor([[1, 2, 3, 4, 0], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [1, 3, 4, 0, 2]])
    expected_score = torch.tensor([[s2, s2, s2, s2, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    assert_close(idx.view(5, 4).t(), expected_idx, 0, "idx")
    assert_close(score.view(5, 4).t(), expected_score, 1e-6, "score")


def test_cosine_topk_ties_go_to_lower_pixel(backend):
    feats, q = _tie_inputs(backend.device)
    feats = torch.cat([feats, feats], dim=3)  # every pixel twice: [1, 4, 2, 4]
    idx, score = backend.run(cosine_topk, feats, q, 4, over="pixels")
    # pixel order (y*W+x): 0 e1+e2, 1 e3, 2 e1+e2, 3 e3, 4 zero, 5 e1, 6 zero, 7 e1
    expected_idx = torch.tensor([[1, 3, 0, 2], [5, 7, 0, 2], [0, 2, 1, 3], [5, 7, 0, 2], [5, 7, 0, 2]])
    assert_close(idx[0], expected_idx, 0, "idx")
    assert_close(score[0, 0], torch.tensor([1.0, 1.0, 0.0, 0.0]), 1e-6, "score of e3")


def test_cosine_topk_threshold_marks_minus_one(backend):
    """score <= threshold gives idx -1 and keeps the score; a cosine of exactly 0.5 is dropped by 0.5 (SMIS keeps
    cos > 0.5)."""
    q = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]], device=backend.device)
    feats = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]).t().reshape(1, 4, 1, 2).contiguous().to(backend.device)
    idx, score = backend.run(cosine_topk, feats, q, 2, 0.5)
    # pixel 0: q1 (1.0), q0 (0.5 -> dropped); pixel 1: q0 (0.5 -> dropped), q1 (0.0 -> dropped)
    assert_close(idx[0, :, 0], torch.tensor([[1, -1], [-1, -1]]), 0, "idx")
    assert_close(score[0, :, 0], torch.tensor([[1.0, 0.5], [0.5, 0.0]]), 1e-6, "score")
    # random inputs, both modes: exactly the raw indices with -1 where score <= threshold
    feats, protos = make_inputs(2, 7, 4, 5, 6, device=backend.device, seed=3)
    for over in ("prototypes", "pixels"):
        raw, raw_score = backend.run(cosine_topk, feats, protos, 3, over=over)
        threshold = raw_score.median().item()  # one entry exactly at the threshold: dropped
        idx, score = backend.run(cosine_topk, feats, protos, 3, threshold, over=over)
        assert_close(score, raw_score, 0, f"{over} score")
        assert_close(idx, torch.where(raw_score <= threshold, -1, raw), 0, f"{over} idx")
        assert bool((idx == -1).any() and (idx >= 0).any()), "test setup: the threshold should split the entries"


def test_cosine_topk_threshold_keeps_gradient(backend):
    """A thresholded entry's score is still the cosine of its pair: its gradient flows."""
    feats, protos = make_inputs(1, 5, 3, 3, 4, device=backend.device, seed=4)
    f1, f2 = feats.clone().requires_grad_(), feats.clone().requires_grad_()
    backend.run(cosine_topk, f1, protos, 2)[1].sum().backward()
    backend.run(cosine_topk, f2, protos, 2, 2.0)[1].sum().backward()  # every entry thresholded
    assert_close(f2.grad, f1.grad, 0, "grad feats")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
def test_cosine_topk_nan_ranks_first(backend):
    """A NaN or inf feature gives NaN cosines, which rank first (lower index first), as the reference's sort."""
    feats, protos = make_inputs(2, 4, 3, 3, 5, seed=6)
    feats[0, 2, 1, 1] = float("nan")
    feats[1, 0, 0, 2] = float("inf")
    feats[1, 1, 2, 0] = float("nan")
    for over in ("prototypes", "pixels"):
        for k in (1, 3):  # the reference's argmax (k=1) and its sort
            idx, score = backend.run(cosine_topk, *backend.to(feats, protos), k, over=over)
            exp_idx, exp_score = CT.cosine_topk_reference(feats.double(), protos.double(), k, over=over)
            assert_close(idx, exp_idx, 0, f"{over} k={k} idx")
            assert_close(score, exp_score, TOL[torch.float32], f"{over} k={k} score")
    assert (exp_idx[1, :, :2] == torch.tensor([2, 6])).all() and exp_score[1, :, :2].isnan().all()  # setup


def test_cosine_topk_zero_vectors_are_nan_free(backend):
    feats, protos = make_inputs(1, 4, 2, 3, 3, device=backend.device, seed=7)
    feats[:, :, 0, 1] = 0
    protos[1] = 0
    f, q = feats.requires_grad_(), protos.requires_grad_()
    for over in ("prototypes", "pixels"):
        idx, score = backend.run(cosine_topk, f, q, 3, over=over)
        assert bool(score.isfinite().all())
        score.sum().backward()
    assert bool(f.grad.isfinite().all() and q.grad.isfinite().all())


def test_cosine_topk_empty_batch(backend):
    feats, protos = make_inputs(0, 4, 3, 3, 5, device=backend.device)
    idx, score = backend.run(cosine_topk, feats, protos, 2)
    assert idx.shape == (0, 2, 3, 3) and score.shape == (0, 2, 3, 3)
    idx, score = backend.run(cosine_topk, feats, protos, 2, over="pixels")
    assert idx.shape == (0, 5, 2)


@pytest.mark.slow
def test_cosine_topk_large_maps(backend):
    """Many pixel blocks and splits over the pixels, k = 16, M past one block of prototypes."""
    feats, protos = make_inputs(2, 40, 23, 29, 70, device=backend.device, seed=9)
    for over, k in (("prototypes", 16), ("pixels", 16), ("pixels", 3)):
        idx, score = backend.run(cosine_topk, feats, protos, k, over=over)
        assert_valid_topk(feats, protos, idx, score, k, over, torch.float32, over)


# ---------------------------------------------------------------------------------------------------
# The reference itself


def test_reference_hand_worked_example():
    """Two pixels, three prototypes, C=2, worked by hand."""
    feats = torch.tensor([[[[3.0, 0.0]], [[4.0, -2.0]]]], dtype=torch.float64)  # pixels (3,4) and (0,-2)
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    idx, score = CT.cosine_topk_reference(feats, protos, 2)
    # (3,4)/5 vs e1: 0.6, e2: 0.8, (1,1)/sqrt2: 7/(5 sqrt2) = 0.98995 -> [2, 1]; (0,-1): 0, -1, -0.7071 -> [0, 2]
    assert idx[0, :, 0].tolist() == [[2, 0], [1, 2]]
    assert_close(score[0, :, 0], torch.tensor([[7 / (5 * math.sqrt(2)), 0.0], [0.8, -1 / math.sqrt(2)]],
                                              dtype=torch.float64), 1e-12, "score")
    idx, score = CT.cosine_topk_reference(feats, protos, 1, over="pixels")
    assert idx[0, :, 0].tolist() == [0, 0, 0] and score[0, 0, 0] == 0.6  # pixel 0 wins for every prototype


def test_reference_backward_formula_matches_autograd():
    feats, protos = make_inputs(2, 5, 3, 4, 6, dtype=torch.float64, seed=2)
    feats[0, :, 1, 1] = 0  # a zero vector: the norm's clamp
    for over, k in (("prototypes", 3), ("pixels", 2)):
        f, q = feats.clone().requires_grad_(), protos.clone().requires_grad_()
        idx, score = CT.topk_reference(f, q, k, over == "pixels")
        grad = kit.randn(score.shape, kit.generator(1))
        score.backward(grad)
        gf, gq = CT.cosine_topk_backward_reference(grad, feats, protos, idx, over == "pixels")
        assert_close(gf, f.grad, 1e-12, f"{over} grad feats")
        assert_close(gq, q.grad, 1e-12, f"{over} grad prototypes")


def test_cosine_topk_gradcheck_float64(fp64_backend):
    feats, protos = make_inputs(2, 4, 2, 3, 5, dtype=torch.float64, seed=1)
    f, q = feats.requires_grad_(), protos.requires_grad_()
    for over in ("prototypes", "pixels"):
        kit.gradcheck(lambda f, q: fp64_backend.run(cosine_topk, f, q, 2, 0.3, over=over)[1], f, q)


# ---------------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, torch.export


def test_cosine_topk_opcheck(backend):
    feats, protos = make_inputs(2, 4, 3, 3, 5, device=backend.device)
    feats.requires_grad_()
    protos.requires_grad_()
    # the interpreter takes seconds per opcheck: Triton checks one mode (registration is shared, the kernels are
    # tested above)
    for over_pixels in (False,) if backend.name == "triton" else (False, True):
        kit.opcheck("cosine_topk", (feats, protos, 2, over_pixels, backend.name))


def test_cosine_topk_under_torch_compile_fullgraph():
    feats, protos = make_inputs(2, 6, 4, 4, 5)
    kit.assert_compiles(lambda f, q: cosine_topk(f, q, 2, 0.2), feats.requires_grad_(), protos.requires_grad_())
    kit.assert_compiles(lambda f, q: cosine_topk(f, q, 3, over="pixels"), feats, protos)


def test_cosine_topk_torch_export():
    feats, protos = make_inputs(2, 6, 4, 4, 5)
    kit.assert_exports(lambda f, q: cosine_topk(f, q, 2, 0.2, backend="reference"), (feats, protos),
                       CT.cosine_topk_reference(feats, protos, 2, 0.2))


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, before any kernel runs, on every backend

BAD = kit.bad_inputs(
    ("feats rank", lambda f, q, k: (f[0], q, k), ValueError, r"feats must be 4-D"),
    ("prototypes rank", lambda f, q, k: (f, q[None], k), ValueError, r"prototypes must be 2-D"),
    ("channels", lambda f, q, k: (f, q[:, :3], k), ValueError, r"prototypes must have feats' C=4 channels"),
    ("no prototypes", lambda f, q, k: (f, q[:0], k), ValueError, r"prototypes must hold at least one"),
    ("empty feats", lambda f, q, k: (f[:, :, :0], q, k), ValueError, r"feats must have C, H, W >= 1"),
    ("int feats", lambda f, q, k: (f.long(), q, k), TypeError, r"feats must be a floating"),
    ("int prototypes", lambda f, q, k: (f, q.long(), k), TypeError, r"prototypes must be a floating"),
    ("not a tensor", lambda f, q, k: (f, q.tolist(), k), TypeError, r"prototypes must be a torch.Tensor"),
    ("k zero", lambda f, q, k: (f, q, 0), ValueError, r"k must lie in \[1, 5\]"),
    ("k > M", lambda f, q, k: (f, q, 6), ValueError, r"k must lie in \[1, 5\].*M=5"),
    ("k > 16", lambda f, q, k: (f, torch.cat([q] * 4), 17), ValueError, r"k must lie in \[1, 16\]"),
    ("k float", lambda f, q, k: (f, q, 2.0), TypeError, r"k must be an int"),
    ("k bool", lambda f, q, k: (f, q, True), TypeError, r"k must be an int"),
    ("prototypes device", lambda f, q, k: (f, q.cpu(), k), ValueError, r"prototypes is on cpu but feats is on cuda",
     ("cuda",)),
)


@pytest.mark.parametrize("case", BAD)
def test_cosine_topk_bad_input(backend, case):
    kit.expect_bad_input(backend, cosine_topk, make_inputs(2, 4, 3, 3, 5, device=backend.device) + (2,), case)


BAD_OPTIONS = kit.bad_inputs(
    ("k > H*W", lambda f, q, k: (f, q, 10), ValueError, r"k must lie in \[1, 9\].*H\*W=9"),
)


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_cosine_topk_pixels_bad_k(backend, case):
    kit.expect_bad_input(backend, cosine_topk, make_inputs(2, 4, 3, 3, 5, device=backend.device) + (2,), case,
                         over="pixels")


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(over="classes"), ValueError, r"over must be one of"),
    (dict(threshold="0.5"), TypeError, r"threshold must be None or a real number"),
    (dict(threshold=float("nan")), ValueError, r"threshold must not be NaN"),
])
def test_cosine_topk_bad_options(kwargs, exc, match):
    feats, protos = make_inputs(1, 4, 3, 3, 5)
    with pytest.raises(exc, match=match):
        cosine_topk(feats, protos, 2, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Cases for the build tests: tests/test_cmake_build.py (the CMake library's CPU kernels) and
# tests/ops/test_triton_compile.py (every Triton variant the launcher picks, compiled for real GPUs)


@kit.native_cases("cosine_topk")
def cosine_topk_native_cases():
    feats, protos = make_inputs(2, 7, 5, 6, 9, dtype=torch.float64, seed=11)
    cases = []
    for k, over_pixels in ((1, False), (4, False), (3, True), (16, True)):
        expected = CT.topk_reference(feats, protos, k, over_pixels)
        cases.append(kit.NativeCase("_cosine_topk_cpu", (feats, protos, k, over_pixels), expected))
    return cases


# (B, C, H, W, M, k): SMIS's 64x64 feature grid with dense labels (19 classes, k=1) and sparse ones (3 per stored
# vector), the benchmark's 8x512x64x64 vs 20, k=16, many prototypes, and a tiny odd map
AOT_SHAPES = [
    (1, 512, 64, 64, 19, 1),
    (8, 512, 64, 64, 20, 1),
    (1, 512, 64, 64, 200, 3),
    (2, 256, 32, 32, 40, 16),
    (1, 3, 5, 7, 2, 2),
]


@kit.aot_variants("cosine_topk", AOT_SHAPES)
def cosine_topk_aot_variants(shape, dtype):
    from fsgan_fast.kernels import cosine_topk as kernels

    B, C, H, W, M, k = shape
    t = kit.TRITON_TYPES[dtype]
    kp = kernels.topk_width(k)
    cfg = dict(kernels._prototypes_config(C, M, dtype))
    warps = cfg.pop("num_warps")
    signature = dict(f_ptr=f"*{t}", q_ptr="*fp32", idx_ptr="*i64", score_ptr=f"*{t}", C="i32", P="i32", M="i32",
                     k="i32", num_p_blocks="i32")
    yield kit.AotVariant("cosine_topk", kernels._topk_prototypes_kernel, signature, dict(KP=kp, **cfg), warps)
    cfg = dict(kernels._pixels_config(B, C, H * W, M, k))
    for key in ("splits", "per_split"):
        cfg.pop(key)
    warps = cfg.pop("num_warps")
    merge = dict(KP=cfg["KP"], MERGE_M=cfg.pop("MERGE_M"), MERGE_W=cfg.pop("MERGE_W"))
    signature = dict(f_ptr=f"*{t}", q_ptr="*fp32", ws_v_ptr="*fp32", ws_i_ptr="*i32", C="i32", P="i32", M="i32",
                     k="i32", num_m_blocks="i32", splits="i32", per_split="i32")
    yield kit.AotVariant("cosine_topk", kernels._topk_pixels_kernel, signature, dict(DOT_PRECISION="tf32x3", **cfg),
                         warps)
    signature = dict(ws_v_ptr="*fp32", ws_i_ptr="*i32", idx_ptr="*i64", score_ptr=f"*{t}", num_rows="i32", k="i32",
                     width="i32")
    yield kit.AotVariant("cosine_topk", kernels._topk_merge_kernel, signature, merge, 4)
