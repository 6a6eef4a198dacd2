"""LoFGAN generation latency and throughput per deployment path and batch size.

Paths: ``eager`` (the PyTorch graph, automatic backend), ``compiled`` (torch.compile), ``cudagraph`` (the
eager graph captured once and replayed), ``aoti-reference`` / ``aoti-native`` (AOTInductor packages with
the fusion compiled from standard ops / calling our kernel), ``tensorrt-fp32`` / ``tensorrt-fp16``
(where TensorRT is installed), ``onnxruntime`` (CPU provider, on the CPU only). All run the single-episode
graph (K shots encoded once, B generations: generation at scale) exported with one dynamic batch range,
in fp32 unless the path says otherwise. Every path is checked against eager before it is timed.

GPU: the paper's 128 px model, B in {1, 8, 64}. CPU: the README demo's 64 px model, B = 8; the compiled
paths are marked slow there (tens of seconds of compilation each).
"""

from __future__ import annotations

import functools

import pytest
import torch

from benches.conftest import DEVICE, timed
from fsgan_fast import backends, export
from fsgan_fast.models.lofgan import LoFGAN, LoFGANConfig
from fsgan_fast.train.lofgan import PRESETS

ON_GPU = DEVICE.type == "cuda"
K = 3
if ON_GPU:
    CONFIG_NAME, MODEL_CFG = "paper", LoFGANConfig(size=128, shots=K, n_classes=85)
    BATCHES, RANGE = [1, 8, 64], (1, 8, 64)
else:
    _demo = PRESETS["demo"]
    CONFIG_NAME = "demo"
    MODEL_CFG = LoFGANConfig(size=_demo["size"], shots=K, n_classes=13, gen_channels=_demo["gen_channels"])
    BATCHES, RANGE = [8], (1, 8, 8)
SLOW_ON_CPU = [] if ON_GPU else [pytest.mark.slow]
PATHS = [
    "eager",
    pytest.param("compiled", marks=SLOW_ON_CPU),
    "cudagraph",
    pytest.param("aoti-reference", marks=SLOW_ON_CPU),
    pytest.param("aoti-native", marks=SLOW_ON_CPU),
    "tensorrt-fp32",
    "tensorrt-fp16",
    "onnxruntime",
]


@functools.cache
def _graph() -> export.GeneratorGraph:
    torch.manual_seed(0)
    model = LoFGAN(MODEL_CFG).to(DEVICE).eval()
    return export.generator_graph(model, single_episode=True)


@functools.cache
def _workdir():
    import tempfile

    return tempfile.mkdtemp(prefix="fsgan-deploy-")


def _skip_reason(path: str) -> str | None:
    if path == "cudagraph" and not ON_GPU:
        return "CUDA graphs need a GPU"
    if path == "onnxruntime" and ON_GPU:
        return "onnxruntime's CPU provider is not a GPU deployment path (its CUDA provider is not installed here)"
    if path in ("onnxruntime",) or path.startswith("tensorrt"):
        from fsgan_fast.export.onnx import onnx_unavailable

        reason = onnx_unavailable()
        if reason:
            return reason
    if path.startswith("tensorrt"):
        from fsgan_fast.export.tensorrt import tensorrt_unavailable

        return tensorrt_unavailable(DEVICE)
    if path == "aoti-native":
        return backends.why_unavailable("lfm_fuse", DEVICE.type, DEVICE, torch.float32)
    return None


