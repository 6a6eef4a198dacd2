"""Every SinGAN application on a tiny trained model, through the CLI (``train | generate | app singan``) and as
functions: each writes what it says, and bad inputs (too small, mask of another size, scale out of range, an
empty mask, a partially trained model) are refused with a clear one-line error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fsgan_fast.apps import singan as apps
from fsgan_fast.cli import main
from fsgan_fast.models.singan import SinGANInputError
from fsgan_fast.train.singan import load_single_image, load_singan
from fsgan_fast.utils.images import save_image

TINY = ["--nfc", "8", "--max-nfc", "8", "--min-size", "16", "--max-size", "42", "--iters", "4", "--no-progress",
        "--sample-every", "0", "--ckpt-every", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-scale SinGAN trained for 4 iterations per scale through the CLI, and the inputs of the applications."""
    root = tmp_path_factory.mktemp("singan")
    photo = F.interpolate(load_single_image("builtin"), size=(28, 42), mode="area")
    save_image(photo[0], root / "photo.png")
    assert main(["train", "singan", "--data", str(root / "photo.png"), "--out", str(root / "run"), *TINY]) == 0
    ref = photo.clone()
    ref[..., 8:16, 10:20] = 0.8  # a pasted patch
    save_image(ref[0], root / "ref.png")
    mask = np.zeros((28, 42), np.uint8)
    mask[8:16, 10:20] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:20]).save(root / "mask_small.png")
    Image.fromarray(np.zeros((28, 42), np.uint8)).save(root / "mask_empty.png")
    save_image(photo[0, :, :10, :10], root / "tiny.png")
    return root


def _ckpt(run: Path) -> str:
    return str(run / "run" / "checkpoint.pt")


def _app(run: Path, out: Path, *args: str) -> int:
    return main(["app", "singan", args[0], "--ckpt", _ckpt(run), "--out", str(out), *args[1:]])


def test_random_samples_at_any_size(run, tmp_path):
    out = tmp_path / "samples"
    assert main(["generate", "singan", "--ckpt", _ckpt(run), "--out", str(out), "--n", "3", "--scale-h", "1.5"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "2.png", "grid.png"]
    assert Image.open(out / "0.png").size == (63, 28)  # width 1.5 x 42


@pytest.mark.parametrize("app, args, files", [
    ("inject", ["--image", "ref.png", "--scale", "1", "--n", "2"], ["inject_0.png", "inject_1.png"]),
    ("harmonize", ["--ref", "ref.png", "--mask", "mask.png", "--scale", "1"],
     ["harmonize.png", "harmonize_blended.png"]),
    ("edit", ["--ref", "ref.png", "--mask", "mask.png", "--scale", "2"], ["edit.png", "edit_blended.png"]),
    ("paint", ["--paint", "ref.png", "--scale", "1"], ["paint.png"]),
    ("sr", ["--factor", "2"], ["sr_x2.png"]),
    ("animate", ["--frames", "5", "--start-scale", "1"], ["animation_start1_beta0.9.gif"]),
])
def test_each_application_writes_its_images(run, tmp_path, app, args, files):
    args = [str(run / a) if a.endswith(".png") else a for a in args]
    assert _app(run, tmp_path, app, *args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    first = Image.open(tmp_path / files[0])
    if app == "sr":
        assert first.size == (84, 56)
    elif app == "animate":
        assert first.n_frames == 5 and first.size == (42, 28)
    else:
        assert first.size == (42, 28)


@pytest.mark.parametrize("args, message", [
    (["harmonize", "--ref", "ref.png", "--mask", "mask_small.png", "--scale", "1"], "the mask must have the image's"),
    (["harmonize", "--ref", "ref.png", "--mask", "mask_empty.png", "--scale", "1"], "the mask is empty"),
    (["harmonize", "--ref", "ref.png", "--mask", "mask.png", "--scale", "9"], "injection scale must be in 1.."),
    (["paint", "--paint", "tiny.png", "--scale", "1"], "too small"),
    (["inject", "--image", "nope.png", "--scale", "1"], "cannot read image"),
    (["harmonize", "--ref", "ref.png", "--scale", "1"], "--mask is required"),
    (["animate", "--start-scale", "9"], "start_scale must be in 0.."),
])
def test_bad_inputs_exit_with_one_line(run, tmp_path, capsys, args, message):
    args = [str(run / a) if a.endswith(".png") else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        _app(run, tmp_path, *args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_functions_on_tensors(run):
    model = load_singan(_ckpt(run))
    g = torch.Generator().manual_seed(0)
    real = model.real
    mask = torch.zeros(1, 1, 28, 42)
    mask[..., 10:14, 10:20] = 1
    soft = apps.prepare_mask(mask, 7)
    assert soft.min() == 0 and soft.max() == 1 and soft[..., 12, 15] > 0.99 and soft[..., 27, 41] < 0.01
    generated, blended = apps.harmonize(model, real, mask, 1, generator=g)
    far = soft < 1e-3  # outside the dilated, blurred mask the training image is kept
    assert torch.allclose(blended.expand_as(real)[far.expand_as(real)], real[far.expand_as(real)], atol=3e-3)
    assert generated.shape == real.shape
    assert apps.sr_steps(4.0)[0] == 6 and apps.sr_steps(4.0)[1] == pytest.approx(4 ** (1 / 6))
    frames = apps.animate(model, 3, 0.9, 0, batch_size=2, generator=g)
    assert frames.shape == (3, 3, 28, 42) and not torch.allclose(frames[0], frames[1])
    with pytest.raises(SinGANInputError, match="RGB"):
        apps.harmonize(model, torch.zeros(1, 1, 28, 42), mask, 1)
    with pytest.raises(SinGANInputError, match="factor must be > 1"):
        apps.super_resolve(model, 0.5)
    model.trained.fill_(1)
    with pytest.raises(SinGANInputError, match="fully trained"):
        apps.paint_to_image(model, real, 1)
