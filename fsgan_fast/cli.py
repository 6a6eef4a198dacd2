"""The ``fsgan-fast`` command: info | train | generate | app | translate | export | eval | bench.

Every model subcommand is built from the model registry (:mod:`fsgan_fast.models.registry`): its options
come from the model's config dataclasses (one default, one help text, written once in the model's
modules), so this file holds no model name. Precedence of a train option, weakest first: the config
dataclass default, ``--preset``, ``--config FILE`` (YAML or a run's ``config.json``), the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from fsgan_fast import configs
from fsgan_fast.configs import ConfigError, option


class CLIError(Exception):
    """A user-facing problem: printed as one line, exit status 2."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    pass


# ---------------------------------------------------------------------------------------------------
# Generic options (every model): config dataclasses like the models' own


@dataclasses.dataclass
class CheckpointRunOptions:
    """What every command that runs a trained checkpoint takes (generate, app, translate)."""

    ckpt: str = option(help="checkpoint written by 'fsgan-fast train' (RUN/checkpoint.pt)")
    out: str = option(help="output folder (created; must be writable)")
    seed: int = option(0, "seed of the command's randomness")
    device: str | None = option(None, "torch device (default: cuda if available, else cpu)")
    backend: Literal["auto", "reference", "triton", "cuda", "cpu"] | None = option(
        None, "implementation of the hot-path ops (default: auto)")

    def __post_init__(self) -> None:
        configs.validate(self)


@dataclasses.dataclass
class GenerateOptions(CheckpointRunOptions):
    """``fsgan-fast generate MODEL``: what every model's generation takes."""

    n: int = option(16, "number of images to generate", low=0)
    batch_size: int = option(64, "images generated at once", low=1)


@dataclasses.dataclass
class ExportOptions:
    """``fsgan-fast export MODEL``: formats, precision, batch range and verification, for every model."""

    ckpt: str = option(help="checkpoint written by 'fsgan-fast train' (RUN/checkpoint.pt)")
    format: Literal["onnx", "tensorrt", "aoti"] = option(
        help="onnx: standard-op ONNX file (checked against TensorRT's parser support list); tensorrt: a serialized "
             "engine (writes OUT minus its suffix + .onnx too; needs tensorrt and a GPU); aoti: a torch.export + "
             "AOTInductor package (.pt2) for the --device")
    out: str = option(help="output file (.onnx, .engine/.plan/.trt, or .pt2); replaced only once the new export "
                           "passes its parity check")
    batch: str = option("1:8:64", "dynamic batch range MIN:OPT:MAX (OPT is what TensorRT tunes for); a single "
                        "number fixes the batch", metavar="MIN:OPT:MAX")
    precision: Literal["fp32", "fp16", "bf16"] = option(
        "fp32", "export the generator in this precision (onnxruntime's CPU provider cannot run bf16: no parity run)")
    lowering: Literal["reference", "native", "triton"] = option(
        "reference", "aoti only: 'reference' compiles the ops from standard ops (loads with torch alone); 'native' "
                     "calls fsgan_fast's C++/CUDA kernels (needs fsgan_fast.ops or libfsgan_fast_ops); 'triton' "
                     "compiles our Triton kernels into the package (CUDA devices; loads with torch alone)")
    opset: int = option(18, "ONNX opset (TensorRT parses up to 20)", low=18, high=20)
    timing_cache: str | None = option(None, "tensorrt only: timing cache file, read if present and updated")
    device: str | None = option(None, "aoti/tensorrt: device to compile and verify on (default: cuda if available, "
                                "else cpu); onnx is traced and verified on the CPU")
    verify: bool = option(True, "run the export against PyTorch on random inputs before keeping it (--no-verify: "
                          "keep it unchecked)")

    def __post_init__(self) -> None:
        configs.validate(self)


