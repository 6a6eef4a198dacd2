"""_common.EagerOp: plain eager calls skip the dispatcher and give the custom op's outputs and gradients; tracing,
fake tensors and functorch transforms get the custom op itself."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fsgan_fast.ops import lfm_fuse, sle_gate
from tests.ops import kit
from tests.ops.test_lfm import make_inputs

L = importlib.import_module("fsgan_fast.ops.lfm")
S = importlib.import_module("fsgan_fast.ops.sle_gate")


class _Counting:
    def __init__(self, op):
        self.op, self.calls = op, 0

    def __call__(self, *args):
        self.calls += 1
        return self.op(*args)


@pytest.fixture
def counted(monkeypatch):
    counter = _Counting(L._lfm_fuse_op_eager.op)
    monkeypatch.setattr(L._lfm_fuse_op_eager, "op", counter)
    return counter


def test_eager_call_skips_the_custom_op_and_matches_it(counted):
    feats, base, positions, alpha = make_inputs(2, 3, 5, 4, 4, 6)
    x = feats.clone().requires_grad_()
    a = alpha.clone().requires_grad_()
    fused, idx = lfm_fuse(x, base, positions, a, backend="cpu")
    assert counted.calls == 0
    grad = kit.randn(fused.shape, kit.generator(3), fused.dtype)
    gx, ga = torch.autograd.grad(fused, (x, a), grad)

    x2, a2 = feats.clone().requires_grad_(), alpha.clone().requires_grad_()
    want, want_idx = torch.ops.fsgan_fast.lfm_fuse(x2, base, positions, a2, "cpu")
    wx, wa = torch.autograd.grad(want, (x2, a2), grad)
    assert torch.equal(fused, want) and torch.equal(idx, want_idx)
    assert torch.equal(gx, wx) and torch.equal(ga, wa)


def test_no_grad_inputs_give_outputs_without_a_graph(counted):
    feats, base, positions, alpha = make_inputs(2, 3, 5, 4, 4, 6)
    fused, _ = lfm_fuse(feats, base, positions, alpha, backend="cpu")
    assert counted.calls == 0 and not fused.requires_grad and fused.grad_fn is None


def test_fake_tensors_go_through_the_custom_op(counted):
    feats, base, positions, alpha = make_inputs(2, 3, 5, 4, 4, 6)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (feats, base, positions, alpha)]
        fused, idx = lfm_fuse(*fake, backend="cpu", check_indices=False)
    assert counted.calls == 1 and tuple(fused.shape) == (2, 5, 4, 4)


def test_compiled_calls_trace_the_custom_op(counted):
    feats, base, positions, alpha = make_inputs(2, 3, 5, 4, 4, 6)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *t: lfm_fuse(*t, backend="cpu", check_indices=False)[0], fullgraph=True,
                             backend="eager")
    out = compiled(feats, base, positions, alpha)
    assert counted.calls >= 1
    assert torch.equal(out, lfm_fuse(feats, base, positions, alpha, backend="cpu")[0])


def test_sle_gate_eager_and_custom_op_agree():
    g = kit.generator(4)
    x_low, x_high = kit.randn((2, 3, 5, 6), g, torch.float32), kit.randn((2, 4, 7, 3), g, torch.float32)
    w1, w2 = kit.randn((4, 3, 4, 4), g, torch.float32), kit.randn((4, 4, 1, 1), g, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (x_low, x_high, w1, w2)]
    y = sle_gate(*leaves, "swish", backend="cpu")
    grad = kit.randn(y.shape, kit.generator(5), torch.float32)
    got = torch.autograd.grad(y, leaves, grad)
    leaves2 = [t.clone().requires_grad_() for t in (x_low, x_high, w1, w2)]
    want = torch.ops.fsgan_fast.sle_gate(*leaves2, "swish", "cpu")[0]
    assert torch.equal(y, want)
    for a, b in zip(got, torch.autograd.grad(want, leaves2, grad)):
        assert torch.equal(a, b)
