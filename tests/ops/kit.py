"""The shared op-test kit: what every ``tests/ops/test_<op>.py`` needs, written once.

- Backends from the op registry: :class:`Backend` cases for every backend an op registers, each on the device it
  runs on; the ``backend`` / ``fp64_backend`` fixtures of ``tests/ops/conftest.py`` parametrise over them for the
  module's ``OP``, skip the ones that cannot run here with the reason, and :meth:`Backend.run` asserts
  ``last_backend`` after the call.
- Inputs: seeded ``torch.Generator`` draws, never zeros (:func:`randn`, :func:`simplex`, :func:`randint`,
  :func:`distinct`), odd sizes (:data:`ODD_SIZES`, :func:`around`), readable ids (:func:`shapes`).
- Comparisons: :func:`assert_close` (one :data:`TOL` per dtype, NaN/inf parity, the first mismatch named) and
  :func:`assert_close_lowp` (fp16/bf16: error at most 2x that of the reference run in the same precision).
- Autograd and registration: :func:`gradcheck` (fp64), :func:`opcheck` (``torch.library.opcheck``),
  :func:`assert_compiles` (``torch.compile(fullgraph=True)`` against eager), :func:`assert_exports` (``torch.export``).
- Bad input: :class:`BadInput` cases and :func:`expect_bad_input`, which checks that the error names the argument
  and is raised before any ``fsgan_fast`` op is dispatched.
- Build-test registries: :func:`native_cases` (small CPU cases for the CMake library test) and
  :func:`aot_variants` (Triton kernel variants for the AOT compile test), filled by the op test modules that
  :func:`load_op_tests` imports. The build tests fail when a registered op has none.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import pkgutil
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fsgan_fast import backends

CUDA = torch.cuda.is_available()
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
LOW_PRECISION = (torch.float16, torch.bfloat16)
# absolute tolerance per dtype for O(1) values (unit-variance inputs, a few accumulated terms); scale it by the
# op's accumulation length where that grows
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# Triton signature type of each floating dtype the kernels take
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# backends whose float64 path gradcheck runs on (the others are compared against their fp64 gradients)
GRADCHECK_BACKENDS = ("reference", "cpu")
# sizes that break power-of-two assumptions: the minimum, primes, and one past common block sizes
ODD_SIZES = (1, 2, 3, 5, 7, 11, 13, 17, 19, 31, 33, 65)
NATIVE_DEVICES = ("cpu", "cuda")


# ---------------------------------------------------------------------------------------------------
# The op registry


def registered_ops() -> tuple[str, ...]:
    return backends.registered_ops()


def op_spec(op: str):
    """The registry's ``OpSpec`` of ``op`` (``backends.op_spec``; the registry dict on older trees)."""
    lookup = getattr(backends, "op_spec", None)
    if lookup is not None:
        return lookup(op)
    if op not in backends._OPS:
        raise KeyError(f"op {op!r} is not registered; registered: {', '.join(registered_ops())}")
    return backends._OPS[op]


def ops_with_backend(backend: str) -> list[str]:
    return [op for op in registered_ops() if backend in op_spec(op).backends]


def family(op: str) -> str:
    """The op family (module stem ``fsgan_fast/ops/<family>.py``) of a registered op."""
    spec = op_spec(op)
    return getattr(spec, "module", None) or op


