"""What every hot-path op module shares, so that ``ops/<op>.py`` holds only what is its own.

- Argument checks whose messages name the argument (:func:`check_float`, :func:`check_shape`, ...).
- Registration: :func:`define_ops` registers an op family with :mod:`fsgan_fast.backends` and defines its
  private kernel ops: the C++ ``_<op>_cpu`` / ``_<op>_cuda`` (schemas here, implementations in ``fsgan_fast._C``)
  and the Triton ``_<op>_triton`` (``torch.library.triton_op`` over a launcher of ``kernels/<module>.py``);
  :func:`native_schemas` lists the C++ ones for the CMake build.
- Dispatch: :func:`kernel_op` (the private op of a backend), :func:`prep` and :func:`opmath` (what kernels read),
  :class:`EagerOp` (a public custom op called without the dispatcher's Python overhead in plain eager mode).
- Export: :func:`lowering`, the branch a public function takes inside :func:`fsgan_fast.backends.lowering`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
from typing import Callable, Sequence

import torch
from torch import Tensor

from fsgan_fast import backends

log = logging.getLogger("fsgan_fast")

NATIVE_DEVICES = ("cpu", "cuda")
_lib = torch.library.Library("fsgan_fast", "FRAGMENT")
_native: dict[str, str] = {}  # private C++ op name -> schema, for every op defined so far
_launchers: dict[str, Callable] = {}  # op -> its Triton launcher (the body of _<op>_triton)

try:  # torch >= 2.7: launchers' wrap_triton(...) calls go straight to the kernel inside this context
    from torch._library.triton import set_wrap_triton_enabled as _set_wrap_triton_enabled
except ImportError:  # pragma: no cover - older torch
    _set_wrap_triton_enabled = None


# ---------------------------------------------------------------------------------------------------
# Argument checks: TypeError for the wrong kind of argument, ValueError for a wrong shape, device or value


def check_tensor(name: str, t: object) -> None:
    """``t`` is a tensor."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_float(name: str, t: object) -> None:
    """``t`` is a floating-point tensor."""
    check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")


def check_int(name: str, t: object) -> None:
    """``t`` is an integer tensor (not bool)."""
    check_tensor(name, t)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")


def check_rank(name: str, t: Tensor, dims: Sequence[str]) -> None:
    """``t`` has one dimension per name of ``dims``, e.g. ``("B", "C", "H", "W")``."""
    if t.dim() != len(dims):
        raise ValueError(f"{name} must be {len(dims)}-D [{', '.join(dims)}], got {t.dim()}-D shape {list(t.shape)}")


def check_shape(name: str, t: Tensor, expected: tuple[int, ...], what: str) -> None:
    """``t.shape == expected``; ``what`` says what the shape means."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {list(expected)} ({what}), got {list(t.shape)}")


def check_device(ref_name: str, ref: Tensor, **others: Tensor) -> None:
    """Every tensor of ``others`` (by name) is on ``ref``'s device."""
    for name, t in others.items():
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}: all inputs must share a device")


# Value checks read the tensor (a host sync on a GPU): callers offer a way to skip them, and they are skipped while
# compiling, where values are not known.


def check_index_range(name: str, t: Tensor, high: int, bound: str) -> None:
    """Every value of ``t`` lies in ``[0, high)``; ``bound`` names ``high`` in the message (e.g. ``"K"``)."""
    if torch.compiler.is_compiling() or t.numel() == 0:
        return
    bad = (t < 0) | (t >= high)
    if bool(bad.any()):
        raise ValueError(f"{name} must lie in [0, {bound}={high}), got {t[bad][0].item()}")


def check_distinct_rows(name: str, t: Tensor) -> None:
    """No row of the 2-D ``t`` repeats a value."""
    if torch.compiler.is_compiling() or t.numel() == 0:
        return
    srt = t.sort(dim=1).values
    dup = srt[:, 1:] == srt[:, :-1]
    if bool(dup.any()):
        row = int(dup.any(dim=1).nonzero()[0].item())
        value = srt[row, 1:][dup[row]][0].item()
        raise ValueError(f"{name} must be distinct within each row; row {row} repeats {value}")


# ---------------------------------------------------------------------------------------------------
# Registration


