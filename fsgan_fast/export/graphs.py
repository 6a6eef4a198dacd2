"""Inference graphs of the generators: tensors in, images out, randomness as inputs.

A :class:`GeneratorGraph` is what every deployment path (ONNX, TensorRT, torch.export/AOTInductor)
traces: an eval-mode copy of a generator wrapped so that its inputs are plain tensors with a batch axis 0,
plus a sampler that draws those inputs the way the Python model would. Each model's registry spec builds
its graph (:func:`generator_graph` dispatches to it); the ops inside lower to standard ops under :func:`fsgan_fast.backends.lowering`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import math
from typing import Callable, Iterator

import torch
from torch import Tensor, nn


# metadata keys the runners read back (all values are strings)
BATCH_RANGE_KEY = "fsgan_fast.batch_range"  # "min:opt:max", added by each exporter
BATCH_INPUTS_KEY = "fsgan_fast.batch_inputs"  # JSON list of the inputs with a batch axis 0
INDEX_BOUNDS_KEY = "fsgan_fast.index_bounds"  # JSON {input: exclusive upper bound} of integer index inputs

Sampler = Callable[[int, "torch.Generator | None", torch.device], tuple[Tensor, ...]]


@dataclasses.dataclass(frozen=True)
class GeneratorGraph:
    """One exportable generator.

    ``module(*inputs)`` returns ``images [B, 3, S, S]`` in [-1, 1]. ``input_names`` name the inputs in
    order; ``batch_inputs`` are those whose axis 0 is the batch (dynamic in every export); the others have
    fixed shapes. ``sample(B, generator, device)`` draws inputs for a batch of B (the conditioning
    inputs, e.g. a few-shot model's images, are random there: replace them with real ones; floats come in
    float32, :meth:`example_inputs` casts them to the module's dtype). ``metadata`` (str -> str) is stored in every exported artifact.
    """

    model: str
    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    batch_inputs: tuple[str, ...]
    sample: Sampler
    metadata: dict[str, str]

    def example_inputs(
        self, batch: int = 2, device: torch.device | str = "cpu", seed: int = 0
    ) -> tuple[Tensor, ...]:
        """Inputs for a batch of ``batch`` drawn from a seeded generator on the CPU, moved to ``device``."""
        g = torch.Generator().manual_seed(seed)
        dtype = next(self.module.parameters()).dtype
        return tuple(
            t.to(device, dtype if t.is_floating_point() else t.dtype) for t in self.sample(batch, g, torch.device("cpu"))
        )

    def run(self, *inputs: Tensor) -> Tensor:
        """The eager module on ``inputs``, floats cast to its dtype and everything moved to its device."""
        p = next(self.module.parameters())
        with torch.no_grad():
            return self.module(*(t.to(p.device, p.dtype if t.is_floating_point() else t.dtype) for t in inputs))

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> GeneratorGraph:
        """A copy of the graph with its module in ``dtype`` on ``device`` (the original is untouched)."""
        module = copy.deepcopy(self.module).to(device=device, dtype=dtype)
        return dataclasses.replace(self, module=module)

    @torch.no_grad()
    def compare(
        self, runner: Callable[..., Tensor], batch_sizes: tuple[int, ...] = (1, 3), *, seed: int = 0
    ) -> dict[str, float]:
        """Run ``runner`` (an exported artifact) and the eager module on the same random inputs per batch size.

        Inputs live on the module's device. Returns ``max_abs_err``, ``max_rel_err`` (max |runner - eager|
        / max |eager|) and ``mean_abs_err``, worst over the batch sizes; raises ``AssertionError`` if an
        output shape differs. NaN or inf in either output counts as an infinite error. Runs under
        :func:`ieee_fp32`, so TF32 does not count as export error.
        """
        device = next(self.module.parameters()).device
        worst = {"max_abs_err": 0.0, "max_rel_err": 0.0, "mean_abs_err": 0.0}
        with ieee_fp32():
            for i, B in enumerate(batch_sizes):
                inputs = self.example_inputs(B, device, seed + i)
                expected = self.module(*inputs).float()
                got = runner(*inputs).float().to(expected.device)
                if got.shape != expected.shape:
                    raise AssertionError(f"the export returned {list(got.shape)}, eager {list(expected.shape)} (batch {B})")
                if not expected.numel():
                    continue
                diff = (got - expected).abs()
                scale = expected.abs().max().item()
                errs = {"max_abs_err": diff.max().item(), "mean_abs_err": diff.mean().item()}
                errs["max_rel_err"] = errs["max_abs_err"] / max(scale, 1e-12) if math.isfinite(scale) else math.inf
                for key, value in errs.items():  # NaN would vanish in max(): count it as infinite
                    worst[key] = max(worst[key], value if math.isfinite(value) else math.inf)
        return worst

    def dynamic_shapes(self, batch: tuple[int, int, int]) -> dict[str, object]:
        """``torch.export`` dynamic shapes: one shared batch Dim within ``[batch[0], batch[2]]``.

        Keyed by the module's ``forward`` arguments, which torch.export requires: inputs taken as ``*args`` (a
        variable number of noise maps, say) share one key, holding a tuple of their specs.
        """
        lo, _, hi = check_batch_range(batch)
        dim = torch.export.Dim("batch", min=lo, max=hi)
        specs = [({0: dim} if name in self.batch_inputs else None) for name in self.input_names]
        out: dict[str, object] = {}
        for i, param in enumerate(inspect.signature(self.module.forward).parameters.values()):
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                if specs[i:]:
                    out[param.name] = tuple(specs[i:])
                break
            if i < len(specs):
                out[param.name] = specs[i]
        return out


def bake_parametrizations(module: nn.Module) -> nn.Module:
    """``module`` with every parametrized tensor (spectral norm, weight norm) replaced, in place, by a frozen
    parameter holding its current value, so exported graphs hold constant weights (TensorRT needs Conv weights to
    be constants, and the eval-mode value is what inference computes anyway). Call it on a copy.

    Each module gets back its own class rather than going through ``remove_parametrizations``, which edits the
    parametrized class, shared with the module it was deep-copied from.
    """
    from torch.nn.utils import parametrize

    for m in module.modules():
        if not parametrize.is_parametrized(m):
            continue
        with torch.no_grad():
            values = {name: getattr(m, name).detach().clone() for name in m.parametrizations.keys()}
        m.__class__ = type(m).__bases__[0]  # parametrize subclasses the original class once per module
        del m._modules["parametrizations"]
        for name, value in values.items():
            m.register_parameter(name, nn.Parameter(value, requires_grad=False))
    return module


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """fp32 convolutions and matmuls in IEEE fp32 inside the block (cuDNN defaults to TF32 on Ampere+)."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def check_inputs(metadata: dict[str, str], names: tuple[str, ...], inputs: tuple[Tensor, ...]) -> None:
    """Clear errors, before a compiled graph sees them, for inputs its kernels would read out of bounds.

    Uses the ``fsgan_fast.batch_range`` and ``fsgan_fast.index_bounds`` metadata of an export; reading the
    index values costs one host sync on a GPU.
    """
    if len(inputs) != len(names):
        raise ValueError(f"expected {len(names)} inputs {names}, got {len(inputs)}")
    bounds = json.loads(metadata.get(INDEX_BOUNDS_KEY, "{}"))
    batch_inputs = json.loads(metadata.get(BATCH_INPUTS_KEY, "[]"))
    lo, _, hi = (int(v) for v in metadata.get(BATCH_RANGE_KEY, "1:1:0").split(":"))
    for name, t in zip(names, inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"input {name!r} must be a torch.Tensor, got {type(t).__name__}")
        if name in batch_inputs and hi >= lo and not lo <= t.shape[0] <= hi:
            raise ValueError(f"input {name!r} has batch {t.shape[0]}, outside the export's range [{lo}, {hi}]")
        if name in bounds:
            if t.is_floating_point() or t.dtype == torch.bool:
                raise TypeError(f"input {name!r} must be an integer tensor, got {t.dtype}")
            if t.numel() and not bool(((t >= 0) & (t < bounds[name])).all()):
                raise ValueError(f"input {name!r} must lie in [0, {bounds[name]}), got values in "
                                 f"[{int(t.min())}, {int(t.max())}]")


