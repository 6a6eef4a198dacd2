"""MatchGAN networks: config checks, the reference's parameter counts, label tiling, D's heads and the feature reuse of
the matching loss (values and gradients against the reference's recomputation), StarGAN's flip targets, target
parsing, translation, bad input, and the registry entry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fsgan_fast.configs import ConfigError
from fsgan_fast.models import registry
from fsgan_fast.models.matchgan import (
    Discriminator,
    Generator,
    MatchGAN,
    MatchGANConfig,
    MatchGANInputError,
    class_string,
    translation_grid,
)
from fsgan_fast.train.matchgan import match_loss, match_pairs

ATTRS = ("Hat", "Red", "Blue", "Green", "Old")
TINY = dict(size=16, g_conv_dim=4, d_conv_dim=4, g_repeat_num=1, d_repeat_num=3, labels=ATTRS,
            exclusive=("Red,Blue,Green",))


def tiny(**kw) -> MatchGANConfig:
    return MatchGANConfig(**{**TINY, **kw})


def images(n: int, side: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def labels(n: int, c: int = len(ATTRS), seed: int = 1) -> torch.Tensor:
    return (torch.rand(n, c, generator=torch.Generator().manual_seed(seed)) < 0.5).float()


def perturbed(model: MatchGAN, seed: int = 0) -> MatchGAN:
    """Non-trivial InstanceNorm affine parameters (a fresh model has weight 1, bias 0 everywhere)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.add_(0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.3 * torch.randn(m.bias.shape, generator=g))
    return model


# ---------------------------------------------------------------------------------------------------
# Config


def test_default_config_is_the_reference_celeba_model():
    cfg = MatchGANConfig()
    assert (cfg.size, cfg.g_conv_dim, cfg.d_conv_dim, cfg.g_repeat_num, cfg.d_repeat_num) == (128, 64, 64, 6, 6)
    assert cfg.labels == ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young") and cfg.trunk_side == 2
    vectors = cfg.class_vectors()
    assert vectors.shape == (16, 5)  # the reference's 16 "sensible" labels: at most one hair colour
    assert bool((vectors[:, :3].sum(1) <= 1).all()) and len({class_string(v) for v in vectors.tolist()}) == 16
    assert class_string(vectors[0].tolist()) == "00000" and class_string(vectors[1].tolist()) == "10000"


def test_reference_parameter_counts():
    """StarGAN's G and D at 128 px with c_dim 5 (8,430,528 and 44,762,048), plus MatchGAN's pair head: the
    reference's k x k conv on 4096 channels, or ours with a hidden layer."""
    cfg = MatchGANConfig(pair_head="linear")
    gen, dis = Generator(cfg), Discriminator(cfg)
    assert sum(p.numel() for p in gen.parameters()) == 8_430_528
    heads = sum(p.numel() for p in dis.pair_head.parameters())
    assert heads == 2 * 2 * 4096 * 2
    assert sum(p.numel() for p in dis.parameters()) - heads == 44_762_048
    mlp = Discriminator(MatchGANConfig()).pair_head
    assert sum(p.numel() for p in mlp.parameters()) == 4096 * 256 + 256 + 2 * 2 * 256 * 2
    assert dis.channels == 2048 and not any(m.track_running_stats for m in gen.modules()
                                            if isinstance(m, torch.nn.InstanceNorm2d))


@pytest.mark.parametrize("kw, message", [
    (dict(size=18), "multiple of 4"),
    (dict(size=20), r"multiple of 2\^d_repeat_num = 8"),
    (dict(labels=("A", "A")), "distinct"),
    (dict(labels=("A,B", "C"), exclusive=()), "may not"),
    (dict(labels=(), exclusive=()), "at least 1"),
    (dict(exclusive=("Red,Purple",)), "unknown name.*Purple"),
    (dict(exclusive=("Red",)), "two or more"),
    (dict(classes=("0101",)), "5 characters"),
    (dict(classes=("01012",)), "5 characters 0/1"),
    (dict(classes=("01100",)), "break the exclusive groups"),
    (dict(classes=("01000", "01000")), "distinct"),
    (dict(label_kind="categorical", exclusive=("Red,Blue",)), "categorical"),
    (dict(label_kind="categorical", exclusive=(), classes=("11000",)), "one-hot"),
    (dict(label_kind="categorical", exclusive=(), labels=("A",)), "at least 2"),
])
def test_config_is_checked(kw, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**kw)