@functools.cache
def _runner(path: str):
    """Build (once per process) what ``path`` runs: a callable on the graph's inputs."""
    graph, work = _graph(), _workdir()
    if path == "eager":
        return graph.run
    if path == "compiled":
        return torch.compile(graph.module)
    if path.startswith("aoti-"):
        lowering = path.removeprefix("aoti-")
        # check=False: the per-call input validation costs a host sync, which a timed hot path must not pay
        package = export.package_aoti(graph, f"{work}/{lowering}.pt2", batch=RANGE, lowering=lowering)
        return export.AOTIGenerator(package, check=False)
    if path == "onnxruntime":
        return export.ORTGenerator(export.export_onnx(graph, f"{work}/g.onnx", batch=RANGE))
    if path.startswith("tensorrt-"):
        from fsgan_fast.export.tensorrt import TRTGenerator, build_engine

        precision = path.removeprefix("tensorrt-")
        dtype = torch.float16 if precision == "fp16" else torch.float32
        onnx_path = export.export_onnx(graph.to(dtype, "cpu"), f"{work}/g-{precision}.onnx", batch=RANGE)
        return TRTGenerator(build_engine(onnx_path, f"{work}/g-{precision}.plan", precision=precision, batch=RANGE,
                                         timing_cache=f"{work}/timing.cache"), DEVICE, check=False)
    raise AssertionError(path)


def _cuda_graph(graph: export.GeneratorGraph, inputs: tuple[torch.Tensor, ...]):
    """Capture one generation for these input shapes; replaying it reuses the same input/output buffers."""
    static = tuple(t.clone() for t in inputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(2):  # warm up kernels (Triton compiles, cuDNN picks algorithms) outside the capture
            graph.module(*static)
    torch.cuda.current_stream().wait_stream(stream)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph), torch.no_grad():
        out = graph.module(*static)
    return cuda_graph, out


def _check(path: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    got, expected = got.float().to(expected.device), expected.float()
    if path.startswith("tensorrt"):
        # fp16, and TF32 that TensorRT uses for fp32 engines by default, may flip near-tied matches (each
        # moving a whole cell): judge the average
        assert (got - expected).abs().mean() < 2e-2, f"{path}: mean |err| {(got - expected).abs().mean():.3e}"
    else:
        err = (got - expected).abs().max() / expected.abs().max()
        assert err <= 1e-3, f"{path}: max relative error {err:.3e}"


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("path", PATHS)
def bench_lofgan_deploy_generate(benchmark, path, batch):
    reason = _skip_reason(path)
    if reason:
        pytest.skip(reason)
    graph = _graph()
    benchmark.group = f"lofgan/deploy/{CONFIG_NAME}-b{batch}k{K}s{MODEL_CFG.size}"
    inputs = graph.example_inputs(batch, DEVICE, seed=batch)
    # checked in IEEE fp32 (TF32 convolutions could flip near-tied matches, each moving a whole cell);
    # timed with the default math
    with torch.no_grad(), export.graphs.ieee_fp32():
        expected = graph.module(*inputs)
    if path == "cudagraph":
        with export.graphs.ieee_fp32():
            cuda_graph, out = _cuda_graph(graph, inputs)
            cuda_graph.replay()
        _check(path, out, expected)
        cuda_graph, _ = _cuda_graph(graph, inputs)
        fn = cuda_graph.replay
    else:
        runner = _runner(path)
        with torch.no_grad(), export.graphs.ieee_fp32():
            _check(path, runner(*inputs), expected)

        def fn():
            with torch.no_grad():
                return runner(*inputs)

    inner = 10 if ON_GPU else 1
    extra = {
        "model": "lofgan",
        "pass": "generate",
        "path": path,
        "backend": backends.last_backend("lfm_fuse") if path in ("eager", "cudagraph", "compiled") else path,
        "shape": {"B": batch, "K": K, "size": MODEL_CFG.size},
        "dtype": "float16" if path == "tensorrt-fp16" else "float32",
        "config": CONFIG_NAME,
        "batch_range": list(RANGE),
    }
    timed(benchmark, fn, inner=inner, rounds=30 if ON_GPU else 3, warmup=3 if ON_GPU else 1, extra=extra)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        per_call = stats.stats.median / inner
        benchmark.extra_info["ms_per_batch"] = per_call * 1e3
        benchmark.extra_info["images_per_s"] = batch / per_call
