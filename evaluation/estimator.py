"""Train and evaluate the reference gaze estimator (gazegen/metrics/estimator.py).

Data, either of two kinds, told apart by ``open_gaze_data``:

* a training store or published h5 files (gazegen/data/xgaze.py readers): a store folder (its
  ``train_test_split.json`` picks the files of a split), a folder of h5 files, or one h5 file;
  streamed by ``StoreGazeDataset`` in chunks of rows, shuffled through a buffer;
* synthesis Parquet shards (gazegen/data/parquet.py ``GazeParquetDataset``): a folder holding
  ``shard-*.parquet``, a glob, a .parquet file, or a pyarrow URI.

Both yield dicts with ``image`` (3, H, W) float in [-1, 1], ``gaze`` and ``head_pose`` (2,) float32
radians in the image's normalised camera. Training is step-based (``EstimatorConfig.steps``),
epochs wrap around; the result is an estimator checkpoint (config.json + model.safetensors)
with its training figures in the metadata, and ``estimator_report.json`` beside it.

Error report (``EstimatorEval``): mean and median angular error of gaze and head pose, in
degrees, and the same for the constant prediction of the evaluated set's own mean (pitch, yaw):
a model that has learnt nothing sits at that baseline, so the gap is what it has learnt.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gazegen.checkpoint import CONFIG_FILE, foreign_entries, load_pretrained, save_pretrained
from gazegen.config import EstimatorConfig, EstimatorNetConfig, NormalisationConfig, to_dict
from gazegen.data.parquet import SHARD_GLOB, GazeParquetDataset, shuffle_buffered
from gazegen.data.images import resize_area, to_model_range
from gazegen.data.splits import store_splits
from gazegen.data.store import SPLIT_FILE
from gazegen.data.xgaze import DataError, open_subject
from gazegen.device import torch_device
from gazegen.errors import first_line
from gazegen.geometry import angular_error
from gazegen.metrics.estimator import GazeEstimator
from gazegen.paths import OutputPathError, check_out_folder

log = logging.getLogger(__name__)

REPORT_FILE = "estimator_report.json"
H5_SUFFIXES = (".h5", ".hdf5")


# --------------------------------------------------------------------------- data


def store_files(data: str | Path, split: str | None) -> list[Path]:
    """The h5 files of ``data``: a store's ``split`` (from train_test_split.json), a folder, one file, or a glob."""
    if "*" in str(data):
        return _glob_files(str(data))
    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise DataError(f"{data}: no such file or folder")
    splits = store_splits(data)
    if splits.split_file is not None and split is not None:
        if split not in splits.files:
            raise DataError(f"{splits.split_file}: no split {split!r}")
        if not splits.split(split):
            raise DataError(f"{splits.split_file}: split {split!r} lists no subjects")
        return splits.split(split)
    files = sorted(p for p in data.rglob("*") if p.suffix in H5_SUFFIXES)
    if not files:
        raise DataError(f"{data}: no h5 files (and no {SPLIT_FILE})")
    return files


def _glob_files(pattern: str) -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"{pattern}: no files match")
    return files


def is_parquet(data: str | Path) -> bool:
    """True for shard folders, .parquet files, globs of them (any glob not ending in .h5 / .hdf5) and pyarrow URIs."""
    text = str(data)
    if "*" in text and "://" not in text:
        return not text.endswith(H5_SUFFIXES)
    if "://" in text or text.endswith(".parquet"):
        return True
    path = Path(text)
    return path.is_dir() and any(path.glob(SHARD_GLOB))


