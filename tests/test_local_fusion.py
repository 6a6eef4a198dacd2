"""LocalFusion layer: sampling from a given generator, agreement with the op, validation of given randomness."""

import itertools

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


GIVEN = ["base", "positions", "alpha"]
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(GIVEN, r)]


def _valid(B: int, K: int, H: int, W: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    base, positions, alpha = LocalFusion(rate=0.5).sample(B, K, H, W, torch.device("cpu"), gen)
    return {"base": base, "positions": positions, "alpha": alpha}


def _corrupt(name: str, value: torch.Tensor, K: int, P: int, how: str, gen: torch.Generator) -> tuple:
    """A copy of ``value`` with one random element made invalid, and the error it must raise."""
    bad = value.clone()
    row = int(torch.randint(bad.shape[0], (), generator=gen))
    if name == "base":
        bad[row] = K if how == "high" else -1
        return bad, rf"LocalFusion: base must lie in \[0, K={K}\), got {int(bad[row])} in row {row}"
    if name == "positions":
        col = int(torch.randint(1, bad.shape[1], (), generator=gen))
        if how == "high":
            bad[row, col] = P + int(torch.randint(5, (), generator=gen))
            return bad, rf"LocalFusion: positions must lie in \[0, H\*W={P}\), got {int(bad[row, col])} in row {row}"
        bad[row, col] = bad[row, 0]
        return bad, rf"LocalFusion: positions must be distinct within each row; row {row} repeats {int(bad[row, 0])}"
    bad[row, int(torch.randint(K, (), generator=gen))] = float("nan") if how == "high" else float("inf")
    return bad, rf"LocalFusion: alpha must be finite, got (nan|inf) in row {row}"


@pytest.mark.parametrize("given", SUBSETS, ids=["+".join(s) for s in SUBSETS])
@pytest.mark.parametrize("how", ["high", "low"])
def test_whatever_is_given_is_validated(given, how):
    """An out-of-range base with drawn positions used to fuse nothing (zeros on the CPU backend), silently."""
    B, K, C, H, W = 5, 3, 8, 6, 7
    gen = torch.Generator().manual_seed(len(given) * 10 + (how == "low"))
    feats = torch.randn(B, K, C, H, W, generator=gen)
    layer = LocalFusion(rate=0.5)
    valid = _valid(B, K, H, W, seed=3)
    # the valid given ones are used as given, the rest drawn
    out = layer(feats, torch.Generator().manual_seed(1), **{k: valid[k] for k in given})
    for k in given:
        assert torch.equal(getattr(out, k), valid[k])
    for victim in given:
        kwargs = {k: valid[k] for k in given}
        kwargs[victim], message = _corrupt(victim, valid[victim], K, H * W, how, gen)
        with pytest.raises(ValueError, match=message):
            layer(feats, torch.Generator().manual_seed(1), **kwargs)
        if victim == "alpha" or (victim == "positions" and how == "low"):
            # in bounds, so safe on every backend: unchecked when the caller vouches (no host sync)
            layer(feats, torch.Generator().manual_seed(1), **kwargs, check_indices=False)


def test_given_shapes_dtypes_devices_are_always_checked():
    B, K, C, H, W = 4, 3, 5, 4, 4
    feats = torch.randn(B, K, C, H, W)
    layer = LocalFusion()
    valid = _valid(B, K, H, W, seed=0)
    cases = [
        (dict(base=valid["base"][:3]), r"base must have shape \[B=4\]"),
        (dict(base=valid["base"].float()), "base must be an integer tensor"),
        (dict(positions=valid["positions"][0]), r"positions must have shape \[B=4, n\] with n <= H\*W=16"),
        (dict(positions=torch.arange(17).expand(B, 17)), r"positions must have shape \[B=4, n\] with n <= H\*W=16"),
        (dict(positions=[[0, 1]] * B), "positions must be a torch.Tensor, got list"),
        (dict(alpha=valid["alpha"][:, :2]), r"alpha must have shape \[B=4, K=3\]"),
        (dict(alpha=torch.ones(B, K, dtype=torch.int64)), "alpha must be a floating tensor"),
        (dict(base=valid["base"].to("meta")), "base is on meta but feats is on cpu"),
    ]
    for kwargs, message in cases:
        with pytest.raises((ValueError, TypeError), match="LocalFusion: " + message):
            layer(feats, **kwargs, check_indices=False)


def test_values_checked_with_one_host_sync(monkeypatch):
    """Every flag is gathered before a single .tolist(); drawn-only calls check nothing."""
    feats = torch.randn(3, 4, 6, 5, 5)
    valid = _valid(3, 4, 5, 5, seed=2)
    calls = []
    real = torch.Tensor.tolist
    # counts the layer's flag reads (bool tensors) only, not whatever the op may read back
    monkeypatch.setattr(
        torch.Tensor, "tolist", lambda self: (self.dtype == torch.bool and calls.append(self.shape)) or real(self)
    )
    LocalFusion()(feats, **valid)
    assert len(calls) == 1
    calls.clear()
    LocalFusion()(feats, torch.Generator().manual_seed(0))
    assert not calls
