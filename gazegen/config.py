"""Typed, frozen configs loaded from TOML presets under ``configs/`` with ``--set key=value`` overrides.

A config is a frozen dataclass; nested tables are nested dataclasses. Each field says what it
means in a comment; bounded fields carry their range in ``bounded(...)`` metadata, checked at
load time. Loading rejects unknown keys, wrong types and values out of range with a message
that names the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the source and the key."""


def bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A dataclass field whose value must lie in [lo, hi] (either bound may be None)."""
    return field(default=default, metadata={"range": (lo, hi)})


# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class NormalisationConfig:
    """ETH-XGaze-style normalised camera (Zhang et al.) plus the renderer's world scale."""

    focal: float = bounded(1600.0, 1.0)  # focal length in pixels at `resolution`
    distance_mm: float = bounded(950.0, 1.0)  # camera to face-centre distance, millimetres
    resolution: int = bounded(512, 8, 4096)  # image side in pixels
    radius: float = bounded(2.7, 0.1)  # the same distance in renderer world units (EG3D: 2.7)

    def at_resolution(self, resolution: int) -> NormalisationConfig:
        """The same camera (same field of view) for images resized to ``resolution`` pixels."""
        return dataclasses.replace(self, focal=self.focal * resolution / self.resolution, resolution=resolution)


# The normalisations of published stores. ETH-XGaze (Zhang et al. 2020, official patches):
# focal 960 with 600 mm at 224 px and 300 mm at 448 px. LiveGaze's 512 px store (supplement,
# section 6): focal 1600, 950 mm. GazeNeRF's 512 px files follow the same normalisation.
PUBLISHED_NORMALISATIONS: dict[str, NormalisationConfig] = {
    "xgaze224": NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=224),
    "xgaze448": NormalisationConfig(focal=960.0, distance_mm=300.0, resolution=448),
    "livegaze512": NormalisationConfig(focal=1600.0, distance_mm=950.0, resolution=512),
}


# --------------------------------------------------------------------------- procedural heads


@dataclass(frozen=True)
class RigConfig:
    """The camera rig around the head (ETH-XGaze has 18 cameras)."""

    views: int = bounded(18, 1, 64)  # number of cameras; camera 0 is frontal
    max_yaw_deg: float = bounded(60.0, 0.0, 85.0)  # widest horizontal camera angle
    max_pitch_deg: float = bounded(30.0, 0.0, 80.0)  # widest vertical camera angle


@dataclass(frozen=True)
class GazeRangeConfig:
    """Range of gaze directions in the head frame (ETH-XGaze: about +-50 yaw, +-40 pitch)."""

    max_yaw_deg: float = bounded(50.0, 0.0, 80.0)
    max_pitch_deg: float = bounded(40.0, 0.0, 70.0)
    converge: bool = True  # both eyes look at one target point; False: parallel eye axes
    target_mm: tuple[float, float] = (400.0, 1200.0)  # distance range of the gaze target


@dataclass(frozen=True)
class SynthHeadsConfig:
    """`gazegen data synth-heads`: procedural multi-view gaze heads in the training-store layout."""

    subjects: int = bounded(4, 1, 100000)  # identities, one h5 file each
    resolution: int = bounded(128, 16, 2048)  # image side in pixels
    gazes: int = bounded(20, 1, 100000)  # frames per subject, one gaze target each
    test_subjects: int = bounded(1, 0, 100000)  # the last subjects go to the test split
    seed: int = bounded(0, 0)  # subject i uses seed (seed, i): files do not depend on `subjects`
    normalisation: NormalisationConfig = NormalisationConfig()  # defaults: LiveGaze's 512 px store
    rig: RigConfig = RigConfig()
    gaze: GazeRangeConfig = GazeRangeConfig()

    @property
    def camera(self) -> NormalisationConfig:
        """The normalised camera of the written images: `normalisation` at `resolution`."""
        return self.normalisation.at_resolution(self.resolution)


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderConfig:
    """EG3D-style volume rendering of a triplane (paper section 3.1; EG3D's FFHQ settings by default)."""

    neural_resolution: int = bounded(128, 4, 1024)  # side of the low-resolution feature image
    samples_coarse: int = bounded(48, 1, 512)  # stratified samples per ray
    samples_fine: int = bounded(48, 0, 512)  # importance samples per ray (0: coarse only)
    ray_start: float = bounded(2.25, 0.0)  # near bound along the ray, world units
    ray_end: float = bounded(3.3, 0.0)  # far bound along the ray, world units
    box_warp: float = bounded(1.0, 1e-3)  # side of the cube the triplane spans, world units
    plane_resolution: int = bounded(256, 4, 1024)  # side of each plane
    plane_channels: int = bounded(32, 1, 256)  # channels of each plane
    decoder_hidden: int = bounded(64, 1, 1024)  # width of the decoder MLP
    feature_channels: int = bounded(32, 3, 256)  # decoder output features; the first 3 are RGB
    density_bias: float = -1.0  # sigma = softplus(raw + density_bias) (EG3D: -1)
    white_background: bool = False  # composite onto white instead of black
    chunk_rays: int = bounded(65536, 1)  # rays decoded at once, bounds memory at large sizes


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; int -> float and list -> tuple are allowed."""
    origin = typing.get_origin(tp)
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