class StoreGazeDataset(IterableDataset):
    """Rows of h5 subject files as dicts (``image``, ``gaze``, ``head_pose``, ``subject``).

    Work units are chunks of ``chunk`` rows; with ``shuffle_buffer > 0`` their order (the same in
    every DataLoader worker) and the rows (through a buffer) are shuffled, seeded by (seed, epoch).
    Worker w of W takes units w, w + W, ...: every row once per epoch. ``resolution`` resizes the
    images (``resize_area``: cv2 INTER_AREA) as they are read, to save memory and time on large images.
    """

    def __init__(self, files: list[Path], *, resolution: int | None = None, shuffle_buffer: int = 0,
                 seed: int = 0, chunk: int = 64) -> None:
        super().__init__()
        self.files, self.resolution, self.chunk = list(files), resolution, chunk
        self.shuffle_buffer, self.seed, self.epoch = shuffle_buffer, seed, 0
        self.lengths = []
        for f in self.files:
            with open_subject(f) as reader:
                self.lengths.append(len(reader))

    def __len__(self) -> int:
        return sum(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rows(self, file: Path, start: int) -> Iterator[dict[str, Any]]:
        with open_subject(file) as reader:
            for s in reader.read(start, start + self.chunk):
                image = s.image
                if self.resolution:
                    image = resize_area(image, self.resolution)
                chw = to_model_range(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
                yield {"image": chw, "gaze": torch.from_numpy(s.gaze.astype(np.float32)),
                       "head_pose": torch.from_numpy(s.head_pose.astype(np.float32)), "subject": s.subject}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        units = [(f, start) for f, n in zip(self.files, self.lengths) for start in range(0, n, self.chunk)]
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.shuffle_buffer > 0:
            units = [units[i] for i in rng.permutation(len(units))]
        rows = (row for f, start in units[worker::workers] for row in self._rows(f, start))
        if self.shuffle_buffer <= 0:
            yield from rows
            return
        yield from shuffle_buffered(rows, self.shuffle_buffer, np.random.default_rng([self.seed, self.epoch, worker, 1]))


def store_cameras(data: str | Path, split: str | None) -> Iterator[tuple[Path, NormalisationConfig]]:
    """Each h5 file of ``data``'s ``split`` with its normalised camera."""
    for path in store_files(data, split):
        with open_subject(path) as reader:
            yield path, reader.normalisation


def check_store_camera(data: str | Path, split: str | None, net: EstimatorNetConfig) -> None:
    """DataError naming the first h5 file of ``data``'s ``split`` whose normalised camera is not the one
    ``net``'s eye patches are placed for: the same field of view (focal / resolution) and distance
    (any image size: images are resized), looking at a face centre as far below the eyes as the
    patches' ``above_centre_mm`` (within half a millimetre). Nothing to check without an eye branch, or on Parquet
    shards (they record no normalisation)."""
    if not net.eyes.width or is_parquet(data):
        return
    want = net.eyes.normalisation
    for path, got in store_cameras(data, split):
        if not got.same_view(want):
            raise DataError(f"{path}: normalised camera of focal {got.focal:g} px at {got.resolution} px, "
                            f"{got.distance_mm:g} mm; the estimator's eye patches are placed for focal {want.focal:g} "
                            f"px at {want.resolution} px, {want.distance_mm:g} mm (EstimatorNetConfig.eyes.normalisation)")
        if not got.same_framing(net.eyes.above_centre_mm):
            raise DataError(f"{path}: its camera looks at a face centre {got.eye_above_centre_mm:g} mm below the eyes; the "
                            f"estimator's eye patches are placed {net.eyes.above_centre_mm:g} mm above its face centre "
                            "(EstimatorNetConfig.eyes.above_centre_mm)")


def open_gaze_data(data: str | Path, *, split: str | None = None, net: EstimatorNetConfig | None = None,
                   shuffle_buffer: int = 0, seed: int = 0) -> IterableDataset:
    """A dataset of ``image`` / ``gaze`` / ``head_pose`` dicts from a store, h5 files or Parquet shards.

    ``net``: the estimator the data is for: store images are resized to its resolution as they are
    read, and their camera is checked (``check_store_camera``).
    """
    if is_parquet(data):
        return open_shards(str(data), shuffle_buffer=shuffle_buffer, seed=seed)
    if net is not None:
        check_store_camera(data, split, net)
    return StoreGazeDataset(store_files(data, split), resolution=net.resolution if net is not None else None,
                            shuffle_buffer=shuffle_buffer, seed=seed)


def open_shards(source: str, *, shuffle_buffer: int = 0, seed: int = 0) -> GazeParquetDataset:
    """``GazeParquetDataset`` of ``source``; DataError naming ``source`` when it cannot be listed (no such folder, an
    unreachable URI). A file that is not a gazegen shard (an h5 file, say) is named by the dataset (``ShardError``)."""
    import pyarrow

    try:
        return GazeParquetDataset(source, shuffle_buffer=shuffle_buffer, seed=seed)
    except (OSError, pyarrow.ArrowException) as e:
        raise DataError(f"{source}: cannot read: {first_line(e)}") from None


def _eval_source(data: str | Path, eval_data: str | Path | None, split: str) -> str | Path | None:
    """What to evaluate on after training: ``eval_data``, else ``data`` when it is a store whose split file lists
    ``split`` with subjects (DataError when it lists no such split), else None."""
    if eval_data is not None:
        return eval_data
    if is_parquet(data) or "*" in str(data):
        return None
    splits = store_splits(data)
    if splits.split_file is None:
        return None
    if split not in splits.files:
        store_files(data, split)  # raises "no split": as a wrong `split` does
    return data if splits.files[split] or splits.missing[split] else None


def _batches(dataset: IterableDataset, batch_size: int, workers: int, *, drop_last: bool = False) -> DataLoader:
    keep = ("image", "gaze", "head_pose")
    collate = lambda items: {k: torch.stack([it[k] for it in items]) for k in keep}  # noqa: E731
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                      drop_last=drop_last, persistent_workers=False)


def flip_batch(image: torch.Tensor, gaze: torch.Tensor, head_pose: torch.Tensor, which: torch.Tensor) -> tuple:
    """Mirror the images where ``which`` (B,) is True and negate both yaws there.

    Valid in the normalised camera: its principal point is the image centre, so a mirrored
    image is the mirrored scene seen by the same camera, and mirroring x negates yaw only.
    """
    sign = torch.ones_like(gaze)
    sign[which, 1] = -1.0
    flipped = torch.where(which[:, None, None, None], image.flip(-1), image)
    return flipped, gaze * sign, head_pose * sign


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EstimatorEval:
    """Angular errors of an estimator on one data set, degrees."""

    images: int
    gaze_error: float  # mean
    gaze_error_median: float
    head_error: float
    head_error_median: float
    constant_gaze_error: float  # predicting the set's mean gaze (pitch, yaw) for every image
    constant_head_error: float
    data: str = ""

    def summary(self) -> str:
        return (f"{self.images} images of {self.data}: gaze {self.gaze_error:.2f} deg (median {self.gaze_error_median:.2f}; "
                f"constant baseline {self.constant_gaze_error:.2f}), head pose {self.head_error:.2f} deg (median "
                f"{self.head_error_median:.2f}; constant baseline {self.constant_head_error:.2f})")


@torch.no_grad()
def predict(model: GazeEstimator, loader: DataLoader, device: str | torch.device, max_images: int = 0) -> dict[str, np.ndarray]:
    """Predictions and labels over a loader: (N, 2) float64 arrays ``gaze``, ``head_pose``, ``*_label``."""
    out: dict[str, list[np.ndarray]] = {"gaze": [], "head_pose": [], "gaze_label": [], "head_pose_label": []}
    seen = 0
    was_training = model.training
    model.eval()
    for batch in loader:
        est = model(batch["image"].to(device))
        for key, value in (("gaze", est.gaze), ("head_pose", est.head_pose), ("gaze_label", batch["gaze"]),
                           ("head_pose_label", batch["head_pose"])):
            out[key].append(value.double().cpu().numpy())
        seen += len(batch["image"])
        if max_images and seen >= max_images:
            break
    model.train(was_training)
    arrays = {k: np.concatenate(v) if v else np.zeros((0, 2)) for k, v in out.items()}
    return {k: v[:max_images] if max_images else v for k, v in arrays.items()}


def error_report(pred: dict[str, np.ndarray], data: str = "") -> EstimatorEval:
    """``EstimatorEval`` from ``predict``'s arrays."""
    if len(pred["gaze"]) == 0:
        raise ValueError(f"{data}: no images to evaluate")
    g = angular_error(pred["gaze"], pred["gaze_label"])
    h = angular_error(pred["head_pose"], pred["head_pose_label"])
    cg = angular_error(pred["gaze_label"].mean(0, keepdims=True), pred["gaze_label"])
    ch = angular_error(pred["head_pose_label"].mean(0, keepdims=True), pred["head_pose_label"])
    return EstimatorEval(len(g), float(g.mean()), float(np.median(g)), float(h.mean()), float(np.median(h)),
                         float(cg.mean()), float(ch.mean()), data)


def evaluate_estimator(checkpoint: str | Path, data: str | Path, *, split: str = "test", batch_size: int = 64,
                       max_images: int = 0, device: str = "cpu") -> EstimatorEval:
    """`gazegen estimator eval CKPT DATA`: angular errors of a saved estimator on a store split or shards.

    ``split`` applies to stores with a train_test_split.json; other sources are read whole.
    """
    model = load_pretrained(checkpoint, GazeEstimator, device=torch_device(device))
    dataset = open_gaze_data(data, split=split, net=model.cfg)
    return error_report(predict(model, _batches(dataset, batch_size, 0), device, max_images), str(data))


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class EstimatorTrainResult:
    checkpoint: Path
    steps: int
    seconds: float
    final_loss: float
    train_eval: EstimatorEval  # on (up to eval_images of) the training data
    test_eval: EstimatorEval | None  # on the store's eval_split or `eval_data`, when there is one


def _lr_factor(step: int, cfg: EstimatorConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


def _endless(dataset: IterableDataset, cfg: EstimatorConfig) -> Iterator[dict[str, torch.Tensor]]:
    epoch = 0
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        empty = True
        for batch in _batches(dataset, cfg.batch_size, cfg.workers, drop_last=False):
            empty = False
            yield batch
        if empty:
            raise DataError("the training data yielded no images")
        epoch += 1


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `estimator train`: ``step`` (1-based) is the step it stopped in; nothing was saved."""

    def __init__(self, step: int, steps: int) -> None:
        super().__init__(f"interrupted at step {step} of {steps}: nothing saved")
        self.step, self.steps = step, steps


def _is_estimator_checkpoint(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG_FILE).read_text()).get("class") == GazeEstimator.__name__
    except (OSError, ValueError, AttributeError):
        return False


def check_estimator_out(out: str | Path, *, overwrite: bool = False) -> Path:
    """``out`` resolved, when `estimator train` may write its checkpoint there: a new folder, an empty one, or (with
    ``overwrite``) an earlier estimator checkpoint holding nothing but its own files, and not the working folder (nor
    one above it); OutputPathError naming it otherwise. Whatever else a folder holds is never replaced."""
    path = check_out_folder(out)
    if path.exists() and Path.cwd().is_relative_to(path.resolve()):  # replacing it would leave the shell in a deleted folder
        raise OutputPathError(f"{out}: the working folder, or one holding it; give a folder in it, e.g. --out estimator")
    if path.is_dir() and any(path.iterdir()):
        foreign = foreign_entries(path, (REPORT_FILE,))  # a checkpoint's files and this command's report are its own
        if foreign or not _is_estimator_checkpoint(path):
            held = f"holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}" if foreign else "no GazeEstimator config.json"
            raise OutputPathError(f"{out}: not empty and not an estimator checkpoint ({held}); give a new or empty folder")
        if not overwrite:
            raise OutputPathError(f"{out}: holds an earlier estimator checkpoint; --overwrite replaces it")
    return path.resolve()


def _train_steps(model: GazeEstimator, dataset: IterableDataset, cfg: EstimatorConfig, device: torch.device) -> float:
    """Run ``cfg.steps`` optimiser steps; the final running loss. TrainingInterrupted on Ctrl-C."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: _lr_factor(step, cfg))
    generator = torch.Generator().manual_seed(cfg.seed)
    start, running, stream, step = time.monotonic(), float("nan"), _endless(dataset, cfg), 0
    try:
        for step in range(cfg.steps):
            batch = next(stream)
            image, gaze, head = batch["image"], batch["gaze"], batch["head_pose"]
            if cfg.flip:
                image, gaze, head = flip_batch(image, gaze, head, torch.rand(len(image), generator=generator) < 0.5)
            est = model(image.to(device))
            loss_gaze = (est.gaze - gaze.to(device)).abs().mean()
            loss = loss_gaze + cfg.head_weight * (est.head_pose - head.to(device)).abs().mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            running = loss.item() if math.isnan(running) else 0.9 * running + 0.1 * loss.item()
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                log.info("estimator step %d/%d: loss %.4f (gaze L1 %.4f rad), lr %.2e, %.1f s", step + 1, cfg.steps,
                         running, loss_gaze.item(), schedule.get_last_lr()[0], time.monotonic() - start)
    except KeyboardInterrupt:
        raise TrainingInterrupted(step + 1, cfg.steps) from None
    return running


def train_estimator(data: str | Path, out: str | Path, cfg: EstimatorConfig, *, eval_data: str | Path | None = None,
                    device: str = "cpu", model: GazeEstimator | None = None, overwrite: bool = False) -> EstimatorTrainResult:
    """`gazegen estimator train DATA --out DIR`: train on a store's ``cfg.split`` or on Parquet shards.

    Before training, checks ``out`` (``check_estimator_out``: an earlier estimator there is replaced only with
    ``overwrite``) and opens the training and evaluation data. After training, evaluates on the training data and
    on ``eval_data`` (any source) or else the store's ``cfg.eval_split`` when it lists subjects; writes the
    checkpoint to ``out`` and ``out/estimator_report.json``. ``model`` continues training a given network.
    """
    out = check_estimator_out(out, overwrite=overwrite)
    device = torch_device(device)
    torch.manual_seed(cfg.seed)
    model = (model or GazeEstimator(cfg.net)).to(device).train()
    dataset = open_gaze_data(data, split=cfg.split, net=cfg.net, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed)
    source = _eval_source(data, eval_data, cfg.eval_split)
    test_set = open_gaze_data(source, split=cfg.eval_split, net=cfg.net) if source is not None else None
    start = time.monotonic()
    running = _train_steps(model, dataset, cfg, device)
    seconds = time.monotonic() - start
    model.eval()
    train_set = open_gaze_data(data, split=cfg.split, net=cfg.net)
    train_eval = error_report(predict(model, _batches(train_set, 64, 0), device, cfg.eval_images), f"{data} ({cfg.split})")
    test_eval = None
    if test_set is not None:
        test_eval = error_report(predict(model, _batches(test_set, 64, 0), device, cfg.eval_images),
                                 f"{source} ({cfg.eval_split})" if not is_parquet(source) else str(source))
    metadata = {"data": str(data), "train": to_dict(cfg), "steps": cfg.steps, "seconds": round(seconds, 2),
                "final_loss": running, "train_eval": asdict(train_eval),
                "test_eval": asdict(test_eval) if test_eval else None}
    out = save_pretrained(out, model, metadata=metadata, beside=(REPORT_FILE,))
    (out / REPORT_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return EstimatorTrainResult(out, cfg.steps, seconds, running, train_eval, test_eval)