def define_ops(
    module: str,
    schemas: dict[str, str],
    fakes: dict[str, Callable],
    triton: dict[str, str] | None = None,
) -> None:
    """Register the ops of ``fsgan_fast/ops/<module>.py`` and define their private kernel ops, in one call.

    ``fakes`` names the family's ops: ``op -> fake`` of the private ops' signature (the public op's arguments
    without ``backend``). ``schemas``: ``{'_<op>_{dev}': schema}`` of the C++ ops ``_<op>_cpu`` / ``_<op>_cuda``;
    an op without one has no ``cpu`` / ``cuda`` backend. ``triton``: ``op -> launcher`` (a function name in
    ``fsgan_fast.kernels.<module>``, taking the schema's arguments), which becomes ``_<op>_triton`` with the C++
    ops' schema. Each op is registered with :mod:`fsgan_fast.backends` with the backends it has.
    """
    triton = triton or {}
    unused, triton_ops = set(schemas), []
    for op, fake in fakes.items():
        spec = backends.OpSpec(name=op, backends=(), native=f"_{op}", module=module)
        schema = schemas.get(spec.private_op("{dev}"))
        unused.discard(spec.private_op("{dev}"))
        if op in triton and schema is None:
            raise ValueError(f"{module}: {spec.private_op('triton')} takes the schema of {spec.private_op('{dev}')!r}, "
                             "which is missing")
        names = ("reference",) + (("triton",) if op in triton else ()) + (("cuda", "cpu") if schema else ())
        spec = backends.register_op(dataclasses.replace(spec, backends=names))
        if schema is not None:
            _define_native(spec, schema, fake)
        if op in triton:
            triton_ops.append((spec, schema, triton[op], fake))
    if unused:
        raise ValueError(f"{module}: schemas {sorted(unused)} belong to none of the ops {list(fakes)}")
    _define_triton(module, triton_ops)


def _define_native(spec: backends.OpSpec, schema: str, fake: Callable) -> None:
    for dev in NATIVE_DEVICES:
        name = spec.private_op(dev)
        _lib.define(name + schema)
        torch.library.register_fake(f"fsgan_fast::{name}", fake, lib=_lib)
        _native[name] = schema


def _define_triton(module: str, ops: list[tuple]) -> None:
    if not ops or not backends.triton_installed():
        return  # backends reports the triton backend as not installed
    try:
        kernels = importlib.import_module(f"fsgan_fast.kernels.{module}")
    except ImportError as exc:  # triton too old or broken: the other backends still work
        reason = f"fsgan_fast.kernels.{module} did not import: {type(exc).__name__}: {exc}"
        log.warning("fsgan_fast: %s", reason)
        for spec, *_ in ops:
            backends.mark_broken(spec.name, "triton", reason)
        return
    interpreted = backends.triton_interpreted()
    for spec, schema, launcher, fake in ops:
        name, fn = f"fsgan_fast::{spec.private_op('triton')}", getattr(kernels, launcher)
        _launchers[spec.name] = fn
        # torch 2.11's triton_op ignores `schema=` and infers it from the launcher's annotations: they must agree
        inferred = torch.library.infer_schema(fn, mutates_args=())
        if inferred != schema:
            raise TypeError(f"fsgan_fast.kernels.{module}.{launcher}{inferred} does not match the schema {schema}")
        if interpreted:
            # the interpreter's kernels cannot be traced (wrap_triton takes JITFunctions): an opaque op that
            # launches eagerly, with the C++ ops' fake
            torch.library.custom_op(name, fn, mutates_args=()).register_fake(fake)
        else:
            # the launcher is the body, and its own fake: tracing records the kernel launch itself
            torch.library.triton_op(name, fn, mutates_args=())


def native_schemas() -> dict[str, str]:
    """``{private C++ op name: schema}`` of every op defined so far, e.g. ``{'_lfm_fuse_cpu': '(Tensor feats, ...)'}``:
    what ``csrc/ops.cpp`` must define for the CMake build."""
    return dict(_native)


# ---------------------------------------------------------------------------------------------------
# Dispatch


def _impl(kind: str, device: torch.device) -> str:
    # backend or lowering -> the private op's suffix, which is also the backend that runs it
    return "triton" if kind == "triton" else ("cuda" if device.type == "cuda" else "cpu")


def kernel_op(op: str, kind: str, device: torch.device):
    """The private kernel op (``torch.ops.fsgan_fast._<op>_<impl>.default``) that runs ``op`` for backend or lowering
    ``kind``: ``triton`` -> ``_<op>_triton``; ``cpu``, ``cuda`` or ``native`` -> the C++ op of ``device``."""
    # the overload itself: a packet resolves it at every call (~8 us)
    return _kernel_op(op, _impl(kind, device))


@functools.cache
def _kernel_op(op: str, impl: str):
    return getattr(torch.ops.fsgan_fast, backends.op_spec(op).private_op(impl)).default


