"""Few-shot SMIS model: prototype and pseudo-label geometry on constructed features (known answers, and a loop
oracle of the reference's sparse rule), the pSp encoder, style mixing, the unfused synthesis, generation, configs and
bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fsgan_fast.configs import ConfigError
from fsgan_fast.models.smis import (
    SMIS,
    SMISConfig,
    SMISInputError,
    dense_prototypes,
    dense_pseudo_labels,
    mix_styles,
    one_hot,
    parse_latent_mask,
    sparse_prototypes,
    sparse_pseudo_labels,
    synthesize_unfused,
)
from fsgan_fast.nn.psp import EncoderConfig, GradualStyleEncoder, load_backbone
from fsgan_fast.nn.stylegan2 import StyleGAN2Config
from fsgan_fast.ops import Prototypes

NC = 4


def tiny_cfg(**kw) -> SMISConfig:
    base = dict(stylegan=StyleGAN2Config(size=32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16),
                encoder=EncoderConfig(blocks=(1, 1, 1, 1), widths=(8, 8, 16, 16)), label_nc=NC)
    return SMISConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def model() -> SMIS:
    torch.manual_seed(0)
    m = SMIS(tiny_cfg())
    with torch.no_grad():  # noise weights start at 0: give them a value so noise handling is exercised
        for name, p in m.decoder.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.3)
    m.set_latent_avg(m.decoder.mean_latent(256, generator=torch.Generator().manual_seed(1)))
    return m.eval()


def blob_masks(b: int, side: int, classes: int = NC, seed: int = 0) -> torch.Tensor:
    coarse = torch.randint(classes, (b, 1, 4, 4), generator=torch.Generator().manual_seed(seed)).float()
    return F.interpolate(coarse, size=(side, side), mode="nearest")[:, 0].long()


# ---------------------------------------------------------------------------------------------------
# Dense prototypes and pseudo labels


def test_dense_prototypes_average_per_shot_then_over_shots_containing_the_class():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 6, 8, 8, generator=g)
    masks = torch.zeros(2, 16, 16, dtype=torch.int64)  # twice the feature grid: nearest takes every second pixel
    masks[0, :8] = 1
    masks[0, 8:, :8] = 2  # class 2 only in shot 0
    masks[1, :, 8:] = 1
    # class 3 nowhere
    protos = dense_prototypes(feats, masks, NC)
    grid = masks[:, ::2, ::2]
    expected = torch.zeros(NC, 6)
    for c in range(NC):
        means = [feats[b][:, grid[b] == c].mean(1) for b in range(2) if bool((grid[b] == c).any())]
        if means:
            expected[c] = F.normalize(sum(means) / len(means), dim=0)
    torch.testing.assert_close(protos.vectors, expected, rtol=1e-5, atol=1e-6)
    assert protos.present.tolist() == [True, True, True, False]
    assert torch.allclose(protos.vectors[:3].norm(dim=1), torch.ones(3))


def test_dense_pseudo_labels_recover_a_constructed_layout():
    """Each pixel's feature is its class's direction plus noise: the nearest prototype is its class."""
    g = torch.Generator().manual_seed(4)
    directions = F.normalize(torch.randn(NC, 16, generator=g), dim=1)
    layout = blob_masks(3, 12, seed=5)
    feats = directions[layout].permute(0, 3, 1, 2) * 3 + 0.2 * torch.randn(3, 16, 12, 12, generator=g)
    protos = dense_prototypes(feats, layout, NC)
    assert torch.equal(dense_pseudo_labels(feats, protos), layout)
    # prototypes of unnormalised directions give the same labels (cosine)
    assert torch.equal(dense_pseudo_labels(feats, Prototypes(directions * 7, torch.ones(NC, dtype=torch.bool))), layout)


def test_absent_classes_never_win_even_against_negative_cosines():
    feats = -torch.ones(1, 2, 3, 3)  # cosine -1 with the only present prototype, 0 with the absent zero vector
    protos = Prototypes(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([False, True]))
    assert torch.equal(dense_pseudo_labels(feats, protos), torch.ones(1, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="no class is present"):
        dense_pseudo_labels(feats, Prototypes(torch.zeros(2, 2), torch.zeros(2, dtype=torch.bool)))


def test_dense_ties_go_to_the_lower_class():
    feats = torch.ones(1, 2, 2, 2)
    protos = Prototypes(torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]), torch.tensor([False, True, True]))
    assert torch.equal(dense_pseudo_labels(feats, protos), torch.ones(1, 2, 2, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------------
# Sparse prototypes and pseudo labels


def sparse_oracle(feats, vectors, classes, num_classes, k, threshold):
    """The reference's rule with Python loops: per image and class, each stored vector's top-k pixels, deduplicated
    keeping the best score, kept when cos > threshold, assigned where the score beats the running best (from 0)."""
    B, C, h, w = feats.shape
    f = F.normalize(feats.flatten(2), dim=1)  # [B, C, P]
    v = F.normalize(vectors, dim=1)
    out = torch.zeros(B, h * w, dtype=torch.int64)
    for b in range(B):
        best = torch.zeros(h * w)
        for c in range(1, num_classes):
            scores: dict[int, float] = {}
            for i in torch.nonzero(classes == c).flatten().tolist():
                sim = v[i] @ f[b]
                order = sorted(range(h * w), key=lambda p: (-float(sim[p]), p))[:k]
                for p in order:
                    scores[p] = max(scores.get(p, -math.inf), float(sim[p]))
            for p, s in scores.items():
                if s > threshold and s > best[p]:
                    best[p] = s
                    out[b, p] = c
    return out.view(B, h, w)


@pytest.mark.parametrize("k, threshold", [(3, 0.5), (1, 0.0), (5, 0.2)])
def test_sparse_pseudo_labels_match_the_reference_loops(k, threshold):
    g = torch.Generator().manual_seed(10 + k)
    feats = torch.randn(2, 3, 5, 7, generator=g)
    vectors = torch.randn(9, 3, generator=g)
    classes = torch.randint(1, NC, (9,), generator=g)
    got = sparse_pseudo_labels(feats, vectors, classes, NC, k=k, threshold=threshold)
    assert torch.equal(got, sparse_oracle(feats, vectors, classes, NC, k, threshold))
    assert (got > 0).any() and (got == 0).any()


def test_sparse_many_to_one_by_hand():
    """Pixel 0 is matched by class 1 (cos 0.8) and class 2 (cos 0.9): class 2 wins; pixel 2 by both at cos 1: the
    lower class; pixel 1 only below the threshold: unlabelled."""
    e = torch.eye(3)
    px = torch.stack([torch.tensor([0.8, 0.6, 0.0]), e[2] * -1, e[1]])  # [P, C]
    feats = px.t().reshape(1, 3, 1, 3)
    c1 = torch.tensor([1.0, 0.0, 0.0])
    c2 = F.normalize(torch.tensor([0.9, math.sqrt(1 - 0.81), 0.0]), dim=0)
    vectors = torch.stack([c1, c2, e[1], e[1]])
    classes = torch.tensor([1, 2, 2, 1])
    labels = sparse_pseudo_labels(feats, vectors, classes, 3, k=1, threshold=0.5)
    cos = F.normalize(vectors, dim=1) @ F.normalize(px, dim=1).t()
    assert cos[0, 0] == pytest.approx(0.8, abs=1e-6) and cos[1, 0] > cos[0, 0]
    assert labels.flatten().tolist() == [2, 0, 1]


def test_sparse_prototypes_keep_every_annotated_vector():
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(2, 5, 4, 4, generator=g)
    masks = torch.zeros(2, 8, 8, dtype=torch.int64)
    masks[0, 2, 4] = 3  # on the grid's sampled pixels (even rows and columns)
    masks[1, 6, 0] = 1
    masks[1, 6, 2] = 1
    masks[1, 3, 3] = 2  # an odd pixel: not sampled by the nearest resize
    vectors, classes = sparse_prototypes(feats, masks, NC)
    assert classes.tolist() == [3, 1, 1]
    expected = torch.stack([feats[0, :, 1, 2], feats[1, :, 3, 0], feats[1, :, 3, 1]])
    torch.testing.assert_close(vectors, F.normalize(expected, dim=1))
    masks.zero_()
    masks[0, 1, 1] = 2
    with pytest.raises(ValueError, match="no annotated pixel .* survives the resize"):
        sparse_prototypes(feats, masks, NC)


def ids(b: int) -> torch.Tensor:
    return torch.zeros(b, 8, 8, dtype=torch.int64)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda f: sparse_pseudo_labels(f, torch.randn(2, 3), torch.tensor([1, 2]), NC), r"vectors must be \[V, C=5\]"),
        (lambda f: sparse_pseudo_labels(f, torch.randn(2, 5), torch.tensor([0, 2]), NC), r"classes must lie in 1\.\.3"),
        (lambda f: sparse_pseudo_labels(f, torch.randn(2, 5), torch.tensor([1, 4]), NC), r"classes must lie in 1\.\.3"),
        (lambda f: sparse_pseudo_labels(f, torch.randn(2, 5), torch.tensor([1]), NC), r"classes must be an integer"),
        (lambda f: sparse_pseudo_labels(f, torch.randn(2, 5), torch.tensor([1, 2]), NC, threshold=-0.2),
         r"threshold must be a number in \[0, 1\)"),
        (lambda f: dense_pseudo_labels(f, Prototypes(torch.randn(NC, 3), torch.ones(NC, dtype=torch.bool))),
         r"prototypes have 3 channels but feats 5"),
        (lambda f: dense_prototypes(f, torch.full((2, 8, 8), NC), NC),
         r"masks holds class ids in \[4, 4\], but there are 4 classes"),
        (lambda f: dense_prototypes(f, ids(3), NC), r"one mask per feature map \(B=2\)"),
        (lambda f: dense_prototypes(f, torch.zeros(2, 8, 8), NC), r"masks must be an integer tensor"),
        (lambda f: dense_prototypes(f.long(), ids(2), NC), r"feats must be a floating"),
        (lambda f: sparse_prototypes(f[0], ids(2), NC), r"feats must be \[B, C, H, W\]"),
    ],
)
def test_pseudo_label_bad_input(call, match):
    feats = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(7))
    with pytest.raises((ValueError, TypeError), match=match):
        call(feats)


# ---------------------------------------------------------------------------------------------------
# The encoder


@pytest.mark.parametrize("n_latent, size", [(8, 32), (10, 64), (18, 64)])
def test_encoder_shapes_heads_and_gradients(n_latent, size):
    torch.manual_seed(0)
    enc = GradualStyleEncoder(EncoderConfig(blocks=(1, 2, 1, 1), widths=(8, 8, 16, 16), input_size=32), label_nc=3,
                              n_latent=n_latent, style_dim=12, image_size=size)
    assert enc.input_size == 32 and len(enc.styles) == n_latent
    # heads 0..2 read c3 (2x2 at 32 px: one stride-2 conv), 3..6 p2 (4x4: two), the rest p1 (8x8: three)
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in s.convs) for s in enc.styles]
    assert convs == ([1] * 3 + [2] * 4 + [3] * (n_latent - 7))[:n_latent]
    x = one_hot(blob_masks(2, size, 3), 3)
    out = enc(x)
    assert out.shape == (2, n_latent, 12) and torch.isfinite(out).all()
    out.square().mean().backward()
    dead = [n for n, p in enc.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, dead
    assert enc.taps == (2, 3, 4)  # the last unit of stages 2, 3, 4


def test_encoder_rejects_bad_masks_and_configs():
    enc = GradualStyleEncoder(EncoderConfig(blocks=(1, 1, 1, 1), widths=(8, 8, 8, 8)), label_nc=3, n_latent=8,
                              style_dim=8, image_size=32)
    with pytest.raises(ValueError, match=r"label_nc=3"):
        enc(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="square"):
        enc(torch.zeros(1, 3, 32, 16))
    with pytest.raises(TypeError, match="floating tensor"):
        enc(torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match="blocks must be 4 positive ints"):
        EncoderConfig(blocks=(3, 4, 14))
    with pytest.raises(ValueError, match="input_size must be a power of two"):
        EncoderConfig(input_size=48)
    with pytest.raises(ValueError, match=r"middle \(2\) must be >= coarse \(3\)"):
        EncoderConfig(middle=2)
    assert EncoderConfig.ir_se(100).blocks == (3, 13, 30, 3)
    with pytest.raises(ValueError, match="image_size must be an int >= 32"):
        GradualStyleEncoder(EncoderConfig(), label_nc=3, n_latent=8, style_dim=8, image_size=16)


def test_paper_encoder_is_psp_ir_se50():
    enc = GradualStyleEncoder(EncoderConfig(), label_nc=19, n_latent=18, style_dim=512, image_size=1024)
    assert len(enc.body) == 24 and enc.taps == (6, 20, 23)  # pSp reads c1, c2, c3 after body units 6, 20, 23
    assert sum(p.numel() for p in enc.parameters()) == pytest.approx(267.1e6, rel=2e-3)  # pSp's encoder size
    assert "body.0.res_layer.5.fc1.weight" in enc.state_dict() and "styles.17.linear.weight" in enc.state_dict()


def test_load_backbone_copies_the_body_only():
    cfg = EncoderConfig(blocks=(1, 1, 1, 1), widths=(8, 8, 16, 16))
    torch.manual_seed(1)
    src = GradualStyleEncoder(cfg, label_nc=3, n_latent=8, style_dim=8, image_size=32)
    torch.manual_seed(2)
    dst = GradualStyleEncoder(cfg, label_nc=5, n_latent=8, style_dim=8, image_size=32)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    names = load_backbone(dst, src.state_dict())
    assert names and all(n.startswith("body.") for n in names)
    for k, v in dst.state_dict().items():
        ref = src.state_dict()[k] if k.startswith("body.") else before[k]
        assert torch.equal(v, ref), k
    other = GradualStyleEncoder(EncoderConfig(blocks=(1, 1, 1, 1), widths=(8, 8, 16, 32)), label_nc=3, n_latent=8,
                                style_dim=8, image_size=32)
    with pytest.raises(ValueError, match="do not fit this encoder"):
        load_backbone(dst, other.state_dict())


# ---------------------------------------------------------------------------------------------------
# Style mixing, synthesis, generation


def test_parse_latent_mask():
    assert parse_latent_mask("auto", 18) == tuple(range(8, 18))  # pSp README: --latent_mask 8..17
    assert parse_latent_mask("auto", 10) == (5, 6, 7, 8, 9)
    assert parse_latent_mask("8-17", 18) == parse_latent_mask("8..17", 18) == tuple(range(8, 18))
    assert parse_latent_mask("4, 6,9-11", 12) == (4, 6, 9, 10, 11)
    assert parse_latent_mask("none", 8) == parse_latent_mask("", 8) == parse_latent_mask(None, 8) == ()
    assert parse_latent_mask([3, 1, 3], 8) == (1, 3)
    with pytest.raises(SMISInputError, match=r"layers \[8\] are out of range: this prior has 8 W\+ layers"):
        parse_latent_mask("6-8", 8)
    with pytest.raises(SMISInputError, match="expected layer indices"):
        parse_latent_mask("fine", 8)
    with pytest.raises(SMISInputError, match="is empty"):
        parse_latent_mask("5-3", 8)


def test_mix_styles_replaces_or_blends_only_the_masked_layers():
    g = torch.Generator().manual_seed(8)
    codes, inject = torch.randn(2, 5, 3, generator=g), torch.randn(2, 3, generator=g)
    layers = torch.tensor([False, True, False, True, True])
    out = mix_styles(codes, inject, layers)
    torch.testing.assert_close(out[:, ~layers], codes[:, ~layers])
    torch.testing.assert_close(out[:, layers], inject.unsqueeze(1).expand(-1, 3, -1))
    half = mix_styles(codes, inject, layers, 0.25)
    torch.testing.assert_close(half[:, layers], 0.75 * codes[:, layers] + 0.25 * inject.unsqueeze(1))


def test_unfused_synthesis_equals_the_decoder(model):
    g = torch.Generator().manual_seed(9)
    codes = model.latent_avg + 0.5 * torch.randn(3, model.n_latent, model.style_dim, generator=g)
    fixed = [getattr(model.decoder.noises, f"noise_{i}") for i in range(model.decoder.num_layers)]
    maps = model.decoder.make_noise(3, generator=g)
    with torch.no_grad():
        for noise in (fixed, maps):
            expected = model.decoder(codes, input_is_latent=True, noise=noise).image
            got = synthesize_unfused(model.decoder, codes, noise)
            assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
        assert (synthesize_unfused(model.decoder, codes, maps) - synthesize_unfused(model.decoder, codes, fixed)
                ).abs().max() > 1e-3, "the noise maps must matter"


def test_encode_adds_latent_avg_and_accepts_ids_or_one_hot(model):
    masks = blob_masks(2, 32, seed=11)
    with torch.no_grad():
        codes = model.encode(masks)
        raw = model.encoder(one_hot(masks, NC))
        torch.testing.assert_close(codes, raw + model.latent_avg)
        torch.testing.assert_close(model.encode(one_hot(masks, NC)), codes)
        assert model.encode(masks[0]).shape == (1, model.n_latent, model.style_dim)
    plain = SMIS(tiny_cfg(start_from_latent_avg=False))
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval().encode(masks), raw)


def test_generate_mixes_a_new_style_per_output(model):
    masks = blob_masks(2, 32, seed=12)
    plain, mixed = model.generate(masks, 3, torch.Generator().manual_seed(0), latent_layers="auto")
    assert plain.shape == (2, 3, 32, 32) and mixed.shape == (2, 3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain, model(masks))  # the plain output: encoder + fixed noise
    assert (mixed[:, 0] - mixed[:, 1]).abs().max() > 1e-3 and (mixed[0, 0] - plain[0]).abs().max() > 1e-3
    again = model.generate(masks, 3, torch.Generator().manual_seed(0), latent_layers="auto", batch_size=1)
    torch.testing.assert_close(again[1], mixed)  # independent of batch_size
    _, same = model.generate(masks, 2, torch.Generator().manual_seed(0), latent_layers="none")
    torch.testing.assert_close(same[:, 0], plain)
    torch.testing.assert_close(same[:, 1], plain)
    _, noisy = model.generate(masks, 2, torch.Generator().manual_seed(0), latent_layers="none", random_noise=True)
    assert (noisy[:, 0] - noisy[:, 1]).abs().max() > 1e-4, "random noise differs per output"


def test_forward_mixes_with_the_given_style(model):
    masks = blob_masks(1, 32, seed=13)
    w = model.random_w(1, torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model(masks, latent_layers="4-7", inject=w)
        codes = model.encode(masks)
        codes[:, 4:] = w
        torch.testing.assert_close(got, model.synthesize(codes))


@pytest.mark.parametrize(
    "masks, match",
    [
        (torch.full((1, 32, 32), NC), r"masks holds class ids in \[4, 4\], but there are 4 classes"),
        (torch.zeros(1, 16, 16, dtype=torch.int64), r"masks must be 32x32 \(the model's size\), got 16x16"),
        (torch.zeros(1, 3, 32, 32), r"one-hot \[B, label_nc=4, 32, 32\]"),
        (torch.zeros(1, NC, 16, 16), r"masks must be 32x32"),
        (torch.zeros(1, 2, 32, 32, dtype=torch.int64), r"class ids \[B, H, W\]"),
        (torch.zeros(1, 32, 32, dtype=torch.bool), r"integer tensor of class ids"),
    ],
)
def test_bad_masks_raise_input_errors(model, masks, match):
    with pytest.raises((SMISInputError, ValueError, TypeError), match=match):
        model.encode(masks)


def test_generate_bad_options(model):
    masks = blob_masks(1, 32)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        model.generate(masks, -1)
    with pytest.raises(SMISInputError, match=r"alpha must lie in \[0, 1\]"):
        model.generate(masks, 1, alpha=1.5)
    with pytest.raises(SMISInputError, match="out of range"):
        model.generate(masks, 1, latent_layers="0-20")
    with pytest.raises(SMISInputError, match=r"inject must be \[B=1, 16\]"):
        model(masks, latent_layers="auto", inject=torch.zeros(2, 16))


def test_features_are_the_matching_block(model):
    w = model.random_w(2, torch.Generator().manual_seed(4))
    with torch.no_grad():
        image, feats = model.features(w, random_noise=False)
        out = model.decoder(w, input_is_latent=True, randomize_noise=False, return_features=(32,))
    assert feats.shape == (2, 16, 32, 32)  # feature_res 64 clipped to the 32 px prior
    torch.testing.assert_close(feats, out.features[32])
    torch.testing.assert_close(image, out.image)


# ---------------------------------------------------------------------------------------------------
# Config


def test_config_roundtrip_and_validation():
    cfg = tiny_cfg(feature_res=16)
    back = SMISConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.stylegan, StyleGAN2Config) and back.matching_res == 16
    with pytest.raises(ValueError, match="feature_res must be a power of two"):
        tiny_cfg(feature_res=48)
    with pytest.raises(ConfigError, match="unknown SMISConfig fields"):
        SMISConfig.from_dict({"label_nc": 3, "max_channel": 8})
    with pytest.raises(ValueError, match="label_nc is 0"):
        SMIS(tiny_cfg(label_nc=0))
    with pytest.raises(TypeError, match="SMISConfig"):
        SMIS(StyleGAN2Config())
    m = SMIS(tiny_cfg())
    with pytest.raises(ValueError, match=r"latent_avg must be \[16\], \[1, 16\] or \[8, 16\]"):
        m.set_latent_avg(torch.zeros(3, 16))
    m.set_latent_avg(torch.arange(16.0))
    assert torch.equal(m.latent_avg, torch.arange(16.0).expand(8, 16))
    assert all(not p.requires_grad for p in m.decoder.parameters())
    assert not m.train().decoder.training and m.encoder.training


def test_paper_defaults():
    cfg = SMISConfig(label_nc=19)
    assert (cfg.stylegan.style_dim, cfg.stylegan.n_mlp, cfg.stylegan.channel_multiplier) == (512, 8, 2)
    assert cfg.encoder.blocks == (3, 4, 14, 3) and cfg.feature_res == 64 and cfg.start_from_latent_avg
