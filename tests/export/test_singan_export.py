"""SinGAN's whole pyramid as one ONNX graph (a noise input per scale, the resizes between scales lowered to standard
ops) with onnxruntime parity at several batch sizes, and ``fsgan-fast export singan`` on a trained-like checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from tests.models.test_singan import SIZES, trained_like

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from fsgan_fast import export  # noqa: E402
from fsgan_fast.cli import main  # noqa: E402

PARITY = 1e-4


def test_singan_onnx_parity_dynamic_batch(tmp_path):
    model = trained_like(seed=1)
    graph = export.generator_graph(model)
    path = export.export_onnx(graph, tmp_path / "g.onnx", batch=(1, 2, 4))
    onnx_model = onnx.load(str(path))
    assert [i.name for i in onnx_model.graph.input] == ["noise0", "noise1", "noise2"]
    assert not {n.domain for n in onnx_model.graph.node} - {"", "ai.onnx"}  # standard ops only
    errs = export.onnx_parity(path, graph, batch_sizes=(1, 3, 4))
    assert errs["max_rel_err"] <= PARITY, errs
    meta = export.read_metadata(path)
    assert meta["fsgan_fast.model"] == "singan" and json.loads(meta["fsgan_fast.config"])["heights"] == [20, 25, 32]
    out = export.ORTGenerator(path)(*graph.example_inputs(2, seed=3))
    assert out.shape == (2, 3, *SIZES[-1]) and out.std() > 1e-3


def test_singan_export_command(tmp_path, capsys):
    model = trained_like(seed=2)
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "model": "singan", "step": 0,
                "trainer": {"config": model.cfg.to_dict(), "model": model.state_dict()}, "rng": []}, ckpt)
    assert main(["export", "singan", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "s.onnx"),
                 "--batch", "1:2:2", "--scale-h", "1.5"]) == 0
    assert "ok" in capsys.readouterr().out
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in onnx.load(str(tmp_path / "s.onnx")).graph.input]
    assert dims[-1][1:] == [3, 32, 72]  # the output 1.5x wider


@pytest.mark.slow
def test_singan_aoti_reference_lowering(tmp_path):
    """torch.export + AOTInductor of the whole pyramid (the resizes lowered to standard ops), against eager."""
    model = trained_like(seed=4)
    graph = export.generator_graph(model)
    path = export.package_aoti(graph, tmp_path / "g.pt2", batch=(1, 2, 4), lowering="reference")
    runner = export.AOTIGenerator(path)
    inputs = graph.example_inputs(3, seed=5)
    out = runner(*inputs)
    out = out[0] if isinstance(out, (list, tuple)) else out
    expected = graph.run(*inputs)
    assert (out - expected).abs().max() <= PARITY * expected.abs().max()
