"""What `gazegen train` checks before it builds a model or makes the run folder, so that a run it
cannot finish fails at once, in one line, with nothing written: a resume's settings (train/resume.py),
a store folder (not one of its files), and the depth a dataset or files prior reads (in a loader worker
it would fail mid-run); and what it warns of: a store without face or eye masks.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gazegen.config import TrainConfig
from gazegen.train.depth_prior import depth_source
from gazegen.train.errors import TrainingError
from gazegen.train.resume import check_resume
from gazegen.train.subjects import SubjectRows, mask_warning, read_subject, split_subjects

log = logging.getLogger("gazegen.train")


def store_folder(data: Path) -> Path:
    """``data``, the training store's folder; TrainingError for a file (a subject's h5 given for its store)."""
    if data.is_file():
        store = data.parent.parent if data.parent.name in ("train", "test") else data.parent
        raise TrainingError(f"--data {data}: a file; --data wants the training store's folder, the one holding "
                            f"train_test_split.json or train/*.h5 (here perhaps {store})")
    return data


def check_depth(cfg: TrainConfig, subjects: list[SubjectRows]) -> None:
    """DepthPriorError for a subject whose depth the run's dataset or files prior cannot read: here, at setup, not in
    a loader worker mid-run (a teacher's depth is made later, into the run)."""
    if cfg.loss.depth_weight > 0 and cfg.depth_prior.kind != "teacher":
        depth_source(cfg.depth_prior).check(subjects)


def checked_store(cfg: TrainConfig, data: Path, out: Path, resume: bool, *,
                  warn: bool = True) -> tuple[list[SubjectRows], list[SubjectRows]]:
    """The training and validation subjects of the store ``data``, after every check that needs no model and no run
    folder: a resume's settings (train/resume.py) or a new run's model preset, a store folder, and the depth a dataset
    or files prior reads (the teacher's is made later, into the run); ``warn``: log what the store's missing masks leave
    off and what a resume on a moved store takes."""
    if resume:
        check_resume(out, cfg, data, warn=warn)
    else:
        cfg.model_config()  # a model preset that cannot be read, or a wrong model_overrides: here, before the store is read
    split = split_subjects(store_folder(data), cfg.data)
    frames = cfg.data.frames_per_subject
    train = [read_subject(p, frames_per_subject=frames) for p in split.train]
    val = [read_subject(p, frames_per_subject=frames) for p in split.val]
    check_depth(cfg, train + val)
    warning = mask_warning(data, train + val)
    if warn and warning:
        log.warning(warning)
    return train, val
