"""`gazegen evaluate CKPT DATA --out DIR`: the paper's evaluation protocol (supplement, section 6).

LiveGaze follows GazeNeRF [33]: each subject of ETH-XGaze's personalised test set has 200
labelled images, split into an input group (100) and a target group (the other 100); the model,
trained on the training subjects, is fine-tuned on the input group for 10 epochs, then generates
the target group. What is implemented (``EvaluateConfig``):

* subjects: the files of the store's ``split`` (default "test"), in the split file's order;
* groups: per subject, in file order, the input group is the first ``group_size`` images and the
  target group the next ``group_size`` (GazeNeRF's loader: rows 0-99 and 100-199); a subject with
  fewer than 2 * group_size images gives half to each;
* pairs: input i -> target perm[i], perm a permutation of the target group drawn once from
  ``seed`` and used for every subject. GazeNeRF pairs by one fixed published list
  (configs/config_files/xgaze_evaluation_target_single_subject.txt in its repository); ours is
  another permutation of the same kind, so single pairs differ while the protocol is the same;
* redirection: the source image, the target's gaze in the head frame and the target's camera:
  ``LiveGaze.forward(source, target.gaze_head, target.camera)``;
* fine-tuning (``finetune``): one call per subject on a fresh copy of the loaded weights,
  ``finetune_fn(model, input_group, epochs)`` (see ``Finetune``; by default train/finetune.py's
  ``finetune_model`` with the checkpoint's training settings); off by default;
* image metrics (gazegen/metrics/scores.py) at the model's output resolution (targets resized to it,
  antialiased): SSIM, PSNR, LPIPS and FID, after filling everything outside the target's face
  mask with ``background`` in both images (GazeNeRF fills white; the paper shows masked faces).
  PSNR of identical images (inf) is reported as ``psnr_cap_db`` and counted. FID per subject
  from about 100 images is strongly biased upwards: ``fid_pooled`` pools all pairs;
* gaze and head errors: the reference estimator on the *unmasked* output against the *target's
  labels* (camera-frame gaze and head pose), degrees; also, as GazeNeRF reports it, against the
  estimator's own prediction on the target image (``*_vs_estimate``);
* time: per image, ``encode`` (E_h, E_l) and ``render`` (gaze fusion, E_tri, volume rendering,
  super-resolution), measured with ``batch_size`` pairs per pass after ``warmup`` passes.

Baselines (``baselines``), scored on the same pairs: *copy-the-source* (the input image as the
output); *ground-truth target* (the target image itself: its gaze error is the estimator's own
error, the floor no redirection can beat as judged by this estimator); *perfect render at R px*
(the target shrunk to the model's neural rendering side R and scaled back: the ceiling a render at
that resolution allows); and *constant prediction* (no image: every pair "read" as the mean label
of all the other pairs, what a model that carries no gaze scores at best; it needs two pairs). For every row the read gaze is
also correlated with the requested one (Pearson's r of pitch and of yaw over all pairs).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from gazegen.checkpoint import checkpoint_normalisation, load_checkpoint, load_pretrained, read_header
from gazegen.config import EvaluateConfig, FinetuneConfig, NormalisationConfig
from gazegen.data.images import to_model_range
from gazegen.imaging import resize_tensor
from gazegen.data.sample import Sample
from gazegen.data.xgaze import DataError, open_subject
from gazegen.device import torch_device
from gazegen.evaluation.estimator import check_store_camera, store_cameras, store_files
from gazegen.evaluation.preflight import check_checkpoint_folder, check_report_folder, clear_report_folder, same_camera_hint
from gazegen.evaluation.probes import run_probes
from gazegen.evaluation.report import CONSTANT, EvaluationReport, MethodResult, SheetRow, SubjectScores, write_report
from gazegen.geometry import angular_error, pitchyaw_to_vector, vector_to_pitchyaw
from gazegen.metrics.estimator import GazeEstimate, GazeEstimator
from gazegen.metrics.scores import FIDMetric, LPIPSMetric, psnr, ssim
from gazegen.models.livegaze import LiveGaze
from gazegen.train.finetune import finetune_config, finetune_model

log = logging.getLogger(__name__)

Estimator = Callable[[torch.Tensor], GazeEstimate]  # (B, 3, H, W) in [-1, 1] -> gaze, head pose
Finetune = Callable[[LiveGaze, Sequence[Sample], int], LiveGaze]  # (model, input group, epochs) -> tuned model
FILL = {"white": 1.0, "black": -1.0}


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class SubjectPairs:
    subject: str
    inputs: list[Sample]  # the whole input group (fine-tuning data)
    sources: list[Sample]  # the input of each pair
    targets: list[Sample]  # the target of each pair


def pair_rows(n: int, cfg: EvaluateConfig) -> list[tuple[int, int]]:
    """(input row, target row) pairs of a subject with ``n`` images (see the module docstring)."""
    group = min(cfg.group_size, n // 2)
    perm = np.random.default_rng(cfg.seed).permutation(group)
    pairs = [(i, group + int(perm[i])) for i in range(group)]
    return pairs[: cfg.max_pairs] if cfg.max_pairs else pairs


def subject_pairs(path: Path, cfg: EvaluateConfig) -> SubjectPairs:
    with open_subject(path) as reader:
        pairs = pair_rows(len(reader), cfg)
        group = min(cfg.group_size, len(reader) // 2)
        rows, subject = reader.read(0, 2 * group), reader.subject
    return SubjectPairs(subject, rows[:group], [rows[i] for i, _ in pairs], [rows[j] for _, j in pairs])


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Redirected:
    image: torch.Tensor  # (B, 3, S, S) in [-1, 1]
    depth: torch.Tensor | None = None  # (B, 1, R, R) world units
    alpha: torch.Tensor | None = None  # (B, 1, R, R)
    encode_s: float | None = None  # seconds for the batch
    render_s: float | None = None


@dataclass(frozen=True)
class PairBatch:
    source: torch.Tensor  # (B, 3, H, W) in [-1, 1] at the store's resolution
    target: torch.Tensor  # (B, 3, H, W)
    gaze_head: torch.Tensor  # (B, 2) the target's gaze, head frame
    camera: torch.Tensor  # (B, 25) the target's camera
    source_camera: torch.Tensor  # (B, 25) the source's camera


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LiveGazeMethod:
    """The model under evaluation; ``prepare`` restores the loaded weights and fine-tunes when asked."""

    three_d = True

    def __init__(self, model: LiveGaze, name: str = "LiveGaze (this checkpoint)", finetune: Finetune | None = None,
                 epochs: int = 10, warmup: int = 1) -> None:
        self.model, self.name, self.finetune, self.epochs, self.warmup = model.eval(), name, finetune, epochs, warmup
        self.base = copy.deepcopy(model.state_dict()) if finetune is not None else None
        self.resolution = model.cfg.output_resolution
        self.device = next(model.parameters()).device

    def prepare(self, pairs: SubjectPairs) -> None:
        if self.finetune is None:
            return
        self.model.load_state_dict(self.base)
        self.model = self.finetune(self.model, pairs.inputs, self.epochs).eval()

    @torch.no_grad()
    def __call__(self, batch: PairBatch) -> Redirected:
        m, dev = self.model, self.device
        image = resize_tensor(batch.source, m.cfg.image_resolution).to(dev)
        gaze_head, camera, source_camera = batch.gaze_head.to(dev), batch.camera.to(dev), batch.source_camera.to(dev)
        for _ in range(self.warmup):  # untimed passes (allocator, kernels) before the first timed one
            m(image, gaze_head, camera, source_camera)
        self.warmup = 0
        _sync(dev)
        t0 = time.perf_counter()
        features = m.encode(image, source_camera)  # E_h, E_l
        _sync(dev)
        t1 = time.perf_counter()
        out = m.render(m.redirect(features, gaze_head), camera, source=features)  # fusion + E_tri, then G and super-resolution
        _sync(dev)
        t2 = time.perf_counter()
        return Redirected(out.image.clamp(-1, 1).cpu(), out.depth.cpu(), out.alpha.cpu(), t1 - t0, t2 - t1)


class CopySource:
    """Baseline: the input image, unchanged, as the output."""

    name, three_d = "copy-the-source (baseline)", False

    def prepare(self, pairs: SubjectPairs) -> None:
        pass

    def __call__(self, batch: PairBatch) -> Redirected:
        return Redirected(batch.source)


class GroundTruthTarget:
    """Baseline: the target image itself; its gaze error is the estimator's own error (the floor)."""

    name, three_d = "ground-truth target (estimator floor)", False

    def prepare(self, pairs: SubjectPairs) -> None:
        pass

    def __call__(self, batch: PairBatch) -> Redirected:
        return Redirected(batch.target)


