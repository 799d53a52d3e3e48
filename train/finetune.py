"""Personalised fine-tuning, GazeNeRF's protocol as LiveGaze's supplement (section 6) follows it: `gazegen finetune`.

Per subject, in file order: the input group is the first ``group_size`` images, the target group
the next ``group_size`` (half each when the subject has fewer than 2 x group_size; the same rule as
``EvaluateConfig`` / evaluation/evaluate.py). The trained model is fine-tuned on triplets of the input
group only (I_s, I_gt and I_f all from it) for ``epochs`` epochs with the training run's optimiser,
losses and depth prior, and scored on input -> target pairs (I_s from the input group, I_gt from
the target group) before and after. Each subject starts from the same trained weights and gets
its own run folder and checkpoint: ``OUT/<subject>/checkpoints/step_NNNNNNN``; ``OUT/finetune.json`` records
each subject's scores before and after, updated as each subject ends. A subject's folder that holds a
checkpoint is refused before any work unless ``overwrite`` (then it is deleted just before that subject
is fine-tuned again). Ctrl-C stops the subject at the end of its step (checkpointed, unscored) and no
further subject is started.

``finetune_model`` is the same on samples held in memory (evaluation/evaluate.py's hook).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gazegen.checkpoint import load_checkpoint, read_header
from gazegen.config import FinetuneConfig, TrainConfig
from gazegen.data.sample import Sample
from gazegen.data.splits import store_splits
from gazegen.data.xgaze import DataError, file_component
from gazegen.models.livegaze import LiveGaze
from gazegen.train.data import TripletDataset, Triplets, TripletSizes, fixed_batches
from gazegen.train.depth_prior import depth_source, prepare_teacher_prior
from gazegen.train.preflight import check_depth
from gazegen.train.subjects import SubjectRows, read_subject, subject_from_samples
from gazegen.train.trainer import TrainResult, build_loss, fit, latest_checkpoint, pick_device
from gazegen.train.validate import validate

log = logging.getLogger(__name__)

REPORT = "finetune.json"  # OUT/finetune.json: each subject's scores before and after


@dataclass(frozen=True)
class FinetuneResult:
    subject: str
    checkpoint: Path | None  # OUT/<subject>/checkpoints/step_N
    before: dict[str, float]  # input -> target metrics of the trained model (train/validate.py)
    after: dict[str, float]  # the same after fine-tuning
    train: TrainResult

    @property
    def interrupted(self) -> bool:
        """Ctrl-C stopped it: the checkpoint is part-way and ``after`` is empty."""
        return self.train.status == "interrupted"

    def summary(self) -> str:
        """One line: input -> target eye and face PSNR and depth error, before -> after, and the checkpoint."""
        if self.interrupted:
            return f"{self.subject}: interrupted at step {self.train.step}, not scored: {self.checkpoint}"
        change = lambda key: f"{self.before.get(key, float('nan')):.2f} -> {self.after.get(key, float('nan')):.2f}"  # noqa: E731
        return (f"{self.subject}: PSNR eyes {change('psnr_eyes')} dB, face {change('psnr_face')} dB, "
                f"depth L1 {change('depth_l1_mm')} mm: {self.checkpoint}")

    def record(self) -> dict:
        """Its entry in OUT/finetune.json."""
        return {"status": self.train.status, "step": self.train.step, "checkpoint": str(self.checkpoint),
                "before": _rounded(self.before), "after": _rounded(self.after)}


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in scores.items()}


def groups(n: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(input rows, target rows) of a subject with ``n`` images: the first ``group_size`` and the next."""
    size = min(group_size, n // 2)
    if size < 1:
        raise DataError(f"a subject with {n} image(s) cannot form an input and a target group")
    return np.arange(size, dtype=np.int64), np.arange(size, 2 * size, dtype=np.int64)


def check_input_group(subject: SubjectRows, inputs: np.ndarray) -> None:
    """DataError naming ``subject``'s input group (rows ``inputs``) when its triplets cannot be drawn: fine-tuning draws
    I_s, I_gt and I_f from the input group alone, and each of its images needs a source of another frame and another
    camera in it (train/data.py)."""
    group = dataclasses.replace(subject, targets=inputs, sources=inputs)
    lonely = TripletDataset.targets_without_source(group)
    if not lonely.size:
        return
    n, labels = len(subject.labels.gaze), subject.labels
    frames, cams = np.unique(labels.frame_index[inputs]), np.unique(labels.cam_index[inputs])
    which = f"all {n} of its images" if len(inputs) == n else f"the first {len(inputs)} of its {n} images, in file order"
    named = f" ({', '.join(map(str, frames))})" if len(frames) <= 5 else ""
    raise DataError(f"{subject.path}: its input group ({which}) holds {len(frames)} frame(s){named} "
                    f"and {len(cams)} camera(s): {lonely.size} of its images have no source of another frame and another "
                    "camera in it, which fine-tuning's triplets need (the input group is at most half the subject's images)")


def finetune_config(checkpoint: Path | None, cfg: FinetuneConfig, train_cfg: TrainConfig | None) -> TrainConfig:
    """The TrainConfig of a fine-tuning: the given one, else the checkpoint's run's, else defaults; then
    ``epochs`` from ``cfg``, no step limit, validation and a checkpoint at the end only."""
    if train_cfg is None and checkpoint is not None:
        stored = read_header(checkpoint, LiveGaze).metadata.get("train_config")
        train_cfg = TrainConfig.from_dict(stored) if stored else None
    train_cfg = train_cfg or TrainConfig()
    return dataclasses.replace(train_cfg, epochs=cfg.epochs, max_steps=0, val_every=0, checkpoint_every=0,
                               keep_checkpoints=1, init="", data=dataclasses.replace(train_cfg.data, val_samples=cfg.val_samples))


def _subject_datasets(subject: SubjectRows, cfg: TrainConfig, sizes: TripletSizes, inputs: np.ndarray,
                      targets: np.ndarray, run: Path) -> tuple[TripletDataset, TripletDataset]:
    """Triplets of the input group, and input -> target pairs for scoring."""
    train = dataclasses.replace(subject, targets=inputs, sources=inputs)
    score = dataclasses.replace(subject, targets=targets, sources=inputs)
    use_depth = cfg.loss.depth_weight > 0
    if use_depth and cfg.depth_prior.kind == "teacher":
        prepare_teacher_prior(cfg.depth_prior, [dataclasses.replace(subject, targets=np.concatenate([inputs, targets]))],
                              run, pick_device(cfg.device))
    depth = depth_source(cfg.depth_prior, run, enabled=use_depth)
    return TripletDataset([train], sizes, depth, seed=cfg.seed), TripletDataset([score], sizes, depth, seed=cfg.seed)


def _score(model: LiveGaze, data: TripletDataset, cfg: TrainConfig) -> dict[str, float]:
    device = next(model.parameters()).device
    batches = (Triplets.cat([data[i] for i in b]) for b in fixed_batches(data, cfg.data.val_samples, cfg.batch_size, cfg.seed))
    return validate(model, batches, build_loss(cfg).to(device), device, keep=0).metrics


def finetune_subject(model: LiveGaze, subject: SubjectRows, run: Path, cfg: FinetuneConfig, train_cfg: TrainConfig,
                     *, score_on_inputs: bool = False) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``subject``'s input group; score input -> target before and after.

    ``score_on_inputs``: every row is the input group, and scoring pairs are drawn within it (no target group).
    """
    inputs, targets = groups(len(subject.labels.gaze), cfg.group_size)
    if score_on_inputs:
        inputs = targets = np.arange(len(subject.labels.gaze), dtype=np.int64)
    check_input_group(subject, inputs)
    train_cfg = dataclasses.replace(train_cfg, batch_size=min(train_cfg.batch_size, len(inputs)))
    train_set, score_set = _subject_datasets(subject, train_cfg, TripletSizes.for_model(model.cfg), inputs, targets, run)
    model.to(pick_device(train_cfg.device))
    before = _score(model, score_set, train_cfg)
    result = fit(train_cfg, model.cfg, train_set, score_set, run, model=model,
                 metadata={"subject": subject.subject, "data": str(subject.path), "finetune": dataclasses.asdict(cfg),
                           "normalisation": dataclasses.asdict(subject.normalisation)})
    done = FinetuneResult(subject.subject, result.checkpoint, before, result.metrics, result)
    log.debug("%s", done.summary())  # `gazegen finetune` prints it
    return done


def subject_file(data: Path, subject: str) -> Path:
    """``subject``'s file in the store ``data`` (test split first, then train)."""
    name = subject if subject.endswith(".h5") else f"{subject}.h5"
    splits = store_splits(data)
    found = [p for part in ("test", "train") for p in splits.split(part) if p.name in (name, f"xgaze_{name}")]
    if not found:
        raise DataError(f"{data}: no subject {subject} in its test or train split")
    return found[0]


def subject_paths(data: Path, subjects: Sequence[str] | None) -> list[Path]:
    """The h5 files to fine-tune on: ``data`` itself when it is a file, else ``subjects`` of the store (default: its test split)."""
    data = Path(data)
    if data.is_file():
        return [data]
    return [subject_file(data, s) for s in subjects] if subjects else store_splits(data).split("test")


def check_runs(out: Path, names: Sequence[str], overwrite: bool) -> None:
    """DataError naming the first subject folder of ``out`` that holds a checkpoint, unless ``overwrite``; the message
    says whether that fine-tuning ended or was stopped part-way (its OUT/finetune.json entry)."""
    if overwrite:
        return
    report = json.loads((out / REPORT).read_text()).get("subjects", {}) if (out / REPORT).is_file() else {}
    for name in names:
        newest = latest_checkpoint(out / file_component(name))
        if newest is not None:
            ended = report.get(name, {}).get("status") not in (None, "interrupted")
            what = "a fine-tuning" if ended else "a fine-tuning stopped part-way"
            raise DataError(f"{out / file_component(name)}: already holds {what} ({newest}); pass --overwrite to redo "
                            "it, or choose another --out")


def clear_run(run: Path) -> None:
    """Delete a subject's earlier fine-tuning (a folder holding checkpoints/): it is about to be redone."""
    if latest_checkpoint(run) is not None:
        shutil.rmtree(run)


def write_report(out: Path, checkpoint: Path, result: FinetuneResult) -> Path:
    """Add ``result`` to OUT/finetune.json (subjects of earlier runs into ``out`` are kept)."""
    path = out / REPORT
    report = json.loads(path.read_text()) if path.is_file() else {}
    report["checkpoint"] = str(checkpoint)
    report.setdefault("subjects", {})[result.subject] = result.record()
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
    return path


def iter_finetune(checkpoint: Path, data: Path, out: Path, subjects: Sequence[str] | None = None,
                  cfg: FinetuneConfig = FinetuneConfig(), train_cfg: TrainConfig | None = None, *,
                  overwrite: bool = False) -> Iterator[FinetuneResult]:
    """`gazegen finetune CKPT DATA --subject S`: fine-tune each subject in turn under ``out/<subject>/``, yielding
    each result as it ends (and recording it in OUT/finetune.json); an interrupted one is the last.

    ``data``: a store (``subjects`` None: its test split) or one subject's h5 file. ``train_cfg`` None: the checkpoint's run's.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    train_cfg = finetune_config(checkpoint, cfg, train_cfg)
    base = load_checkpoint(checkpoint)
    rows = [read_subject(path) for path in subject_paths(data, subjects)]
    check_runs(out, [subject.subject for subject in rows], overwrite)
    check_depth(train_cfg, rows)  # every subject's, before the first is fine-tuned
    for subject in rows:  # and every subject's input group
        check_input_group(subject, groups(len(subject.labels.gaze), cfg.group_size)[0])
    for subject in rows:
        run = out / file_component(subject.subject)
        clear_run(run)
        result = finetune_subject(copy.deepcopy(base).train(), subject, run, cfg, train_cfg)
        write_report(out, checkpoint, result)
        yield result
        if result.interrupted:
            return


def run_finetune(checkpoint: Path, data: Path, out: Path, subjects: Sequence[str] | None = None,
                 cfg: FinetuneConfig = FinetuneConfig(), train_cfg: TrainConfig | None = None, *,
                 overwrite: bool = False) -> list[FinetuneResult]:
    """``iter_finetune``'s results as a list: one fine-tuned checkpoint per subject under ``out/<subject>/``."""
    return list(iter_finetune(checkpoint, data, out, subjects, cfg, train_cfg, overwrite=overwrite))


def finetune_model(model: LiveGaze, samples: Sequence[Sample], epochs: int = 10, *, train_cfg: TrainConfig | None = None,
                   group_size: int | None = None) -> LiveGaze:
    """Fine-tune ``model`` in place on one subject's samples held in memory (an input group) and return it.

    All ``samples`` are the input group (``group_size`` None: scored within it); evaluation/evaluate.py's ``Finetune`` hook:
    ``lambda model, samples, epochs: finetune_model(model, samples, epochs)``. Settings: ``train_cfg``,
    else TrainConfig's defaults (the paper's); the run folder is temporary.
    """
    samples = list(samples)
    cfg = FinetuneConfig(epochs=epochs, group_size=group_size or len(samples))
    train_cfg = finetune_config(None, cfg, train_cfg)
    with tempfile.TemporaryDirectory(prefix="gazegen-finetune-") as tmp:
        finetune_subject(model.train(), subject_from_samples(samples), Path(tmp), cfg, train_cfg,
                         score_on_inputs=group_size is None)
    return model.eval()

