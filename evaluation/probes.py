"""Probes of a redirection model that image metrics cannot see: does the gaze follow, and does only the gaze move?

SSIM and PSNR reward a blurry average face, and a model that treats the gaze as a code for
something else (lighting, identity) can still lower its loss. Two probes, on held-out subjects,
judged by the reference estimator:

* **gaze sweep**: per subject, one source image (its first) rendered from its own camera under K
  requested gazes (a grid of ``sweep_deg`` pitch x yaw in the head frame). Reported: the
  estimator's read gaze against the requested one (Pearson correlation of pitch and of yaw, mean
  angular error), and how much the output moves across the sweep inside the eye region and
  outside it (mean absolute deviation from the sweep's mean image, on [0, 1] images). A model that
  redirects gaze moves the eyes and nothing else: ``outside / inside`` near 0.
* **swap test**: for pairs (source, gaze, camera), the output change when the *source image* is
  swapped for another subject's (gaze and camera kept) against when the *gaze* is swapped for
  another pair's (source and camera kept), inside and outside the eye region; beside them, how
  much the two source images themselves differ. A model that reads its source and obeys its gaze
  changes outside the eyes when the source changes, and inside them when the gaze changes.

The eye region is the image's eye masks (both eyes) grown by ``eyelid_mm`` (the lids follow the
gaze), at the output resolution; "outside" is the rest of the face mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import torch

from gazegen.data.images import from_model_range, image_tensor, mask_tensor, resize_nearest, to_unit
from gazegen.data.sample import Sample
from gazegen.data.xgaze import open_subject
from gazegen.geometry import angular_error, gaze_head_to_camera, head_pose_to_rotation
from gazegen.models.livegaze import LiveGaze
from gazegen.evaluation.pupils import PupilFollowing, offsets_vs_gaze, pupil_offset

Estimator = Any  # (B, 3, H, W) in [-1, 1] -> GazeEstimate (evaluation/evaluate.py's Estimator)


@dataclass(frozen=True)
class Following:
    """How the read gaze follows the requested one (camera frame, radians in; degrees and r out)."""

    pitch_corr: float | None
    yaw_corr: float | None
    error_deg: float
    count: int

    @classmethod
    def of(cls, read: np.ndarray, requested: np.ndarray) -> Following:
        """``read`` and ``requested`` (N, 2) pitch/yaw; a constant column has no correlation (None)."""
        corr = [pearson(read[:, i], requested[:, i]) for i in range(2)]
        error = float(np.mean(angular_error(read.astype(np.float64), requested.astype(np.float64))))
        return cls(corr[0], corr[1], error, len(read))


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r of two samples, None when either is constant (or has fewer than two values)."""
    if len(a) < 2:
        return None
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 1e-12 else None


@dataclass(frozen=True)
class Regions:
    """Where change is measured, at the output side: (B, 1, S, S) float {0, 1} each."""

    eyes: torch.Tensor
    rest: torch.Tensor  # the face outside the eye region

    @classmethod
    def of(cls, samples: list[Sample], size: int, eyelid_mm: float) -> Regions:
        eyes, rest = [], []
        for s in samples:
            if s.eye_mask is None or s.face_mask is None:
                raise ValueError(f"{s.subject}: the probes need face and eye masks")
            norm = s.normalisation.at_resolution(s.resolution)
            grow = max(1, round(eyelid_mm * norm.focal / norm.distance_mm))  # pixels at the face's depth
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
            eye = cv2.dilate(s.eye_mask.astype(np.uint8), kernel) > 0
            face = s.face_mask.astype(bool) | eye
            eyes.append(mask_tensor(eye, size))  # (1, S, S) area-averaged, cut at 0.5, as training's masks
            rest.append(mask_tensor(face & ~eye, size))
        return cls(torch.stack(eyes), torch.stack(rest))


def region_means(change: torch.Tensor, region: torch.Tensor) -> float:
    """Mean over the region's pixels of ``change`` (B, C, S, S) averaged over channels."""
    per_pixel = change.mean(1, keepdim=True)
    return float((per_pixel * region).sum() / region.sum().clamp_min(1))


@dataclass(frozen=True)
class SweepResult:
    following: Following
    change_eyes: float  # mean |I_k - mean_k I_k| inside the eye region, [0, 1] images
    change_rest: float  # the same over the face outside it
    pupils: PupilFollowing  # estimator-free: the pupils' offsets against the requested gaze, and the data's
    gazes: int  # K per subject
    subjects: int

    @property
    def rest_over_eyes(self) -> float | None:
        return self.change_rest / self.change_eyes if self.change_eyes > 0 else None


