"""MatchGAN training: the reference's pair/triplet and target index rules (exact), the lr schedule against the
reference loop, the group batch sampler, the loss terms of both steps, matching losses that fall (a tiny fixed batch
here, a short run on the built-in data marked slow), exact resume, the CLI (train, translate) and its errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fsgan_fast import losses
from fsgan_fast.cli import main
from fsgan_fast.configs import ConfigError
from fsgan_fast.data.attributes import builtin_attributes, split_labelled
from fsgan_fast.data.types import DatasetError
from fsgan_fast.models.matchgan import MatchGAN, MatchGANConfig
from fsgan_fast.train.loop import load_checkpoint
from fsgan_fast.train.matchgan import (
    PRESETS,
    GroupBatch,
    GroupBatchSampler,
    MatchGANTrainConfig,
    MatchGANTrainer,
    decayed_lr,
    interleave_targets,
    label_loss,
    load_matchgan,
    match_pairs,
    prepare_data,
    regroup_index,
    train_matchgan,
)

SIZE = 32
TINY = MatchGANConfig(size=SIZE, g_conv_dim=4, d_conv_dim=8, g_repeat_num=1, d_repeat_num=4)
TINY_ARGS = ["--g-conv-dim", "4", "--d-conv-dim", "8", "--g-repeat-num", "1", "--d-repeat-num", "4", "--size",
             str(SIZE)]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run fastest on one thread; with two, a busy machine stalls every OpenMP barrier (tens of
    times slower on a shared 2-core host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# Index rules


def test_match_pairs_are_the_reference_indices():
    """get_pairs(x, triple=True) of the reference at batch 16."""
    p = match_pairs(16)
    assert p.first.tolist() == [0, 4, 8, 12, 2, 6, 10, 14, 0, 4, 8, 12, 2, 6, 10, 14]
    assert p.second.tolist() == [1, 5, 9, 13, 15, 3, 7, 11, 11, 15, 3, 7, 1, 5, 9, 13]
    assert p.same.tolist() == [1] * 4 + [0] * 4 + [0] * 4 + [1] * 4
    pairs = match_pairs(16, triplets=False)  # get_pairs(x) without triple
    assert pairs.first.tolist() == [0, 4, 8, 12, 2, 6, 10, 14]
    assert pairs.second.tolist() == [1, 5, 9, 13, 15, 3, 7, 11] and pairs.same.tolist() == [1] * 4 + [0] * 4
    assert p.first.dtype == p.second.dtype == p.same.dtype == torch.int64


@pytest.mark.parametrize("batch", [12, 16, 20, 32])
def test_match_pairs_label_each_pair_by_its_blocks(batch):
    """With four images per block, a pair is positive exactly when both rows come from one block, and each anchor of
    g1 and g3 has one positive and one negative partner (a triplet)."""
    p = match_pairs(batch)
    block = torch.arange(batch) // 4
    assert p.same.tolist() == (block[p.first] == block[p.second]).long().tolist()
    assert len(p.same) == batch and int(p.same.sum()) == batch // 2
    for anchor in set(p.first.tolist()):
        partners = p.same[p.first == anchor]
        assert sorted(partners.tolist()) == [0, 1], anchor
        assert anchor % 4 in (0, 2)


@pytest.mark.parametrize("batch, message", [(8, "at least 12"), (14, "multiple of 4"), (0, "at least 12")])
def test_match_pairs_bad_batch(batch, message):
    with pytest.raises(ValueError, match=message):
        match_pairs(batch)
    with pytest.raises(TypeError, match="batch must be an int"):
        match_pairs(16.0)


def test_targets_interleave_and_regroup_as_the_reference():
    """The reference's shfl_idx / rvrs_idx at 16: label_trg = labels[sample][shfl_idx], x_fake[rvrs_idx]."""
    shfl = torch.cat([torch.arange(4) * 4 + i for i in range(4)])
    assert regroup_index(16).tolist() == shfl.tolist() == [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15]
    sample = torch.tensor([7, 2, 9, 4])
    assert interleave_targets(sample).tolist() == sample.repeat_interleave(4)[shfl].tolist()
    for batch in (12, 20, 24):  # any number of blocks: regrouped rows come in blocks of one target
        t = torch.randperm(50, generator=torch.Generator().manual_seed(batch))[: batch // 4]
        rows = interleave_targets(t)[regroup_index(batch)]
        assert rows.tolist() == t.repeat_interleave(4).tolist()
        assert sorted(regroup_index(batch).tolist()) == list(range(batch))


def reference_lrs(lr, iters, decay_iters, every):
    """The reference's loop: after iteration i, if (i+1) % every == 0 and i+1 > iters - decay_iters, lr -= lr0/decay."""
    out, current = [], lr
    for i in range(iters):
        out.append(current)
        if (i + 1) % every == 0 and (i + 1) > iters - decay_iters:
            current -= lr / decay_iters
    return out


@pytest.mark.parametrize("iters, decay_iters, every", [(200, 100, 10), (90, 60, 7), (50, 80, 5), (30, 30, 1)])
def test_decayed_lr_against_the_reference_loop(iters, decay_iters, every):
    ours = [decayed_lr(i, lr=1e-4, iters=iters, decay_iters=decay_iters, every=every, mode="official")
            for i in range(iters)]
    assert ours == pytest.approx(reference_lrs(1e-4, iters, decay_iters, every), rel=1e-9, abs=1e-15)
    linear = [decayed_lr(i, lr=1e-4, iters=iters, decay_iters=decay_iters, every=every) for i in range(iters + 1)]
    official = ours + [decayed_lr(iters, lr=1e-4, iters=iters, decay_iters=decay_iters, every=every, mode="official")]
    # the same decrement steps, each of lr * every / decay_iters rather than lr / decay_iters
    for a, o in zip(linear, official):
        assert (1e-4 - a) / every == pytest.approx(1e-4 - o, abs=1e-15) or a == 0.0
    assert linear[0] == 1e-4 and all(b <= a for a, b in zip(linear, linear[1:]))
    if decay_iters <= iters and iters % every == 0 and decay_iters % every == 0:
        assert linear[iters] == pytest.approx(0.0, abs=1e-15)  # linear: zero at the end
    assert decayed_lr(5, lr=1e-4, iters=10, decay_iters=0, every=1) == 1e-4
    with pytest.raises(ValueError, match="mode"):
        decayed_lr(1, lr=1e-4, iters=10, decay_iters=5, every=1, mode="cosine")


def test_label_loss_is_the_references():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(6, 5, generator=g), (torch.rand(6, 5, generator=g) < 0.5).float()
    manual = -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).sum() / 6
    torch.testing.assert_close(label_loss(logits, target, "attributes"), manual)
    one_hot = F.one_hot(torch.tensor([1, 0, 4, 4, 2, 3]), 5).float()
    torch.testing.assert_close(label_loss(logits, one_hot, "categorical"),
                               F.cross_entropy(logits, torch.tensor([1, 0, 4, 4, 2, 3])))
    with pytest.raises(ValueError, match="same shape"):
        label_loss(logits, target[:, :3], "attributes")


