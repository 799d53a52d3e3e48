"""LiveGaze's training objective (paper section 3.4), weights from ``LossConfig``.

    L   = w_R * L_R + w_D * L_D + w_P * L_P                          (eq. 6; 1, 1, 0.8)
    L_R = w_f * L_Rf + w_e * L_Re                                     (eq. 7; 1, 2)
    L_Rf, L_Re = masked L1 of I_g - I_gt over the face / eye mask     (eq. 8, 9)
    L_D = L1 of D_g - D_gt over the pixels where the prior is valid   (eq. 10)
          (+ alpha_weight * silhouette + source_depth_weight * L1 of the predicted source depth: not in the paper)
    L_P = sum_i mean |phi_i(I_g) - phi_i(I_gt)|, phi_i VGG16 layers   (eq. 11: L1, per-layer mean)

Conventions:

- Images are gazegen's (B, 3, H, W) in [-1, 1]; the L1 terms are on those values.
- Masked L1 (eq. 8-9: "1 / |M . I_gt|" normalises by the masked region's size): per image, the mean
  of |I_g - I_gt| over the mask's pixels and the 3 channels; then the mean over the images of the
  batch whose mask is not empty. An empty mask (an image with no visible eyes) leaves that image
  out of the term; a batch where every mask is empty gives 0 (not NaN).
- Depth (eq. 10 writes a plain L1 norm; a mean is used so that w_D = 1 is on the scale of the other
  terms): the rendered depth and the prior in the same units (the renderer's world units). The
  prior is valid where it is finite and > 0 unless ``depth_valid`` says otherwise. A prior at
  another resolution is brought to the rendered depth's grid by area averaging over its valid
  pixels (a coarse pixel is valid when at least half its area is).
- Perceptual: VGG16 (ImageNet-pretrained, ``vgg16-397923af.pth``) at ``LossConfig.vgg_layers``;
  L1 between the features as the paper's eq. 11 states, each layer averaged over its elements and
  the layers summed. The target's features carry no gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.config import LossConfig
from gazegen.metrics.scores import masked_mean
from gazegen.rendering.compositing import density_activation

if TYPE_CHECKING:
    from gazegen.models.livegaze import LiveGaze, LiveGazeOutput
    from gazegen.train.data import Triplets

FeatureExtractor = Callable[[torch.Tensor], Mapping[str, torch.Tensor] | Sequence[torch.Tensor]]


@dataclass
class LossOutput:
    """The total (optimised) and every term (for logging); scalar tensors."""

    total: torch.Tensor
    reconstruction: torch.Tensor  # L_R = w_f L_Rf + w_e L_Re (unweighted by w_R)
    face: torch.Tensor  # L_Rf
    eyes: torch.Tensor  # L_Re
    depth: torch.Tensor  # L_D
    perceptual: torch.Tensor  # L_P (0 when disabled)
    margin: torch.Tensor  # empty_margin_loss, added by the trainer (0 when loss.margin_weight is 0)

    def scalars(self) -> dict[str, float]:
        """Plain floats for logging, keyed ``loss/<term>``."""
        return {f"loss/{k}": float(v.detach()) for k, v in vars(self).items()}


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over the mask, per image, then over images with a non-empty mask: ()."""
    per_image = masked_mean((pred.float() - target.float()).abs(), mask)  # (B,), NaN for empty masks
    present = ~per_image.isnan()
    if not present.any():
        return (pred.float() * 0.0).sum()  # 0, still attached to the graph
    return per_image[present].mean()


def _as_maps(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1) if x.ndim == 3 else x  # (B, H, W) -> (B, 1, H, W)


