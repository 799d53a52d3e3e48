"""Image-quality and gaze metrics of the paper's evaluation (section 4.1): SSIM, PSNR, LPIPS, FID,
plus masked variants and angular error.

Ranges. Images are (B, 3, H, W) tensors in ``value_range`` (default gazegen's (-1, 1); pass
(0, 1) or (0, 255) for other images). SSIM, PSNR and L1 are computed after mapping the images
linearly to [0, 1], i.e. with ``data_range = 1`` on [0, 1] images, the usual convention (SSIM is not
shift-invariant, so the range matters: SSIM of [-1, 1] images computed with data_range 2 differs).
LPIPS and the FID Inception take [-1, 1], their networks' native range. Per-image metrics return
a (B,) float64 tensor; aggregate over a test set with ``summarise``.

Masks. ``mask`` is (B, H, W), (B, 1, H, W) or (B, C, H, W), {0, 1} (or any non-negative weights;
0/255 works too: only ratios matter). A masked metric averages over the pixels (and channels)
inside the mask only. Empty-mask rule: an image whose mask is empty gets NaN; ``summarise`` leaves
NaNs out of the mean and says how many were left out. Never 0, which would read as perfect.

Pretrained networks. LPIPS and FID need published weights (gazegen.weights). ``LPIPSMetric.load``
and ``FIDMetric.load`` never fall back to random weights: when a file is missing they build an
*unavailable* metric whose ``compute()`` returns ``MetricResult(value=None, note=<which file is
missing, where it was looked for, where to get it>)``, so an evaluation report prints "n/a" with
the reason and never a number from an untrained network. A file that is present but fails its
checksum raises ``WeightsChecksumError`` (a broken install is an error, not a missing metric).

Angular error is ``gazegen.geometry.angular_error`` (degrees), re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gazegen.geometry import angular_error
from gazegen.weights import MissingWeightsError

__all__ = [
    "FIDMetric", "GaussianStats", "LPIPSMetric", "MetricResult", "angular_error", "frechet_distance",
    "gaussian_stats", "l1", "masked_l1", "masked_mean", "masked_psnr", "psnr", "ssim", "summarise",
]  # fmt: skip

Range = tuple[float, float]
GAZEGEN_RANGE: Range = (-1.0, 1.0)


@dataclass(frozen=True)
class MetricResult:
    """A reported metric: ``value`` None means unavailable, and ``note`` says why."""

    value: float | None
    note: str = ""

    @property
    def available(self) -> bool:
        return self.value is not None

    def __str__(self) -> str:
        if self.value is None:
            return f"n/a ({self.note})"
        return f"{self.value:.4f}" + (f" ({self.note})" if self.note else "")


def summarise(values: torch.Tensor | np.ndarray, what: str = "image") -> MetricResult:
    """Mean of per-image values, NaNs (empty masks) left out and counted in the note."""
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).ravel()
    finite = ~np.isnan(v)
    if not finite.any():
        return MetricResult(None, f"no {what} with a non-empty mask (of {v.size})")
    skipped = int((~finite).sum())
    return MetricResult(float(v[finite].mean()), f"{skipped} of {v.size} {what}s had an empty mask" if skipped else "")


def to_unit(x: torch.Tensor, value_range: Range = GAZEGEN_RANGE) -> torch.Tensor:
    """Map images from ``value_range`` to [0, 1], as float64."""
    lo, hi = value_range
    return (x.to(torch.float64) - lo) / (hi - lo)


def _mask_like(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if mask.ndim == x.ndim - 1:
        mask = mask.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    if mask.ndim != x.ndim or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(x.shape)}")
    return mask.to(x.dtype).expand_as(x)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image weighted mean of (B, C, H, W) ``values`` over ``mask``: (B,); NaN where the mask is empty."""
    m = _mask_like(mask, values)
    den = m.flatten(1).sum(1)  # (B,)
    num = (values * m).flatten(1).sum(1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(values.dtype).tiny), torch.full_like(den, math.nan))


