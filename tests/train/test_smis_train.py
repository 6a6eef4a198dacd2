"""Few-shot SMIS training: Ranger against torch's RAdam, the inversion (loss falls, best codes kept), prototypes at the
stage end, the encoder overfitting a fixed batch, sparse mode, a --stylegan checkpoint, exact resume, the
``train | generate smis`` commands, and one-line errors for what a user gets wrong."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fsgan_fast.cli import main
from fsgan_fast.data.mask_pairs import builtin_pairs, save_mask, write_pair_folder
from fsgan_fast.models.smis import SMIS, SMISConfig, dense_prototypes
from fsgan_fast.nn.psp import EncoderConfig
from fsgan_fast.nn.stylegan2 import StyleGAN2Config, StyleGAN2Generator, save_rosinality
from fsgan_fast.train.smis import (
    PRESETS,
    Ranger,
    SMISTrainConfig,
    SMISTrainer,
    image_losses,
    load_prototypes,
    load_smis,
    train_smis,
)

PRIOR = StyleGAN2Config(size=32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16)
TINY = SMISConfig(stylegan=PRIOR, encoder=EncoderConfig(blocks=(1, 1, 1, 1), widths=(8, 8, 16, 16)), label_nc=0)
NC = 4
TINY_FLAGS = ["--stylegan-size", "32", "--stylegan-style-dim", "16", "--stylegan-n-mlp", "2", "--stylegan-channel-max",
              "16", "--encoder-blocks", "1,1,1,1", "--encoder-widths", "8,8,16,16", "--perceptual", "none",
              "--mean-latent", "64", "--no-progress"]


def _train_cfg(**kw) -> SMISTrainConfig:
    base = dict(shots=2, invert_steps=2, iters=2, batch=2, invert_lr=0.05, lr=3e-3, perceptual="none", mean_latent=64,
                log_every=1, sample_every=0, ckpt_every=0)
    return SMISTrainConfig(**{**base, **kw})


def _trainer(sparse: bool = False, **kw) -> SMISTrainer:
    torch.manual_seed(0)
    model = SMIS(dataclasses.replace(TINY, label_nc=NC))
    g = torch.Generator().manual_seed(0)
    model.set_latent_avg(model.decoder.mean_latent(64, generator=g))
    cfg = _train_cfg(sparse=sparse, **kw)
    return SMISTrainer(model, cfg, g, builtin_pairs(32, NC, sparse=sparse).first(cfg.shots))


# ---------------------------------------------------------------------------------------------------
# Ranger


def _grads(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


def test_ranger_without_lookahead_and_centralisation_is_radam():
    p0 = torch.randn(7, generator=torch.Generator().manual_seed(1))
    a, b = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    ranger = Ranger([a], lr=0.03, k=10_000, centralize=False, betas=(0.95, 0.999), eps=1e-5)
    radam = torch.optim.RAdam([b], lr=0.03, betas=(0.95, 0.999), eps=1e-5)
    for grad in _grads(7, 12):  # steps 1-5 take the momentum branch, 6+ the rectified one
        for p, opt in ((a, ranger), (b, radam)):
            p.grad = grad.clone()
            opt.step()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ranger_lookahead_and_gradient_centralisation():
    p0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    a, b = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    ranger = Ranger([a], lr=0.05, k=3, alpha=0.5)
    radam = torch.optim.RAdam([b], lr=0.05, betas=(0.95, 0.999), eps=1e-5)
    slow = p0.clone()
    for t, grad in enumerate(_grads((3, 4), 9), start=1):
        a.grad = grad.clone()
        ranger.step()
        b.grad = grad - grad.mean(dim=1, keepdim=True)  # centralised over all but the first dimension
        radam.step()
        if t % 3 == 0:  # Lookahead: the slow weights move half-way to the fast ones, which restart from them
            with torch.no_grad():
                slow += 0.5 * (b - slow)
                b.copy_(slow)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ranger_state_dict_resumes_exactly():
    grads = _grads(5, 8, seed=3)
    p = torch.zeros(5, requires_grad=True)
    opt = Ranger([p], lr=0.1, k=3)
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
    q = torch.zeros(5, requires_grad=True)
    first = Ranger([q], lr=0.1, k=3)
    for grad in grads[:4]:
        q.grad = grad.clone()
        first.step()
    r = q.detach().clone().requires_grad_()
    second = Ranger([r], lr=0.1, k=3)
    second.load_state_dict(first.state_dict())
    for grad in grads[4:]:
        r.grad = grad.clone()
        second.step()
    assert torch.equal(r, p)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        Ranger([p], k=0)


# ---------------------------------------------------------------------------------------------------
# Stage 1: inversion and prototypes


def test_inversion_loss_falls_and_the_best_codes_are_kept():
    trainer = _trainer(invert_steps=10, invert_check=4, invert_lr=0.3, invert_noise="fixed")
    trainer.begin_stage(0)
    seen = []
    for t in range(10):
        codes = trainer.codes.detach().clone()
        losses = trainer.train_step()
        seen.append((t, codes, float(losses["invert_loss"])))
    first, last = seen[0][2], seen[-1][2]
    assert last < 0.8 * first, f"the inversion loss did not fall: {first:.4f} -> {last:.4f}"
    # the kept codes are those of the best checked step (0, 4, 8 and the last, 9), per shot
    with torch.no_grad():
        per_shot = image_losses(trainer.model.synthesize(trainer.best_codes), trainer.images, None, 1.0, 0.8)["total"]
    torch.testing.assert_close(per_shot, trainer.best_loss, rtol=1e-5, atol=1e-7)
    assert float(trainer.best_loss.mean()) <= min(l for t, _, l in seen if t in (0, 4, 8, 9)) + 1e-6
    # the prototypes were built at the stage's last step, from the best codes' matching features
    with torch.no_grad():
        _, feats = trainer.model.features(trainer.best_codes, random_noise=False)
    expected = dense_prototypes(feats, trainer.masks, NC)
    torch.testing.assert_close(trainer.prototypes["vectors"], expected.vectors)
    assert torch.equal(trainer.prototypes["present"], expected.present)


def test_encoder_overfits_a_fixed_batch_and_the_image_loss_reaches_it():
    trainer = _trainer(optim="adam", lr=1e-2, image_weight=0.5)
    trainer.begin_stage(0)
    for _ in range(2):
        trainer.train_step()
    trainer.begin_stage(1)
    z = torch.randn(2, PRIOR.style_dim, generator=torch.Generator().manual_seed(5))
    noise = trainer.model.decoder.make_noise(2, generator=torch.Generator().manual_seed(6))
    losses = [trainer.encoder_step(z, noise) for _ in range(10)]
    first, last = float(losses[0]["latent_mse"]), float(losses[-1]["latent_mse"])
    assert last < 0.7 * first, f"the latent MSE did not fall on a fixed batch: {first:.4f} -> {last:.4f}"
    assert {"latent_mse", "image_mse", "total", "pseudo_classes"} <= set(losses[0])
    assert float(losses[-1]["image_mse"]) < float(losses[0]["image_mse"])
    assert float(losses[0]["total"]) == pytest.approx(
        float(losses[0]["latent_mse"]) + 0.5 * float(losses[0]["image_mse"]), rel=1e-5)
    assert all(not p.requires_grad for p in trainer.model.decoder.parameters())


def test_sparse_mode_keeps_vectors_and_labels_few_pixels():
    trainer = _trainer(sparse=True)
    trainer.begin_stage(0)
    for _ in range(2):
        trainer.train_step()
    vectors, classes = trainer.prototypes["vectors"], trainer.prototypes["classes"]
    assert vectors.shape[0] == classes.shape[0] > 10 and int(classes.min()) >= 1
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(len(vectors)))
    trainer.begin_stage(1)
    out = trainer.encoder_step()
    labelled = float(out["pseudo_labelled"])
    assert 0.0 < labelled < 0.6 and torch.isfinite(out["latent_mse"])


# ---------------------------------------------------------------------------------------------------
# Whole runs


def test_resume_continues_exactly(tmp_path):
    """A run split inside the encoder stage (the checkpoint holds the prototypes and Ranger's slow weights) ends
    where the uninterrupted run does."""
    cfg = _train_cfg(invert_steps=2, iters=2)
    straight = train_smis("builtin", tmp_path / "straight", TINY, cfg, progress=False)
    train_smis("builtin", tmp_path / "split", TINY, dataclasses.replace(cfg, iters=1), progress=False)
    split = train_smis("builtin", tmp_path / "split", TINY, cfg, resume=tmp_path / "split" / "checkpoint.pt",
                       progress=False)
    a, b = load_smis(straight), load_smis(split)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    pa, pb = load_prototypes(straight), load_prototypes(split)
    assert set(pa) == {"vectors", "present"} and all(torch.equal(pa[k], pb[k]) for k in pa)
    lines = [json.loads(s) for s in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3, 4]
    assert "invert_loss" in lines[0] and "latent_mse" in lines[-1]
    assert a.cfg.label_nc == 6  # builtin pairs' default, resolved from the data


def test_stylegan_checkpoint_sets_the_prior(tmp_path):
    torch.manual_seed(3)
    prior = StyleGAN2Generator(StyleGAN2Config(size=32, style_dim=8, n_mlp=3, channel_multiplier=1, channel_max=8))
    latent_avg = torch.randn(8)
    save_rosinality(prior, tmp_path / "prior.pt", latent_avg=latent_avg)
    ckpt = train_smis("builtin", tmp_path / "run", TINY, _train_cfg(invert_steps=1, iters=1,
                      stylegan=str(tmp_path / "prior.pt")), progress=False)
    model = load_smis(ckpt)
    assert (model.cfg.stylegan.style_dim, model.cfg.stylegan.n_mlp, model.cfg.stylegan.channel_max) == (8, 3, 8)
    for name, value in prior.state_dict().items():
        assert torch.equal(model.decoder.state_dict()[name], value), name
    assert torch.equal(model.latent_avg, latent_avg.expand(model.n_latent, 8))


def test_cli_train_then_generate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "smis", "--data", "builtin", "--out", str(run), *TINY_FLAGS, "--invert-steps", "2",
                 "--iters", "2", "--batch", "2", "--shots", "2", "--label-nc", "5", "--sample-every", "2"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "smis" and saved["model_config"]["label_nc"] == 5
    assert saved["train_config"]["shots"] == 2 and saved["train_config"]["invert_steps"] == 2
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == ["pseudo_masks_0000004.png", "step_0000002.png", "step_0000004.png"]
    with Image.open(run / "samples" / "step_0000004.png") as im:  # 2 shot rows + 4 prior rows of 3 tiles
        assert im.size == (3 * 34 + 2, 6 * 34 + 2)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"latent_mse", "total", "pseudo_classes"} <= set(lines[-1])

    masks = tmp_path / "masks"
    save_mask(builtin_pairs(48, 5).masks[0], masks / "cat.png")  # another size: centre-cropped and resized
    out = tmp_path / "gen"
    capsys.readouterr()
    assert main(["generate", "smis", "--ckpt", str(run / "checkpoint.pt"), "--out", str(out), "--mask",
                 str(masks / "cat.png"), "--n", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cat_0.png", "cat_1.png", "cat_2.png", "cat_grid.png",
                                                     "cat_mask.png", "cat_plain.png"]
    assert "wrote 6 images to " in capsys.readouterr().out  # per mask: 3 outputs, the grid, the mask, the plain encoding
    with Image.open(out / "cat_0.png") as a, Image.open(out / "cat_1.png") as b:
        assert a.size == (32, 32) and np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() > 0
    with Image.open(out / "cat_grid.png") as im:
        assert im.size == (5 * 34 + 2, 34 + 2)  # mask | plain | 3 outputs

    bad = tmp_path / "bad.png"
    save_mask(torch.full((32, 32), 7), bad)
    with pytest.raises(SystemExit):
        main(["generate", "smis", "--ckpt", str(run / "checkpoint.pt"), "--out", str(out), "--mask", str(bad)])
    assert "class ids in [7, 7], but there are 5 classes" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, match",
    [
        (["--shots", "9"], "9 shots asked for, but builtin has only 5 pairs"),
        (["--ema", "0.9"], "ema: SMIS trains an encoder"),
        (["--pairs", "/nowhere"], "--data 'builtin' and --pairs '/nowhere' name different pair sets"),
        (["--stylegan", "/nowhere.pt"], "--stylegan '/nowhere.pt' does not exist"),
        (["--perceptual", "lpips", "--vgg", "/nowhere/vgg16.pth"], "--perceptual lpips: LPIPS is unavailable"),
        (["--stylegan-size", "48"], "size must be a power of two"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        main(["train", "smis", "--data", "builtin", "--out", str(tmp_path / "r"), *TINY_FLAGS, "--iters", "1",
              "--invert-steps", "1", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_cli_pairs_folder_errors(tmp_path, capsys):
    folder = write_pair_folder(builtin_pairs(32, 6), tmp_path / "pairs")
    with pytest.raises(SystemExit):
        main(["train", "smis", "--data", str(folder), "--out", str(tmp_path / "r"), *TINY_FLAGS, "--label-nc", "3",
              "--iters", "1", "--invert-steps", "1"])
    assert "holds class id 5, but --label-nc is 3" in capsys.readouterr().err
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "masks" / "chelsea.png")
    with pytest.raises(SystemExit):
        main(["train", "smis", "--pairs", str(folder), "--data", str(folder), "--out", str(tmp_path / "r"),
              *TINY_FLAGS, "--iters", "1", "--invert-steps", "1"])
    assert "is a RGB image: masks must be single-channel class ids" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --pairs alone stands for --data (the command line)
        main(["train", "smis", "--pairs", str(folder), "--out", str(tmp_path / "r"), *TINY_FLAGS, "--iters", "1",
              "--invert-steps", "1"])
    assert "is a RGB image: masks must be single-channel class ids" in capsys.readouterr().err


def test_presets():
    paper = PRESETS["paper"]
    train = SMISTrainConfig(**{k: v for k, v in paper.items() if k in SMISTrainConfig.__dataclass_fields__})
    assert (train.invert_steps, train.invert_lr, train.lr, train.batch, train.iters) == (2000, 1.0, 1e-4, 2, 100_000)
    assert (train.optim, train.betas, train.perceptual, train.perceptual_weight) == ("ranger", (0.95, 0.999),
                                                                                      "lpips", 0.8)
    assert (train.topk, train.threshold, train.invert_check) == (3, 0.5, 50)
    assert tuple(paper["encoder_blocks"]) == (3, 4, 14, 3)
    from fsgan_fast import configs

    for name, values in PRESETS.items():  # every preset key is an option of the model or the training
        dests = {cf.dest for cls in (SMISConfig, SMISTrainConfig) for cf in configs.cli_fields(cls)}
        assert set(values) <= dests, (name, set(values) - dests)
    demo = configs.build(SMISConfig, {**PRESETS["demo"], "label_nc": 6})
    assert demo.stylegan.size == 64 and demo.stylegan.channel_max == 64 and demo.encoder.blocks == (1, 1, 1, 1)


@pytest.mark.gpu
def test_cuda_run_with_bf16_and_generation(tmp_path):
    """Both stages on a CUDA device under bf16 autocast (every generator, noise map and prototype on the device),
    then generation there."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    ckpt = train_smis("builtin", tmp_path / "run", TINY, _train_cfg(amp="bf16", sparse=True), device="cuda",
                      progress=False)
    model = load_smis(ckpt, "cuda")
    masks = builtin_pairs(32, 6, sparse=True).masks[:2].cuda()
    plain, mixed = model.generate(masks, 2, torch.Generator("cuda").manual_seed(0))
    assert plain.is_cuda and mixed.shape == (2, 2, 3, 32, 32) and torch.isfinite(mixed).all()
