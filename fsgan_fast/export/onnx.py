"""ONNX export of the generators: standard operators only, a dynamic batch axis, checked with onnxruntime.

The graph is traced with ``torch.onnx.export(dynamo=True)`` (torch.export underneath, so onnxscript must be
installed) inside :func:`fsgan_fast.backends.lowering`, which routes every hot-path op to its reference
decomposition: the file holds MatMul, ArgMax, GatherElements, ScatterElements, Resize, Conv, ... and no
custom domain, so onnxruntime and TensorRT's parser take it as is (:mod:`.tensorrt_ops` checks the latter).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from fsgan_fast import backends
from fsgan_fast.export.graphs import BATCH_RANGE_KEY, GeneratorGraph, check_batch_range, check_inputs
from fsgan_fast.export.tensorrt_ops import MAX_OPSET, check_tensorrt_parsable

# torch.onnx's dynamo exporter writes opset 18 and up (its version converter cannot go lower for Pad and
# Resize); TensorRT 10 parses up to 20, onnxruntime >= 1.14 runs 18
MIN_OPSET, DEFAULT_OPSET = 18, 18


def onnx_unavailable() -> str | None:
    """None if ONNX export can run here, else what to install."""
    missing = [m for m in ("onnx", "onnxscript") if _missing(m)]
    return f"ONNX export needs {' and '.join(missing)} (pip install {' '.join(missing)})" if missing else None


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _example_batch(batch: tuple[int, int, int]) -> int:
    lo, opt, hi = batch
    # torch.export specialises a dimension traced at size 1, so trace a dynamic batch at >= 2
    return lo if lo == hi else min(max(opt, 2), hi)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter warns about absent torchvision ops and renamed axes: keep the CLI readable."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"torch\.onnx")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    graph: GeneratorGraph,
    path: str | os.PathLike,
    *,
    batch: tuple[int, int, int] = (1, 8, 64),
    opset: int = DEFAULT_OPSET,
    check_tensorrt: bool = True,
) -> Path:
    """Write ``graph`` to the ONNX file ``path`` (weights inside the file) and return the path.

    ``batch = (min, opt, max)``: the batch axis is dynamic within [min, max] (fixed when min == max).
    ``check_tensorrt``: fail if any node is outside TensorRT's ONNX parser support list.
    The graph keeps the model's dtype: export an fp16/bf16 model for a strongly typed TensorRT engine.
    The graph's metadata (model, config, how to draw the inputs) is stored in ``metadata_props``.
    """
    reason = onnx_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    import onnx

    batch = check_batch_range(batch)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(
            f"opset must lie in [{MIN_OPSET}, {MAX_OPSET}] (the exporter writes >= {MIN_OPSET}; TensorRT's parser "
            f"stops at {MAX_OPSET}), got {opset}"
        )
    p = next(graph.module.parameters())
    if p.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"export ONNX files from a float32, float16 or bfloat16 model, got {p.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = graph.example_inputs(_example_batch(batch), p.device)
    dynamic = graph.dynamic_shapes(batch) if batch[0] != batch[2] else None
    with backends.lowering("reference"), _quiet_exporter():
        torch.onnx.export(
            graph.module,
            inputs,
            str(path),
            input_names=list(graph.input_names),
            output_names=list(graph.output_names),
            dynamic_shapes=dynamic,
            opset_version=opset,
            dynamo=True,
            verbose=False,
            external_data=False,
            optimize=True,
        )
    model = onnx.load(str(path))
    written = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    if written != opset:
        raise RuntimeError(f"asked for opset {opset} but the exporter wrote opset {written}")
    meta = dict(graph.metadata)
    meta[BATCH_RANGE_KEY] = ":".join(map(str, batch))
    meta["fsgan_fast.torch"] = torch.__version__
    del model.metadata_props[:]
    for key, value in sorted(meta.items()):
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "fsgan_fast"
    onnx.checker.check_model(model)
    if check_tensorrt:
        check_tensorrt_parsable(model)
    onnx.save(model, str(path))
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``fsgan_fast.*`` metadata of an exported ONNX file."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


_ORT_FLOATS = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64}


class ORTGenerator:
    """An exported ONNX generator run by onnxruntime on torch tensors (CPU, or CUDA where the provider exists).

    Inputs are checked as :func:`check_inputs` says (batch range, index values), floats cast to the graph's
    input type (float32 or float16) and integers to int64; the output comes back on the CPU.
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no ONNX file at {path}")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(os.fspath(path), options, providers=providers or ["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, *inputs: Tensor) -> Tensor:
        check_inputs(self.metadata, self.input_names, inputs)
        feed = {}
        for meta, t in zip(self.session.get_inputs(), inputs):
            t = t.detach().cpu()
            if t.is_floating_point():
                if meta.type not in _ORT_FLOATS:
                    raise ValueError(f"input {meta.name!r} is {meta.type}, which cannot be fed from numpy")
                t = t.to(_ORT_FLOATS[meta.type])
            elif meta.type == "tensor(int64)":
                t = t.long()
            feed[meta.name] = t.contiguous().numpy()
        return torch.from_numpy(self.session.run(None, feed)[0])


def onnx_parity(
    path: str | os.PathLike, graph: GeneratorGraph, *, batch_sizes: tuple[int, ...] = (1, 3), seed: int = 0
) -> dict[str, float]:
    """:meth:`GeneratorGraph.compare` of the file run by onnxruntime (CPU) against the eager graph."""
    return graph.compare(ORTGenerator(path), batch_sizes, seed=seed)


__all__ = ["export_onnx", "onnx_parity", "read_metadata", "ORTGenerator", "onnx_unavailable", "DEFAULT_OPSET"]
