"""The local fusion op under export: lowering to standard ops, ONNX parity with onnxruntime, TensorRT's list."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fsgan_fast import backends
from fsgan_fast.ops import lfm
from tests.ops.test_lfm import make_inputs

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from fsgan_fast.export import tensorrt_problems  # noqa: E402
from fsgan_fast.export.onnx import ORTGenerator  # noqa: E402


class FuseThenApply(nn.Module):
    """lfm_fuse on features, then lfm_apply of the recorded matches on a second tensor (the loss's pattern)."""

    def forward(self, feats, x, base, positions, alpha):
        fused, ref_idx = lfm.lfm_fuse(feats, base, positions, alpha, check_indices=False)
        applied = lfm.lfm_apply(x, base, positions, ref_idx, alpha, check_indices=False)
        return fused, ref_idx, applied


def _inputs(B, seed):
    feats, base, positions, alpha = make_inputs(B, 3, 16, 5, 7, 17, seed=seed)
    x = torch.randn(B, 3, 3, 5, 7, generator=torch.Generator().manual_seed(seed + 100))
    return feats, x, base, positions, alpha


def _op_names(program: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


def test_lfm_lowering_reference_leaves_only_aten_ops():
    args = _inputs(2, 0)
    with backends.lowering("reference"):
        program = torch.export.export(FuseThenApply(), args)
    names = _op_names(program)
    assert not [n for n in names if "fsgan_fast" in n], names
    assert any("argmax" in n for n in names) and any("scatter" in n for n in names)


def test_lfm_lowering_native_calls_private_kernels():
    if backends.why_unavailable("lfm_fuse", "cpu", torch.device("cpu")) is not None:
        pytest.skip("the CPU kernel of fsgan_fast._C is not built")
    args = _inputs(2, 0)
    with backends.lowering("native"):
        program = torch.export.export(FuseThenApply(), args)
    names = _op_names(program)
    assert "fsgan_fast._lfm_fuse_cpu.default" in names and "fsgan_fast._lfm_apply_cpu.default" in names, names
    fused, ref_idx, applied = program.module()(*args)
    exp_fused, exp_idx = lfm.lfm_fuse_reference(*[a for i, a in enumerate(args) if i != 1])
    assert torch.equal(ref_idx, exp_idx)
    torch.testing.assert_close(fused, exp_fused.float(), rtol=1e-5, atol=1e-5)


def test_lfm_without_lowering_keeps_the_custom_op():
    program = torch.export.export(FuseThenApply(), _inputs(2, 0))
    assert "fsgan_fast.lfm_fuse.default" in _op_names(program)


def test_lowering_rejects_unknown_mode_and_restores():
    with pytest.raises(ValueError, match="unknown lowering 'onnx'"):
        with backends.lowering("onnx"):
            pass
    with backends.lowering("reference"):
        with backends.lowering("native"):
            assert backends.active_lowering() == "native"
        assert backends.active_lowering() == "reference"
    assert backends.active_lowering() is None


def test_lfm_onnx_matches_reference_with_dynamic_batch(tmp_path):
    path = tmp_path / "lfm.onnx"
    batch = torch.export.Dim("batch", min=1, max=32)
    dims = {"feats": {0: batch}, "x": {0: batch}, "base": {0: batch}, "positions": {0: batch}, "alpha": {0: batch}}
    with backends.lowering("reference"):
        torch.onnx.export(FuseThenApply().eval(), _inputs(2, 0), str(path), dynamo=True, dynamic_shapes=dims,
                          input_names=list(dims), output_names=["fused", "ref_idx", "applied"], opset_version=18)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"MatMul", "ArgMax", "GatherElements", "ScatterElements"} <= ops, ops
    assert tensorrt_problems(model) == []
    session = ORTGenerator(path).session
    for B, seed in ((1, 1), (5, 2)):
        args = _inputs(B, seed)
        got = session.run(None, {k: v.numpy() for k, v in zip(dims, args)})
        feats, x, base, positions, alpha = (a.double() if a.is_floating_point() else a for a in args)
        exp_fused, exp_idx = lfm.lfm_fuse_reference(feats, base, positions, alpha)
        exp_applied = lfm.lfm_apply_reference(x, base, positions, exp_idx, alpha)
        assert torch.equal(torch.from_numpy(got[1]), exp_idx), f"matches differ at batch {B}"
        torch.testing.assert_close(torch.from_numpy(got[0]).double(), exp_fused, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(got[2]).double(), exp_applied, rtol=1e-5, atol=1e-5)