def ops_modules() -> list:
    """Every public op module ``fsgan_fast/ops/<op>.py``, imported."""
    import fsgan_fast.ops as pkg

    return [importlib.import_module(f"fsgan_fast.ops.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)
            if not m.name.startswith("_")]


def native_schemas() -> dict[str, str]:
    """{private C++ op name: schema} for every op, e.g. ``'_lfm_fuse_cpu': '(Tensor feats, ...) -> (...)'``.

    ``fsgan_fast.ops._common.native_schemas()`` where it exists, else every op module's ``NATIVE_SCHEMAS``
    (``{'_<op>_{dev}': schema}``) expanded over the devices. Only the C++ ops (``_cpu`` / ``_cuda``) are kept.
    """
    schemas: dict[str, str] = {}
    try:
        common = importlib.import_module("fsgan_fast.ops._common")
    except ImportError:
        common = None
    from_common = getattr(common, "native_schemas", None)
    if from_common is not None:
        schemas = dict(from_common())
    else:
        for module in ops_modules():
            for stem, sig in getattr(module, "NATIVE_SCHEMAS", {}).items():
                for dev in NATIVE_DEVICES:
                    schemas[stem.format(dev=dev)] = sig
    return {name: sig for name, sig in schemas.items() if name.rsplit("_", 1)[-1] in NATIVE_DEVICES}


# ---------------------------------------------------------------------------------------------------
# Backends


@dataclasses.dataclass(frozen=True)
class Backend:
    """One backend of ``op`` on one device: what the ``backend`` fixture hands a test."""

    op: str
    name: str
    device: torch.device

    def __str__(self) -> str:
        return f"{self.name}-{self.device.type}"

    def unavailable(self, dtype: torch.dtype | None = None) -> str | None:
        if self.device.type == "cuda" and not CUDA:
            return "needs a CUDA device"
        return backends.why_unavailable(self.op, self.name, self.device, dtype)

    def require(self, dtype: torch.dtype | None = None) -> "Backend":
        """Skip the test, with the reason, unless this backend runs ``op`` here (on ``dtype`` tensors)."""
        reason = self.unavailable(dtype)
        if reason is not None:
            pytest.skip(f"backend {self.name!r} unavailable: {reason}")
        return self

    def run(self, fn: Callable, *args, op: str | None = None, **kwargs):
        """``fn(*args, backend=name, **kwargs)``, then assert that the registry recorded this backend for ``op``
        (default: ``fn``'s name when that is a registered op, else the fixture's op)."""
        op = op or (fn.__name__ if fn.__name__ in registered_ops() else self.op)
        backends.forget_last_backend(op)  # a stale record from an earlier call must not pass the check
        out = fn(*args, backend=self.name, **kwargs)
        assert backends.last_backend(op) == self.name, f"{op} ran {backends.last_backend(op)!r}, not {self.name!r}"
        return out

    def to(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(self.device) for t in tensors)


def backend_cases(op: str, names: Sequence[str] | None = None, devices: Sequence[str] | None = None) -> list[Backend]:
    """Every (backend, device) pair of ``op``, available here or not (the fixture skips those that cannot run).

    The reference runs on the CPU and, with a GPU, on CUDA; ``cpu`` and ``cuda`` on their device; Triton on CUDA,
    or on the CPU under its interpreter where there is no GPU.
    """
    cases = []
    for name in op_spec(op).backends:
        if names is not None and name not in names:
            continue
        if name == "reference":
            where = ["cpu", "cuda"] if CUDA else ["cpu"]
        elif name == "triton":
            where = ["cuda" if CUDA else "cpu"]
        else:
            where = [name]
        cases += [Backend(op, name, torch.device(d)) for d in where if devices is None or d in devices]
    return cases


def module_op(module) -> str:
    op = getattr(module, "OP", None)
    if op is None:
        raise pytest.UsageError(f"{module.__name__} uses the backend fixtures: set OP = '<registered op name>' in it")
    if op not in registered_ops():
        raise pytest.UsageError(f"{module.__name__}.OP = {op!r} is not a registered op: {registered_ops()}")
    return op


# ---------------------------------------------------------------------------------------------------
# Inputs: seeded, drawn on the CPU in float64 (the same values on every device), then cast


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape: Sequence[int], gen: torch.Generator, dtype: torch.dtype = torch.float64, device="cpu") -> torch.Tensor:
    """Standard normal values (never exactly zero in practice, unlike ``zeros``/``empty``)."""
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float64).to(device, dtype)


