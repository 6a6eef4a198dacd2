"""The frame every model plugs into: a toy GAN registered from this file only (no library edit) trains, resumes,
generates and exports to ONNX through the generic CLI; a staged trainer resumes inside a stage exactly.

This is the proof that the next model (FastGAN, SinGAN, ...) needs no edit to ``cli.py`` or ``export/``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import fsgan_fast
from fsgan_fast import configs
from fsgan_fast.cli import main
from fsgan_fast.configs import option
from fsgan_fast.models import registry
from fsgan_fast.train.base import GANTrainer, RunOptions, Stage, TrainConfig, launch
from fsgan_fast.train.loop import DistEnv, LoopConfig, fit, load_checkpoint
from fsgan_fast.utils.images import make_grid, save_image

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------
# The toy model: z -> image (G), image -> logit (D), everything a model module would write


@dataclasses.dataclass
class ToyConfig:
    size: int = option(8, "image side", low=4)
    nz: int = option(4, "latent size", low=1)

    def __post_init__(self) -> None:
        configs.validate(self)


@dataclasses.dataclass
class ToyTrainConfig(TrainConfig):
    iters: int = option(3, "training steps", low=1)
    batch: int = option(4, "images per step", low=1)
    lr: float = option(1e-3, "Adam lr", low=0.0, low_open=True)
    sample_every: int = option(0, "steps between sample grids", low=0)
    ckpt_every: int = option(1, "steps between checkpoints", low=0)
    log_every: int = option(1, "steps between metrics lines", low=0)


@dataclasses.dataclass
class ToyExportOptions:
    tanh: bool = option(True, "squash the output (an export option of the toy)")

    def __post_init__(self) -> None:
        configs.validate(self)


@dataclasses.dataclass
class ToyGenerateOptions:
    prefix: str = option("img", "file name prefix")

    def __post_init__(self) -> None:
        configs.validate(self)


class ToyGAN(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.gen = nn.Linear(cfg.nz, 3 * cfg.size * cfg.size)
        self.dis = nn.Linear(3 * cfg.size * cfg.size, 1)

    def generate(self, z: Tensor, tanh: bool = True) -> Tensor:
        x = self.gen(z).view(-1, 3, self.cfg.size, self.cfg.size)
        return torch.tanh(x) if tanh else x


class ToyTrainer(GANTrainer):
    name = "toy"

    def __init__(self, model: ToyGAN, cfg: ToyTrainConfig, generator: torch.Generator, env: DistEnv = DistEnv()):
        super().__init__(model, cfg, generator, env=env)
        self.add_optimizer("g", model.gen.parameters())
        self.add_optimizer("d", model.dis.parameters())

    def train_step(self, real: Tensor) -> dict[str, Tensor]:
        z = torch.randn(real.shape[0], self.model.cfg.nz, generator=self.generator)
        fake = self.model.generate(z)
        d = (torch.relu(1 - self.model.dis(real.flatten(1))) + torch.relu(1 + self.model.dis(fake.detach().flatten(1)))).mean()
        self.optimizer_step("d", d)
        g = -self.model.dis(self.model.generate(z).flatten(1)).mean()
        self.optimizer_step("g", g)
        self.step += 1
        return {"d": d.detach(), "g": g.detach()}

    def sample_grid(self) -> Tensor:
        with torch.no_grad():
            z = torch.randn(4, self.model.cfg.nz, generator=torch.Generator().manual_seed(0))
            return make_grid(self.model.generate(z), nrow=4)


class ToySampler:
    def __init__(self, images: Tensor, batch: int, generator: torch.Generator):
        self.images, self.batch, self.generator = images, batch, generator

    def sample(self) -> Tensor:
        return self.images[torch.randint(len(self.images), (self.batch,), generator=self.generator)]


def toy_train(run: RunOptions, model_cfg: ToyConfig, train_cfg: ToyTrainConfig) -> Path:
    def setup(env, device, run_dir):
        torch.manual_seed(train_cfg.seed)
        data = torch.rand(16, 3, model_cfg.size, model_cfg.size, generator=torch.Generator().manual_seed(1)) * 2 - 1
        generator = torch.Generator().manual_seed(train_cfg.seed)
        return ToyTrainer(ToyGAN(model_cfg), train_cfg, generator, env), ToySampler(data, train_cfg.batch, generator), {}

    return launch(run, train_cfg, setup)


def toy_graph(model: ToyGAN, *, tanh: bool = True):
    from fsgan_fast.export.graphs import BATCH_INPUTS_KEY, GeneratorGraph

    class Inference(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, z):
            return self.m.generate(z, tanh)

    def sample(B, generator, device):
        return (torch.randn(B, model.cfg.nz, generator=generator).to(device),)

    return GeneratorGraph(model="toy", module=Inference(model).eval(), input_names=("z",), output_names=("images",),
                          batch_inputs=("z",), sample=sample,
                          metadata={"fsgan_fast.model": "toy", BATCH_INPUTS_KEY: json.dumps(["z"])})


def toy_generate(model, opts: ToyGenerateOptions, *, n, out, generator, batch_size):
    z = torch.randn(n, model.cfg.nz, generator=generator)
    return [save_image(img, out / f"{opts.prefix}{i}.png") for i, img in enumerate(model.generate(z))]


@dataclasses.dataclass
class ToyTranslateOptions:
    images: int = option(2, "how many images to translate")


def toy_translate(model, opts: ToyTranslateOptions, *, out, generator):
    z = torch.randn(opts.images, model.cfg.nz, generator=generator)
    return [save_image(img, out / f"translated{i}.png") for i, img in enumerate(model.generate(z))]


TOY = registry.ModelSpec(
    name="toy", summary="a toy GAN registered by the test suite", model_config=ToyConfig,
    train_config=ToyTrainConfig, build=ToyGAN, train=toy_train, graph=toy_graph, export_options=ToyExportOptions,
    model_types=(ToyGAN,), generate=toy_generate, generate_options=ToyGenerateOptions,
    presets={"small": {"nz": 2}, "large": {"nz": 6, "iters": 4}}, auto_preset=lambda data: "small",
    apps={"translate": registry.ModelApp(summary="toy translation", run=toy_translate, options=ToyTranslateOptions)},
)


@pytest.fixture
def toy():
    registry.register(TOY)
    yield TOY
    registry.unregister("toy")


# ---------------------------------------------------------------------------------------------------


def test_toy_model_appears_in_help(toy, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "toy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "toy", "--help"])
    text = capsys.readouterr().out
    for flag in ("--nz", "--size", "--iters", "--lr", "--amp", "--preset", "--resume", "--overwrite", "--config"):
        assert flag in text, flag
    assert "presets: small 2, large 6" in text  # preset values shown where they apply
    assert "toy" in registry.available() and "lofgan" in registry.available()


def test_toy_model_trains_resumes_generates_and_exports(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "toy", "--data", "builtin", "--out", str(run), "--no-progress"]) == 0
    state = load_checkpoint(run / "checkpoint.pt", "toy")
    assert state["step"] == 3 and state["trainer"]["config"]["nz"] == 2  # the 'small' preset applied
    assert main(["train", "toy", "--out", str(run), "--resume", "--iters", "5", "--no-progress"]) == 0
    assert load_checkpoint(run / "checkpoint.pt", "toy")["step"] == 5
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    model = fsgan_fast.load(run / "checkpoint.pt")
    assert isinstance(model, ToyGAN)

    gen = tmp_path / "gen"
    assert main(["generate", "toy", "--ckpt", str(run / "checkpoint.pt"), "--out", str(gen), "--n", "3",
                 "--prefix", "t"]) == 0
    assert sorted(p.name for p in gen.iterdir()) == ["t0.png", "t1.png", "t2.png"]

    # an app named "translate" is also the top-level `translate MODEL` command, with the same options
    for argv, folder in ((["translate", "toy"], "tr"), (["app", "toy", "translate"], "app")):
        assert main([*argv, "--ckpt", str(run / "checkpoint.pt"), "--out", str(tmp_path / folder), "--images", "3"]) == 0
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == [f"translated{i}.png" for i in range(3)]

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    capsys.readouterr()
    assert main(["export", "toy", "--ckpt", str(run / "checkpoint.pt"), "--format", "onnx",
                 "--out", str(tmp_path / "toy.onnx"), "--batch", "1:2:4", "--no-tanh"]) == 0
    out = capsys.readouterr().out
    assert "  ok: tolerance" in out and (tmp_path / "toy.onnx").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".toy.onnx")]  # no scratch left behind


def test_config_file_and_preset_precedence(toy, tmp_path):
    """dataclass default < preset < --config file < command line; a run's config.json feeds back in."""
    (tmp_path / "run.yaml").write_text("nz: 3\nlr: 0.002\ntrain_config:\n  batch: 2\n")
    run = tmp_path / "a"
    assert main(["train", "toy", "--config", str(tmp_path / "run.yaml"), "--data", "builtin", "--out", str(run),
                 "--preset", "large", "--lr", "0.004", "--no-progress"]) == 0
    state = load_checkpoint(run / "checkpoint.pt", "toy")["trainer"]
    assert state["config"]["nz"] == 3  # file over preset
    assert state["train"]["iters"] == 4  # preset over default
    assert state["train"]["batch"] == 2 and state["train"]["lr"] == 0.004  # command line over file
    # the run's own config.json reproduces the run
    again = tmp_path / "b"
    assert main(["train", "toy", "--config", str(run / "config.json"), "--out", str(again), "--no-progress"]) == 0
    assert load_checkpoint(again / "checkpoint.pt", "toy")["trainer"]["train"] == state["train"]


