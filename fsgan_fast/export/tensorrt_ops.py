"""Can TensorRT's ONNX parser take this graph? A static check that needs neither TensorRT nor a GPU.

The allow-list below holds the operators marked supported in the onnx-tensorrt support matrix
(``docs/operators.md``) of TensorRT 8.5, every one of which TensorRT 10.x still parses; 10.0 parses
opsets 9 to 20. Being a subset keeps the check conservative: a graph that passes parses on 8.5 and on
10.x. The restrictions that matter for generators (Resize modes, constant weights and axes) are checked
too. Update :data:`TENSORRT_VERSION` and the lists together.
"""

from __future__ import annotations

import os

TENSORRT_VERSION = "8.5 support matrix (a subset of 10.x)"
MIN_OPSET, MAX_OPSET = 9, 20  # TensorRT 10.0's parser

TENSORRT_ONNX_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
    Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
    Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSigmoid HardSwish
    Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN
    LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
    RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
    Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
    Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDINATES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})
RESIZE_NEAREST = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
# (op, input index) that the parser needs as a constant (initializer or Constant node)
CONSTANT_INPUTS = {("Conv", 1), ("ConvTranspose", 1), ("Slice", 3), ("Squeeze", 1), ("Unsqueeze", 1), ("TopK", 1)}


def _attr(node, name: str, default: str) -> str:
    for a in node.attribute:
        if a.name == name:
            return a.s.decode() if isinstance(a.s, bytes) else str(a.s)
    return default


def _walk(graph):
    """Every node of ``graph`` and of its subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.HasField("g"):
                yield from _walk(a.g)
            for g in a.graphs:
                yield from _walk(g)


def tensorrt_problems(model) -> list[str]:
    """What TensorRT's ONNX parser would reject in ``model`` (an ``onnx.ModelProto`` or a path); [] if nothing."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model), load_external_data=False)
    problems: list[str] = []
    for opset in model.opset_import:  # an imported custom domain is harmless until a node uses it (below)
        if opset.domain in ("", "ai.onnx") and not MIN_OPSET <= opset.version <= MAX_OPSET:
            problems.append(f"opset {opset.version} is outside TensorRT's {MIN_OPSET}..{MAX_OPSET}")
    if model.functions:
        problems.append(f"{len(model.functions)} ONNX local function(s): inline them before TensorRT")
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in _walk(model.graph) if n.op_type == "Constant" for o in n.output}
    for node in _walk(model.graph):
        where = f"{node.op_type} node {node.name or '(unnamed)'}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where} is in custom domain {node.domain!r} (TensorRT would need a plugin)")
            continue
        if node.op_type not in TENSORRT_ONNX_OPS:
            problems.append(f"{where}: operator not in TensorRT's ONNX parser support list")
            continue
        for op, index in CONSTANT_INPUTS:
            if node.op_type == op and len(node.input) > index and node.input[index] and node.input[index] not in constants:
                problems.append(f"{where}: input {index} ({node.input[index]}) must be a constant for TensorRT")
        if node.op_type == "Resize":
            mode = _attr(node, "mode", "nearest")
            coords = _attr(node, "coordinate_transformation_mode", "half_pixel")
            nearest = _attr(node, "nearest_mode", "round_prefer_floor")
            if mode not in RESIZE_MODES:
                problems.append(f"{where}: mode {mode!r} not in {sorted(RESIZE_MODES)}")
            if coords not in RESIZE_COORDINATES:
                problems.append(f"{where}: coordinate_transformation_mode {coords!r} not supported")
            if mode == "nearest" and nearest not in RESIZE_NEAREST:
                problems.append(f"{where}: nearest_mode {nearest!r} not supported")
    return problems


def check_tensorrt_parsable(model) -> None:
    """Raise ``ValueError`` listing every problem :func:`tensorrt_problems` finds."""
    problems = tensorrt_problems(model)
    if problems:
        raise ValueError("the ONNX graph is not parsable by TensorRT:\n  " + "\n  ".join(problems))


__all__ = ["TENSORRT_ONNX_OPS", "TENSORRT_VERSION", "tensorrt_problems", "check_tensorrt_parsable"]
