"""patch_grid (OP-GAN's 3x3 cell grid) and crop_resize (FastGAN's part crops) per backend, against the eager
reference and against a Python loop of ``F.interpolate`` over the cells (what OP-GAN-style code does: slice each cell,
resize it, stack).

Groups ``patch_grid/<pass>/<shape>`` and ``crop_resize/<pass>/<shape>``, pass ``fwd`` or ``fwdbwd``. On a GPU the
shapes are OP-GAN's: B=8 images of 256x256 with C=3 (images) or C=64 (features), cells (85|86|85 px) resized to
86x86; crop_resize takes one part (a quadrant, jittered) per image to the decoder's 128x128: at 256 px a copy, at
1024 px a 4x reduction. On the CPU a small version of each,
so that CI runs every case once quickly. Variants: ``loop`` (the F.interpolate loop), ``reference``, ``compiled``
(torch.compile of the reference, GPU only), ``triton`` (GPU only), ``cuda``, ``cpu``.

Each case checks its result once before timing: the op's backends (and their gradients) against the float64
reference; the loop against the reference away from the cell borders (it resizes each cut-out cell, so its border
rows repeat the cell's edge where the op reads the neighbouring cell's pixels: see patch_grid's docstring).
``bytes`` is what must move at least (read x once and write the cells; fwdbwd adds reading the cells' gradient and
writing x's), the basis of the HBM floor.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

import fsgan_fast
from benches.conftest import DEVICE, skip_reason, timed
from fsgan_fast.ops import crop_resize, patch_grid
from tests.ops import kit

CR = importlib.import_module("fsgan_fast.ops.crop_resize")
PG = importlib.import_module("fsgan_fast.ops.patch_grid")

ON_GPU = DEVICE.type == "cuda"
# name -> (B, C, H, W, grid, out)
if ON_GPU:
    GRID_SHAPES = {
        "b8c3s256g3": (8, 3, 256, 256, 3, (86, 86)),
        "b8c64s256g3": (8, 64, 256, 256, 3, (86, 86)),
    }
    # name -> (B, C, H, W, part, out)
    CROP_SHAPES = {
        "b8c3s256p128": (8, 3, 256, 256, 128, (128, 128)),  # FastGAN at 256 px: the part keeps its size
        "b8c3s1024p512to128": (8, 3, 1024, 1024, 512, (128, 128)),  # at 1024 px: the part shrinks to the decoder's
    }
else:  # the same kind of case, small enough for a 2-core CI machine
    GRID_SHAPES = {"b2c3s64g3": (2, 3, 64, 64, 3, (22, 22))}
    CROP_SHAPES = {"b2c3s64p32to16": (2, 3, 64, 64, 32, (16, 16))}
VARIANTS = ["loop", "reference", "compiled", "triton", "cuda", "cpu"]
OPS = ("crop_resize", "crop_resize_backward")  # the forward resolves the backward too


def _check(got, want, what, rel=1e-5):
    """On the device: within a float32 accumulation error relative to the largest value."""
    scale = max(1.0, float(want.abs().max()))
    err = float((got.detach().double() - want.detach()).abs().max())
    assert err <= rel * scale, f"{what}: max |err| {err:.3e} > {rel * scale:.3e}"


def loop_patch_grid(x: torch.Tensor, grid: int, out) -> torch.Tensor:
    """The baseline: every cell sliced and resized by F.interpolate (bilinear, align_corners=False), then stacked."""
    cells = PG.grid_cells(x.shape[2], x.shape[3], grid)
    return torch.stack([F.interpolate(x[:, :, y0:y1, x0:x1], size=out, mode="bilinear", align_corners=False)
                        for y0, x0, y1, x1 in cells], 1)


def loop_crop_resize(x: torch.Tensor, boxes: list[tuple[int, int, int, int]], out) -> torch.Tensor:
    """The baseline: each image's (integer) box sliced and resized by F.interpolate, then concatenated."""
    return torch.cat([F.interpolate(x[b:b + 1, :, y0:y1, x0:x1], size=out, mode="bilinear", align_corners=False)
                      for b, (y0, x0, y1, x1) in enumerate(boxes)])


def _runner(variant: str, fn, reference, **kwargs):
    if variant == "reference":
        return reference
    if variant == "compiled":
        torch._dynamo.reset()
        return torch.compile(reference, dynamic=False)
    return lambda *a: fn(*a, backend=variant, **kwargs)


def _time(benchmark, variant, op, passes, shape, x, step, nbytes):
    timed(
        benchmark,
        step,
        inner=20 if ON_GPU else 1,
        rounds=30 if ON_GPU else 3,
        graph=variant != "compiled",
        extra={
            "op": op,
            "backend": variant,
            "pass": passes,
            "shape": shape,
            "dtype": "float32",
            "last_backend": fsgan_fast.last_backend("crop_resize") if variant in ("triton", "cuda", "cpu") else None,
            "bytes": nbytes,
        },
    )


def _step(run, args, x, grad, passes):
    if passes == "fwd":
        return lambda: run(*args)
    # autograd.grad, not backward(): no accumulation into .grad, which would add traffic of its own
    return lambda: torch.autograd.grad(run(*args), x, grad)


