"""OP-GAN training: two-domain data, CycleGAN's image pool, the loss formulas, S learning its self-supervised tasks
on a fixed batch, a short run where they fall, exact resume, the train / translate commands and their errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fsgan_fast.cli import main
from fsgan_fast.configs import ConfigError
from fsgan_fast.data.two_domain import (
    TwoDomains,
    TwoDomainSampler,
    builtin_transform,
    builtin_two_domains,
    load_two_domains,
)
from fsgan_fast.data.types import DatasetError
from fsgan_fast.losses import lsgan_d_loss, lsgan_g_loss
from fsgan_fast.models.opgan import OPGAN, OPGANConfig
from fsgan_fast.train.opgan import ImagePool, OPGANTrainConfig, OPGANTrainer, load_opgan, preview_images, train_opgan

TINY = OPGANConfig(size=32, ngf=4, ndf=4, ns=4, n_blocks=1)
TRAIN = ["--size", "32", "--ngf", "4", "--ndf", "4", "--ns", "4", "--n-blocks", "1", "--batch", "2",
         "--sample-every", "0", "--ckpt-every", "0", "--no-progress"]

_DATA: dict[int, TwoDomains] = {}


def _data(size: int = 32) -> TwoDomains:
    if size not in _DATA:
        _DATA[size] = builtin_two_domains(size)
    return _DATA[size]


def _trainer(seed: int = 0, **train) -> tuple[OPGANTrainer, TwoDomainSampler]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    cfg = OPGANTrainConfig(**{"batch": 2, "iters": 100, "pairs": 2, **train})
    trainer = OPGANTrainer(OPGAN(TINY), cfg, g, preview=preview_images(_data()))
    return trainer, TwoDomainSampler(_data(), cfg.batch, generator=g)


# ---------------------------------------------------------------------------------------------------
# Two-domain data


def test_builtin_domains_are_unpaired_with_a_known_translation():
    data = _data()
    assert data.a.shape == data.b.shape == (50, 3, 32, 32) and data.a.dtype == torch.uint8
    assert torch.equal(data.target_ab, builtin_transform(data.a))
    assert not any(torch.equal(x, y) for x in data.target_ab[:5] for y in data.b)  # no image in both domains
    # the transform written out for one image: hue rotation, gamma, unsharp mask with replicated borders
    x = data.a[:1].double() / 255
    x = x[:, [2, 0, 1]] ** 0.75
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    blur = sum(padded[..., i:i + 32, j:j + 32] for i in range(3) for j in range(3)) / 9
    expected = ((2 * x - blur).clamp(0, 1) * 255).round().to(torch.uint8)
    assert (builtin_transform(data.a[:1]).int() - expected.int()).abs().max() <= 1
    floats = builtin_transform(data.a[:2].float() / 255)
    assert floats.dtype == torch.float32 and (floats * 255 - builtin_transform(data.a[:2]).float()).abs().max() <= 0.5


def _write_images(folder, n: int, seed: int, size=(40, 30)) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_two_domain_folders(tmp_path):
    _write_images(tmp_path / "set" / "trainA", 3, 0)
    _write_images(tmp_path / "set" / "trainB", 2, 1)
    _write_images(tmp_path / "set" / "testA", 1, 2)  # not read
    data = load_two_domains(tmp_path / "set", 16)
    assert data.a.shape == (3, 3, 16, 16) and data.b.shape == (2, 3, 16, 16) and data.target_ab is None
    apart = load_two_domains(tmp_path / "set" / "trainA", 16, data_b=tmp_path / "set" / "trainB")
    assert torch.equal(apart.a, data.a) and torch.equal(apart.b, data.b)
    g = torch.Generator().manual_seed(0)
    a, b = TwoDomainSampler(data, 4, generator=g).sample()
    assert a.shape == b.shape == (4, 3, 16, 16) and a.min() >= -1 and a.max() <= 1


def test_two_domain_bad_data(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_two_domains(tmp_path / "missing", 16)
    (tmp_path / "only_a" / "trainA").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"has no trainB/ sub-folder.*--data-b"):
        load_two_domains(tmp_path / "only_a", 16)
    _write_images(tmp_path / "a", 1, 0)
    with pytest.raises(DatasetError, match=r"domain B \(--data-b\) folder .* does not exist"):
        load_two_domains(tmp_path / "a", 16, data_b=tmp_path / "b")
    with pytest.raises(DatasetError, match="builtin holds both domains"):
        load_two_domains("builtin", 16, data_b=tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        load_two_domains(tmp_path / "a", 16, data_b=tmp_path / "empty")
    with pytest.raises(DatasetError, match="domain B must be uint8"):
        TwoDomains(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.zeros(1, 3, 4, 4), "x")
    with pytest.raises(TypeError, match="uint8 or floating"):
        builtin_transform(torch.zeros(1, 3, 4, 4, dtype=torch.int32))


# ---------------------------------------------------------------------------------------------------
# The image pool


def _pool_reference(size: int, batches: list[torch.Tensor], seeds: list[int]) -> list[torch.Tensor]:
    """CycleGAN's ImagePool.query, written out with the same draws."""
    stored, out = [], []
    for batch, seed in zip(batches, seeds):
        g = torch.Generator().manual_seed(seed)
        swap = (torch.rand(batch.shape[0], generator=g) < 0.5).tolist()
        slot = torch.randint(size, (batch.shape[0],), generator=g).tolist()
        shown = []
        for i, img in enumerate(batch):
            if len(stored) < size:
                stored.append(img)
                shown.append(img)
            elif swap[i]:
                shown.append(stored[slot[i]])
                stored[slot[i]] = img
            else:
                shown.append(img)
        out.append(torch.stack(shown))
    return out


