"""The label distribution of synthesis shards as one PNG: what a user sees before training on them.

Six panels, degrees: gaze pitch and yaw (camera frame: what an estimator learns), gaze yaw x
pitch (2D), head pose pitch and yaw (camera frame), and the camera views (view offset yaw x pitch,
the camera turned from the source's camera). Only the label columns are read (pyarrow), never the
images. Drawn with matplotlib's object API (``Figure``), so no global backend is switched.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from gazegen.data.parquet import resolve_shards

LABELS = ("gaze", "head_pose", "gaze_head", "view_offset")


@dataclass(frozen=True)
class ShardLabels:
    """Labels of every row, in shard order: (N, 2) float32 (pitch, yaw) radians each."""

    gaze: np.ndarray
    head_pose: np.ndarray
    gaze_head: np.ndarray
    view_offset: np.ndarray
    row_id: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.row_id)


def read_labels(source: str | Sequence[str], filesystem: pafs.FileSystem | None = None) -> ShardLabels:
    """The label columns of the shards in ``source`` (a folder, glob, file(s) or URI; see ``resolve_shards``)."""
    fs, paths = resolve_shards(source, filesystem)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in LABELS}
    row_ids: list[str] = []
    for path in paths:
        with fs.open_input_file(path) as handle:
            table = pq.read_table(handle, columns=[*LABELS, "row_id"])
        for name in LABELS:
            values = table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            columns[name].append(values.astype(np.float32).reshape(-1, 2))
        row_ids += table["row_id"].to_pylist()
    arrays = {name: np.concatenate(parts) if parts else np.zeros((0, 2), np.float32) for name, parts in columns.items()}
    return ShardLabels(**arrays, row_id=tuple(row_ids))


def _hist(ax, values_deg: np.ndarray, title: str, colour: str) -> None:
    counts, edges = np.histogram(values_deg, bins=36)
    ax.stairs(counts, edges, fill=True, color=colour)  # one artist (``hist`` makes one patch per bar: 4x slower to draw)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("degrees", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    ax.tick_params(labelsize=7)


def _hist2d(fig: Figure, ax, pitchyaw_deg: np.ndarray, title: str) -> None:
    counts, xedges, yedges = np.histogram2d(pitchyaw_deg[:, 1], pitchyaw_deg[:, 0], bins=24)
    mesh = ax.pcolormesh(xedges, yedges, counts.T, cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="images")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("yaw (deg)", fontsize=8)
    ax.set_ylabel("pitch (deg)", fontsize=8)
    ax.tick_params(labelsize=7)


def label_figure(labels: ShardLabels, title: str = "") -> Figure:
    """The six panels of the module docstring, 12 x 7 inches."""
    if not len(labels):
        raise ValueError("no rows: nothing to plot")
    fig = Figure(figsize=(12, 7))  # a fixed layout: constrained layout took half of a run's final second
    axes = fig.subplots(2, 3, gridspec_kw={"left": 0.05, "right": 0.98, "bottom": 0.08, "top": 0.9, "wspace": 0.28, "hspace": 0.4})
    gaze, head, view = (np.degrees(a.astype(np.float64)) for a in (labels.gaze, labels.head_pose, labels.view_offset))
    _hist(axes[0, 0], gaze[:, 0], "gaze pitch (camera frame; + looks up)", "tab:red")
    _hist(axes[0, 1], gaze[:, 1], "gaze yaw (camera frame; + looks to the image's left)", "tab:red")
    _hist2d(fig, axes[0, 2], gaze, "gaze (camera frame)")
    _hist(axes[1, 0], head[:, 0], "head pitch (camera frame; + faces up)", "tab:blue")
    _hist(axes[1, 1], head[:, 1], "head yaw (camera frame; + faces the image's left)", "tab:blue")
    _hist2d(fig, axes[1, 2], view, "views: camera offset from the source's camera")
    fig.suptitle(title or f"label distribution of {len(labels)} images", fontsize=11)
    return fig


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes (Agg canvas, attached by ``savefig``; no pyplot state)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def write_label_histograms(source: str | Sequence[str], png: str | Path) -> Path:
    """``label_figure`` of the shards in ``source``, written to ``png``."""
    labels = read_labels(source)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(figure_png(label_figure(labels, f"label distribution of {len(labels)} images in {source}")))
    return png
