"""patch_grid (OP-GAN's cell grid: crop_resize over every cell, one launch) and sample_patch_pairs (the Siamese
network's pairs): cell geometry for sizes the grid does not divide, equality to slicing, the reference's values and
gradients on every backend, one kernel launch per pass, the pairs' scenarios, labels, indices and determinism, and
bad input."""

from __future__ import annotations

import collections
import importlib
import math
from fractions import Fraction

import pytest
import torch

from fsgan_fast.ops import grid_boxes, patch_grid, sample_patch_pairs
from tests.ops import kit
from tests.ops.kit import assert_close

CR = importlib.import_module("fsgan_fast.ops.crop_resize")
PG = importlib.import_module("fsgan_fast.ops.patch_grid")
KERNELS = "fsgan_fast.kernels.crop_resize"

OP = "crop_resize"
TOL = {torch.float64: 1e-12, torch.float32: 4e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}


# ---------------------------------------------------------------------------------------------------
# Geometry


@pytest.mark.parametrize("n, grid", [(n, g) for n in (2, 3, 5, 7, 10, 11, 64, 85, 256, 257) for g in (2, 3, 4, 7)
                                     if n >= g])
def test_grid_edges_round_half_up(n, grid):
    want = [math.floor(Fraction(i * n, grid) + Fraction(1, 2)) for i in range(grid + 1)]
    assert PG.grid_edges(n, grid) == want
    assert want[0] == 0 and want[-1] == n and all(a < b for a, b in zip(want, want[1:]))


def test_grid_edges_halves_go_up_not_to_even():
    assert PG.grid_edges(5, 2) == [0, 3, 5]  # 2.5 -> 3 (Python's round gives 2)
    assert PG.grid_edges(3, 2) == [0, 2, 3]  # 1.5 -> 2


def test_grid_boxes_of_a_10x7_image():
    boxes = grid_boxes(10, 7, 3)
    rows, cols = [0, 3, 7, 10], [0, 2, 5, 7]
    want = torch.tensor([[rows[gy], cols[gx], rows[gy + 1], cols[gx + 1]] for gy in range(3) for gx in range(3)],
                        dtype=torch.float32)
    assert boxes.dtype == torch.float32 and torch.equal(boxes, want)
    assert grid_boxes(10, 7, 3, dtype=torch.float64).dtype == torch.float64


# ---------------------------------------------------------------------------------------------------
# patch_grid on every backend


def test_patch_grid_without_out_is_the_slices(backend):
    x = kit.randn((2, 3, 12, 9), kit.generator(0), torch.float32, backend.device)
    cells = backend.run(patch_grid, x, 3, op="crop_resize")
    assert cells.shape == (2, 9, 3, 4, 3)
    for k, (y0, x0, y1, x1) in enumerate(PG.grid_cells(12, 9, 3)):
        assert torch.equal(cells[:, k], x[:, :, y0:y1, x0:x1]), f"cell {k}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_patch_grid_cells_of_the_output_size_are_the_slices(backend, dtype):
    """10x7 with grid 3: cells are 3|4|3 rows by 2|3|2 columns; with out=(3, 2) the 3x2 cells are exact copies."""
    backend.require(dtype)
    x = kit.randn((2, 4, 10, 7), kit.generator(1), dtype, backend.device)
    cells = backend.run(patch_grid, x, 3, (3, 2), op="crop_resize")
    assert cells.shape == (2, 9, 4, 3, 2)
    exact = 0
    for k, (y0, x0, y1, x1) in enumerate(PG.grid_cells(10, 7, 3)):
        if (y1 - y0, x1 - x0) == (3, 2):
            assert torch.equal(cells[:, k], x[:, :, y0:y1, x0:x1]), f"cell {k}"
            exact += 1
    assert exact == 4  # the four corner cells


@pytest.mark.parametrize("shape, grid, out", [((2, 3, 10, 7), 3, (4, 3)), ((1, 2, 13, 11), 4, (2, 5)),
                                              ((3, 1, 9, 9), 2, (6, 6))], ids=["10x7-g3", "13x11-g4", "9x9-g2-up"])
def test_patch_grid_matches_reference(backend, shape, grid, out):
    x = kit.randn(shape, kit.generator(2), torch.float32, backend.device).requires_grad_()
    cells = backend.run(patch_grid, x, grid, out, op="crop_resize")
    B, C, H, W = shape
    assert cells.shape == (B, grid * grid, C, *out)
    xr = x.detach().double().cpu().requires_grad_()
    boxes = grid_boxes(H, W, grid, dtype=torch.float64).repeat(B, 1)
    index = torch.arange(B).repeat_interleave(grid * grid)
    want = CR.crop_resize_reference(xr, boxes, out, index).view(B, grid * grid, C, *out)
    assert_close(cells, want, TOL[torch.float32], "cells")
    grad = kit.randn(cells.shape, kit.generator(3), torch.float32, backend.device)
    (gx,) = torch.autograd.grad(cells, x, grad)
    (want_gx,) = torch.autograd.grad(want, xr, grad.double().cpu())
    fan_in = 4 * math.ceil(out[0] * grid / H + 1) * math.ceil(out[1] * grid / W + 1)
    assert_close(gx, want_gx, TOL[torch.float32] * fan_in, "grad x")


