"""Results of `gazegen evaluate` and how they are written: report.json, report.md, sheet.png and sweep.png.

report.md holds a table in the shape of the paper's Table 1, with the paper's published rows
beside ours. Those rows are quoted exactly from the paper (section 4.2, Table 1): they were
measured on ETH-XGaze's personalised test set, times on one NVIDIA 3090; ours are measured on
the data and device the report names, so the two sets of rows compare like for like only when
the data is ETH-XGaze and the device a comparable GPU. The paper reports no gaze or head error.

A value that is not a number (NaN, from a model whose weights are) is null in report.json and "nan"
in report.md. The files are written whole or not at all (``write_report``): an interrupted run leaves
no report.md, and so no report that looks complete.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gazegen.config import EvaluateConfig, to_dict
from gazegen.data.images import from_model_range, resize_area
from gazegen.data.sample import Sample
from gazegen.metrics.scores import FIDMetric, LPIPSMetric, frechet_distance, gaussian_stats
from gazegen.evaluation.probes import ProbeReport, pearson
from gazegen.evaluation.pupils import PupilFollowing

IMAGE_KEYS = ("ssim", "psnr", "lpips")
GAZE_KEYS = ("gaze_error", "head_error", "gaze_error_vs_estimate", "head_error_vs_estimate")
TIME_KEYS = ("encode_ms", "render_ms", "total_ms")
QUOTED = "quoted from the paper, ETH-XGaze"
# The files `gazegen evaluate` writes in its --out, in the order they are put in place: report.md, which names the others, last.
REPORT_FILES = ("sheet.png", "sweep.png", "report.json", "report.md")

# The paper's Table 1, verbatim: method, 3D-based, SSIM, PSNR, LPIPS, FID, Enc Time, Rend Time, Total Time.
PAPER_TABLE1: tuple[tuple[str, bool, str, str, str, str, str, str, str], ...] = (
    ("ST-ED [49]", False, "0.726", "17.530", "0.300", "115.020", "-", "-", "-"),
    ("HeadNeRF [15]", True, "0.720", "15.298", "0.294", "69.487", "60s", "0.058s", "60.058s"),
    ("GazeNeRF [33]", True, "0.733", "15.453", "0.291", "81.816", "60s", "0.060s", "60.060s"),
    ("LiveGaze (paper's \"Ours\")", True, "0.715", "19.007", "0.272", "38.346", "0.026s", "0.035s", "0.061s"),
)


def _mean(values: list[float] | None) -> float | None:
    return float(np.mean(values)) if values else None


@dataclass
class SubjectScores:
    """One method on one subject: per-image means (degrees, dB, milliseconds per image)."""

    subject: str
    pairs: int
    ssim: float | None = None
    psnr: float | None = None
    psnr_capped: int = 0  # images whose PSNR was inf (identical) and is counted as the cap
    lpips: float | None = None
    fid: float | None = None
    gaze_error: float | None = None
    head_error: float | None = None
    gaze_error_vs_estimate: float | None = None
    head_error_vs_estimate: float | None = None
    encode_ms: float | None = None
    render_ms: float | None = None
    total_ms: float | None = None

    @classmethod
    def of(cls, subject: str, values: dict[str, list[float]], fid: FIDMetric, capped: int,
           pairs: int | None = None) -> SubjectScores:
        pairs = len(values.get("ssim", [])) if pairs is None else pairs
        means = {k: _mean(values.get(k)) for k in (*IMAGE_KEYS, *GAZE_KEYS, *TIME_KEYS)}
        return cls(subject, pairs, psnr_capped=capped, fid=fid.compute().value, **means)


@dataclass
class MethodResult:
    """One method over all subjects. ``mean``: the mean of the per-subject values, key by key."""

    name: str
    three_d: bool
    subjects: list[SubjectScores] = field(default_factory=list)
    mean: dict[str, float | None] = field(default_factory=dict)
    fid_pooled: float | None = None  # FID of all pairs pooled (less biased than per-subject FIDs)
    notes: dict[str, str] = field(default_factory=dict)  # why a metric is n/a, caps, ...
    fid_features: list[FIDMetric] = field(default_factory=list, repr=False)
    read: list[np.ndarray] = field(default_factory=list, repr=False)  # (b, 2) estimator gaze of each batch, in pair order

    def finish(self, fid: FIDMetric, lpips: LPIPSMetric, estimator_note: str, requested: np.ndarray | None = None) -> None:
        """Means over subjects; with ``requested`` (N, 2), the correlation of the read gaze with it, over all pairs."""
        keys = (*IMAGE_KEYS, "fid", *GAZE_KEYS, *TIME_KEYS)
        for key in keys:
            values = [getattr(s, key) for s in self.subjects if getattr(s, key) is not None]
            self.mean[key] = float(np.mean(values)) if values else None
        self.mean["pairs"] = sum(s.pairs for s in self.subjects)
        if lpips.model is None:
            self.notes["lpips"] = lpips.unavailable
        if fid.model is None:
            self.notes["fid"] = fid.unavailable
        else:
            feats = {k: [a for m in self.fid_features for a in m.features[k]] for k in ("real", "fake")}
            if min(sum(len(a) for a in v) for v in feats.values()) >= 2:
                stats = [gaussian_stats(np.concatenate(feats[k])) for k in ("real", "fake")]
                self.fid_pooled = frechet_distance(*stats)
            missing = [s.subject for s in self.subjects if s.fid is None]
            if missing:
                self.notes["fid"] = f"no per-subject FID for {len(missing)} subject(s) with < 2 pairs"
        if estimator_note:
            self.notes["gaze_error"] = estimator_note
        read = np.concatenate(self.read) if self.read else np.zeros((0, 2))
        ok = requested is not None and len(read) == len(requested) and len(read) > 1
        corr = [pearson(read[:, i], requested[:, i]) if ok else None for i in range(2)]
        self.mean["pitch_corr"], self.mean["yaw_corr"] = corr
        self.read = []
        capped = sum(s.psnr_capped for s in self.subjects)
        if capped:
            self.notes["psnr"] = f"{capped} of {self.mean['pairs']} images identical to their target: PSNR inf counted as the cap"
        self.fid_features = []

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "three_d": self.three_d, "mean": self.mean, "fid_pooled": self.fid_pooled,
                "notes": self.notes, "subjects": [asdict(s) for s in self.subjects]}


@dataclass(frozen=True)
class SheetRow:
    subject: str
    input: np.ndarray  # (S, S, 3) uint8
    target: np.ndarray
    output: np.ndarray
    depth: np.ndarray | None  # (R, R) float world units, NaN where transparent

    @classmethod
    def of(cls, subject: str, source: Sample, target: Sample, output: torch.Tensor, redirected: Any, k: int,
           size: int) -> SheetRow:
        out = from_model_range(output).permute(1, 2, 0).numpy()  # (S, S, 3) uint8
        depth = None
        if redirected.depth is not None:
            depth = redirected.depth[k, 0].double().numpy().copy()
            transparent = redirected.alpha[k, 0].numpy() < 0.5 if redirected.alpha is not None else None
            if transparent is not None and not transparent.all():  # an untrained model may be transparent everywhere
                depth[transparent] = np.nan
        return cls(subject, resize_area(source.image, size), resize_area(target.image, size), out, depth)


@dataclass
class EvaluationReport:
    methods: list[MethodResult]
    config: EvaluateConfig
    data: str
    device: str
    sheet: list[SheetRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probes: ProbeReport | None = None  # gaze sweep and swap test of the model (evaluation/probes.py)

    def method(self, name: str) -> MethodResult:
        return next(m for m in self.methods if m.name == name)

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "device": self.device, "config": to_dict(self.config), "notes": self.notes,
                "verdict": verdict(self), "probes": self.probes.to_json() if self.probes else None,
                "methods": [m.to_json() for m in self.methods],
                "paper_table1": {"source": QUOTED, "columns": ["method", "3d", "ssim", "psnr", "lpips", "fid",
                                                                "enc_time", "rend_time", "total_time"],
                                 "rows": [list(r) for r in PAPER_TABLE1]}}


# --------------------------------------------------------------------------- markdown


def _num(v: float | None, digits: int = 3, unit: str = "") -> str:
    """``v`` with ``digits`` decimals; "n/a" for None (not measured), "nan" and "inf" as they are."""
    if v is None:
        return "n/a"
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else "inf"
    return f"{v:.{digits}f}{unit}"


def _sig(v: float | None, digits: int = 3) -> str:
    """``v`` with ``digits`` significant digits (0.0000123 -> 1.23e-05, 0.0412 -> 0.0412); as ``_num`` otherwise."""
    return f"{v:.{digits}g}" if v is not None and math.isfinite(v) else _num(v)


def json_safe(value: Any) -> Any:
    """``value`` (JSON-able dicts, lists, numbers) with every float that is not finite (NaN, inf) as None: JSON has no
    such numbers, and a model with NaN weights measures NaN."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _seconds(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.4f}s"


