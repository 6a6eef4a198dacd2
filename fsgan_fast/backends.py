"""Which implementation of each hot-path op runs, and why.

Backends: ``reference`` (plain PyTorch, always there), ``triton`` (``kernels/``), ``cuda`` and ``cpu``
(the compiled extension ``fsgan_fast._C``). ``auto`` takes the fastest available for the op and the
tensors' device: ``cuda > triton > reference`` on a GPU, ``cpu > reference`` on the CPU.

The choice comes from, strongest first: the per-call ``backend=`` argument, :func:`use_backend`, then
:func:`set_backend`, then the ``FSGAN_FAST_BACKEND`` variable. An explicit backend that cannot run
raises :class:`BackendUnavailableError` naming what is missing; ``auto`` degrades, warns once, and
records the reason in :func:`info`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import threading
import warnings
from typing import Iterator

import torch

from fsgan_fast import _ext

log = logging.getLogger("fsgan_fast")

BACKENDS = ("reference", "triton", "cuda", "cpu")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this op on these tensors."""


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """What a hot-path op implements: its backends, its private kernel ops, and where it lives."""

    name: str
    backends: tuple[str, ...]
    native: str  # private op stem: torch.ops.fsgan_fast.<native>_cpu / _cuda / _triton
    triton_dtypes: tuple[torch.dtype, ...] = _TRITON_DTYPES
    module: str | None = None  # its stem: fsgan_fast/ops/<module>.py, kernels/<module>.py, csrc/<module>/

    def private_op(self, impl: str) -> str:
        """Name of the private kernel op (``torch.ops.fsgan_fast.<name>``) for ``impl``: cpu, cuda or triton."""
        return f"{self.native}_{impl}"


_OPS: dict[str, OpSpec] = {}
_state = threading.local()
_global_choice: str | None = None
_last: dict[str, str] = {}
_degraded: dict[tuple[str, str], str] = {}
_broken: dict[tuple[str, str], str] = {}


def register_op(spec: OpSpec) -> OpSpec:
    """Add (or replace) ``spec`` in the registry that selection, :func:`info` and the tests read."""
    _OPS[spec.name] = spec
    return spec


def registered_ops() -> tuple[str, ...]:
    return tuple(_OPS)


def op_spec(name: str) -> OpSpec:
    """The :class:`OpSpec` registered for ``name``."""
    try:
        return _OPS[name]
    except KeyError:
        raise KeyError(f"op {name!r} is not registered; registered: {', '.join(_OPS) or 'none'}") from None


def mark_broken(op: str, backend: str, reason: str) -> None:
    """Record that ``backend`` cannot run ``op`` in this process at all (e.g. its kernels failed to import)."""
    _broken[(op, backend)] = reason


def _validate_name(name: str) -> str:
    name = name.lower().strip()
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of 'auto', {', '.join(map(repr, BACKENDS))}")
    return name