def check_batch_range(batch: tuple[int, int, int] | list[int]) -> tuple[int, int, int]:
    """Validate a ``(min, opt, max)`` batch range."""
    if len(batch) != 3 or not all(isinstance(b, int) and not isinstance(b, bool) for b in batch):
        raise ValueError(f"batch must be three ints (min, opt, max), got {batch!r}")
    lo, opt, hi = batch
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"batch must satisfy 1 <= min <= opt <= max, got min={lo} opt={opt} max={hi}")
    return lo, opt, hi


def parse_batch_range(text: str) -> tuple[int, int, int]:
    """``"a:b:c"`` (min:opt:max), ``"a:c"`` (opt = c) or ``"n"`` (fixed) -> ``(min, opt, max)``."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise ValueError(f"batch range must be ints 'min:opt:max', got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 3
    elif len(parts) == 2:
        parts = [parts[0], parts[1], parts[1]]
    elif len(parts) != 3:
        raise ValueError(f"batch range must be 'min:opt:max', 'min:max' or 'n', got {text!r}")
    return check_batch_range(tuple(parts))


def generator_graph(model: nn.Module, **options) -> GeneratorGraph:
    """The :class:`GeneratorGraph` of a model, built by its registry spec's ``graph`` (see ``fsgan_fast.models``).

    ``options`` are the model's export options (the fields of its spec's ``export_options``). The model is
    copied (eval mode, no grad); its dtype and device are kept.
    """
    from fsgan_fast.models import registry

    spec = registry.spec_for(model)
    if spec.graph is None:
        raise TypeError(f"model {spec.name!r} has no export graph")
    graph = spec.get("graph")(model, **options)
    from torch.nn.utils import parametrize

    if any(parametrize.is_parametrized(m) for m in graph.module.modules()):
        graph = dataclasses.replace(graph, module=bake_parametrizations(copy.deepcopy(graph.module).eval()))
    return graph


__all__ = [
    "GeneratorGraph",
    "generator_graph",
    "bake_parametrizations",
    "check_batch_range",
    "parse_batch_range",
    "check_inputs",
    "ieee_fp32",
    "BATCH_INPUTS_KEY",
    "BATCH_RANGE_KEY",
    "INDEX_BOUNDS_KEY",
]
