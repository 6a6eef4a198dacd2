"""TensorRT engines from our ONNX graphs, and a runner that feeds them torch CUDA tensors.

:func:`build_engine` parses an ONNX file written by ``fsgan_fast.export`` (standard ops only, a
dynamic batch axis 0 on every input), builds one optimization profile over that axis and writes
the serialized engine plus a ``<engine>.json`` sidecar that says how and where it was built.
:class:`TRTGenerator` loads such an engine and runs it on the caller's current CUDA stream.

``tensorrt`` is imported inside the functions that need it, so this module imports everywhere;
:func:`tensorrt_unavailable` says why engines cannot be built or run here. Targets TensorRT 10.x;
TensorRT 11 has no fp16/bf16 builder flags (its networks are always strongly typed), so reduced
precision there comes from the ONNX graph itself: ``fsgan-fast export --format tensorrt --fp16``
exports the graph from an fp16 model, which suits both versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import threading
import time
from typing import Any, Iterator

import torch

from fsgan_fast.export.graphs import check_batch_range, check_inputs

log = logging.getLogger("fsgan_fast")

PRECISIONS = ("fp32", "fp16", "bf16")
_MIN_TRT_MAJOR = 10

# One TensorRT logger for the process: TensorRT keeps a pointer to the logger of the first
# builder/runtime it sees, so swapping loggers per call only loses messages.
_TRT_LOGGER: Any = None
_LOGGER_LOCK = threading.Lock()


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    # OSError: the Python bindings are installed but libnvinfer is not loadable.
    except (ImportError, OSError) as err:
        raise ImportError(f"tensorrt is not importable ({err}); pip install tensorrt") from err
    major = int(str(trt.__version__).split(".")[0])
    if major < _MIN_TRT_MAJOR:
        raise ImportError(
            f"tensorrt {trt.__version__} is too old: fsgan_fast needs TensorRT >= {_MIN_TRT_MAJOR} "
            "(named-tensor API); pip install -U tensorrt"
        )
    return trt


def _logger(trt: Any) -> Any:
    global _TRT_LOGGER
    with _LOGGER_LOCK:
        if _TRT_LOGGER is None:
            _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
        return _TRT_LOGGER


def tensorrt_unavailable(device: str | torch.device = "cuda") -> str | None:
    """Say why TensorRT engines cannot be built and run on ``device``, or return None if they can.

    Every missing piece is listed (``"; "``-joined), so a CPU-only machine without TensorRT hears
    about both. Never raises; meant for ``pytest.mark.skipif`` reasons and ``fsgan-fast info``.
    """
    reasons = []
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        return f"bad device {device!r}: {err}"
    if dev.type != "cuda":
        reasons.append(f"device {dev} is not a CUDA device (TensorRT runs on NVIDIA GPUs only)")
    elif torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} was built without CUDA")
    elif not torch.cuda.is_available():
        reasons.append("no CUDA device is visible to torch")
    elif dev.index is not None and dev.index >= torch.cuda.device_count():
        reasons.append(f"{dev} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    try:
        _import_tensorrt()
    except ImportError as err:
        reasons.append(str(err))
    return "; ".join(reasons) or None


def _dtype_pairs(trt: Any) -> tuple[tuple[Any, torch.dtype], ...]:
    return (
        (trt.DataType.FLOAT, torch.float32),
        (trt.DataType.HALF, torch.float16),
        (trt.DataType.BF16, torch.bfloat16),
        (trt.DataType.INT32, torch.int32),
        (trt.DataType.INT64, torch.int64),
        (trt.DataType.BOOL, torch.bool),
        (trt.DataType.INT8, torch.int8),
        (trt.DataType.UINT8, torch.uint8),
    )


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    for trt_dtype, torch_dtype in _dtype_pairs(trt):
        if trt_dtype == dtype:
            return torch_dtype
    raise TypeError(f"TensorRT dtype {dtype} has no torch equivalent here")


def _trt_dtype(trt: Any, dtype: torch.dtype) -> Any:
    for trt_dtype, torch_dtype in _dtype_pairs(trt):
        if torch_dtype == dtype:
            return trt_dtype
    raise TypeError(f"torch dtype {dtype} has no TensorRT equivalent")


def _dtype_name(trt: Any, dtype: Any) -> str:
    try:
        return str(_torch_dtype(trt, dtype)).removeprefix("torch.")
    except TypeError:
        return str(dtype)


def _parse_errors(parser: Any) -> str:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        # node() is -1 for errors that belong to the whole graph rather than one node.
        where = f"node {err.node()}" if err.node() >= 0 else "graph"
        if err.node_name():
            where += f" {err.node_name()!r}"
        if err.node_operator():
            where += f" (op {err.node_operator()})"
        lines.append(f"  {where}: {err.desc()} [{err.code()}]")
    return "\n".join(lines) or "  (the parser reported no error)"


@contextlib.contextmanager
def _log_level(trt: Any, logger: Any, verbose: bool) -> Iterator[None]:
    if verbose:
        logger.min_severity = trt.Logger.INFO
    try:
        yield
    finally:
        logger.min_severity = trt.Logger.WARNING


def _set_precision(trt: Any, config: Any, network: Any, precision: str, strict_fp32: bool) -> None:
    # TF32 is on by default in TensorRT; only strict_fp32 turns fp32 matmuls/convs back to IEEE.
    if strict_fp32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp32":
        return
    flag = getattr(trt.BuilderFlag, precision.upper(), None)
    if flag is not None:
        config.set_flag(flag)
        return
    # TensorRT 11 dropped weak typing: layer precisions come only from the ONNX graph, so the graph
    # itself must be in the requested precision (export it from a model converted to that dtype).
    wanted = {"fp16": trt.float16, "bf16": trt.bfloat16}[precision]
    if not any(network.get_input(i).dtype == wanted for i in range(network.num_inputs)):
        raise RuntimeError(
            f"tensorrt {trt.__version__} has no BuilderFlag.{precision.upper()} (its networks are strongly "
            f"typed) and this ONNX graph has no {precision} input: export the ONNX from a model in {precision} "
            "(fsgan-fast export --format tensorrt --fp16/--bf16 does), or use TensorRT 10"
        )


def _load_timing_cache(trt: Any, config: Any, path: pathlib.Path | None) -> None:
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(blob)
    # A cache from another GPU or TensorRT version is refused rather than trusted.
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _atomic_write(path: pathlib.Path, data: Any) -> None:
    # Write then rename, so a crash never leaves a half-written engine or cache behind.
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _onnx_metadata(path: pathlib.Path) -> dict[str, str]:
    try:
        from fsgan_fast.export.onnx import read_metadata

        return read_metadata(path)
    except ImportError:  # onnx not installed: the engine still builds, without input checks
        return {}


def _io_desc(trt: Any, tensor: Any) -> dict:
    return {"name": tensor.name, "dtype": _dtype_name(trt, tensor.dtype), "shape": list(tensor.shape)}


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str = "fp32",
    batch: tuple[int, int, int] = (1, 8, 64),
    timing_cache: str | os.PathLike | None = None,
    workspace_gib: float | None = None,
    strict_fp32: bool = False,
    verbose: bool = False,
) -> pathlib.Path:
    """Build a TensorRT engine from an ONNX file and write it, with a JSON sidecar, to ``engine_path``.

    Args:
        onnx_path: ONNX graph from ``fsgan_fast.export`` (standard ops; only axis 0 may be dynamic).
        engine_path: where the serialized engine goes (parent folders are created). The sidecar
            ``<engine_path>.json`` records the TensorRT version, precision, batch profile, GPU,
            the sha256 of the ONNX file (and of its ``.data`` weights file, if any), I/O
            names/dtypes/shapes and the build time.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``. fp16/bf16 let TensorRT pick reduced-precision
            kernels (TensorRT 10 builder flags). TensorRT 11 has no such flags: there the ONNX graph
            itself must be in that precision (RuntimeError otherwise).
        batch: ``(min, opt, max)`` for every dynamic (-1) input dim, which must be axis 0.
        timing_cache: file to load kernel timings from if it exists, and to save them to after the
            build; makes rebuilds on the same GPU and TensorRT version much faster.
        workspace_gib: cap on TensorRT's scratch memory pool (default: TensorRT's, all GPU memory).
        strict_fp32: disallow TF32 for fp32 layers.
        verbose: log TensorRT at INFO instead of WARNING during the build.

    Returns:
        ``engine_path`` as a :class:`pathlib.Path`.

    Raises:
        ValueError: bad ``precision``/``batch``/``workspace_gib`` (checked before tensorrt is
            imported), or an input with a dynamic dim other than axis 0.
        FileNotFoundError: ``onnx_path`` does not exist.
        RuntimeError: TensorRT or a GPU is missing, the ONNX file does not parse (every parser
            error is listed), or the build fails.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    batch = check_batch_range(batch)
    if workspace_gib is not None and not workspace_gib > 0:
        raise ValueError(f"workspace_gib must be > 0, got {workspace_gib!r}")
    onnx_path = pathlib.Path(onnx_path)
    engine_path = pathlib.Path(engine_path)
    cache_path = pathlib.Path(timing_cache) if timing_cache is not None else None
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX file at {onnx_path}")
    reason = tensorrt_unavailable("cuda")
    if reason is not None:
        raise RuntimeError(f"cannot build a TensorRT engine here: {reason}")
    trt = _import_tensorrt()
    logger = _logger(trt)

    onnx_bytes = onnx_path.read_bytes()
    with _log_level(trt, logger, verbose):
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        # The path lets the parser find external-data weights stored beside the graph.
        if not parser.parse(onnx_bytes, str(onnx_path)):
            raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{_parse_errors(parser)}")

        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        outputs = [network.get_output(i) for i in range(network.num_outputs)]
        profile = builder.create_optimization_profile()
        dynamic = False
        for tensor in inputs:
            if tensor.is_shape_tensor:
                raise ValueError(f"input {tensor.name!r} is a shape tensor; our graphs take none")
            shape = tuple(tensor.shape)
            bad = [axis for axis, dim in enumerate(shape) if dim < 0 and axis != 0]
            if bad:
                raise ValueError(
                    f"input {tensor.name!r} of shape {shape} is dynamic on axis {bad}; only the batch "
                    "axis 0 may be dynamic (export with static image sizes)"
                )
            if shape and shape[0] < 0:
                dynamic = True
                rest = shape[1:]
                profile.set_shape(tensor.name, (batch[0], *rest), (batch[1], *rest), (batch[2], *rest))

        config = builder.create_builder_config()
        if dynamic:
            config.add_optimization_profile(profile)
        _set_precision(trt, config, network, precision, strict_fp32)
        if workspace_gib is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        _load_timing_cache(trt, config, cache_path)

        start = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - start
    if plan is None:
        raise RuntimeError(
            f"TensorRT failed to build an engine from {onnx_path} (precision={precision}, "
            f"batch={batch}); rerun with verbose=True for TensorRT's log"
        )

    engine_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(engine_path, plan)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(cache_path, config.get_timing_cache().serialize())
    device = torch.cuda.current_device()
    data_path = onnx_path.with_name(onnx_path.name + ".data")
    sidecar = {
        "tensorrt": str(trt.__version__),
        "precision": precision,
        "strict_fp32": strict_fp32,
        "batch": list(batch) if dynamic else None,
        "gpu": torch.cuda.get_device_name(device),
        "compute_capability": list(torch.cuda.get_device_capability(device)),
        "onnx": str(onnx_path),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        # torch.onnx.export(dynamo=True) may put the weights in "<model>.onnx.data" beside the graph.
        "onnx_data_sha256": _sha256_file(data_path) if data_path.is_file() else None,
        # fsgan_fast's ONNX metadata (model, config, index bounds): TRTGenerator checks inputs against it
        "metadata": _onnx_metadata(onnx_path),
        "inputs": [_io_desc(trt, t) for t in inputs],
        "outputs": [_io_desc(trt, t) for t in outputs],
        "build_seconds": round(seconds, 3),
    }
    engine_path.with_name(engine_path.name + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    log.info("built %s in %.1fs (%s, batch %s)", engine_path, seconds, precision, batch)
    return engine_path


class TRTGenerator:
    """Loads a serialized engine and runs it on torch CUDA tensors.

    One execution context per instance: calls are enqueued on ``torch.cuda.current_stream(device)``
    and do not synchronize, so the caller syncs (or keeps using the outputs on that stream). On the
    legacy default stream TensorRT adds syncs of its own and warns once; run under
    ``torch.cuda.stream(side_stream)`` for throughput. Not safe to call from several threads at once.

    With ``check`` (default) and an engine built by :func:`build_engine` from an fsgan_fast export, each
    call first validates batch size and index inputs against the export's metadata (one host sync).

    Attributes:
        input_names, output_names: the engine's I/O tensor names, in engine order.
        metadata: the fsgan_fast metadata of the ONNX graph the engine was built from ({} if unknown).
        batch_range: ``(min, opt, max)`` of axis 0 in profile 0 of the first input whose batch is
            dynamic, or ``(b, b, b)`` for an engine with a fixed batch ``b``.
    """

    def __init__(self, engine_path: str | os.PathLike, device: str | torch.device = "cuda", *, check: bool = True):
        path = pathlib.Path(engine_path)
        if not path.is_file():
            raise FileNotFoundError(f"no TensorRT engine at {path}")
        sidecar = path.with_name(path.name + ".json")
        # index bounds and batch range of an fsgan_fast export, checked per call when ``check`` (one host
        # sync): TensorRT's gathers do not bounds-check
        self.metadata: dict[str, str] = json.loads(sidecar.read_text()).get("metadata", {}) if sidecar.is_file() else {}
        self.check = check
        device = torch.device(device)
        reason = tensorrt_unavailable(device)
        if reason is not None:
            raise RuntimeError(f"cannot run a TensorRT engine here: {reason}")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        trt = _import_tensorrt()
        self.device = device
        self.engine_path = path
        with torch.cuda.device(device):
            # The runtime must outlive its engine, hence kept on self.
            self._runtime = trt.Runtime(_logger(trt))
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise RuntimeError(
                    f"TensorRT {trt.__version__} could not load {path}: engines only load with the "
                    "TensorRT version and GPU model that built them; rebuild it with build_engine"
                )
            self._engine = engine
            self._context = engine.create_execution_context()
            if self._context is None:
                raise RuntimeError(f"TensorRT could not create an execution context for {path}")

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        if not self.input_names or not self.output_names:
            raise RuntimeError(f"{path} has inputs {self.input_names} and outputs {self.output_names}")
        for name in names:
            if engine.is_shape_inference_io(name):
                raise RuntimeError(f"{path}: shape-tensor I/O {name!r} is not supported")
        self._dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        self._shapes = {n: tuple(engine.get_tensor_shape(n)) for n in names}
        # Per input: (min, max) shapes of profile 0 for dynamic inputs; fixed inputs need none.
        self._limits: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for name in self.input_names:
            if any(d < 0 for d in self._shapes[name]):
                lo, _, hi = engine.get_tensor_profile_shape(name, 0)
                self._limits[name] = (tuple(lo), tuple(hi))
        # Some graphs take a few batch-free inputs (e.g. one shared episode): use the first batched one.
        batched = [n for n in self.input_names if self._shapes[n] and self._shapes[n][0] < 0]
        if batched:
            lo, opt, hi = engine.get_tensor_profile_shape(batched[0], 0)
            self.batch_range = (int(lo[0]), int(opt[0]), int(hi[0]))
        else:
            first = self._shapes[self.input_names[0]]
            b = int(first[0]) if first else 1
            self.batch_range = (b, b, b)

    def __repr__(self) -> str:
        return (
            f"TRTGenerator({str(self.engine_path)!r}, device={str(self.device)!r}, "
            f"inputs={self.input_names}, outputs={self.output_names}, batch_range={self.batch_range})"
        )

    def _bind(self, inputs: tuple[torch.Tensor, ...], named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(inputs) > len(self.input_names):
            raise ValueError(f"engine takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        bound = dict(zip(self.input_names, inputs))
        for name, tensor in named.items():
            if name not in self.input_names:
                raise ValueError(f"unknown input {name!r}; engine inputs are {self.input_names}")
            if name in bound:
                raise ValueError(f"input {name!r} given both by position and by name")
            bound[name] = tensor
        missing = [n for n in self.input_names if n not in bound]
        if missing:
            raise ValueError(f"missing inputs {missing}; engine inputs are {self.input_names}")
        for name, tensor in bound.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"input {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
        return bound

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        want = self._shapes[name]
        fixed_ok = len(shape) == len(want) and all(w < 0 or w == s for w, s in zip(want, shape))
        if not fixed_ok:
            spec = tuple("?" if w < 0 else w for w in want)
            raise ValueError(f"input {name!r} has shape {shape}; the engine expects {spec}")
        if name in self._limits:
            lo, hi = self._limits[name]
            for axis, (w, s) in enumerate(zip(want, shape)):
                if w < 0 and not lo[axis] <= s <= hi[axis]:
                    what = "batch" if axis == 0 else f"dim {axis}"
                    raise ValueError(
                        f"input {name!r}: {what} {s} is outside the engine's profile range "
                        f"[{lo[axis]}, {hi[axis]}]; rebuild with a wider batch=(min, opt, max)"
                    )

    def __call__(self, *inputs: torch.Tensor, **named: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the engine on ``inputs`` (in ``input_names`` order) and/or inputs given by name.

        Inputs are moved to the engine's device, made contiguous and cast to the dtype the engine
        declares (e.g. int64 positions become int32 if the engine took int32). Outputs are fresh torch
        tensors on the device; one output is returned bare, several as a tuple in ``output_names``
        order. Work is enqueued on the current stream of the device; nothing waits for it.

        Raises:
            TypeError: an input that is not a tensor.
            ValueError: wrong number or names of inputs, a shape that differs from the engine's
                fixed dims, a batch outside the engine's profile range, or inputs whose batches differ.
            RuntimeError: TensorRT rejects a shape or fails to enqueue.
        """
        bound = self._bind(inputs, named)
        if self.check and self.metadata:
            check_inputs(self.metadata, self.input_names, tuple(bound[n] for n in self.input_names))
        for name in self.input_names:
            self._check_shape(name, tuple(bound[name].shape))
        # Our graphs share one batch dim; TensorRT would only notice a mismatch at enqueue time.
        batches = {n: bound[n].shape[0] for n in self.input_names if self._shapes[n] and self._shapes[n][0] < 0}
        if len(set(batches.values())) > 1:
            raise ValueError(f"inputs disagree on the batch size: {batches}")
        context = self._context
        with torch.cuda.device(self.device):
            # Converted inputs must stay referenced until enqueued; the caching allocator then keeps
            # their memory safe because reuse is ordered on this same stream.
            feeds = {
                n: bound[n].to(device=self.device, dtype=self._dtypes[n]).contiguous() for n in self.input_names
            }
            for name, tensor in feeds.items():
                if not context.set_input_shape(name, tuple(tensor.shape)):
                    raise RuntimeError(f"TensorRT rejected shape {tuple(tensor.shape)} for input {name!r}")
                context.set_tensor_address(name, tensor.data_ptr())
            outs = []
            for name in self.output_names:
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"output {name!r} has data-dependent shape {shape}; not supported")
                out = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
                context.set_tensor_address(name, out.data_ptr())
                outs.append(out)
            stream = torch.cuda.current_stream(self.device)
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to enqueue {self.engine_path} (see the TensorRT log)")
        return outs[0] if len(outs) == 1 else tuple(outs)