def test_config_file_errors(toy, tmp_path, capsys):
    cases = {"bad.yaml": ("nz: [1, 2\n", "not valid yaml"), "unknown.yaml": ("foo: 1\n", "unknown option"),
             "wrong.json": ('{"model": "lofgan"}', "is a 'lofgan' config"), "type.yaml": ("nz: abc\n", "integer")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "toy", "--config", str(tmp_path / name), "--data", "builtin", "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err.lower() and "Traceback" not in err, (name, err)
    assert not (tmp_path / "r").exists()


def test_plugin_entry_point_is_discovered(monkeypatch):
    """Third-party models register through the 'fsgan_fast.models' entry-point group."""
    import importlib.metadata

    class EntryPoint:
        name, value = "toy", "tests.test_model_frame:TOY"

        def load(self):
            return TOY

    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **kw: [EntryPoint()] if group == registry.ENTRY_POINT_GROUP else real(**kw))
    monkeypatch.setattr(registry, "_discovered", False)
    try:
        assert "toy" in registry.available()
    finally:
        registry.unregister("toy")


# ---------------------------------------------------------------------------------------------------
# Staged training (SinGAN's shape): per-stage optimisers, resume inside a stage


class StagedTrainer(ToyTrainer):
    """Two stages; the second trains D with a fresh optimiser at another lr (as a new SinGAN scale would)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.optimizers.clear()
        self.scalers.clear()

    def stages(self):
        return [Stage("coarse", 3), Stage("fine", 4)]

    def begin_stage(self, index: int) -> None:
        super().begin_stage(index)
        self.optimizers.clear()
        self.scalers.clear()
        lr = self.cfg.lr * (0.5 ** index)
        self.add_optimizer("g", self.model.gen.parameters(), lr=lr)
        self.add_optimizer("d", self.model.dis.parameters(), lr=lr)


def _staged_run(out: Path, iters_stop: int | None, resume: bool) -> dict:
    torch.manual_seed(0)
    model = ToyGAN(ToyConfig())
    cfg = ToyTrainConfig(iters=7)
    generator = torch.Generator().manual_seed(0)
    trainer = StagedTrainer(model, cfg, generator)
    data = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sampler = ToySampler(data, 4, generator)
    total = iters_stop or trainer.total_iters()
    fit(trainer, sampler, LoopConfig(out, total, log_every=1, sample_every=0, ckpt_every=1, progress=False),
        resume=out / "checkpoint.pt" if resume else None)
    return load_checkpoint(out / "checkpoint.pt", "toy")


def test_staged_training_resumes_inside_a_stage(tmp_path):
    whole = _staged_run(tmp_path / "a", None, False)
    _staged_run(tmp_path / "b", 5, False)  # stops in the middle of stage 1
    part = load_checkpoint(tmp_path / "b" / "checkpoint.pt", "toy")
    assert part["trainer"]["stage"] == 1 and part["step"] == 5
    resumed = _staged_run(tmp_path / "b", None, True)
    assert resumed["step"] == whole["step"] == 7 and resumed["trainer"]["stage"] == 1
    for key in ("model", "opt_g", "opt_d"):
        torch.testing.assert_close(resumed["trainer"][key], whole["trainer"][key], rtol=0, atol=0, msg=key)
    assert resumed["trainer"]["opt_g"]["param_groups"][0]["lr"] == pytest.approx(5e-4)  # stage 1's own optimiser


# ---------------------------------------------------------------------------------------------------
# What the frame promises about the code itself


def test_cli_and_export_name_no_model():
    files = [ROOT / "fsgan_fast" / "cli.py", *sorted((ROOT / "fsgan_fast" / "export").glob("*.py"))]
    offenders = [f.name for f in files if re.search("lofgan", f.read_text(), re.IGNORECASE)]
    assert not offenders, f"model names in generic code: {offenders}"


def test_kernels_import_nothing_of_fsgan_fast():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                assert "fsgan_fast" not in stripped, f"{path.name}: {stripped}"