# ---------------------------------------------------------------------------------------------------
# The sampler


@pytest.fixture(scope="module")
def data():
    base = builtin_attributes(SIZE)
    _, index = base.classes()
    return base.with_labelled(split_labelled(index, 0.3, seed=0))


def test_labelled_batches_are_blocks_of_one_class(data):
    g = torch.Generator().manual_seed(0)
    sampler = GroupBatchSampler(data, 16, generator=g, flip=False)
    assert sampler.has_unlabelled and len(sampler.classes) == 12
    seen = []
    for draw in range(8):
        batch = sampler.sample()
        assert batch.labelled == (draw % 2 == 0) and batch.images.shape == (16, 3, SIZE, SIZE)
        if not batch.labelled:
            continue
        blocks = batch.labels.view(4, 4, -1)
        assert bool((blocks == blocks[:, :1]).all())  # four images of one class per block
        assert len({tuple(b[0].tolist()) for b in blocks}) == 4  # four distinct classes
        seen += [tuple(b[0].tolist()) for b in blocks]
        pairs = match_pairs(16)  # the pair labels are right on real data
        same = (batch.labels[pairs.first] == batch.labels[pairs.second]).all(1).long()
        assert same.tolist() == pairs.same.tolist()
    assert len(set(seen[:12])) == 12  # one class cycle covers every class once


