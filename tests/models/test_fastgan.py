"""FastGAN networks: config, shapes at every size, noise, style mixing, D branches and decoders, quadrant crops,
spectral norm and init, parameter count of the paper's 1024 px model, gradients, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from fsgan_fast.configs import ConfigError
from fsgan_fast.models.fastgan import (
    Discriminator,
    FastGANConfig,
    Generator,
    NoiseInjection,
    UpBlock,
    UpBlockComp,
    quadrant_crop,
    reconstruction_targets,
)
from fsgan_fast.nn import SkipLayerExcitation

NZ = 16
TINY = dict(nz=NZ, ngf=8, ndf=8, dec_ngf=4)


def tiny_cfg(size: int = 256, **kw) -> FastGANConfig:
    return FastGANConfig(size=size, **{**TINY, **kw})


def gen_seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def latents(b: int, seed: int = 1, nz: int = NZ) -> torch.Tensor:
    return torch.randn(b, nz, generator=gen_seeded(seed))


def images(b: int, side: int, seed: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, side, side, generator=gen_seeded(seed)) * 2 - 1


def make_gen(size: int = 256, seed: int = 0, **kw) -> Generator:
    torch.manual_seed(seed)
    return Generator(tiny_cfg(size, **kw))


def make_dis(size: int = 256, seed: int = 0, **kw) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(tiny_cfg(size, **kw))


def perturb_noise_weights(g: Generator, value: float = 0.5) -> None:
    """Noise weights start at 0 (noise has no effect); give them a value so noise tests mean something."""
    for m in g.modules():
        if isinstance(m, NoiseInjection):
            m.weight.data.fill_(value)


# ---------------------------------------------------------------------------------------------------
# Config


def test_fastgan_config_defaults_and_roundtrip():
    cfg = FastGANConfig()
    assert (cfg.size, cfg.nz, cfg.ngf, cfg.ndf, cfg.sle_act, cfg.out_tanh) == (256, 256, 64, 64, "swish", True)
    back = FastGANConfig.from_dict(json.loads(json.dumps(tiny_cfg(512, sle_act="lrelu").to_dict())))
    assert back == tiny_cfg(512, sle_act="lrelu")
    with pytest.raises(ValueError, match="unknown FastGANConfig fields"):
        FastGANConfig.from_dict({"size": 256, "im_size": 256})


def test_fastgan_config_widths_match_official_tables():
    cfg = FastGANConfig(size=1024)
    assert list(cfg.gen_widths().values()) == [1024, 512, 256, 128, 128, 64, 32, 16, 8]
    assert cfg.dis_widths() == {8: 1024, 16: 512, 32: 256, 64: 128, 128: 64, 256: 32, 512: 16, 1024: 8}
    big = FastGANConfig(size=2048, ngf=64, ndf=64)
    assert big.gen_widths()[2048] == 4 and big.dis_widths()[2048] == 4  # halving continues above 1024


@pytest.mark.parametrize("size", [128, 256, 512, 1024, 2048, 4096])
def test_fastgan_config_accepts_powers_of_two(size):
    assert FastGANConfig(size=size, ngf=64, ndf=64).size == size


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(size=200), "power of two"),
        (dict(size=384), "power of two"),
        (dict(size=64), "size must be >= 128"),
        (dict(size=2048, ngf=8, ndf=64), r"ngf=8 is too small for size 2048: G would have 0 channels at \[2048\]"),
        (dict(size=1024, ngf=64, ndf=4), r"ndf=4 is too small"),
        (dict(nz=0), "nz must be >= 1"),
        (dict(sle_act="relu"), "sle_act must be one of"),
    ],
)
def test_fastgan_config_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        FastGANConfig(**kw)


def test_fastgan_config_errors_are_config_errors():
    with pytest.raises(ConfigError):
        FastGANConfig.from_dict({"size": 300})


# ---------------------------------------------------------------------------------------------------
# Generator


@pytest.mark.parametrize("size", [128, 256, 512, 1024])
def test_fastgan_generator_shapes_and_range(size):
    g = make_gen(size)
    img, img128 = g(latents(2))
    assert img.shape == (2, 3, size, size) and img128.shape == (2, 3, 128, 128)
    assert img.dtype == torch.float32 and torch.isfinite(img).all() and torch.isfinite(img128).all()
    assert img.abs().max() <= 1 and img128.abs().max() <= 1  # tanh at every size


def test_fastgan_generator_block_layout():
    g = Generator(FastGANConfig(size=2048, nz=NZ, ngf=16, ndf=16))
    kinds = {int(r): type(b) for r, b in g.blocks.items()}
    assert [r for r, k in kinds.items() if k is UpBlockComp] == [8, 32, 128, 512, 2048]
    assert [r for r, k in kinds.items() if k is UpBlock] == [16, 64, 256, 1024]
    assert g.sle_targets == (64, 128, 256, 512)
    # the SLE gate maps channels of the source (target / 16) to those of the target
    w = g.cfg.gen_widths()
    for t in g.sle_targets:
        conv1 = g.sle[str(t)].conv1
        assert conv1.weight.shape == (w[t], w[t // 16], 4, 4)
    assert make_gen(128).sle_targets == (64, 128)
    assert make_gen(256).sle_targets == (64, 128, 256)


def test_fastgan_generator_128_returns_one_image_twice():
    g = make_gen(128)
    assert g.to_big is None
    img, img128 = g(latents(2))
    assert img is img128


@torch.no_grad()
def test_fastgan_generator_tanh_switch():
    g = make_gen(256).eval()
    lin = Generator(tiny_cfg(256, out_tanh=False)).eval()
    lin.load_state_dict(g.state_dict())
    z = latents(2)
    noise = g.make_noise(2, generator=gen_seeded(3))
    a, a128 = g(z, noise=noise)
    b, b128 = lin(z, noise=noise)
    torch.testing.assert_close(a, torch.tanh(b))
    torch.testing.assert_close(a128, torch.tanh(b128))


@torch.no_grad()
def test_fastgan_generator_noise_is_explicit_when_wanted():
    g = make_gen(256).eval()
    perturb_noise_weights(g)
    z = latents(2)
    assert g.noise_shapes(2) == [(2, 1, 8, 8), (2, 1, 8, 8), (2, 1, 32, 32), (2, 1, 32, 32),
                                 (2, 1, 128, 128), (2, 1, 128, 128)]
    noise = g.make_noise(2, generator=gen_seeded(5))
    torch.testing.assert_close(g(z, noise=noise)[0], g(z, noise=noise)[0], rtol=0, atol=0)
    # the same generator seed draws the same maps; fresh draws differ
    a = g(z, noise_generator=gen_seeded(7))[0]
    torch.testing.assert_close(a, g(z, noise_generator=gen_seeded(7))[0], rtol=0, atol=0)
    torch.testing.assert_close(a, g(z, noise=g.make_noise(2, generator=gen_seeded(7)))[0], rtol=0, atol=0)
    assert not torch.equal(g(z)[0], g(z)[0])
    # at init (weights 0) the noise has no effect, as in the official code
    g0 = make_gen(256).eval()
    torch.testing.assert_close(g0(z)[0], g0(z)[0], rtol=0, atol=0)


@torch.no_grad()
def test_fastgan_sle_sources_match_forward():
    g = make_gen(512).eval()
    perturb_noise_weights(g)
    z = latents(3)
    noise = g.make_noise(3, generator=gen_seeded(1))
    src = g.sle_sources(z, noise=noise)
    w = g.cfg.gen_widths()
    assert {r: tuple(t.shape) for r, t in src.items()} == {r: (3, w[r], r, r) for r in (4, 8, 16, 32)}
    img, _ = g(z, noise=noise)
    torch.testing.assert_close(img, _manual_forward(g, src, src, noise)[0])


def _manual_forward(g: Generator, content: dict, sources: dict, noise: list) -> tuple[torch.Tensor, torch.Tensor]:
    """G's high-resolution path written out: main path from ``content[32]``, SLE gates from ``sources``."""
    maps = iter(noise[4:])  # the 8 and 32 px comp blocks consume the first four maps
    x = content[32]
    for r in g.resolutions[3:]:
        block = g.blocks[str(r)]
        x = block(x, [next(maps) for _ in range(block.noise_maps)])
        if str(r) in g.sle:
            x = g.sle[str(r)](sources[r // 16], x)
        if r == 128:
            x128 = x
    img = g.to_big(x) if g.to_big is not None else g.to_128(x128)
    return torch.tanh(img), torch.tanh(g.to_128(x128))


@torch.no_grad()
def test_fastgan_style_mix_with_same_latent_is_forward():
    g = make_gen(256).eval()
    perturb_noise_weights(g)
    z = latents(2)
    noise = g.make_noise(2, generator=gen_seeded(4))
    ref = g(z, noise=noise)
    mixed = g.style_mix(z, z, noise=noise)
    for a, b in zip(ref, mixed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # without given noise: drawn once per sample and shared by both halves
    for a, b in zip(g(z, noise_generator=gen_seeded(8)), g(z, style_z=z, noise_generator=gen_seeded(8))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_fastgan_style_mix_swaps_only_the_gates():
    g = make_gen(512).eval()
    perturb_noise_weights(g)
    z, zs = latents(2, seed=1), latents(2, seed=2)
    noise = g.make_noise(2, generator=gen_seeded(4))
    content = g.sle_sources(z, noise=noise)
    style = g.sle_sources(zs, noise=noise)
    mixed = g.style_mix(z, zs, noise=noise)
    expected = _manual_forward(g, content, style, noise)
    for a, b in zip(mixed, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mixed[0], g(z, noise=noise)[0])
    # a subset of the sources from the style latent; none of them gives the plain forward
    only4 = g(z, noise=noise, style_z=zs, style_res=[4])
    expected4 = _manual_forward(g, content, {**content, 4: style[4]}, noise)
    torch.testing.assert_close(only4[0], expected4[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g(z, noise=noise, style_z=zs, style_res=())[0], g(z, noise=noise)[0],
                               rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_fastgan_style_mix_broadcasts_one_style():
    g = make_gen(256).eval()
    z, zs = latents(3, seed=1), latents(1, seed=2)
    noise = g.make_noise(3, generator=gen_seeded(4))
    a = g.style_mix(z, zs, noise=noise)[0]
    b = g.style_mix(z, zs.expand(3, -1), noise=noise)[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fastgan_generator_lrelu_gates():
    g = make_gen(256, sle_act="lrelu")
    assert all(m.act == "lrelu" for m in g.modules() if isinstance(m, SkipLayerExcitation))
    assert g(latents(1))[0].shape == (1, 3, 256, 256)


# ---------------------------------------------------------------------------------------------------
# Discriminator


@pytest.mark.parametrize("size", [128, 256, 512, 1024])
def test_fastgan_discriminator_shapes(size):
    d = make_dis(size)
    img, img128 = images(2, size), images(2, 128, seed=3)
    logits = d(img, img128)
    assert logits.shape == (2, 50) and torch.isfinite(logits).all()
    logits2, recs = d(img, img128, part=1)
    assert logits2.shape == (2, 50)
    for r in recs:
        assert r.shape == (2, 3, 128, 128) and r.abs().max() <= 1
    feats = d.features(img)
    top = 256 if size >= 256 else 128
    assert sorted(feats) == [8, 16, 32, 64, 128] + ([256] if top == 256 else [])
    w = d.cfg.dis_widths()
    for side, f in feats.items():
        assert f.shape == (2, w[2 * side], side, side)


def test_fastgan_discriminator_stems_and_links():
    assert len([m for m in make_dis(1024).stem if isinstance(m, nn.Conv2d)]) == 2
    assert isinstance(make_dis(1024).stem[2], nn.Conv2d) and isinstance(make_dis(1024).stem[3], nn.BatchNorm2d)
    s512 = [m for m in make_dis(512).stem if isinstance(m, nn.Conv2d)]
    assert len(s512) == 1 and s512[0].stride == (2, 2) and s512[0].kernel_size == (4, 4)
    for size in (128, 256):
        s = [m for m in make_dis(size).stem if isinstance(m, nn.Conv2d)]
        assert len(s) == 1 and s[0].stride == (1, 1) and s[0].kernel_size == (3, 3)
    assert make_dis(256).sle_targets == (32, 16, 8) and len(make_dis(256).down) == 5
    assert make_dis(128).sle_targets == (16, 8) and len(make_dis(128).down) == 4


def test_fastgan_discriminator_per_sample_parts_match_batch_parts():
    d = make_dis(128).eval()  # eval: BatchNorm uses running stats, so rows are independent
    img = images(4, 128)
    parts = torch.tensor([0, 3, 1, 2])
    with torch.no_grad():
        _, (_, _, per_sample) = d(img, img, part=parts)
        _, (_, _, whole_batch) = d(img, img, part=2)
        # the part decoder sees exactly the chosen quadrant of the 16x16 map, row by row
        feats16 = d.features(img)[16]
        quads = {0: feats16[:, :, :8, :8], 1: feats16[:, :, :8, 8:], 2: feats16[:, :, 8:, :8], 3: feats16[:, :, 8:, 8:]}
        expected = torch.cat([d.decoder_part(quads[int(q)][i:i + 1]) for i, q in enumerate(parts)])
        torch.testing.assert_close(per_sample, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(whole_batch, d.decoder_part(quads[2]), rtol=1e-5, atol=1e-6)


def test_fastgan_discriminator_backward_reaches_everything():
    torch.manual_seed(0)
    g, d = make_gen(256), make_dis(256)
    real = images(2, 256)
    whole, _, quad = reconstruction_targets(real, 2)
    logits, recs = d(real, whole, part=2)
    loss = logits.mean() + sum(F.l1_loss(r, t) for r, t in zip(recs, (whole, whole, quad)))
    fake, fake128 = g(latents(2))
    loss = loss + d(fake, fake128).mean()
    loss.backward()
    for name, p in [*d.named_parameters(prefix="d"), *g.named_parameters(prefix="g")]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ---------------------------------------------------------------------------------------------------
# Quadrant crops and reconstruction targets


def test_fastgan_quadrant_crop_geometry():
    x = torch.arange(2 * 3 * 6 * 10, dtype=torch.float32).view(2, 3, 6, 10)
    expected = {0: x[:, :, :3, :5], 1: x[:, :, :3, 5:], 2: x[:, :, 3:, :5], 3: x[:, :, 3:, 5:]}
    for q, e in expected.items():
        torch.testing.assert_close(quadrant_crop(x, q), e, rtol=0, atol=0)
        torch.testing.assert_close(quadrant_crop(x, torch.tensor(q)), e, rtol=0, atol=0)
    parts = torch.tensor([3, 1])
    got = quadrant_crop(x, parts)
    torch.testing.assert_close(got, torch.stack([expected[3][0], expected[1][1]]), rtol=0, atol=0)


def test_fastgan_quadrant_crop_gradient():
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    quadrant_crop(x, torch.tensor([0, 2, 3])).sum().backward()
    mask = torch.zeros(3, 1, 4, 4)
    mask[0, :, :2, :2] = mask[1, :, 2:, :2] = mask[2, :, 2:, 2:] = 1
    torch.testing.assert_close(x.grad, mask.expand(3, 2, 4, 4))


def test_fastgan_reconstruction_targets():
    # a 256 px image whose quadrant q holds the value q / 4 (with a marker pixel to check the resize)
    real = torch.zeros(2, 3, 256, 256)
    for q in range(4):
        r, c = divmod(q, 2)
        real[:, :, r * 128:(r + 1) * 128, c * 128:(c + 1) * 128] = q / 4
    whole, small, quad = reconstruction_targets(real, torch.tensor([1, 2]))
    assert whole is small and whole.shape == quad.shape == (2, 3, 128, 128)
    torch.testing.assert_close(whole, F.interpolate(real, size=128, mode="nearest"))
    assert torch.all(quad[0] == 0.25) and torch.all(quad[1] == 0.5)
    # one part for the batch; the crop is of the full-resolution image, nearest-resized
    real = images(2, 512)
    _, _, quad = reconstruction_targets(real, 3)
    torch.testing.assert_close(quad, real[:, :, 256:, 256:][:, :, ::2, ::2], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------
# Spectral norm, init, size


def _convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


@pytest.mark.parametrize("net", ["gen", "dis"])
def test_fastgan_every_conv_is_spectral_normed_without_bias(net):
    m = make_gen(512) if net == "gen" else make_dis(512)
    convs = _convs(m)
    assert len(convs) > 10
    for c in convs:
        assert parametrize.is_parametrized(c, "weight") and c.bias is None
        assert type(c.parametrizations.weight[0]).__name__ == "_SpectralNorm"


def test_fastgan_init():
    torch.manual_seed(0)
    g = Generator(FastGANConfig(size=256, nz=64, ngf=32, ndf=32))
    noise = [m.weight for m in g.modules() if isinstance(m, NoiseInjection)]
    assert len(noise) == 6 and all(torch.all(w == 0) for w in noise)
    raw = torch.cat([c.parametrizations.weight.original.flatten() for c in _convs(g)])
    assert abs(raw.std().item() - 0.02) < 0.002 and abs(raw.mean().item()) < 0.001
    gates = torch.cat([g.sle[k].conv1.parametrizations.weight.original.flatten() for k in g.sle])
    assert abs(gates.std().item() - 0.02) < 0.002  # SLE convs too (re-initialised before spectral norm)
    bn = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = torch.cat([b.weight.flatten() for b in bn])
    assert abs(weights.mean().item() - 1) < 0.005 and abs(weights.std().item() - 0.02) < 0.005
    assert all(torch.all(b.bias == 0) for b in bn)
    # the power iteration was run on the trained weights: sigma estimate close to the true norm
    conv = g.sle["64"].conv1
    w = conv.parametrizations.weight.original.flatten(1)
    sigma = torch.linalg.matrix_norm(w, ord=2)
    torch.testing.assert_close(torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2), torch.tensor(1.0), rtol=0.05,
                               atol=0)
    assert sigma > 0


def _paper_param_counts(nz: int = 256, ngf: int = 64, ndf: int = 64) -> tuple[int, int]:
    """Parameters of the official 1024 px G and D, counted layer by layer from ALGORITHMS.md §2."""
    g = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}
    g = {k: int(v * ngf) for k, v in g.items()}
    n = nz * 2 * g[4] * 16 + 2 * 2 * g[4]  # transposed conv + BN(2C)
    for r in (8, 16, 32, 64, 128, 256, 512, 1024):
        cin, cout = g[r // 2], g[r]
        n += cin * 2 * cout * 9 + 2 * 2 * cout
        if r in (8, 32, 128, 512):  # second conv + BN, two noise weights
            n += cout * 2 * cout * 9 + 2 * 2 * cout + 2
    for small, big in ((4, 64), (8, 128), (16, 256), (32, 512)):
        n += g[small] * g[big] * 16 + g[big] * g[big]
    n += g[128] * 3 + g[1024] * 3 * 9
    d = {8: 16, 16: 8, 32: 4, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}
    d = {k: int(v * ndf) for k, v in d.items()}
    m = 3 * d[1024] * 16 + d[1024] * d[512] * 16 + 2 * d[512]
    for a, b in ((d[512], d[256]), (d[256], d[128]), (d[128], d[64]), (d[64], d[32]), (d[32], d[16])):
        m += a * b * 16 + 2 * b + b * b * 9 + 2 * b + a * b + 2 * b
    m += d[16] * d[8] + 2 * d[8] + d[8] * 16
    for a, b in ((d[512], d[64]), (d[256], d[32]), (d[128], d[16])):
        m += a * b * 16 + b * b
    m += 3 * d[256] * 16
    for a, b in ((d[256], d[128]), (d[128], d[64]), (d[64], d[32])):
        m += a * b * 16 + 2 * b
    m += d[32] * 16
    for cin in (d[16], d[32], d[32]):
        widths = [cin, 128, 64, 64, 32]
        m += sum(a * 2 * b * 9 + 2 * 2 * b for a, b in zip(widths[:-1], widths[1:])) + 32 * 3 * 9
    return n, m


def test_fastgan_paper_parameter_count():
    cfg = FastGANConfig(size=1024, nz=256, ngf=64, ndf=64)
    g, d = Generator(cfg), Discriminator(cfg)
    ng = sum(p.numel() for p in g.parameters())
    nd = sum(p.numel() for p in d.parameters())
    print(f"FastGAN 1024 px (nz=256, ngf=ndf=64): G {ng:,} parameters, D {nd:,}")
    assert (ng, nd) == _paper_param_counts()
    assert 10e6 < ng < 100e6


# ---------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda g: g(torch.randn(2, NZ + 1)), ValueError, r"z must be latents \[B, nz=16\]"),
        (lambda g: g(torch.randn(2, NZ, 1, 1)), ValueError, r"z\.flatten\(1\)"),
        (lambda g: g(torch.randn(0, NZ)), ValueError, "B >= 1"),
        (lambda g: g(torch.zeros(2, NZ, dtype=torch.long)), TypeError, "floating"),
        (lambda g: g([0.0] * NZ), TypeError, "torch.Tensor"),
        (lambda g: g(torch.randn(2, NZ), noise=[torch.randn(2, 1, 8, 8)]), ValueError, "list of 6 maps"),
        (lambda g: g(torch.randn(2, NZ), noise=g.make_noise(3)), ValueError,
         r"noise\[0\] must have shape \[2, 1, 8, 8\]"),
        (lambda g: g(torch.randn(2, NZ), style_z=torch.randn(3, NZ)), ValueError, "style_z must have batch 1 or B=2"),
        (lambda g: g(torch.randn(2, NZ), style_z=torch.randn(2, NZ), style_res=[64]), ValueError, "style_res"),
        (lambda g: g.sle_sources(torch.randn(NZ)), ValueError, "z must be latents"),
    ],
)
def test_fastgan_generator_bad_input(call, exc, match):
    g = make_gen(256)
    with pytest.raises(exc, match=match):
        call(g)


@pytest.mark.parametrize(
    "args, kw, exc, match",
    [
        ((images(2, 128), images(2, 128)), {}, ValueError, r"img must be images \[B, 3, 256, 256\]"),
        ((torch.randn(2, 1, 256, 256), images(2, 128)), {}, ValueError, r"got shape \[2, 1, 256, 256\]"),
        ((images(2, 256), images(2, 256)), {}, ValueError, r"img128 must be images \[B, 3, 128, 128\]"),
        ((images(2, 256), images(3, 128)), {}, ValueError, "batch size 2"),
        ((images(2, 256), images(2, 128)), dict(part=4), ValueError, "quadrant 0..3"),
        ((images(2, 256), images(2, 128)), dict(part=-1), ValueError, "quadrant 0..3"),
        ((images(2, 256), images(2, 128)), dict(part=True), TypeError, "part must be"),
        ((images(2, 256), images(2, 128)), dict(part=1.0), TypeError, "part must be"),
        ((images(2, 256), images(2, 128)), dict(part=torch.tensor([0, 5])), ValueError, r"0\.\.3, got \[0, 5\]"),
        ((images(2, 256), images(2, 128)), dict(part=torch.tensor([0, 1, 2])), ValueError, r"tensor \[B=2\]"),
        ((images(2, 256), images(2, 128)), dict(part=torch.tensor([0.0, 1.0])), TypeError, "integer tensor"),
    ],
)
def test_fastgan_discriminator_bad_input(args, kw, exc, match):
    d = make_dis(256)
    with pytest.raises(exc, match=match):
        d(*args, **kw)


def test_fastgan_quadrant_helpers_bad_input():
    with pytest.raises(ValueError, match="even H, W"):
        quadrant_crop(torch.randn(1, 3, 5, 4), 0)
    with pytest.raises(ValueError, match="even H, W"):
        quadrant_crop(torch.randn(3, 4, 4), 0)
    with pytest.raises(ValueError, match=r"\[B, C, S, S\]"):
        reconstruction_targets(torch.randn(3, 8, 8), 0)
