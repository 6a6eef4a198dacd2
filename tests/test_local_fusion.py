"""LocalFusion layer: sampling from a given generator, and agreement with the op."""

import pytest
import torch

from fsgan_fast.nn import LocalFusion
from fsgan_fast.ops.lfm import lfm_fuse_reference


def test_sampling_follows_lofgan():
    layer = LocalFusion(rate=0.5)
    base, positions, alpha = layer.sample(6, 3, 8, 8, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert positions.shape == (6, 32) and positions.dtype == torch.int64
    for row in positions:
        assert row.unique().numel() == 32 and row.min() >= 0 and row.max() < 64
    assert ((base >= 0) & (base < 3)).all()
    torch.testing.assert_close(alpha.sum(1), torch.ones(6))
    assert (alpha > 0).all()
    # eta scales n; the official code's shared base draws one index for the whole batch
    assert LocalFusion(rate=0.25).num_positions(8, 8) == 16
    shared, _, _ = LocalFusion(shared_base=True).sample(16, 5, 4, 4, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert shared.unique().numel() == 1


def test_same_generator_same_fusion_and_matches_reference():
    feats = torch.randn(4, 3, 16, 6, 5)
    layer = LocalFusion(rate=0.5)
    out1 = layer(feats, torch.Generator().manual_seed(7))
    out2 = layer(feats, torch.Generator().manual_seed(7))
    assert torch.equal(out1.fused, out2.fused) and torch.equal(out1.positions, out2.positions)
    fused, ref_idx = lfm_fuse_reference(feats.double(), out1.base, out1.positions, out1.alpha.double())
    assert torch.equal(ref_idx, out1.ref_idx)
    torch.testing.assert_close(out1.fused.double(), fused, atol=1e-5, rtol=0)
    # given randomness replays exactly, and is validated
    out3 = layer(feats, base=out1.base, positions=out1.positions, alpha=out1.alpha)
    assert torch.equal(out3.fused, out1.fused)
    with pytest.raises(ValueError, match="distinct"):
        layer(feats, base=out1.base, positions=torch.zeros_like(out1.positions), alpha=out1.alpha)
    # unless the caller vouches for them (a host sync saved on a GPU)
    layer(feats, base=out1.base, positions=torch.zeros_like(out1.positions), alpha=out1.alpha, check_indices=False)


def test_generate_does_not_revalidate_its_own_indices(monkeypatch):
    """LoFGAN.generate draws valid indices itself: validating them would sync the host once per chunk."""
    from fsgan_fast.models.lofgan import LoFGAN, LoFGANConfig
    from fsgan_fast.ops import lfm as ops_lfm

    checked = []
    real = ops_lfm._check_common
    monkeypatch.setattr(ops_lfm, "_check_common", lambda *a: checked.append(a[-1]) or real(*a))
    model = LoFGAN(LoFGANConfig(size=32, shots=3, n_classes=4, gen_channels=(8, 8, 8, 8, 8)))
    shots = torch.rand(3, 3, 32, 32) * 2 - 1
    assert model.generate(shots, 5, torch.Generator().manual_seed(0), batch_size=2).shape == (5, 3, 32, 32)
    assert checked and not any(checked), checked


def test_bad_arguments():
    with pytest.raises(ValueError, match="rate"):
        LocalFusion(rate=0.0)
    with pytest.raises(ValueError, match=r"\[B, K, C, H, W\]"):
        LocalFusion()(torch.randn(2, 3, 4, 4))