def test_sampler_draws_the_dataset_images_and_resumes(data):
    g = torch.Generator().manual_seed(1)
    sampler = GroupBatchSampler(data, 12, generator=g, flip=False)
    idx = sampler.labelled_indices()
    assert bool(data.labelled[idx].all()) and len(set(idx.tolist())) == 12  # distinct: every class has >= 4
    sampler.sample()
    state, rng = sampler.state_dict(), g.get_state()
    ahead = [sampler.sample() for _ in range(3)]
    sampler.load_state_dict(json.loads(json.dumps(state)))
    g.set_state(rng)
    again = [sampler.sample() for _ in range(3)]
    for a, b in zip(ahead, again):
        assert torch.equal(a.images, b.images) and a.labelled == b.labelled
    all_labelled = GroupBatchSampler(data.with_labelled(torch.ones(len(data), dtype=torch.bool)), 12,
                                     generator=torch.Generator().manual_seed(0))
    assert not all_labelled.has_unlabelled and all(all_labelled.sample().labelled for _ in range(3))


def test_sampler_refuses_too_few_classes(data):
    few = data.with_labelled(data.labels.sum(1) == 0)  # only the "none" class is labelled
    with pytest.raises(DatasetError, match=r"hold 1 class\(es\).*takes 4 distinct classes"):
        GroupBatchSampler(few, 16, generator=torch.Generator())
    with pytest.raises(ValueError, match="multiple of 4"):
        GroupBatchSampler(data, 18, generator=torch.Generator())


# ---------------------------------------------------------------------------------------------------
# The trainer


def make_trainer(data, *, seed: int = 0, batch: int = 12, model_cfg: MatchGANConfig = TINY, **train):
    cfg = MatchGANTrainConfig(**{"batch": batch, "n_critic": 1, "iters": 100, "decay_iters": 0, **train})
    model_cfg = dataclasses.replace(model_cfg, labels=tuple(data.names), exclusive=("Red_Tint,Blue_Tint",),
                                    classes=())
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    sampler = GroupBatchSampler(data, batch, generator=g, flip=False)
    return MatchGANTrainer(MatchGAN(model_cfg), cfg, g, sampler), sampler


def test_d_and_g_losses_are_the_reference_sums(data):
    trainer, sampler = make_trainer(data)
    batch = sampler.sample()
    assert batch.labelled
    targets = trainer.draw_targets()
    assert targets.shape == (12, 4) and len({tuple(t) for t in targets[:3].tolist()}) == 3
    assert torch.equal(targets[:3], targets[3:6])  # interleaved: [a, b, c, a, b, c, ...]
    fake = trainer.model.gen(batch.images, targets).detach()
    d = trainer.d_losses(batch.images, batch.labels, fake)
    expected = d["d_real"] + d["d_fake"] + 10 * d["d_gp"] + d["d_cls"] + 0.5 * d["d_match"]
    torch.testing.assert_close(d["d_total"], expected)
    with torch.no_grad():
        src_r, cls_r, feats = trainer.model.dis(batch.images)
        logits = trainer.model.dis.pair_logits(feats[trainer.pairs.first], feats[trainer.pairs.second])
    torch.testing.assert_close(d["d_real"], -src_r.mean())
    torch.testing.assert_close(d["d_cls"], label_loss(cls_r, batch.labels, "attributes"))
    torch.testing.assert_close(d["d_match"], F.cross_entropy(logits, trainer.pairs.same))
    unlabelled = trainer.d_losses(batch.images, None, fake)
    assert set(unlabelled) == {"d_real", "d_fake", "d_gp", "d_total"}  # no labels: no cls, no match

    fake = trainer.model.gen(batch.images, targets)
    gl = trainer.g_losses(batch.images, batch.labels, fake, targets)
    torch.testing.assert_close(gl["g_total"], gl["g_adv"] + gl["g_cls"] + 10 * gl["g_rec"] + 0.5 * gl["g_match"])
    with torch.no_grad():
        rec = trainer.model.gen(fake, batch.labels)
        feats = trainer.model.dis(fake)[2][regroup_index(12)]  # fakes in blocks of one target
        logits = trainer.model.dis.pair_logits(feats[trainer.pairs.first], feats[trainer.pairs.second])
    torch.testing.assert_close(gl["g_rec"], (batch.images - rec).abs().mean())
    torch.testing.assert_close(gl["g_match"], F.cross_entropy(logits, trainer.pairs.same))
    assert "g_rec" not in trainer.g_losses(batch.images, None, fake, targets)  # c_org unknown


