"""crop_resize / crop_resize_indexed (bilinear crop-and-resize) on every backend against the float64 reference,
forward and gradients; the reference against an independent per-pixel loop; exact copies; registration (opcheck,
torch.compile, the export lowering); bad input. The end of the file registers the family's cases for the CMake and
Triton AOT build tests."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from fsgan_fast import backends
from fsgan_fast.ops import crop_resize, crop_resize_indexed
from tests.ops import kit
from tests.ops.kit import assert_close

CR = importlib.import_module("fsgan_fast.ops.crop_resize")

OP = "crop_resize"
# a sample is a convex combination of 4 pixels: about one rounding of the inputs' size
TOL = {torch.float64: 1e-12, torch.float32: 4e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# name: (x shape [B,C,H,W], number of boxes or None for one per image, out (h, w), where the boxes lie)
CASES = {
    "inside-down": ((2, 3, 9, 7), None, (5, 3), "inside"),
    "partly-outside": ((2, 2, 8, 11), None, (4, 6), "outside"),
    "upscale-odd": ((1, 5, 5, 13), None, (7, 9), "inside"),
    "indexed-many": ((3, 2, 7, 6), 7, (3, 5), "outside"),
    "one-pixel-out": ((2, 3, 6, 5), 3, (1, 1), "inside"),
    "one-pixel-image": ((2, 3, 1, 1), None, (2, 3), "outside"),
}


def random_boxes(n: int, H: int, W: int, gen: torch.Generator, where: str = "inside") -> torch.Tensor:
    """[n, 4] float32 boxes (y0, x0, y1, x1): inside the image, or reaching up to half the image past its edges
    (some flipped, y1 < y0, there)."""
    u = torch.rand(n, 4, generator=gen, dtype=torch.float64)
    size = torch.tensor([H, W, H, W], dtype=torch.float64)
    if where == "inside":
        lo = u[:, :2] * 0.5 * size[:2]
        hi = lo + (0.2 + 0.5 * u[:, 2:]) * (size[2:] - lo)
    else:
        lo = (u[:, :2] - 0.5) * size[:2]
        hi = lo + (u[:, 2:] * 2.0 - 0.3) * size[2:]  # may be short of lo: a flipped crop
    return torch.cat([lo, hi], 1).float()


def make_inputs(name: str, dtype: torch.dtype, device="cpu", seed: int = 0):
    """(x, boxes, image_index or None, out) of a case; boxes are float32 (what float32 kernels read)."""
    shape, n, out, where = CASES[name]
    g = kit.generator(seed)
    B, C, H, W = shape
    x = kit.randn(shape, g, dtype, device)
    boxes = random_boxes(B if n is None else n, H, W, g, where).to(device)
    index = None if n is None else kit.randint(B, (n,), g, device)
    return x, boxes, index, out


def _call(backend, x, boxes, index, out):
    if index is None:
        return backend.run(crop_resize, x, boxes, out)
    return backend.run(crop_resize_indexed, x, boxes, index, out, op="crop_resize")


def _oracle(x, boxes, index, out, grad):
    """float64 outputs and grad_x of the reference on the CPU."""
    xr = x.detach().double().cpu().requires_grad_()
    want = CR.crop_resize_reference(xr, boxes.double().cpu(), out, None if index is None else index.cpu())
    (gx,) = torch.autograd.grad(want, xr, grad.double().cpu())
    return want.detach(), gx


def _loop_oracle(x: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor, out) -> torch.Tensor:
    """The contract written pixel by pixel in Python floats: independent of the reference's vectorisation."""
    N = boxes.shape[0]
    B, C, H, W = x.shape
    h, w = out
    res = torch.empty(N, C, h, w, dtype=torch.float64)
    for n in range(N):
        y0, x0, y1, x1 = boxes[n].tolist()
        img = x[int(index[n])].double()
        for i in range(h):
            y = min(max(y0 + (i + 0.5) * (y1 - y0) / h - 0.5, 0.0), H - 1.0)
            r0 = math.floor(y)
            r1, fy = min(r0 + 1, H - 1), y - math.floor(y)
            for j in range(w):
                xx = min(max(x0 + (j + 0.5) * (x1 - x0) / w - 0.5, 0.0), W - 1.0)
                c0 = math.floor(xx)
                c1, fx = min(c0 + 1, W - 1), xx - math.floor(xx)
                res[n, :, i, j] = ((1 - fy) * (1 - fx) * img[:, r0, c0] + (1 - fy) * fx * img[:, r0, c1]
                                   + fy * (1 - fx) * img[:, r1, c0] + fy * fx * img[:, r1, c1])
    return res