def kernel(op: str, backend: str, device: torch.device) -> Callable:
    """What a public custom op's body calls for ``backend``: the C++ op, or for ``triton`` the launcher itself.

    Inside the (opaque) public op a second dispatch through ``_<op>_triton`` buys nothing and costs tens of
    microseconds per call; traced graphs (the lowerings) use :func:`kernel_op` instead, which keeps the op.
    """
    if backend == "triton" and op in _launchers:
        return _direct_launcher(_launchers[op])
    return kernel_op(op, backend, device)


def _direct_launcher(fn: Callable) -> Callable:
    """``fn`` with its ``wrap_triton(kernel)[grid](...)`` launches going straight to Triton, as the body of a
    ``triton_op`` runs: outside tracing, wrap_triton would dispatch every launch through a higher-order op
    (first H200 run: 0.4-1.4 ms per call of a three-launch op, against 0.1 ms for the same CUDA kernels)."""
    if _set_wrap_triton_enabled is None or backends.triton_interpreted():
        return fn

    def launch(*args):
        if torch.compiler.is_compiling():
            return fn(*args)
        with _set_wrap_triton_enabled(False):
            return fn(*args)

    return launch


class EagerOp:
    """Calls a public custom op (``torch.library.custom_op``) the cheap way in plain eager mode.

    The custom op is what torch.compile, torch.export, fake tensors and functorch see; its dispatch costs tens
    of microseconds of Python per call (~100 us on the first H200 host for lfm_fuse's two ops), more than the
    kernels at LoFGAN's and SinGAN's sizes. In plain eager mode (no tracing, no dispatch mode or functorch
    transform active, plain tensors) this calls the op's body directly, through an ``autograd.Function`` with the
    same ``setup_context`` / ``backward`` when a gradient is needed; anywhere else it calls the custom op.
    """

    def __init__(self, op, body: Callable, setup_context: Callable | None = None, backward: Callable | None = None):
        self.op, self.body = op, body
        self.function = None
        if backward is not None:
            # the combined forward(ctx, ...) form: a Function with a separate setup_context binds its arguments
            # with inspect.signature on every call (~35 us of Python on a CPU host, more than small kernels take)
            def forward(ctx, *args):
                output = body(*args)
                setup_context(ctx, args, output)
                return output

            self.function = type(f"{body.__name__}_function", (torch.autograd.Function,), {
                "forward": staticmethod(forward),
                "backward": staticmethod(backward),
            })
            op.register_autograd(backward, setup_context=setup_context)

    def __call__(self, *args):
        if not _plain_eager(args):
            return self.op(*args)
        if self.function is not None and torch.is_grad_enabled() and any(
            isinstance(a, Tensor) and a.requires_grad for a in args
        ):
            return self.function.apply(*args)
        return self.body(*args)  # no input needs a gradient: neither would the op's outputs


def _plain_eager(args) -> bool:
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    for a in args:
        if isinstance(a, Tensor) and (type(a) is not Tensor and type(a) is not torch.nn.Parameter or a.is_meta):
            return False
    return True


def opmath(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of ``dtype`` inputs: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def prep(x: Tensor, *indices: Tensor, weights: Tensor | None = None) -> tuple[Tensor, ...]:
    """``(x, *indices[, weights])`` as the kernels read them: contiguous, indices int64, weights in ``x``'s opmath."""
    out = (x.contiguous(), *(i.long().contiguous() for i in indices))
    return out if weights is None else (*out, weights.to(opmath(x.dtype)).contiguous())


# ---------------------------------------------------------------------------------------------------
# Export


def lowering(op: str, x: Tensor) -> str | None:
    """The export lowering in force (:func:`fsgan_fast.backends.lowering`), or ``None``; under ``native`` or ``triton``,
    first checks that ``op``'s private kernel op can run on ``x``, raising BackendUnavailableError with what is missing.

    A public function returns its reference under ``reference`` and calls ``kernel_op(op, mode, device)`` under the
    others, so that traced graphs hold standard ops or the private ops, never the Python-bodied public op.
    """
    mode = backends.active_lowering()
    if mode in ("native", "triton"):
        reason = backends.why_unavailable(op, _impl(mode, x.device), x.device, x.dtype)
        if reason is not None:
            raise backends.BackendUnavailableError(f"{mode} lowering of {op!r} on {x.device.type}: {reason}")
    return mode


__all__ = [
    "check_tensor",
    "check_float",
    "check_int",
    "check_rank",
    "check_shape",
    "check_device",
    "check_index_range",
    "check_distinct_rows",
    "define_ops",
    "native_schemas",
    "kernel_op",
    "kernel",
    "EagerOp",
    "opmath",
    "prep",
    "lowering",
]