EXPORT_SUFFIXES = {"onnx": (".onnx",), "tensorrt": (".plan", ".engine", ".trt"), "aoti": (".pt2",)}
FP32_PARITY = 1e-4  # max |export - eager| / max |eager| for fp32 exports
LOW_PRECISION_FACTOR = 4  # fp16/bf16 exports: mean error at most this times eager's in the same precision


# ---------------------------------------------------------------------------------------------------
# Helpers


def _registry():
    from fsgan_fast.models import registry

    return registry


def _options(args: argparse.Namespace, *classes: type) -> dict[str, Any]:
    """The values given on the command line for the fields of ``classes`` (unset ones left out)."""
    dests = {cf.dest for cls in classes if cls is not None for cf in configs.cli_fields(cls)}
    return {k: v for k, v in vars(args).items() if k in dests and v is not None}


def _build(cls: type, values: dict[str, Any], what: str) -> Any:
    required = [configs.flag_of(cf) for cf in configs.cli_fields(cls)
                if cf.default is configs.MISSING and values.get(cf.dest) is None]
    if required:
        raise CLIError(f"{what}: {', '.join(required)} {'is' if len(required) == 1 else 'are'} required")
    return configs.build(cls, values, where=what)


def _command_options(args: argparse.Namespace, spec, generic: type, model_field: str, command: str):
    """``(generic options, the model's own options or None)`` of a ``generate|export|eval MODEL`` command."""
    what = f"{command} {spec.name}"
    opts = _build(generic, _options(args, generic), what)
    cls = spec.get(model_field)
    return opts, (_build(cls, _options(args, cls), what) if cls is not None else None)


def _set_backend(name: str | None) -> None:
    if name is not None:
        import fsgan_fast

        fsgan_fast.set_backend(name)


def _device(name: str | None):
    import torch

    from fsgan_fast.train.base import resolve_device

    resolve_device(name)
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _writable_folder(path: Path, what: str) -> Path:
    """Create ``path`` and prove it writable now, not after minutes of work."""
    if path.exists() and not path.is_dir():
        raise CLIError(f"{what} {str(path)!r} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".fsgan-fast-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CLIError(f"cannot write to {what} {str(path)!r}: {e.strerror or e}") from None
    return path


def _load_model(spec, ckpt: str, device):
    from fsgan_fast.train.loop import load_checkpoint

    state = load_checkpoint(ckpt, spec.name)
    return _registry().model_from_state(state, source=repr(ckpt)).to(device).eval()


def _preset_help(spec) -> dict[str, str]:
    """``{dest: "presets: demo 64, paper 128"}`` for the help of options that presets set."""
    presets = spec.get("presets") or {}
    out: dict[str, list[str]] = {}
    for name, values in presets.items():
        for dest, value in values.items():
            shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else value
            out.setdefault(dest, []).append(f"{name} {shown}")
    return {dest: "presets: " + ", ".join(v) for dest, v in out.items()}


def _add_group(parser: argparse.ArgumentParser, title: str, cls: type | None, notes: dict[str, str] | None = None):
    if cls is None:
        return
    group = parser.add_argument_group(title)
    fields = configs.add_options(group, cls)
    if notes:  # append preset values to the help of the options they set
        for action in group._group_actions:
            if action.dest in notes:
                action.help = f"{action.help} ({notes[action.dest]})"
    return fields


# ---------------------------------------------------------------------------------------------------
# info


def _cmd_info(args: argparse.Namespace) -> int:
    import fsgan_fast

    data = fsgan_fast.info()
    data["models"] = list(_registry().available())
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(fsgan_fast.format_info(data))
        print(f"models: {', '.join(data['models'])}")
    return 0


# ---------------------------------------------------------------------------------------------------
# train

_CONFIG_SECTIONS = {"model_config": "model_config", "train_config": "train_config", "run": "run",
                    # config.json of runs written before the registry
                    "train": "train_config"}
_CONFIG_METADATA = ("world_size",)


def _config_file_values(spec, path: str) -> tuple[dict[str, Any], str | None]:
    """Flat option values of a ``--config`` file (YAML, or a run's config.json) and the preset it names."""
    from fsgan_fast.train.base import RunOptions

    data = configs.read_file(path)
    classes = {"model_config": spec.get("model_config"), "train_config": spec.get("train_config"), "run": RunOptions}
    model = data.pop("model", None)
    if isinstance(model, dict):  # old config.json: "model" held the model config
        data["model_config"] = model
    elif model is not None and model != spec.name:
        raise CLIError(f"--config {path!r} is a {model!r} config, not a {spec.name!r} one")
    preset = data.pop("preset", None)
    for key in _CONFIG_METADATA:
        data.pop(key, None)
    values: dict[str, Any] = {}
    for section, which in _CONFIG_SECTIONS.items():
        if section in data:
            cls = classes[which]
            hidden = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("cli", True)}
            body = {k: v for k, v in dict(data.pop(section)).items() if k not in hidden}  # e.g. n_classes: from data
            values.update(configs.flatten(cls, body, where=f"--config {path} ({section})"))
    flat_dests = {cf.dest for cls in classes.values() for cf in configs.cli_fields(cls)}
    unknown = sorted(set(data) - flat_dests)
    if unknown:
        raise CLIError(f"--config {path!r}: unknown option(s) {unknown} for {spec.name}")
    values.update(data)
    return values, preset


