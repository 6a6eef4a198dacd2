"""FastGAN training: the reference losses, a short run where D's reconstruction loss falls, EMA, exact resume,
the CLI, and clear errors for what a user gets wrong."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from fsgan_fast.cli import main
from fsgan_fast.data.image_set import ImageSampler, load_images
from fsgan_fast.models.fastgan import FastGAN, FastGANConfig, reconstruction_targets
from fsgan_fast.train.fastgan import (
    FastGANTrainConfig,
    FastGANTrainer,
    hinge_margin_d_loss,
    load_fastgan,
    train_fastgan,
)

TINY = FastGANConfig(size=128, nz=16, ngf=4, ndf=4, dec_ngf=4)


def _trainer(seed: int = 0, **train) -> tuple[FastGANTrainer, ImageSampler]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    cfg = FastGANTrainConfig(**{"batch": 4, "recon": "mse", **train})
    trainer = FastGANTrainer(FastGAN(TINY), cfg, g)
    return trainer, ImageSampler(_images(), cfg.batch, generator=g)


_IMAGES = {}


def _images() -> torch.Tensor:
    if "x" not in _IMAGES:
        _IMAGES["x"] = load_images("builtin", 128)
    return _IMAGES["x"]


def test_hinge_margins_match_the_reference_formula():
    logits = torch.randn(3, 50)
    for real in (True, False):
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        u = torch.rand(logits.shape, generator=g2)
        expected = F.relu(0.8 + 0.2 * u - logits).mean() if real else F.relu(0.8 + 0.2 * u + logits).mean()
        torch.testing.assert_close(hinge_margin_d_loss(logits, real, g1), expected)


def test_d_losses_sum_reconstructions_over_the_batch():
    trainer, sampler = _trainer()
    real = sampler.sample()
    seen = []

    def recording_dis(*args, **kwargs):  # D's own reconstructions (another forward would differ: spectral norm's
        out = trainer.model.dis(*args, **kwargs)  # power iteration moves the weights at every training-mode call)
        seen.append(out)
        return out

    trainer.dis_fwd = recording_dis
    with torch.no_grad():
        fake_big, fake_small = trainer.model.gen(torch.randn(4, TINY.nz))
        out = trainer.d_losses(real, fake_big, fake_small, part=2)
    _, recs = seen[0]
    targets = reconstruction_targets(real, 2)
    # quadrant 2 is the bottom-left of the full-size real, nearest-resized to 128
    torch.testing.assert_close(targets[2], F.interpolate(real[:, :, 64:, :64], size=128, mode="nearest"))
    expected = sum(((r - t) ** 2).mean(dim=(1, 2, 3)).sum() for r, t in zip(recs, targets))
    torch.testing.assert_close(out["d_rec"], expected, rtol=1e-5, atol=1e-6)
    assert out["d_total"] == pytest.approx(float(out["d_real"] + out["d_fake"] + out["d_rec"]), rel=1e-5)


def test_short_run_learns_to_reconstruct_and_updates_ema():
    trainer, sampler = _trainer(ema=0.9)
    ema_before = [p.clone() for p in trainer.model.gen_ema.parameters()]
    losses = [trainer.train_step(sampler.sample()) for _ in range(24)]
    first = sum(float(l["d_rec"]) for l in losses[:4]) / 4
    last = sum(float(l["d_rec"]) for l in losses[-4:]) / 4
    assert last < 0.8 * first, f"D's reconstruction loss did not fall: {first:.3f} -> {last:.3f}"
    assert all(torch.isfinite(torch.stack(list(l.values()))).all() for l in losses)
    moved = [not torch.equal(a, b) for a, b in zip(ema_before, trainer.model.gen_ema.parameters())]
    assert all(moved)


def test_ema_is_a_lerp_of_g_parameters():
    trainer, sampler = _trainer(ema=0.99)
    ema_before = [p.clone() for p in trainer.model.gen_ema.parameters()]
    trainer.train_step(sampler.sample())
    for e0, e1, p in zip(ema_before, trainer.model.gen_ema.parameters(), trainer.model.gen.parameters()):
        torch.testing.assert_close(e1, 0.99 * e0 + 0.01 * p)


def test_per_sample_quadrants_and_cutout_run():
    trainer, sampler = _trainer(part="sample", policy="color,translation,cutout")
    part = trainer.draw_part(4)
    assert part.shape == (4,) and part.dtype == torch.int64
    losses = trainer.train_step(sampler.sample())
    assert torch.isfinite(losses["d_total"])


def test_policy_is_validated():
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        FastGANTrainConfig(policy="color,zoom")
    assert FastGANTrainConfig(policy=" translation , color").policy == "translation,color"
    assert FastGANTrainConfig(policy="none").policy == "none"


def _run(tmp_path, name, iters, **kw):
    cfg = FastGANTrainConfig(batch=2, recon="mse", iters=iters, log_every=1, sample_every=0, ckpt_every=0)
    return train_fastgan("builtin", tmp_path / name, TINY, cfg, progress=False, **kw)


def test_resume_continues_exactly(tmp_path):
    straight = _run(tmp_path, "straight", 4)
    _run(tmp_path, "split", 2)
    split = train_fastgan("builtin", tmp_path / "split", TINY,
                          FastGANTrainConfig(batch=2, recon="mse", iters=4, log_every=1, sample_every=0, ckpt_every=0),
                          resume=tmp_path / "split" / "checkpoint.pt", progress=False)
    a, b = load_fastgan(straight), load_fastgan(split)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert a.gen_ema is not None
    lines = [json.loads(s) for s in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines][-2:] == [3, 4]


def test_cli_train_generate_and_style_mix(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "fastgan", "--data", "builtin", "--out", str(run), "--size", "128", "--ngf", "4", "--ndf",
                 "4", "--nz", "16", "--dec-ngf", "4", "--iters", "2", "--batch", "2", "--recon", "mse",
                 "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "fastgan" and saved["train_config"]["recon"] == "mse"
    assert (run / "samples").is_dir() and list((run / "samples").glob("*.png"))
    out = tmp_path / "gen"
    assert main(["generate", "fastgan", "--ckpt", str(run / "checkpoint.pt"), "--out", str(out), "--n", "3",
                 "--style-mix", "2"]) == 0
    from PIL import Image

    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "2.png", "grid.png", "style_mix.png"]
    assert Image.open(out / "0.png").size == (128, 128)
    w, h = Image.open(out / "style_mix.png").size
    assert w == h and w >= 3 * 128


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FSGAN_FAST_VGG16", str(tmp_path / "missing-vgg16.pth"))
    with pytest.raises(SystemExit) as e:
        main(["train", "fastgan", "--data", "builtin", "--out", str(tmp_path / "r"), "--size", "128", "--ngf", "4",
              "--ndf", "4", "--iters", "1", "--recon", "lpips", "--no-progress"])
    assert e.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "missing-vgg16.pth" in err and "--recon" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["train", "fastgan", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r2"), "--no-progress"])
    assert "no image files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "fastgan", "--data", "builtin", "--out", str(tmp_path / "r3"), "--size", "200"])
    assert "power of two" in capsys.readouterr().err


def test_paper_preset_builds_the_official_model_at_1024():
    from fsgan_fast.models import registry

    spec = registry.get("fastgan")
    preset = spec.get("presets")["paper"]
    cfg = FastGANConfig(size=1024, **{k: v for k, v in preset.items() if k in ("ngf", "ndf")})
    assert (cfg.ngf, cfg.ndf, cfg.nz) == (64, 64, 256)
    assert cfg.gen_widths() == {4: 1024, 8: 512, 16: 256, 32: 128, 64: 128, 128: 64, 256: 32, 512: 16, 1024: 8}
    train = dataclasses.replace(FastGANTrainConfig(), **{k: v for k, v in preset.items()
                                                         if k in FastGANTrainConfig.__dataclass_fields__})
    assert (train.batch, train.lr, train.betas, train.ema, train.recon) == (8, 2e-4, (0.5, 0.999), 0.999, "lpips")
    assert train.policy == "color,translation"
