"""torch.export + AOTInductor: a compiled generator in one ``.pt2`` file, loadable without the model code.

Three lowerings of the hot-path ops (see :func:`fsgan_fast.backends.lowering`):

- ``"reference"`` (default): standard aten ops that Inductor compiles and fuses itself. The package needs
  only torch to load (``torch._inductor.aoti_load_package``), from Python or C++.
- ``"native"``: calls to our private C++ kernels (e.g. ``fsgan_fast::_lfm_fuse_cpu`` / ``_cuda``), which
  Inductor cannot fuse but which beat its code for the matching on a GPU (to be measured). The runtime
  must register the ops before loading the package: ``import fsgan_fast.ops`` in Python (as
  :class:`AOTIGenerator` does), or ``torch.ops.load_library`` of ``libfsgan_fast_ops`` (CMakeLists.txt) in C++.
- ``"triton"``: our Triton kernels (``torch.library.triton_op``), which AOTInductor compiles into the package
  beside its own; CUDA devices only (under the CPU interpreter the kernels cannot be traced). Not yet run on a
  GPU.

A package is compiled for the device (and CPU ISA) of the model it was made from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from fsgan_fast import backends
from fsgan_fast.export.graphs import BATCH_RANGE_KEY, GeneratorGraph, check_batch_range, check_inputs

LOWERING_KEY = "fsgan_fast.lowering"
DTYPE_KEY = "fsgan_fast.dtype"
NATIVE_OPS_KEY = "fsgan_fast.native_ops"  # JSON list of the fsgan_fast ops the compiled graph calls


def graph_ops(program: torch.export.ExportedProgram) -> list[str]:
    """Names of the ``torch.ops.fsgan_fast`` ops a compiled program calls at run time (e.g. ``_lfm_fuse_cpu``).

    Triton ops (``_<op>_triton``, the ``triton`` lowering) are left out: AOTInductor compiles their kernels
    into the package.
    """
    names = set()
    for node in program.graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) and target.namespace == "fsgan_fast":
            name = target._schema.name.split("::", 1)[1]
            if not name.endswith("_triton"):
                names.add(name)
    return sorted(names)


def missing_kernels(ops: list[str], device: torch.device) -> list[str]:
    """Which of ``ops`` have no kernel registered here for ``device`` (their module was not loaded or built)."""
    key = "CUDA" if device.type == "cuda" else "CPU"
    missing = []
    for name in ops:
        qualified = f"fsgan_fast::{name}"
        if not torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key) and not \
                torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CompositeExplicitAutograd"):
            missing.append(name)
    return missing


def export_program(
    graph: GeneratorGraph, *, batch: tuple[int, int, int] = (1, 8, 64), lowering: str = "reference"
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``graph`` with a dynamic batch in ``[batch[0], batch[2]]``."""
    lo, opt, hi = check_batch_range(batch)
    device = next(graph.module.parameters()).device
    example = lo if lo == hi else min(max(opt, 2), hi)  # a dimension traced at 1 would be specialised
    inputs = graph.example_inputs(example, device)
    dynamic = graph.dynamic_shapes(batch) if lo != hi else None
    with backends.lowering(lowering):
        return torch.export.export(graph.module, inputs, dynamic_shapes=dynamic)


def package_aoti(
    graph: GeneratorGraph,
    path: str | os.PathLike,
    *,
    batch: tuple[int, int, int] = (1, 8, 64),
    lowering: str = "reference",
) -> Path:
    """Export ``graph`` and compile it with AOTInductor into the package ``path`` (``.pt2``)."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"an AOTInductor package must end in .pt2, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    program = export_program(graph, batch=batch, lowering=lowering)
    meta = dict(graph.metadata)
    meta[LOWERING_KEY] = lowering
    meta[NATIVE_OPS_KEY] = json.dumps(graph_ops(program))
    meta[BATCH_RANGE_KEY] = ":".join(map(str, check_batch_range(batch)))
    meta["fsgan_fast.input_names"] = json.dumps(list(graph.input_names))
    meta["fsgan_fast.torch"] = torch.__version__
    meta[DTYPE_KEY] = str(next(graph.module.parameters()).dtype).removeprefix("torch.")
    out = torch._inductor.aoti_compile_and_package(
        program, package_path=str(path), inductor_configs={"aot_inductor.metadata": meta}
    )
    return Path(out)


class AOTIGenerator:
    """A loaded AOTInductor package: ``gen(*inputs) -> images``.

    Inputs are moved to the package's device, floats cast to its dtype and integers to int64, and made
    contiguous: the compiled code reads raw memory with the traced dtypes and strides. With ``check``
    (default) the batch size and index values are validated first (:func:`check_inputs`; one host sync on
    a GPU), because compiled code meeting an out-of-range index aborts the process.
    A package made with the native lowering needs fsgan_fast's kernels: they must be available here.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None, *, check: bool = True):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no AOTInductor package at {path}")
        self.path = Path(path)
        self.check = check
        self.runner = torch._inductor.aoti_load_package(str(path))
        self.metadata = dict(self.runner.get_metadata())
        key = self.metadata.get("AOTI_DEVICE_KEY", "cpu")
        self.device = torch.device(device if device is not None else ("cuda" if key.startswith("cuda") else "cpu"))
        # the package may call fsgan_fast's kernels (native lowering): they must be registered and built here,
        # said now rather than at the first call
        ops = json.loads(self.metadata.get(NATIVE_OPS_KEY, "[]"))
        if ops:  # (importing fsgan_fast, as this module does, registered the ops and loaded fsgan_fast._C)
            missing = missing_kernels(ops, self.device)
            if missing:
                raise backends.BackendUnavailableError(
                    f"{path} calls fsgan_fast kernels that this installation lacks for {self.device.type}: "
                    f"{', '.join(missing)} (is fsgan_fast._C built with {self.device.type.upper()} kernels? see "
                    "'fsgan-fast info')")
        self.dtype = getattr(torch, self.metadata.get(DTYPE_KEY, "float32"))
        names = self.metadata.get("fsgan_fast.input_names")
        self.input_names = tuple(json.loads(names)) if names else ()

    def __call__(self, *inputs: Tensor) -> Tensor:
        if self.check and self.input_names:
            check_inputs(self.metadata, self.input_names, inputs)
        moved = (
            t.to(self.device, self.dtype if t.is_floating_point() else torch.int64).contiguous() for t in inputs
        )
        out = self.runner(*moved)
        return out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out


__all__ = ["export_program", "package_aoti", "AOTIGenerator", "graph_ops", "missing_kernels"]
