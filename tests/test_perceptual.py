"""LPIPS (VGG16) against a plain conv2d oracle over the same weight files, weight lookup, and the MSE fallback.

No real VGG16 weights exist on CI: the trunk is the seeded random one, saved in torchvision's key layout. The
heads come from the installed lpips package when present, else from a synthetic file with the same keys.
"""

import importlib.util
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fsgan_fast import perceptual
from fsgan_fast.perceptual import (
    HEADS_ENV,
    LPIPS,
    VGG16_ENV,
    VGG16_URL,
    PerceptualWeightsMissing,
    PixelLoss,
    lpips_available,
    reconstruction_loss,
)

TAP_CHANNELS = (64, 128, 256, 512, 512)
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
POOLS_BEFORE = (4, 9, 16, 23)  # max-pools in torchvision's vgg16().features


def make_inputs(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


def _load(path):
    # lpips's heads file was saved from CUDA tensors.
    return torch.load(path, map_location="cpu", weights_only=True)


def _package_heads():
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0], "weights", "v0.1", "vgg.pth")
    return path if path.is_file() else None


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No env overrides and an empty torch hub dir, so nothing outside the test can supply weights."""
    monkeypatch.delenv(VGG16_ENV, raising=False)
    monkeypatch.delenv(HEADS_ENV, raising=False)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@pytest.fixture(scope="module")
def heads_file(tmp_path_factory):
    real = _package_heads()
    if real is not None:
        return real
    g = torch.Generator().manual_seed(1)
    # LPIPS's heads are non-negative; same keys and shapes as lpips/weights/v0.1/vgg.pth.
    state = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(TAP_CHANNELS)}
    path = tmp_path_factory.mktemp("heads") / "heads.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory, heads_file):
    trunk = LPIPS(random_backbone=True, heads_path=heads_file).features
    state = {f"features.{k}": v.clone() for k, v in trunk.state_dict().items()}
    # torchvision's file also carries the classifier; the loader must ignore it.
    state["classifier.0.weight"] = torch.zeros(4, 4)
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(state, path)
    return path


@pytest.fixture
def model(vgg_file, heads_file):
    return LPIPS(vgg_file, heads_path=heads_file)


def lpips_oracle(x, y, vgg_state, heads_state):
    """LPIPS written out plainly: ScalingLayer, VGG16 convs/ReLUs/pools, unit-normalise, conv2d heads, mean."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=x.dtype).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=x.dtype).view(1, 3, 1, 1)

    def taps(v):
        h = (v - shift) / scale
        out = []
        for i in VGG_CONVS:
            if i in (5, 10, 17, 24):
                h = F.max_pool2d(h, 2, 2)
            w, b = vgg_state[f"features.{i}.weight"].to(x.dtype), vgg_state[f"features.{i}.bias"].to(x.dtype)
            h = F.relu(F.conv2d(h, w, b, padding=1))
            if i in (2, 7, 14, 21, 28):  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
                out.append(h)
        return out

    total = 0
    for k, (fx, fy) in enumerate(zip(taps(x), taps(y))):
        nx = fx / (torch.sqrt((fx**2).sum(1, keepdim=True)) + 1e-10)
        ny = fy / (torch.sqrt((fy**2).sum(1, keepdim=True)) + 1e-10)
        head = heads_state[f"lin{k}.model.1.weight"].to(x.dtype)
        total = total + F.conv2d((nx - ny) ** 2, head).mean(dim=(2, 3))
    return total.view(-1)


def test_lpips_matches_oracle_fp64(model, vgg_file, heads_file):
    x, y = make_inputs((2, 3, 32, 32), torch.float64, 1), make_inputs((2, 3, 32, 32), torch.float64, 2)
    vgg_state, heads_state = _load(vgg_file), _load(heads_file)
    expected = lpips_oracle(x, y, vgg_state, heads_state)
    got = model.double()(x, y)
    assert got.shape == (2,) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (3, 3, 17, 33), (1, 3, 64, 48)])
def test_lpips_matches_oracle_fp32(model, vgg_file, heads_file, shape):
    x, y = make_inputs(shape, seed=3), make_inputs(shape, seed=4)
    expected = lpips_oracle(x.double(), y.double(), _load(vgg_file), _load(heads_file))
    got = model(x, y)
    assert got.shape == (shape[0],) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)


def test_lpips_at_fastgan_decoder_size(model):
    x, y = make_inputs((1, 3, 128, 128), seed=5), make_inputs((1, 3, 128, 128), seed=6)
    d = model(x, y)
    assert d.shape == (1,) and torch.isfinite(d).all() and d.item() > 0


def test_lpips_identity_symmetry_positivity(model):
    x, y = make_inputs((3, 3, 16, 24), seed=7), make_inputs((3, 3, 16, 24), seed=8)
    torch.testing.assert_close(model(x, x), torch.zeros(3), rtol=0, atol=1e-7)
    torch.testing.assert_close(model(x, y), model(y, x), rtol=1e-6, atol=1e-7)
    assert (model(x, y) > 0).all()
    # Per sample: changing one image changes only its own distance.
    y2 = y.clone()
    y2[1] = x[1]
    d = model(x, y2)
    assert d[1].abs() < 1e-6 and torch.allclose(d[[0, 2]], model(x, y)[[0, 2]])