def simplex(shape: Sequence[int], gen: torch.Generator, dtype: torch.dtype = torch.float32, device="cpu",
            floor: float = 0.1) -> torch.Tensor:
    """Positive weights summing to 1 over the last dimension, none below ``floor / (1 + floor) / n``."""
    w = torch.rand(tuple(shape), generator=gen, dtype=torch.float64) + floor
    return (w / w.sum(-1, keepdim=True)).to(device, dtype)


def randint(high: int, shape: Sequence[int], gen: torch.Generator, device="cpu") -> torch.Tensor:
    return torch.randint(high, tuple(shape), generator=gen).to(device)


def distinct(rows: int, high: int, n: int, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """[rows, n] int64: n distinct values of [0, high) per row, in random order."""
    return torch.rand(rows, high, generator=gen).argsort(dim=1)[:, :n].to(device)


def around(*blocks: int) -> list[int]:
    """Sizes at and either side of each block size: the masks' edge cases."""
    return sorted({s for b in blocks for s in (b - 1, b, b + 1) if s >= 1})


def shapes(*cases: Sequence[int]) -> list:
    """``pytest.param`` per shape with a readable id, e.g. ``2x3x5x4x3x0``."""
    return [pytest.param(tuple(c), id="x".join(map(str, c))) for c in cases]


# ---------------------------------------------------------------------------------------------------
# Comparisons


def _index(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(shape))) if len(shape) else ()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float | None = None, what: str = "value", *,
                 rtol: float = 0.0, check_dtype: bool = False) -> None:
    """``|actual - expected| <= atol + rtol * |expected|`` elementwise, compared in float64 on the CPU.

    ``atol`` defaults to ``TOL[actual.dtype]`` (0 for integer tensors: exact). NaN, +inf and -inf must sit at
    the same places in both. A failure names the first mismatching index, both values, the largest error and
    how many elements are off.
    """
    assert isinstance(actual, torch.Tensor), f"{what}: got {type(actual).__name__}, not a tensor"
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {list(actual.shape)} != {list(expected.shape)}"
    if check_dtype:
        assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if atol is None:
        atol = TOL.get(actual.dtype, 0.0)
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    for name, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        off = test(a) ^ test(e)
        if off.any():
            i = _index(int(off.flatten().nonzero()[0]), a.shape)
            raise AssertionError(f"{what}: {name} parity broken at {int(off.sum())} element(s), first {i}: "
                                 f"{a[i].item()} vs expected {e[i].item()}")
    finite = torch.isfinite(e)
    err = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
    bad = err > atol + rtol * e.abs().nan_to_num(0, 0, 0)
    if bad.any():
        first = _index(int(bad.flatten().nonzero()[0]), a.shape)
        worst = _index(int(err.flatten().argmax()), a.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} element(s) off by more than atol={atol:.1e} rtol={rtol:.1e}; "
            f"first at {first}: {a[first].item()!r} vs expected {e[first].item()!r}; "
            f"max |err| {err[worst].item():.3e} at {worst}")


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest finite |actual - expected| in float64 (0 for empty tensors)."""
    err = (actual.detach().cpu().double() - expected.detach().cpu().double()).abs().nan_to_num(0, 0, 0)
    return float(err.max()) if err.numel() else 0.0


def assert_close_lowp(actual: torch.Tensor, expected: torch.Tensor, same_precision: torch.Tensor, what: str = "value",
                      *, factor: float = 2.0, floor: float = 0.0) -> None:
    """The low-precision rule (flash-attention): ``actual``'s error against the float64 ``expected`` is at most
    ``factor`` times that of ``same_precision``, the reference run on the same fp16/bf16 inputs in that precision
    (plus ``floor``). NaN/inf parity as in :func:`assert_close`."""
    assert_close(actual, expected, math.inf, what)  # shape and NaN/inf parity only
    ours, theirs = max_error(actual, expected), max_error(same_precision, expected)
    bound = factor * theirs + floor
    if ours > bound:
        a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
        worst = _index(int((a - e).abs().nan_to_num(0, 0, 0).flatten().argmax()), a.shape)
        raise AssertionError(f"{what}: max |err| {ours:.3e} at {worst} ({a[worst].item()!r} vs expected "
                             f"{e[worst].item()!r}) > {factor:g} x {theirs:.3e} of the reference in "
                             f"{same_precision.dtype}" + (f" + {floor:.1e}" if floor else ""))


# ---------------------------------------------------------------------------------------------------
# Autograd and registration


def gradcheck(fn: Callable, *inputs: Any, gradgrad: bool = False, **kwargs) -> None:
    """``torch.autograd.gradcheck`` (and ``gradgradcheck`` if the op promises it) of ``fn(*inputs)``; every input
    that requires grad must be float64."""
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    assert diff, "gradcheck: no input requires grad"
    assert all(t.dtype == torch.float64 for t in diff), f"gradcheck needs float64 inputs, got {[t.dtype for t in diff]}"
    assert torch.autograd.gradcheck(fn, inputs, **kwargs)
    if gradgrad:
        assert torch.autograd.gradgradcheck(fn, inputs, **kwargs)


def opcheck(op: str | Any, args: tuple, kwargs: dict | None = None) -> None:
    """``torch.library.opcheck`` (schema, autograd registration, fake tensor, AOT dispatch) of ``fsgan_fast::<op>``;
    ``op`` is a name or an op overload packet. Raises ``OpCheckError`` naming the failing check."""
    packet = getattr(torch.ops.fsgan_fast, op) if isinstance(op, str) else op
    torch.library.opcheck(packet, args, kwargs)


def _tensors(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _forward_backward(fn: Callable, args: Sequence, seed: int = 0) -> tuple[tuple, tuple]:
    """(outputs, gradients of a fixed random weighting of the floating outputs w.r.t. the args requiring grad)."""
    leaves = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]
    outs = _tensors(fn(*leaves))
    gen = generator(seed)
    loss = sum((o * randn(o.shape, gen, o.dtype, o.device)).sum() for o in outs if o.requires_grad)
    wrt = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(loss, wrt) if wrt and isinstance(loss, torch.Tensor) else ()
    return tuple(o.detach() for o in outs), grads


def assert_compiles(fn: Callable, *args: Any, atol: float = 1e-6) -> None:
    """``torch.compile(fn, fullgraph=True)`` (aot_eager) traces the op, its fake and its autograd formula into one
    graph, and gives eager's outputs and gradients (for the args that require grad)."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    (outs, grads), (want_outs, want_grads) = _forward_backward(compiled, args), _forward_backward(fn, args)
    for i, (got, want) in enumerate(zip(outs + grads, want_outs + want_grads)):
        what = f"compiled {'output' if i < len(outs) else 'grad'} {i}"
        assert_close(got, want, atol if got.is_floating_point() else 0, what)