def depth_loss(depth: torch.Tensor, prior: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """L1 between rendered depth (B, [1,] h, w) and the prior (B, [1,] H, W) where the prior is valid: ()."""
    depth, prior = _as_maps(depth), _as_maps(prior).to(depth.dtype)
    valid = torch.isfinite(prior) & (prior > 0) if valid is None else _as_maps(valid).bool()
    prior = torch.where(valid, prior, torch.zeros_like(prior))  # no NaN/inf can leak into the sums
    if prior.shape[-2:] != depth.shape[-2:]:
        v = valid.to(prior.dtype)
        num = F.interpolate(prior * v, size=depth.shape[-2:], mode="area")
        den = F.interpolate(v, size=depth.shape[-2:], mode="area")
        prior, valid = num / den.clamp_min(1e-12), den >= 0.5
    return masked_l1_loss(depth, prior.detach(), valid)


def empty_margin_loss(model: LiveGaze, points: int, triplane: torch.Tensor | None = None) -> torch.Tensor:
    """Mean density (sigma, per world unit) of the mean planes at ``points`` uniform random points of their margin,
    beyond the source planes' cube and within the mean planes' reach (models/mean_planes.py): ().

    ``triplane`` (B, 3, C, P, P), the batch's source planes: read with the mean planes as the renderer reads them
    (``MeanPlanes.around``), so that a source plane whose axes both lie inside the cube (ZY at a point beside the
    head) counts too; None: the mean planes alone (stage 9 of weights/demo-livegaze).

    No camera of the demo's rig sees most of that shell: the sides of the head at eye height lie outside every one of
    its frames, so no image, depth or silhouette term reaches the margin texels there. Read together with the other
    planes' texels of the head, they rendered opaque floaters in views turned past the rig. This prior says the
    shell is empty; where cameras do see it (the shoulders below the cube) the data terms outweigh it. Points are
    drawn from torch's global generator, which checkpoints save and resume restores.
    """
    if model.mean is None:
        raise ValueError("loss.margin_weight > 0 needs a model with mean planes (model_overrides: mean_planes=true)")
    shell = shell_points(points, model.cfg.render.box_warp / 2, model.mean.extent / 2, model.mean.planes.device)
    planes = model.mean.texels(model.mean.planes.dtype, sources=triplane)  # (1 or B, 3, C, S, S)
    sets = shell[None].expand(planes.planes.shape[0], -1, -1)  # (1 or B, n, 3)
    raw = model.decoder.decode(planes.mean_at(sets)).density_raw  # (B or 1, n, 1)
    return density_activation(raw.float(), model.cfg.render.density_bias).mean()


def shell_points(n: int, inner: float, outer: float, device: torch.device | None = None) -> torch.Tensor:
    """About ``n`` uniform random points (m, 3), m <= n, between the cubes of half-sides ``inner`` < ``outer``.

    Rejection from the outer cube: 2n + 64 draws keep n in expectation once the shell holds over half its volume
    (the demo's 12-texel margin: 62%); fewer are returned, never more.
    """
    drawn = (torch.rand(2 * n + 64, 3, device=device) * 2 - 1) * outer  # (2n + 64, 3)
    return drawn[drawn.abs().amax(-1) > inner][:n]


def silhouette_loss(alpha: torch.Tensor, prior: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |alpha - S| over all pixels, S the prior's valid region (a surface) area-resized to alpha's side: ()."""
    valid = torch.isfinite(_as_maps(prior)) & (_as_maps(prior) > 0) if valid is None else _as_maps(valid)
    target = F.interpolate(valid.float(), size=alpha.shape[-2:], mode="area")
    return (_as_maps(alpha).float() - target).abs().mean()


def _feature_list(features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return list(features.values()) if isinstance(features, Mapping) else list(features)


def perceptual_loss(extractor: FeatureExtractor, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the extractor's layers of the mean |phi(pred) - phi(target)|: ()."""
    with torch.no_grad():
        target_features = _feature_list(extractor(target))
    pred_features = _feature_list(extractor(pred))
    terms = [(p.float() - t.float()).abs().mean() for p, t in zip(pred_features, target_features, strict=True)]
    return torch.stack(terms).sum()


class LiveGazeLoss(nn.Module):
    """The paper's objective. ``extractor``: a frozen feature network for L_P (default: the
    pretrained VGG16 at ``config.vgg_layers``, loaded only when ``config.perceptual`` and
    ``config.perceptual_weight > 0``; raises ``MissingWeightsError`` when its file is absent).
    """

    def __init__(self, config: LossConfig = LossConfig(), extractor: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.use_perceptual = config.perceptual and config.perceptual_weight > 0
        if self.use_perceptual and extractor is None:
            from gazegen.metrics.vgg import load_vgg16

            extractor = load_vgg16(tuple(config.vgg_layers))
        self.extractor = extractor.eval().requires_grad_(False) if self.use_perceptual and extractor is not None else None

    def train(self, mode: bool = True) -> LiveGazeLoss:
        super().train(mode)
        if self.extractor is not None:
            self.extractor.eval()  # a frozen network stays in eval mode
        return self

    def forward(
        self,
        image: torch.Tensor,  # (B, 3, H, W) I_g, generated, [-1, 1]
        target: torch.Tensor,  # (B, 3, H, W) I_gt
        face_mask: torch.Tensor,  # (B, [1,] H, W) M_f
        eye_mask: torch.Tensor,  # (B, [1,] H, W) M_e
        depth: torch.Tensor | None = None,  # (B, [1,] h, w) D_g, rendered
        depth_prior: torch.Tensor | None = None,  # (B, [1,] H', W') D_gt
        depth_valid: torch.Tensor | None = None,  # (B, [1,] H', W') where D_gt is valid
        image_raw: torch.Tensor | None = None,  # (B, 3, R, R) the neural rendering's RGB, for raw_weight
        alpha: torch.Tensor | None = None,  # (B, 1, R, R) the neural rendering's opacity, for alpha_weight
        source_depth: torch.Tensor | None = None,  # (B, 1, P, P) the model's predicted source depth (surface bands)
        source_depth_prior: torch.Tensor | None = None,  # (B, 1, R', R') the source's depth prior
        source_depth_valid: torch.Tensor | None = None,  # (B, 1, R', R') where it is valid
    ) -> LossOutput:
        cfg = self.config
        zero = image.new_zeros((), dtype=torch.float32)
        face = masked_l1_loss(image, target, face_mask)
        if cfg.raw_weight > 0 and image_raw is not None:  # the neural rendering against the target shrunk to its side
            size = image_raw.shape[-2:]
            face = face + cfg.raw_weight * masked_l1_loss(
                image_raw, F.interpolate(target, size=size, mode="area"),
                (F.interpolate(_as_maps(face_mask).float(), size=size, mode="area") >= 0.5).float())
        eyes = masked_l1_loss(image, target, eye_mask)
        reconstruction = cfg.face_weight * face + cfg.eye_weight * eyes
        if depth is not None and depth_prior is not None:
            depth_term = depth_loss(depth, depth_prior, depth_valid)
            if cfg.alpha_weight > 0 and alpha is not None:  # opaque where the prior has a surface, clear elsewhere
                depth_term = depth_term + cfg.alpha_weight * silhouette_loss(alpha, depth_prior, depth_valid)
            if cfg.source_depth_weight > 0 and source_depth is not None and source_depth_prior is not None:
                depth_term = depth_term + cfg.source_depth_weight * depth_loss(source_depth, source_depth_prior,
                                                                               source_depth_valid)
        elif cfg.depth_weight > 0:
            raise ValueError("the depth loss needs `depth` and `depth_prior`; set loss.depth_weight = 0 to train without one")
        else:
            depth_term = zero
        perceptual = perceptual_loss(self.extractor, image, target) if self.extractor is not None else zero
        total = (
            cfg.reconstruction_weight * reconstruction + cfg.depth_weight * depth_term + cfg.perceptual_weight * perceptual
        )  # eq. 6
        return LossOutput(total, reconstruction, face, eyes, depth_term, perceptual, margin=zero)

    def on_batch(self, out: LiveGazeOutput, batch: Triplets) -> LossOutput:
        """The objective of the model's output ``out`` for the triplets ``batch`` it was run on."""
        return self(out.image, batch.target, batch.face_mask, batch.eye_mask, out.depth, batch.depth_prior,
                    batch.depth_valid, out.image_raw, out.alpha, source_depth=out.source_depth,
                    source_depth_prior=batch.source_depth, source_depth_valid=batch.source_depth_valid)
