"""torch.export + AOTInductor: a compiled generator in one ``.pt2`` file, loadable without the model code.

Two lowerings of the hot-path ops (see :func:`fsgan_fast.backends.lowering`):

- ``"reference"`` (default): standard aten ops that Inductor compiles and fuses itself. The package needs
  only torch to load (``torch._inductor.aoti_load_package``), from Python or C++.
- ``"native"``: calls to our private C++ kernels (``fsgan_fast::_lfm_fuse_cpu`` / ``_cuda``). Faster on
  the GPU; the runtime must have the ops registered: ``import fsgan_fast.ops`` in Python, or load
  ``libfsgan_fast_ops`` (CMakeLists.txt) with ``torch.ops.load_library`` before loading the package in C++.

A package is compiled for the device (and CPU ISA) of the model it was made from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from fsgan_fast import backends
from fsgan_fast.export.graphs import GeneratorGraph, check_batch_range

LOWERING_KEY = "fsgan_fast.lowering"
DTYPE_KEY = "fsgan_fast.dtype"


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
    meta["fsgan_fast.batch_range"] = ":".join(map(str, check_batch_range(batch)))
    meta["fsgan_fast.input_names"] = json.dumps(list(graph.input_names))
    meta["fsgan_fast.torch"] = torch.__version__
    meta[DTYPE_KEY] = str(next(graph.module.parameters()).dtype).removeprefix("torch.")
    out = torch._inductor.aoti_compile_and_package(
        program, package_path=str(path), inductor_configs={"aot_inductor.metadata": meta}
    )
    return Path(out)


class AOTIGenerator:
    """A loaded AOTInductor package: ``gen(*inputs) -> images``. Inputs are made contiguous (the compiled
    code assumes the traced strides), moved to the package's device, floats cast to its dtype."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no AOTInductor package at {path}")
        self.path = Path(path)
        self.runner = torch._inductor.aoti_load_package(str(path))
        self.metadata = {k: v for k, v in self.runner.get_metadata().items()}
        if self.metadata.get(LOWERING_KEY) == "native":
            import fsgan_fast.ops  # noqa: F401  registers the private kernel ops the package calls
        key = self.metadata.get("AOTI_DEVICE_KEY", "cpu")
        self.device = torch.device(device if device is not None else ("cuda" if key.startswith("cuda") else "cpu"))
        # the compiled code reads raw memory: feed floats in the traced dtype or it computes garbage
        self.dtype = getattr(torch, self.metadata.get(DTYPE_KEY, "float32"))
        names = self.metadata.get("fsgan_fast.input_names")
        self.input_names = tuple(json.loads(names)) if names else ()

    def __call__(self, *inputs: Tensor) -> Tensor:
        if self.input_names and len(inputs) != len(self.input_names):
            raise ValueError(f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        out = self.runner(
            *(t.to(self.device, self.dtype if t.is_floating_point() else t.dtype).contiguous() for t in inputs)
        )
        return out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out


__all__ = ["export_program", "package_aoti", "AOTIGenerator"]