def test_lpips_gradients_flow_to_both_inputs(model):
    x = make_inputs((2, 3, 32, 32), seed=9).requires_grad_()
    y = make_inputs((2, 3, 32, 32), seed=10).requires_grad_()
    model(x, y).sum().backward()
    for t in (x, y):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_lpips_directional_derivative(model):
    # Full gradcheck through 13 fp64 convs takes minutes on a CPU; one random direction checks the same chain.
    m = model.double()
    x = make_inputs((1, 3, 16, 16), torch.float64, 11).requires_grad_()
    y = make_inputs((1, 3, 16, 16), torch.float64, 12)
    v = make_inputs((1, 3, 16, 16), torch.float64, 13)
    (grad,) = torch.autograd.grad(m(x, y).sum(), x)
    eps = 1e-6
    with torch.no_grad():
        numeric = (m(x + eps * v, y) - m(x - eps * v, y)).sum() / (2 * eps)
    torch.testing.assert_close((grad * v).sum(), numeric, rtol=1e-5, atol=1e-9)


def test_lpips_frozen_and_eval(model):
    assert all(not p.requires_grad for p in model.parameters())
    assert not model.training
    model.train()
    assert not model.training and not any(m.training for m in model.modules())


def test_lpips_loads_the_files(model, vgg_file, heads_file):
    vgg_state, heads_state = _load(vgg_file), _load(heads_file)
    for i in VGG_CONVS:
        assert torch.equal(model.features[i].weight, vgg_state[f"features.{i}.weight"])
        assert torch.equal(model.features[i].bias, vgg_state[f"features.{i}.bias"])
    for k in range(5):
        assert torch.equal(model.lin[k].weight, heads_state[f"lin{k}.model.1.weight"])
    # torchvision's layout: the trunk's own keys are features' indices.
    assert sorted(model.features.state_dict()) == sorted(
        [f"{i}.weight" for i in VGG_CONVS] + [f"{i}.bias" for i in VGG_CONVS]
    )
    assert len(model.features) == 30 and all(isinstance(model.features[i], torch.nn.MaxPool2d) for i in POOLS_BEFORE)


def test_lpips_package_heads_file():
    path = _package_heads()
    if path is None:
        pytest.skip("the lpips package is not installed (pip install --no-deps lpips)")
    state = _load(path)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate(TAP_CHANNELS)
    }
    assert all((v >= 0).all() for v in state.values())
    assert perceptual._heads_location(None)[0] == path


@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda x, y: (x, y[:, :, :, :-1]), "same shape"),
        (lambda x, y: (x[:, :1], y[:, :1]), r"RGB images \[B, 3, H, W\]"),
        (lambda x, y: (x[0], y[0]), r"RGB images \[B, 3, H, W\]"),
        (lambda x, y: (x[:, :, :15], y[:, :, :15]), "at least 16x16"),
        (lambda x, y: (x.long(), y.long()), "floating"),
        (lambda x, y: (x.numpy(), y), "torch.Tensor"),
    ],
)
@pytest.mark.parametrize("kind", ["lpips", "mse", "l1"])
def test_reconstruction_bad_inputs_raise(model, kind, mutate, error):
    loss = model if kind == "lpips" else reconstruction_loss(kind)
    x, y = mutate(make_inputs((2, 3, 16, 16), seed=1), make_inputs((2, 3, 16, 16), seed=2))
    with pytest.raises((ValueError, TypeError), match=error):
        loss(x, y)


# ---------------------------------------------------------------------------------------------- weight lookup
def test_missing_vgg_message(isolated, heads_file):
    reason = lpips_available(heads_path=heads_file)
    assert reason is not None
    for needle in ("vgg16-397923af.pth", VGG16_ENV, VGG16_URL, str(isolated / "checkpoints")):
        assert needle in reason
    assert "lpips/weights" not in reason  # the heads were found
    with pytest.raises(PerceptualWeightsMissing, match=VGG16_ENV) as info:
        LPIPS(heads_path=heads_file)
    assert isinstance(info.value, FileNotFoundError) and str(info.value) == reason


def test_missing_heads_message(isolated, monkeypatch, vgg_file):
    monkeypatch.setattr(perceptual, "_lpips_package_dir", lambda: None)
    reason = lpips_available(vgg_file)
    assert reason is not None
    for needle in ("lpips/weights/v0.1/vgg.pth", "pip install --no-deps lpips", HEADS_ENV, "not installed"):
        assert needle in reason
    assert VGG16_URL not in reason  # the trunk was found
    with pytest.raises(PerceptualWeightsMissing, match="pip install --no-deps lpips"):
        LPIPS(vgg_file)
    with pytest.raises(PerceptualWeightsMissing, match="pip install --no-deps lpips"):
        LPIPS(random_backbone=True)