def test_gradient_penalty_is_the_shared_one(data):
    trainer, sampler = make_trainer(data)
    batch = sampler.sample()
    fake = torch.rand(batch.images.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    state = trainer.generator.get_state()
    d = trainer.d_losses(batch.images, batch.labels, fake)
    trainer.generator.set_state(state)
    expected = losses.gradient_penalty(trainer.model.dis.critic, batch.images, fake, generator=trainer.generator)
    torch.testing.assert_close(d["d_gp"], expected)


def test_train_step_schedule_and_logged_terms(data):
    trainer, sampler = make_trainer(data, n_critic=3, iters=6, decay_iters=4, decay_every=1, lr=1e-3)
    logged, lrs = [], []
    for _ in range(6):
        logged.append(trainer.train_step(sampler.sample()))
        lrs.append(trainer.lr())
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])  # to 0 over the last 4, stepped each 1
    g_steps = [i for i, l in enumerate(logged) if "g_total" in l]
    assert g_steps == [2, 5]  # (i + 1) % n_critic == 0
    assert "g_rec" in logged[2] and "g_rec" not in logged[5]  # iteration 2 labelled, 5 unlabelled
    assert "d_match" in logged[0] and "d_match" not in logged[1]
    assert all(bool(torch.isfinite(v)) for l in logged for v in l.values())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_steps_run(data, amp):
    trainer, sampler = make_trainer(data, amp=amp)
    for _ in range(2):  # a labelled and an unlabelled iteration, both with a G step
        logged = trainer.train_step(sampler.sample())
        assert all(bool(torch.isfinite(v)) for v in logged.values()), logged


def test_trainer_config_errors(data):
    with pytest.raises(ConfigError, match="n_critic must be odd"):
        make_trainer(data, n_critic=2)
    with pytest.raises(ConfigError, match="batch must be a multiple of 4"):
        MatchGANTrainConfig(batch=14)
    with pytest.raises(ConfigError, match="batch must be >= 12"):
        MatchGANTrainConfig(batch=8)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ConfigError, match="labelled_fraction must be"):
            MatchGANTrainConfig(labelled_fraction=bad)


def test_matching_losses_fall_on_a_fixed_batch(data):
    """The matching mechanism learns: D's pair head separates same/different pairs of a fixed labelled batch, and G
    (with D's pair head) makes its fakes of one target match and those of different targets differ."""
    trainer, sampler = make_trainer(data, lr=2e-3, seed=1)
    batch = sampler.sample()
    fixed = GroupBatch(batch.images, batch.labels)
    logged = [trainer.train_step(fixed) for _ in range(24)]
    first = {k: sum(float(l[k]) for l in logged[:4]) / 4 for k in ("d_match", "g_match")}
    last = {k: sum(float(l[k]) for l in logged[-4:]) / 4 for k in ("d_match", "g_match")}
    assert last["d_match"] < 0.85 * first["d_match"], (first, last)
    assert last["g_match"] < 0.85 * first["g_match"], (first, last)


