"""Losses against hand-computed values on tiny random inputs, gradients, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from fsgan_fast.losses import (
    classification_loss,
    hinge_d_loss,
    hinge_g_loss,
    local_reconstruction_loss,
    r1_class_penalty,
)
from fsgan_fast.nn import LocalFusionOutput
from fsgan_fast.train.lofgan import LoFGANLossWeights


def rand(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def test_hinge_losses_by_hand():
    # random values on both sides of each hinge (real around 1.8 and 0, fake around -1.8 and 0)
    real = torch.cat([rand(4, seed=1) * 0.3 + 1.8, rand(3, seed=2) * 0.3])
    fake = torch.cat([rand(2, seed=3) * 0.3 - 1.8, rand(3, seed=4) * 0.3])
    want_d = sum(max(0.0, 1 - r) for r in real.tolist()) / 7 + sum(max(0.0, 1 + f) for f in fake.tolist()) / 5
    assert hinge_d_loss(real, fake).item() == pytest.approx(want_d, rel=1e-12)
    assert hinge_g_loss(fake).item() == pytest.approx(-sum(fake.tolist()) / 5, rel=1e-12)
    assert any(r > 1 for r in real.tolist()) and any(r < 1 for r in real.tolist())
    assert any(f < -1 for f in fake.tolist()) and any(f > -1 for f in fake.tolist())
    fake.requires_grad_()
    hinge_d_loss(real, fake).backward()
    torch.testing.assert_close(fake.grad, (fake.detach() > -1).double() / 5)


def test_classification_loss_by_hand():
    logits, labels = rand(4, 6, seed=3), torch.tensor([5, 0, 2, 2])
    want = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        want += math.log(sum(math.exp(v) for v in row)) - row[y]
    assert classification_loss(logits, labels).item() == pytest.approx(want / 4, rel=1e-12)
    with pytest.raises(ValueError, match="labels must have shape"):
        classification_loss(logits, labels[:3])
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        classification_loss(logits, [1, 2, 3, 4])
    with pytest.raises(TypeError, match="integer tensor"):
        classification_loss(logits, labels.float())


# ---------------------------------------------------------------------------------------------------
# Local reconstruction on a 2x2 feature grid (4x4 images, 2x2 pixel cells)


def _fusion_2x2(B: int = 2, K: int = 3, seed: int = 4) -> LocalFusionOutput:
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([2, 0])[:B]
    positions = torch.tensor([[3, 0], [1, 2]])[:B]  # n = 2 of the 4 cells, distinct per row
    ref_idx = torch.tensor([[[1, 1], [0, 3]], [[2, 2], [3, 1]]])[:B, : K - 1]  # [B, K-1, n], repeats allowed
    alpha = torch.rand(B, K, generator=g, dtype=torch.float64)
    alpha = alpha / alpha.sum(1, keepdim=True)
    return LocalFusionOutput(rand(B, 5, 2, 2, seed=seed + 1), base, positions, ref_idx, alpha)


def _recon_by_hand(xs: torch.Tensor, fake: torch.Tensor, fu: LocalFusionOutput, mode: str) -> float:
    B, K = xs.shape[:2]

    def px(img: torch.Tensor, cell: int) -> torch.Tensor:  # [3, 4, 4] -> the cell's [3] value
        i, j = divmod(cell, 2)
        if mode == "nearest":
            return img[:, 2 * i, 2 * j]
        return img[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(1, 2))

    total = 0.0
    for b in range(B):
        bs = int(fu.base[b])
        refs = [s for s in range(K) if s != bs]
        for cell in range(4):
            target = px(xs[b, bs], cell)
            hits = (fu.positions[b] == cell).nonzero()
            if len(hits):
                t = int(hits[0])
                target = fu.alpha[b, bs] * px(xs[b, bs], cell)
                for r, s in enumerate(refs):
                    target = target + fu.alpha[b, s] * px(xs[b, s], int(fu.ref_idx[b, r, t]))
            total += (target - px(fake[b], cell)).abs().sum().item()
    return total / (B * 3 * 4)


@pytest.mark.parametrize("mode", ["nearest", "area"])
def test_local_reconstruction_loss_by_hand(mode):
    fu = _fusion_2x2()
    xs, fake = rand(2, 3, 3, 4, 4, seed=10), rand(2, 3, 4, 4, seed=11).requires_grad_()
    loss = local_reconstruction_loss(xs, fake, fu, mode=mode)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(_recon_by_hand(xs, fake.detach(), fu, mode), rel=1e-10)
    loss.backward()
    touched = (fake.grad != 0).sum().item()
    assert touched == (2 * 3 * 4 if mode == "nearest" else 2 * 3 * 16)  # nearest sees one pixel per cell


def test_local_reconstruction_loss_differs_from_plain_downsample():
    # the fused cells must use the references: compare with the target that ignores fusion
    fu = _fusion_2x2()
    xs, fake = rand(2, 3, 3, 4, 4, seed=12), rand(2, 3, 4, 4, seed=13)
    plain = (xs[torch.arange(2), fu.base][..., ::2, ::2] - fake[..., ::2, ::2]).abs().mean()
    assert abs(local_reconstruction_loss(xs, fake, fu).item() - plain.item()) > 1e-3


def test_local_reconstruction_loss_bad_input():
    fu = _fusion_2x2()
    xs, fake = rand(2, 3, 3, 4, 4), rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="mode must be one of"):
        local_reconstruction_loss(xs, fake, fu, mode="bilinear")
    with pytest.raises(ValueError, match="fake must have shape"):
        local_reconstruction_loss(xs, fake[:1], fu)
    with pytest.raises(ValueError, match="xs must be 5-D"):
        local_reconstruction_loss(xs[0], fake, fu)
    with pytest.raises(TypeError, match="LocalFusionOutput"):
        local_reconstruction_loss(xs, fake, tuple(fu)[:3])
    with pytest.raises(ValueError, match="B=2, K=4"):
        local_reconstruction_loss(rand(2, 4, 3, 4, 4), fake, fu)
    with pytest.raises(ValueError, match="multiple of the feature grid"):
        local_reconstruction_loss(rand(2, 3, 3, 5, 5), rand(2, 3, 5, 5), fu)


# ---------------------------------------------------------------------------------------------------
# R1 on the class logit, against discriminators whose input gradient is known


def test_r1_class_penalty_linear_by_hand():
    N, D, C = 5, 3 * 2 * 2, 4
    W = rand(D, C, seed=20).requires_grad_()
    x = rand(N, 3, 2, 2, seed=21).requires_grad_()
    labels = torch.tensor([0, 3, 3, 1, 2])
    logits = x.flatten(1) @ W
    pen = r1_class_penalty(x, logits, labels)
    # d mean_i(logit[i, y_i]) / d x_i = W[:, y_i] / N, so the penalty is sum_i |W[:, y_i]|^2 / N^2 / N
    Wd = W.detach()
    want = sum((Wd[:, y] ** 2).sum().item() for y in labels.tolist()) / N**3
    assert pen.item() == pytest.approx(want, rel=1e-12)
    # create_graph: the penalty trains W; d/dW[:, c] = 2 * count(c) * W[:, c] / N^3
    pen.backward()
    counts = torch.bincount(labels, minlength=C).double()
    torch.testing.assert_close(W.grad, 2 * counts * Wd / N**3)


def test_r1_class_penalty_quadratic_and_episodes():
    B, K, C = 2, 3, 3
    W = rand(12, C, seed=22)
    xs = rand(B, K, 3, 2, 2, seed=23).requires_grad_()
    labels = torch.tensor([2, 0]).repeat_interleave(K)
    logits = (xs.flatten(0, 1).flatten(1) ** 2) @ W  # d logit[i, c] / d x_i = 2 x_i W[:, c]
    pen = r1_class_penalty(xs, logits, labels)  # 5-D: divided by B, as the official code
    M = B * K
    x = xs.detach().flatten(0, 1).flatten(1)
    grads = torch.stack([2 * x[i] * W[:, labels[i]] / M for i in range(M)])
    want = grads.pow(2).sum().item()
    assert pen.item() == pytest.approx(want / B, rel=1e-12)
    flat = xs.detach().flatten(0, 1).requires_grad_()
    pen_flat = r1_class_penalty(flat, (flat.flatten(1) ** 2) @ W, labels)  # 4-D: divided by B*K
    assert pen_flat.item() == pytest.approx(want / M, rel=1e-12)
    pen.backward()  # through the input: the penalty depends on x here
    assert xs.grad is not None and xs.grad.abs().sum() > 0


def test_r1_class_penalty_bad_input():
    x = rand(3, 4, seed=24)
    W = rand(4, 2, seed=25)
    labels = torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="require grad"):
        r1_class_penalty(x, x @ W, labels)
    x.requires_grad_()
    with pytest.raises(ValueError, match="does not depend on real"):
        r1_class_penalty(x, (rand(3, 4) @ W).requires_grad_(), labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        r1_class_penalty(x, x @ W, labels[:2])
    with pytest.raises(TypeError, match="integer tensor"):
        r1_class_penalty(x, x @ W, labels.double())


def test_lofgan_loss_weights_defaults():
    w = LoFGANLossWeights()
    assert (w.adv, w.cls_d, w.cls_g, w.local, w.gp) == (1.0, 1.0, 1.0, 0.5, 10.0)
    with pytest.raises(ValueError, match="gp must be >= 0"):
        LoFGANLossWeights(gp=-1.0)