class PerfectRender(GroundTruthTarget):
    """Baseline: the target shrunk to ``resolution`` px and scaled back: what a perfect render at that side shows."""

    three_d = False

    def __init__(self, resolution: int) -> None:
        self.resolution_px = resolution
        self.name = f"perfect render at {resolution} px (resolution ceiling)"

    def __call__(self, batch: PairBatch) -> Redirected:
        small = resize_tensor(batch.target, self.resolution_px)
        return Redirected(F.interpolate(small, size=batch.target.shape[-2:], mode="bilinear", align_corners=False))


# --------------------------------------------------------------------------- scoring


@dataclass
class _Scores:
    """Per-image values of one method on one subject, accumulated over batches."""

    values: dict[str, list[float]] = field(default_factory=dict)
    fid: FIDMetric | None = None
    capped: int = 0
    read: list[np.ndarray] = field(default_factory=list)  # (b, 2) estimator gaze per batch

    def add(self, key: str, v: torch.Tensor | np.ndarray | None) -> None:
        if v is not None:
            self.values.setdefault(key, []).extend(np.asarray(torch.as_tensor(v).double().cpu()).ravel().tolist())


def _to_tensor(samples: Sequence[Sample], attr: str = "image") -> torch.Tensor:
    return to_model_range(torch.from_numpy(np.stack([getattr(s, attr) for s in samples])).permute(0, 3, 1, 2))