def table1(report: EvaluationReport) -> list[str]:
    """The Table-1-shaped table: the paper's rows (quoted) then ours (measured)."""
    head = ("| Method | Source | 3D-based | SSIM ↑ | PSNR ↑ | LPIPS ↓ | FID ↓ | Gaze err ↓ | Head err ↓ "
            "| r pitch ↑ | r yaw ↑ | Enc Time ↓ | Rend Time ↓ | Total Time ↓ |")
    lines = [head, "|" + "---|" * 14]
    for name, three_d, *values in PAPER_TABLE1:
        ssim_, psnr_, lpips_, fid_, enc, rend, total = values
        lines.append(f"| {name} | {QUOTED} | {'✓' if three_d else '✗'} | {ssim_} | {psnr_} | {lpips_} | {fid_} "
                     f"| - | - | - | - | {enc} | {rend} | {total} |")
    for m in report.methods:
        a = m.mean
        lines.append(f"| {m.name} | measured: {report.data} ({report.device}) | {'✓' if m.three_d else '✗'} "
                     f"| {_num(a.get('ssim'))} | {_num(a.get('psnr'))} | {_num(a.get('lpips'))} | {_num(a.get('fid'))} "
                     f"| {_num(a.get('gaze_error'), 2, '°')} | {_num(a.get('head_error'), 2, '°')} "
                     f"| {_num(a.get('pitch_corr'), 2)} | {_num(a.get('yaw_corr'), 2)} "
                     f"| {_seconds(a.get('encode_ms'))} | {_seconds(a.get('render_ms'))} | {_seconds(a.get('total_ms'))} |")
    return lines