# ---------------------------------------------------------------------------------------------------
# The reference itself


@pytest.mark.parametrize("name", list(CASES))
def test_crop_resize_reference_matches_the_pixel_loop(name):
    x, boxes, index, out = make_inputs(name, torch.float64)
    idx = torch.arange(x.shape[0]) if index is None else index
    got = CR.crop_resize_reference(x, boxes.double(), out, idx)
    assert_close(got, _loop_oracle(x, boxes.double(), idx, out), 1e-12, "reference")


def test_crop_resize_reference_equals_interpolate_on_the_whole_image():
    """The full-image box is F.interpolate(bilinear, align_corners=False) when upsampling (same sample positions,
    same edge clamp)."""
    x = kit.randn((2, 3, 5, 7), kit.generator(1))
    boxes = torch.tensor([[0.0, 0.0, 5.0, 7.0]] * 2, dtype=torch.float64)
    want = torch.nn.functional.interpolate(x, size=(9, 11), mode="bilinear", align_corners=False)
    assert_close(CR.crop_resize_reference(x, boxes, (9, 11)), want, 1e-12, "full box")


def test_crop_resize_backward_reference_is_the_adjoint():
    """<crop(x), g> == <x, backward(g)> for random x and g: the backward is the forward's transpose."""
    x, boxes, index, out = make_inputs("indexed-many", torch.float64, seed=3)
    g = kit.randn((boxes.shape[0], x.shape[1], *out), kit.generator(4))
    y = CR.crop_resize_reference(x, boxes, out, index)
    gx = CR.crop_resize_backward_reference(g, boxes.double(), index, (x.shape[0], x.shape[2], x.shape[3]))
    assert abs(float((y * g).sum() - (x * gx).sum())) < 1e-10


# ---------------------------------------------------------------------------------------------------
# Every backend against the float64 reference