# --------------------------------------------------------------------------- pixel metrics


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    r = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    w = torch.exp(-0.5 * (r / sigma) ** 2)
    return w / w.sum()  # (size,)


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    value_range: Range = GAZEGEN_RANGE,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """SSIM (Wang et al. 2004) per image: (B,), on images mapped to [0, 1] (data_range 1).

    Gaussian window 11x11, sigma 1.5, population covariances; the mean runs over the pixels
    whose whole window lies inside the image (a border of win_size // 2 is left out) and over
    channels. Equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=...)`` on the [0, 1] images.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) images of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"ssim: images of {tuple(a.shape[-2:])} are smaller than the {win_size}-pixel window")
    x, y = to_unit(a, value_range), to_unit(b, value_range)
    bsz, ch, h, w = x.shape
    g = _gaussian_window(win_size, sigma, x)
    maps = torch.cat([x, y, x * x, y * y, x * y]).reshape(5 * bsz * ch, 1, h, w)
    maps = F.conv2d(maps, g.view(1, 1, 1, -1))  # valid convolution along W
    maps = F.conv2d(maps, g.view(1, 1, -1, 1))  # then along H
    mx, my, mxx, myy, mxy = maps.reshape(5, bsz, ch, *maps.shape[-2:])
    vx, vy, vxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = k1**2, k2**2  # data_range 1
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def psnr(a: torch.Tensor, b: torch.Tensor, *, value_range: Range = GAZEGEN_RANGE) -> torch.Tensor:
    """PSNR in dB per image: (B,), ``10 log10(1 / MSE)`` on images mapped to [0, 1]; inf when equal."""
    mse = (to_unit(a, value_range) - to_unit(b, value_range)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)


def masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, *, value_range: Range = GAZEGEN_RANGE) -> torch.Tensor:
    """PSNR per image over the mask's pixels only: (B,); NaN for an empty mask."""
    mse = masked_mean((to_unit(a, value_range) - to_unit(b, value_range)).pow(2), mask)
    return 10.0 * torch.log10(1.0 / mse)


def l1(a: torch.Tensor, b: torch.Tensor, *, value_range: Range = GAZEGEN_RANGE) -> torch.Tensor:
    """Mean absolute error per image, on images mapped to [0, 1]: (B,)."""
    return (to_unit(a, value_range) - to_unit(b, value_range)).abs().flatten(1).mean(1)


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, *, value_range: Range = GAZEGEN_RANGE) -> torch.Tensor:
    """Mean absolute error per image over the mask's pixels and channels: (B,); NaN for an empty mask."""
    return masked_mean((to_unit(a, value_range) - to_unit(b, value_range)).abs(), mask)


# --------------------------------------------------------------------------- LPIPS


def _device(model: torch.nn.Module) -> torch.device:
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _to_signed(x: torch.Tensor, value_range: Range) -> torch.Tensor:
    lo, hi = value_range
    return (x.float() - lo) / (hi - lo) * 2.0 - 1.0


class LPIPSMetric:
    """Per-image LPIPS (VGG, v0.1), accumulated over batches.

    ``LPIPSMetric.load()`` loads the published weights or, when a file is missing, returns an
    unavailable metric (``update`` returns None, ``compute`` says which file is missing). Tests
    and callers that hold a model pass it directly: ``LPIPSMetric(model)``.
    """

    def __init__(self, model: torch.nn.Module | None, unavailable: str = "", value_range: Range = GAZEGEN_RANGE):
        if model is None and not unavailable:
            raise ValueError("LPIPSMetric needs a model or the reason it is unavailable; use LPIPSMetric.load()")
        self.model = model.eval() if model is not None else None
        self.unavailable = unavailable
        self.value_range = value_range
        self.values: list[torch.Tensor] = []

    @classmethod
    def load(cls, device: str | torch.device = "cpu", value_range: Range = GAZEGEN_RANGE) -> LPIPSMetric:
        from gazegen.metrics.lpips import load_lpips

        try:
            return cls(load_lpips().to(device), value_range=value_range)
        except MissingWeightsError as e:
            return cls(None, unavailable=str(e), value_range=value_range)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Add a batch; returns its per-image values (B,), or None when unavailable."""
        if self.model is None:
            return None
        device = _device(self.model)
        d = self.model(_to_signed(pred, self.value_range).to(device), _to_signed(target, self.value_range).to(device))
        self.values.append(d.double().cpu())
        return self.values[-1]

    def compute(self) -> MetricResult:
        if self.model is None:
            return MetricResult(None, self.unavailable)
        if not self.values:
            return MetricResult(None, "no images")
        return MetricResult(float(torch.cat(self.values).mean()))


# --------------------------------------------------------------------------- FID


@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,) and covariance (D, D) of a feature set, float64; ``n`` samples."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def gaussian_stats(features: torch.Tensor | np.ndarray) -> GaussianStats:
    """Mean and unbiased covariance (ddof 1, as pytorch-fid's ``np.cov``) of (N, D) features."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_stats needs (N >= 2, D) features, got shape {f.shape}")
    return GaussianStats(f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False)), f.shape[0])


