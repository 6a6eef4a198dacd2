"""MatchGAN's generator through the registry's export paths that run here: ONNX (onnxruntime parity at several batch
sizes, image and target labels as live inputs, TensorRT's parser list), torch.export + AOTInductor (reference lowering,
loaded by a process without fsgan_fast), and ``fsgan-fast export matchgan`` on a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from fsgan_fast.models.matchgan import Generator, MatchGAN, MatchGANConfig

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from fsgan_fast import export  # noqa: E402
from fsgan_fast.cli import main  # noqa: E402
from fsgan_fast.export.aoti import graph_ops  # noqa: E402
from tests.export.aoti_child import run_in_child  # noqa: E402

CFG = MatchGANConfig(size=16, g_conv_dim=4, d_conv_dim=4, g_repeat_num=2, d_repeat_num=3,
                     labels=("Gray", "Red_Tint", "Blue_Tint", "Blurred"), exclusive=("Red_Tint,Blue_Tint",),
                     classes=("0000", "1000", "0100", "1001", "0011"))
PARITY = 1e-4  # fp32 max relative error


def trained_like(seed: int = 0) -> MatchGAN:
    """A small MatchGAN whose norm layers are not the identity (a fresh one has InstanceNorm weight 1, bias 0) and
    whose EMA copy differs from G."""
    torch.manual_seed(seed)
    model = MatchGAN(CFG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.gen.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
        model.enable_ema()
        for p in model.gen_ema.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> MatchGAN:
    return trained_like()


def _input_dims(onnx_model) -> dict[str, list]:
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx_model.graph.input}


def test_matchgan_onnx_parity_dynamic_batch(model, tmp_path):
    graph = export.generator_graph(model)
    path = export.export_onnx(graph, tmp_path / "g.onnx", batch=(1, 2, 4))
    onnx_model = onnx.load(str(path))
    dims = _input_dims(onnx_model)
    assert list(dims) == ["image", "labels"] == list(graph.input_names)
    batch = dims["image"][0]
    assert isinstance(batch, str) and dims["image"] == [batch, 3, 16, 16] and dims["labels"] == [batch, 4]
    assert [o.name for o in onnx_model.graph.output] == ["images"]
    assert export.tensorrt_problems(onnx_model) == []
    assert not {n.domain for n in onnx_model.graph.node} - {"", "ai.onnx"}
    assert {"Conv", "ConvTranspose", "Tanh"} <= {n.op_type for n in onnx_model.graph.node}

    errs = export.onnx_parity(path, graph, batch_sizes=(1, 3, 4))
    assert errs["max_rel_err"] <= PARITY, errs

    meta = export.read_metadata(path)
    assert meta["fsgan_fast.model"] == "matchgan" and meta["fsgan_fast.generator"] == "gen_ema"
    assert json.loads(meta["fsgan_fast.config"]) == CFG.to_dict()
    assert json.loads(meta["fsgan_fast.labels"]) == ["Gray", "Red_Tint", "Blue_Tint", "Blurred"]
    assert json.loads(meta["fsgan_fast.batch_inputs"]) == ["image", "labels"]
    assert "labels: [B, 4] target attributes" in meta["fsgan_fast.inputs"]

    runner = export.ORTGenerator(path)
    image, labels = graph.example_inputs(2, seed=4)
    out = runner(image, labels)
    assert out.shape == (2, 3, 16, 16) and out.std() > 1e-2
    other = runner(image, 1 - labels)  # the labels are a live input
    assert (other - out).abs().max() > 1e-3


def test_matchgan_graph_is_the_generator(model):
    graph = export.generator_graph(model)
    image, labels = graph.example_inputs(3, seed=7)
    assert image.shape == (3, 3, 16, 16) and float(image.min()) >= -1 and float(image.max()) <= 1
    classes = {tuple(v) for v in CFG.class_vectors().tolist()}
    assert all(tuple(v) in classes for v in labels.tolist())  # inputs drawn among the trained classes
    with torch.no_grad():
        torch.testing.assert_close(graph.module(image, labels), model.gen_ema(image, labels))
        plain = export.generator_graph(model, use_ema=False)
        torch.testing.assert_close(plain.module(image, labels), model.gen(image, labels))
    assert plain.metadata["fsgan_fast.generator"] == "gen"
    bare = export.generator_graph(model.gen)  # a bare Generator goes through the registry too
    assert isinstance(bare.module.gen, Generator) and bare.model == "matchgan" and bare.module.gen is not model.gen
    with pytest.raises(TypeError, match="unexpected keyword"):
        export.generator_graph(model, noise="zero")  # FastGAN's option, not MatchGAN's


def test_matchgan_export_program_holds_no_fsgan_fast_op(model):
    graph = export.generator_graph(model)
    assert graph_ops(export.export_program(graph, batch=(1, 2, 4), lowering="reference")) == []


@pytest.mark.slow
def test_matchgan_aoti_reference_loads_without_fsgan_fast(model, tmp_path):
    graph = export.generator_graph(model)
    path = export.package_aoti(graph, tmp_path / "g.pt2", batch=(1, 2, 4), lowering="reference")
    inputs = graph.example_inputs(3, seed=3)
    out, lowering = run_in_child(path, inputs, tmp_path)
    assert lowering == "reference"
    expected = graph.run(*inputs)
    assert (out - expected).abs().max() <= PARITY * expected.abs().max()
    runner = export.AOTIGenerator(path)
    assert runner.input_names == ("image", "labels")
    with pytest.raises(ValueError, match=r"batch 5, outside the export's range \[1, 4\]"):
        runner(*graph.example_inputs(5))


@pytest.mark.gpu
def test_matchgan_aoti_cuda(model, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    graph = export.generator_graph(model).to(device="cuda")
    runner = export.AOTIGenerator(export.package_aoti(graph, tmp_path / "g.pt2", batch=(1, 8, 32)))
    errs = graph.compare(runner, (1, 7, 32))
    assert errs["max_rel_err"] <= PARITY, errs


def test_cli_export_matchgan(model, tmp_path, capsys):
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "model": "matchgan", "step": 0,
                "trainer": {"config": CFG.to_dict(), "model": model.state_dict()}, "rng": []}, ckpt)
    out = tmp_path / "g.onnx"
    assert main(["export", "matchgan", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(out),
                 "--batch", "1:2:3", "--no-ema"]) == 0
    text = capsys.readouterr().out
    assert "vs fp32 PyTorch at batch [1, 2, 3]" in text and "  ok: tolerance" in text
    meta = export.read_metadata(out)
    assert meta["fsgan_fast.generator"] == "gen" and meta["fsgan_fast.batch_range"] == "1:2:3"
    assert list(_input_dims(onnx.load(str(out)))) == ["image", "labels"]
