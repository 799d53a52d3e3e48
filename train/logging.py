"""What a training run writes besides checkpoints: JSONL records, TensorBoard events, PNG figures.

    RUN/log.jsonl          one JSON object per line: {"step", "split": "train" | "val" | "event", ...}
    RUN/tensorboard/       the same scalars (when the `tensorboard` package is installed)
    RUN/loss_curve.png     training loss terms and validation metrics against the step
    RUN/val/step_NNNNNNN.png  validation grid: source, target, prediction, depth, depth prior

Only the main process of a run logs. A resumed run keeps the records up to its checkpoint's step
and drops later ones (written by the interrupted run after its last checkpoint), so the log reads
as one run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.image import imsave

log = logging.getLogger("gazegen.train")

LOG_FILE = "log.jsonl"
CURVE_FILE = "loss_curve.png"


def read_log(run: Path) -> list[dict[str, Any]]:
    """The records of ``run/log.jsonl`` (a torn last line, from a killed process, is skipped)."""
    path = Path(run) / LOG_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class RunLog:
    """JSONL + TensorBoard + figures for one run; every method is a no-op when ``enabled`` is False."""

    def __init__(self, run: Path, *, enabled: bool = True, tensorboard: bool = True, resume_step: int | None = None):
        self.run, self.enabled = Path(run), enabled
        self._tb = None
        if not enabled:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        path = self.run / LOG_FILE
        if resume_step is not None:  # keep the history up to the checkpoint, drop what came after it
            kept = [r for r in read_log(self.run) if r.get("step", 0) <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif path.exists():
            path.unlink()
        self._file = path.open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # torch raises ImportError when the tensorboard package is absent
                log.warning("TensorBoard logs skipped: the `tensorboard` package is not installed (pip install tensorboard)")
            else:
                self._tb = SummaryWriter(str(self.run / "tensorboard"), purge_step=resume_step)

    def record(self, step: int, split: str, values: dict[str, Any]) -> None:
        """One JSONL record; numeric values also go to TensorBoard as ``split/name``."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
        self._file.write(json.dumps({"step": step, "split": split, "time": round(time.time(), 3), **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{split}/{key}", value, step)

    def event(self, step: int, message: str, **extra: Any) -> None:
        """A line in the Python log and an ``event`` record."""
        log.info(message)
        self.record(step, "event", {"message": message, **extra})

    def image(self, step: int, tag: str, image: np.ndarray) -> Path | None:
        """Save a (H, W, 3) uint8 image as ``RUN/<tag>/step_NNNNNNN.png`` (and to TensorBoard)."""
        if not self.enabled:
            return None
        path = self.run / tag / f"step_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        imsave(path, image)
        if self._tb is not None:
            self._tb.add_image(tag, torch.from_numpy(image).permute(2, 0, 1), step)
        return path

    def loss_curve(self) -> Path | None:
        """Plot the run's history (from log.jsonl) to loss_curve.png."""
        if not self.enabled:
            return None
        self._file.flush()
        return plot_loss_curve(read_log(self.run), self.run / CURVE_FILE)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def plot_loss_curve(records: list[dict[str, Any]], path: Path) -> Path:
    """Training loss terms (log scale) beside validation eye PSNR and depth error, against the step."""
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    fig = Figure(figsize=(11, 4))  # object API: savefig draws on an Agg canvas, no pyplot state
    ax_loss, ax_val = fig.subplots(1, 2)
    for key in ("loss/total", "loss/reconstruction", "loss/depth", "loss/perceptual"):
        points = [(r["step"], r[key]) for r in train if isinstance(r.get(key), (int, float)) and r[key] > 0]
        if points:
            ax_loss.plot(*zip(*points), label=key.removeprefix("loss/"))
    for r_key, label in (("loss/total", "val total"),):
        points = [(r["step"], r[r_key]) for r in val if isinstance(r.get(r_key), (int, float)) and r[r_key] > 0]
        if points:
            ax_loss.plot(*zip(*points), "o--", label=label)
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    if ax_loss.get_legend_handles_labels()[0]:  # none before the first logged step (a run stopped early): no empty legend
        ax_loss.legend(fontsize=8)
    ax_depth = ax_val.twinx()
    for key, axis, style in (("psnr_eyes", ax_val, "o-"), ("psnr_face", ax_val, "s-"), ("depth_l1_mm", ax_depth, "^:")):
        points = [(r["step"], r[key]) for r in val if isinstance(r.get(key), (int, float))]
        if points:
            axis.plot(*zip(*points), style, label=key, color={"psnr_eyes": "C0", "psnr_face": "C1"}.get(key, "C2"))
    ax_val.set(xlabel="step", ylabel="PSNR (dB)", title="validation")
    ax_depth.set_ylabel("depth L1 (mm)")
    handles = ax_val.get_legend_handles_labels()[0] + ax_depth.get_legend_handles_labels()[0]
    if handles:
        ax_val.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper center", ncol=3,
                      bbox_to_anchor=(0.5, -0.15))  # below the axes: over the twin axes it hid the last points
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path