def _cmd_train(args: argparse.Namespace) -> int:
    from fsgan_fast.train.base import RunOptions
    from fsgan_fast.train.loop import load_checkpoint

    registry = _registry()
    spec = registry.get(args.model)
    model_cls, train_cls = spec.get("model_config"), spec.get("train_config")
    file_values, file_preset = _config_file_values(spec, args.config) if args.config else ({}, None)
    given = {**file_values, **_options(args, model_cls, train_cls, RunOptions)}
    run_values = {k: given[k] for k in _options(argparse.Namespace(**given), RunOptions)}
    data_option = getattr(train_cls, "DATA_OPTION", None)  # a train option that stands for --data (smis: --pairs)
    if "data" not in run_values and data_option and given.get(data_option) is not None:
        run_values["data"] = given[data_option]
    if given.get("resume") is not None and "data" not in run_values and "out" in run_values:
        run_values["data"] = _data_of_run(Path(run_values["out"]))  # a resumed run reads the same data by default
    run = _build(RunOptions, run_values, f"train {spec.name}")
    presets = spec.get("presets") or {}
    preset = args.preset or file_preset or "auto"
    if run.resume is not None and preset != "auto":
        raise CLIError("--preset applies to new runs: a resumed run keeps its checkpoint's settings (drop --preset)")
    if preset == "auto":
        preset = registry.default_preset(spec, run.data)
    elif preset not in presets:
        raise CLIError(f"--preset {preset!r}: {spec.name} has presets {', '.join(presets) or 'none'}")
    explicit = {k: v for k, v in given.items() if k not in run_values}

    if run.resume is not None:
        # a resumed run starts from the checkpoint's settings; given options must agree (checked by the trainer)
        path = run.resume_path
        state = load_checkpoint(path, spec.name)
        stored = state["trainer"]["config"]
        base_model = configs.flatten(model_cls, _known(model_cls, stored), where="checkpoint")
        base_train = configs.flatten(train_cls, _known(train_cls, state["trainer"]["train"]), where="checkpoint")
        model_cfg = _build(model_cls, {**base_model, **explicit}, f"train {spec.name}")
        # fields set by code (e.g. a class count taken from the data) are no options: they come back from the checkpoint as they were
        by_code = {f.name for f in dataclasses.fields(model_cls) if not f.metadata.get("cli", True)}
        model_cfg = dataclasses.replace(model_cfg, **{k: v for k, v in stored.items() if k in by_code})
        train_cfg = _build(train_cls, {**base_train, **explicit}, f"train {spec.name}")
    else:
        defaults = dict(presets.get(preset, {})) if preset else {}
        model_cfg = _build(model_cls, {**defaults, **explicit}, f"train {spec.name}")
        train_cfg = _build(train_cls, {**defaults, **explicit}, f"train {spec.name}")
    _set_backend(run.backend)
    ckpt = spec.get("train")(run, model_cfg, train_cfg)
    import torch.distributed as dist

    if dist.is_initialized():  # joined by the trainer under torchrun
        dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        what = f"{preset} preset, " if preset and run.resume is None else ""
        print(f"{what}{train_cfg.iters} steps: checkpoint {ckpt}, samples in {Path(run.out) / 'samples'}")
    return 0


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of a stored config that are still options of ``cls`` (older checkpoints may hold others)."""
    top = {cf.path[0] for cf in configs.cli_fields(cls)}
    return {k: v for k, v in values.items() if k in top}


def _data_of_run(out: Path) -> str | None:
    try:
        return json.loads((out / "config.json").read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------------
# generate


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    spec = _registry().get(args.model)
    opts, model_opts = _command_options(args, spec, GenerateOptions, "generate_options", "generate")
    _set_backend(opts.backend)
    device = _device(opts.device)
    out = _writable_folder(Path(opts.out), "--out")
    model = _load_model(spec, opts.ckpt, device)
    generator = torch.Generator(device).manual_seed(opts.seed)
    try:
        written = spec.get("generate")(model, model_opts, n=opts.n, out=out, generator=generator,
                                       batch_size=opts.batch_size)
    except OSError as e:
        raise CLIError(f"cannot write the outputs: {e}") from None
    print(f"wrote {len(written)} images to {out} (--n {opts.n}): {_listing(written)}")
    return 0


def _listing(paths, shown: int = 6) -> str:
    """The file names, the first few and the last (often the grid) when there are many."""
    names = [Path(p).name for p in paths]
    if len(names) > shown:
        names = names[:shown - 1] + [f"... ({len(names) - shown} more)", names[-1]]
    return ", ".join(names) or "none"


# ---------------------------------------------------------------------------------------------------
# app


@dataclasses.dataclass
class AppOptions(CheckpointRunOptions):
    """``fsgan-fast app MODEL APP`` (and ``translate MODEL``): what every application takes besides its own inputs."""


def _cmd_app(args: argparse.Namespace) -> int:
    import torch

    spec = _registry().get(args.model)
    app = spec.get("apps")[args.app]
    what = f"app {spec.name} {args.app}"
    opts = _build(AppOptions, _options(args, AppOptions), what)
    cls = app.get("options")
    app_opts = _build(cls, _options(args, cls), what) if cls is not None else None
    _set_backend(opts.backend)
    device = _device(opts.device)
    out = _writable_folder(Path(opts.out), "--out")
    model = _load_model(spec, opts.ckpt, device)
    generator = torch.Generator(device).manual_seed(opts.seed)
    try:
        written = app.get("run")(model, app_opts, out=out, generator=generator)
    except OSError as e:
        raise CLIError(f"cannot write the outputs: {e}") from None
    print(f"wrote {len(written)} files to {out}: {_listing(written)}")
    return 0


# ---------------------------------------------------------------------------------------------------
# export


def _export_device(opts: ExportOptions):
    import torch

    if opts.format == "onnx":
        return torch.device("cpu")  # traced and checked with onnxruntime on the CPU
    if opts.device is None and opts.format == "tensorrt":
        return _device("cuda")
    return _device(opts.device)


def _cmd_export(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from fsgan_fast import export

    spec = _registry().get(args.model)
    if spec.graph is None:
        raise CLIError(f"{spec.name} has no export graph")
    opts, graph_opts = _command_options(args, spec, ExportOptions, "export_options", "export")
    try:
        batch = export.parse_batch_range(opts.batch)
    except ValueError as e:
        raise CLIError(f"--batch: {e}") from None
    if opts.format != "aoti" and opts.lowering != "reference":
        raise CLIError(f"--lowering {opts.lowering} applies to --format aoti only (ONNX graphs hold standard ops)")
    if not opts.out.endswith(EXPORT_SUFFIXES[opts.format]):
        raise CLIError(f"--out for --format {opts.format} must end in {' or '.join(EXPORT_SUFFIXES[opts.format])}, "
                       f"got {opts.out!r}")
    out = Path(opts.out)
    if out.is_dir():
        raise CLIError(f"--out {opts.out!r} is a folder; give a file name")
    _writable_folder(out.parent if str(out.parent) else Path("."), "the folder of --out")
    device = _export_device(opts)
    if opts.format == "tensorrt":
        from fsgan_fast.export.tensorrt import tensorrt_unavailable

        reason = tensorrt_unavailable(device)
        if reason is not None:
            raise CLIError(f"cannot build a TensorRT engine here: {reason}")
    if opts.format in ("onnx", "tensorrt"):
        from fsgan_fast.export.onnx import onnx_unavailable

        reason = onnx_unavailable()
        if reason is not None:
            raise CLIError(reason)
    model = _load_model(spec, opts.ckpt, device)
    graph_kwargs = dataclasses.asdict(graph_opts) if graph_opts is not None else {}
    if graph_kwargs.get("use_ema") is False and getattr(model, "gen_ema", True) is None:
        raise CLIError("--no-ema given but the checkpoint has no EMA generator to skip")
    base_graph = export.generator_graph(model, **graph_kwargs)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[opts.precision]

    def graph_of(dt: torch.dtype) -> export.GeneratorGraph:
        # a copy in the dtype: the graph itself carries the precision (TensorRT 11 is strongly typed)
        return base_graph.to(dt)

    start = time.perf_counter()
    # written into a scratch folder beside OUT and moved over it only once verified: a failed export never
    # replaces a good file
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else "."))
    try:
        target = scratch / out.name
        try:
            if opts.format == "onnx":
                path = export.export_onnx(graph_of(dtype), target, batch=batch, opset=opts.opset)
                make_runner = lambda p: export.ORTGenerator(p)  # noqa: E731
            elif opts.format == "tensorrt":
                from fsgan_fast.export.tensorrt import TRTGenerator, build_engine

                onnx_path = target.with_suffix(".onnx")
                export.export_onnx(graph_of(dtype).to(device="cpu"), onnx_path, batch=batch, opset=opts.opset)
                # IEEE fp32 for fp32 engines: TF32 would fail the 1e-4 parity check on Ampere and newer
                path = build_engine(onnx_path, target, precision=opts.precision, batch=batch,
                                    timing_cache=opts.timing_cache, strict_fp32=opts.precision == "fp32")
                make_runner = lambda p: TRTGenerator(p, device)  # noqa: E731
            else:
                path = export.package_aoti(graph_of(dtype), target, batch=batch, lowering=opts.lowering)
                make_runner = lambda p: export.AOTIGenerator(p, device)  # noqa: E731
        except (ValueError, RuntimeError, FileNotFoundError, ImportError) as e:
            raise CLIError(f"export failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        print(f"exported {spec.name} ({opts.format}, {opts.precision}, batch {':'.join(map(str, batch))}) "
              f"in {time.perf_counter() - start:.1f} s")
        if opts.verify:
            _verify_export(opts, lambda: make_runner(path), graph_of, dtype, batch)
        for produced in sorted(scratch.iterdir()):  # the artifact and its companions (TensorRT's .onnx, sidecar)
            os.replace(produced, out.parent / produced.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {out}")
    return 0


def _verify_export(opts: ExportOptions, make_runner, graph_of, dtype, batch) -> None:
    """Run the export against fp32 PyTorch on random inputs; CLIError when it does not match."""
    import torch

    lo, opt, hi = batch
    sizes = tuple(sorted({lo, opt, hi} if hi <= 64 else {lo, opt}))
    reference = graph_of(torch.float32)
    try:
        errs = reference.compare(make_runner(), sizes)
    except Exception as e:  # e.g. onnxruntime's CPU provider has no bf16 convolution
        if opts.precision == "fp32":
            raise CLIError(f"the export does not run: {str(e).splitlines()[0][:300] if str(e) else e!r}") from e
        print(f"parity run skipped: the {opts.precision} export cannot run here ({str(e).splitlines()[0][:200]})")
        return
    print(f"vs fp32 PyTorch at batch {list(sizes)}: max |err| {errs['max_abs_err']:.2e} "
          f"(relative {errs['max_rel_err']:.2e}), mean |err| {errs['mean_abs_err']:.2e}")
    if opts.precision == "fp32":
        ok = errs["max_rel_err"] <= FP32_PARITY
        print(f"  {'ok' if ok else 'FAILED'}: tolerance {FP32_PARITY:.0e} relative")
    else:
        # Reduced precision flips near-tied decisions (a flipped top-1 match moves a whole feature cell), so the max
        # error is large by nature. The bar is the eager model in the same precision; the factor catches
        # broken exports, not rounding.
        eager = graph_of(dtype).to(device=next(reference.module.parameters()).device)
        base = reference.compare(eager.run, sizes)
        ok = errs["mean_abs_err"] <= LOW_PRECISION_FACTOR * base["mean_abs_err"] + 1e-3
        print(f"  {'ok' if ok else 'FAILED'}: eager PyTorch in {opts.precision} has mean |err| "
              f"{base['mean_abs_err']:.2e}; the export may have at most {LOW_PRECISION_FACTOR}x that (+1e-3)")
    if not ok:
        raise CLIError(f"the exported {opts.format} generator does not match PyTorch: {opts.out} was left as it was")


# ---------------------------------------------------------------------------------------------------
# eval


@dataclasses.dataclass
class EvalOptions:
    """``fsgan-fast eval MODEL``: what every model's evaluation takes."""

    ckpt: str = option(help="checkpoint written by 'fsgan-fast train' (RUN/checkpoint.pt)")
    data: str | None = option(None, "the dataset the protocol measures against (default: the run's --data, from "
                              "RUN/config.json beside the checkpoint)")
    inception: str | None = option(None, "FID Inception weights pt_inception-2015-12-05-6726825d.pth (default: "
                                   "$FSGAN_FAST_INCEPTION); from https://github.com/mseitzer/pytorch-fid/releases/"
                                   "download/fid_weights/pt_inception-2015-12-05-6726825d.pth")
    random_weights: bool = option(False, "measure with random-init networks instead of the weight files: for "
                                  "plumbing only, every figure is marked 'not comparable'")
    batch_size: int = option(50, "images per feature-extraction batch", low=1)
    out: str | None = option(None, "write the figures as JSON to this file")
    device: str | None = option(None, "torch device (default: cuda if available, else cpu)")
    seed: int = option(0, "seed of the evaluation's random draws")

    def __post_init__(self) -> None:
        configs.validate(self)
        if self.random_weights and self.inception is not None:
            raise ConfigError("--inception and --random-weights exclude each other: give one")


