"""Loading typed, frozen configs: TOML presets under ``configs/`` plus ``--set key=value`` overrides.

A config is a frozen dataclass; nested tables are nested dataclasses (one with a ``from_text``
classmethod may instead be written as a string: a grid range ``"-30:30:5"``). Each field says what it
means in a comment; bounded fields carry their range in ``bounded(...)`` metadata, checked at
load time. Loading rejects unknown keys, wrong types and values out of range with a message
that names the dotted key and where its value came from: the file, or "command line" and the
override as typed (``--set key=value``, or the option's name) for a value the user typed, which is
never blamed on a file or on "defaults".

The config classes themselves live in the sibling modules (see ``gazegen/config/__init__.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
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

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key  # the dotted key whose value is wrong ("" for a check across keys): load_config names its origin


COMMAND_LINE = "command line"  # the origin load_config names for a value set by an override (--set, a typed option)


def _key_error(key: str, why: str) -> ConfigError:
    return ConfigError(f"{key}: {why}", key)


def bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A dataclass field whose value must lie in [lo, hi] (either bound may be None)."""
    return field(default=default, metadata={"range": (lo, hi)})


def find_config(path: str | Path) -> Path:
    """A config file named on the command line (or a command's default): as given when it exists there,
    so a file of the user's own wins; else a relative path is looked up in the repository's configs/,
    with or without its leading ``configs/`` (``configs/train/demo.toml`` and ``train/demo.toml`` both),
    so the defaults and the documented presets work from any folder. Otherwise as given (load_config
    then reports it not found; so does every relative path of an install without configs/)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    inside = Path(*path.parts[1:]) if path.parts[:1] == (CONFIG_DIR.name,) else path
    return CONFIG_DIR / inside if inside.parts and (CONFIG_DIR / inside).is_file() else path


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
            raise _key_error(where, str(e)) from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _key_error(where, f"expected a table, got {value!r}")
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
        raise _key_error(where, f"{value!r} is not a {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _key_error(where, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _key_error(where, f"expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise _key_error(where, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return value
    raise _key_error(where, f"unsupported field type {tp}")


def _range_text(lo: float | None, hi: float | None) -> str:
    """``bounded``'s range in words: ">= 0", "<= 9", "in [0, 9]"."""
    return f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"


def _in_range(value: Any, lo: float | None, hi: float | None) -> bool:
    """Whether ``value`` lies in [lo, hi] (either bound None: open); a bounded setting is a finite number (NaN, which no
    comparison refuses, and an infinity past an open end never are)."""
    if lo is None and hi is None:
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        keys = [f"{where}.{name}" if where else name for name in unknown]  # the first is traced to its origin by load_config
        known = f"known in {where}" if where else "known"
        raise ConfigError(f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(map(repr, keys))}; {known}: {', '.join(fields)}",
                          keys[0])
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        v = _coerce(value, hints[name], key)
        lo, hi = fields[name].metadata.get("range", (None, None))
        if not _in_range(v, lo, hi):
            finite = "a finite number " if isinstance(v, float) and not math.isfinite(v) else ""
            raise _key_error(key, f"must be {finite}{_range_text(lo, hi)}, got {v!r}")
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


def _set_by(key: str, given: typing.Iterable[str]) -> str | None:
    """The override key of ``given`` that set ``key``: itself, a table holding it, or a key under it (an
    override ``nosuch.key`` makes the unknown table ``nosuch``); None when none did."""
    return next((k for k in given if key == k or key.startswith((f"{k}.", f"{k}[")) or k.startswith(f"{key}.")), None)


def _origin(error: ConfigError, source: str, given: typing.Mapping[str, str], names: typing.Mapping[str, str],
            file_passes: typing.Callable[[], bool]) -> str:
    """``error``'s message prefixed by where its value came from: for a key an override set, the command line
    and the override as typed ("command line: --set sample=-1: ...", or by the option's name in ``names`` when
    it has one: "command line: --grid: ..."); else ``source`` (the file, or "defaults"). ``given`` maps each
    override's key to its text. A check across keys (no key) blames the command line when the file alone passes."""
    message = str(error)
    if error.key:
        by = _set_by(error.key, given)
        if by is None:
            return f"{source}: {message}"
        why = message.removeprefix(f"{error.key}: ") if error.key == by else message  # a key inside a table set whole: named
        if by in names:
            return f"{COMMAND_LINE}: {names[by]}: {why}"
        value = given[by].partition("=")[2].strip().strip("'\"")  # a range's message repeats its value: said once, in the override
        return f"{COMMAND_LINE}: --set {given[by]}: {why.removeprefix(f'{value}: ') if value else why}"
    return f"{COMMAND_LINE}: {message}" if given and file_passes() else f"{source}: {message}"


def option_name(key: str) -> str:
    """The command-line option of a config key: ``view_yaw`` -> ``--view-yaw``."""
    return "--" + key.replace("_", "-")


def load_with_options(cls: type[T], path: str | Path | None, overrides: typing.Sequence[str],
                      options: typing.Mapping[str, typing.Any]) -> T:
    """``load_config`` with a command's typed options that are not None applied last, each checked like a ``--set``
    key (types and ranges) and named in an error by its option (``option_name``)."""
    given = {k: v for k, v in options.items() if v is not None}
    sets = [f"{k}={json.dumps(v)}" for k, v in given.items()]  # JSON scalars and lists are TOML
    return load_config(cls, path, [*overrides, *sets], names={k: option_name(k) for k in given})


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                names: typing.Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from a TOML file (or its defaults) and ``key.sub=value`` overrides.

    A wrong value is reported with where it came from, the file, "defaults" or the command line (an
    override), so that a value typed on the command line is never blamed on a file. ``names`` maps an
    override's dotted key to the option it was typed as (``{"grid": "--grid"}``), named in the message.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = find_config(path)  # a relative path missing here may name a preset of the repository's configs/
        source = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: a folder, not a config file (give a .toml file)") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file, so not a TOML config (give a .toml file)") from None
        except OSError as e:  # no permission, a file on the way (NotADirectoryError), ...
            raise ConfigError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return _overridden(cls, data, source, overrides, names or {})


def with_overrides(config: T, overrides: typing.Sequence[str], source: str) -> T:
    """``config`` with ``key.sub=value`` overrides applied and checked as ``load_config`` checks them;
    ``source`` names where ``config`` came from (e.g. a run's recorded config) in the messages."""
    return _overridden(type(config), to_dict(config), source, overrides, {})


def _overridden(cls: type[T], data: dict[str, Any], source: str, overrides: typing.Sequence[str],
                names: typing.Mapping[str, str]) -> T:
    """``cls`` built from ``data`` (read from ``source``) with ``overrides`` merged in; errors name their origin."""
    from_file = copy.deepcopy(data)
    given: dict[str, str] = {}  # override key -> its text; a key given twice: the last (the value used)
    for item in overrides:
        keys, value = _parse_override(item)
        _merge(data, keys, value)
        given[".".join(keys)] = item.strip()

    def file_passes() -> bool:
        try:
            _build(cls, from_file, "")
        except ConfigError:
            return False
        return True

    try:
        return _build(cls, data, "")
    except ConfigError as e:
        raise ConfigError(_origin(e, source, given, names, file_passes), e.key) from None


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain data (tuples become lists), for JSON manifests and checkpoints."""
    return dataclasses.asdict(config)