CONSTANT = "constant prediction (the other pairs' mean label, no image)"  # the method name of evaluate's baseline
FOLLOWS_R = 0.5  # below this correlation of read vs requested pitch or yaw, the gaze is said not to follow


def verdict(report: EvaluationReport) -> str | None:
    """One sentence on whether the model's outputs carry gaze, against the constant prediction; None without an estimator."""
    model = next((m for m in report.methods if m.three_d), None)
    constant = next((m for m in report.methods if m.name == CONSTANT), None)
    if model is None or constant is None or model.mean.get("gaze_error") is None:
        return None
    g, c = model.mean["gaze_error"], constant.mean["gaze_error"]
    r = [model.mean.get("pitch_corr"), model.mean.get("yaw_corr")]
    follows = ", ".join(f"r {axis} {_num(v, 2)}" for axis, v in zip(("pitch", "yaw"), r))
    if math.isnan(g):
        return f"NO GAZE: {model.name} has a gaze error of nan: its outputs are not numbers (NaN), so they carry no gaze."
    if g >= c:
        return (f"NO GAZE: {model.name} has a gaze error of {g:.1f}°, no better than the constant prediction's {c:.1f}°: "
                f"its outputs carry no usable gaze ({follows}).")
    if any(v is None or v < FOLLOWS_R for v in r):
        return (f"WEAK GAZE: {model.name} beats the constant prediction ({g:.1f}° vs {c:.1f}°) but its read gaze barely "
                f"follows the requested one ({follows}; {FOLLOWS_R} needed).")
    return f"GAZE FOLLOWS: {model.name}: gaze error {g:.1f}° against the constant prediction's {c:.1f}° ({follows})."