def assert_exports(fn: Callable, args: tuple, expected: Any, atol: float = 1e-6) -> None:
    """``torch.export.export`` of ``fn`` as a module gives ``expected`` when run."""

    class Wrapped(torch.nn.Module):
        def forward(self, *a):
            return fn(*a)

    program = torch.export.export(Wrapped(), tuple(args))
    got, want = _tensors(program.module()(*args)), _tensors(expected)
    assert len(got) == len(want), f"exported program returns {len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, atol if g.is_floating_point() else 0, f"exported output {i}")


# ---------------------------------------------------------------------------------------------------
# Bad input


class BadInput(NamedTuple):
    """One bad-input case: ``mutate(*valid_args) -> bad_args`` must raise ``exc`` matching ``match``, a regex that
    names the offending argument. ``devices``: only run on these device types (e.g. a device mismatch)."""

    id: str
    mutate: Callable[..., tuple]
    exc: type[BaseException]
    match: str
    devices: tuple[str, ...] | None = None


def bad_inputs(*cases: tuple) -> list:
    """``pytest.param`` per :class:`BadInput` (built from plain tuples), with its id."""
    made = [c if isinstance(c, BadInput) else BadInput(*c) for c in cases]
    ids = [c.id for c in made]
    assert len(set(ids)) == len(ids), f"duplicate bad-input ids: {ids}"
    return [pytest.param(c, id=c.id) for c in made]