def test_categorical_and_recorded_classes():
    cfg = tiny(label_kind="categorical", exclusive=())
    torch.testing.assert_close(cfg.class_vectors(), torch.eye(5))
    cfg = tiny(classes=("00001", "01001", "10000"))
    assert cfg.class_vectors().tolist() == [[0, 0, 0, 0, 1], [0, 1, 0, 0, 1], [1, 0, 0, 0, 0]]
    assert MatchGANConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------------------------------------------
# Networks


def test_generator_tiles_the_labels_over_the_image():
    torch.manual_seed(0)
    gen = perturbed(MatchGAN(tiny())).gen
    x, c = images(3), labels(3)
    out = gen(x, c)
    assert out.shape == (3, 3, 16, 16) and float(out.detach().abs().max()) <= 1
    # the first conv sees the image and one constant map per label, as the reference's tile-and-concat
    tiled = torch.cat([x, c[:, :, None, None].expand(-1, -1, 16, 16)], dim=1)
    first = F.conv2d(tiled, gen.stem[0].weight, padding=3)
    torch.testing.assert_close(gen.stem[0](tiled), first)
    torch.testing.assert_close(gen.to_rgb(gen.up(gen.blocks(gen.down(gen.stem(tiled))))), out)
    assert (gen(x, 1 - c) - out).abs().max() > 1e-3  # the labels matter
    assert gen(images(2, side=24), labels(2)).shape == (2, 3, 24, 24)  # fully convolutional
    # per-image statistics: an image's output does not depend on the rest of the batch, in eval mode too
    torch.testing.assert_close(gen.eval()(x[:1], c[:1]), out[:1], rtol=1e-5, atol=1e-6)


def test_discriminator_heads():
    torch.manual_seed(1)
    dis = MatchGAN(tiny()).dis
    src, cls, feats = dis(images(4))
    k = 16 // 2**3
    assert src.shape == (4, 1, k, k) and cls.shape == (4, 5) and feats.shape == (4, 16, k, k)
    torch.testing.assert_close(dis.critic(images(4)), src)
    torch.testing.assert_close(cls, F.conv2d(feats, dis.cls_head.weight).flatten(1))
    pair = dis.pair_logits(feats[[0, 1]], feats[[2, 3]])
    both = torch.cat([feats[[0, 1]], feats[[2, 3]]], 1)  # channel concatenation, then the head
    hidden = F.leaky_relu(F.conv2d(both, dis.pair_head[0].weight, dis.pair_head[0].bias), 0.01)
    expected = F.conv2d(hidden, dis.pair_head[2].weight).flatten(1)
    assert pair.shape == (2, 2)
    torch.testing.assert_close(pair, expected)
    with pytest.raises(ValueError, match="trunk maps"):
        dis.pair_logits(feats[:2], feats[:3])
    linear = MatchGAN(tiny(pair_head="linear")).dis
    feats = linear(images(2))[2]
    torch.testing.assert_close(linear.pair_logits(feats[:1], feats[1:]),
                               F.conv2d(torch.cat([feats[:1], feats[1:]], 1), linear.pair_head.weight).flatten(1))


