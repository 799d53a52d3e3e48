"""The synthesis grid planned per source: which gazes and camera views each source is rendered under.

The grid itself (axes, `start:stop:count` degree ranges, their bounds, the conversion to radians)
is typed config: gazegen/config/grid.py. Here it becomes rows. The full grid of one source is
gazes x views: the model encodes the source once, redirects once per gaze and renders each gaze's
triplane for all views. `sample=N` instead draws N (gaze, view) pairs uniformly within the ranges,
from a generator seeded by (seed, source id), so a rerun draws the same pairs. An axis not swept
keeps the source's gaze (0 when unknown), or the source camera.

A rendered head pose is the source's plus a view offset: its pitch must stay inside (-90, 90)
degrees (``pose_problem``) and its yaw is wrapped into [-180, 180) (``rendered_poses``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from gazegen.config.grid import MAX_PITCH_DEG, GridSpec


def pose_problem(head_pose: np.ndarray, view_pitch: tuple[float, float]) -> str:
    """Why a source with ``head_pose`` (pitch, yaw radians) cannot be rendered under view pitch
    offsets in ``view_pitch`` (radians), or "" when it can."""
    pitch = float(head_pose[0])
    worst = max(abs(pitch + view_pitch[0]), abs(pitch + view_pitch[1]))
    if worst < np.radians(MAX_PITCH_DEG):
        return ""
    return (f"head pitch {np.degrees(pitch):.1f} deg plus view pitch offsets {np.degrees(view_pitch[0]):.1f}.."
            f"{np.degrees(view_pitch[1]):.1f} deg reaches {np.degrees(worst):.1f} deg (|pitch| must stay < {MAX_PITCH_DEG:g})")  # fmt: skip


def turns_views(spec: GridSpec) -> bool:
    """Whether the grid renders views turned from the source's camera (a non-zero view offset)."""
    return "view" in spec.axes and any(b != 0.0 for b in (*spec.view_pitch.bounds(), *spec.view_yaw.bounds()))


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
        pitch = spec.pitch.draw(rng, n) if "pitch" in spec.axes else np.full(n, base[0])
        yaw = spec.yaw.draw(rng, n) if "yaw" in spec.axes else np.full(n, base[1])
        view = "view" in spec.axes
        view_pitch = spec.view_pitch.draw(rng, n) if view else np.zeros(n)
        view_yaw = spec.view_yaw.draw(rng, n) if view else np.zeros(n)
        pairs = np.stack([np.arange(n), np.arange(n)], -1)
        return SourcePlan(gazes=np.stack([pitch, yaw], -1), views=np.stack([view_pitch, view_yaw], -1), pairs=pairs)
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
    """Output rows of every source: the length of a plan's rows, the same for every source (a
    sample draws ``sample`` pairs, a full grid is the product of its axes whatever the source's gaze)."""
    return len(plan_source(spec, "", None).pairs)
