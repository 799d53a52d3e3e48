"""`gazegen data prepare SRC OUT`: published gaze h5 files (or a store) -> a training store.

SRC may also be ETH-XGaze's raw multi-view release (``calibration/cam_calibration/camNN.xml``,
``data/annotation_train/subjectNNNN.csv``, gazegen/data/xgaze_raw.py): its images are normalised
from the annotated head poses to the store's camera, every subject a train subject with its frame
and camera indices (a multi-view store). SRC may also be an MPIIFaceGaze release (``pXX/pXX.txt``
folders, gazegen/data/mpiifacegaze.py) or ColumbiaGaze's raw photos (``0001/0001_2m_-15P_10V_-5H.jpg``, gazegen/data/columbia.py):
their images are normalised (from the annotated head poses; from detected landmarks) to the
store's normalised camera (``source_normalisation``, default LiveGaze's, at the output
resolution) and every person becomes a test subject, for the cross-dataset protocol.

Each subject file of SRC (see ``find_subject_files``) is read lazily, ``chunk`` rows at a
time, resized to the configured resolution and written to ``OUT/<split>/<subject>.h5`` with
``SubjectWriter`` (temporary name, renamed when complete). A killed run loses only the subject
in progress; a rerun skips every complete subject file. ``train_test_split.json`` is written
last.

What a rerun may skip is settled before anything is written: ``OUT/prepare.json`` (``PrepareRecord``)
records the source (its resolved path, its kind, and for each subject file written the source file
it comes from and its row count) and the settings (resolution, the normalisation override). A run
into an OUT whose record differs (another source, the same one changed, another resolution), or
into an OUT that holds a store with no record (made by `synth-heads`, by hand, or by a gazegen
before the record), stops with a DataError naming the difference; ``overwrite`` deletes that store
first (gazegen/data/store_folder.py). Only subjects already written must match: subjects added to
the same source, and one that stopped a run and was fixed (fewer rows), are converted by a rerun. A
subject with no usable row (none listed, or every photo without a face) gets no file: a store file
holds at least one image.

Labels are unchanged by resizing (angles do not depend on the image size); the normalised camera
keeps its field of view (``NormalisationConfig.at_resolution``), so the 25-number cameras, whose
intrinsics are divided by the image size, are unchanged too; landmarks scale by out/in (the
principal point is at W/2, as in ETH-XGaze's ``cam_norm``). Images shrink with INTER_AREA and
grow with INTER_CUBIC; masks and depth use INTER_NEAREST. Cameras of ETH-XGaze and GazeNeRF
files come from the head pose (``geometry.head_pose_to_camera``); ``gaze_head`` is computed where
a file lacks it (see gazegen/data/xgaze.py). GazeNeRF's 3DMM fit (``Sample.extras``) has no key in
the store and is not written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from gazegen.config import NormalisationConfig, to_dict
from gazegen.data.columbia import ColumbiaGazeReader, subject_folders
from gazegen.data.mpiifacegaze import MpiiFaceGazeReader, person_folders, unread_folders
from gazegen.data.sample import Sample
from gazegen.data.images import resize_image, resize_nearest
from gazegen.data.splits import present_files, store_splits
from gazegen.data.store import PREPARE_FILE, STORE_FORMAT, SubjectWriter, write_split
from gazegen.data.store_folder import check_folder, clear_store, store_files
from gazegen.data.xgaze import DataError, SubjectReader, file_component, gaze_withheld, open_subject
from gazegen.data.xgaze_raw import XGazeRawReader, annotation_files, unread_files

log = logging.getLogger(__name__)


MIN_RESOLUTION = 16  # px: the smallest model input (configs/model/*.toml) is 64
WITHHELD = "a test subject without gaze labels (ETH-XGaze withholds its test split's)"


@dataclass(frozen=True)
class PrepareReport:
    """What one `prepare_store` run did."""

    out: Path
    resolution: int
    written: tuple[str, ...]  # subject files converted in this run, e.g. "train/subject0000.h5"
    skipped: tuple[str, ...]  # subject files already complete in OUT
    images: int  # images written in this run
    seconds: float
    unlisted: tuple[Path, ...] = ()  # source h5 files the split file does not list (not converted)
    withheld: tuple[Path, ...] = ()  # test-split files without gaze labels (ETH-XGaze's test split; not converted)
    unusable: int = 0  # photos of this run left out: no face, or landmarks no pose fits (each named in a warning)

    def summary(self) -> str:
        lines = [f"{self.out}: {len(self.written)} subject file(s) written ({self.images} images at "
                 f"{self.resolution} px) in {self.seconds:.1f} s, {len(self.skipped)} already complete"]
        lines += [f"  wrote {name}" for name in self.written]
        lines += [f"  not in the split file, not converted: {p}" for p in self.unlisted]
        lines += [f"  {WITHHELD}, not converted: {p}" for p in self.withheld]
        lines += [f"  {self.unusable} photo(s) without a usable face, not converted (named in the warnings)"] if self.unusable else []
        return "\n".join(lines)


@dataclass(frozen=True)
class SubjectFiles:
    """The subject files under a source: (split, path) pairs, and what is wrong with the listing."""

    files: tuple[tuple[str, Path], ...]
    problems: tuple[str, ...] = ()  # split file unreadable, or listing files that do not exist
    unlisted: tuple[Path, ...] = ()  # h5 files present but not in the split file


def find_subject_files(src: str | Path) -> SubjectFiles:
    """One h5 file, or a folder: its splits (gazegen/data/splits.py), ``train`` -> train and any
    other split -> test, each file once, in listing order (from folders: sorted by path)."""
    src = Path(src)
    if src.is_file():
        return SubjectFiles((("train", src),))
    if not src.is_dir():
        raise DataError(f"{src}: no such file or folder")
    try:
        splits = store_splits(src)
    except DataError as e:  # a malformed split file: reported with what is present
        return SubjectFiles((), (str(e),), present_files(src))
    files: dict[Path, str] = {}
    for key, paths in splits.files.items():
        for path in paths:
            files.setdefault(path, "train" if key == "train" else "test")
    listed = [(s, p) for p, s in files.items()]
    if splits.split_file is None:
        return SubjectFiles(tuple(sorted(listed, key=lambda item: item[1])))
    problems = tuple(line for lines in splits.missing.values() for line in lines)
    return SubjectFiles(tuple(listed), problems, splits.unlisted)


RECORD_FORMAT = "gazegen-prepare"
RECORD_VERSION = 1


@dataclass(frozen=True)
class PrepareRecord:
    """What a store was prepared from and how (``OUT/prepare.json``): a rerun resumes only the same conversion."""

    source: str  # SRC, resolved
    kind: str  # "h5", "xgaze-raw", "mpiifacegaze" or "columbiagaze": how SRC was read
    resolution: int
    source_normalisation: dict[str, Any] | None  # the override given, or None: the files' published one
    subjects: dict[str, dict[str, Any]]  # "train/subject0000.h5" -> {"source": file under SRC, "rows": N}

    @classmethod
    def read(cls, out: Path) -> PrepareRecord | None:
        """The record in ``out`` (None when it has none); DataError when it is not one."""
        path = out / PREPARE_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.pop("format") != RECORD_FORMAT or data.pop("version") != RECORD_VERSION:
                raise ValueError("another format or version")
            return cls(**data)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}: not a record of `gazegen data prepare` ({e}); choose another OUT, or pass "
                            "--overwrite to replace the store in it") from None

    def write(self, out: Path) -> Path:
        """Write the record into ``out`` atomically."""
        path = out / PREPARE_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"format": RECORD_FORMAT, "version": RECORD_VERSION, **dataclasses.asdict(self)}, indent=1))
        os.replace(tmp, path)
        return path

    def differences(self, new: PrepareRecord, written: set[str]) -> list[str]:
        """How ``new`` (this run) differs from this record, as "recorded, now" phrases; [] when it may resume.
        Only the subjects ``written`` (their files are in OUT) must match: a subject the record plans but no run
        finished (its source fixed, say, after an error) and one ``new`` adds are no difference: a rerun converts
        them."""
        found = [f"{what} {mine}, this run's is {theirs}" for what, mine, theirs in (
            ("from the source", self.source, new.source), ("read as", self.kind, new.kind),
            ("at resolution", self.resolution, new.resolution),
            ("with source normalisation", self.source_normalisation, new.source_normalisation)) if mine != theirs]
        for name, was in self.subjects.items():
            now = new.subjects.get(name)
            if name in written and now != was:
                found.append(f"with {name} from {was['source']} ({was['rows']} rows), this run's source "
                             + (f"gives it from {now['source']} ({now['rows']} rows)" if now else "has no such subject"))
        return found[:3] + ([f"and {len(found) - 3} more"] if len(found) > 3 else [])


def _check_resume(out: Path, record: PrepareRecord) -> None:
    """DataError unless ``out`` is new, holds no store, or holds one prepared the way ``record`` says."""
    recorded = PrepareRecord.read(out)
    if recorded is None and store_files(out):
        raise DataError(f"{out}: holds a store with no {PREPARE_FILE} (not made by `gazegen data prepare` from "
                        f"{record.source}); choose another OUT, or pass --overwrite to replace the store in it")
    written = {name for name in recorded.subjects if (out / name).is_file()} if recorded is not None else set()
    differences = recorded.differences(record, written) if recorded is not None else []
    if differences:
        raise DataError(f"{out}: was prepared {'; '.join(differences)}; a rerun resumes only the same conversion: "
                        "choose another OUT, or pass --overwrite to replace the store in it")


def _check_not_inside(out: Path, src: Path) -> None:
    """DataError when the store would be written over its own source (OUT is SRC or holds it)."""
    out, src = out.resolve(), src.resolve()
    if out == src or out in src.parents:
        raise DataError(f"{out}: holds the source {src}; choose another OUT")


def _relative(path: Path, src: Path) -> str:
    """A source file as the record names it: relative to SRC (SRC's own name when SRC is the file)."""
    if path == src:
        return src.name
    try:
        return path.relative_to(src).as_posix()
    except ValueError:
        return str(path)


def resize_sample(sample: Sample, normalisation: NormalisationConfig) -> Sample:
    """``sample`` at ``normalisation.resolution`` px: labels and camera kept, landmarks scaled."""
    size = normalisation.resolution
    if sample.resolution == size:
        return dataclasses.replace(sample, normalisation=normalisation)
    scale = size / sample.resolution

    def nearest(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else resize_nearest(a, size)

    return dataclasses.replace(
        sample,
        image=resize_image(sample.image, size),
        normalisation=normalisation,
        face_mask=nearest(sample.face_mask),
        left_eye_mask=nearest(sample.left_eye_mask),
        right_eye_mask=nearest(sample.right_eye_mask),
        depth=nearest(sample.depth),
        landmarks=None if sample.landmarks is None else (sample.landmarks * scale).astype(np.float32),
    )


def _complete(path: Path, resolution: int) -> bool:
    """A finished store file at ``resolution`` (the writer renames only complete files)."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            fmt, res = f.attrs.get("format"), int(f.attrs.get("resolution", -1))
    except OSError:
        log.warning("%s: unreadable, converting it again", path)
        return False
    if fmt != STORE_FORMAT:
        raise DataError(f"{path}: exists and is not a gazegen store file (attribute format={fmt!r}); "
                        "choose an empty OUT")
    if res != resolution:
        raise DataError(f"{path}: exists at {res} px, this run asks for {resolution} px; choose another OUT")
    return True


def _convert(reader: SubjectReader, path: Path, resolution: int, chunk: int, bar: tqdm) -> int:
    """Images written; a photo reader's batches leave out the photos it skips (warned), counted on the bar.
    A subject none of whose photos is usable gets no file (a store file holds at least one image)."""
    norm = reader.normalisation.at_resolution(resolution)
    with SubjectWriter(path, norm, reader.subject, chunk=chunk) as writer:
        for batch in reader.batches(chunk):
            writer.write([resize_sample(s, norm) for s in batch])
            bar.update(len(batch))
        count = writer.rows
        if count == 0:
            writer.abort()
    bar.update(len(reader) - count)
    return count


def prepare_store(src: str | Path, out: str | Path, *, resolution: int = 512,
                  source_normalisation: NormalisationConfig | None = None, chunk: int = 32,
                  progress: bool = True, overwrite: bool = False) -> PrepareReport:
    """Convert the subject files under ``src`` into a training store at ``out``.

    ``source_normalisation`` overrides the published one looked up from the files (needed for
    files at a resolution no published set has). Raises DataError naming the file, key and
    problem for a bad source file; subject files finished before it stay complete. ``out`` must be
    new, hold no store, or hold this conversion's (see the module docstring); ``overwrite`` deletes
    a store it holds once the source has been read.
    """
    start = time.perf_counter()
    if resolution < MIN_RESOLUTION:
        raise DataError(f"--resolution {resolution}: a store's images must be at least {MIN_RESOLUTION} px")
    src, out = Path(src), check_folder(out)
    store_camera = (source_normalisation or NormalisationConfig()).at_resolution(resolution)
    raw, persons, columbia = annotation_files(src), person_folders(src), subject_folders(src)
    if raw:  # ETH-XGaze's raw release: every subject trains, normalised to the store's camera
        kind = "xgaze-raw"
        found = SubjectFiles(tuple(("train", p) for p in raw))
        open_source = lambda path: XGazeRawReader(path, store_camera, chunk)  # noqa: E731
    elif persons:  # an MPIIFaceGaze release: every person is a test subject, normalised to the store's camera
        kind = "mpiifacegaze"
        found = SubjectFiles(tuple(("test", p) for p in persons))
        open_source = lambda path: MpiiFaceGazeReader(path, store_camera, chunk)  # noqa: E731
    elif columbia:  # ColumbiaGaze's raw photos: likewise, normalised from detected landmarks
        kind = "columbiagaze"
        found = SubjectFiles(tuple(("test", p) for p in columbia))
        open_source = lambda path: ColumbiaGazeReader(path, store_camera, chunk)  # noqa: E731
    else:
        kind = "h5"
        found = find_subject_files(src)
        open_source = lambda path: open_subject(path, source_normalisation)  # noqa: E731
    if found.problems:
        raise DataError("\n".join(found.problems))
    withheld = tuple(p for split, p in found.files if kind == "h5" and split == "test" and gaze_withheld(p))
    for p in withheld:
        log.warning("%s: %s; not converted", p, WITHHELD)
    found = dataclasses.replace(found, files=tuple(item for item in found.files if item[1] not in withheld))
    if not found.files and withheld:
        raise DataError(f"{src}: every subject file is {WITHHELD}: nothing to convert")
    if not found.files:
        raise DataError(f"{src}: no .h5 subject files (nor an ETH-XGaze raw release, MPIIFaceGaze pXX/pXX.txt or ColumbiaGaze subject folders) found")
    for p in found.unlisted:
        log.warning("%s: not listed in the split file; not converted", p)
    for p in unread_files(src) if kind == "xgaze-raw" else unread_folders(src) if kind == "mpiifacegaze" else []:
        log.warning("%s: not converted: %s", p, "not named subjectNNNN.csv" if kind == "xgaze-raw"
                    else f"no {p.name}.txt in it" if p.name.islower() else "MPIIFaceGaze names its people p00 .. p14")

    plan: list[tuple[str, Path, Path, int]] = []  # split, source, target, rows
    names: dict[str, Path] = {}
    for split, source in found.files:
        with open_source(source) as reader:
            name = f"{file_component(reader.subject)}.h5"  # the attribute is data: never a path
            rows = len(reader)
        if rows == 0:
            log.warning("%s: no images listed; not converted", source)
            continue
        if name in names:
            raise DataError(f"{source}: subject {name} also comes from {names[name]}")
        names[name] = source
        plan.append((split, source, out / split / name, rows))
    if not plan:
        raise DataError(f"{src}: no subject lists any image; nothing to convert")
    _check_not_inside(out, src)
    record = PrepareRecord(str(src.resolve()), kind, resolution, None if source_normalisation is None else to_dict(source_normalisation),
                           {f"{split}/{target.name}": {"source": _relative(source, src), "rows": rows}
                            for split, source, target, rows in plan})  # fmt: skip
    if overwrite:
        clear_store(out)
    _check_resume(out, record)
    out.mkdir(parents=True, exist_ok=True)
    record.write(out)

    done = [_complete(target, resolution) for _, _, target, _ in plan]
    todo = [item for item, d in zip(plan, done) if not d]
    skipped = [f"{split}/{target.name}" for (split, _, target, _), d in zip(plan, done) if d]
    written, images = [], 0
    rows = sum(n for *_, n in todo)
    with tqdm(total=rows, unit="img", desc="prepare", disable=not progress) as bar, logging_redirect_tqdm():
        for split, source, target, n in todo:
            bar.set_postfix_str(target.name)
            with open_source(source) as reader:
                count = _convert(reader, target, resolution, chunk, bar)
            if count == 0:
                log.warning("%s: none of its %d images is usable (each named above); not converted", source, n)
                continue
            images += count
            written.append(f"{split}/{target.name}")
    stored = [(split, target.name) for split, _, target, _ in plan if target.is_file()]
    write_split(out, [name for split, name in stored if split == "train"], [name for split, name in stored if split != "train"])
    return PrepareReport(out, resolution, tuple(written), tuple(skipped), images,
                         time.perf_counter() - start, found.unlisted, withheld, rows - images)