def _format_eval(results: dict[str, Any]) -> str:
    """The figures as a table; every metric is marked when the networks were random."""
    metrics = results.get("metrics", {})
    mark = "" if results.get("comparable", True) else "  (not comparable: random-init networks)"
    width = max((len(k) for k in metrics), default=0)
    lines = [f"{results.get('protocol', '')}"]
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{width}}  {shown:>10}{mark}")
    for key, value in results.get("settings", {}).items():
        lines.append(f"  {key}: {value}")
    lines += [f"  note: {n}" for n in results.get("notes", [])]
    return "\n".join(lines)


def _cmd_eval(args: argparse.Namespace) -> int:
    spec = _registry().get(args.model)
    if spec.evaluate is None:
        raise CLIError(f"{spec.name} has no evaluation protocol registered yet")
    opts, model_opts = _command_options(args, spec, EvalOptions, "eval_options", "eval")
    if opts.out:
        _writable_folder(Path(opts.out).resolve().parent, "the folder of --out")
    device = _device(opts.device)
    model = _load_model(spec, opts.ckpt, device)
    from fsgan_fast.metrics.inception import InceptionWeightsMissing
    from fsgan_fast.perceptual import PerceptualWeightsMissing

    try:
        results = spec.get("evaluate")(model, model_opts, options=opts, device=device)
    except (InceptionWeightsMissing, PerceptualWeightsMissing) as e:
        raise CLIError(str(e)) from None
    print(_format_eval(results))
    if opts.out:
        Path(opts.out).write_text(json.dumps(results, indent=1))
        print(f"wrote {opts.out}")
    return 0