def test_match_loss_on_reused_features_equals_the_reference_recomputation():
    """The reference runs D's trunk again on the paired images; reusing the batch's features gives the same loss and
    the same gradients for every D parameter and for the images."""
    torch.manual_seed(2)
    dis = MatchGAN(tiny()).dis
    pairs = match_pairs(12)
    x1 = images(12, seed=5).requires_grad_(True)
    ours = match_loss(dis, dis(x1)[2], pairs)
    grads = torch.autograd.grad(ours, [x1, *dis.parameters()], allow_unused=True)
    x2 = x1.detach().clone().requires_grad_(True)
    logits = dis.pair_head(torch.cat([dis.trunk(x2[pairs.first]), dis.trunk(x2[pairs.second])], 1)).flatten(1)
    ref = F.cross_entropy(logits, pairs.same)
    ref_grads = torch.autograd.grad(ref, [x2, *dis.parameters()], allow_unused=True)
    assert len(ref_grads) == 1 + len(list(dis.parameters()))
    torch.testing.assert_close(ours, ref)
    for name, a, b in zip(["images"] + [n for n, _ in dis.named_parameters()], grads, ref_grads):
        if b is None:  # the src and cls heads take no part
            assert a is None, name
            continue
        assert float(b.abs().max()) > 0, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_only_the_mlp_pair_head_can_compare_two_images():
    """The reference's head is linear in the concatenation, so its same-vs-different logit is a(x1) + b(x2): for any
    four images, s(a, b) + s(c, d) = s(a, d) + s(c, b), and no such head can score "same label" above chance. The
    hidden layer of the mlp head breaks that sum."""
    @torch.no_grad()
    def interaction(dis):
        feats = dis(images(4, seed=9))[2]
        s = lambda i, j: (lambda l: l[0, 1] - l[0, 0])(dis.pair_logits(feats[i : i + 1], feats[j : j + 1]))
        return float(s(0, 1) + s(2, 3) - s(0, 3) - s(2, 1)), float(s(0, 1).abs())

    torch.manual_seed(4)
    linear, scale = interaction(MatchGAN(tiny(pair_head="linear")).dis)
    assert abs(linear) < 1e-5 * max(scale, 1e-3)
    torch.manual_seed(4)
    mlp, scale = interaction(MatchGAN(tiny(pair_hidden=32)).dis)
    assert abs(mlp) > 1e-3 * scale