def test_explicit_missing_path_is_reported_not_skipped(isolated, vgg_file, heads_file, monkeypatch, tmp_path):
    monkeypatch.setenv(VGG16_ENV, str(vgg_file))
    missing = tmp_path / "nowhere" / "vgg.pth"
    reason = lpips_available(missing, heads_path=heads_file)
    assert str(missing) in reason and "vgg_path argument" in reason


def test_lookup_order(isolated, vgg_file, heads_file, monkeypatch, tmp_path):
    monkeypatch.setenv(HEADS_ENV, str(heads_file))
    assert lpips_available() is not None
    # torch hub's cache.
    (isolated / "checkpoints").mkdir(parents=True)
    (isolated / "checkpoints" / "vgg16-397923af.pth").write_bytes(vgg_file.read_bytes())
    assert lpips_available() is None
    LPIPS()
    # The environment variable beats the hub cache, the argument beats both.
    monkeypatch.setenv(VGG16_ENV, str(tmp_path / "missing.pth"))
    assert "FSGAN_FAST_VGG16" in lpips_available()
    assert lpips_available(vgg_file) is None
    monkeypatch.setenv(VGG16_ENV, str(vgg_file))
    assert lpips_available() is None


def test_bad_weight_files_raise(isolated, vgg_file, heads_file, tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(ValueError, match="not torchvision's vgg16 state dict"):
        LPIPS(bad, heads_path=heads_file)
    state = _load(vgg_file)
    state["features.2.weight"] = torch.zeros(64, 32, 3, 3)
    torch.save(state, bad)
    with pytest.raises(ValueError, match="layer shapes"):
        LPIPS(bad, heads_path=heads_file)
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, bad)
    with pytest.raises(ValueError, match=r"lin1.model.1.weight should be \[1, 128, 1, 1\], missing"):
        LPIPS(vgg_file, heads_path=bad)
    with pytest.raises(ValueError, match="either vgg_path or random_backbone"):
        LPIPS(vgg_file, random_backbone=True, heads_path=heads_file)


def test_random_backbone_is_seeded(isolated, heads_file):
    rng_state = torch.get_rng_state()
    a, b = LPIPS(random_backbone=True, heads_path=heads_file), LPIPS(random_backbone=True, heads_path=heads_file)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is left alone
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------------------------------------- reconstruction loss
def test_reconstruction_pixel_kinds():
    x, y = make_inputs((2, 3, 16, 20), seed=1), make_inputs((2, 3, 16, 20), seed=2)
    mse, l1 = reconstruction_loss("mse"), reconstruction_loss("l1")
    assert (mse.kind, l1.kind) == ("mse", "l1") and mse.fallback_reason is None
    torch.testing.assert_close(mse(x, y), torch.stack([((x[b] - y[b]) ** 2).mean() for b in range(2)]))
    torch.testing.assert_close(l1(x, y), torch.stack([(x[b] - y[b]).abs().mean() for b in range(2)]))
    with pytest.raises(ValueError, match=r"kind must be one of \['lpips', 'mse', 'l1', 'auto'\]"):
        reconstruction_loss("perceptual")
    with pytest.raises(ValueError, match="'mse' or 'l1'"):
        PixelLoss("lpips")


def test_reconstruction_auto_falls_back_to_mse(isolated, heads_file, caplog):
    with caplog.at_level(logging.WARNING, logger="fsgan_fast"):
        loss = reconstruction_loss("auto", heads_path=heads_file)
    assert isinstance(loss, PixelLoss) and loss.kind == "mse"
    assert loss.fallback_reason == lpips_available(heads_path=heads_file)
    records = [r for r in caplog.records if r.name == "fsgan_fast" and r.levelno == logging.WARNING]
    assert len(records) == 1 and "falls back to per-pixel MSE" in records[0].getMessage()
    assert loss.fallback_reason in records[0].getMessage()
    x, y = make_inputs((2, 3, 16, 16), seed=1), make_inputs((2, 3, 16, 16), seed=2)
    torch.testing.assert_close(loss(x, y), reconstruction_loss("mse")(x, y))


def test_reconstruction_auto_resolves_to_lpips(isolated, vgg_file, heads_file, monkeypatch, caplog):
    monkeypatch.setenv(VGG16_ENV, str(vgg_file))
    with caplog.at_level(logging.WARNING, logger="fsgan_fast"):
        loss = reconstruction_loss("auto", heads_path=heads_file)
    assert isinstance(loss, LPIPS) and loss.kind == "lpips" and loss.fallback_reason is None
    assert not [r for r in caplog.records if r.name == "fsgan_fast"]
    assert isinstance(reconstruction_loss("lpips", heads_path=heads_file), LPIPS)


def test_reconstruction_lpips_without_weights_raises(isolated, heads_file):
    with pytest.raises(PerceptualWeightsMissing, match="vgg16-397923af.pth"):
        reconstruction_loss("lpips", heads_path=heads_file)