def test_image_pool_matches_cyclegans():
    batches = [images.clone() for images in torch.randn(6, 2, 3, 4, 4).unbind(0)]
    pool = ImagePool(3)
    got = [pool.query(b, torch.Generator().manual_seed(10 + i)) for i, b in enumerate(batches)]
    expected = _pool_reference(3, batches, [10 + i for i in range(6)])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    assert pool.count == 3 and any(not torch.equal(g, b) for g, b in zip(got, batches))  # some came from the pool
    # the state round-trips
    copy = ImagePool(3)
    copy.load_state_dict(pool.state_dict(), torch.device("cpu"))
    nxt = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(copy.query(nxt, torch.Generator().manual_seed(1)),
                               pool.query(nxt, torch.Generator().manual_seed(1)))
    off = ImagePool(0)
    assert torch.equal(off.query(nxt, torch.Generator()), nxt)
    with pytest.raises(ValueError, match="size must be an int >= 0"):
        ImagePool(-1)


# ---------------------------------------------------------------------------------------------------
# The losses of one iteration


def test_d_and_g_losses_are_cyclegans_plus_l_s():
    trainer, sampler = _trainer()
    model, cfg = trainer.model, trainer.cfg
    real_a, real_b = sampler.sample()
    pairs = trainer.draw_pairs(2, torch.Generator().manual_seed(3))
    with torch.no_grad():
        fake_b, fake_a = model.gen_ab(real_a), model.gen_ba(real_b)
        d = trainer.d_losses(real_a, real_b, fake_a, fake_b)
        torch.testing.assert_close(d["d_a"], lsgan_d_loss(model.dis_a(real_a), model.dis_a(fake_a)))
        torch.testing.assert_close(d["d_total"], d["d_a"] + d["d_b"])
        g = trainer.g_losses(real_a, real_b, fake_a, fake_b, pairs)
        torch.testing.assert_close(g["g_adv_b"], lsgan_g_loss(model.dis_b(fake_b)))
        torch.testing.assert_close(g["g_cyc_a"], (model.gen_ba(fake_b) - real_a).abs().mean())
        torch.testing.assert_close(g["g_idt_ab"], (model.gen_ab(real_b) - real_b).abs().mean())
        ss = model.siamese(real_a, fake_b, pairs)
    torch.testing.assert_close(g["g_ss"], ss.content + ss.domain)
    expected = (g["g_adv_a"] + g["g_adv_b"] + 10 * (g["g_cyc_a"] + g["g_cyc_b"])
                + 5 * (g["g_idt_ab"] + g["g_idt_ba"]) + g["g_ss"])
    torch.testing.assert_close(g["g_total"], expected)
    assert (cfg.lambda_cyc, cfg.lambda_idt, cfg.lambda_ss, cfg.pool_size, cfg.lr, cfg.betas) == \
        (10.0, 0.5, 1.0, 50, 2e-4, (0.5, 0.999))


def test_s_learns_its_tasks_on_a_fixed_batch():
    """S alone, on one batch and one set of pairs: both self-supervised losses fall within a few steps."""
    trainer, sampler = _trainer(seed=1)
    real_a, _ = sampler.sample()
    with torch.no_grad():
        fake_b = torch.roll(trainer.model.gen_ab(real_a), 2, dims=3)  # content off by two pixels
    pairs = trainer.draw_pairs(2, torch.Generator().manual_seed(0))
    trainer.set_lr(2e-3, "s")
    history = []
    for _ in range(25):
        s = trainer.s_losses(real_a, fake_b, pairs)
        trainer.optimizer_step("s", s["s_total"])
        history.append({k: float(v.detach()) for k, v in s.items()})
    first, last = history[0], history[-1]
    assert last["s_domain"] < 0.5 * first["s_domain"], (first, last)
    assert last["s_content"] < 0.9 * first["s_content"], (first, last)  # attention moved to the consistent pixels
    assert last["s_acc"] == 1.0


