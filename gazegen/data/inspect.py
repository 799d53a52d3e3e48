"""`gazegen data inspect PATH --sheet FILE.png`: what is in a store (or one h5 file), and what is wrong.

`inspect_store` lists subjects, images, frames, cameras and label ranges (in degrees) and
collects problems instead of stopping at the first: unreadable files, missing keys, wrong shapes
or row counts, NaN labels, labels in degrees, masks with values other than 0/255, repeated
(frame, camera) rows, a split file listing files that do not exist or missing files that do;
and, in our own stores, cameras that disagree with the head pose or ``face_gaze`` that disagrees
with ``pitchyaw_head`` (``gaze = R_head @ gaze_head``, gazegen/geometry.py) by more than
``TOLERANCE_DEG``.

`write_contact_sheet` draws one row per subject file: ``views`` images spread over its rows
(so over frames and cameras), each with its camera-frame gaze as a red arrow from the face
centre (the image centre, by normalisation), ``dx = -sin(yaw) cos(pitch)``, ``dy = -sin(pitch)``
(ETH-XGaze's ``draw_gaze``), and ``c<cam> f<frame>`` below it.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gazegen import geometry
from gazegen.data.h5_layout import MASKS, STORE
from gazegen.data.images import resize_area
from gazegen.data.prepare import find_subject_files
from gazegen.data.xgaze import DataError, SubjectReader, open_subject
from gazegen.errors import first_line

TOLERANCE_DEG = 1.0  # largest accepted disagreement between redundant labels of a store
ARROW_BGR = (0, 0, 255)  # red
TEXT_BGR = (255, 255, 255)
TITLE_BGR = (0, 255, 255)  # yellow


def _range_deg(values: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """((pitch min, max), (yaw min, max)) in degrees, NaN rows ignored."""
    deg = np.rad2deg(values[np.isfinite(values).all(axis=1)])
    if not len(deg):
        return (np.nan, np.nan), (np.nan, np.nan)
    return (float(deg[:, 0].min()), float(deg[:, 0].max())), (float(deg[:, 1].min()), float(deg[:, 1].max()))


@dataclass(frozen=True)
class SubjectSummary:
    """One subject file. Ranges are ((pitch min, max), (yaw min, max)) in degrees."""

    subject: str
    path: Path
    split: str
    format: str
    images: int
    frames: int
    cameras: int
    resolution: int
    masks: tuple[str, ...]
    gaze_deg: tuple[tuple[float, float], tuple[float, float]]
    head_pose_deg: tuple[tuple[float, float], tuple[float, float]]
    gaze_head_deg: tuple[tuple[float, float], tuple[float, float]]

    def line(self) -> str:
        def r(x):
            return f"pitch {x[0][0]:+.1f}..{x[0][1]:+.1f} yaw {x[1][0]:+.1f}..{x[1][1]:+.1f}"

        masks = ",".join(self.masks) or "none"
        return (f"  {self.split}/{self.subject} [{self.format}, {self.resolution} px]: {self.images} images, "
                f"{self.frames} frames, {self.cameras} cameras, masks {masks}\n"
                f"    gaze {r(self.gaze_deg)} | head {r(self.head_pose_deg)} | gaze_head {r(self.gaze_head_deg)} (deg)")


@dataclass(frozen=True)
class InspectReport:
    path: Path
    subjects: tuple[SubjectSummary, ...]
    problems: tuple[str, ...]

    @property
    def images(self) -> int:
        return sum(s.images for s in self.subjects)

    def summary(self) -> str:
        lines = [f"{self.path}: {len(self.subjects)} subject file(s), {self.images} images"]
        lines += [s.line() for s in self.subjects]
        lines.append(f"{len(self.problems)} problem(s)" + (":" if self.problems else ""))
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _mask_problems(reader: SubjectReader, chunk: int = 32) -> list[str]:
    """Masks must hold only 0 and 255 (GazeNeRF's and our stores' convention)."""
    problems = []
    for key in (k for k in MASKS if k in reader.keys):
        ds, bad = reader.dataset(key), 0
        for start in range(0, ds.shape[0], chunk):
            block = ds[start:start + chunk]
            bad += int(((block != 0) & (block != 255)).any(axis=(1, 2)).sum())
        if bad:
            problems.append(f"{reader.path}: key '{key}' has values other than 0/255 in {bad} of {ds.shape[0]} masks")
    return problems


def _consistency_problems(reader: SubjectReader) -> list[str]:
    """Repeated (frame, camera) rows; in stores, labels that disagree with each other."""
    lab, path, problems = reader.labels, reader.path, []
    pairs = np.stack([lab.frame_index, lab.cam_index], 1)
    repeated = len(pairs) - len(np.unique(pairs, axis=0))
    if repeated:
        problems.append(f"{path}: keys 'frame_index'/'cam_index' repeat a (frame, camera) pair in {repeated} rows")
    if reader.format != STORE:
        return problems
    ok = np.isfinite(lab.gaze).all(1) & np.isfinite(lab.gaze_head).all(1) & np.isfinite(lab.head_pose).all(1)
    ok &= np.isfinite(lab.camera).all(1)
    head = lab.head_pose[ok].astype(np.float64)
    checks = {  # (keys, the relation expected between them) -> angular error per row
        ("'camera' vs 'face_head_pose'", "the camera looks at the head from its head pose"): geometry.angular_error(
            geometry.camera_to_head_pose(lab.camera[ok].astype(np.float64)), head),
        ("'face_gaze' vs 'pitchyaw_head'", "gaze = R_head(head_pose) @ gaze_head"): geometry.angular_error(
            geometry.gaze_head_to_camera(lab.gaze_head[ok].astype(np.float64), geometry.head_pose_to_rotation(head)),
            lab.gaze[ok].astype(np.float64)),
    }
    for (what, relation), err in checks.items():
        if len(err) and err.max() > TOLERANCE_DEG:
            rows = np.flatnonzero(ok)[err > TOLERANCE_DEG]
            problems.append(f"{path}: keys {what} disagree by up to {err.max():.2f} deg in {len(rows)} rows "
                            f"(rows {rows[:8].tolist()}; {relation} expected)")
    return problems


def shown_split(path: Path, split: str, file: Path) -> str:
    """The split a subject file is shown under: its store's; for one file given alone (whose store is unknown) the
    folder it lies in when that names a split (``test/subject0002.h5``), else the file's own name."""
    if not path.is_file():
        return split
    return file.parent.name if file.parent.name in ("train", "test") else file.name


