"""The model registry: one :class:`ModelSpec` per model, and everything generic built from it.

Each model module registers its spec at import (``register(ModelSpec(...))``); third-party packages add
models through the ``fsgan_fast.models`` entry-point group (the entry point names a module that
registers, or a ``ModelSpec``)::

    # pyproject.toml of a plugin
    [project.entry-points."fsgan_fast.models"]
    mygan = "mygan.spec"

The CLI (train/generate/export/eval), :func:`fsgan_fast.load` and :func:`fsgan_fast.export.generator_graph`
work from the registry alone, so a new model needs no edit outside its own modules. Fields that would
import heavy or circular code may be given as ``"module:attribute"`` strings, resolved on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import os
from typing import Any, Callable, Mapping

import torch
from torch import nn

from fsgan_fast import configs

log = logging.getLogger("fsgan_fast")

ENTRY_POINT_GROUP = "fsgan_fast.models"
BUILTIN_MODULES = ("fsgan_fast.models.lofgan", "fsgan_fast.models.fastgan", "fsgan_fast.models.singan",
                   "fsgan_fast.models.opgan", "fsgan_fast.models.matchgan", "fsgan_fast.models.smis")


class InputError(ValueError):
    """A generation or application input does not fit the model (an image too small, a mask of another size, a
    scale out of range); the CLI prints it as one line."""


@dataclasses.dataclass(frozen=True)
class ModelApp:
    """A named application of a model (``fsgan-fast app MODEL NAME``), beyond plain random generation.

    ``run(model, options, *, out: Path, generator: torch.Generator) -> list of written files``; ``options``: a config
    dataclass of the application's inputs (its fields become the command's options); ``summary``: one line for
    the command list; ``description``: the long help.
    """

    summary: str
    run: Callable[..., Any] | str
    options: type | str | None = None
    description: str = ""

    def get(self, field: str) -> Any:
        return _resolve(getattr(self, field))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the library needs to know about one model.

    - ``name``: registry and checkpoint name (``fsgan-fast train NAME``); ``summary``: one line for help.
    - ``model_config`` / ``train_config``: config dataclasses (fields declared with
      :func:`fsgan_fast.configs.option`); ``train_config`` subclasses :class:`fsgan_fast.train.base.TrainConfig`.
    - ``presets``: ``{name: {option: value}}`` defaults for model and train options (``--preset``);
      ``auto_preset(data) -> name`` picks one for ``--preset auto`` (None: the first); ``preset_help``
      says what each preset is, for ``--help``.
    - ``build(model_config) -> nn.Module``: the model; its ``cfg`` attribute holds the config.
    - ``train(run: RunOptions, model_config, train_config) -> checkpoint path``: a whole run.
    - ``graph(model, **export_options) -> GeneratorGraph``: the inference graph for export;
      ``export_options``: a config dataclass of the model's own export options (e.g. LoFGAN's
      ``--single-episode``). ``model_types``: the classes ``graph`` accepts.
    - ``generate(model, options, out_dir, generator) -> list of written files`` and ``generate_options``
      (the model's inputs, e.g. LoFGAN's ``--shots`` and ``--similarity``).
    - ``evaluate(model, options) -> dict`` and ``eval_options``: the paper's evaluation protocol, if any.
    - ``apps``: ``{name: ModelApp}`` (or a ``"module:attribute"`` string naming such a mapping): the model's
      applications, each a command ``fsgan-fast app MODEL NAME`` with its own options (SinGAN: harmonize, ...).
    - ``description``: the long help of ``train NAME``.
    """

    name: str
    summary: str
    model_config: type | str
    train_config: type | str
    build: Callable[[Any], nn.Module] | str
    train: Callable[..., Any] | str
    presets: Mapping[str, Mapping[str, Any]] | str = dataclasses.field(default_factory=dict)
    auto_preset: Callable[[str], str] | str | None = None
    preset_help: str = ""
    description: str = ""
    graph: Callable[..., Any] | str | None = None
    export_options: type | str | None = None
    model_types: tuple[type | str, ...] = ()
    generate: Callable[..., Any] | str | None = None
    generate_options: type | str | None = None
    evaluate: Callable[..., Any] | str | None = None
    eval_options: type | str | None = None
    apps: Mapping[str, ModelApp] | str = dataclasses.field(default_factory=dict)

    def get(self, field: str) -> Any:
        """A field with ``"module:attribute"`` strings imported."""
        value = getattr(self, field)
        if isinstance(value, tuple):
            return tuple(_resolve(v) for v in value)
        return _resolve(value)