@pytest.mark.parametrize("dtype", kit.FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_crop_resize_matches_reference(backend, name, dtype):
    backend.require(dtype)
    x, boxes, index, out = make_inputs(name, dtype, backend.device)
    x.requires_grad_()
    y = _call(backend, x, boxes, index, out)
    N = boxes.shape[0]
    assert y.dtype == dtype and y.shape == (N, x.shape[1], *out) and y.is_contiguous()
    grad = kit.randn(y.shape, kit.generator(1), dtype, backend.device)
    (gx,) = torch.autograd.grad(y, x, grad)
    want, want_gx = _oracle(x, boxes, index, out, grad)
    # a pixel receives from up to (N / B) * 4 * ceil(h / H) * ceil(w / W) samples
    fan_in = 4 * max(1, math.ceil(N / x.shape[0])) * math.ceil(out[0] / x.shape[2]) * math.ceil(out[1] / x.shape[3])
    # Triton's CPU interpreter (3.8) truncates float32 -> bfloat16 where a GPU rounds to nearest: one ulp more
    truncates = backend.name == "triton" and backends.triton_interpreted() and dtype == torch.bfloat16
    if truncates:
        assert_close(y, want, TOL[dtype], "out", rtol=2 ** -7)
        assert_close(gx, want_gx, TOL[dtype] * fan_in, "grad x", rtol=2 ** -7)
    elif dtype in kit.LOW_PRECISION:
        xs, gs = x.detach(), grad
        same_y = CR.crop_resize_reference(xs.cpu(), boxes.cpu(), out, None if index is None else index.cpu())
        same_gx = CR.crop_resize_backward_reference(gs.cpu(), boxes.cpu(), torch.arange(N) if index is None
                                                    else index.cpu(), (x.shape[0], x.shape[2], x.shape[3]))
        kit.assert_close_lowp(y, want, same_y, "out", floor=TOL[dtype] / 4)
        kit.assert_close_lowp(gx, want_gx, same_gx, "grad x", floor=TOL[dtype] / 4)
    else:
        assert_close(y, want, TOL[dtype], "out")
        assert_close(gx, want_gx, TOL[dtype] * fan_in, "grad x")


def test_crop_resize_indexed_with_no_boxes(backend):
    x = kit.randn((2, 3, 4, 5), kit.generator(2), torch.float32, backend.device).requires_grad_()
    y = backend.run(crop_resize_indexed, x, torch.empty(0, 4, device=backend.device),
                    torch.empty(0, dtype=torch.long, device=backend.device), (3, 2), op="crop_resize")
    assert y.shape == (0, 3, 3, 2)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.shape == x.shape and not gx.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_integer_box_of_the_output_size_is_an_exact_copy(backend, dtype):
    """Boxes of exactly h x w at integer offsets (touching every edge) sample pixel centres with weight 1."""
    backend.require(dtype)
    x = kit.randn((3, 2, 9, 8), kit.generator(5), dtype, backend.device)
    h, w = 4, 3
    offsets = [(0, 0), (5, 5), (2, 1)]  # top-left, bottom-right corner, inside
    boxes = torch.tensor([[y, x0, y + h, x0 + w] for y, x0 in offsets], dtype=torch.float32, device=backend.device)
    y = backend.run(crop_resize, x, boxes, (h, w))
    for b, (y0, x0) in enumerate(offsets):
        assert torch.equal(y[b], x[b, :, y0:y0 + h, x0:x0 + w]), f"box {b} is not an exact copy"


def test_indexed_agrees_with_one_call_per_box(backend):
    """crop_resize_indexed over several boxes per image == crop_resize of each box alone."""
    x, boxes, index, out = make_inputs("indexed-many", torch.float32, backend.device, seed=6)
    together = backend.run(crop_resize_indexed, x, boxes, index, out, op="crop_resize")
    for n in range(boxes.shape[0]):
        b = int(index[n])
        alone = backend.run(crop_resize, x[b:b + 1], boxes[n:n + 1], out)
        assert torch.equal(together[n:n + 1], alone), f"box {n}"


def test_channels_last_and_float64_boxes(backend):
    """Any input layout, and boxes in another floating dtype (used in x's opmath: float32 here)."""
    x, boxes, index, out = make_inputs("partly-outside", torch.float32, backend.device, seed=7)
    want = backend.run(crop_resize, x, boxes, out)
    got = backend.run(crop_resize, x.to(memory_format=torch.channels_last), boxes.double(), out)
    assert torch.equal(got, want)


def test_out_of_contract_values_stay_in_bounds(backend):
    """With check_values=False a NaN box gives NaN samples and a bad image index a NaN row; nothing else changes
    and no kernel reads out of bounds (the other rows equal the valid call's)."""
    x, boxes, index, out = make_inputs("indexed-many", torch.float32, backend.device, seed=8)
    bad_boxes, bad_index = boxes.clone(), index.clone()
    bad_boxes[1, 0] = float("nan")
    bad_index[2] = x.shape[0] + 5
    y = backend.run(crop_resize_indexed, x, bad_boxes, bad_index, out, op="crop_resize", check_values=False)
    want = backend.run(crop_resize_indexed, x, boxes, index, out, op="crop_resize")
    assert y[1].isnan().any() and y[2].isnan().all()
    keep = [n for n in range(boxes.shape[0]) if n not in (1, 2)]
    assert torch.equal(y[keep], want[keep])


# ---------------------------------------------------------------------------------------------------
# Autograd and registration


def test_crop_resize_gradcheck_float64(fp64_backend):
    x, boxes, index, out = make_inputs("indexed-many", torch.float64, fp64_backend.device, seed=9)
    x = x[:, :1, :5, :4].clone().requires_grad_()
    index = index % x.shape[0]
    kit.gradcheck(lambda t: fp64_backend.run(crop_resize_indexed, t, boxes, index, (3, 2), op="crop_resize"), x,
                  gradgrad=True)


def test_crop_resize_opcheck(backend):
    x, boxes, index, out = make_inputs("indexed-many", torch.float32, backend.device, seed=10)
    kit.opcheck("crop_resize", (x.requires_grad_(), boxes, index, *out, backend.name))
    grad = kit.randn((boxes.shape[0], x.shape[1], *out), kit.generator(11), torch.float32, backend.device)
    kit.opcheck("crop_resize_backward", (grad.requires_grad_(), boxes, index, x.shape[0], x.shape[2], x.shape[3],
                                         backend.name))


def test_crop_resize_under_torch_compile_fullgraph(backend):
    x, boxes, index, out = make_inputs("partly-outside", torch.float32, backend.device, seed=12)
    kit.assert_compiles(lambda t: crop_resize(t, boxes, out, backend=backend.name), x.requires_grad_())


def test_crop_resize_lowering_reference_leaves_only_standard_ops():
    x, boxes, index, out = make_inputs("indexed-many", torch.float32, "cpu", seed=13)

    class Crop(torch.nn.Module):
        def forward(self, images, b, i):
            return crop_resize_indexed(images, b, i, out)

    with backends.lowering("reference"):
        program = torch.export.export(Crop(), (x, boxes, index))
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert names and all(n.startswith("aten.") for n in names), names
    assert_close(program.module()(x, boxes, index), CR.crop_resize_reference(x.double(), boxes.double(), out, index),
                 1e-5, "exported")


@pytest.mark.filterwarnings("ignore:# The axis name:UserWarning")  # the exporter renaming our one dynamic dim
def test_crop_resize_onnx_matches_reference_with_dynamic_boxes(tmp_path):
    """The reference lowering exported to ONNX (gathers and elementwise ops, TensorRT-parsable) gives the reference's
    values under onnxruntime for another number of boxes than it was traced with."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fsgan_fast.export import tensorrt_problems

    out = (4, 3)

    class Crop(torch.nn.Module):
        def forward(self, images, b, i):
            return crop_resize_indexed(images, b, i, out)

    x, boxes, index, _ = make_inputs("indexed-many", torch.float32, "cpu", seed=17)
    path = tmp_path / "crop_resize.onnx"
    n = torch.export.Dim("n", min=1, max=64)
    with backends.lowering("reference"):
        torch.onnx.export(Crop().eval(), (x, boxes, index), str(path), dynamo=True, opset_version=18,
                          dynamic_shapes={"images": None, "b": {0: n}, "i": {0: n}},
                          input_names=["images", "boxes", "image_index"], output_names=["crops"])
    model = onnx.load(str(path))
    assert "Gather" in {node.op_type for node in model.graph.node}
    assert tensorrt_problems(model) == []
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed in (18, 19):
        _, boxes2, index2, _ = make_inputs("indexed-many", torch.float32, "cpu", seed=seed)
        boxes2, index2 = boxes2[: seed - 15], index2[: seed - 15]
        (got,) = session.run(None, {"images": x.numpy(), "boxes": boxes2.numpy(), "image_index": index2.numpy()})
        want = CR.crop_resize_reference(x.double(), boxes2.double(), out, index2)
        assert_close(torch.from_numpy(got), want, 1e-5, f"onnxruntime, {boxes2.shape[0]} boxes")


def test_crop_resize_lowering_native_keeps_the_private_op():
    if backends.why_unavailable("crop_resize", "cpu", torch.device("cpu")) is not None:
        pytest.skip("the CPU kernel is not built")
    x, boxes, index, out = make_inputs("inside-down", torch.float32, "cpu", seed=14)

    class Crop(torch.nn.Module):
        def forward(self, images, b):
            return crop_resize(images, b, out)

    with backends.lowering("native"):
        program = torch.export.export(Crop(), (x, boxes))
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "fsgan_fast._crop_resize_cpu.default" in names, names
    assert_close(program.module()(x, boxes), CR.crop_resize_reference(x.double(), boxes.double(), out), 1e-5, "out")


# ---------------------------------------------------------------------------------------------------
# Bad input

BAD = kit.bad_inputs(
    ("x rank", lambda x, b, i, o: (x[0], b, i, o), ValueError, r"x must be 4-D"),
    ("x empty", lambda x, b, i, o: (x[:, :0], b, i, o), ValueError, r"x must have no empty dimension"),
    ("x int", lambda x, b, i, o: (x.long(), b, i, o), TypeError, r"x must be a floating tensor"),
    ("boxes rank", lambda x, b, i, o: (x, b[0], i, o), ValueError, r"boxes must be 2-D"),
    ("boxes width", lambda x, b, i, o: (x, b[:, :3], i, o), ValueError, r"boxes must have shape \[7, 4\]"),
    ("boxes int", lambda x, b, i, o: (x, b.long(), i, o), TypeError, r"boxes must be a floating tensor"),
    ("boxes nan", lambda x, b, i, o: (x, torch.where(b == b[2, 1], float("nan"), b), i, o), ValueError,
     r"boxes must be finite"),
    ("boxes inf", lambda x, b, i, o: (x, torch.where(b == b[0, 3], float("inf"), b), i, o), ValueError,
     r"boxes must be finite"),
    ("boxes device", lambda x, b, i, o: (x, b.to("meta"), i, o), ValueError, r"boxes is on meta"),
    ("index float", lambda x, b, i, o: (x, b, i.float(), o), TypeError, r"image_index must be an integer tensor"),
    ("index bool", lambda x, b, i, o: (x, b, i > 0, o), TypeError, r"image_index must be an integer tensor"),
    ("index length", lambda x, b, i, o: (x, b, i[:-1], o), ValueError, r"image_index must have shape \[7\]"),
    ("index high", lambda x, b, i, o: (x, b, torch.where(i == i[0], 3, i), o), ValueError,
     r"image_index must lie in \[0, B=3\), got 3"),
    ("index negative", lambda x, b, i, o: (x, b, torch.where(i == i[0], -1, i), o), ValueError,
     r"image_index must lie in \[0, B=3\)"),
    ("index device", lambda x, b, i, o: (x, b, i.to("meta"), o), ValueError, r"image_index is on meta"),
    ("out zero", lambda x, b, i, o: (x, b, i, (0, 3)), ValueError, r"out must be two ints >= 1"),
    ("out negative", lambda x, b, i, o: (x, b, i, (3, -2)), ValueError, r"out must be two ints >= 1"),
    ("out one int", lambda x, b, i, o: (x, b, i, 4), ValueError, r"out must be two ints >= 1"),
    ("out float", lambda x, b, i, o: (x, b, i, (2.0, 3)), ValueError, r"out must be two ints >= 1"),
    ("out triple", lambda x, b, i, o: (x, b, i, (2, 3, 4)), ValueError, r"out must be two ints >= 1"),
)


@pytest.mark.parametrize("case", BAD)
def test_crop_resize_indexed_bad_input(backend, case):
    x, boxes, index, out = make_inputs("indexed-many", torch.float32, backend.device)
    kit.expect_bad_input(backend, crop_resize_indexed, (x, boxes, index, out), case, op="crop_resize")


BAD_ONE_PER_IMAGE = kit.bad_inputs(
    ("boxes per image", lambda x, b, o: (x, b[:1], o), ValueError, r"boxes must have shape \[2, 4\] \(one box"),
    ("boxes rank", lambda x, b, o: (x, b[None], o), ValueError, r"boxes must have shape \[2, 4\]"),
    ("x rank", lambda x, b, o: (x[None], b, o), ValueError, r"x must be 4-D"),
    ("boxes nan", lambda x, b, o: (x, b * float("nan"), o), ValueError, r"boxes must be finite"),
    ("out zero", lambda x, b, o: (x, b, (3, 0)), ValueError, r"out must be two ints >= 1"),
)


@pytest.mark.parametrize("case", BAD_ONE_PER_IMAGE)
def test_crop_resize_bad_input(backend, case):
    x, boxes, _, out = make_inputs("inside-down", torch.float32, backend.device)
    kit.expect_bad_input(backend, crop_resize, (x, boxes, out), case)


# ---------------------------------------------------------------------------------------------------
# Cases for the build tests


@kit.native_cases("crop_resize")
def crop_resize_native_cases():
    cases = []
    for name in ("partly-outside", "indexed-many"):
        x, boxes, index, out = make_inputs(name, torch.float64, "cpu", seed=15)
        index = torch.arange(x.shape[0]) if index is None else index
        boxes = boxes.double()
        y = CR.crop_resize_reference(x, boxes, out, index)
        cases.append(kit.NativeCase("_crop_resize_cpu", (x, boxes, index, *out), (y,)))
        grad = kit.randn(y.shape, kit.generator(16))
        size = (x.shape[0], x.shape[2], x.shape[3])
        cases.append(kit.NativeCase("_crop_resize_backward_cpu", (grad, boxes, index, *size),
                                    (CR.crop_resize_backward_reference(grad, boxes, index, size),)))
    return cases


@kit.aot_variants("crop_resize", [(3, 86, 86), (64, 86, 86), (2, 3, 2)])
def crop_resize_aot_variants(shape, dtype):
    from fsgan_fast.kernels import crop_resize as kernels

    for op, kernel, signature, constexprs, warps in kernels.aot_variants(shape, dtype):
        yield kit.AotVariant(op, kernel, signature, constexprs, warps)