# ---------------------------------------------------------------------------------------------------
# bench

BENCH_SUITES = ("ops", "models", "export")


def _cmd_bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[1]
    benches = root / "benches"
    if not (benches / "conftest.py").is_file():
        raise CLIError(f"the benchmarks ship with the source checkout (benches/ beside fsgan_fast/), not found at "
                       f"{benches}")
    suites = args.suites or list(BENCH_SUITES)
    unknown = sorted(set(suites) - set(BENCH_SUITES))
    if unknown:
        raise CLIError(f"unknown benchmark suite(s) {unknown}; choose from {', '.join(BENCH_SUITES)}")
    out = Path(args.json) if args.json else Path(f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    cmd = [sys.executable, "-m", "pytest", *[str(benches / s) for s in suites], "-q", "-p", "no:cacheprovider",
           "--benchmark-enable", f"--benchmark-json={out}", "--benchmark-columns=median,iqr,rounds",
           "-m", "not slow" if not args.slow else "slow or not slow"]
    if args.k:
        cmd += ["-k", args.k]
    print("running:", " ".join(cmd))
    status = subprocess.call(cmd, cwd=root)
    if out.is_file() and out.stat().st_size:
        subprocess.call([sys.executable, str(benches / "report.py"), str(out)], cwd=root)
        print(f"results: {out}")
    return status


# ---------------------------------------------------------------------------------------------------
# Parser


def _add_model_commands(sub, spec) -> None:
    from fsgan_fast.train.base import RunOptions

    notes = _preset_help(spec)
    p = sub["train"].add_parser(spec.name, help=spec.summary, description=spec.description or spec.summary,
                                formatter_class=_HelpFormatter)
    presets = spec.get("presets") or {}
    p.add_argument("--config", metavar="FILE", help="options from a YAML file or a run's config.json (the command "
                                                    "line wins over it)")
    if presets:
        p.add_argument("--preset", choices=("auto", *presets),
                       help="defaults for the options marked 'presets' below (default: auto, chosen from --data)"
                            + (f": {spec.preset_help}" if spec.preset_help else ""))
    else:
        p.set_defaults(preset=None)
    _add_group(p, "run", RunOptions)
    _add_group(p, "model", spec.get("model_config"), notes)
    _add_group(p, "training", spec.get("train_config"), notes)
    p.set_defaults(func=_cmd_train, model=spec.name)

    if spec.generate is not None:
        p = sub["generate"].add_parser(spec.name, help=f"generate with a trained {spec.name}",
                                       formatter_class=_HelpFormatter,
                                       description=f"Generate images from a {spec.name} checkpoint into --out.")
        _add_group(p, "generation", GenerateOptions)
        _add_group(p, spec.name, spec.get("generate_options"))
        p.set_defaults(func=_cmd_generate, model=spec.name)

    if spec.graph is not None:
        p = sub["export"].add_parser(
            spec.name, help=f"export a trained {spec.name} generator", formatter_class=_HelpFormatter,
            description=("Export the generator of a checkpoint; its randomness becomes graph inputs, and the file's "
                         "metadata says how to draw them. After writing, the export is run against PyTorch on random "
                         "inputs (skip with --no-verify); OUT is replaced only when it passes."))
        _add_group(p, "export", ExportOptions)
        _add_group(p, spec.name, spec.get("export_options"))
        p.set_defaults(func=_cmd_export, model=spec.name)

    apps = spec.get("apps") or {}
    if apps:
        p = sub["app"].add_parser(spec.name, help=f"applications of a trained {spec.name}: {', '.join(apps)}",
                                  formatter_class=_HelpFormatter,
                                  description=f"Applications of a {spec.name} checkpoint; each writes images into "
                                              f"--out. See 'fsgan-fast app {spec.name} APP --help'.")
        app_sub = p.add_subparsers(dest="app", required=True, metavar="APP")
        for name, app in apps.items():
            q = app_sub.add_parser(name, help=app.summary, formatter_class=_HelpFormatter,
                                   description=app.description or app.summary)
            _add_group(q, "application", AppOptions)
            _add_group(q, name, app.get("options"))
            q.set_defaults(func=_cmd_app, model=spec.name, app=name)
    if "translate" in apps:  # image-to-image models: `fsgan-fast translate MODEL` is `fsgan-fast app MODEL translate`
        app = apps["translate"]
        q = sub["translate"].add_parser(spec.name, help=app.summary, formatter_class=_HelpFormatter,
                                        description=app.description or app.summary)
        _add_group(q, "application", AppOptions)
        _add_group(q, "translate", app.get("options"))
        q.set_defaults(func=_cmd_app, model=spec.name, app="translate")

    p = sub["eval"].add_parser(spec.name, help=f"evaluate a trained {spec.name}", formatter_class=_HelpFormatter,
                               description=f"The evaluation protocol of {spec.name}'s paper.")
    _add_group(p, "evaluation", EvalOptions)
    _add_group(p, spec.name, spec.get("eval_options"))
    p.set_defaults(func=_cmd_eval, model=spec.name)


def build_parser() -> argparse.ArgumentParser:
    registry = _registry()
    parser = argparse.ArgumentParser(prog="fsgan-fast", description=__doc__, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, devices, built backends, which backend each op uses, and the models")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_info)

    model_subs = {}
    for command, text in (("train", "train a model"), ("generate", "generate images from a trained checkpoint"),
                          ("app", "run a trained model's applications beyond sampling (editing, upsampling, ...)"),
                          ("translate", "translate images with a trained image-to-image model (side-by-side grids)"),
                          ("export", "export a generator to ONNX, TensorRT or AOTInductor"),
                          ("eval", "evaluate a checkpoint with its paper's protocol")):
        p = sub.add_parser(command, help=text, description=f"{text[0].upper()}{text[1:]}; see "
                                                           f"'fsgan-fast {command} MODEL --help'.")
        model_subs[command] = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    for name in registry.available():
        _add_model_commands(model_subs, registry.get(name))

    p = sub.add_parser("bench", help="run the benchmark suites and print the speed-up tables",
                       description="Runs pytest-benchmark over benches/<suite> with the right flags, writes the JSON "
                                   "and prints benches/report.py's tables. On a GPU use benches/gpu.sh, which also "
                                   "builds and names the result files.")
    p.add_argument("suites", nargs="*", metavar="SUITE",
                   help=f"which suites ({', '.join(BENCH_SUITES)}; default: all)")
    p.add_argument("-k", help="pytest -k filter")
    p.add_argument("--json", help="where to write the pytest-benchmark JSON (default: bench-<time>.json)")
    p.add_argument("--slow", action="store_true", help="include the cases marked slow")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fsgan_fast.backends import BackendUnavailableError
    from fsgan_fast.data import DatasetError
    from fsgan_fast.models.registry import InputError, UnknownModelError
    from fsgan_fast.train.loop import CheckpointError, RunError, TrainingInterrupted

    try:
        return args.func(args)
    except (CLIError, ConfigError, DatasetError, CheckpointError, RunError, BackendUnavailableError,
            UnknownModelError, InputError) as e:
        parser.exit(2, f"fsgan-fast: error: {e}\n")
    except TrainingInterrupted as e:
        parser.exit(130, f"fsgan-fast: {e}\n")
    except KeyboardInterrupt:
        parser.exit(130, "fsgan-fast: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