def set_backend(name: str | None) -> None:
    """Select a backend for every op process-wide (``None`` or ``'auto'`` restores automatic choice)."""
    global _global_choice
    _global_choice = None if name is None else _validate_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Select a backend inside a ``with`` block (this thread only); nests and restores on exit."""
    name = _validate_name(name)
    stack = _state.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


LOWERINGS = ("reference", "native", "triton")


@contextlib.contextmanager
def lowering(mode: str = "reference") -> Iterator[None]:
    """Trace ops as standard ops for export (this thread only; nests and restores on exit).

    ``"reference"``: each public op calls its pure-PyTorch reference instead of the custom op, so a traced
    graph (ONNX, torch.export, AOTInductor) holds only aten/standard ops and needs nothing of fsgan_fast at
    run time. ``"native"``: each op calls its private C++ kernel op (``torch.ops.fsgan_fast._<op>_<device>``),
    which a runtime resolves from ``fsgan_fast._C`` or the CMake library ``libfsgan_fast_ops``. ``"triton"``:
    each op calls its private Triton op (``torch.ops.fsgan_fast._<op>_triton``, a ``torch.library.triton_op``),
    which torch.export keeps and AOTInductor / Inductor compile into the package or graph, kernel included.
    Inference only: none keeps the ops' autograd formulas. Inside the block the backend selection (``backend=``,
    :func:`use_backend`, ...) does not apply and :func:`last_backend` is not updated.
    """
    if mode not in LOWERINGS:
        raise ValueError(f"unknown lowering {mode!r}; expected one of {', '.join(map(repr, LOWERINGS))}")
    stack = _state.__dict__.setdefault("lowering", [])
    stack.append(mode)
    try:
        yield
    finally:
        stack.pop()


def active_lowering() -> str | None:
    """The innermost :func:`lowering` mode of this thread, or ``None`` outside one."""
    stack = getattr(_state, "lowering", None)
    return stack[-1] if stack else None


def requested_backend(per_call: str | None = None) -> str:
    """The backend asked for, strongest source first; ``'auto'`` when nobody asked."""
    if per_call is not None:
        return _validate_name(per_call)
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    if _global_choice is not None:
        return _global_choice
    env = os.environ.get("FSGAN_FAST_BACKEND")
    return _validate_name(env) if env else "auto"


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _version_tuple(version: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (version or "0").split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def triton_interpreter_problem() -> str | None:
    """Why Triton's CPU interpreter cannot run our kernels here, or ``None``.

    Before triton 3.7 the interpreter turns a loop bound passed as an argument into a 1-element array and
    calls ``int()`` on it, which numpy 2.4 refuses: every kernel with a runtime loop bound fails.
    """
    triton_version, numpy_version = _ext.module_version("triton"), _ext.module_version("numpy")
    if _version_tuple(triton_version) < (3, 7) and _version_tuple(numpy_version) >= (2, 4):
        return (f"triton {triton_version}'s CPU interpreter cannot run with numpy {numpy_version} (fixed in triton "
                "3.7): install numpy<2.4 or triton>=3.7 to run the Triton kernels on the CPU")
    return None


def why_unavailable(op: str, backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str | None:
    """``None`` if ``backend`` can run ``op`` on tensors of ``device``/``dtype``, else what is missing."""
    spec = _OPS[op]
    if backend not in spec.backends:
        return f"op {op!r} has no {backend!r} implementation"
    if backend == "reference":
        return None
    if backend == "triton":
        if not triton_installed():
            return "the 'triton' package is not installed (pip install triton)"
        if (op, backend) in _broken:
            return _broken[(op, backend)]
        if device.type == "cpu" and not triton_interpreted():
            return "Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 to run them on the CPU)"
        if triton_interpreted() and (problem := triton_interpreter_problem()) is not None:
            return problem  # the interpreter runs every launch, CUDA tensors included
        if device.type not in ("cuda", "cpu"):
            return f"Triton kernels do not run on {device.type!r} tensors"
        if dtype is not None and dtype not in spec.triton_dtypes:
            return f"the Triton kernel supports {', '.join(str(d) for d in spec.triton_dtypes)}, not {dtype}"
        return None
    # cuda / cpu: compiled extension
    if device.type != backend:
        return f"the {backend!r} backend needs {backend.upper()} tensors, got {device.type!r}"
    if _ext.C is None:
        return f"the compiled extension fsgan_fast._C is not loaded ({_ext.load_error})"
    if backend == "cpu":
        if not _ext.has_kernel(spec.private_op("cpu"), "CPU"):
            return f"fsgan_fast._C has no CPU kernel for {op!r}"
        return None
    if not _ext.built_with_cuda():
        return "fsgan_fast._C was built without CUDA kernels (no nvcc/CUDA_HOME at build time, or FSGAN_FAST_BUILD_CUDA=0)"
    if not _ext.has_kernel(spec.private_op("cuda"), "CUDA"):
        return f"fsgan_fast._C has no CUDA kernel for {op!r}"
    return None


def _auto_choice(op: str, device: torch.device, dtype: torch.dtype | None) -> tuple[str, list[tuple[str, str]]]:
    """The first available backend in auto order, and (backend, reason) for each one skipped before it."""
    skipped = []
    for candidate in _AUTO_ORDER.get(device.type, ("reference",)):
        reason = why_unavailable(op, candidate, device, dtype)
        if reason is None:
            return candidate, skipped
        skipped.append((candidate, reason))
    return "reference", skipped


def resolve(op: str, device: torch.device, dtype: torch.dtype | None = None, per_call: str | None = None) -> str:
    """Pick the concrete backend for one call of ``op``; records it for :func:`last_backend`."""
    return _resolve(op, device.type, dtype, per_call)


# Under torch.compile the choice is made once, at trace time, and baked into the graph as a constant:
# the dispatcher queries below are not traceable.
@torch.compiler.assume_constant_result
def _resolve(op: str, device_type: str, dtype: torch.dtype | None, per_call: str | None) -> str:
    device = torch.device(device_type)
    asked = requested_backend(per_call)
    if asked != "auto":
        reason = why_unavailable(op, asked, device, dtype)
        if reason is not None:
            raise BackendUnavailableError(f"backend {asked!r} cannot run {op!r} on {device.type}/{dtype}: {reason}")
        chosen = asked
    else:
        chosen, skipped = _auto_choice(op, device, dtype)
        for candidate, reason in skipped:
            key = (op, f"{candidate}@{device.type}")
            if key not in _degraded:
                _degraded[key] = reason
                # on the CPU, Triton is expected to be absent: only a GPU fallback deserves a warning
                if (candidate != "triton" or device.type == "cuda") and not torch.compiler.is_compiling():
                    warnings.warn(f"fsgan_fast: {op} skips backend {candidate!r}: {reason}", RuntimeWarning, stacklevel=3)
    _last[op] = chosen
    return chosen


def last_backend(op: str) -> str | None:
    """The backend the most recent call of ``op`` resolved to (``None`` before any call)."""
    return _last.get(op)


def forget_last_backend(op: str | None = None) -> None:
    """Clear what :func:`last_backend` reports for ``op`` (all ops when None), so a stale record cannot pass a check."""
    if op is None:
        _last.clear()
    else:
        _last.pop(op, None)


def info() -> dict:
    """Versions, devices, what built, and which backend each op takes on each device."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out: dict = {
        "fsgan_fast": _ext.package_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _ext.module_version("triton"),
        "triton_interpret": triton_interpreted(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
        "extension": {
            "loaded": _ext.C is not None,
            "cuda_kernels": _ext.built_with_cuda(),
            "error": _ext.load_error,
        },
        "requested": requested_backend(),
        "ops": {},
        "degraded": {f"{op} ({where})": why for (op, where), why in _degraded.items()},
    }
    for op, spec in _OPS.items():
        row = {}
        for dev in devices:
            device = torch.device(dev)
            per_backend = {b: why_unavailable(op, b, device) or "available" for b in spec.backends}
            asked = requested_backend()
            if asked == "auto":
                auto = _auto_choice(op, device, None)[0]
            else:
                auto = asked if why_unavailable(op, asked, device) is None else f"{asked} (unavailable)"
            row[dev] = {"auto": auto, "backends": per_backend}
        out["ops"][op] = row
    return out


def format_info(data: dict | None = None) -> str:
    data = info() if data is None else data
    lines = [
        f"fsgan_fast {data['fsgan_fast']}  torch {data['torch']} (CUDA {data['torch_cuda']})  triton {data['triton']}",
        f"GPUs: {', '.join(data['gpus']) or 'none'}   TRITON_INTERPRET: {int(data['triton_interpret'])}",
        "extension fsgan_fast._C: "
        + (
            f"loaded, CUDA kernels {'built' if data['extension']['cuda_kernels'] else 'not built'}"
            if data["extension"]["loaded"]
            else f"not loaded ({data['extension']['error']})"
        ),
        f"requested backend: {data['requested']}",
        "",
        f"{'op':<22}{'device':<8}{'uses':<12}backends",
    ]
    for op, row in data["ops"].items():
        for dev, cell in row.items():
            avail = ", ".join(b if why == "available" else f"{b} (no: {why})" for b, why in cell["backends"].items())
            lines.append(f"{op:<22}{dev:<8}{cell['auto']:<12}{avail}")
    return "\n".join(lines)
