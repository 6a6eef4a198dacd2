"""TensorRT engines: build from ONNX and run against eager (GPU + TensorRT), argument checks everywhere."""

from __future__ import annotations

import copy
import hashlib
import json
import sys

import pytest
import torch
from torch import nn

from fsgan_fast.export.tensorrt import TRTGenerator, build_engine, tensorrt_unavailable

TRT_REASON = tensorrt_unavailable()
needs_trt = pytest.mark.skipif(TRT_REASON is not None, reason=f"TensorRT engines cannot run here: {TRT_REASON}")

# Relative to max |eager|. fp32 engines are built with strict_fp32 (no TF32), so only summation order differs.
TOL = {"fp32": 1e-3, "fp16": 2e-2}
SIZE, N_POS = (5, 7), 6  # odd spatial sizes, so nothing lines up with a tile


class PickScatter(nn.Module):
    """conv, then gather features at int64 positions and scatter them back doubled: LoFGAN's fuse in miniature."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, positions):
        y = self.conv(x)
        flat = y.flatten(2)
        index = positions[:, None, :].expand(-1, flat.shape[1], -1)
        picked = flat.gather(2, index)
        mixed = flat.scatter(2, index, picked * 2.0)
        return mixed.view_as(y), picked.sum(-1)


def make_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *SIZE, generator=gen)
    # distinct positions per row, so the scatter has no write races to compare
    positions = torch.rand(batch, SIZE[0] * SIZE[1], generator=gen).argsort(dim=1)[:, :N_POS]
    return x, positions


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = PickScatter().eval()
    path = tmp_path_factory.mktemp("trt") / "tiny.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        model, make_inputs(2, 0), path, dynamo=True, input_names=["x", "positions"],
        output_names=["images", "picked"], dynamic_shapes=({0: batch}, {0: batch}),
    )
    return model, path


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert torch.isfinite(got).all(), "non-finite values in the engine's output"
    return ((got.double().cpu() - ref).abs().max() / ref.abs().max()).item()


def check_parity(gen: TRTGenerator, model: nn.Module, batch: int, seed: int, tol: float) -> None:
    x, positions = make_inputs(batch, seed)
    got = gen(x.cuda(), positions.cuda())
    torch.cuda.synchronize()
    ref = copy.deepcopy(model).double()(x.double(), positions)
    assert isinstance(got, tuple) and len(got) == 2
    for name, g, r in zip(gen.output_names, got, ref):
        assert g.device.type == "cuda" and g.dtype == torch.float32
        err = rel_err(g, r)
        assert err <= tol, f"{name} at batch {batch}: max |err| / max |ref| = {err:.2e} > {tol:.0e}"


# ---------------------------------------------------------------- runs everywhere (no GPU, no TensorRT)


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail, proving the code under test raised before it imported TensorRT."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.mark.parametrize("batch", [(4, 2, 8), (0, 1, 2), (2, 2, 1), (1, 2), (1, 2.0, 3), (True, 2, 3)])
def test_build_engine_checks_batch_before_tensorrt(batch, tmp_path, no_tensorrt):
    with pytest.raises(ValueError, match="batch"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.plan", batch=batch)


@pytest.mark.parametrize("kwargs, match", [
    (dict(precision="int8"), "precision"),
    (dict(precision="FP16"), "precision"),
    (dict(workspace_gib=0), "workspace_gib"),
    (dict(workspace_gib=-1.5), "workspace_gib"),
])
def test_build_engine_checks_options_before_tensorrt(kwargs, match, tmp_path, no_tensorrt):
    with pytest.raises(ValueError, match=match):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.plan", **kwargs)


def test_build_engine_missing_onnx(tmp_path, no_tensorrt):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.plan")
    assert not (tmp_path / "m.plan").exists()


def test_build_engine_without_tensorrt_names_the_fix(tmp_path, no_tensorrt):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"not parsed: the missing runtime is reported first")
    with pytest.raises(RuntimeError, match="pip install tensorrt"):
        build_engine(onnx_path, tmp_path / "m.plan")
    assert not (tmp_path / "m.plan").exists()


def test_trt_generator_missing_engine(tmp_path, no_tensorrt):
    with pytest.raises(FileNotFoundError, match="nope.plan"):
        TRTGenerator(tmp_path / "nope.plan")


def test_tensorrt_unavailable_names_what_is_missing(no_tensorrt):
    reason = tensorrt_unavailable()
    assert reason is not None and "pip install tensorrt" in reason
    if not torch.cuda.is_available():
        assert "CUDA" in reason
    assert "not a CUDA device" in tensorrt_unavailable("cpu")


def test_tensorrt_unavailable_matches_this_machine():
    reason = tensorrt_unavailable()
    if not torch.cuda.is_available():
        assert reason is not None and "CUDA" in reason
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        assert reason is not None and "pip install tensorrt" in reason


def test_tiny_onnx_has_a_dynamic_batch(tiny_onnx):
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(tiny_onnx[1])).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    assert dims["x"][1:] == [3, *SIZE] and dims["positions"][1:] == [N_POS]
    assert isinstance(dims["x"][0], str) and dims["x"][0] == dims["positions"][0]
    assert {v.type.tensor_type.elem_type for v in graph.input if v.name == "positions"} == {onnx.TensorProto.INT64}


# ---------------------------------------------------------------- GPU + TensorRT


@pytest.mark.gpu
@needs_trt
def test_tensorrt_fp32_matches_eager(tiny_onnx, tmp_path):
    import tensorrt as trt

    model, onnx_path = tiny_onnx
    cache = tmp_path / "cache" / "timing.bin"
    path = build_engine(onnx_path, tmp_path / "out" / "tiny.plan", batch=(1, 4, 8), timing_cache=cache,
                        workspace_gib=1.0, strict_fp32=True)
    assert path == tmp_path / "out" / "tiny.plan" and path.stat().st_size > 0
    assert cache.stat().st_size > 0

    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["tensorrt"] == trt.__version__ and meta["precision"] == "fp32"
    assert meta["batch"] == [1, 4, 8]
    assert meta["gpu"] == torch.cuda.get_device_name()
    assert meta["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert [(i["name"], i["dtype"], i["shape"]) for i in meta["inputs"]] == [
        ("x", "float32", [-1, 3, *SIZE]), ("positions", "int64", [-1, N_POS])]
    assert [o["name"] for o in meta["outputs"]] == ["images", "picked"]
    assert meta["build_seconds"] >= 0

    gen = TRTGenerator(path)
    assert gen.input_names == ("x", "positions") and gen.output_names == ("images", "picked")
    assert gen.batch_range == (1, 4, 8)
    for batch, seed in ((3, 1), (8, 2)):
        check_parity(gen, model, batch, seed, TOL["fp32"])

    # by name, from the CPU, with int32 positions: moved, cast to the engine's int64, same answer
    x, positions = make_inputs(2, 3)
    by_name = gen(positions=positions.int(), x=x)
    by_pos = gen(x.cuda(), positions.cuda())
    torch.cuda.synchronize()
    for a, b in zip(by_name, by_pos):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    with pytest.raises(ValueError, match="profile range"):
        gen(*make_inputs(9, 4))
    with pytest.raises(ValueError, match="unknown input"):
        gen(x, pos=positions)
    with pytest.raises(ValueError, match="expects"):
        gen(torch.randn(2, 3, 7, 5), positions)

    # a rebuild reads the timing cache it just wrote
    again = build_engine(onnx_path, tmp_path / "again.plan", batch=(1, 4, 8), timing_cache=cache, strict_fp32=True)
    check_parity(TRTGenerator(again), model, 5, 5, TOL["fp32"])


@pytest.mark.gpu
@needs_trt
def test_tensorrt_fp16_matches_eager(tiny_onnx, tmp_path):
    import tensorrt as trt

    model, onnx_path = tiny_onnx
    if not hasattr(trt.BuilderFlag, "FP16"):
        with pytest.raises(RuntimeError, match="strongly typed"):
            build_engine(onnx_path, tmp_path / "tiny16.plan", precision="fp16")
        pytest.skip(f"tensorrt {trt.__version__} has no fp16 builder flag (reduced precision comes from the graph)")
    path = build_engine(onnx_path, tmp_path / "tiny16.plan", precision="fp16", batch=(2, 4, 16))
    assert json.loads(path.with_name(path.name + ".json").read_text())["precision"] == "fp16"
    gen = TRTGenerator(path, device=torch.device("cuda", torch.cuda.current_device()))
    assert gen.batch_range == (2, 4, 16)
    for batch, seed in ((2, 1), (13, 2)):
        check_parity(gen, model, batch, seed, TOL["fp16"])
    with pytest.raises(ValueError, match="profile range"):
        gen(*[t.cuda() for t in make_inputs(1, 3)])


@pytest.mark.gpu
@needs_trt
def test_tensorrt_dtype_maps_round_trip():
    import tensorrt as trt

    from fsgan_fast.export.tensorrt import _torch_dtype, _trt_dtype

    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.bool, torch.int8):
        assert _torch_dtype(trt, _trt_dtype(trt, dtype)) == dtype
    with pytest.raises(TypeError):
        _trt_dtype(trt, torch.complex64)
