"""Config dataclasses as CLI options: types, bounds, nested configs, files, and errors that name the field."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Literal

import pytest

from fsgan_fast import configs
from fsgan_fast.configs import ConfigError, option


@dataclasses.dataclass
class Inner:
    local: float = option(0.5, "a weight", low=0.0)

    def __post_init__(self) -> None:
        configs.validate(self)


@dataclasses.dataclass
class Cfg:
    name: str = option(help="required")
    size: int = option(64, "side", low=16)
    rate: float = option(0.5, "in (0, 1]", low=0.0, low_open=True, high=1.0)
    widths: tuple[int, ...] = option((8, 16), "widths", low=1)
    betas: tuple[float, float] = option((0.5, 0.9), "betas")
    mode: Literal["a", "b"] = option("a", "mode")
    seen: int | None = option(None, "optional")
    flag: bool = option(False, "a switch")
    use_ema: bool = option(True, "renamed flag", flag="ema")
    decay: float = option(0.0, "decay", flag_value=0.999, low=0.0, high=1.0, high_open=True)
    files: tuple[str, ...] = option((), "paths")
    weights: Inner = option(help="nested", factory=Inner, prefix="w")
    hidden: int = option(3, "set by code", cli=False)

    def __post_init__(self) -> None:
        configs.validate(self)


def parse(argv: list[str]) -> Cfg:
    p = argparse.ArgumentParser()
    configs.add_options(p, Cfg)
    values = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    return configs.build(Cfg, values)


def test_command_line_types_and_names():
    cfg = parse(["--name", "x", "--size", "32", "--widths", "4,8,16", "--betas", "0.1,0.2", "--mode", "b",
                 "--seen", "5", "--flag", "--no-ema", "--decay", "--files", "a.png", "b c.png", "--w-local", "2"])
    assert cfg == Cfg(name="x", size=32, widths=(4, 8, 16), betas=(0.1, 0.2), mode="b", seen=5, flag=True,
                      use_ema=False, decay=0.999, files=("a.png", "b c.png"), weights=Inner(2.0))
    assert parse(["--name", "y"]) == Cfg(name="y")  # unset options keep the dataclass defaults
    assert not any(cf.dest == "hidden" for cf in configs.cli_fields(Cfg))


@pytest.mark.parametrize("kw, message", [
    (dict(size=8), "size must be >= 16, got 8"),
    (dict(rate=0.0), "rate must be > 0.0"),
    (dict(rate=float("nan")), "rate must be a finite number"),
    (dict(widths=(4, 0)), "widths must be >= 1, got 0"),
    (dict(betas=(0.1,)), "betas must have 2 values"),
    (dict(mode="c"), "mode must be one of 'a', 'b'"),
    (dict(size="x"), "size must be an integer"),
    (dict(size=2.5), "size must be an integer"),
    (dict(flag="maybe"), "flag must be true or false"),
    (dict(weights={"local": -1.0}), "local must be >= 0.0"),
    (dict(weights={"nope": 1}), "unknown weights fields"),
    (dict(decay=1.0), "decay must be < 1.0"),
])
def test_bad_values_name_the_field(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Cfg(**{"name": "x", **kw})


def test_dicts_roundtrip_and_differences():
    cfg = Cfg(name="x", widths=(1, 2, 3), weights=Inner(0.25))
    d = configs.to_dict(cfg)
    assert d["widths"] == [1, 2, 3] and d["weights"] == {"local": 0.25}
    assert configs.from_dict(Cfg, d) == cfg  # lists back to tuples, nested dict back to Inner
    with pytest.raises(ConfigError, match=r"unknown Cfg fields \['zz'\]"):
        configs.from_dict(Cfg, {**d, "zz": 1})
    other = configs.to_dict(dataclasses.replace(cfg, size=32, weights=Inner(1.0)))
    assert configs.differences(d, other) == {"size": (64, 32), "weights.local": (0.25, 1.0)}
    assert configs.flatten(Cfg, {"size": 32, "weights": {"local": 2.0}}, where="f") == {"size": 32, "w_local": 2.0}
    with pytest.raises(ConfigError, match="unknown option 'weights.nope'"):
        configs.flatten(Cfg, {"weights": {"nope": 1}}, where="f")


def test_config_files(tmp_path):
    (tmp_path / "a.yaml").write_text("size: 32\nweights:\n  local: 1.5\n")
    assert configs.read_file(tmp_path / "a.yaml") == {"size": 32, "weights": {"local": 1.5}}
    (tmp_path / "a.json").write_text('{"size": 32}')
    assert configs.read_file(tmp_path / "a.json") == {"size": 32}
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        configs.read_file(tmp_path / "list.yaml")
    (tmp_path / "bad.json").write_text("{size: ")
    with pytest.raises(ConfigError, match="not valid json"):
        configs.read_file(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read config file"):
        configs.read_file(tmp_path / "missing.yaml")
