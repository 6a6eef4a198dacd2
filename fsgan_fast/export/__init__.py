"""Deployment: ONNX (standard ops, TensorRT-parsable), TensorRT engines, torch.export + AOTInductor.

Every path traces a :class:`GeneratorGraph` (tensors in, images out, randomness as inputs) built by
:func:`generator_graph`, with the hot-path ops lowered by :func:`lowering`.
"""

from fsgan_fast.backends import lowering
from fsgan_fast.export.aoti import AOTIGenerator, export_program, package_aoti
from fsgan_fast.export.graphs import GeneratorGraph, generator_graph, parse_batch_range
from fsgan_fast.export.onnx import ORTGenerator, export_onnx, onnx_parity, read_metadata
from fsgan_fast.export.tensorrt_ops import check_tensorrt_parsable, tensorrt_problems

__all__ = [
    "lowering",
    "GeneratorGraph",
    "generator_graph",
    "parse_batch_range",
    "export_onnx",
    "onnx_parity",
    "read_metadata",
    "ORTGenerator",
    "check_tensorrt_parsable",
    "tensorrt_problems",
    "export_program",
    "package_aoti",
    "AOTIGenerator",
]