def test_g_learns_to_lower_l_s_with_s_fixed():
    """G alone, through L_S only (S frozen): the translation moves so that S's losses fall."""
    trainer, sampler = _trainer(seed=2)
    real_a, _ = sampler.sample()
    pairs = trainer.draw_pairs(2, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(trainer.model.gen_ab.parameters(), lr=2e-3, betas=(0.5, 0.999))
    trainer.model.siamese.requires_grad_(False)
    history = []
    for _ in range(20):
        out = trainer.model.siamese(real_a, trainer.model.gen_ab(real_a), pairs)
        loss = out.content + out.domain
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    assert history[-1] < 0.85 * history[0], history


def test_short_run_self_supervised_losses_fall():
    """80 steps of the whole iteration at 32 px (about 10 s on one core)."""
    trainer, sampler = _trainer(seed=0, iters=80, lr=1e-3)
    data = _data()
    source, truth = data.a.float() / 127.5 - 1, data.target_ab.float() / 127.5 - 1
    error = lambda: (trainer.model.translate(source, "ab") - truth).abs().mean().item()  # noqa: E731
    before = error()
    losses = [trainer.train_step(sampler.sample()) for _ in range(80)]
    mean = lambda key, part: sum(float(l[key]) for l in part) / len(part)  # noqa: E731
    assert mean("s_domain", losses[-15:]) < 0.7 * mean("s_domain", losses[:15])
    assert mean("s_content", losses[-15:]) < mean("s_content", losses[:15])
    assert all(torch.isfinite(torch.stack(list(l.values()))).all() for l in losses)
    # the translation learnt for real: closer to the built-in set's known B version of every A image, and closer
    # than the untranslated images are
    after = error()
    assert after < 0.85 * before and after < (source - truth).abs().mean().item(), (before, after)


def test_train_step_logs_every_term_and_updates_every_network():
    trainer, sampler = _trainer(pool_size=2)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    losses = trainer.train_step(sampler.sample())
    assert set(losses) == {"d_a", "d_b", "d_total", "s_content", "s_domain", "s_acc", "s_total", "g_adv_a",
                           "g_adv_b", "g_cyc_a", "g_cyc_b", "g_idt_ab", "g_idt_ba", "g_ss_content", "g_ss_domain",
                           "g_ss", "g_total"}
    assert all(torch.isfinite(v) for v in losses.values())
    for prefix in ("gen_ab.", "gen_ba.", "dis_a.", "dis_b.", "siamese."):
        assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items()
                   if k.startswith(prefix)), prefix
    assert trainer.pool_a.count == trainer.pool_b.count == 2
    grid = trainer.sample_grid()
    assert grid.shape == (3, 4 * 34 + 2, 4 * 34 + 2)  # 4 rows of A | G_ab(A) | B | G_ba(B), 32 px + 2 px padding


def test_lr_decays_linearly_in_the_second_half():
    trainer, sampler = _trainer(iters=4)
    seen = []
    for _ in range(4):
        trainer.train_step(sampler.sample())
        seen.append({k: o.param_groups[0]["lr"] for k, o in trainer.optimizers.items()})
    assert [s["g"] for s in seen] == pytest.approx([2e-4, 2e-4, 2e-4, 1e-4])
    assert all(len(set(s.values())) == 1 for s in seen)  # G, D and S share the schedule


def test_train_config_rejects_ema():
    with pytest.raises(ConfigError, match="ema must be <= 0"):
        OPGANTrainConfig(ema=0.999)


# ---------------------------------------------------------------------------------------------------
# Whole runs


def _run(tmp_path, name, iters, **kw):
    cfg = OPGANTrainConfig(batch=2, iters=iters, pairs=2, pool_size=3, log_every=1, sample_every=0, ckpt_every=0)
    return train_opgan("builtin", tmp_path / name, TINY, cfg, progress=False, **kw)


