"""SinGAN's networks and pyramid model: widths, shapes per scale, the official init, initialisation from the previous
scale, the scale step against its formula, sampling at any size, checkpoint round trip, and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsgan_fast import ops
from fsgan_fast.models import registry
from fsgan_fast.models.singan import (
    PAD,
    ScaleDiscriminator,
    ScaleGenerator,
    SinGAN,
    SinGANConfig,
    SinGANInputError,
)

# a 3-scale pyramid of 20..32 px, as build_pyramid gives for a 32x48 image with min_size 20
SIZES = [(20, 30), (25, 38), (32, 48)]
R = (20 / 32) ** 0.5


def tiny_config(**kw) -> SinGANConfig:
    return SinGANConfig(nfc=8, max_nfc=16, min_size=20, max_size=48, heights=tuple(h for h, _ in SIZES),
                        widths=tuple(w for _, w in SIZES), r=R, **kw)


def trained_like(seed: int = 0, **kw) -> SinGAN:
    """A tiny SinGAN with random weights, non-trivial amps and z_opt, every scale marked trained, in eval mode."""
    torch.manual_seed(seed)
    model = SinGAN(tiny_config(**kw))
    with torch.no_grad():
        model.noise_amp.copy_(torch.tensor([1.0, 0.1, 0.05]))
        model.z_opt0.normal_()
        model.real.uniform_(-1, 1)
        model.trained.fill_(len(SIZES))
        for m in model.modules():  # running statistics that are not the identity
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.01, 0.01)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_channel_schedule_doubles_every_four_scales_up_to_128():
    cfg = SinGANConfig()
    assert [cfg.width(n) for n in range(13)] == [32] * 4 + [64] * 4 + [128] * 5
    assert SinGANConfig(nfc=8, max_nfc=16).width(7) == 16


def test_scale_nets_shapes_and_official_init():
    torch.manual_seed(0)
    g, d = ScaleGenerator(32), ScaleDiscriminator(32)
    x = torch.randn(2, 3, 25 + 2 * PAD, 38 + 2 * PAD)
    out = g(x)
    assert out.shape == (2, 3, 25, 38) and out.abs().max() <= 1  # tanh residual, valid convs take 5 px a side
    assert d(torch.randn(2, 3, 25, 38)).shape == (2, 1, 15, 28)  # receptive field 11x11
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 5 and len(bns) == 4 and all(c.padding == (0, 0) for c in convs)
    w = torch.cat([c.weight.flatten() for c in convs])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    bw = torch.cat([b.weight for b in bns])
    assert abs(bw.mean().item() - 1) < 0.01 and all((b.bias == 0).all() for b in bns)
    assert any(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in g.modules())


def test_model_holds_every_scale_and_noise_shapes():
    model = SinGAN(tiny_config())
    assert model.num_scales == 3 and model.sizes == SIZES
    assert model.noise_shape(0, 4) == (4, 1, 20, 30)  # scale 0: one channel shared by the colours
    assert model.noise_shape(2, 1) == (1, 3, 32, 48)
    anim = SinGAN(tiny_config(animation=True))
    assert anim.noise_shape(1, 2) == (2, 3, 25 + 2 * PAD, 38 + 2 * PAD)  # animation: over the padded border
    assert anim.z_opt0.shape == (1, 1, 20 + 2 * PAD, 30 + 2 * PAD)
    assert model.z_opt(1).abs().sum() == 0 and model.z_opt(1).shape == (1, 3, 25, 38)


def test_initialise_from_previous_only_when_widths_match():
    cfg = SinGANConfig(nfc=4, max_nfc=16, heights=(20,) * 6, widths=(20,) * 6, r=0.9)
    model = SinGAN(cfg)
    assert model.initialise_from_previous(1)
    for a, b in zip(model.gens[0].state_dict().values(), model.gens[1].state_dict().values()):
        assert torch.equal(a, b)
    assert not model.initialise_from_previous(4)  # 4 -> 8 channels at scale 4
    assert not model.initialise_from_previous(0)


def test_scale_step_is_the_official_formula():
    model = trained_like()
    g = torch.Generator().manual_seed(1)
    prev = torch.rand(2, 3, *SIZES[0], generator=g) * 2 - 1
    noise = torch.randn(2, 3, *SIZES[1], generator=g)
    out = model.scale_step(1, prev, noise)
    up = ops.imresize(prev, 1 / R)[..., :25, :38]  # resize by 1/r, crop top-left (SinGAN's step)
    expected = up + model.gens[1](F.pad(up + model.noise_amp[1] * noise, [PAD] * 4))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    first = model.scale_step(0, None, torch.randn(2, 1, *SIZES[0], generator=g))
    assert first.shape == (2, 3, *SIZES[0])


def test_sample_reconstruct_and_arbitrary_size():
    model = trained_like()
    g = torch.Generator().manual_seed(0)
    a = model.sample(3, generator=g)
    assert a.shape == (3, 3, 32, 48) and torch.isfinite(a).all()
    assert not torch.allclose(a[0], a[1])
    wide = model.sample(2, scale_v=1.0, scale_h=1.5, generator=g)
    assert wide.shape == (2, 3, 32, 72)
    tall = model.sample(1, scale_v=0.75, scale_h=1.0, generator=g)
    assert tall.shape == (1, 3, 24, 48)
    rec = model.reconstruct()
    torch.testing.assert_close(rec, model.reconstruct())  # fixed noise: deterministic
    assert rec.shape == (1, 3, 32, 48)
    # gen_start_scale = number of scales that keep the reconstruction noise
    kept = model.sample(2, gen_start_scale=2, generator=g)
    assert kept.shape == (2, 3, 32, 48)
    noise = [model.draw_noise(k, 2, generator=g) for k in range(3)]
    torch.testing.assert_close(model.sample(2, noise=noise), model.sample(2, noise=noise))
    # a partially trained model generates at its finest finished scale
    model.trained.fill_(2)
    assert model.sample(1, generator=g).shape == (1, 3, 25, 38)


def test_inject_starts_from_the_image():
    model = trained_like()
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 48, generator=g) * 2 - 1
    out = model.inject(image, 1, 2, generator=g)
    assert out.shape == (2, 3, 32, 48)
    assert model.inject(image, 2, 1, generator=g).shape == (1, 3, 32, 48)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.sample(1, gen_start_scale=3), "gen_start_scale"),
    (lambda m: m.sample(1, scale_v=-1), "scale_v"),
    (lambda m: m.sample(1, scale_h=1.5, gen_start_scale=1), "layout"),
    (lambda m: m.sample(2, noise=[torch.zeros(2, 3, 20, 30)] * 3), "noise[0]"),
    (lambda m: m.sample(1, noise=[torch.zeros(1, 1, 20, 30)]), "one map per scale"),
    (lambda m: m.inject(torch.zeros(1, 3, 32, 48), 3), "injection scale"),
    (lambda m: m.inject(torch.zeros(1, 4, 32, 48), 1), "RGB"),
    (lambda m: m.inject(torch.zeros(1, 3, 30, 48), 1), "32x48"),
    (lambda m: m.reconstruct(stop=4), "3 scales"),
])
def test_bad_inputs_are_refused(call, message):
    with pytest.raises(SinGANInputError, match=message.replace("[", r"\[")):
        call(trained_like())


def test_checkpoint_round_trip_through_the_registry():
    model = trained_like(seed=3)
    state = {"format": 1, "model": "singan",
             "trainer": {"config": model.cfg.to_dict(), "model": model.state_dict()}}
    loaded = registry.model_from_state(state).eval()
    assert isinstance(loaded, SinGAN) and loaded.sizes == SIZES and loaded.cfg.r == pytest.approx(R)
    assert loaded.finished == 3 and torch.equal(loaded.z_opt0, model.z_opt0)
    torch.testing.assert_close(loaded.noise_amp, model.noise_amp)
    torch.testing.assert_close(loaded.reconstruct(), model.reconstruct())
    g = torch.Generator().manual_seed(0)
    noise = [model.draw_noise(k, 2, generator=g) for k in range(3)]
    torch.testing.assert_close(loaded.sample(2, noise=noise), model.sample(2, noise=noise))


def test_export_graph_runs_the_pyramid():
    from fsgan_fast.models.singan import singan_graph

    model = trained_like()
    graph = singan_graph(model)
    assert graph.input_names == ("noise0", "noise1", "noise2")
    inputs = graph.example_inputs(2)
    assert [tuple(t.shape) for t in inputs] == [(2, 1, 20, 30), (2, 3, 25, 38), (2, 3, 32, 48)]
    torch.testing.assert_close(graph.run(*inputs), model.sample(2, noise=list(inputs)))
    assert not any(k.startswith("dis.") for k in graph.module.state_dict())


def test_animation_mode_draws_noise_over_the_padded_border():
    from fsgan_fast.apps.singan import animate

    model = trained_like(animation=True)
    g = torch.Generator().manual_seed(0)
    assert model.sample(2, generator=g).shape == (2, 3, 32, 48)
    assert model.reconstruct().shape == (1, 3, 32, 48)
    frames = animate(model, 4, 0.9, 1, batch_size=3, generator=g)
    assert frames.shape == (4, 3, 32, 48) and not torch.allclose(frames[0], frames[3])
