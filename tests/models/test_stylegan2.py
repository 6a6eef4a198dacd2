"""StyleGAN2 generator (rosinality layout): composite ops against direct sums, layers and the whole synthesis
against a per-sample fp64 re-derivation from the documented maths, shapes at 32/64/128 px, features, truncation,
style mixing, noise determinism, w+ vs w, gradients, the key layout of a 64 px generator, rosinality-file
round trips (images identical), config inference, and bad input."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from fsgan_fast.configs import ConfigError
from fsgan_fast.nn.stylegan2 import (
    ModulatedConv2d,
    StyleGAN2Config,
    StyleGAN2Generator,
    Upsample,
    fused_leaky_relu,
    infer_config,
    load_rosinality,
    save_rosinality,
    upfirdn2d,
)

SD = 32  # style_dim of the tiny networks
SQRT2 = math.sqrt(2.0)


def tiny_cfg(size: int = 64, **kw) -> StyleGAN2Config:
    """Narrow (channel_max=16) so that a forward takes milliseconds; the layout is rosinality's."""
    return StyleGAN2Config(**{"size": size, "style_dim": SD, "n_mlp": 2, "channel_multiplier": 1,
                              "channel_max": 16, **kw})


def gen_seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize_(g: StyleGAN2Generator, seed: int = 0) -> StyleGAN2Generator:
    """Give the parameters that start at constants (noise weights 0, biases 0 or 1) random values, so that every
    parameter matters in the comparisons below."""
    rng = gen_seeded(seed)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.copy_(torch.randn(p.shape, generator=rng) * 0.5)
            elif name.endswith("modulation.bias"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=rng))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=rng))
    return g


def make_gen(size: int = 64, seed: int = 0, dtype=torch.float32, **kw) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    return randomize_(StyleGAN2Generator(tiny_cfg(size, **kw)), seed).to(dtype)