@dataclass(frozen=True)
class SwapResult:
    source_eyes: float  # output change when the source image is swapped, inside the eye region
    source_rest: float  # ... outside it
    gaze_eyes: float  # output change when the gaze is swapped, inside the eye region
    gaze_rest: float
    data_rest: float  # how much the two source images differ, outside the eye region (the yardstick)
    pairs: int


@dataclass(frozen=True)
class ProbeReport:
    sweep: SweepResult
    swap: SwapResult
    sweep_images: np.ndarray  # (K, S, S, 3) uint8: the first subject's sweep, for the sheet
    sweep_source: np.ndarray  # (S, S, 3) uint8 its source
    sweep_grid: tuple[int, int]  # (rows = pitches, columns = yaws)
    sweep_labels: tuple[str, ...]  # "p, y" in degrees of each sweep image

    def to_json(self) -> dict[str, Any]:
        sweep = asdict(self.sweep) | {"rest_over_eyes": self.sweep.rest_over_eyes}
        return {"gaze_sweep": sweep, "swap": asdict(self.swap)}


def sweep_gazes(steps: int, max_deg: float) -> np.ndarray:
    """(steps * steps, 2) head-frame gazes on a grid of pitch x yaw within +-max_deg, pitch-major."""
    values = np.radians(np.linspace(-max_deg, max_deg, steps))
    pitch, yaw = np.meshgrid(values, values, indexing="ij")
    return np.stack([pitch.ravel(), yaw.ravel()], -1).astype(np.float32)


def _image(samples: list[Sample], size: int) -> torch.Tensor:
    return torch.stack([image_tensor(s.image, size) for s in samples])  # (N, 3, size, size) in [-1, 1], as training's


@torch.no_grad()
def _redirect(model: LiveGaze, sources: list[Sample], gaze_head: np.ndarray, cameras: np.ndarray,
              device: torch.device, batch: int) -> torch.Tensor:
    """Outputs (N, 3, S, S) in [-1, 1] for N sources (or one, shared), gazes and cameras."""
    res = model.cfg.image_resolution
    outs = []
    for start in range(0, len(gaze_head), batch):
        stop = min(start + batch, len(gaze_head))
        src = sources if len(sources) == 1 else sources[start:stop]
        image = _image(src, res).to(device)
        source_camera = torch.from_numpy(np.stack([s.camera for s in src])).float().to(device)
        features = model.encode(image, source_camera)
        triplane = model.redirect(features, torch.from_numpy(gaze_head[start:stop]).to(device))
        cams = torch.from_numpy(cameras[start:stop]).float().to(device)
        outs.append(model.render(triplane, cams, source=features).image.cpu())
    return torch.cat(outs)


@torch.no_grad()
def _read(estimator: Estimator, image: torch.Tensor, device: torch.device) -> np.ndarray:
    return estimator(image.to(device)).gaze.double().cpu().numpy()


def gaze_sweep(model: LiveGaze, subjects: list[list[Sample]], estimator: Estimator, device: torch.device, *,
               steps: int = 5, max_deg: float = 25.0, eyelid_mm: float = 6.0, batch: int = 8
               ) -> tuple[SweepResult, torch.Tensor, Sample]:
    """The sweep over each subject's first image; also the first subject's outputs and source, for the sheet."""
    gazes = sweep_gazes(steps, max_deg)
    size = model.cfg.output_resolution
    read, requested, eyes, rest, first = [], [], [], [], None
    model_offsets, data_offsets, data_gaze = [], [], []  # pupil offsets (N, 2) and the data's gazes (N, 2)
    for samples in subjects:
        source = samples[0]
        cameras = np.repeat(source.camera[None], len(gazes), 0)
        out = _redirect(model, [source], gazes, cameras, device, batch)  # (K, 3, S, S)
        first = (out, source) if first is None else first
        read.append(_read(estimator, out, device))
        requested.append(gaze_head_to_camera(gazes.astype(np.float64), head_pose_to_rotation(source.head_pose.astype(np.float64))))
        eye_mask = resize_nearest(source.eye_mask.astype(np.uint8), size)
        model_offsets.append(np.stack([pupil_offset(image, eye_mask) for image in _uint8(out)]))
        same_camera = [s for s in samples if s.cam_index == source.cam_index]
        data_offsets.append(np.stack([pupil_offset(s.image, s.eye_mask) for s in same_camera]))
        data_gaze.append(np.stack([s.gaze for s in same_camera]).astype(np.float64))
        regions = Regions.of([source], size, eyelid_mm)
        unit = to_unit(out)
        deviation = (unit - unit.mean(0, keepdim=True)).abs()  # (K, 3, S, S)
        eyes.append(region_means(deviation, regions.eyes.expand(len(gazes), -1, -1, -1)))
        rest.append(region_means(deviation, regions.rest.expand(len(gazes), -1, -1, -1)))
    following = Following.of(np.concatenate(read), np.concatenate(requested))
    model_kept, model_req = offsets_vs_gaze(np.concatenate(model_offsets), np.concatenate(requested))
    data_kept, data_req = offsets_vs_gaze(np.concatenate(data_offsets), np.concatenate(data_gaze))
    pupil_following = PupilFollowing(  # pupil x against yaw, pupil y against pitch
        model_yaw=pearson(model_kept[:, 0], model_req[:, 1]), model_pitch=pearson(model_kept[:, 1], model_req[:, 0]),
        data_yaw=pearson(data_kept[:, 0], data_req[:, 1]), data_pitch=pearson(data_kept[:, 1], data_req[:, 0]))
    result = SweepResult(following, float(np.mean(eyes)), float(np.mean(rest)), pupil_following, len(gazes), len(subjects))
    return result, first[0], first[1]