def test_generator_gets_gradients_through_the_pair_head():
    torch.manual_seed(3)
    model = MatchGAN(tiny())
    fake = model.gen(images(12), labels(12))
    loss = match_loss(model.dis, model.dis(fake)[2], match_pairs(12))
    loss.backward()
    for name, p in model.gen.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert float(model.gen.stem[0].weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("call, error, message", [
    (lambda g: g(images(2).long(), labels(2)), TypeError, "images must be a floating tensor"),
    (lambda g: g(images(2)[:, :2], labels(2)), ValueError, r"images must be images \[B, 3, H, W\]"),
    (lambda g: g(images(2, side=18), labels(2)), ValueError, "multiples of 4"),
    (lambda g: g(images(2), labels(3)), ValueError, "labels holds 3 label vectors for 2 images"),
    (lambda g: g(images(2), labels(2, c=4)), ValueError, r"labels must be label vectors \[B, 5\]"),
    (lambda g: g(images(2), labels(2).bool()), TypeError, "labels must be a floating tensor"),
    (lambda g: g(images(2), "Hat"), TypeError, "labels must be a torch.Tensor"),
])
def test_generator_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(Generator(tiny()))


def test_discriminator_needs_the_model_size():
    with pytest.raises(ValueError, match=r"images must be images \[B, 3, 16, 16\]"):
        Discriminator(tiny())(images(2, side=32))


# ---------------------------------------------------------------------------------------------------
# Targets and translation


def stargan_flips(source: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """The reference's create_labels for CelebA, generalised from the hair colours to any exclusive groups."""
    out = []
    for i in range(source.shape[1]):
        c = source.clone()
        group = next((g for g in groups if i in g), None)
        if group is not None:
            c[:, i] = 1
            for j in group:
                if j != i:
                    c[:, j] = 0
        else:
            c[:, i] = (c[:, i] == 0).float()
        out.append(c)
    return torch.stack(out, dim=1)


def test_flip_targets_are_stargans_test_labels():
    model = MatchGAN(tiny())
    source = labels(7, seed=4)
    torch.testing.assert_close(model.flip_targets(source), stargan_flips(source, [[1, 2, 3]]))
    cat = MatchGAN(tiny(label_kind="categorical", exclusive=()))
    torch.testing.assert_close(cat.flip_targets(torch.eye(5)[[1, 3]]), torch.eye(5).expand(2, 5, 5))


def test_label_vectors_from_words():
    model = MatchGAN(tiny())
    assert model.label_vector("none").tolist() == [0, 0, 0, 0, 0]
    assert model.label_vector("Hat,Blue").tolist() == [1, 0, 1, 0, 0]
    assert model.label_vector("Old+Red").tolist() == [0, 1, 0, 0, 1]
    with pytest.raises(MatchGANInputError, match=r"unknown attribute\(s\) \['Cap'\]"):
        model.label_vector("Hat,Cap")
    with pytest.raises(MatchGANInputError, match="exclusive group"):
        model.label_vector("Red,Blue")
    cat = MatchGAN(tiny(label_kind="categorical", exclusive=()))
    assert cat.label_vector("Green").tolist() == [0, 0, 0, 1, 0]
    with pytest.raises(MatchGANInputError, match="one of the categories"):
        cat.label_vector("Green,Old")
    assert isinstance(MatchGANInputError("x"), registry.InputError)  # the CLI prints it as one line


def test_translate_every_image_to_every_target():
    torch.manual_seed(5)
    model = perturbed(MatchGAN(tiny())).eval()
    x = images(5, seed=6)
    targets = torch.stack([model.label_vector(t) for t in ("none", "Hat", "Red,Old")])
    out = model.translate(x, targets, batch_size=2)
    assert out.shape == (5, 3, 3, 16, 16)
    with torch.no_grad():
        for t in range(3):
            torch.testing.assert_close(out[:, t], model.gen(x, targets[t].expand(5, -1)), rtol=1e-5, atol=1e-6)
    per_image = labels(5 * 2, seed=7).view(5, 2, 5)
    out2 = model.translate(x, per_image)
    with torch.no_grad():
        torch.testing.assert_close(out2[:, 1], model.gen(x, per_image[:, 1]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"targets must be \[T, 5\] or \[N=5, T, 5\]"):
        model.translate(x, labels(4).view(2, 2, 5))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        model.translate(x, targets, batch_size=0)
    grid = translation_grid(x, out)
    assert grid.shape == (3, 5 * 18 + 2, 4 * 18 + 2)  # one row per image: the source and three translations
    torch.testing.assert_close(grid[:, 2:18, 2:18], x[0])
    torch.testing.assert_close(grid[:, 20:36, 38:54], out[1, 1])


def test_predict_labels_reads_d_classifier():
    torch.manual_seed(6)
    model = MatchGAN(tiny())
    x = images(4)
    with torch.no_grad():
        logits = model.dis(x)[1]
    assert model.predict_labels(x, batch_size=3).tolist() == (logits > 0).float().tolist()
    assert model.dis.training  # left as it was


# ---------------------------------------------------------------------------------------------------
# The registry entry


def test_matchgan_is_registered():
    spec = registry.get("matchgan")
    assert spec.get("model_config") is MatchGANConfig and set(spec.get("apps")) == {"translate"}
    assert spec.get("auto_preset")("builtin") == "demo" and spec.get("auto_preset")("builtin:categorical") == "demo"
    assert spec.get("auto_preset")("celeba/list_attr_celeba.txt") == "celeba"
    assert spec.get("auto_preset")("rafd/train") == "paper"
    assert set(spec.get("presets")) == {"demo", "paper", "celeba"}
    model = spec.get("build")(tiny())
    assert registry.spec_for(model) is spec and registry.spec_for(model.gen) is spec