@pytest.mark.parametrize("shape_name", list(GRID_SHAPES))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("passes", ["fwd", "fwdbwd"])
def bench_patch_grid(benchmark, variant, shape_name, passes):
    reason = skip_reason(OPS, variant)
    if reason:
        pytest.skip(reason)
    B, C, H, W, grid, out = GRID_SHAPES[shape_name]
    benchmark.group = f"patch_grid/{passes}/{shape_name}"
    x = kit.randn((B, C, H, W), kit.generator(0), torch.float32, DEVICE).requires_grad_(passes == "fwdbwd")
    G = grid * grid
    boxes = PG.grid_boxes(H, W, grid, dtype=torch.float64, device=DEVICE).repeat(B, 1)
    index = torch.arange(B, device=DEVICE).repeat_interleave(G)

    def reference(images, g, size):
        return CR.crop_resize_reference(images, boxes.float(), size, index).view(B, G, C, *size)

    run = loop_patch_grid if variant == "loop" else _runner(variant, patch_grid, reference)
    args = (x, grid, out)

    # correctness once, on the inputs that are timed, against float64 (on the device)
    xr = x.detach().double().requires_grad_()
    want = CR.crop_resize_reference(xr, boxes, out, index).view(B, G, C, *out)
    cells = run(*args)
    grad = kit.randn(cells.shape, kit.generator(1), torch.float32, DEVICE)
    if variant == "loop":  # away from the cell borders: see the module docstring
        _check(cells[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1], "loop cells")
    else:
        _check(cells, want, f"{variant} cells")
        if variant not in ("reference", "compiled"):  # never time a fallback under the fast name
            assert fsgan_fast.last_backend("crop_resize") == variant
        if passes == "fwdbwd":
            (gx,) = torch.autograd.grad(cells, x, grad)
            (want_gx,) = torch.autograd.grad(want, xr, grad.double())
            _check(gx, want_gx, f"{variant} grad x")
    del want, xr, cells

    n_cells = B * G * C * out[0] * out[1]
    nbytes = 4 * (B * C * H * W + n_cells) * (1 if passes == "fwd" else 2)
    shape = {"B": B, "C": C, "H": H, "W": W, "grid": grid, "h": out[0], "w": out[1]}
    _time(benchmark, variant, "patch_grid", passes, shape, x, _step(run, args, x, grad, passes), nbytes)


@pytest.mark.parametrize("shape_name", list(CROP_SHAPES))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("passes", ["fwd", "fwdbwd"])
def bench_crop_resize(benchmark, variant, shape_name, passes):
    reason = skip_reason(OPS, variant)
    if reason:
        pytest.skip(reason)
    B, C, H, W, part, out = CROP_SHAPES[shape_name]
    benchmark.group = f"crop_resize/{passes}/{shape_name}"
    g = kit.generator(2)
    x = kit.randn((B, C, H, W), g, torch.float32, DEVICE).requires_grad_(passes == "fwdbwd")
    # one part per image: a random quadrant, jittered by up to an eighth of a part, kept inside the image
    quadrant = torch.randint(4, (B,), generator=g)
    jitter = torch.randint(-part // 8, part // 8 + 1, (B, 2), generator=g)
    y0 = ((quadrant // 2) * (H - part) + jitter[:, 0]).clamp(0, H - part)
    x0 = ((quadrant % 2) * (W - part) + jitter[:, 1]).clamp(0, W - part)
    int_boxes = [(int(a), int(b), int(a) + part, int(b) + part) for a, b in zip(y0, x0)]
    boxes = torch.tensor(int_boxes, dtype=torch.float32, device=DEVICE)

    def reference(images, b, size):
        return CR.crop_resize_reference(images, b, size)

    if variant == "loop":
        run, args = loop_crop_resize, (x, int_boxes, out)
    else:
        # no value check of the boxes: a host sync per call (and no CUDA-graph capture)
        run, args = _runner(variant, crop_resize, reference, check_values=False), (x, boxes, out)

    xr = x.detach().double().requires_grad_()
    want = CR.crop_resize_reference(xr, boxes.double(), out)
    y = run(*args)
    grad = kit.randn(y.shape, kit.generator(3), torch.float32, DEVICE)
    if variant == "loop":  # parts lie inside the image and every sample's neighbours inside the part: same values
        _check(y, want, "loop crops")
    else:
        _check(y, want, f"{variant} crops")
        if variant not in ("reference", "compiled"):
            assert fsgan_fast.last_backend("crop_resize") == variant
        if passes == "fwdbwd":
            (gx,) = torch.autograd.grad(y, x, grad)
            (want_gx,) = torch.autograd.grad(want, xr, grad.double())
            _check(gx, want_gx, f"{variant} grad x")
    del want, xr, y

    n_out = B * C * out[0] * out[1]
    nbytes = 4 * 2 * n_out * (1 if passes == "fwd" else 2)  # read the parts, write the crops (and back)
    shape = {"B": B, "C": C, "H": H, "W": W, "part": part, "h": out[0], "w": out[1]}
    _time(benchmark, variant, "crop_resize", passes, shape, x, _step(run, args, x, grad, passes), nbytes)