def codes(n: int, seed: int = 1, d: int = SD, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=gen_seeded(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------------
# An independent fp64 re-derivation of rosinality's forward from the documented maths: explicit zero insertion,
# direct FIR sums, one sample at a time, pads hard-coded for the [1, 3, 3, 1] FIR.


def direct_upfirdn(x: torch.Tensor, k: torch.Tensor, up: int, down: int, pad: tuple[int, int, int, int]):
    """``pad`` (x0, x1, y0, y1); negative pads crop. A true convolution, written as a sum of shifted copies."""
    n, c, h, w = x.shape
    z = x.new_zeros(n, c, h * up, w * up)
    z[..., ::up, ::up] = x
    x0, x1, y0, y1 = pad
    z = F.pad(z, (max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)))
    z = z[..., max(-y0, 0): z.shape[-2] - max(-y1, 0), max(-x0, 0): z.shape[-1] - max(-x1, 0)]
    kh, kw = k.shape
    oh, ow = z.shape[-2] - kh + 1, z.shape[-1] - kw + 1
    out = x.new_zeros(n, c, oh, ow)
    for i in range(kh):
        for j in range(kw):
            out += k[kh - 1 - i, kw - 1 - j] * z[..., i: i + oh, j: j + ow]
    return out[..., ::down, ::down]


FIR = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
FIR2D = torch.outer(FIR, FIR) / FIR.sum() ** 2


def ref_modconv(sd, prefix, x, w, *, demodulate=True, up=False):
    weight = sd[prefix + ".weight"][0]  # [out, in, k, k]
    out_c, in_c, k, _ = weight.shape
    s = w @ (sd[prefix + ".modulation.weight"] / math.sqrt(w.shape[1])).T + sd[prefix + ".modulation.bias"]
    outs = []
    for b in range(x.shape[0]):
        wb = weight / math.sqrt(in_c * k * k) * s[b].view(1, in_c, 1, 1)
        if demodulate:
            wb = wb / torch.sqrt(wb.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        if up:
            o = F.conv_transpose2d(x[b: b + 1], wb.transpose(0, 1), stride=2)
            outs.append(direct_upfirdn(o, FIR2D * 4, 1, 1, (1, 1, 1, 1)))
        else:
            outs.append(F.conv2d(x[b: b + 1], wb, padding=k // 2))
    return torch.cat(outs)


def ref_styled(sd, prefix, x, w, noise, *, up=False):
    o = ref_modconv(sd, prefix + ".conv", x, w, up=up) + sd[prefix + ".noise.weight"] * noise
    return F.leaky_relu(o + sd[prefix + ".activate.bias"].view(1, -1, 1, 1), 0.2) * SQRT2


def ref_to_rgb(sd, prefix, x, w, skip):
    o = ref_modconv(sd, prefix + ".conv", x, w, demodulate=False) + sd[prefix + ".bias"]
    if skip is not None:
        o = o + direct_upfirdn(skip, FIR2D * 4, 2, 1, (2, 1, 2, 1))
    return o


def ref_mapping(sd, z, n_mlp, lr_mul=0.01):
    x = z / torch.sqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        weight = sd[f"style.{i}.weight"] * lr_mul / math.sqrt(z.shape[1])
        x = F.leaky_relu(x @ weight.T + sd[f"style.{i}.bias"] * lr_mul, 0.2) * SQRT2
    return x


def ref_synthesis(sd, wplus, noises, log_size):
    x = sd["input.input"].expand(wplus.shape[0], -1, -1, -1)
    x = ref_styled(sd, "conv1", x, wplus[:, 0], noises[0])
    skip = ref_to_rgb(sd, "to_rgb1", x, wplus[:, 1], None)
    for k in range(log_size - 2):
        i = 2 * k + 1
        x = ref_styled(sd, f"convs.{2 * k}", x, wplus[:, i], noises[2 * k + 1], up=True)
        x = ref_styled(sd, f"convs.{2 * k + 1}", x, wplus[:, i + 1], noises[2 * k + 2])
        skip = ref_to_rgb(sd, f"to_rgbs.{k}", x, wplus[:, i + 2], skip)
    return skip


def assert_close(got, want, tol, what=""):
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert err <= tol * max(scale, 1e-12), f"{what}: max |err| {err:.3e} vs scale {scale:.3e}"


# ---------------------------------------------------------------------------------------------------
# Composite ops


@pytest.mark.parametrize("up, down, pad", [(2, 1, (2, 1, 2, 1)), (1, 1, (1, 1, 1, 1)), (1, 2, (1, 1, 0, 2)),
                                           (2, 1, (-1, 2, 0, -1)), (3, 2, (1, 0, 2, 1))])
def test_upfirdn2d_matches_direct_sum(up, down, pad):
    x = torch.randn(2, 3, 5, 7, generator=gen_seeded(0), dtype=torch.float64)
    k = torch.randn(4, 3, generator=gen_seeded(1), dtype=torch.float64)  # asymmetric: checks the flip
    got = upfirdn2d(x, k, up=up, down=down, pad=pad)
    want = direct_upfirdn(x, k, up, down, pad)
    assert_close(got, want, 1e-12, f"up={up} down={down} pad={pad}")
    # output side (H * up + p0 + p1 - kh) // down + 1
    assert got.shape[-2:] == ((5 * up + pad[2] + pad[3] - 4) // down + 1, (7 * up + pad[0] + pad[1] - 3) // down + 1)


def test_upfirdn2d_gradcheck_and_bad_input():
    x = torch.randn(1, 1, 3, 3, generator=gen_seeded(2), dtype=torch.float64, requires_grad=True)
    k = FIR2D.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: upfirdn2d(a, b, up=2, pad=(2, 1)), (x, k))
    with pytest.raises(ValueError, match="x must be"):
        upfirdn2d(x[0], k)
    with pytest.raises(ValueError, match="kernel must be 2-D"):
        upfirdn2d(x, FIR)
    with pytest.raises(ValueError, match="up and down"):
        upfirdn2d(x, k, up=0)
    with pytest.raises(ValueError, match="pad must be"):
        upfirdn2d(x, k, pad=(1, 1, 1))


def test_upsample_keeps_constants_and_doubles_the_side():
    up = Upsample((1, 3, 3, 1)).double()
    assert up.pad == (2, 1)  # rosinality's pads for the 4-tap FIR
    assert_close(up.kernel, FIR2D.float().double() * 4, 1e-7, "kernel")
    out = up(torch.full((1, 2, 6, 6), 0.7, dtype=torch.float64))
    assert out.shape == (1, 2, 12, 12)
    assert_close(out[..., 2:-2, 2:-2], torch.full_like(out[..., 2:-2, 2:-2], 0.7), 1e-12, "interior")


def test_fused_leaky_relu_matches_formula_and_gradcheck():
    x = torch.randn(3, 5, 4, generator=gen_seeded(3), dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=gen_seeded(4), dtype=torch.float64, requires_grad=True)
    pre = x + b.view(1, 5, 1)
    want = torch.where(pre >= 0, pre, 0.2 * pre) * SQRT2
    assert_close(fused_leaky_relu(x, b), want, 1e-14, "flrelu")
    assert torch.autograd.gradcheck(fused_leaky_relu, (x, b))
    with pytest.raises(ValueError, match="bias must be"):
        fused_leaky_relu(x, b[:4])


# ---------------------------------------------------------------------------------------------------
# Layers


@pytest.mark.parametrize("up, demodulate, k", [(False, True, 3), (True, True, 3), (False, False, 1)])
def test_modulated_conv_matches_per_sample_reference(up, demodulate, k):
    torch.manual_seed(0)
    conv = ModulatedConv2d(5, 6, k, 7, demodulate=demodulate, upsample=up).double()
    with torch.no_grad():
        conv.modulation.bias.add_(0.3 * torch.randn(5, dtype=torch.float64))
    x = torch.randn(3, 5, 6, 6, generator=gen_seeded(5), dtype=torch.float64)
    s = torch.randn(3, 7, generator=gen_seeded(6), dtype=torch.float64)
    sd = {f"c.{n}": v for n, v in conv.state_dict().items()}
    assert_close(conv(x, s), ref_modconv(sd, "c", x, s, demodulate=demodulate, up=up), 1e-12, "modconv")
    assert conv(x, s).shape[-1] == (12 if up else 6)


def test_modulated_conv_gradcheck():
    torch.manual_seed(0)
    conv = ModulatedConv2d(2, 3, 3, 4, upsample=True).double()
    x = torch.randn(2, 2, 3, 3, generator=gen_seeded(7), dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 4, generator=gen_seeded(8), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: conv(a, b), (x, s), fast_mode=True)  # full mode: ~90 forwards


def test_stylegan2_inits_are_rosinalitys():
    torch.manual_seed(0)
    g = StyleGAN2Generator(StyleGAN2Config(size=32, style_dim=256, n_mlp=2))
    assert 90 < g.style[1].weight.std().item() < 110  # randn / lr_mul with lr_mul 0.01
    assert torch.equal(g.conv1.conv.modulation.bias, torch.ones(512))  # bias_init=1
    assert g.conv1.noise.weight.item() == 0 and not g.conv1.activate.bias.any() and not g.to_rgb1.bias.any()
    assert 0.9 < g.convs[0].conv.weight.std().item() < 1.1  # scaled at run time by 1/sqrt(in * k * k)
    assert_close(g.convs[0].conv.blur.kernel.double(), FIR2D * 4, 1e-7, "blur kernel")
    assert g.convs[0].conv.blur.pad == (1, 1) and g.to_rgbs[0].upsample.pad == (2, 1)


# ---------------------------------------------------------------------------------------------------
# The generator


@pytest.mark.parametrize("size", [32, 64])
def test_stylegan2_matches_fp64_rederivation(size):
    g = make_gen(size, seed=size, dtype=torch.float64)
    z = codes(2, seed=3, dtype=torch.float64)
    noises = g.make_noise(2, generator=gen_seeded(4))
    noises = [n.double() for n in noises]
    sd = g.state_dict()
    assert_close(g.get_latent(z), ref_mapping(sd, z, 2), 1e-12, "mapping")
    # a w+ with a different code per layer, so that a layer reading the wrong style index shows
    wplus = torch.randn(2, g.n_latent, SD, generator=gen_seeded(5), dtype=torch.float64)
    out = g(wplus, input_is_latent=True, noise=noises, return_latents=True)
    assert torch.equal(out.latents, wplus)
    assert_close(out.image, ref_synthesis(sd, wplus, noises, g.log_size), 1e-10, "image")
    assert out.image.std() > 1e-2


@pytest.mark.parametrize("size", [32, 64, 128])
def test_stylegan2_shapes(size):
    g = make_gen(size)
    n_latent = 2 * int(math.log2(size)) - 2
    assert (g.n_latent, g.num_layers) == (n_latent, n_latent - 1)
    resolutions = [2**j for j in range(2, int(math.log2(size)) + 1)]
    out = g(codes(3), return_latents=True, return_features=resolutions)
    assert out.image.shape == (3, 3, size, size) and out.image.dtype == torch.float32
    assert out.latents.shape == (3, n_latent, SD)
    assert sorted(out.features) == resolutions
    for r, f in out.features.items():
        assert f.shape == (3, g.channels[r], r, r)
    sides = [4] + [r for r in resolutions[1:] for _ in range(2)]  # conv1, then two convs per block
    assert [tuple(getattr(g.noises, f"noise_{i}").shape) for i in range(g.num_layers)] == [(1, 1, s, s) for s in sides]
    assert g(codes(1)).latents is None and g(codes(1)).features == {}


def test_stylegan2_features_64_are_the_second_conv_of_the_64_block():
    g = make_gen(128)
    seen = {}
    g.convs[7].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))  # block 64 = convs 6 and 7
    out = g(codes(2), randomize_noise=False, return_features=(64,))
    assert torch.equal(out.features[64], seen["out"])
    assert out.features[64].shape == (2, g.channels[64], 64, 64)
    with pytest.raises(ValueError, match="return_features"):
        make_gen(32)(codes(1), return_features=(64,))


def test_stylegan2_wplus_equals_broadcast_w_and_z_equals_mapped_w():
    g = make_gen(64)
    z = codes(2)
    w = g.get_latent(z)
    by_z = g(z, randomize_noise=False).image
    by_w = g(w, input_is_latent=True, randomize_noise=False).image
    by_wplus = g(w.unsqueeze(1).repeat(1, g.n_latent, 1), input_is_latent=True, randomize_noise=False).image
    assert torch.equal(by_w, by_wplus)
    assert_close(by_z, by_w, 1e-6, "z vs mapped w")
    # a w+ with different rows is not the broadcast of its first row
    wplus = w.unsqueeze(1).repeat(1, g.n_latent, 1)
    wplus[:, 5:] = g.get_latent(codes(2, seed=9)).unsqueeze(1)
    assert (g(wplus, input_is_latent=True, randomize_noise=False).image - by_w).abs().max() > 1e-3


def test_stylegan2_noise_determinism():
    g = make_gen(64)
    z = codes(2)
    fixed = g(z, randomize_noise=False).image
    assert torch.equal(fixed, g(z, randomize_noise=False).image)
    buffers = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
    assert torch.equal(fixed, g(z, noise=buffers).image)
    a = g(z, noise_generator=gen_seeded(5)).image
    assert torch.equal(a, g(z, noise_generator=gen_seeded(5)).image)
    assert torch.equal(a, g(z, noise=g.make_noise(2, generator=gen_seeded(5))).image)
    assert (a - g(z, noise_generator=gen_seeded(6)).image).abs().max() > 1e-3
    assert (a - fixed).abs().max() > 1e-3
    # None entries are sampled: only layer 3's noise changes
    partial = list(buffers)
    partial[3] = None
    assert (g(z, noise=partial).image - fixed).abs().max() > 1e-4


def test_stylegan2_truncation_pulls_toward_mean_latent():
    g = make_gen(64)
    mean = g.mean_latent(512, generator=gen_seeded(7))
    assert mean.shape == (1, SD) and not mean.requires_grad
    assert torch.equal(mean, g.mean_latent(512, generator=gen_seeded(7)))
    z = codes(3)
    w = g.get_latent(z)
    half = g(z, truncation=0.5, truncation_latent=mean, return_latents=True, randomize_noise=False)
    assert_close(half.latents, (mean + 0.5 * (w - mean)).unsqueeze(1).expand(3, g.n_latent, SD), 1e-6, "psi=0.5")
    # psi=0: every sample becomes the image of the mean latent
    zero = g(z, truncation=0.0, truncation_latent=mean, randomize_noise=False).image
    of_mean = g(mean, input_is_latent=True, randomize_noise=False).image
    assert_close(zero, of_mean.expand(3, -1, -1, -1), 1e-5, "psi=0")
    # a per-layer centre ([n_latent, style_dim], as pSp stores latent_avg) broadcasts over the batch
    centre = mean.expand(g.n_latent, SD)
    per_layer = g(z, truncation=0.5, truncation_latent=centre, randomize_noise=False).image
    assert_close(per_layer, half.image, 1e-6, "per-layer centre")
    with pytest.raises(ValueError, match="truncation_latent is required"):
        g(z, truncation=0.7)
    with pytest.raises(ValueError, match="truncation_latent must hold"):
        g(z, truncation=0.7, truncation_latent=torch.randn(3))
    with pytest.raises(ValueError, match="truncation must be"):
        g(z, truncation=float("nan"), truncation_latent=mean)


def test_stylegan2_style_mixing():
    g = make_gen(64)
    w1, w2 = g.get_latent(codes(2, seed=1)), g.get_latent(codes(2, seed=2))
    out = g([w1, w2], input_is_latent=True, inject_index=4, return_latents=True, randomize_noise=False)
    assert torch.equal(out.latents[:, :4], w1.unsqueeze(1).expand(2, 4, SD))
    assert torch.equal(out.latents[:, 4:], w2.unsqueeze(1).expand(2, g.n_latent - 4, SD))
    assert torch.equal(out.image, g(out.latents, input_is_latent=True, randomize_noise=False).image)
    # z codes are mapped one by one; a drawn inject_index follows the noise generator
    zs = [codes(2, seed=1), codes(2, seed=2)]
    a = g(zs, return_latents=True, noise_generator=gen_seeded(3)).latents
    b = g(zs, return_latents=True, noise_generator=gen_seeded(3)).latents
    assert torch.equal(a, b)
    k = int((a[0] == a[0, 0]).all(dim=1).sum())
    assert 1 <= k <= g.n_latent - 1
    assert torch.equal(a[:, :k], w1.unsqueeze(1).expand(2, k, SD))
    assert torch.equal(a[:, k:], w2.unsqueeze(1).expand(2, g.n_latent - k, SD))
    with pytest.raises(ValueError, match="inject_index"):
        g([w1, w2], input_is_latent=True, inject_index=g.n_latent + 1)


def test_stylegan2_gradients_reach_every_parameter_and_wplus():
    g = make_gen(32)
    wplus = g.get_latent(codes(2)).detach().unsqueeze(1).repeat(1, g.n_latent, 1).requires_grad_(True)
    out = g(wplus, input_is_latent=True, noise=g.make_noise(2, generator=gen_seeded(1)), return_features=(16,))
    (out.image.square().mean() + out.features[16].mean()).backward()
    assert wplus.grad is not None and torch.isfinite(wplus.grad).all() and wplus.grad.abs().sum() > 0
    assert wplus.grad[:, : g.n_latent].abs().sum(dim=(0, 2)).gt(0).all(), "every style index is used"
    for name, p in g.named_parameters():
        if name.startswith("style."):
            assert p.grad is None, name  # w+ input bypasses the mapping
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_stylegan2_bad_input():
    g = make_gen(32)
    with pytest.raises(ValueError, match=r"styles must be \[N, 32\] or \[N, 8, 32\]"):
        g(torch.randn(2, SD + 1))
    with pytest.raises(ValueError, match="styles must be"):
        g(torch.randn(2, g.n_latent + 1, SD))
    with pytest.raises(ValueError, match="styles must be"):
        g([codes(2), torch.randn(2, g.n_latent, SD)])
    with pytest.raises(TypeError, match="styles must be"):
        g([codes(2)] * 3)
    with pytest.raises(TypeError, match="styles must be"):
        g(codes(2).numpy())
    with pytest.raises(TypeError, match="styles must be floating"):
        g(torch.ones(2, SD, dtype=torch.long))
    with pytest.raises(ValueError, match="share one non-zero batch"):
        g([codes(2), codes(3)])
    with pytest.raises(ValueError, match="noise must be a list of 7"):
        g(codes(2), noise=g.make_noise(2)[:-1])
    noise = g.make_noise(2)
    noise[2] = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"noise\[2\] must be"):
        g(codes(2), noise=noise)
    with pytest.raises(ValueError, match="return_features"):
        g(codes(2), return_features=(12,))
    with pytest.raises(ValueError, match="z must be"):
        g.get_latent(torch.randn(SD))
    with pytest.raises(ValueError, match="n must be"):
        g.mean_latent(0)
    with pytest.raises(TypeError, match="cfg must be"):
        StyleGAN2Generator({"size": 64})


def test_stylegan2_config_validation_and_tables():
    with pytest.raises(ValueError, match="size must be a power of two"):
        StyleGAN2Config(size=96)
    with pytest.raises(ConfigError, match="size must be >= 32"):
        StyleGAN2Config(size=16)
    with pytest.raises(ConfigError, match="size must be <= 1024"):
        StyleGAN2Config(size=2048)
    with pytest.raises(ValueError, match="blur_kernel"):
        StyleGAN2Config(blur_kernel=(1,))
    with pytest.raises(ConfigError, match="lr_mlp"):
        StyleGAN2Config(lr_mlp=0.0)
    cfg = StyleGAN2Config(size=1024)
    assert (cfg.n_latent, cfg.num_layers) == (18, 17)
    assert cfg.channels() == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    assert StyleGAN2Config(size=256, channel_multiplier=1).channels()[256] == 64
    assert StyleGAN2Config.from_dict(cfg.to_dict()) == cfg


def test_stylegan2_config_f_parameter_count():
    """The 1024 px config-f generator has 30,370,060 parameters, as the official and rosinality networks."""
    with torch.device("meta"):
        g = StyleGAN2Generator(StyleGAN2Config(size=1024))
    assert sum(p.numel() for p in g.parameters()) == 30_370_060


# ---------------------------------------------------------------------------------------------------
# rosinality checkpoints


def rosinality_layout_64(style_dim=512, n_mlp=8, cm=1) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a rosinality ``Generator(64, style_dim, n_mlp, channel_multiplier=cm)`` state dict, written
    from the documented layout (not from our module)."""
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm}
    keys: dict[str, tuple[int, ...]] = {}
    for i in range(1, n_mlp + 1):  # style.0 is PixelNorm: no parameters
        keys[f"style.{i}.weight"] = (style_dim, style_dim)
        keys[f"style.{i}.bias"] = (style_dim,)
    keys["input.input"] = (1, 512, 4, 4)

    def styled(prefix, cin, cout, up):
        keys[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        keys[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        keys[f"{prefix}.conv.modulation.bias"] = (cin,)
        if up:
            keys[f"{prefix}.conv.blur.kernel"] = (4, 4)
        keys[f"{prefix}.noise.weight"] = (1,)
        keys[f"{prefix}.activate.bias"] = (cout,)

    def to_rgb(prefix, cin, up):
        keys[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        keys[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        keys[f"{prefix}.conv.modulation.bias"] = (cin,)
        keys[f"{prefix}.bias"] = (1, 3, 1, 1)
        if up:
            keys[f"{prefix}.upsample.kernel"] = (4, 4)

    styled("conv1", 512, 512, False)
    to_rgb("to_rgb1", 512, False)
    for k, res in enumerate([8, 16, 32, 64]):
        styled(f"convs.{2 * k}", ch[res // 2], ch[res], True)
        styled(f"convs.{2 * k + 1}", ch[res], ch[res], False)
        to_rgb(f"to_rgbs.{k}", ch[res], True)
    for i, side in enumerate([4, 8, 8, 16, 16, 32, 32, 64, 64]):
        keys[f"noises.noise_{i}"] = (1, 1, side, side)
    return keys


def hand_built_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    rng = gen_seeded(seed)
    state = {k: torch.randn(shape, generator=rng) for k, shape in layout.items()}
    for k in state:
        if k.endswith(("blur.kernel", "upsample.kernel")):
            state[k] = (FIR2D * 4).float()  # buffers rosinality writes; not random in a real file either
    return state


def test_stylegan2_key_layout_of_a_64px_generator_loads_strict():
    layout = rosinality_layout_64()
    with torch.device("meta"):
        g = StyleGAN2Generator(StyleGAN2Config(size=64, channel_multiplier=1))
    ours = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    assert sorted(set(ours) - set(layout)) == [] and sorted(set(layout) - set(ours)) == []
    assert ours == layout
    state = hand_built_state(layout)
    g = StyleGAN2Generator(StyleGAN2Config(size=64, channel_multiplier=1))
    g.load_state_dict(state, strict=True)
    loaded, latent_avg = load_rosinality({"g_ema": state})
    assert latent_avg is None
    assert loaded.cfg == StyleGAN2Config(size=64, style_dim=512, n_mlp=8, channel_multiplier=1)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_stylegan2_rosinality_file_round_trip_gives_the_same_images(tmp_path):
    g = make_gen(64, seed=3).eval()
    latent_avg = g.mean_latent(256, generator=gen_seeded(1))
    path = tmp_path / "g.pt"
    save_rosinality(g, path, latent_avg=latent_avg)
    assert [p.name for p in tmp_path.iterdir()] == ["g.pt"]  # no temporary file left behind
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"g_ema", "latent_avg"} and set(ckpt["g_ema"]) == set(g.state_dict())
    loaded, avg = load_rosinality(path)
    assert loaded.cfg == g.cfg and not loaded.training
    assert torch.equal(avg, latent_avg)
    z = codes(3, seed=4)
    noise = g.make_noise(3, generator=gen_seeded(5))
    kw = dict(noise=noise, truncation=0.7, truncation_latent=latent_avg, return_features=(64,))
    want, got = g(z, **kw), loaded(z, **kw)
    assert torch.equal(got.image, want.image) and torch.equal(got.features[64], want.features[64])
    assert torch.equal(g(z, randomize_noise=False).image, loaded(z, randomize_noise=False).image)
    # the same weights as a raw state dict, under another key, inside a pSp checkpoint, and beside rosinality's args
    state, fixed = g.state_dict(), g(z, randomize_noise=False).image
    for obj, key in [(state, "g_ema"), ({"g": state, "g_ema": {}}, "g"),
                     ({"state_dict": {**{f"decoder.{k}": v for k, v in state.items()}, "encoder.w": torch.ones(1)},
                       "latent_avg": latent_avg}, "g_ema")]:
        again, _ = load_rosinality(obj, key=key)
        assert torch.equal(again(z, randomize_noise=False).image, fixed)
    torch.save({"g_ema": state, "args": argparse.Namespace(size=64, n_mlp=2)}, tmp_path / "train.pt")
    again, avg = load_rosinality(tmp_path / "train.pt")
    assert avg is None and again.cfg == g.cfg


@pytest.mark.parametrize("cfg", [
    StyleGAN2Config(size=1024), StyleGAN2Config(size=256, channel_multiplier=1), StyleGAN2Config(size=512),
    StyleGAN2Config(size=32, style_dim=64, n_mlp=4), StyleGAN2Config(size=128, channel_multiplier=4),
    StyleGAN2Config(size=128, channel_max=64, channel_multiplier=1, style_dim=16, n_mlp=3),
], ids=["ffhq1024", "ukiyoe256cm1", "car512", "tiny32", "cm4", "narrow"])
def test_infer_config_from_keys(cfg):
    with torch.device("meta"):
        state = StyleGAN2Generator(cfg).state_dict()
    inferred = infer_config(state)
    assert inferred.channels() == cfg.channels()
    assert (inferred.size, inferred.style_dim, inferred.n_mlp) == (cfg.size, cfg.style_dim, cfg.n_mlp)
    if cfg.size >= 64 and cfg.channel_max is None:
        assert inferred.channel_multiplier == cfg.channel_multiplier


class Opaque:  # a pickled object that is not on torch.load's weights_only allow-list
    pass


def test_load_rosinality_errors(tmp_path):
    g = make_gen(64)
    state = g.state_dict()
    missing = {k: v for k, v in state.items() if not k.startswith("convs.3.")}
    with pytest.raises(ValueError, match=r"missing keys, e\.g\. \['convs\.3\.conv\.weight'"):
        load_rosinality({"g_ema": missing})
    with pytest.raises(ValueError, match="unexpected keys, e.g. .'convs.6"):
        load_rosinality(state, size=32)
    bad_shape = dict(state)
    bad_shape["to_rgb1.bias"] = torch.zeros(1, 4, 1, 1)
    with pytest.raises(ValueError, match=r"other shapes, e\.g\. \['to_rgb1\.bias \(1, 4, 1, 1\)"):
        load_rosinality(bad_shape)
    with pytest.raises(ValueError, match="no 'g_ema' entry"):
        load_rosinality({"d": state})
    with pytest.raises(ValueError, match="style.1.weight"):
        infer_config({"input.input": torch.zeros(1, 512, 4, 4)})
    with pytest.raises(TypeError, match="path_or_state"):
        load_rosinality([1, 2])
    with pytest.raises(FileNotFoundError):
        load_rosinality(tmp_path / "nope.pt")

    torch.save({"g_ema": state, "extra": Opaque()}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="weights_only=False"):
        load_rosinality(tmp_path / "odd.pt")
    with pytest.raises(TypeError, match="generator must be"):
        save_rosinality(torch.nn.Linear(1, 1), tmp_path / "x.pt")


# ---------------------------------------------------------------------------------------------------
# Heavier checks: the real widths (slow) and the GPU


@pytest.mark.slow
def test_stylegan2_config_f_widths_match_fp64_rederivation():
    """512-channel layers (demodulation over 4608 weights per output) at 32 px, fp32 against the fp64 re-derivation."""
    torch.manual_seed(0)
    g = randomize_(StyleGAN2Generator(StyleGAN2Config(size=32, style_dim=512, n_mlp=8)), seed=1)
    wplus = torch.randn(1, g.n_latent, 512, generator=gen_seeded(2))
    noises = g.make_noise(1, generator=gen_seeded(3))
    got = g(wplus, input_is_latent=True, noise=noises).image
    sd = {k: v.double() for k, v in g.state_dict().items()}
    want = ref_synthesis(sd, wplus.double(), [n.double() for n in noises], g.log_size)
    assert_close(got.double(), want, 1e-4, "config-f widths")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stylegan2_cuda_matches_cpu_and_compiles():
    g = make_gen(64, seed=4)
    z = codes(4, seed=5)
    noise = g.make_noise(4, generator=gen_seeded(6))
    want = g(z, noise=noise, return_features=(64,))
    gc = g.cuda()
    noise_c = [n.cuda() for n in noise]
    with torch.no_grad():
        got = gc(z.cuda(), noise=noise_c, return_features=(64,))
        assert_close(got.image.cpu(), want.image, 1e-4, "cuda fp32")
        assert_close(got.features[64].cpu(), want.features[64], 1e-4, "cuda features")
        compiled = torch.compile(gc)(z.cuda(), noise=noise_c).image
        assert_close(compiled.cpu(), want.image, 1e-4, "compiled")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = gc(z.cuda(), noise=noise_c).image.float()
    err = ((half.cpu() - want.image).abs().mean() / want.image.abs().mean()).item()
    assert err < 5e-2, f"bf16 autocast: mean relative error {err:.2e}"
    # noise drawn on the device from a CUDA generator is reproducible
    a = gc(z.cuda(), noise_generator=torch.Generator("cuda").manual_seed(1)).image
    assert torch.equal(a, gc(z.cuda(), noise_generator=torch.Generator("cuda").manual_seed(1)).image)
