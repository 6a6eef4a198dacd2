"""Our FID Inception graph against pytorch-fid's (same random weights), weight-file handling, bad input."""

import pytest
import torch

from fsgan_fast.metrics.inception import INCEPTION_URL, FIDInception, InceptionWeightsMissing


@pytest.fixture(scope="module")
def ours():
    return FIDInception(random_weights=True)


def _pytorch_fid_model(state, monkeypatch):
    """pytorch-fid's InceptionV3 with blocks 0 and 3, loading ``state`` where it would download the weights."""
    inception = pytest.importorskip("pytorch_fid.inception")
    full = dict(state)
    full["fc.weight"], full["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: full)
    return inception.InceptionV3([0, 3], use_fid_inception=True).eval()


def test_same_graph_as_pytorch_fid(ours, monkeypatch, tmp_path):
    ref = _pytorch_fid_model(ours.state_dict(), monkeypatch)
    # a file with the real weight file's layout (pytorch-fid's fid_inception_v3 keys, fc.* included) loads into ours
    path = tmp_path / "w.pth"
    torch.save(_fid_inception_state(monkeypatch, ours.state_dict()), path)
    loaded = FIDInception(path)
    for k, v in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0)) * 2 - 1
    block0, pool3 = ref((x + 1) / 2)  # pytorch-fid takes [0, 1]
    mine = ours.pool3(x)
    torch.testing.assert_close(mine, pool3.flatten(1), rtol=1e-4, atol=1e-5)
    # block 0 of pytorch-fid = stem then the first max-pool, on the 299 resize
    resized = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(torch.nn.functional.max_pool2d(ours.early(resized), 3, 2), block0, rtol=1e-4, atol=1e-5)


def _fid_inception_state(monkeypatch, state):
    inception = pytest.importorskip("pytorch_fid.inception")
    full = dict(state)
    full["fc.weight"], full["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: full)
    return inception.fid_inception_v3().state_dict()  # the real file's keys, fc.* included


def test_missing_weights_name_the_file(monkeypatch, tmp_path):
    monkeypatch.delenv("FSGAN_FAST_INCEPTION", raising=False)
    with pytest.raises(InceptionWeightsMissing, match="pt_inception-2015-12-05-6726825d.pth") as e:
        FIDInception()
    assert INCEPTION_URL in str(e.value) and "--random-weights" in str(e.value)
    monkeypatch.setenv("FSGAN_FAST_INCEPTION", str(tmp_path / "nope.pth"))
    with pytest.raises(InceptionWeightsMissing, match="FSGAN_FAST_INCEPTION names"):
        FIDInception()
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not hold the FID Inception weights"):
        FIDInception(bad)
    with pytest.raises(ValueError, match="not both"):
        FIDInception(bad, random_weights=True)


def test_bad_images(ours):
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels, got 1"):
        ours.pool3(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        ours.pool3(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="floating point"):
        ours.early(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 7x7"):
        ours.early(torch.zeros(1, 3, 5, 5))


def test_random_network_is_seeded_and_marked(ours):
    assert not ours.comparable
    other = FIDInception(random_weights=True)
    for k, v in ours.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    assert ours.early(torch.zeros(1, 3, 20, 24)).shape == (1, 64, 7, 9)
    ours.train()
    assert not ours.training