@pytest.mark.slow
def test_demo_run_matching_losses_fall(tmp_path):
    """The demo preset on the built-in data (semi-supervised: a quarter labelled), its first 300 steps (at the
    demo's constant lr): D learns to tell pairs of one label from pairs of two, and G's fakes of one target come to
    match."""
    run = tmp_path / "demo"
    assert main(["train", "matchgan", "--data", "builtin", "--out", str(run), "--iters", "300", "--decay-iters", "0",
                 "--log-every", "50", "--sample-every", "0", "--no-progress"]) == 0
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("d_match", "g_match", "d_cls", "g_cls"):
        first, last = lines[0][key], sum(line[key] for line in lines[-2:]) / 2
        assert last < 0.85 * first, (key, first, last)
    assert lines[0]["d_match"] == pytest.approx(0.693, abs=0.02)  # ln 2: chance


# ---------------------------------------------------------------------------------------------------
# Whole runs


def _run(tmp_path, name, iters, **kw):
    # a constant lr: the lr is a pure function of the step and of iters (test_train_step_schedule_...), so a run
    # stopped at 2 of 2 iterations and one passing step 2 of 4 decay differently
    cfg = MatchGANTrainConfig(batch=12, n_critic=1, iters=iters, decay_iters=0, labelled_fraction=0.5,
                              log_every=1, sample_every=0, ckpt_every=0)
    return train_matchgan("builtin", tmp_path / name, TINY, cfg, progress=False, **kw)


def test_resume_continues_exactly(tmp_path):
    straight = _run(tmp_path, "straight", 4)
    _run(tmp_path, "split", 2)
    split = _run(tmp_path, "split", 4, resume=tmp_path / "split" / "checkpoint.pt")
    a, b = (load_checkpoint(p, "matchgan") for p in (straight, split))
    assert a["step"] == b["step"] == 4
    for key in ("model", "opt_g", "opt_d", "sampler"):
        torch.testing.assert_close(a["trainer"][key], b["trainer"][key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(a["rng"], b["rng"], rtol=0, atol=0)
    lines = [json.loads(s) for s in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3, 4]
    assert "d_match" in lines[2] and "g_rec" not in lines[3]  # step 3 labelled, step 4 not
    model = load_matchgan(split)
    assert model.cfg.labels == ("Gray", "Red_Tint", "Blue_Tint", "Blurred") and len(model.cfg.classes) == 12


def test_cli_train_then_translate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "matchgan", "--data", "builtin", "--out", str(run), *TINY_ARGS, "--iters", "2",
                 "--batch", "12", "--labelled-fraction", "0.5", "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "matchgan" and saved["train_config"]["n_critic"] == 1  # the demo preset
    assert saved["model_config"]["labels"] == ["Gray", "Red_Tint", "Blue_Tint", "Blurred"]
    described = json.loads((run / "labels.json").read_text())
    assert described["labelled"] == 240 and len(described["labelled_per_class"]) == 12
    grids = list((run / "samples").glob("*.png"))
    with Image.open(grids[0]) as im:
        assert im.size == (13 * (SIZE + 2) + 2, 8 * (SIZE + 2) + 2)  # 8 rows: source + 12 classes
    metrics = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"d_match", "g_match", "d_cls", "g_cls", "g_rec", "d_gp"} <= set(metrics[-1])

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (80 * i, 100, 200 - 60 * i)).save(photos / f"p{i}.png")
    ckpt = str(run / "checkpoint.pt")
    out = tmp_path / "tr"
    assert main(["translate", "matchgan", "--ckpt", ckpt, "--out", str(out), "--images", str(photos),
                 "--targets", "classes", "Gray,Blurred", "none", "--rows", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["columns.txt", "grid_000.png", "grid_001.png"]
    with Image.open(out / "grid_000.png") as im:
        assert im.size == ((1 + 12 + 2) * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2)
    columns = (out / "columns.txt").read_text()
    assert columns.startswith("columns: source | none | Gray | Red_Tint") and "| Gray,Blurred | none" in columns
    app = tmp_path / "app"
    assert main(["app", "matchgan", "translate", "--ckpt", ckpt, "--out", str(app), "--images",
                 str(photos / "p1.png"), "--targets", "flip"]) == 0
    with Image.open(app / "grid_000.png") as im:
        assert im.size == (5 * (SIZE + 2) + 2, SIZE + 4)  # the source, then one flip per attribute
    assert "flip Gray | flip Red_Tint" in (app / "columns.txt").read_text()

    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["translate", "matchgan", "--ckpt", ckpt, "--out", str(app), "--images", str(photos),
              "--targets", "Red_Tint,Blue_Tint"])
    err = capsys.readouterr().err
    assert "exclusive group" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["translate", "matchgan", "--ckpt", ckpt, "--out", str(app), "--images", str(tmp_path / "none.png")])
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--labelled-fraction", "0"], "labelled_fraction must be > 0"),
    (["--labelled-fraction", "1.5"], "labelled_fraction must be <= 1"),
    (["--attrs", "Gray", "Sepia"], r"unknown name\(s\) 'Sepia'"),
    (["--batch", "14"], "batch must be a multiple of 4"),
    (["--n-critic", "2", "--labelled-fraction", "0.5"], "n_critic must be odd"),
    (["--attrs", "Gray", "Blurred", "--batch", "20"], r"hold 4 class\(es\)"),
])
def test_cli_train_errors_are_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "r"
    with pytest.raises(SystemExit) as e:
        main(["train", "matchgan", "--data", "builtin", "--out", str(out), *TINY_ARGS, "--iters", "1",
              "--no-progress", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err or __import__("re").search(message, err), err
    assert "Traceback" not in err and not out.exists()


def test_cli_categorical_folders(tmp_path):
    root = tmp_path / "faces"
    for k, name in enumerate(("angry", "calm", "happy")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20, 20), (60 * k, 20 * i, 90)).save(root / name / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "matchgan", "--data", str(root), "--out", str(run), *TINY_ARGS, "--iters", "1",
                 "--batch", "12", "--n-critic", "1", "--no-progress"]) == 0
    model = load_matchgan(run / "checkpoint.pt")
    assert model.cfg.label_kind == "categorical" and model.cfg.labels == ("angry", "calm", "happy")
    assert model.cfg.classes == ("100", "010", "001")
    config = json.loads((run / "config.json").read_text())
    assert config["train_config"]["lambda_match"] == 0.5 and config["train_config"]["iters"] == 1  # paper preset


