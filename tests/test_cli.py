"""The fsgan-fast command: --help, a tiny train run, resume, generate, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from fsgan_fast.cli import main
from fsgan_fast.data import builtin_classes
from fsgan_fast.utils.images import save_image

# a 32 px model that trains a step in ~0.1 s
TINY = ["--size", "32", "--gen-channels", "16,32,32", "--dis-channels", "16", "--dis-max-channels", "64",
        "--batch", "4", "--no-progress"]


def test_help_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "fsgan_fast.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "train" in proc.stdout and "generate" in proc.stdout


@pytest.mark.parametrize("argv, expected", [
    (["train", "lofgan", "--help"], ["--data", "--preset", "--amp", "--ema", "--resume", "--compile", "--backend", "torchrun"]),
    (["generate", "lofgan", "--help"], ["--ckpt", "--shots", "--similarity", "--n"]),
    (["export", "lofgan", "--help"], ["--format", "onnx", "tensorrt", "aoti", "--batch", "--precision", "--lowering",
                                     "--single-episode", "--no-ema"]),
    (["train", "singan", "--help"], ["--data", "--preset", "--max-size", "--min-size", "--rec-weight", "--resume"]),
    (["generate", "singan", "--help"], ["--ckpt", "--scale-v", "--scale-h", "--gen-start-scale"]),
    (["app", "singan", "--help"], ["inject", "harmonize", "edit", "paint", "sr", "animate"]),
    (["app", "singan", "harmonize", "--help"], ["--ckpt", "--ref", "--mask", "--scale", "--radius", "--sigma"]),
])
def test_subcommand_help(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(option in text for option in expected)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny training run: 4 steps, samples every 2, then resumed to 6 steps."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "lofgan", "--data", "builtin", "--out", str(out), "--iters", "4", "--sample-every", "2",
                 "--ema", "--log-every", "2", *TINY]) == 0
    assert main(["train", "lofgan", "--data", "builtin", "--out", str(out), "--iters", "6", "--sample-every", "2",
                 "--ema", "--log-every", "2", "--resume", *TINY]) == 0
    return out


def test_train_writes_checkpoint_samples_and_metrics(run_dir):
    assert (run_dir / "checkpoint.pt").is_file()
    samples = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert samples == ["step_0000002.png", "step_0000004.png", "step_0000006.png"]
    with Image.open(run_dir / "samples" / "step_0000006.png") as im:
        # 7 rows (4 seen + all 3 unseen classes) of 3 shots + 6 generations, 32 px tiles, 2 px padding
        assert im.size == (9 * 34 + 2, 7 * 34 + 2)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    assert {"d_adv", "d_cls", "d_gp", "g_adv", "g_cls", "g_local", "lr", "it_s"} <= set(lines[0])
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["seen"]) == 13 and len(split["unseen"]) == 3
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "lofgan" and config["data"] == "builtin"
    assert config["model_config"]["size"] == 32 and config["model_config"]["n_classes"] == 13
    assert config["train_config"]["ema"] == 0.999


def test_generate_writes_images_grid_and_similarity(run_dir, tmp_path, capsys):
    photos = builtin_classes(48, per_class=3).class_images(0)  # another size: generate resizes
    shots = [str(save_image(img, tmp_path / f"shot{i}.png")) for i, img in enumerate(photos)]
    out = tmp_path / "gen"
    assert main(["generate", "lofgan", "--ckpt", str(run_dir / "checkpoint.pt"), "--shots", *shots, "--n", "5",
                 "--out", str(out), "--similarity"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0.png", "1.png", "2.png", "3.png", "4.png", "grid.png", "similarity.png"]
    with Image.open(out / "0.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    with Image.open(out / "grid.png") as im:
        assert im.size == (5 * 34 + 2, 2 * 34 + 2)  # shots row, then the 5 generations
    assert "wrote 7 images to " in capsys.readouterr().out  # 5 generations, the grid and the similarity maps


def test_bad_arguments_fail_clearly(run_dir, tmp_path, capsys):
    cases = [
        (["train", "lofgan", "--out", str(tmp_path)], "--data"),
        (["train", "lofgan", "--data", "builtin", "--out", str(tmp_path), "--amp", "fp8"], "invalid choice"),
        (["train", "lofgan", "--data", "builtin", "--out", str(tmp_path), "--gen-channels", "16,x"], "must be an integer"),
        (["train", "lofgan", "--data", "builtin", "--out", str(tmp_path), "--iters", "0"], "must be >= 1"),
        (["train", "lofgan", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], "does not exist"),
        (["train", "lofgan", "--data", "builtin", "--out", str(tmp_path / "r"), "--size", "30", *TINY[2:]], "multiple of"),
        (["train", "lofgan", "--data", "builtin", "--out", str(tmp_path / "r"), "--shots", "40", *TINY], "fewer"),
        (["generate", "lofgan", "--ckpt", str(tmp_path / "none.pt"), "--shots", "a.png", "b.png", "--out", str(tmp_path)],
         "does not exist"),
        (["generate", "lofgan", "--ckpt", str(run_dir / "checkpoint.pt"), "--shots", str(tmp_path / "a.png"),
          str(tmp_path / "b.png"), "--out", str(tmp_path / "g")], "cannot read image"),
        (["generate", "lofgan", "--ckpt", str(run_dir / "checkpoint.pt"), "--shots", "a.png", "--out", str(tmp_path)],
         "at least 2"),
        (["export", "lofgan", "--ckpt", str(run_dir / "checkpoint.pt"), "--format", "onnx", "--out", "g.onnx",
          "--batch", "8:2:4"], "1 <= min <= opt <= max"),
        (["export", "lofgan", "--ckpt", str(run_dir / "checkpoint.pt"), "--format", "onnx", "--out", "g.onnx",
          "--precision", "fp8"], "invalid choice"),
        (["export", "lofgan", "--ckpt", str(run_dir / "checkpoint.pt"), "--format", "onnx", "--out", "g.onnx",
          "--lowering", "native"], "aoti only"),
        (["export", "lofgan", "--ckpt", str(tmp_path / "none.pt"), "--format", "onnx", "--out", "g.onnx"], "does not exist"),
        (["export", "lofgan", "--ckpt", str(run_dir / "checkpoint.pt"), "--format", "aoti", "--out", "g.so"],
         "must end in .pt2"),
        (["export", "lofgan", "--ckpt", str(run_dir / "checkpoint.pt"), "--format", "tensorrt", "--out", "g.onnx"],
         "must end in .plan"),
        (["export", "lofgan", "--ckpt", str(run_dir / "checkpoint.pt"), "--format", "aoti", "--out", "g.pt2",
          "--device", "foo"], "--device"),
        (["export", "lofgan", "--ckpt", str(run_dir / "checkpoint.pt"), "--format", "onnx", "--out", "g.onnx",
          "--opset", "17"], "must be >= 18"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err


def test_export_onnx_and_aoti(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    ckpt = str(run_dir / "checkpoint.pt")
    assert main(["export", "lofgan", "--ckpt", ckpt, "--format", "onnx", "--out", str(tmp_path / "g.onnx"),
                 "--batch", "1:2:4"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "g.onnx").is_file() and "vs fp32 PyTorch at batch [1, 2, 4]" in out and "  ok: tolerance" in out
    assert main(["export", "lofgan", "--ckpt", ckpt, "--format", "aoti", "--out", str(tmp_path / "g.pt2"),
                 "--batch", "1:2:4", "--single-episode", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "g.pt2").is_file() and "  ok: tolerance" in out
    # fp16 ONNX: judged against eager PyTorch in fp16 (matches may flip near ties)
    assert main(["export", "lofgan", "--ckpt", ckpt, "--format", "onnx", "--out", str(tmp_path / "h.onnx"),
                 "--batch", "2", "--precision", "fp16"]) == 0
    out = capsys.readouterr().out
    assert "eager PyTorch in fp16 has mean |err|" in out and "  ok:" in out


def test_info_bench_and_eval_commands(capsys):
    assert main(["info"]) == 0
    listed = capsys.readouterr().out
    assert "models: fastgan, lofgan, matchgan, opgan, singan, smis" in listed
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "gpu-only"])
    assert exit_info.value.code == 2 and "unknown benchmark suite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "lofgan", "--ckpt", "x.pt"])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "nosuchgan", "--help"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
