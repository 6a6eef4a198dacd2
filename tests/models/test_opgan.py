"""OP-GAN networks: config, CycleGAN's generator and PatchGAN, S's attention, content-registration and 3-way domain
losses against plain references, gradients, translation, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsgan_fast.configs import ConfigError
from fsgan_fast.models.opgan import (
    ATTENTION_BOUND,
    OPGAN,
    OPGANConfig,
    PatchDiscriminator,
    ResnetBlock,
    ResnetGenerator,
    SiameseNet,
    check_pairs,
    content_registration_loss,
    patch_attention,
)
from fsgan_fast.ops.patch_grid import PatchPairs, patch_grid, sample_patch_pairs

TINY = OPGANConfig(size=32, ngf=4, ndf=4, ns=4, n_blocks=2)


def images(b: int, side: int = 32, seed: int = 0, width: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, side, width or side, generator=g) * 2 - 1


def smooth_images(b: int, side: int = 32, seed: int = 0) -> torch.Tensor:
    """Random images with structure at several scales (a shift changes them, but not into noise)."""
    coarse = images(b, side // 4, seed)
    return F.interpolate(coarse, size=side, mode="bilinear", align_corners=False)


def pairs_for(batch: int, seed: int = 0, pairs: int = 3, grid: int = 3) -> PatchPairs:
    return sample_patch_pairs(batch, grid, pairs, generator=torch.Generator().manual_seed(seed))


def make(cls, cfg: OPGANConfig = TINY, seed: int = 0):
    torch.manual_seed(seed)
    return cls(cfg)


# ---------------------------------------------------------------------------------------------------
# Config


def test_opgan_config_defaults_are_the_papers():
    cfg = OPGANConfig()
    assert (cfg.size, cfg.ngf, cfg.ndf, cfg.n_blocks, cfg.d_layers, cfg.grid) == (256, 64, 64, 9, 3, 3)
    assert cfg.patch == 88 and cfg.patch // 8 == 11  # 256 / 3 = 85.3 -> 88: S's features are 11x11
    assert cfg.dis_side() == 30  # the 70x70 PatchGAN's 30x30 logits at 256 px
    assert OPGANConfig(size=128).n_blocks == 6  # CycleGAN's resnet_6blocks below 256 px
    assert OPGANConfig(size=128, n_blocks=9).n_blocks == 9
    back = OPGANConfig.from_dict(json.loads(json.dumps(TINY.to_dict())))
    assert back == TINY


@pytest.mark.parametrize("kw, match", [
    (dict(size=30), "multiple of 4"),
    (dict(size=16), r"too small for a 3-layer PatchGAN .* size >= 24"),
    (dict(patch=20), "multiple of 8"),
    (dict(grid=1), "grid must be >= 2"),
    (dict(ngf=0), "ngf must be >= 1"),
    (dict(n_blocks=0), "n_blocks must be >= 1"),
])
def test_opgan_config_rejects(kw, match):
    with pytest.raises(ConfigError, match=match):
        OPGANConfig(**{"size": 32, **kw})


def test_opgan_config_unknown_field():
    with pytest.raises(ValueError, match="unknown OPGANConfig fields"):
        OPGANConfig.from_dict({"size": 64, "lambda_cyc": 10})


# ---------------------------------------------------------------------------------------------------
# CycleGAN's networks


def test_resnet_generator_layout_and_init():
    cfg = OPGANConfig(size=64, ngf=8, n_blocks=3)
    g = make(ResnetGenerator, cfg)
    assert sum(isinstance(m, ResnetBlock) for m in g.modules()) == 3
    convs = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    # 7x7 in, two downs, 2 per block, two ups, 7x7 out
    assert len(convs) == 1 + 2 + 2 * 3 + 2 + 1
    assert [c.out_channels for c in convs[:3]] == [8, 16, 32] and convs[-1].out_channels == 3
    norms = [m for m in g.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not n.affine and not n.track_running_stats for n in norms)
    weights = torch.cat([c.weight.detach().flatten() for c in convs])
    assert abs(weights.std().item() - 0.02) < 0.002 and all(float(c.bias.abs().max()) == 0 for c in convs)


@pytest.mark.parametrize("h, w", [(32, 32), (36, 44), (8, 12)])
def test_resnet_generator_shapes_and_range(h, w):
    g = make(ResnetGenerator)
    out = g(images(2, h, width=w))
    assert out.shape == (2, 3, h, w) and out.abs().max() <= 1


def test_resnet_block_is_a_residual_of_its_body():
    block = make(lambda cfg: ResnetBlock(6))
    x = torch.randn(2, 6, 9, 7, generator=torch.Generator().manual_seed(1))
    # the body written out: reflect pad, conv, IN, ReLU, reflect pad, conv, IN
    c1, c2 = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    h = F.instance_norm(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), c1.weight, c1.bias))
    h = F.instance_norm(F.conv2d(F.pad(h.relu(), (1, 1, 1, 1), mode="reflect"), c2.weight, c2.bias))
    torch.testing.assert_close(block(x), x + h)


@pytest.mark.parametrize("size, layers", [(32, 3), (64, 3), (48, 2), (256, 3)])
def test_patch_discriminator_logit_map(size, layers):
    cfg = OPGANConfig(size=size, ndf=4, d_layers=layers)
    d = make(PatchDiscriminator, cfg)
    out = d(images(1, size))
    side = cfg.dis_side()
    assert out.shape == (1, 1, side, side)
    if size == 256:
        assert side == 30
    widths = [m.out_channels for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [4 * min(2 ** i, 8) for i in range(layers + 1)] + [1]


def test_generator_and_discriminator_gradients_reach_every_parameter():
    g, d = make(ResnetGenerator), make(PatchDiscriminator)
    x = images(2).requires_grad_()
    d(g(x)).pow(2).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for net in (g, d):
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ---------------------------------------------------------------------------------------------------
# S: attention and the two self-supervised losses


def test_patch_attention_has_mean_one_and_bounded_ratios():
    logits = torch.randn(5, 1, 3, 3, generator=torch.Generator().manual_seed(0)) * 50  # far past the bound
    a = patch_attention(logits, (12, 12))
    assert a.shape == (5, 1, 12, 12) and (a > 0).all()
    torch.testing.assert_close(a.mean(dim=(1, 2, 3)), torch.ones(5))
    ratio = a.flatten(1).max(1).values / a.flatten(1).min(1).values
    assert (ratio <= math.exp(2 * ATTENTION_BOUND) * (1 + 1e-4)).all()
    # the formula: resize, bound, softmax over pixels, times the pixel count
    up = F.interpolate(logits, size=(12, 12), mode="bilinear", align_corners=False)
    expected = torch.softmax((3 * torch.tanh(up / 3)).flatten(1), 1).view_as(up) * 144
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(patch_attention(torch.zeros(2, 1, 3, 3), (8, 8)), torch.ones(2, 1, 8, 8))


def _content_reference(patches, attention, pairs) -> torch.Tensor:
    """The loss written pair by pair."""
    total, count = patches.new_zeros(()), 0
    for f, s, same in zip(pairs.first.tolist(), pairs.second.tolist(), pairs.same_cell.tolist()):
        if not same:
            continue
        w = 0.5 * (attention[f, 0] + attention[s, 0])
        sq = ((patches[f] - patches[s]) ** 2).mean(0)
        total = total + (w * sq).mean()
        count += 1
    return total / max(count, 1)


def test_content_registration_loss_matches_the_pairwise_reference():
    B, G = 2, 9
    gen = torch.Generator().manual_seed(3)
    patches = torch.randn(2 * B * G, 3, 8, 8, generator=gen)
    attention = patch_attention(torch.randn(2 * B * G, 1, 2, 2, generator=gen), (8, 8))
    pairs = pairs_for(B, seed=4)
    assert int(pairs.same_cell.sum()) == B * 3  # a quarter of the pairs: C1
    torch.testing.assert_close(content_registration_loss(patches, attention, pairs),
                               _content_reference(patches, attention, pairs))


def test_content_registration_loss_gradcheck():
    B, G = 1, 9
    gen = torch.Generator().manual_seed(5)
    patches = torch.randn(2 * B * G, 2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    attention = (torch.rand(2 * B * G, 1, 4, 4, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    pairs = pairs_for(B, seed=6, pairs=2)
    assert torch.autograd.gradcheck(lambda p, a: content_registration_loss(p, a, pairs), (patches, attention))


def test_content_registration_ignores_pairs_at_other_cells():
    B, G = 1, 9
    gen = torch.Generator().manual_seed(7)
    patches = torch.randn(2 * B * G, 3, 8, 8, generator=gen)
    attention = torch.ones(2 * B * G, 1, 8, 8)
    pairs = pairs_for(B)
    # make every same-cell pair identical: whatever the other pairs hold, the loss is 0
    for f, s, same in zip(pairs.first.tolist(), pairs.second.tolist(), pairs.same_cell.tolist()):
        if same:
            patches[s] = patches[f]
    assert content_registration_loss(patches, attention, pairs) == 0


def test_siamese_content_loss_is_zero_for_identical_images_and_positive_for_shifted_ones():
    s = make(SiameseNet)
    x = smooth_images(2, seed=1)
    pairs = pairs_for(2)
    with torch.no_grad():
        same = s(x, x.clone(), pairs)
        shifted = s(x, torch.roll(x, shifts=(5, 3), dims=(2, 3)), pairs)
        other = s(x, smooth_images(2, seed=2), pairs)
    assert same.content == 0
    assert shifted.content > 1e-3 and other.content > shifted.content


def test_siamese_domain_loss_is_cross_entropy_over_the_three_way_labels():
    s = make(SiameseNet)
    src, trans = images(2, seed=1), images(2, seed=2)
    pairs = pairs_for(2, seed=8)
    out = s(src, trans, pairs)
    # labels: D1 (both source) 0, D2 (both translation) 1, C1 and C2 (one of each) 2
    n_src = 2 * 9
    from_src = lambda idx: idx < n_src  # noqa: E731
    expected = torch.where(from_src(pairs.first) & from_src(pairs.second), 0,
                           torch.where(~from_src(pairs.first) & ~from_src(pairs.second), 1, 2))
    assert torch.equal(out.labels, expected) and torch.equal(out.labels, pairs.label)
    assert set(out.labels.tolist()) == {0, 1, 2} and out.logits.shape == (len(pairs), 3)
    # the same numbers from S's parts, patch by patch
    patches = torch.cat([patch_grid(src, 3, (16, 16)).flatten(0, 1), patch_grid(trans, 3, (16, 16)).flatten(0, 1)])
    _, domain = s.features(patches)
    logits = s.classify(domain[pairs.first], domain[pairs.second])
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.domain, F.cross_entropy(logits, expected))
    assert 0 <= float(out.accuracy()) <= 1


def test_siamese_features_have_the_papers_shape():
    s = make(SiameseNet, OPGANConfig())  # ns=64: 512 channels
    content, domain = s.features(images(1, 88))
    assert content.shape == domain.shape == (1, 512, 11, 11)


def test_siamese_gradients_reach_s_and_the_translation():
    s = make(SiameseNet)
    src, trans = images(2, seed=1), images(2, seed=2).requires_grad_()
    out = s(src, trans, pairs_for(2))
    (out.content + out.domain).backward()
    assert trans.grad is not None and trans.grad.abs().sum() > 0
    for name, p in s.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------------
# The model and its translation


def test_opgan_translate_is_the_generator_batched():
    model = make(OPGAN)
    x = images(5, seed=9)
    with torch.no_grad():
        expected_ab, expected_ba = model.gen_ab(x), model.gen_ba(x)
    torch.testing.assert_close(model.translate(x, "ab", batch_size=2), expected_ab)
    torch.testing.assert_close(model.translate(x, "ba", batch_size=5), expected_ba)
    assert not torch.allclose(expected_ab, expected_ba)


# ---------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("x, exc, match", [
    ("image", TypeError, "images must be a torch.Tensor"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "floating tensor"),
    (torch.zeros(3, 32, 32), ValueError, r"RGB images \[B, 3, H, W\]"),
    (torch.zeros(1, 4, 32, 32), ValueError, r"RGB images \[B, 3, H, W\]"),
    (torch.zeros(0, 3, 32, 32), ValueError, "at least one"),
    (torch.zeros(1, 3, 30, 32), ValueError, "multiples of 4"),
])
def test_generator_bad_input(x, exc, match):
    with pytest.raises(exc, match=match):
        make(ResnetGenerator)(x)


def test_discriminator_bad_input():
    with pytest.raises(ValueError, match="too small for a 3-layer PatchGAN"):
        make(PatchDiscriminator)(images(1, 16))


def test_siamese_and_pairs_bad_input():
    s = make(SiameseNet)
    x = images(2)
    pairs = pairs_for(2)
    with pytest.raises(ValueError, match=r"translated must hold 2 images"):
        s(x, images(1), pairs)
    with pytest.raises(ValueError, match="translated must have source's shape"):
        s(x, images(2, 36), pairs)
    with pytest.raises(TypeError, match="pairs must be PatchPairs"):
        s(x, x, (pairs.first, pairs.second))
    with pytest.raises(ValueError, match=r"pairs.first must index the 36 patches"):
        check_pairs(pairs_for(3), 2, 3)  # pairs drawn for a batch of 3
    bad = PatchPairs(pairs.first, pairs.second[:-1], pairs.scenario, pairs.label, pairs.same_cell)
    with pytest.raises(ValueError, match="pairs.second must be 1-D with one entry per pair"):
        s(x, x, bad)
    floats = PatchPairs(pairs.first.float(), pairs.second, pairs.scenario, pairs.label, pairs.same_cell)
    with pytest.raises(TypeError, match="pairs.first must be an integer"):
        s(x, x, floats)
    with pytest.raises(ValueError, match="attention must be"):
        content_registration_loss(torch.zeros(4, 3, 8, 8), torch.ones(4, 1, 4, 4), pairs)
    with pytest.raises(ValueError, match="must index the 4 patches of patches"):
        content_registration_loss(torch.rand(4, 3, 8, 8), torch.ones(4, 1, 8, 8), pairs)


def test_translate_bad_direction_and_batch():
    model = make(OPGAN)
    with pytest.raises(ValueError, match="direction must be 'ab'"):
        model.translate(images(1), "a2b")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        model.translate(images(1), "ab", batch_size=0)
