"""LoFGAN networks: shapes, ranges, replay, generation, EMA, similarity maps, gradients, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fsgan_fast.losses import (
    classification_loss,
    hinge_d_loss,
    hinge_g_loss,
    local_reconstruction_loss,
    r1_class_penalty,
)
from fsgan_fast.models import LoFGAN, LoFGANConfig, LoFGANDiscriminator, LoFGANGenerator, similarity_figure
from fsgan_fast.nn.blocks import ActFirstResBlock, Conv2dBlock

TINY = dict(gen_channels=(8, 16, 16, 16, 16), dis_channels=8, dis_max_channels=32, n_classes=5)


def tiny_cfg(size: int = 64, **kw) -> LoFGANConfig:
    return LoFGANConfig(size=size, **{**TINY, **kw})


def make_model(size: int = 64, seed: int = 0, **kw) -> LoFGAN:
    torch.manual_seed(seed)
    return LoFGAN(tiny_cfg(size, **kw))


def make_images(*shape: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1


def gen_seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# Config


def test_lofgan_config_roundtrip():
    cfg = tiny_cfg(128, rate=0.25, shared_base=True, shots=4)
    d = json.loads(json.dumps(cfg.to_dict()))
    back = LoFGANConfig.from_dict(d)
    assert back == cfg and isinstance(back.gen_channels, tuple)
    assert cfg.feature_size == 8 and cfg.downsample == 16
    with pytest.raises(ValueError, match="unknown LoFGANConfig fields"):
        LoFGANConfig.from_dict({**d, "nz": 3})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(size=72), "multiple of the encoder"),
        (dict(size=8), "size must be >= 16"),
        (dict(shots=1), "shots"),
        (dict(rate=0.0), "rate"),
        (dict(n_classes=0), "n_classes"),
        (dict(dis_channels=64, dis_max_channels=32), "dis_channels"),
        (dict(gen_channels=(8,)), "gen_channels"),
    ],
)
def test_lofgan_config_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        LoFGANConfig(**{**TINY, **kw})


def test_lofgan_dis_stages_follow_size():
    assert [LoFGANConfig(size=s).dis_stages for s in (64, 128, 256)] == [3, 4, 5]
    for size in (64, 128):
        d = LoFGANDiscriminator(tiny_cfg(size))
        assert d.features(make_images(1, 3, size, size)).shape == (1, 32, 8, 8)


# ---------------------------------------------------------------------------------------------------
# Generator


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("B, K", [(1, 3), (3, 2), (2, 4)])
def test_lofgan_generator_shapes(size, B, K):
    model = make_model(size)
    xs = make_images(B, K, 3, size, size)
    fake, out = model.gen(xs, gen_seeded(3))
    f = size // 16
    n = int(0.5 * f * f)
    assert fake.shape == (B, 3, size, size) and fake.dtype == torch.float32
    assert out.fused.shape == (B, 16, f, f)
    assert out.base.shape == (B,) and out.positions.shape == (B, n) and out.ref_idx.shape == (B, K - 1, n)
    assert out.alpha.shape == (B, K)
    torch.testing.assert_close(out.alpha.sum(1), torch.ones(B))
    assert bool(((out.base >= 0) & (out.base < K)).all())
    assert model.gen.encode(xs).shape == (B, K, 16, f, f)
    assert model.gen.decode(out.fused).shape == (B, 3, size, size)


def test_lofgan_256_shapes():
    model = make_model(256)
    fake, out = model.gen(make_images(1, 2, 3, 256, 256), gen_seeded(0))
    assert fake.shape == (1, 3, 256, 256) and out.fused.shape == (1, 16, 16, 16) and out.positions.shape == (1, 128)
    adv, cls = model.dis(fake)
    assert adv.shape == (1,) and cls.shape == (1, 5)


def test_lofgan_generator_output_in_range():
    model = make_model(64)
    with torch.no_grad():  # push the last conv into saturation: tanh must still bound it
        model.gen.decoder[-1].conv.weight.mul_(50)
    fake, _ = model.gen(make_images(4, 3, 3, 64, 64) * 1.0, gen_seeded(0))
    assert fake.abs().max() <= 1.0 and fake.abs().max() > 0.99
    assert fake.std() > 0.1


def test_lofgan_generator_replays_in_eval():
    model = make_model(64).eval()
    xs = make_images(3, 3, 3, 64, 64)
    fake, out = model.gen(xs, gen_seeded(5))
    again, out2 = model.gen(xs, base=out.base, positions=out.positions, alpha=out.alpha)
    torch.testing.assert_close(again, fake, rtol=0, atol=0)
    assert torch.equal(out2.ref_idx, out.ref_idx)
    same_seed, _ = model.gen(xs, gen_seeded(5))
    torch.testing.assert_close(same_seed, fake, rtol=0, atol=0)
    other, _ = model.gen(xs, gen_seeded(6))
    assert (other - fake).abs().max() > 1e-4


def test_lofgan_generator_fusion_changes_features():
    model = make_model(64).eval()
    xs = make_images(2, 3, 3, 64, 64)
    feats = model.gen.encode(xs)
    _, out = model.gen(xs, gen_seeded(0))
    B, n = out.positions.shape
    for b in range(B):
        base_map = feats[b, out.base[b]].flatten(1)
        fused = out.fused[b].flatten(1)
        sel = torch.zeros(base_map.shape[1], dtype=torch.bool)
        sel[out.positions[b]] = True
        torch.testing.assert_close(fused[:, ~sel], base_map[:, ~sel])  # unselected: the unscaled base
        assert (fused[:, sel] - base_map[:, sel]).abs().max() > 1e-4


@pytest.mark.parametrize("shared", [True, False])
def test_lofgan_shared_base(shared):
    model = make_model(64, shared_base=shared)
    g = gen_seeded(0)
    bases = [model.gen(make_images(16, 3, 3, 64, 64), g)[1].base for _ in range(3)]
    all_same = [bool((b == b[0]).all()) for b in bases]
    assert all(all_same) if shared else not any(all_same)


def test_lofgan_generator_bad_input():
    gen = make_model(64).gen
    with pytest.raises(ValueError, match="batch of episodes"):
        gen(make_images(3, 3, 64, 64))
    with pytest.raises(ValueError, match="K >= 2"):
        gen(make_images(2, 1, 3, 64, 64))
    with pytest.raises(ValueError, match="side 64"):
        gen(make_images(2, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="3 channels"):
        gen(make_images(2, 3, 1, 64, 64))
    with pytest.raises(TypeError, match="floating"):
        gen(torch.ones(2, 3, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="fused must be"):
        gen.decode(torch.randn(2, 16, 8, 8))
    with pytest.raises(ValueError, match="5-D"):
        gen.encode(make_images(3, 3, 64, 64))


# ---------------------------------------------------------------------------------------------------
# Discriminator and blocks


@pytest.mark.parametrize("size, N", [(64, 1), (64, 5), (128, 3)])
def test_lofgan_discriminator_heads(size, N):
    d = make_model(size).dis.eval()
    x = make_images(N, 3, size, size)
    adv, cls = d(x)
    assert adv.shape == (N,) and cls.shape == (N, 5) and adv.dtype == cls.dtype == torch.float32
    adv_1, cls_1 = d(x[:1])  # eval: no batch coupling
    torch.testing.assert_close(adv_1, adv[:1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cls_1, cls[:1], rtol=1e-4, atol=1e-5)


def test_lofgan_discriminator_bad_input():
    d = make_model(64).dis
    with pytest.raises(ValueError, match="flatten episodes"):
        d(make_images(2, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="side 64"):
        d(make_images(2, 3, 128, 128))
    with pytest.raises(ValueError, match="3 channels"):
        d(make_images(2, 4, 64, 64))


def test_lofgan_blocks_init_and_spectral_norm():
    torch.manual_seed(0)
    block = ActFirstResBlock(32, 64)
    conv = block.conv_1.conv  # SN 3x3, 64 -> 64
    raw = conv.parametrizations.weight.original
    fan_in = raw[0].numel()
    assert abs(raw.std().item() / math.sqrt(2 / fan_in) - 1) < 0.05
    assert conv.bias.abs().max() == 0
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item()
    assert 0.98 < sigma < 1.2  # estimated at registration on the kaiming weight
    assert block.conv_0.conv.weight.shape == (64, 32, 3, 3)  # fhid = max(fin, fout)
    sc = block.shortcut
    assert isinstance(sc, torch.nn.Conv2d) and sc.bias is None and not hasattr(sc, "parametrizations")
    assert isinstance(ActFirstResBlock(16, 16).shortcut, torch.nn.Identity)
    block.eval()  # in train mode every weight read runs a power iteration
    x = torch.randn(2, 32, 6, 6)
    ref = sc(x) + block.conv_1.conv(F.leaky_relu(block.conv_0.conv(F.leaky_relu(x, 0.2)), 0.2))
    torch.testing.assert_close(block(x), ref)


def test_lofgan_conv_block_matches_explicit_reflect_pad():
    torch.manual_seed(0)
    blk = Conv2dBlock(4, 6, 3, stride=2).eval()
    x = torch.randn(2, 4, 9, 9)
    conv = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), blk.conv.weight, blk.conv.bias, stride=2)
    ref = F.leaky_relu(blk.norm(conv), 0.2)
    torch.testing.assert_close(blk(x), ref)
    with pytest.raises(ValueError, match="norm must be one of"):
        Conv2dBlock(4, 6, 3, norm="gn")


# ---------------------------------------------------------------------------------------------------
# Training losses reach every parameter


def test_lofgan_g_loss_reaches_every_generator_parameter():
    model = make_model(64)
    B, K = 2, 3
    xs = make_images(B, K, 3, 64, 64)
    y = torch.tensor([1, 4])
    fake, out = model.gen(xs, gen_seeded(0))
    adv, cls = model.dis(fake)
    loss = hinge_g_loss(adv) + classification_loss(cls, y) + 0.5 * local_reconstruction_loss(xs, fake, out)
    loss.backward()
    for name, p in model.gen.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_lofgan_d_loss_reaches_every_discriminator_parameter():
    model = make_model(64)
    B, K = 2, 3
    xs = make_images(B, K, 3, 64, 64).requires_grad_()
    y = torch.tensor([0, 3])
    adv_r, cls_r = model.dis(xs.flatten(0, 1))
    with torch.no_grad():
        fake, _ = model.gen(xs, gen_seeded(0))
    adv_f, _ = model.dis(fake)
    y_r = y.repeat_interleave(K)
    loss = hinge_d_loss(adv_r, adv_f) + classification_loss(cls_r, y_r) + 10 * r1_class_penalty(xs, cls_r, y_r)
    loss.backward()
    for name, p in model.dis.named_parameters():
        assert p.grad is not None, name
        if name == "adv_head.bias":  # d/db = -P(real hinge active) + P(fake hinge active): 0 while all are active
            continue
        assert p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------------
# generate, EMA


def test_lofgan_generate_shapes_batches_and_seed():
    model = make_model(64)
    shots = make_images(3, 3, 64, 64)
    a = model.generate(shots, 7, gen_seeded(11), batch_size=3)
    b = model.generate(shots, 7, gen_seeded(11), batch_size=64)
    c = model.generate(shots, 7, gen_seeded(12), batch_size=3)
    assert a.shape == (7, 3, 64, 64) and a.abs().max() <= 1
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # draws made up front: batch size does not matter
    assert (a - c).abs().max() > 1e-4
    assert (a[1:] - a[:1]).flatten(1).abs().max(1).values.min() > 1e-5  # every sample its own draw
    assert model.generate(shots, 0, gen_seeded(0)).shape == (0, 3, 64, 64)
    assert model.gen.training  # mode restored


@pytest.mark.parametrize("shared", [False, True])
def test_lofgan_generate_matches_forward_with_same_draws(shared):
    model = make_model(64, shared_base=shared)
    shots = make_images(3, 3, 64, 64)
    n, K = 5, 3
    out = model.generate(shots, n, gen_seeded(4), batch_size=2)
    # the same draws, in generate's documented order: the layer's sample, then one base per sample
    g = gen_seeded(4)
    _, positions, alpha = model.gen.fusion.sample(n, K, 4, 4, torch.device("cpu"), g)
    base = torch.randint(K, (n,), generator=g)
    model.gen.eval()
    ref, _ = model.gen(shots.expand(n, -1, -1, -1, -1), base=base, positions=positions, alpha=alpha)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if shared:
        assert len(set(base.tolist())) > 1


def test_lofgan_generate_rejects_bad_shots():
    model = make_model(64)
    good = make_images(3, 3, 64, 64)
    cases = [
        (good.unsqueeze(0), ValueError, "one episode"),
        (good[:1], ValueError, "K >= 2"),
        (make_images(3, 3, 32, 32), ValueError, "side 64"),
        (make_images(3, 1, 64, 64), ValueError, "3 channels"),
        ((good + 1) * 127.5, ValueError, r"scaled to \[-1, 1\]"),
        (torch.where(good > 0.9, float("nan"), good), ValueError, r"scaled to \[-1, 1\]"),
        (torch.zeros(3, 3, 64, 64, dtype=torch.uint8), TypeError, "floating"),
        (good[0, 0], ValueError, "4-D"),
    ]
    for shots, exc, match in cases:
        with pytest.raises(exc, match=match):
            model.generate(shots, 2)
    with pytest.raises(ValueError, match="n must be"):
        model.generate(good, -1)
    with pytest.raises(ValueError, match="batch_size"):
        model.generate(good, 2, batch_size=0)


def test_lofgan_ema():
    model = make_model(64)
    assert model.gen_ema is None
    shots = make_images(3, 3, 64, 64)
    plain = model.generate(shots, 2, gen_seeded(0))  # use_ema falls back to gen
    model.enable_ema()
    ema = model.gen_ema
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    model.train()
    assert not model.gen_ema.training and model.gen.training
    torch.testing.assert_close(model.generate(shots, 2, gen_seeded(0)), plain)
    with torch.no_grad():
        for p in model.gen.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = model.generate(shots, 2, gen_seeded(0), use_ema=False)
    assert (moved - plain).abs().max() > 1e-3
    torch.testing.assert_close(model.generate(shots, 2, gen_seeded(0)), plain)
    # a checkpoint with gen_ema loads into a fresh model
    fresh = make_model(64, seed=9)
    fresh.load_state_dict(model.state_dict())
    assert fresh.gen_ema is not None
    torch.testing.assert_close(fresh.generate(shots, 2, gen_seeded(0)), plain)


# ---------------------------------------------------------------------------------------------------
# Similarity maps and figure


def test_lofgan_similarity_maps_and_figure(tmp_path):
    from PIL import Image

    model = make_model(64)
    shots = make_images(3, 3, 64, 64)
    m = model.similarity_maps(shots, gen_seeded(2))
    R, n, f = 2, 8, 4
    assert m["maps"].shape == (R, n, f, f) and m["positions"].shape == (n,) and m["ref_idx"].shape == (R, n)
    assert m["maps"].abs().max() <= 1 + 1e-5
    assert m["base"] not in m["ref_shots"].tolist() and len(m["ref_shots"]) == R
    flat = m["maps"].flatten(2)
    assert torch.equal(flat.argmax(-1), m["ref_idx"])
    # the map really is the cosine similarity of the encoded features
    feats = model.gen.eval().encode(shots[None])[0].flatten(2)
    p, r0 = int(m["positions"][0]), int(m["ref_shots"][0])
    cos = F.cosine_similarity(feats[m["base"], :, p : p + 1], feats[r0], dim=0)
    torch.testing.assert_close(flat[0, 0], cos, rtol=1e-4, atol=1e-5)
    # and the fake is what the generator makes from these draws
    base = torch.tensor([m["base"]])
    fake, _ = model.gen(shots[None], base=base, positions=m["positions"][None], alpha=m["alpha"][None])
    torch.testing.assert_close(m["fake"], fake[0])

    fig = similarity_figure(shots, m, num_positions=3, pad=4)
    assert fig.shape == (3, 4 + 4 * 68, 4 + 4 * 68)
    assert fig.min() >= 0 and fig.max() <= 1
    path = tmp_path / "sim.png"
    Image.fromarray((fig.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
    assert Image.open(path).size == (fig.shape[2], fig.shape[1])
    with pytest.raises(ValueError, match="missing"):
        similarity_figure(shots, {"maps": m["maps"]})
    with pytest.raises(ValueError, match="do not fit"):
        similarity_figure(shots[:2], m)
