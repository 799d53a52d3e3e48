"""Validation during training: the losses, masked PSNR of the eyes and the face, depth error, and a picture.

Metrics (per image, then the mean over images; an image whose mask is empty is left out, see
gazegen.metrics.summarise):

    psnr_eyes    PSNR of the prediction against I_gt over I_gt's eye mask (dB, images mapped to [0, 1])
    psnr_face    the same over the face mask
    depth_l1_mm  mean |D_g - D_gt| over the pixels where the prior is valid, in millimetres
    loss/*       the training objective's terms

The grid shows, per row, the source I_s, the target I_gt, the prediction I_g, the rendered depth
D_g and the prior D_gt, both on one colour scale (the prior's range) with the background black: the
prior's invalid pixels, and the pixels the model renders as empty (opacity < 0.5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gazegen.metrics import scores as metrics
from gazegen.data.images import to_unit
from gazegen.imaging import resize_tensor
from gazegen.models.livegaze import LiveGaze
from gazegen.train.data import Triplets
from gazegen.train.losses import LiveGazeLoss


@dataclass
class Predictions:
    """The first rows of a validation pass, on the CPU, for the grid."""

    source: torch.Tensor  # (n, 3, S_in, S_in)
    target: torch.Tensor  # (n, 3, S, S)
    image: torch.Tensor  # (n, 3, S, S)
    depth: torch.Tensor  # (n, 1, R, R) world units
    alpha: torch.Tensor  # (n, 1, R, R) rendered opacity
    prior: torch.Tensor  # (n, 1, R, R) world units
    valid: torch.Tensor  # (n, 1, R, R) bool


@dataclass
class ValidationResult:
    metrics: dict[str, float]
    predictions: Predictions | None


def depth_l1_mm(depth: torch.Tensor, prior: torch.Tensor, valid: torch.Tensor, mm_per_unit: torch.Tensor) -> torch.Tensor:
    """Per image mean |depth - prior| over valid pixels, in millimetres: (B,), NaN where nothing is valid."""
    err = (depth.float() - prior.float()).abs() * mm_per_unit.view(-1, 1, 1, 1).float()
    return metrics.masked_mean(err, valid.float())


@torch.no_grad()
def validate(model: LiveGaze, batches: Iterable[Triplets], loss_fn: LiveGazeLoss, device: torch.device,
             autocast: contextlib.AbstractContextManager | None = None, keep: int = 4) -> ValidationResult:
    """Score ``model`` (eval mode, restored after) on ``batches``; keep the first ``keep`` rows for the grid."""
    was_training = model.training
    model.eval()
    per_image: dict[str, list[torch.Tensor]] = {"psnr_eyes": [], "psnr_face": [], "depth_l1_mm": []}
    losses: dict[str, list[float]] = {}
    kept: list[Predictions] = []
    n_kept = 0
    try:
        for batch in batches:
            batch = batch.to(device)
            with autocast or contextlib.nullcontext():
                out = model(batch.source, batch.gaze_head, batch.camera, batch.source_camera)
                terms = loss_fn.on_batch(out, batch)  # the training objective, every term
            for key, value in terms.scalars().items():
                losses.setdefault(key, []).append(value * len(batch))
            image = out.image.float().clamp(-1, 1)
            per_image["psnr_eyes"].append(metrics.masked_psnr(image, batch.target, batch.eye_mask).cpu())
            per_image["psnr_face"].append(metrics.masked_psnr(image, batch.target, batch.face_mask).cpu())
            per_image["depth_l1_mm"].append(depth_l1_mm(out.depth, batch.depth_prior, batch.depth_valid, batch.mm_per_unit).cpu())
            if n_kept < keep:
                n = min(keep - n_kept, len(batch))
                kept.append(Predictions(batch.source[:n].cpu(), batch.target[:n].cpu(), image[:n].cpu(),
                                        out.depth[:n].float().cpu(), out.alpha[:n].float().cpu(), batch.depth_prior[:n].cpu(), batch.depth_valid[:n].cpu()))
                n_kept += n
    finally:
        model.train(was_training)
    count = sum(len(v) for v in per_image["psnr_eyes"])
    result = {key: sum(v) / max(count, 1) for key, v in losses.items()}
    for key, values in per_image.items():
        summary = metrics.summarise(torch.cat(values)) if values else metrics.MetricResult(None)
        result[key] = summary.value if summary.value is not None else float("nan")
    predictions = Predictions(*(torch.cat([getattr(p, f) for p in kept]) for f in Predictions.__dataclass_fields__)) if kept else None
    return ValidationResult(result, predictions)


def _rgb(x: torch.Tensor, size: int) -> np.ndarray:
    return to_unit(resize_tensor(x[None].float(), size)[0]).permute(1, 2, 0).numpy()  # (size, size, 3) in [0, 1]


def prediction_grid(p: Predictions) -> np.ndarray:
    """A (H, W, 3) uint8 figure: one row per kept sample, columns source, target, prediction, depth, prior."""
    rows, size = p.source.shape[0], p.target.shape[-1]
    fig = Figure(figsize=(5 * 1.8, rows * 1.8))  # object API: no pyplot state, no global backend
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 5, squeeze=False)
    for i in range(rows):
        valid = p.valid[i, 0]
        prior = p.prior[i, 0]
        lo, hi = (prior[valid].min().item(), prior[valid].max().item()) if valid.any() else (p.depth[i].min().item(), p.depth[i].max().item())
        panels = [
            ("source", _rgb(p.source[i], size), {}),
            ("target", _rgb(p.target[i], size), {}),
            ("prediction", _rgb(p.image[i], size), {}),
            ("depth", np.ma.masked_where(p.alpha[i, 0].numpy() < 0.5, p.depth[i, 0].numpy()),
             {"cmap": "viridis_r", "vmin": lo, "vmax": hi}),
            ("depth prior", np.ma.masked_where(~valid.numpy(), prior.numpy()), {"cmap": "viridis_r", "vmin": lo, "vmax": hi}),
        ]
        for j, (title, img, kwargs) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, interpolation="nearest", **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.set_facecolor("black")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