def test_resume_continues_exactly(tmp_path):
    straight = _run(tmp_path, "straight", 4)
    _run(tmp_path, "split", 2)
    split = _run(tmp_path, "split", 4, resume=tmp_path / "split" / "checkpoint.pt")
    a, b = load_opgan(straight), load_opgan(split)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    sa, sb = (torch.load(p, weights_only=True)["trainer"] for p in (straight, split))
    for key in ("pool_a", "pool_b"):  # the pools filled (3 slots, 2 fakes a step) and swapped alike
        assert sa[key]["images"].shape[0] == 3 and torch.equal(sa[key]["images"], sb[key]["images"])
    torch.testing.assert_close(sa["opt_s"]["state"][0]["exp_avg"], sb["opt_s"]["state"][0]["exp_avg"], rtol=0, atol=0)
    lines = [json.loads(s) for s in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3, 4]
    assert {"s_content", "s_domain", "g_ss", "g_cyc_a", "d_b"} <= set(lines[-1])


def test_cli_train_then_translate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "opgan", "--data", "builtin", "--out", str(run), *TRAIN, "--iters", "2"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "opgan" and saved["model_config"]["ns"] == 4 and saved["model_config"]["patch"] == 16
    with Image.open(next((run / "samples").glob("*.png"))) as im:
        assert im.size == (4 * 34 + 2, 4 * 34 + 2)
    out = tmp_path / "translated"
    assert main(["app", "opgan", "translate", "--ckpt", str(run / "checkpoint.pt"), "--out", str(out), "--n", "3",
                 "--direction", "ba", "--per-row", "2"]) == 0
    # the built-in domain's images, evenly spread over its 50
    assert sorted(p.name for p in out.iterdir()) == ["0_builtin_b000.png", "1_builtin_b024.png", "2_builtin_b049.png",
                                                     "grid.png"]
    with Image.open(out / "grid.png") as im:  # 2 rows of 2 source | translation pairs
        assert im.size == (4 * 34 + 2, 2 * 34 + 2)
    # a folder of other-sized images, at another size
    _write_images(tmp_path / "photos", 2, 5, size=(50, 70))
    out2 = tmp_path / "translated2"
    assert main(["translate", "opgan", "--ckpt", str(run / "checkpoint.pt"), "--out", str(out2),
                 "--images", str(tmp_path / "photos"), "--size", "40"]) == 0
    with Image.open(out2 / "0_0.png") as im:
        assert im.size == (40, 40)
    assert "grid.png" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    (tmp_path / "nodomains").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["train", "opgan", "--data", str(tmp_path / "nodomains"), "--out", str(run), *TRAIN])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "trainA/" in err and "--data-b" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["train", "opgan", "--data", "builtin", "--out", str(run), *TRAIN, "--ema", "0.9"])
    assert "ema must be <= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "opgan", "--data", "builtin", "--out", str(run), *TRAIN, "--size", "30"])
    assert "multiple of 4" in capsys.readouterr().err
    assert not run.exists()  # nothing written by a refused run


def test_translate_bad_input(tmp_path, capsys):
    run = tmp_path / "run"
    _run(tmp_path, "run", 1)
    ckpt = str(run / "checkpoint.pt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for given, expected in ((str(tmp_path / "missing"), "does not exist"), (str(tmp_path / "empty"), "no image files"),
                            (str(tmp_path / "broken.png"), "cannot read image")):
        with pytest.raises(SystemExit) as e:
            main(["app", "opgan", "translate", "--ckpt", ckpt, "--out", str(tmp_path / "o"), "--images", given])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
    with pytest.raises(SystemExit):
        main(["app", "opgan", "translate", "--ckpt", ckpt, "--out", str(tmp_path / "o"), "--size", "30"])
    assert "size must be a multiple of 4" in capsys.readouterr().err


def test_presets():
    from fsgan_fast.models import registry

    spec = registry.get("opgan")
    presets = spec.get("presets")
    assert registry.default_preset(spec, "builtin") == "demo" and registry.default_preset(spec, "/data") == "paper"
    paper = presets["paper"]
    cfg = OPGANConfig(**{k: v for k, v in paper.items() if k in OPGANConfig.__dataclass_fields__})
    assert (cfg.size, cfg.ngf, cfg.ndf, cfg.n_blocks, cfg.ns, cfg.patch) == (256, 64, 64, 9, 64, 88)
    train = dataclasses.replace(OPGANTrainConfig(), **{k: v for k, v in paper.items()
                                                      if k in OPGANTrainConfig.__dataclass_fields__})
    assert (train.batch, train.lr, train.lambda_cyc) == (1, 2e-4, 10.0)
    demo = OPGANConfig(**{k: v for k, v in presets["demo"].items() if k in OPGANConfig.__dataclass_fields__})
    assert demo.size == 64 and demo.patch == 24