def test_presets_are_the_reference_settings():
    paper, celeba, demo = PRESETS["paper"], PRESETS["celeba"], PRESETS["demo"]
    cfg = MatchGANConfig(**{k: v for k, v in paper.items() if k in MatchGANConfig.__dataclass_fields__})
    assert (cfg.size, cfg.g_conv_dim, cfg.d_conv_dim, cfg.g_repeat_num, cfg.d_repeat_num) == (128, 64, 64, 6, 6)
    train = MatchGANTrainConfig(**{k: v for k, v in paper.items() if k in MatchGANTrainConfig.__dataclass_fields__})
    assert (train.batch, train.lr, train.betas, train.n_critic, train.iters) == (16, 1e-4, (0.5, 0.999), 5, 200_000)
    assert (train.lambda_cls, train.lambda_rec, train.lambda_gp, train.lambda_match) == (1, 10, 10, 0.5)
    assert (train.decay_iters, train.decay_every, train.decay) == (100_000, 1000, "linear")
    assert celeba["attrs"] == ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
    assert celeba["exclusive"] == ("Black_Hair,Blond_Hair,Brown_Hair",)
    assert demo["n_critic"] % 2 == 1 and demo["labelled_fraction"] < 1  # semi-supervised and G sees labels


def test_prepare_data_records_the_labelled_classes():
    cfg = MatchGANTrainConfig(labelled_fraction=0.1, attrs=("Blurred", "Gray"))
    data, model_cfg = prepare_data("builtin", TINY, cfg)
    assert model_cfg.labels == ("Blurred", "Gray") and model_cfg.exclusive == ()
    assert data.num_labelled == 48 and model_cfg.classes == ("00", "10", "01", "11")
