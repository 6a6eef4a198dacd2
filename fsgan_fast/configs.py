"""Config dataclasses as the single source of every option: default, type, choices and help, written once.

A config is a plain dataclass whose fields are declared with :func:`option`::

    @dataclasses.dataclass
    class MyTrainConfig(TrainConfig):
        rate: float = option(0.5, "fraction of positions fused", low=0.0, high=1.0)

From that, :func:`add_options` builds the ``argparse`` options of the CLI (``--rate``), :func:`to_dict` /
:func:`from_dict` write and read ``config.json`` and YAML files (unknown keys are errors naming them),
and :func:`validate` checks numeric bounds and finiteness in ``__post_init__`` (a NaN learning rate never
reaches an optimiser). Supported field types: ``int``, ``float``, ``str``, ``bool``, ``Literal[...]``,
``X | None``, ``tuple[int, ...]``, ``tuple[float, float]`` and nested config dataclasses (flattened as
``--<prefix>-<field>``, the prefix taken from the field's ``prefix`` metadata, else its name).

Why a small adapter rather than jsonargparse or tyro: the precedence our presets need (dataclass default <
preset chosen from the data < config file < command line), options of three dataclasses merged into one
command, and argparse's one-line errors are a few dozen lines here, and fight both libraries' own models
of defaults and config files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Union

MISSING = dataclasses.MISSING


def option(default: Any = MISSING, help: str = "", *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, flag_value: Any = None, metavar: str | None = None,
           prefix: str | None = None, cli: bool = True, factory: Any = None, flag: str | None = None) -> Any:
    """A dataclass field with its help text and bounds (``low <= v <= high``; ``*_open`` makes them strict).

    ``flag_value``: the value of the bare option (``--ema`` alone means ``--ema 0.999``). ``cli=False`` keeps
    the field out of the command line (set by code). ``factory`` replaces ``default`` for mutable defaults
    and nested configs. ``flag``: the option's name when it differs from the field's (``use_ema`` -> ``--ema``).
    """
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "high_open": high_open,
            "flag_value": flag_value, "metavar": metavar, "prefix": prefix, "cli": cli, "flag": flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class ConfigError(ValueError):
    """A config value or file is invalid; the message names the field."""


# ---------------------------------------------------------------------------------------------------
# Field types


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, name: str) -> Any:
    """``value`` (from JSON/YAML or a string of the command line) as the field type ``tp``."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be null")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [value] if args == (str, Ellipsis) else [v for v in value.replace(" ", "").split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, name) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{name} must have {len(args)} values, got {len(value)}: {list(value)}")
        return tuple(_convert(a, v, name) for a, v in zip(args, value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if is_config(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where=name)
    raise TypeError(f"unsupported config field type {tp!r} ({name})")


# ---------------------------------------------------------------------------------------------------
# Validation, dicts, files


def validate(cfg: Any) -> None:
    """Check every field's type and bounds; call from ``__post_init__``. Raises :class:`ConfigError`."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        name, value = f.name, getattr(cfg, f.name)
        value = _convert(hints[f.name], value, name)
        object.__setattr__(cfg, name, value)  # normalised (lists -> tuples, "3" -> 3); frozen configs too
        numbers = value if isinstance(value, tuple) else (value,)
        for v in numbers:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v}")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                low, high = f.metadata.get("low"), f.metadata.get("high")
                if low is not None and (v < low or (f.metadata.get("low_open") and v == low)):
                    raise ConfigError(f"{name} must be {'>' if f.metadata.get('low_open') else '>='} {low}, got {v}")
                if high is not None and (v > high or (f.metadata.get("high_open") and v == high)):
                    raise ConfigError(f"{name} must be {'<' if f.metadata.get('high_open') else '<='} {high}, got {v}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict (tuples as lists, nested configs as dicts)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def from_dict(cls: type, data: dict[str, Any], *, where: str | None = None) -> Any:
    """``cls(**data)`` with unknown keys reported by name (and which keys exist)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {where or cls.__name__} fields {unknown}; expected some of {sorted(names)}")
    try:
        return cls(**data)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a required field missing; a check of the config's own __post_init__
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{field: (old, new)}`` for every differing key of two :func:`to_dict` results (nested keys dotted)."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, MISSING), new.get(key, MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out[prefix + key] = (None if a is MISSING else a, None if b is MISSING else b)
    return out


def read_file(path: str | Path) -> dict[str, Any]:
    """A config file: JSON (``config.json`` of a run) or YAML (``.yaml``/``.yml``). Raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e.strerror or e}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"{str(path)!r} is YAML: pip install pyyaml (or give a .json config)") from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (ValueError, Exception) as e:  # json.JSONDecodeError, yaml.YAMLError
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of options, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------------
# Command line


@dataclasses.dataclass(frozen=True)
class CLIField:
    """One command-line option: where it lives (``path`` of field names through nested configs) and its type."""

    path: tuple[str, ...]
    dest: str  # flat name: the option without dashes, "_" for "-"
    type: Any
    field: dataclasses.Field
    default: Any


def cli_fields(cls: type, prefix: str = "", path: tuple[str, ...] = ()) -> Iterator[CLIField]:
    """The options of ``cls``, nested configs flattened with their prefix."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        tp = hints[f.name]
        if is_config(tp):
            sub = f.metadata.get("prefix") or f.name
            yield from cli_fields(tp, f"{prefix}{sub}_", path + (f.name,))
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        yield CLIField(path + (f.name,), prefix + f.name, tp, f, default)


def _describe(tp: Any) -> tuple[Any, dict[str, Any]]:
    """argparse ``type``/``choices``/``metavar`` for a field type."""
    inner, _ = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if origin is Literal:
        return None, {"choices": typing.get_args(inner)}
    if origin is tuple:
        args = typing.get_args(inner)
        if args == (str, Ellipsis):  # file lists: space-separated, as shells expand globs
            return str, {"nargs": "+"}
        example = "A,B,..." if len(args) == 2 and args[1] is Ellipsis else ",".join("ABCDEFG"[: len(args)])
        return str, {"metavar": example}
    if inner in (int, float):
        return inner, {"metavar": "N" if inner is int else "X"}
    if inner is str:
        return inner, {}
    raise TypeError(f"unsupported config field type {tp!r}")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def flag_of(cf: CLIField) -> str:
    """The option string of a field: ``--<dest>``, or ``--<flag>`` when the field names one."""
    return _flag(cf.field.metadata.get("flag") or cf.dest)


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                defaults: dict[str, Any] | None = None, required: tuple[str, ...] = ()) -> list[CLIField]:
    """One option per field of ``cls``; every default is None so that unset options can be told apart.

    The help shows the field's default (or the one given in ``defaults``, e.g. from a preset).
    """
    shown = dict(defaults or {})
    out = []
    for cf in cli_fields(cls):
        meta = cf.field.metadata
        default = shown.get(cf.dest, cf.default)
        help_text = meta.get("help", "").replace("%", "%%")  # argparse formats help with %
        inner, _ = _unwrap_optional(cf.type)
        if inner is bool:
            parser.add_argument(flag_of(cf), dest=cf.dest, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text + (" (default: on)" if default is True else ""))
        else:
            tp, extra = _describe(cf.type)
            if meta.get("metavar"):
                extra["metavar"] = meta["metavar"]
            if meta.get("flag_value") is not None:
                extra.update(nargs="?", const=str(meta["flag_value"]))
                help_text += f" (alone: {meta['flag_value']})"
            if default is not MISSING and default is not None and default != ():
                shown_default = ",".join(map(str, default)) if isinstance(default, tuple) else default
                help_text += f" (default: {shown_default})"
            parser.add_argument(flag_of(cf), dest=cf.dest, type=tp, default=None,
                                required=cf.dest in required, help=help_text, **extra)
        out.append(cf)
    return out


def flatten(cls: type, data: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A nested mapping (``config.json`` sections, YAML) of ``cls`` fields as flat option names."""
    fields = {cf.path: cf.dest for cf in cli_fields(cls)}
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], path: tuple[str, ...]) -> None:
        for key, value in d.items():
            p = path + (key,)
            if p in fields:
                out[fields[p]] = value
            elif isinstance(value, dict) and any(k[: len(p)] == p for k in fields):
                walk(value, p)
            else:
                raise ConfigError(f"{where}: unknown option {'.'.join(p)!r}")

    walk(data, ())
    return out


def build(cls: type, values: dict[str, Any], *, where: str | None = None) -> Any:
    """``cls`` from flat option values (missing ones keep the dataclass defaults)."""
    nested: dict[str, Any] = {}
    for cf in cli_fields(cls):
        if cf.dest in values and values[cf.dest] is not None:
            d = nested
            for key in cf.path[:-1]:
                d = d.setdefault(key, {})
            d[cf.path[-1]] = _convert(cf.type, values[cf.dest], flag_of(cf))
    hints = _hints(cls)
    for f in dataclasses.fields(cls):  # nested configs given partially: fill from their defaults
        if f.name in nested and is_config(hints[f.name]):
            nested[f.name] = from_dict(hints[f.name], nested[f.name], where=where)
    return from_dict(cls, nested, where=where)


__all__ = ["option", "ConfigError", "validate", "to_dict", "from_dict", "differences", "read_file", "cli_fields",
           "add_options", "flatten", "build", "is_config"]