def test_patch_grid_samples_the_image_not_the_cut_out_cell():
    """Upsampling a cell reads its neighbours' border pixels (the image is sampled, as roi_align does), where
    F.interpolate of the sliced cell would repeat the cell's own edge; at the image's own edges both clamp."""
    x = kit.randn((1, 1, 6, 6), kit.generator(4))
    cells = patch_grid(x, 2, (5, 5), backend="reference")
    alone = torch.nn.functional.interpolate(x[:, :, :3, :3], size=(5, 5), mode="bilinear", align_corners=False)[0]
    assert_close(cells[0, 0, :, :2, :2], alone[:, :2, :2], 1e-12, "top-left corner")
    assert (cells[0, 0, :, -1, -1] - alone[:, -1, -1]).abs().max() > 1e-3


@pytest.fixture
def launches(monkeypatch):
    """Counts the kernel calls of the crop_resize ops ({op: calls}) and, for Triton, the kernel launches."""
    calls: collections.Counter = collections.Counter()
    common = importlib.import_module("fsgan_fast.ops._common")
    kernel = common.kernel

    def counting_kernel(op, backend, device):
        fn = kernel(op, backend, device)

        def call(*args):
            calls[op] += 1
            return fn(*args)

        return call

    monkeypatch.setattr(common, "kernel", counting_kernel)
    for name in ("crop_resize_reference", "crop_resize_backward_reference"):
        original = getattr(CR, name)

        def counting_reference(*args, _original=original, _op=name.replace("_reference", "")):
            calls[_op] += 1
            return _original(*args)

        monkeypatch.setattr(CR, name, counting_reference)
    try:
        kernels = importlib.import_module(KERNELS)
    except ImportError:
        kernels = None
    if kernels is not None and kit.CUDA is False:  # interpreted kernels launch as plain objects: wrap them
        for name in ("_crop_resize_fwd_kernel", "_crop_resize_bwd_kernel"):
            original = getattr(kernels, name)

            class Counted:
                def __init__(self, fn, key):
                    self.fn, self.key = fn, key

                def __getitem__(self, grid):
                    calls[self.key] += 1
                    return self.fn[grid]

            monkeypatch.setattr(kernels, name, Counted(original, name))
    return calls


def test_patch_grid_is_one_launch_forward_and_backward(backend, launches):
    x = kit.randn((3, 2, 10, 7), kit.generator(5), torch.float32, backend.device).requires_grad_()
    cells = backend.run(patch_grid, x, 3, (4, 3), op="crop_resize")
    assert launches["crop_resize"] == 1 and launches["crop_resize_backward"] == 0, dict(launches)
    cells.backward(torch.ones_like(cells))
    assert launches["crop_resize"] == 1 and launches["crop_resize_backward"] == 1, dict(launches)
    if backend.name == "triton" and not kit.CUDA:
        assert launches["_crop_resize_fwd_kernel"] == 1 and launches["_crop_resize_bwd_kernel"] == 1, dict(launches)


def test_patch_grid_under_torch_compile_fullgraph(backend):
    x = kit.randn((2, 3, 10, 7), kit.generator(6), torch.float32, backend.device)
    kit.assert_compiles(lambda t: patch_grid(t, 3, (4, 3), backend=backend.name), x.requires_grad_())


def test_patch_grid_gradcheck_float64(fp64_backend):
    x = kit.randn((2, 1, 5, 4), kit.generator(7), torch.float64, fp64_backend.device).requires_grad_()
    kit.gradcheck(lambda t: fp64_backend.run(patch_grid, t, 2, (3, 2), op="crop_resize"), x)


# ---------------------------------------------------------------------------------------------------
# sample_patch_pairs


def _decode(idx: torch.Tensor, batch: int, cells: int):
    """(domain 0 = source / 1 = translation, image, cell) of flat patch indices."""
    return idx // (batch * cells), (idx % (batch * cells)) // cells, idx % cells


@pytest.mark.parametrize("batch, grid, pairs", [(1, 2, 1), (3, 3, 4), (2, 4, 5)])
def test_sample_patch_pairs_scenarios_labels_and_indices(batch, grid, pairs):
    p = sample_patch_pairs(batch, grid, pairs, kit.generator(8))
    G = grid * grid
    N = 4 * pairs * batch
    assert len(p) == N
    for name in ("first", "second", "scenario", "label"):
        t = getattr(p, name)
        assert t.dtype == torch.int64 and t.shape == (N,), name
    assert p.same_cell.dtype == torch.bool and p.same_cell.shape == (N,)
    d1, b1, k1 = _decode(p.first, batch, G)
    d2, b2, k2 = _decode(p.second, batch, G)
    assert int(p.first.min()) >= 0 and int(torch.maximum(p.first, p.second).max()) < 2 * batch * G
    assert torch.equal(b1, b2), "a pair mixes images"
    # ordered by image, then scenario, then draw
    assert torch.equal(b1, torch.arange(batch).repeat_interleave(4 * pairs))
    assert torch.equal(p.scenario, torch.arange(4).repeat_interleave(pairs).repeat(batch))
    domains = {0: (0, 0), 1: (1, 1), 2: (0, 1), 3: (0, 1)}
    for s, (a, b) in domains.items():
        sel = p.scenario == s
        assert (d1[sel] == a).all() and (d2[sel] == b).all(), f"scenario {s} domains"
        assert (p.label[sel] == (0, 1, 2, 2)[s]).all(), f"scenario {s} label"
        same = k1[sel] == k2[sel]
        assert same.all() if s == 2 else not same.any(), f"scenario {s} cells"
    assert torch.equal(p.same_cell, k1 == k2) and torch.equal(p.same_cell, p.scenario == 2)