def _face_masks(samples: Sequence[Sample], size: int) -> torch.Tensor | None:
    if any(s.face_mask is None for s in samples):
        return None
    masks = torch.from_numpy(np.stack([s.face_mask for s in samples])).float()[:, None]  # (B, 1, H, W)
    return F.interpolate(masks, size=(size, size), mode="nearest")


def _fill(x: torch.Tensor, mask: torch.Tensor | None, background: str) -> torch.Tensor:
    if mask is None or background == "keep":
        return x
    return torch.where(mask > 0.5, x, torch.full_like(x, FILL[background]))


def _errors(estimator: Estimator, image: torch.Tensor, device: torch.device) -> GazeEstimate:
    with torch.no_grad():
        est = estimator(image.to(device))
    return GazeEstimate(est.gaze.double().cpu(), est.head_pose.double().cpu())


def run_evaluation(data: str | Path, methods: Sequence, cfg: EvaluateConfig, *, estimator: Estimator | None = None,
                   estimator_note: str = "", resolution: int | None = None, device: str | torch.device = "cpu",
                   notes: Sequence[str] = ()) -> EvaluationReport:
    """Score ``methods`` on the pairs of every subject of ``data``'s ``cfg.split``.

    ``resolution``: side at which images are compared (default: the first method's output side,
    else the store's). ``estimator`` None: gaze and head errors are reported n/a with ``estimator_note``.
    """

    device = torch_device(device)
    files = store_files(data, cfg.split)
    files = files[: cfg.max_subjects] if cfg.max_subjects else files
    lpips = LPIPSMetric.load(device) if cfg.lpips else LPIPSMetric(None, "LPIPS off (EvaluateConfig.lpips = false)")
    fid = FIDMetric.load(device) if cfg.fid else FIDMetric(None, "FID off (EvaluateConfig.fid = false)")
    per_subject = max(1, -(-cfg.sheet_pairs // len(files))) if cfg.sheet_pairs else 0
    results = {m.name: MethodResult(m.name, getattr(m, "three_d", False)) for m in methods}
    sheet: list[SheetRow] = []
    labels: dict[str, list[np.ndarray]] = {"gaze": [], "head": [], "subject": []}  # every pair's requested labels
    for path in tqdm(files, desc="evaluate", unit="subject", dynamic_ncols=True):
        pairs = subject_pairs(path, cfg)
        if not pairs.sources:
            log.warning("%s: fewer than 2 images, no pairs; skipped", path)
            continue
        size = resolution or getattr(methods[0], "resolution", None) or pairs.sources[0].resolution
        scores = {m.name: _Scores(fid=FIDMetric(fid.model, fid.unavailable)) for m in methods}
        for m in methods:
            m.prepare(pairs)
        for start in range(0, len(pairs.sources), cfg.batch_size):
            src, tgt = pairs.sources[start : start + cfg.batch_size], pairs.targets[start : start + cfg.batch_size]
            batch = PairBatch(_to_tensor(src), _to_tensor(tgt), torch.from_numpy(np.stack([t.gaze_head for t in tgt])),
                              torch.from_numpy(np.stack([t.camera for t in tgt])),
                              torch.from_numpy(np.stack([s.camera for s in src])))
            target = resize_tensor(batch.target, size)
            mask = _face_masks(tgt, size)
            target_filled = _fill(target, mask, cfg.background)
            gaze_label = torch.from_numpy(np.stack([t.gaze for t in tgt])).double()
            head_label = torch.from_numpy(np.stack([t.head_pose for t in tgt])).double()
            on_target = _errors(estimator, target, device) if estimator is not None else None
            labels["gaze"].append(gaze_label.numpy())
            labels["head"].append(head_label.numpy())
            labels["subject"].append(np.array([pairs.subject] * len(tgt)))
            for m in methods:
                out = m(batch)
                image = resize_tensor(out.image.float(), size)
                filled = _fill(image, mask, cfg.background)
                s = scores[m.name]
                s.add("ssim", ssim(filled, target_filled))
                p = psnr(filled, target_filled)
                s.capped += int((p >= cfg.psnr_cap_db).sum())
                s.add("psnr", p.clamp(max=cfg.psnr_cap_db))
                s.add("lpips", lpips.update(filled, target_filled))
                s.fid.update(real=target_filled, fake=filled)
                if on_target is not None:
                    est = _errors(estimator, image, device)
                    s.add("gaze_error", angular_error(est.gaze, gaze_label))
                    s.add("head_error", angular_error(est.head_pose, head_label))
                    s.add("gaze_error_vs_estimate", angular_error(est.gaze, on_target.gaze))
                    s.add("head_error_vs_estimate", angular_error(est.head_pose, on_target.head_pose))
                    s.read.append(est.gaze.numpy())
                if out.encode_s is not None:
                    s.add("encode_ms", [1000 * out.encode_s / len(src)] * len(src))
                    s.add("render_ms", [1000 * out.render_s / len(src)] * len(src))
                    s.add("total_ms", [1000 * (out.encode_s + out.render_s) / len(src)] * len(src))
                if m is methods[0]:
                    start_row = sum(1 for r in sheet if r.subject == pairs.subject)
                    for k in range(max(0, min(len(src), per_subject - start_row))):
                        sheet.append(SheetRow.of(pairs.subject, src[k], tgt[k], image[k], out, k, size))
        for m in methods:
            s = scores[m.name]
            results[m.name].subjects.append(SubjectScores.of(pairs.subject, s.values, s.fid, s.capped))
            results[m.name].fid_features.append(s.fid)
            results[m.name].read.extend(s.read)
    requested = np.concatenate(labels["gaze"]) if labels["gaze"] else np.zeros((0, 2))
    for r in results.values():
        r.finish(fid, lpips, estimator_note if estimator is None else "", requested)
    if estimator is not None and len(requested) > 1:
        results[CONSTANT] = constant_prediction(requested, np.concatenate(labels["head"]), np.concatenate(labels["subject"]))
    notes = list(notes)
    if estimator is not None and len(requested) == 1:
        notes.append("no constant-prediction row: it reads each pair as the mean of the others, and there is one pair")
    return EvaluationReport(methods=list(results.values()), config=cfg, data=str(data), device=str(device),
                            sheet=sheet[: cfg.sheet_pairs], notes=notes)


def constant_prediction(gaze: np.ndarray, head: np.ndarray, subjects: np.ndarray) -> MethodResult:
    """The row of a "model" that reads one gaze and head pose, the mean labels, whatever the image.

    Labels (N >= 2, 2) pitch/yaw of every pair, in pair order; ``subjects`` (N,) names them. Each pair
    is read as the mean of the *other* pairs' labels (leave one out, so no pair is scored against its
    own label; one pair alone would score 0). The mean is a mean direction (of the unit vectors),
    the best constant under angular error.
    """
    result = MethodResult(CONSTANT, False)
    gaze_read, head_read = _leave_one_out_mean(gaze), _leave_one_out_mean(head)
    for name in dict.fromkeys(subjects.tolist()):
        rows = subjects == name
        values = {"gaze_error": angular_error(gaze_read[rows], gaze[rows]).tolist(),
                  "head_error": angular_error(head_read[rows], head[rows]).tolist()}
        result.subjects.append(SubjectScores.of(name, values, FIDMetric(None, "no image"), 0, pairs=int(rows.sum())))
    result.finish(FIDMetric(None, "no image"), LPIPSMetric(None, "no image"), "")  # a constant has no correlation
    result.notes = {"images": "no image: each pair is read as the mean gaze and head labels of all other pairs"}
    return result


def _leave_one_out_mean(labels: np.ndarray) -> np.ndarray:
    """(N, 2) pitch/yaw -> (N, 2): row i is the mean direction of every row but i (N >= 2)."""
    vectors = pitchyaw_to_vector(labels)  # (N, 3) unit
    return vector_to_pitchyaw(vectors.sum(0, keepdims=True) - vectors)


# --------------------------------------------------------------------------- the command


def default_finetune(checkpoint: str | Path | None, epochs: int) -> Finetune:
    """train/finetune.py's personalised fine-tuning as a ``Finetune``: the training run's settings
    (from the checkpoint's metadata, else TrainConfig's defaults), ``epochs`` epochs per subject."""

    train_cfg = finetune_config(Path(checkpoint) if checkpoint else None, FinetuneConfig(epochs=epochs), None)
    return lambda model, samples, n: finetune_model(model, samples, n, train_cfg=train_cfg)


def check_model_camera(data: str | Path, split: str | None, norm: NormalisationConfig | None, checkpoint: str | Path) -> None:
    """DataError naming the first h5 file of ``data``'s ``split`` whose normalised camera is not the checkpoint's
    (``norm``, its ``metadata.normalisation``; nothing to check when it records none): the same field of view
    (focal / resolution) and distance, looking at the same face centre (``eye_above_centre_mm``). The model reads a
    source through the camera its head pose gives in its own normalisation: another zoom or framing puts the face
    elsewhere than it learned faces to be. (Synthesis converts such inputs, pipelines/inputs.py; evaluation scores
    the store's own targets, so it takes the store as it is.)"""
    if norm is None:
        return
    for path, got in store_cameras(data, split):
        framed = got.same_framing(norm.eye_above_centre_mm)
        if not (framed and got.same_view(norm)):
            hint = ("a store framed otherwise holds other faces (`gazegen data prepare` frames real faces ETH-XGaze's way, "
                    "synth-heads its heads about the eye midpoint): evaluate the model on data framed like its own"
                    if not framed else same_camera_hint(path, norm))
            raise DataError(f"{path}: normalised camera of focal {got.focal:g} px at {got.resolution} px, {got.distance_mm:g} mm, "
                            f"looking {got.eye_above_centre_mm:g} mm below the eyes; {checkpoint} was trained on focal "
                            f"{norm.focal:g} px at {norm.resolution} px, {norm.distance_mm:g} mm, {norm.eye_above_centre_mm:g} mm "
                            f"below the eyes (its metadata.normalisation): {hint}")


def evaluate(checkpoint: str | Path, data: str | Path, out: str | Path, cfg: EvaluateConfig = EvaluateConfig(), *,
             estimator: str | Path | None = None, device: str | torch.device = "cpu", finetune_fn: Finetune | None = None,
             model: LiveGaze | None = None, overwrite: bool = False) -> EvaluationReport:
    """`gazegen evaluate CKPT DATA --out DIR`: writes report.json, report.md, sheet.png and (with probes) sweep.png to
    ``out`` (evaluation/report.py ``write_report``).

    ``estimator``: a reference-estimator checkpoint (evaluation/estimator.py); without one the gaze and
    head errors are n/a. ``model`` replaces loading ``checkpoint`` (the path is still reported). An ``out`` holding
    an earlier evaluation is refused before any work, unless ``overwrite``: its files are deleted before the run.
    """
    device = torch_device(device)
    if model is None:
        check_checkpoint_folder(checkpoint)
    out = check_report_folder(out, overwrite=overwrite)
    if cfg.finetune and finetune_fn is None:  # the training settings come from the checkpoint's metadata
        finetune_fn = default_finetune(checkpoint if model is None else None, cfg.finetune_epochs)
    if model is None:  # the store must be seen as the model was trained to see faces
        check_model_camera(data, cfg.split, checkpoint_normalisation(checkpoint), checkpoint)
    model = model.to(device).eval() if model is not None else load_checkpoint(checkpoint, device=device)
    methods: list = [LiveGazeMethod(model, finetune=finetune_fn if cfg.finetune else None, epochs=cfg.finetune_epochs,
                                    warmup=cfg.warmup)]
    if cfg.baselines:
        methods += [CopySource(), PerfectRender(model.cfg.render.neural_resolution), GroundTruthTarget()]
    judge = load_pretrained(estimator, GazeEstimator, device=device) if estimator is not None else None
    if judge is not None:  # an eye branch places its patches for one normalised camera: the store's must be it
        check_store_camera(data, cfg.split, judge.cfg)
    notes = [f"checkpoint: {checkpoint}", f"estimator: {estimator or 'none'}",
             "fine-tuning: " + (f"{cfg.finetune_epochs} epochs on each input group" if cfg.finetune else "none")]
    if estimator is not None:  # what the judge was trained on, and how good it is there: read the errors against it
        meta = read_header(estimator, GazeEstimator).metadata
        held = meta.get("test_eval") or {}
        notes.append(f"the estimator was trained on {meta.get('data', 'unrecorded data')} (as recorded where it was made)"
                     + (f"; its own error on {held.get('data')}: gaze {held['gaze_error']:.2f} deg, head "
                        f"{held['head_error']:.2f} deg" if held else "")
                     + ". Gaze and head errors below are relative to this estimator (the ground-truth target row "
                       "is its floor on these images).")
    clear_report_folder(out)  # an earlier evaluation's files (only with overwrite: checked above)
    with logging_redirect_tqdm():  # warnings print above the progress bar
        report = run_evaluation(data, methods, cfg, estimator=judge, device=device, notes=notes,
                                estimator_note="no estimator checkpoint given (--estimator)")
    if judge is not None and cfg.probes:

        files = store_files(data, cfg.split)
        report.probes = run_probes(model, files[: cfg.max_subjects] if cfg.max_subjects else files, judge, device)
    write_report(report, out)
    return report
