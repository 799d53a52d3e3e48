"""The synthesis grid: which gazes and camera views every source is rendered under.

Axes (`--grid pitch,yaw,view`):
    pitch, yaw   the target gaze in the head frame (gazegen/geometry.py), swept over a range;
                 an axis not named keeps the source's gaze (0 when the source's gaze is unknown)
    view         the camera orbits the head: (pitch, yaw) offsets added to the source's head
                 pose; not named: the source camera only
Ranges are `start:stop:count` in degrees, both ends included (`-30:30:5` -> -30, -15, 0, 15, 30).
Inside, everything is radians.

The full grid of one source is gazes x views: the model encodes the source once, redirects
once per gaze and renders each gaze's triplane for all views. `sample=N` instead draws N
(gaze, view) pairs uniformly within the ranges, from a generator seeded by (seed, source id),
so a rerun draws the same pairs.

Bounds: a pitch (gaze pitch, view pitch, and a source's head pitch plus its view offsets) must
stay inside (-90, 90) degrees: past the pole a (pitch, yaw) pair names another rotation, and the
stored head pose would no longer match the camera. Yaws are bounded to [-180, 180] in the grid,
and a rendered head yaw (source yaw + offset) is wrapped into [-180, 180).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

AXES = ("pitch", "yaw", "view")
MAX_PITCH_DEG = 90.0  # exclusive: |pitch| < 90
MAX_YAW_DEG = 180.0  # inclusive


@dataclass(frozen=True)
class AxisRange:
    start_deg: float
    stop_deg: float
    count: int

    @classmethod
    def parse(cls, text: str, name: str) -> AxisRange:
        parts = text.split(":")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except (ValueError, IndexError):
            raise ValueError(f"--{name} {text!r}: expected start:stop:count in degrees, e.g. -30:30:5") from None
        if len(parts) != 3 or count < 1 or (count == 1 and start != stop):
            raise ValueError(f"--{name} {text!r}: count must be >= 1 (1 only when start == stop)")
        return cls(start, stop, count)

    def check(self, name: str, limit: float, inclusive: bool) -> AxisRange:
        """Raises ValueError unless both ends lie within +-limit degrees; returns self."""
        worst = max(abs(self.start_deg), abs(self.stop_deg))
        if worst > limit or (worst == limit and not inclusive) or not np.isfinite(worst):
            bound = f"[-{limit:g}, {limit:g}]" if inclusive else f"(-{limit:g}, {limit:g})"
            raise ValueError(f"--{name} {self.start_deg:g}:{self.stop_deg:g}:{self.count}: degrees must lie in {bound}")
        return self

    def values(self) -> np.ndarray:
        """(count,) radians."""
        return np.radians(np.linspace(self.start_deg, self.stop_deg, self.count))


@dataclass(frozen=True)
class GridSpec:
    axes: tuple[str, ...]  # the swept axes, a subset of AXES
    pitch: AxisRange
    yaw: AxisRange
    view_pitch: AxisRange
    view_yaw: AxisRange
    sample: int = 0  # 0: the full grid; N > 0: N random (gaze, view) pairs per source
    seed: int = 0

    @classmethod
    def parse(cls, axes: str, pitch: str, yaw: str, view_pitch: str, view_yaw: str, sample: int = 0, seed: int = 0) -> GridSpec:
        names = tuple(a.strip() for a in axes.split(",") if a.strip())
        unknown = [a for a in names if a not in AXES]
        if unknown or not names:
            raise ValueError(f"--grid {axes!r}: axes must be a comma list of {', '.join(AXES)}")
        if sample < 0:
            raise ValueError(f"--sample {sample}: must be >= 0")
        return cls(
            axes=names, pitch=AxisRange.parse(pitch, "pitch").check("pitch", MAX_PITCH_DEG, False),
            yaw=AxisRange.parse(yaw, "yaw").check("yaw", MAX_YAW_DEG, True),
            view_pitch=AxisRange.parse(view_pitch, "view-pitch").check("view-pitch", MAX_PITCH_DEG, False),
            view_yaw=AxisRange.parse(view_yaw, "view-yaw").check("view-yaw", MAX_YAW_DEG, True),
            sample=sample, seed=seed,
        )  # fmt: skip

    def view_pitch_bounds(self) -> tuple[float, float]:
        """(lowest, highest) view pitch offset in radians ((0, 0) when views are not swept)."""
        if "view" not in self.axes:
            return 0.0, 0.0
        ends = np.radians([self.view_pitch.start_deg, self.view_pitch.stop_deg])
        return float(ends.min()), float(ends.max())


def pose_problem(head_pose: np.ndarray, view_pitch: tuple[float, float]) -> str:
    """Why a source with ``head_pose`` (pitch, yaw radians) cannot be rendered under view pitch
    offsets in ``view_pitch`` (radians), or "" when it can."""
    pitch = float(head_pose[0])
    worst = max(abs(pitch + view_pitch[0]), abs(pitch + view_pitch[1]))
    if worst < np.radians(MAX_PITCH_DEG):
        return ""
    return (f"head pitch {np.degrees(pitch):.1f} deg plus view pitch offsets {np.degrees(view_pitch[0]):.1f}.."
            f"{np.degrees(view_pitch[1]):.1f} deg reaches {np.degrees(worst):.1f} deg (|pitch| must stay < {MAX_PITCH_DEG:g})")  # fmt: skip


def rendered_poses(head_pose: np.ndarray, views: np.ndarray) -> np.ndarray:
    """(2,) source head pose + (V, 2) view offsets -> (V, 2) rendered head poses, yaw wrapped into [-pi, pi)."""
    poses = np.asarray(head_pose, np.float64)[None] + views  # (V, 2)
    poses[:, 1] = (poses[:, 1] + np.pi) % (2 * np.pi) - np.pi
    return poses


@dataclass(frozen=True)
class SourcePlan:
    """What to render for one source. Full grid: every gaze with every view; sampled: pairs."""

    gazes: np.ndarray  # (G, 2) gaze_head pitch/yaw radians
    views: np.ndarray  # (V, 2) head-pose offsets pitch/yaw radians
    pairs: np.ndarray  # (R, 2) int (gaze index, view index) of each output row, in row order


def _source_rng(seed: int, source_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{source_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def plan_source(spec: GridSpec, source_id: str, source_gaze_head: np.ndarray | None) -> SourcePlan:
    """The gazes, views and output rows of one source (gaze-major: all views of gaze 0 first)."""
    base = np.zeros(2) if source_gaze_head is None else np.asarray(source_gaze_head, dtype=np.float64)
    if spec.sample:
        rng = _source_rng(spec.seed, source_id)
        n = spec.sample

        def draw(axis: AxisRange, swept: bool, default: float) -> np.ndarray:
            if not swept:
                return np.full(n, default)
            return np.radians(rng.uniform(min(axis.start_deg, axis.stop_deg), max(axis.start_deg, axis.stop_deg), n))

        gazes = np.stack([draw(spec.pitch, "pitch" in spec.axes, base[0]), draw(spec.yaw, "yaw" in spec.axes, base[1])], -1)
        view = "view" in spec.axes
        views = np.stack([draw(spec.view_pitch, view, 0.0), draw(spec.view_yaw, view, 0.0)], -1)
        pairs = np.stack([np.arange(n), np.arange(n)], -1)
        return SourcePlan(gazes=gazes, views=views, pairs=pairs)
    pitches = spec.pitch.values() if "pitch" in spec.axes else base[:1]
    yaws = spec.yaw.values() if "yaw" in spec.axes else base[1:]
    gazes = np.stack(np.meshgrid(pitches, yaws, indexing="ij"), -1).reshape(-1, 2)
    if "view" in spec.axes:
        views = np.stack(np.meshgrid(spec.view_pitch.values(), spec.view_yaw.values(), indexing="ij"), -1).reshape(-1, 2)
    else:
        views = np.zeros((1, 2))
    pairs = np.stack(np.meshgrid(np.arange(len(gazes)), np.arange(len(views)), indexing="ij"), -1).reshape(-1, 2)
    return SourcePlan(gazes=gazes, views=views, pairs=pairs)


def rows_per_source(spec: GridSpec) -> int:
    """Output rows of every source (the same for all sources)."""
    if spec.sample:
        return spec.sample
    gazes = (spec.pitch.count if "pitch" in spec.axes else 1) * (spec.yaw.count if "yaw" in spec.axes else 1)
    views = spec.view_pitch.count * spec.view_yaw.count if "view" in spec.axes else 1
    return gazes * views