def test_sample_patch_pairs_is_deterministic_for_a_seed():
    a = sample_patch_pairs(4, 3, 8, kit.generator(9))
    b = sample_patch_pairs(4, 3, 8, kit.generator(9))
    c = sample_patch_pairs(4, 3, 8, kit.generator(10))
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("first", "second", "scenario", "label", "same_cell"))
    assert not torch.equal(a.first, c.first)


def test_sample_patch_pairs_cells_are_uniform():
    """First cells uniform over the G cells; the other cell uniform over the G-1 others (every ordered pair)."""
    p = sample_patch_pairs(1, 2, 3000, kit.generator(11))
    _, _, k1 = _decode(p.first, 1, 4)
    _, _, k2 = _decode(p.second, 1, 4)
    counts = collections.Counter(zip(k1[p.scenario == 0].tolist(), k2[p.scenario == 0].tolist()))
    assert len(counts) == 12 and all(150 <= c <= 350 for c in counts.values()), counts  # 250 each expected
    first = collections.Counter(k1.tolist())
    assert len(first) == 4 and all(2500 <= c <= 3500 for c in first.values()), first


def test_sample_patch_pairs_moves_to_device():
    p = sample_patch_pairs(2, 3, 1, kit.generator(12), device="meta")
    assert p.first.device.type == "meta" and p.same_cell.device.type == "meta"


def test_pairs_index_patch_grid_outputs():
    """End to end: with the translation equal to the source, C1 pairs hold identical patches, the others not."""
    x = kit.randn((2, 3, 12, 12), kit.generator(13))
    src = patch_grid(x, 3, backend="reference")
    flat = torch.cat([src.flatten(0, 1), src.flatten(0, 1)])
    p = sample_patch_pairs(2, 3, 6, kit.generator(14))
    same = (flat[p.first] == flat[p.second]).flatten(1).all(1)
    assert torch.equal(same, p.same_cell)


BAD_PAIRS = [
    (dict(batch=0), ValueError, "batch must be >= 1"),
    (dict(grid=1), ValueError, "grid must be >= 2"),
    (dict(pairs=0), ValueError, "pairs must be >= 1"),
    (dict(batch=2.0), TypeError, "batch must be an int"),
    (dict(grid=True), TypeError, "grid must be an int"),
    (dict(generator=0), TypeError, "generator must be a torch.Generator"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_PAIRS, ids=[m for _, _, m in BAD_PAIRS])
def test_sample_patch_pairs_bad_input(kwargs, exc, match):
    args = dict(batch=2, grid=3, pairs=2, generator=kit.generator(0)) | kwargs
    with pytest.raises(exc, match=match):
        sample_patch_pairs(**args)


# ---------------------------------------------------------------------------------------------------
# patch_grid bad input

BAD = kit.bad_inputs(
    ("x rank", lambda x, g, o: (x[0], g, o), ValueError, r"x must be 4-D"),
    ("x int", lambda x, g, o: (x.long(), g, o), TypeError, r"x must be a floating tensor"),
    ("x empty", lambda x, g, o: (x[:0], g, o), ValueError, r"x must have no empty dimension"),
    ("grid zero", lambda x, g, o: (x, 0, o), ValueError, r"grid must be >= 1"),
    ("grid float", lambda x, g, o: (x, 3.0, o), TypeError, r"grid must be an int"),
    ("grid too big", lambda x, g, o: (x, 8, o), ValueError, r"W=7 is smaller than grid=8"),
    ("uneven without out", lambda x, g, o: (x, g, None), ValueError,
     r"x's 10x7 cells are uneven with grid=3 .*pass out=\(h, w\)"),
    ("out zero", lambda x, g, o: (x, g, (0, 2)), ValueError, r"out must be two ints >= 1"),
    ("out one int", lambda x, g, o: (x, g, 3), ValueError, r"out must be two ints >= 1"),
)


@pytest.mark.parametrize("case", BAD)
def test_patch_grid_bad_input(backend, case):
    x = kit.randn((2, 3, 10, 7), kit.generator(15), torch.float32, backend.device)
    kit.expect_bad_input(backend, patch_grid, (x, 3, (3, 2)), case, op="crop_resize")
