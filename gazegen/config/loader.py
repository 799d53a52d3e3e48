"""Loading typed, frozen configs: TOML presets under ``configs/`` plus ``--set key=value`` overrides.

A config is a frozen dataclass; nested tables are nested dataclasses (one with a ``from_text``
classmethod may instead be written as a string: a grid range ``"-30:30:5"``). Each field says what it
means in a comment; bounded fields carry their range in ``bounded(...)`` metadata, checked at
load time. Loading rejects unknown keys, wrong types and values out of range with a message
that names the file and the dotted key.

The config classes themselves live in the sibling modules (see ``gazegen/config/__init__.py``).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, TypeVar

from gazegen.errors import GazegenError

# gazegen/config/loader.py -> the repository root's configs/
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

T = TypeVar("T")


class ConfigError(GazegenError, ValueError):
    """A config file or override is wrong; the message names the source and the key."""


def bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A dataclass field whose value must lie in [lo, hi] (either bound may be None)."""
    return field(default=default, metadata={"range": (lo, hi)})


def resolve_preset(path: str | Path) -> Path:
    """A preset named in a config: absolute as given; relative to configs/ when there; else relative to the working folder."""
    path = Path(path)
    if path.is_absolute() or not (CONFIG_DIR / path).is_file():
        return path
    return CONFIG_DIR / path


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; int -> float and list -> tuple are allowed, and a
    string for a dataclass that has a ``from_text`` classmethod (its ValueError names the key)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, str) and hasattr(tp, "from_text"):
        try:  # a config type written as text in TOML, e.g. a grid range "start:stop:count"
            return tp.from_text(value)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        v = _coerce(value, hints[name], key)
        lo, hi = fields[name].metadata.get("range", (None, None))
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"{key}: {v!r} is out of range [{lo}, {hi}]")
        kwargs[name] = v
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    return key.strip().split("."), value


def _merge(base: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = base.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part} is not a table")
        base = node
    base[path[-1]] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Build ``cls`` from a TOML file (or its defaults) and ``key.sub=value`` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for item in overrides:
        keys, value = _parse_override(item)
        _merge(data, keys, value)
    try:
        return _build(cls, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain data (tuples become lists), for JSON manifests and checkpoints."""
    return dataclasses.asdict(config)
