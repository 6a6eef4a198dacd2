"""Runs and inputs that never lose a user's work: each case a new user hit on the CLI, now a one-line error
(exit 2, no traceback) or a refusal that leaves the run as it was.

Most cases use the toy model of ``test_model_frame`` (steps take milliseconds); LoFGAN's own files
(``split.json``, checkpoints of the format before the registry) use a 16 px LoFGAN.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from fsgan_fast.cli import main
from fsgan_fast.models import registry
from fsgan_fast.train.loop import load_checkpoint, save_checkpoint
from tests.test_model_frame import TOY, ToyTrainer, toy  # noqa: F401  (the fixture registers the toy model)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD_LOFGAN = FIXTURES / "lofgan_format1_fdb699d.pt"  # written by fdb699d, before the registry


def run_cli(argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of ``fsgan-fast argv``; fails on a traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def toy_run(toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "toy", "--data", "builtin", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    return out


def test_existing_run_is_not_overwritten_silently(toy_run, capsys):
    before = snapshot(toy_run)
    code, err = run_cli(["train", "toy", "--data", "builtin", "--out", toy_run, "--no-progress"], capsys)
    assert code == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(toy_run) == before
    # --overwrite replaces it: old metrics and samples gone, a fresh run from step 1
    assert main(["train", "toy", "--data", "builtin", "--out", str(toy_run), "--overwrite", "--iters", "2",
                 "--no-progress"]) == 0
    assert load_checkpoint(toy_run / "checkpoint.pt", "toy")["step"] == 2
    assert [json.loads(x)["step"] for x in (toy_run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("bad", [["--lr", "-1"], ["--lr", "nan"], ["--iters", "0"], ["--betas", "0.5"],
                                 ["--amp", "fp8"], ["--nz", "0"]])
def test_bad_option_writes_nothing(toy_run, capsys, bad):
    """Validation happens before any file of the run is touched (also with --overwrite and --resume)."""
    before = snapshot(toy_run)
    for mode in (["--overwrite"], ["--resume", "--iters", "9"]):
        code, err = run_cli(["train", "toy", "--data", "builtin", "--out", toy_run, *mode, *bad, "--no-progress"],
                            capsys)
        assert code == 2 and "error:" in err, err
    assert snapshot(toy_run) == before


def test_resume_refuses_changed_model_and_nothing_to_do(toy_run, capsys):
    code, err = run_cli(["train", "toy", "--out", toy_run, "--resume", "--iters", "5", "--nz", "7"], capsys)
    assert code == 2 and "nz (checkpoint 2, now 7)" in err
    code, err = run_cli(["train", "toy", "--out", toy_run, "--resume", "--iters", "2"], capsys)
    assert code == 2 and "at step 3" in err and "nothing to train" in err
    code, err = run_cli(["train", "toy", "--out", toy_run, "--resume", "--iters", "5", "--lr", "0.5"], capsys)
    assert code == 2 and "lr (checkpoint" in err and "may change only" in err


def test_paths_and_devices(toy, toy_run, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run_cli(["train", "toy", "--data", "builtin", "--out", afile], capsys)
    assert code == 2 and "is a file" in err
    code, err = run_cli(["train", "toy", "--out", toy_run, "--resume", tmp_path / "nope.pt", "--iters", "5"], capsys)
    assert code == 2 and "does not exist" in err
    if not torch.cuda.is_available():
        code, err = run_cli(["train", "toy", "--data", "builtin", "--out", tmp_path / "c", "--device", "cuda"], capsys)
        assert code == 2 and "no CUDA device" in err and not (tmp_path / "c").exists()
    code, err = run_cli(["train", "toy", "--data", "builtin", "--out", tmp_path / "d", "--device", "tpu9"], capsys)
    assert code == 2 and "device" in err


def test_generate_checks_out_before_generating(toy_run, tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    called = []
    registry.register(dataclasses.replace(TOY, generate=lambda *a, **k: called.append(1) or []), replace=True)
    for out in (afile, afile / "sub"):
        code, err = run_cli(["generate", "toy", "--ckpt", toy_run / "checkpoint.pt", "--out", out], capsys)
        assert code == 2 and ("is a file" in err or "cannot write" in err), err
    assert not called


def test_damaged_checkpoints(toy_run, tmp_path, capsys):
    state = load_checkpoint(toy_run / "checkpoint.pt", "toy")
    # NaN weights: generation would write black images
    bad = {**state, "trainer": {**state["trainer"], "model": {k: v.clone() for k, v in state["trainer"]["model"].items()}}}
    bad["trainer"]["model"]["gen.weight"][0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", bad)
    code, err = run_cli(["generate", "toy", "--ckpt", tmp_path / "nan.pt", "--out", tmp_path / "g"], capsys)
    assert code == 2 and "NaN/inf weights" in err and "gen.weight" in err
    # a missing entry, on generate and on resume
    missing = {**state, "trainer": {k: v for k, v in state["trainer"].items() if k != "opt_g"}}
    save_checkpoint(toy_run / "checkpoint.pt", missing)
    code, err = run_cli(["train", "toy", "--out", toy_run, "--resume", "--iters", "5"], capsys)
    assert code == 2 and "'opt_g'" in err
    no_model = {**state, "trainer": {k: v for k, v in state["trainer"].items() if k != "model"}}
    save_checkpoint(tmp_path / "nomodel.pt", no_model)
    code, err = run_cli(["generate", "toy", "--ckpt", tmp_path / "nomodel.pt", "--out", tmp_path / "g"], capsys)
    assert code == 2 and "no model config or weights" in err
    # a config this version cannot build, and weights that do not fit it
    odd = {**state, "trainer": {**state["trainer"], "config": {**state["trainer"]["config"], "nz": 0}}}
    save_checkpoint(tmp_path / "odd.pt", odd)
    code, err = run_cli(["generate", "toy", "--ckpt", tmp_path / "odd.pt", "--out", tmp_path / "g"], capsys)
    assert code == 2 and "cannot be built" in err
    other = {**state, "trainer": {**state["trainer"], "config": {**state["trainer"]["config"], "nz": 5}}}
    save_checkpoint(tmp_path / "other.pt", other)
    code, err = run_cli(["generate", "toy", "--ckpt", tmp_path / "other.pt", "--out", tmp_path / "g"], capsys)
    assert code == 2 and "do not fit" in err
    code, err = run_cli(["generate", "lofgan", "--ckpt", tmp_path / "other.pt", "--shots", "a.png", "b.png",
                         "--out", tmp_path / "g"], capsys)
    assert code == 2 and "a 'toy' checkpoint, not a 'lofgan' one" in err


def test_half_written_metrics_line_on_resume(toy_run, capsys):
    with (toy_run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "d": 0.')  # the run was killed while writing
    with pytest.warns(RuntimeWarning, match="unreadable line"):
        assert main(["train", "toy", "--out", str(toy_run), "--resume", "--iters", "5", "--no-progress"]) == 0
    assert [json.loads(x)["step"] for x in (toy_run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_ctrl_c_prints_one_line_and_keeps_the_checkpoint(toy, tmp_path, capsys, monkeypatch):
    real = ToyTrainer.train_step

    def interrupted(self, batch):
        if self.step == 2:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(ToyTrainer, "train_step", interrupted)
    code, err = run_cli(["train", "toy", "--data", "builtin", "--out", tmp_path / "r", "--iters", "5",
                         "--no-progress"], capsys)
    assert code == 130 and err.count("\n") == 1 and "interrupted at step 2" in err and "(step 2) is intact" in err
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt", "toy")["step"] == 2
    monkeypatch.setattr(ToyTrainer, "train_step", real)
    assert main(["train", "toy", "--out", str(tmp_path / "r"), "--resume", "--iters", "5", "--no-progress"]) == 0


def test_failed_export_keeps_the_good_file(toy_run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fsgan_fast import export

    target = tmp_path / "g.onnx"
    assert main(["export", "toy", "--ckpt", str(toy_run / "checkpoint.pt"), "--format", "onnx", "--out", str(target),
                 "--batch", "1:2:2"]) == 0
    good = target.read_bytes()

    class Broken:
        def __init__(self, path):
            pass

        def __call__(self, z):
            return torch.zeros(z.shape[0], 3, 8, 8)

    monkeypatch.setattr(export, "ORTGenerator", Broken)
    code, err = run_cli(["export", "toy", "--ckpt", toy_run / "checkpoint.pt", "--format", "onnx", "--out", target,
                         "--batch", "1:2:2", "--no-tanh"], capsys)
    assert code == 2 and "does not match" in err and "left as it was" in err
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "run"]  # no scratch folder left


# ---------------------------------------------------------------------------------------------------
# LoFGAN's own files

TINY_LOFGAN = ["--size", "16", "--gen-channels", "4,8", "--dis-channels", "4", "--dis-max-channels", "8",
               "--shots", "2", "--batch", "2", "--no-progress"]


def test_checkpoint_from_before_the_registry_loads_and_resumes(tmp_path, capsys):
    """A LoFGAN checkpoint written by fdb699d (train config with nested loss weights, no seed/intervals)."""
    import fsgan_fast

    model = fsgan_fast.load(OLD_LOFGAN)
    assert type(model).__name__ == "LoFGAN" and model.gen_ema is not None and model.cfg.size == 16
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(OLD_LOFGAN, run / "checkpoint.pt")
    assert main(["train", "lofgan", "--data", "builtin", "--out", str(run), "--resume", "--iters", "3",
                 "--no-progress"]) == 0
    state = load_checkpoint(run / "checkpoint.pt", "lofgan")
    assert state["step"] == 3 and state["trainer"]["train"]["weights"]["gp"] == 10.0


def test_garbled_split_json_on_resume(tmp_path, capsys):
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(OLD_LOFGAN, run / "checkpoint.pt")
    (run / "split.json").write_text('{"seen": [0, 1, ')
    before = snapshot(run)
    code, err = run_cli(["train", "lofgan", "--data", "builtin", "--out", run, "--resume", "--iters", "3",
                         "--no-progress"], capsys)
    assert code == 2 and "split.json" in err and "damaged" in err
    assert snapshot(run) == before


def test_preset_with_resume_is_refused(toy_run, capsys):
    code, err = run_cli(["train", "toy", "--out", toy_run, "--resume", "--iters", "5", "--preset", "large"], capsys)
    assert code == 2 and "--preset applies to new runs" in err
