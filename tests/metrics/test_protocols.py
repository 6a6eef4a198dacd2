"""The protocols' plumbing on tiny random-init models and random-init metric networks (figures mean nothing)."""

import numpy as np
import pytest
import torch

from fsgan_fast.cli import _format_eval
from fsgan_fast.data.types import ImageClasses
from fsgan_fast.metrics.frechet import frechet_distance
from fsgan_fast.metrics.inception import FIDInception
from fsgan_fast.metrics.lpips_pairs import pairwise_lpips
from fsgan_fast.metrics.protocols import (FastGANEvalOptions, LoFGANEvalOptions, fastgan_protocol, lofgan_protocol,
                                          quantize)
from fsgan_fast.metrics.sifid import patch_stats, sifid


@pytest.fixture(scope="module")
def inception():
    return FIDInception(random_weights=True)


@pytest.fixture(autouse=True)
def _small_inception_input(monkeypatch):
    # plumbing only: 75 px (the smallest the graph takes) instead of 299 px cuts the CPU time 16-fold
    monkeypatch.setattr("fsgan_fast.metrics.inception.FID_SIZE", 75)


def test_lofgan_protocol_runs_and_is_marked(inception):
    from fsgan_fast.models.lofgan import LoFGAN, LoFGANConfig
    from fsgan_fast.perceptual import LPIPS

    torch.manual_seed(0)
    model = LoFGAN(LoFGANConfig(size=32, gen_channels=(8, 8, 8), dis_channels=8, dis_max_channels=16,
                                n_classes=1)).eval()
    g = torch.Generator().manual_seed(0)
    classes = ImageClasses(torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g),
                           torch.tensor([4, 4, 4]), ["a", "b", "c"])
    opts = LoFGANEvalOptions(pool=2, kid_subsets=3)
    lpips = LPIPS(random_backbone=True)
    res = lofgan_protocol(model, classes, [1, 2], opts, inception=inception, lpips=lpips,
                          device=torch.device("cpu"), tasks=2)
    assert set(res["metrics"]) == {"fid", "kid_mean", "kid_std", "lpips"}
    assert all(np.isfinite(v) for v in res["metrics"].values())
    assert res["settings"]["generated"] == 4 and res["settings"]["real"] == 4
    assert res["comparable"] is False and "not comparable" in res["notes"][0]
    table = _format_eval(res)
    assert table.count("not comparable") >= 5  # every metric line, and the note
    from fsgan_fast.data import DatasetError

    with pytest.raises(DatasetError, match="leaves no real images"):
        lofgan_protocol(model, classes, [1], LoFGANEvalOptions(pool=4), inception=inception,
                        lpips=lpips, device=torch.device("cpu"), tasks=2)


def test_fastgan_protocol_with_a_stub_generator(inception):
    class Stub:  # FastGAN's generate(n, generator, batch_size, use_ema) contract, without the network
        def generate(self, n, generator, *, batch_size, use_ema):
            return torch.rand(n, 3, 32, 32, generator=generator) * 2 - 1

    reals = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    res = fastgan_protocol(Stub(), reals, FastGANEvalOptions(kid_subsets=2), inception=inception,
                           device=torch.device("cpu"), n=4, batch_size=3)
    assert res["settings"] == {"generated": 4, "real": 5}
    assert any("not the paper's 5000" in n for n in res["notes"])


def test_sifid_matches_direct_numpy(inception):
    g = torch.Generator().manual_seed(1)
    real, fakes = torch.rand(3, 40, 48, generator=g) * 2 - 1, torch.rand(2, 3, 40, 48, generator=g) * 2 - 1
    values = sifid(inception, real, fakes)
    assert sifid(inception, real, real[None])[0] == pytest.approx(0, abs=1e-6)
    a = inception.early(real[None])[0].flatten(1).T.double().numpy()
    b = inception.early(fakes[1:2])[0].flatten(1).T.double().numpy()
    direct = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert values[1] == pytest.approx(direct, rel=1e-6)
    assert patch_stats(inception, real).n == 17 * 21
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        sifid(inception, real, real)


def test_pairwise_lpips_equals_the_module():
    from fsgan_fast.perceptual import LPIPS

    lpips = LPIPS(random_backbone=True)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    d = pairwise_lpips(lpips, x)
    i, j = torch.triu_indices(4, 4, 1)
    torch.testing.assert_close(d[i, j], lpips(x[i], x[j]).double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(d, d.T)


def test_quantize_is_8_bit():
    q = quantize(torch.tensor([-2.0, -1.0, 0.0, 0.3, 1.0, 5.0]))
    levels = (q + 1) * 127.5
    torch.testing.assert_close(levels, levels.round())
    assert q.min() == -1 and q.max() == 1
