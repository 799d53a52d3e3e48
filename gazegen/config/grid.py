"""The synthesis grid as typed config: which axes are swept and over which ranges (in degrees).

Axes (`grid = "pitch,yaw,view"`, `--grid pitch,yaw,view`):
    pitch, yaw   the target gaze in the head frame (gazegen/geometry.py), swept over a range;
                 an axis not named keeps the source's gaze (0 when the source's gaze is unknown)
    view         the camera orbits the head: (pitch, yaw) offsets added to the source's head
                 pose; not named: the source camera only
Ranges are `start:stop:count` in degrees, both ends included (`-30:30:5` -> -30, -15, 0, 15, 30),
parsed and checked when the config is loaded (a bad one is a ConfigError naming its key). Refused
too, since each would quietly repeat or drop rows: an axis named twice (`view,view`), a range whose
values repeat (`0:0:2`), and (``load_synth_config``) a range typed on the command line for an axis
the grid does not sweep.
Everything downstream is radians: ``AxisRange`` is the one place degrees become radians.

Bounds: a pitch (gaze pitch, view pitch, and a source's head pitch plus its view offsets) must
stay inside (-90, 90) degrees: past the pole a (pitch, yaw) pair names another rotation, and the
stored head pose would no longer match the camera. Yaws are bounded to [-180, 180] in the grid,
and a rendered head yaw (source yaw + offset) is wrapped into [-180, 180) (pipelines/grid.py).
How a grid becomes rows (full product or ``sample`` random pairs) is pipelines/grid.py's concern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

AXES = ("pitch", "yaw", "view")
MAX_PITCH_DEG = 90.0  # exclusive: |pitch| < 90
MAX_YAW_DEG = 180.0  # inclusive


def _number(value: float) -> str:
    """A degree value as written in a range: ``-30``, ``7.5`` (exact: repr, without a trailing ``.0``)."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class AxisRange:
    """`start:stop:count` degrees, start <= stop, both ends included; ``count`` 1 exactly when start == stop
    (values that repeat would make rows that repeat).

    Subclasses bound the ends (``LIMIT_DEG``, ``INCLUSIVE``); the loader builds them from the
    text with ``from_text`` and turns a ValueError into a ConfigError naming the key.
    """

    start_deg: float
    stop_deg: float
    count: int

    LIMIT_DEG: ClassVar[float] = math.inf
    INCLUSIVE: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.count < 1 or (self.count == 1 and self.start_deg != self.stop_deg):
            raise ValueError(f"{self}: count must be >= 1 (1 only when start == stop)")
        worst = max(abs(self.start_deg), abs(self.stop_deg))  # the range first: 1e400 reads as inf, past any order
        if not math.isfinite(worst) or worst > self.LIMIT_DEG or (worst == self.LIMIT_DEG and not self.INCLUSIVE):
            bound = f"[-{self.LIMIT_DEG:g}, {self.LIMIT_DEG:g}]" if self.INCLUSIVE else f"(-{self.LIMIT_DEG:g}, {self.LIMIT_DEG:g})"
            raise ValueError(f"{self}: degrees must lie in {bound}")
        if self.start_deg > self.stop_deg:
            raise ValueError(f"{self}: start must not exceed stop")
        if self.count > 1 and np.unique(np.linspace(self.start_deg, self.stop_deg, self.count)).size < self.count:
            raise ValueError(f"{self}: its {self.count} values repeat, which would render the same rows again (one value: start:start:1)")

    @classmethod
    def from_text(cls, text: str) -> AxisRange:
        """``"start:stop:count"`` -> a checked range; ValueError when it is not one."""
        parts = text.split(":")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except (ValueError, IndexError):
            raise ValueError(f"{text!r}: expected start:stop:count in degrees, e.g. -30:30:5") from None
        if len(parts) != 3:
            raise ValueError(f"{text!r}: expected start:stop:count in degrees, e.g. -30:30:5")
        return cls(start, stop, count)

    def __str__(self) -> str:
        return f"{_number(self.start_deg)}:{_number(self.stop_deg)}:{self.count}"

    @staticmethod
    def _radians(degrees: np.ndarray | float) -> np.ndarray:
        """The one conversion of the grid's degrees to radians."""
        return np.radians(degrees)

    def values(self) -> np.ndarray:
        """(count,) radians, both ends included."""
        return self._radians(np.linspace(self.start_deg, self.stop_deg, self.count))

    def bounds(self) -> tuple[float, float]:
        """(start, stop) in radians."""
        start, stop = self._radians(np.array([self.start_deg, self.stop_deg]))
        return float(start), float(stop)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n,) radians drawn uniformly between the ends (drawn in degrees, then converted)."""
        return self._radians(rng.uniform(self.start_deg, self.stop_deg, n))


@dataclass(frozen=True)
class PitchRange(AxisRange):
    """A pitch range: both ends inside (-90, 90) degrees."""

    LIMIT_DEG: ClassVar[float] = MAX_PITCH_DEG
    INCLUSIVE: ClassVar[bool] = False


@dataclass(frozen=True)
class YawRange(AxisRange):
    """A yaw range: both ends inside [-180, 180] degrees."""

    LIMIT_DEG: ClassVar[float] = MAX_YAW_DEG
    INCLUSIVE: ClassVar[bool] = True


@dataclass(frozen=True)
class GridAxes:
    """The swept axes, a non-empty subset of ``AXES``, each named once (``"pitch,yaw,view"`` in a config)."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.names or any(a not in AXES for a in self.names):
            raise ValueError(f"{','.join(self.names)!r}: axes must be a comma list of {', '.join(AXES)}")
        repeated = sorted({a for a in self.names if self.names.count(a) > 1})
        if repeated:
            raise ValueError(f"{','.join(self.names)!r}: {', '.join(repeated)} named more than once (each axis at most once)")

    @classmethod
    def from_text(cls, text: str) -> GridAxes:
        return cls(tuple(a.strip() for a in text.split(",") if a.strip()))

    def __contains__(self, axis: object) -> bool:
        return axis in self.names

    def __str__(self) -> str:
        return ",".join(self.names)


@dataclass(frozen=True)
class GridSpec:
    """The whole grid of a run: its axes, their ranges and how rows are drawn from them
    (SynthConfig.grid_spec; its defaults are SynthConfig's)."""

    axes: GridAxes
    pitch: PitchRange  # gaze pitch in the head frame
    yaw: YawRange  # gaze yaw in the head frame
    view_pitch: PitchRange  # camera offset added to the source's head pitch
    view_yaw: YawRange  # camera offset added to the source's head yaw
    sample: int = 0  # 0: the full grid; N > 0: N random (gaze, view) pairs per source
    seed: int = 0  # seeds the sampled draws

    def __post_init__(self) -> None:
        if self.sample < 0:
            raise ValueError(f"sample {self.sample}: must be >= 0")

    def view_pitch_bounds(self) -> tuple[float, float]:
        """(lowest, highest) view pitch offset in radians ((0, 0) when views are not swept)."""
        return self.view_pitch.bounds() if "view" in self.axes else (0.0, 0.0)


__all__ = ["AXES", "MAX_PITCH_DEG", "MAX_YAW_DEG", "AxisRange", "GridAxes", "GridSpec", "PitchRange", "YawRange"]
