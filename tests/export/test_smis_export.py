"""Few-shot SMIS's mask -> image graph through the deployment paths that run here: the graph against the model (fixed
or input noise, style mixing), ONNX through ``fsgan-fast export smis`` (onnxruntime parity, dynamic batch, TensorRT's
parser list, metadata, index bounds), torch.export, and AOTInductor (slow)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fsgan_fast.models.smis import SMIS, SMISConfig
from fsgan_fast.nn.psp import EncoderConfig
from fsgan_fast.nn.stylegan2 import StyleGAN2Config

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from fsgan_fast import export  # noqa: E402
from fsgan_fast.export.aoti import graph_ops  # noqa: E402

NC = 5
CFG = SMISConfig(stylegan=StyleGAN2Config(size=32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16),
                 encoder=EncoderConfig(blocks=(1, 1, 1, 1), widths=(8, 8, 16, 16)), label_nc=NC)
PARITY = 1e-4


def _trained_like_model(seed: int = 0) -> SMIS:
    """An SMIS whose encoder BatchNorms hold real statistics, whose prior's noise inputs are live and whose
    latent_avg is not zero (a fresh model would hide a graph that drops any of them)."""
    torch.manual_seed(seed)
    model = SMIS(CFG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.2)
        model.set_latent_avg(model.decoder.mean_latent(128, generator=g))
        model.train()
        for _ in range(2):
            coarse = torch.randint(NC, (4, 1, 4, 4), generator=g).float()
            ids = F.interpolate(coarse, size=32, mode="nearest")[:, 0].long()
            model.encode(ids)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> SMIS:
    return _trained_like_model()


def test_graph_is_the_model(model):
    """The unfused graph computes the model's mask -> image, with the fixed noise or given maps, and with z's style
    in the mixed layers."""
    graph = export.generator_graph(model, latent_mask="auto", noise="input")
    mask, z, *noise = graph.example_inputs(3, seed=2)
    assert graph.input_names[:2] == ("mask", "z") and len(noise) == model.decoder.num_layers
    with torch.no_grad():
        codes = model.encode(mask)
        codes[:, model.n_latent // 2:] = model.decoder.get_latent(z).unsqueeze(1)
        expected = model.decoder(codes, input_is_latent=True, noise=noise).image
        got = graph.module(mask, z, *noise)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
        plain = export.generator_graph(model).module(mask)
        torch.testing.assert_close(plain, model(mask), rtol=1e-5, atol=1e-5)
        blended = export.generator_graph(model, latent_mask="0-3", alpha=0.5).module(mask, z)
        codes = model.encode(mask)
        codes[:, :4] = 0.5 * codes[:, :4] + 0.5 * model.decoder.get_latent(z).unsqueeze(1)
        torch.testing.assert_close(blended, model.synthesize(codes), rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3, "mixing and noise inputs must change the images"
    assert graph.module is not None and not graph.module.training


def test_graph_options_are_checked(model):
    with pytest.raises(ValueError, match="noise must be 'fixed' or 'input'"):
        export.generator_graph(model, noise="random")
    with pytest.raises(ValueError, match="out of range"):
        export.generator_graph(model, latent_mask="3-40")
    with pytest.raises(TypeError, match="unexpected keyword"):
        export.generator_graph(model, use_ema=False)


def test_export_program_holds_standard_ops_only(model):
    graph = export.generator_graph(model, latent_mask="auto")
    assert graph_ops(export.export_program(graph, batch=(1, 2, 4), lowering="reference")) == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    """A checkpoint as training writes it (model, config, trainer state), without the cost of a run."""
    from fsgan_fast.data.mask_pairs import builtin_pairs
    from fsgan_fast.train.loop import DistEnv, checkpoint_state, save_checkpoint
    from fsgan_fast.train.smis import SMISTrainConfig, SMISTrainer

    trainer = SMISTrainer(model, SMISTrainConfig(perceptual="none"), torch.Generator().manual_seed(0),
                          builtin_pairs(32, NC).first(1))
    path = tmp_path_factory.mktemp("smis-ckpt") / "checkpoint.pt"
    save_checkpoint(path, checkpoint_state(trainer, 0, DistEnv()))
    model.eval()
    return path


def test_cli_export_onnx_with_mixing_and_noise_inputs(checkpoint, tmp_path, capsys):
    from fsgan_fast.cli import main

    out = tmp_path / "smis.onnx"
    assert main(["export", "smis", "--ckpt", str(checkpoint), "--format", "onnx", "--out", str(out), "--batch",
                 "1:2:3", "--latent-mask", "auto", "--noise", "input"]) == 0
    text = capsys.readouterr().out
    assert "vs fp32 PyTorch at batch [1, 2, 3]" in text and "  ok: tolerance" in text
    onnx_model = onnx.load(str(out))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx_model.graph.input}
    batch = dims["mask"][0]
    assert isinstance(batch, str) and dims["mask"] == [batch, 32, 32] and dims["z"] == [batch, 16]
    assert dims["noise0"] == [batch, 1, 4, 4] and dims["noise6"] == [batch, 1, 32, 32]
    assert export.tensorrt_problems(onnx_model) == []
    assert not {n.domain for n in onnx_model.graph.node} - {"", "ai.onnx"}
    meta = export.read_metadata(out)
    assert meta["fsgan_fast.model"] == "smis" and meta["fsgan_fast.latent_mask"] == "4,5,6,7"
    assert meta["fsgan_fast.noise"] == "input" and json.loads(meta["fsgan_fast.index_bounds"]) == {"mask": NC}
    assert json.loads(meta["fsgan_fast.config"])["label_nc"] == NC

    runner = export.ORTGenerator(out)
    graph = export.generator_graph(model_from(checkpoint), latent_mask="auto", noise="input")
    inputs = graph.example_inputs(2, seed=5)
    torch.testing.assert_close(runner(*inputs), graph.run(*inputs), rtol=1e-4, atol=1e-4)
    bad = (torch.full_like(inputs[0], NC),) + inputs[1:]
    with pytest.raises(ValueError, match=r"input 'mask' must lie in \[0, 5\)"):
        runner(*bad)


def model_from(path):
    from fsgan_fast.train.smis import load_smis

    return load_smis(path)


@pytest.mark.slow
def test_aoti_reference_package_matches(model, tmp_path):
    graph = export.generator_graph(model, latent_mask="auto")
    runner = export.AOTIGenerator(export.package_aoti(graph, tmp_path / "smis.pt2", batch=(1, 2, 4),
                                                      lowering="reference"))
    assert runner.input_names == ("mask", "z") and runner.metadata["fsgan_fast.model"] == "smis"
    errs = graph.compare(runner, (1, 3))
    assert errs["max_rel_err"] <= PARITY, errs


@pytest.mark.gpu
def test_aoti_cuda(model, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    graph = export.generator_graph(model, latent_mask="auto").to(device="cuda")
    runner = export.AOTIGenerator(export.package_aoti(graph, tmp_path / "smis.pt2", batch=(1, 4, 8),
                                                      lowering="reference"))
    errs = graph.compare(runner, (1, 5, 8))
    assert errs["max_rel_err"] <= PARITY, errs