def frechet_distance(a: GaussianStats, b: GaussianStats, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Heusel et al. 2017).

    The usual numerical fixes (pytorch-fid's): when ``sqrtm(S_a S_b)`` is not finite (singular
    product, e.g. fewer samples than dimensions) both covariances get ``eps`` added to their
    diagonal; a complex result from rounding is replaced by its real part, provided the
    imaginary part of its diagonal is negligible (|.| <= 1e-3), else ValueError.
    """
    import scipy.linalg  # only FID needs scipy

    diff = a.mu - b.mu
    covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma)
    if not np.isfinite(covmean).all():
        offset = np.eye(a.sigma.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((a.sigma + offset) @ (b.sigma + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: sqrtm has a large imaginary component {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * np.trace(covmean))


class FIDMetric:
    """FID between the real and generated images of an evaluation, from FID-Inception features.

    ``update(real=..., fake=...)`` adds batches (either may be given alone); ``compute()`` returns
    the Fréchet distance of the two feature sets' Gaussians. ``FIDMetric.load()`` builds an
    unavailable metric when ``pt_inception-2015-12-05-6726825d.pth`` is missing. FID from a few
    hundred images is biased upwards; the note gives the sample counts.
    """

    def __init__(self, model: torch.nn.Module | None, unavailable: str = "", value_range: Range = GAZEGEN_RANGE):
        if model is None and not unavailable:
            raise ValueError("FIDMetric needs a model or the reason it is unavailable; use FIDMetric.load()")
        self.model = model.eval() if model is not None else None
        self.unavailable = unavailable
        self.value_range = value_range
        self.features: dict[str, list[np.ndarray]] = {"real": [], "fake": []}

    @classmethod
    def load(cls, device: str | torch.device = "cpu", value_range: Range = GAZEGEN_RANGE) -> FIDMetric:
        from gazegen.metrics.inception import load_fid_inception

        try:
            return cls(load_fid_inception().to(device), value_range=value_range)
        except MissingWeightsError as e:
            return cls(None, unavailable=str(e), value_range=value_range)

    @torch.no_grad()
    def update(self, real: torch.Tensor | None = None, fake: torch.Tensor | None = None) -> None:
        if self.model is None:
            return
        device = _device(self.model)
        for key, images in (("real", real), ("fake", fake)):
            if images is not None:
                feats = self.model(_to_signed(images, self.value_range).to(device))  # (B, 2048)
                self.features[key].append(feats.double().cpu().numpy())

    def compute(self) -> MetricResult:
        if self.model is None:
            return MetricResult(None, self.unavailable)
        n_real, n_fake = (sum(len(f) for f in self.features[k]) for k in ("real", "fake"))
        if min(n_real, n_fake) < 2:
            return MetricResult(None, f"FID needs >= 2 images per side (real {n_real}, generated {n_fake})")
        stats = [gaussian_stats(np.concatenate(self.features[k])) for k in ("real", "fake")]
        return MetricResult(frechet_distance(*stats), f"{n_real} real, {n_fake} generated images")
