"""Personalised fine-tuning, GazeNeRF's protocol as LiveGaze's supplement (section 6) follows it: `gazegen finetune`.

Per subject, in file order: the input group is the first ``group_size`` images, the target group
the next ``group_size`` (half each when the subject has fewer than 2 x group_size; the same rule as
``EvaluateConfig`` / evaluation/evaluate.py). The trained model is fine-tuned on triplets of the input
group only (I_s, I_gt and I_f all from it) for ``epochs`` epochs with the training run's optimiser,
losses and depth prior, and scored on input -> target pairs (I_s from the input group, I_gt from
the target group) before and after. Each subject starts from the same trained weights and gets
its own run folder and checkpoint: ``OUT/<subject>/checkpoints/step_NNNNNNN``.

``finetune_model`` is the same on samples held in memory (evaluation/evaluate.py's hook).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
from collections.abc import Sequence
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
from gazegen.train.subjects import SubjectRows, read_subject, subject_from_samples
from gazegen.train.trainer import TrainResult, build_loss, fit, pick_device
from gazegen.train.validate import validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneResult:
    subject: str
    checkpoint: Path | None  # OUT/<subject>/checkpoints/step_N
    before: dict[str, float]  # input -> target metrics of the trained model (train/validate.py)
    after: dict[str, float]  # the same after fine-tuning
    train: TrainResult


def groups(n: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(input rows, target rows) of a subject with ``n`` images: the first ``group_size`` and the next."""
    size = min(group_size, n // 2)
    if size < 1:
        raise DataError(f"a subject with {n} image(s) cannot form an input and a target group")
    return np.arange(size, dtype=np.int64), np.arange(size, 2 * size, dtype=np.int64)


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
    train_cfg = dataclasses.replace(train_cfg, batch_size=min(train_cfg.batch_size, len(inputs)))
    train_set, score_set = _subject_datasets(subject, train_cfg, TripletSizes.for_model(model.cfg), inputs, targets, run)
    model.to(pick_device(train_cfg.device))
    before = _score(model, score_set, train_cfg)
    result = fit(train_cfg, model.cfg, train_set, score_set, run, model=model,
                 metadata={"subject": subject.subject, "data": str(subject.path), "finetune": dataclasses.asdict(cfg),
                           "normalisation": dataclasses.asdict(subject.normalisation)})
    log.info("%s: input -> target eye PSNR %.2f -> %.2f dB, face %.2f -> %.2f dB", subject.subject,
             before["psnr_eyes"], result.metrics.get("psnr_eyes", float("nan")), before["psnr_face"],
             result.metrics.get("psnr_face", float("nan")))
    return FinetuneResult(subject.subject, result.checkpoint, before, result.metrics, result)


def subject_file(data: Path, subject: str) -> Path:
    """``data`` itself when it is an h5 file, else ``subject``'s file in the store (test split first, then train)."""
    data = Path(data)
    if data.is_file():
        return data
    name = subject if subject.endswith(".h5") else f"{subject}.h5"
    splits = store_splits(data)
    found = [p for part in ("test", "train") for p in splits.split(part) if p.name in (name, f"xgaze_{name}")]
    if not found:
        raise DataError(f"{data}: no subject {subject} in its test or train split")
    return found[0]


def run_finetune(checkpoint: Path, data: Path, out: Path, subjects: Sequence[str] | None = None,
                 cfg: FinetuneConfig = FinetuneConfig(), train_cfg: TrainConfig | None = None) -> list[FinetuneResult]:
    """`gazegen finetune CKPT DATA --subject S`: one fine-tuned checkpoint per subject under ``out/<subject>/``.

    ``subjects`` None: every subject of the store's test split. ``train_cfg`` None: the checkpoint's run's.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    train_cfg = finetune_config(checkpoint, cfg, train_cfg)
    base = load_checkpoint(checkpoint)
    paths = [subject_file(data, s) for s in subjects] if subjects else store_splits(data).split("test")
    rows = [read_subject(path) for path in paths]
    if train_cfg.loss.depth_weight > 0 and train_cfg.depth_prior.kind != "teacher":
        depth_source(train_cfg.depth_prior).check(rows)  # every subject's depth, before the first is fine-tuned
    results = []
    for subject in rows:
        model = copy.deepcopy(base).train()
        results.append(finetune_subject(model, subject, out / file_component(subject.subject), cfg, train_cfg))
    return results


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