def refuse_shards(path: Path) -> None:
    """DataError for synthesis Parquet shards (one, or a folder holding them and no h5), which `data sheet` reads."""
    shards = path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet")) and not any(path.glob("**/*.h5")))
    if shards:
        raise DataError(f"{path}: Parquet shards, not an h5 store: `gazegen data sheet {path} sheet.png` draws "
                        "synthesis output")


def inspect_store(path: str | Path) -> InspectReport:
    """Summaries and problems of a store folder or one h5 file (DataError only if there is nothing to read)."""
    path = Path(path)
    refuse_shards(path)
    found = find_subject_files(path)
    problems = list(found.problems)
    problems += [f"{p}: h5 file present but not listed in the split file" for p in found.unlisted]
    if path.is_dir() and not (path / "train_test_split.json").is_file() and found.files:
        problems.append(f"{path}: no train_test_split.json (the ETH-XGaze loaders need it)")
    if not found.files and not found.problems:
        raise DataError(f"{path}: no .h5 subject files found")
    subjects = []
    for split, file in found.files:
        try:
            reader = open_subject(file, strict=False)
        except DataError as e:
            problems.append(str(e))
            continue
        with reader:
            problems += reader.problems + _mask_problems(reader) + _consistency_problems(reader)
            lab = reader.labels
            subjects.append(SubjectSummary(
                subject=reader.subject, path=file, split=shown_split(path, split, file), format=reader.format, images=len(reader),
                frames=len(np.unique(lab.frame_index)), cameras=len(np.unique(lab.cam_index)),
                resolution=reader.resolution, masks=tuple(k for k in MASKS if k in reader.keys),
                gaze_deg=_range_deg(lab.gaze), head_pose_deg=_range_deg(lab.head_pose),
                gaze_head_deg=_range_deg(lab.gaze_head),
            ))
    return InspectReport(path, tuple(subjects), tuple(problems))


def draw_gaze(image_bgr: np.ndarray, gaze: np.ndarray, centre: tuple[float, float], length: float,
              color: tuple[int, int, int] = ARROW_BGR, thickness: int = 2) -> np.ndarray:
    """Draw camera-frame gaze (pitch, yaw) as an arrow from ``centre`` (x, y) on ``image_bgr`` in place."""
    pitch, yaw = float(gaze[0]), float(gaze[1])
    if not (np.isfinite(pitch) and np.isfinite(yaw)):
        return image_bgr
    dx, dy = -length * np.sin(yaw) * np.cos(pitch), -length * np.sin(pitch)
    start = (int(round(centre[0])), int(round(centre[1])))
    end = (int(round(centre[0] + dx)), int(round(centre[1] + dy)))
    cv2.arrowedLine(image_bgr, start, end, color, thickness, cv2.LINE_AA, tipLength=0.25)
    return image_bgr


def _tile(reader: SubjectReader, row: int, thumb: int) -> np.ndarray:
    sample = reader[row]
    tile = resize_area(cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), thumb)
    draw_gaze(tile, sample.gaze, (thumb / 2, thumb / 2), 0.4 * thumb)
    cv2.putText(tile, f"c{sample.cam_index} f{sample.frame_index}", (3, thumb - 4), cv2.FONT_HERSHEY_SIMPLEX,
                max(0.25, thumb / 400), TEXT_BGR, 1, cv2.LINE_AA)
    return tile


def write_contact_sheet(path: str | Path, sheet_png: str | Path, *, views: int = 8, thumb: int = 128,
                        max_subjects: int | None = None) -> Path:
    """A PNG of ``len(subjects) * thumb`` by ``views * thumb`` pixels: a row per subject file.

    Files that cannot be opened get a row with the error's first words instead of images.
    """
    refuse_shards(Path(path))
    found = find_subject_files(path)
    files = found.files[:max_subjects] if max_subjects else found.files
    if not files:
        raise DataError(f"{path}: no .h5 subject files found")
    sheet = np.zeros((len(files) * thumb, views * thumb, 3), np.uint8)
    for r, (split, file) in enumerate(files):
        band = sheet[r * thumb:(r + 1) * thumb]
        try:
            with open_subject(file, strict=False) as reader:
                rows = np.unique(np.linspace(0, len(reader) - 1, views).round().astype(int))
                for c, row in enumerate(rows):
                    band[:, c * thumb:(c + 1) * thumb] = _tile(reader, int(row), thumb)
                title = f"{shown_split(Path(path), split, file)}/{reader.subject}"
        except (DataError, OSError, KeyError) as e:
            title = f"{file.name}: {first_line(e)}"[:120]  # the start says what is wrong
        cv2.putText(band, title, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, TITLE_BGR, 1, cv2.LINE_AA)
    sheet_png = Path(sheet_png)
    sheet_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(sheet_png), sheet):
        raise OSError(f"{sheet_png}: OpenCV could not write the PNG")
    return sheet_png


CAPTION_PX = 9  # a shard sheet tile's caption size


@functools.cache
def caption_font() -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib ships: file names in Latin, Greek or Cyrillic letters draw as they are (OpenCV's
    Hershey fonts and Pillow's default font draw only ASCII)."""
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), CAPTION_PX)


def draw_captions(tile: np.ndarray, lines: tuple[str, ...], colour_bgr: tuple[int, int, int]) -> np.ndarray:
    """``tile`` (H, W, 3) uint8 BGR with ``lines`` written at its foot, the last line lowest."""
    picture = Image.fromarray(np.ascontiguousarray(tile[..., ::-1]))
    pen = ImageDraw.Draw(picture)
    for k, line in enumerate(lines):
        pen.text((2, tile.shape[0] - 3 - 10 * (len(lines) - k)), line, font=caption_font(), fill=colour_bgr[::-1])
    return np.asarray(picture)[..., ::-1].copy()


def fit_caption(text: str, width: int) -> str:
    """``text``, or when it is wider than ``width`` pixels its start and end around "..": a tile's source id
    keeps the start of its file name and its end (suffix, ``#row``), which tell sources apart."""
    def fits(candidate: str) -> bool:
        return caption_font().getlength(candidate) <= width

    for keep in range(len(text), 0, -1):
        head, tail = text[:(keep + 1) // 2], text[len(text) - keep // 2:]
        candidate = text if keep == len(text) else f"{head}..{tail}"
        if fits(candidate):
            return candidate
    return ""


SHEET_COLUMNS = ["image", "gaze", "source_id", "gaze_index", "view_index"]  # what a contact-sheet tile shows


def write_shard_sheet(source: str | Path, sheet_png: str | Path, *, rows: int = 27, columns: int = 9, thumb: int = 128) -> Path:
    """A contact sheet of ``rows`` rows of synthesis Parquet shards, read back with pyarrow, spread evenly over the
    whole run in shard order (rows 0, ..., the last: many sources, not the first one's grid alone).

    Each tile is a decoded `image` PNG with its `gaze` label (camera frame) drawn as an arrow from
    the image centre, captioned with its source (``fit_caption``) and its gaze and view indices: what a
    gaze trainer will read. Only the row groups holding a chosen row are read.
    """
    import pyarrow.parquet as pq

    from gazegen.data.parquet import read_rows, resolve_shards
    from gazegen.data.schema import decode_png

    fs, paths = resolve_shards(str(source))
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(pq.ParquetFile(fs.open_input_file(path))) for path in paths]
        counts = [f.metadata.num_rows for f in files]
        total = sum(counts)
        chosen = np.unique(np.linspace(0, total - 1, min(rows, total)).round().astype(int)) if total else np.zeros(0, int)
        starts = np.cumsum([0, *counts])
        picked = [row for k, file in enumerate(files)
                  for row in read_rows(file, chosen[(chosen >= starts[k]) & (chosen < starts[k + 1])] - starts[k],
                                       SHEET_COLUMNS).to_pylist()]
    tiles: list[np.ndarray] = []
    for row in picked:
        tile = resize_area(cv2.cvtColor(decode_png(row["image"]["bytes"]), cv2.COLOR_RGB2BGR), thumb)
        draw_gaze(tile, np.asarray(row["gaze"]), (thumb / 2, thumb / 2), thumb * 0.4)
        lines = (fit_caption(row["source_id"], thumb - 4), f"gaze {row['gaze_index']} view {row['view_index']}")
        tiles.append(draw_captions(tile, lines, TEXT_BGR))
    if not tiles:
        raise DataError(f"{source}: the shards hold no rows")
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    grid = np.concatenate([np.concatenate(tiles[i : i + columns], 1) for i in range(0, len(tiles), columns)], 0)
    sheet_png = Path(sheet_png)
    sheet_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(sheet_png), grid):
        raise DataError(f"{sheet_png}: could not write the contact sheet")
    return sheet_png