def swap_test(model: LiveGaze, pairs: list[tuple[Sample, Sample]], device: torch.device, *, eyelid_mm: float = 6.0,
              batch: int = 8) -> SwapResult:
    """``pairs`` of (source, target): the target gives the gaze and camera; pair i swaps with pair (i + n/2) mod n.

    Pairs should come from two or more subjects, ordered by subject, so that the swapped source is
    another subject's face.
    """
    n, size = len(pairs), model.cfg.output_resolution
    other = [(i + n // 2) % n for i in range(n)]
    sources, targets = [p[0] for p in pairs], [p[1] for p in pairs]
    gaze = np.stack([t.gaze_head for t in targets]).astype(np.float32)
    cameras = np.stack([t.camera for t in targets])
    base = to_unit(_redirect(model, sources, gaze, cameras, device, batch))
    swapped_source = to_unit(_redirect(model, [sources[j] for j in other], gaze, cameras, device, batch))
    swapped_gaze = to_unit(_redirect(model, sources, gaze[other], cameras, device, batch))
    regions = Regions.of(targets, size, eyelid_mm)
    d_src, d_gaze = (swapped_source - base).abs(), (swapped_gaze - base).abs()
    data = (to_unit(_image(sources, size)) - to_unit(_image([sources[j] for j in other], size))).abs()
    source_rest = Regions.of(sources, size, eyelid_mm).rest
    return SwapResult(region_means(d_src, regions.eyes), region_means(d_src, regions.rest),
                      region_means(d_gaze, regions.eyes), region_means(d_gaze, regions.rest),
                      region_means(data, source_rest), n)


def _uint8(x: torch.Tensor) -> np.ndarray:
    return from_model_range(x.float()).permute(0, 2, 3, 1).numpy()  # (N, S, S, 3)


def run_probes(model: LiveGaze, files: list, estimator: Estimator, device: str | torch.device, *, steps: int = 5,
               max_deg: float = 25.0, swap_pairs: int = 8, eyelid_mm: float = 6.0, batch: int = 8) -> ProbeReport:
    """Both probes on the subject files ``files`` (held out): the sweep from each one's first image; the swap
    test on ``swap_pairs`` (source, target) pairs per subject, spread over the file (image i*s -> n - 1 - i*s),
    so that the targets' gazes differ."""
    device = torch.device(device)
    model = model.to(device).eval()
    subjects, pairs = [], []
    for path in files:
        with open_subject(path) as reader:
            samples = reader.read(0, len(reader))
        subjects.append(samples)
        n, k = len(samples), min(swap_pairs, len(samples) // 2)
        step = max(1, n // (2 * max(k, 1)))  # spread over the file: frame-major stores keep a frame's rows together
        pairs += [(samples[i * step], samples[n - 1 - i * step]) for i in range(k)]
    sweep, outputs, source = gaze_sweep(model, subjects, estimator, device, steps=steps, max_deg=max_deg,
                                        eyelid_mm=eyelid_mm, batch=batch)
    swap = swap_test(model, pairs, device, eyelid_mm=eyelid_mm, batch=batch)
    size = model.cfg.output_resolution
    labels = tuple(f"{np.degrees(p):+.0f}, {np.degrees(y):+.0f}" for p, y in sweep_gazes(steps, max_deg))
    return ProbeReport(sweep, swap, _uint8(outputs), _uint8(_image([source], size))[0], (steps, steps), labels)