class _Dispatches(TorchDispatchMode):
    """Records every ``fsgan_fast`` op dispatched inside the block (the custom ops, and through them every kernel)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith("fsgan_fast."):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _argument_names(fn: Callable) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def expect_bad_input(backend: Backend, fn: Callable, valid_args: Sequence, case: BadInput, **kwargs) -> None:
    """Run ``fn(*case.mutate(*valid_args), backend=..., **kwargs)`` and check that it raises ``case.exc`` whose
    message matches ``case.match`` (which must name one of ``fn``'s arguments), before any ``fsgan_fast`` op is
    dispatched, i.e. before any kernel is launched."""
    if case.devices is not None and backend.device.type not in case.devices:
        pytest.skip(f"case {case.id!r} only applies on {'/'.join(case.devices)} tensors")
    names = _argument_names(fn)
    named = [n for n in names if re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", case.match)]
    assert named, f"bad-input case {case.id!r}: its regex {case.match!r} must name one of {names}"
    args = case.mutate(*valid_args)
    with _Dispatches() as seen, pytest.raises(case.exc, match=case.match):
        backend.run(fn, *args, **kwargs)
    assert not seen.ops, f"{case.id}: the error came after launching {seen.ops}"


# ---------------------------------------------------------------------------------------------------
# Registries for the build tests, filled by the op test modules


class NativeCase(NamedTuple):
    """A call of a private C++ op (``torch.ops.fsgan_fast.<op>``) on CPU inputs, and the reference's outputs."""

    op: str
    inputs: tuple
    expected: tuple
    atol: float = 1e-12


class AotVariant(NamedTuple):
    """One Triton kernel specialisation a launcher would pick: what ``triton.compile`` needs."""

    op: str  # the registered op it serves
    kernel: Any  # the @triton.jit function
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int


@dataclasses.dataclass(frozen=True)
class AotProvider:
    family: str
    shapes: tuple
    variants: Callable[[tuple, torch.dtype], Iterable[AotVariant]]


NATIVE_CASES: dict[str, Callable[[], list[NativeCase]]] = {}
AOT_PROVIDERS: dict[str, AotProvider] = {}


def native_cases(family: str):
    """Decorator: ``fn() -> [NativeCase, ...]`` covering every private CPU op of the family (CMake build test)."""

    def register(fn):
        NATIVE_CASES[family] = fn
        return fn

    return register


def aot_variants(family: str, shapes: Sequence[tuple]):
    """Decorator: ``fn(shape, dtype) -> iterable of AotVariant`` for each of ``shapes`` (Triton compile test); the
    variants must cover every registered op of the family with a Triton backend."""

    def register(fn):
        AOT_PROVIDERS[family] = AotProvider(family, tuple(tuple(s) for s in shapes), fn)
        return fn

    return register


def all_aot_variants(providers: Iterable[AotProvider] | None = None,
                     ) -> Iterator[tuple[str, tuple, torch.dtype, AotVariant]]:
    """(family, shape, dtype, variant) of every provider, shape and Triton dtype its op supports."""
    for provider in providers if providers is not None else AOT_PROVIDERS.values():
        for shape in provider.shapes:
            for dtype in TRITON_TYPES:
                for v in provider.variants(shape, dtype):
                    if dtype in op_spec(v.op).triton_dtypes:
                        yield provider.family, shape, dtype, v


def load_op_tests() -> None:
    """Import every ``tests/ops/test_*.py`` so that their registrations run."""
    here = Path(__file__).resolve().parent
    for path in sorted(here.glob("test_*.py")):
        importlib.import_module(f"{__package__}.{path.stem}")