def subject_table(m: MethodResult) -> list[str]:
    cols = ("pairs", "ssim", "psnr", "lpips", "fid", "gaze_error", "head_error", "gaze_error_vs_estimate",
            "head_error_vs_estimate", "total_ms")
    lines = ["| subject | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    rows = [(s.subject, asdict(s)) for s in m.subjects] + [("**mean**", m.mean)]
    for name, v in rows:
        cells = [str(v["pairs"])] + [_num(v[c], 2 if c.endswith(("error", "estimate", "ms")) else 3) for c in cols[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def to_markdown(report: EvaluationReport) -> str:
    cfg = report.config
    pairs = report.methods[0].mean.get("pairs", 0) if report.methods else 0
    out = [
        "# gazegen evaluation",
        "",
        f"Data: `{report.data}`, split `{cfg.split}`, {len(report.methods[0].subjects) if report.methods else 0} "
        f"subject(s), {pairs} pairs; device `{report.device}`.",
        "",
        "Protocol (GazeNeRF's, as the LiveGaze supplement follows it): per subject, the input group is the first "
        f"{cfg.group_size} images in file order and the target group the next {cfg.group_size} (half each when "
        f"fewer); input i is redirected to the gaze and camera of target perm[i] (perm drawn from seed {cfg.seed}). "
        f"Image metrics at the output resolution, background outside the target's face mask: {cfg.background}. "
        "Gaze and head errors: the reference estimator on each output against the target's labels (degrees). "
        "Times per image; the paper's on an NVIDIA 3090, ours on the device above. SSIM and PSNR reward blur (and the "
        "filled background is shared by both images): a blurry average face can beat copy-the-source on them; the gaze "
        "and head errors and sheet.png show whether a face was redirected.",
        "",
        *[f"- {n}" for n in report.notes],
        "",
        "## Table 1 (the paper's shape)",
        "",
        *table1(report),
        "",
        *([f"**{verdict(report)}**", ""] if verdict(report) else []),
        f"Rows marked \"{QUOTED}\" are the paper's published numbers (its Table 1), not re-measured; "
        "the others are measured here. Means are over subjects.",
        "",
    ]
    shared = {k: v for k, v in report.methods[0].notes.items() if all(m.notes.get(k) == v for m in report.methods)}
    if shared:
        out += ["Notes for every row measured here:", "", *[f"- {k}: {v}" for k, v in shared.items()], ""]
    if report.probes is not None:
        out += probes_markdown(report.probes)
    for m in report.methods:
        notes = [f"- {k}: {v}" for k, v in m.notes.items() if k not in shared]
        pooled = f"- FID pooled over all pairs: {_num(m.fid_pooled)}" if m.fid_pooled is not None else ""
        out += [f"## {m.name}: per subject", "", *subject_table(m), "", *notes, *([pooled] if pooled else []), ""]
    return "\n".join(out)


def probes_markdown(p: ProbeReport) -> list[str]:
    sw, f, sp = p.sweep, p.sweep.following, p.swap
    ratio = _num(sw.rest_over_eyes, 3)
    return [
        "## Gaze sweep and swap test (evaluation/probes.py)", "",
        f"Gaze sweep: {sw.subjects} subject(s) x {sw.gazes} requested gazes, one source each, its own camera "
        "(sweep.png shows the first). The read gaze against the requested one: "
        f"r pitch {_num(f.pitch_corr, 2)}, r yaw {_num(f.yaw_corr, 2)}, mean error {_num(f.error_deg, 2, '°')}. "
        f"Output change across the sweep (mean |I - mean I|, [0, 1] images): eyes {_sig(sw.change_eyes)}, "
        f"rest of the face {_sig(sw.change_rest)}: rest / eyes = {ratio} (a gaze-only change is near 0).", "",
        *pupils_markdown(sw.pupils), "",
        f"Swap test ({sp.pairs} pairs): output change when the source image is swapped for another (another subject's when two or more are held out): eyes "
        f"{_sig(sp.source_eyes)}, rest {_sig(sp.source_rest)}; when the gaze is swapped: eyes {_sig(sp.gaze_eyes)}, rest "
        f"{_sig(sp.gaze_rest)}. The two source images differ by {_sig(sp.data_rest)} outside the eyes. A model that reads "
        "its source changes the rest when the source changes; one that obeys its gaze changes the eyes when the gaze does.",
        "",
    ]


def pupils_markdown(p: PupilFollowing) -> list[str]:
    direction = {None: "The direction in which the model moves the pupils in yaw could not be read (an r above is n/a).",
                 True: "The model moves the pupils in the data's direction in yaw.",
                 False: "The model moves the pupils OPPOSITE to the data's direction in yaw."}[p.same_direction]
    return [
        "Pupils, read without the estimator (evaluation/pupils.py: the darkness centroid of each eye region): "
        f"r(pupil x, requested yaw) {_num(p.model_yaw, 2)} and r(pupil y, requested pitch) {_num(p.model_pitch, 2)}; "
        f"on the subjects' own images from that camera {_num(p.data_yaw, 2)} and {_num(p.data_pitch, 2)}. " + direction
    ]


# --------------------------------------------------------------------------- sheet


def write_sweep_sheet(p: ProbeReport, path: Path) -> None:
    """sweep.png: the source, then the sweep's outputs on its pitch x yaw grid, each titled with its request."""
    from matplotlib.figure import Figure

    rows, cols = p.sweep_grid
    fig = Figure(figsize=(1.6 * (cols + 1), 1.6 * rows))
    axes = fig.subplots(rows, cols + 1, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    axes[0, 0].imshow(p.sweep_source)
    axes[0, 0].set_title("source", fontsize=8)
    for k, image in enumerate(p.sweep_images):
        r, c = divmod(k, cols)
        axes[r, c + 1].imshow(image)
        axes[r, c + 1].set_title(p.sweep_labels[k], fontsize=7)
    fig.suptitle("requested gaze (pitch, yaw) in the head frame: the eyes should follow, nothing else move", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_sheet(rows: list[SheetRow], path: Path) -> None:
    """sheet.png: one row per pair: input, target, output, depth (turbo colour map, blank where transparent)."""
    from matplotlib.figure import Figure

    n = max(1, len(rows))
    fig = Figure(figsize=(8, 2 * n))  # object API: savefig draws on an Agg canvas, no pyplot state
    axes = fig.subplots(n, 4, squeeze=False)
    for ax, title in zip(axes[0], ("input", "target", "output", "depth")):
        ax.set_title(title, fontsize=9)
    for r, row in enumerate(rows):
        axes[r, 0].set_ylabel(row.subject, fontsize=7)
        for c, image in enumerate((row.input, row.target, row.output)):
            axes[r, c].imshow(image)
        if row.depth is not None and np.isfinite(row.depth).any():
            axes[r, 3].imshow(row.depth, cmap="turbo")
        else:
            axes[r, 3].text(0.5, 0.5, "n/a", ha="center", va="center", transform=axes[r, 3].transAxes)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def staged_name(name: str) -> str:
    """The temporary name a report file is written under before it is put in place: sheet.png -> sheet.tmp.png."""
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}.tmp.{suffix}"


def report_files(report: EvaluationReport) -> list[str]:
    """The names of the files ``write_report`` writes for ``report``, in REPORT_FILES' order (sweep.png: with probes)."""
    return [name for name in REPORT_FILES if name != "sweep.png" or report.probes is not None]


def write_report(report: EvaluationReport, out: str | Path) -> list[Path]:
    """``report_files`` in ``out``, returned: each written under its ``staged_name``, then all renamed, report.md last.
    Interrupted or failed, the staged files are removed: ``out`` gets no report.md unless every file is in place."""
    out = Path(out)
    texts = {"report.json": json.dumps(json_safe(report.to_json()), indent=2, allow_nan=False) + "\n",
             "report.md": to_markdown(report) + "\n"}
    names = report_files(report)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name in names:
            staged = out / staged_name(name)
            if name in texts:
                staged.write_text(texts[name])
            elif name == "sheet.png":
                write_sheet(report.sheet, staged)
            else:
                write_sweep_sheet(report.probes, staged)
        for name in names:
            (out / staged_name(name)).replace(out / name)
    finally:
        for name in names:
            (out / staged_name(name)).unlink(missing_ok=True)
    return [out / name for name in names]
