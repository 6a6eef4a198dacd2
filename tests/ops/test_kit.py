"""The op-test kit checks what it claims to: comparisons, the bad-input runner, backend cases, inputs."""

from __future__ import annotations

import pytest
import torch

from fsgan_fast import backends
from tests.ops import kit


def test_assert_close_names_the_first_mismatch():
    expected = torch.arange(12, dtype=torch.float64).view(3, 4)
    actual = expected.float().clone()
    actual[1, 2] += 1e-3
    actual[2, 0] += 1.0
    kit.assert_close(actual, expected, 1.01, "x")
    with pytest.raises(AssertionError, match=r"x: 1/12 .* first at \(2, 0\): 9\.0 vs expected 8\.0"):
        kit.assert_close(actual, expected, 1e-2, "x")
    with pytest.raises(AssertionError, match=r"shape \[3, 4\] != \[4, 3\]"):
        kit.assert_close(actual, expected.t(), 1.0, "x")
    with pytest.raises(AssertionError, match="dtype torch.float32 != torch.float64"):
        kit.assert_close(actual, expected, 1.0, "x", check_dtype=True)
    with pytest.raises(AssertionError, match=r"first at \(0, 1\)"):  # integers compare exactly by default
        kit.assert_close(torch.tensor([[1, 2]]), torch.tensor([[1, 3]]))
    with pytest.raises(AssertionError, match="rtol"):
        kit.assert_close(torch.tensor([100.0]), torch.tensor([101.0]), 0.0, rtol=1e-3)
    kit.assert_close(torch.tensor([100.0]), torch.tensor([101.0]), 0.0, rtol=1e-2)


@pytest.mark.parametrize("bad, kind", [(float("nan"), "NaN"), (float("inf"), r"\+inf"), (float("-inf"), "-inf")])
def test_assert_close_checks_nonfinite_parity(bad, kind):
    expected = torch.tensor([1.0, bad, 3.0])
    kit.assert_close(expected.clone(), expected, 0.0)
    with pytest.raises(AssertionError, match=rf"{kind} parity broken at 1 element\(s\), first \(1,\)"):
        kit.assert_close(torch.tensor([1.0, 2.0, 3.0]), expected, 10.0)
    with pytest.raises(AssertionError, match="parity broken"):
        kit.assert_close(torch.tensor([1.0, -bad if bad == bad else 0.0, 3.0]), expected, 10.0)


def test_assert_close_lowp_is_relative_to_the_same_precision_reference():
    exact = torch.linspace(-3, 3, 101, dtype=torch.float64) / 7
    same = exact.half()  # one rounding: the reference's error in fp16
    kit.assert_close_lowp(exact.half(), exact, same, "rounded")
    worse = exact + 3 * (same.double() - exact).abs().max()
    with pytest.raises(AssertionError, match=r"> 2 x .* of the reference in torch.float16"):
        kit.assert_close_lowp(worse, exact, same, "off")


def _any_native_case() -> kit.NativeCase:
    kit.load_op_tests()
    return next(case for make in kit.NATIVE_CASES.values() for case in make())


def test_bad_input_runner_wants_an_early_error_naming_the_argument():
    backend = kit.Backend(backends.registered_ops()[0], "reference", torch.device("cpu"))
    case = _any_native_case()

    def launches_then_fails(x, *, backend=None):
        try:
            getattr(torch.ops.fsgan_fast, case.op)(*case.inputs)
        except Exception:  # noqa: BLE001 - without the extension the dispatch itself fails; it was still attempted
            pass
        raise ValueError("x must be finite")

    def fails_early(x, *, backend=None):
        raise ValueError("x must be finite")

    ok = kit.BadInput("early", lambda x: (x,), ValueError, "x must be finite")
    kit.expect_bad_input(backend, fails_early, (torch.ones(1),), ok)
    with pytest.raises(AssertionError, match="after launching"):
        kit.expect_bad_input(backend, launches_then_fails, (torch.ones(1),), ok)
    vague = kit.BadInput("vague", lambda x: (x,), ValueError, "must be finite")
    with pytest.raises(AssertionError, match=r"must name one of \['x'\]"):
        kit.expect_bad_input(backend, fails_early, (torch.ones(1),), vague)


def test_backend_cases_cover_every_backend_of_every_op():
    for op in backends.registered_ops():
        cases = kit.backend_cases(op)
        assert {c.name for c in cases} == set(kit.op_spec(op).backends), op
        assert all(c.op == op for c in cases)
        assert {str(c) for c in cases} >= {"reference-cpu"}, op
        for c in cases:
            reason = c.unavailable()
            assert reason is None or (isinstance(reason, str) and reason), (c, reason)
            if c.device.type == "cuda" and not kit.CUDA:
                assert reason == "needs a CUDA device"


def test_inputs_are_seeded_and_never_zero():
    a = kit.randn((4, 5), kit.generator(3), torch.float16)
    b = kit.randn((4, 5), kit.generator(3), torch.float16)
    assert torch.equal(a, b) and a.dtype == torch.float16 and (a != 0).all()
    w = kit.simplex((3, 4), kit.generator(1))
    kit.assert_close(w.sum(1), torch.ones(3), 1e-6, "simplex rows")
    assert (w > 0).all()
    idx = kit.distinct(5, 7, 7, kit.generator(2))
    assert all(row.sort().values.tolist() == list(range(7)) for row in idx)
    assert kit.around(16, 64) == [15, 16, 17, 63, 64, 65]