def _resolve(value: Any) -> Any:
    if isinstance(value, str) and ":" in value:
        module, _, attr = value.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    return value


_SPECS: dict[str, ModelSpec] = {}
_discovered = False


class UnknownModelError(ValueError):
    """No model of that name is registered."""


def register(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to the registry; a second spec of the same name is an error unless ``replace``."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register() takes a ModelSpec, got {type(spec).__name__}")
    if not spec.name or not spec.name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"model names are letters, digits, '-' and '_', got {spec.name!r}")
    if spec.name in _SPECS and not replace and _SPECS[spec.name] is not spec:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _SPECS.pop(name, None)


def _discover() -> None:
    """Import the built-in model modules and the entry points of installed plugins (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    try:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as e:  # a broken installed distribution must not take the CLI down
        log.warning("fsgan_fast: cannot list %s entry points: %s", ENTRY_POINT_GROUP, e)
        return
    for ep in entry_points:
        try:
            obj = ep.load()
        except Exception as e:  # a plugin that fails to import is skipped, with the reason
            log.warning("fsgan_fast: model plugin %r (%s) failed to load: %s", ep.name, ep.value, e)
            continue
        if isinstance(obj, ModelSpec):
            register(obj)


def available() -> tuple[str, ...]:
    """Names of every registered model (built-in and plugins), sorted."""
    _discover()
    return tuple(sorted(_SPECS))


def get(name: str) -> ModelSpec:
    _discover()
    if name not in _SPECS:
        raise UnknownModelError(f"no model named {name!r}; available: {', '.join(available()) or 'none'}")
    return _SPECS[name]


def spec_for(model: nn.Module) -> ModelSpec:
    """The spec whose ``model_types`` include ``model``'s class."""
    _discover()
    for spec in _SPECS.values():
        if spec.model_types and isinstance(model, spec.get("model_types")):
            return spec
    raise TypeError(f"no registered model handles {type(model).__name__}; models: {', '.join(available())}")


# ---------------------------------------------------------------------------------------------------
# Loading


def model_from_state(state: dict[str, Any], *, source: str = "checkpoint") -> nn.Module:
    """Build and load the model of a checkpoint dict (as :func:`fsgan_fast.train.loop.load_checkpoint` reads it).

    Raises :class:`~fsgan_fast.train.loop.CheckpointError` for an unknown model, a missing entry, a config
    this version cannot build, weights that do not fit, or weights that are NaN/inf.
    """
    from fsgan_fast.train.loop import CheckpointError

    try:
        spec = get(state["model"])
    except UnknownModelError as e:
        raise CheckpointError(f"{source}: {e}") from None
    trainer = state.get("trainer")
    if not isinstance(trainer, dict) or "config" not in trainer or "model" not in trainer:
        raise CheckpointError(f"{source} has no model config or weights (trainer.config / trainer.model missing)")
    try:
        cfg = configs.from_dict(spec.get("model_config"), dict(trainer["config"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: its {spec.name} config cannot be built here: {e}") from None
    model = spec.get("build")(cfg)
    try:
        model.load_state_dict(trainer["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{source}: the weights do not fit the {spec.name} model of its config: {first}") from None
    bad = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{source} holds NaN/inf weights in {len(bad)} tensor(s) ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): the run diverged; use an earlier checkpoint")
    return model


def load(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """The model of any fsgan_fast checkpoint (chosen by its ``model`` field), in eval mode on ``device``."""
    from fsgan_fast.train.loop import load_checkpoint

    state = load_checkpoint(path)
    return model_from_state(state, source=repr(str(path))).to(device).eval()


def default_preset(spec: ModelSpec, data: str | None) -> str | None:
    """The preset ``--preset auto`` means for ``data`` (None when the model has no presets)."""
    presets = spec.get("presets")
    if not presets:
        return None
    chooser = spec.get("auto_preset")
    if chooser is None:
        return next(iter(presets))
    return chooser(data)


__all__ = ["ModelSpec", "ModelApp", "InputError", "register", "unregister", "available", "get", "spec_for", "load",
           "model_from_state", "UnknownModelError", "ENTRY_POINT_GROUP", "default_preset"]
