"""The source's own background behind every rendered view (``RenderConfig.source_background``).

The training losses cover the head only (the face mask), so a volume render's background is
whatever the super-resolution makes of empty rays: one flat colour (the demo's is dark brown)
that no photo has. A gaze estimator reads the whole image, and on the demo's procedural heads
that flat colour alone moves its readings: the ground-truth targets shrunk to 64 px read a head
pose 5.4 deg off on their own background and 9.8 deg off on the model's brown.

Instead, every view is composited onto a plate made from the source image:

    plate  = the source image, its own head filled in from the background around it
    output = image * a + plate * (1 - a)          a = min(1, 2 x the render's opacity), bilinear to the image side

(A pixel at least half opaque is the head's: the silhouette loss pulls the 64 px opacity to the head
mask, and the image loss fits the super-resolved output itself there, not a blend with a background;
blending from opacity 1/2 instead of 1 keeps 0.35 dB of face PSNR on the demo's held-out heads.)

The head to fill is where the model itself renders the source from the source camera with an
opacity above ``HEAD_ALPHA``, grown by ``MARGIN_PX``; it is filled by a masked-mean pyramid
("push-pull": each level averages the known pixels below it, holes take the upsampled coarser
level), so the plate is smooth where the head was and equals the source elsewhere. A background
fixed to the camera (the procedural heads', a studio wall) comes out exactly; for a photo the
plate is the background as the source camera saw it, a plausible backdrop for every view. The
eyes are never copied: they lie inside the rendered head, where a = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HEAD_ALPHA = 0.05  # source pixels rendered at least this opaque are the head, not background
MARGIN_PX = 2  # ... grown by this many pixels of the plate (the silhouette is soft and 2x coarser)
OPAQUE = 0.5  # a pixel of the view at least this opaque shows the view alone


def fill_holes(image: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """image (B, C, H, W) with ``known`` (B, 1, H, W) in {0, 1}: the unknown pixels filled from the known ones.

    Known pixels are returned unchanged; each unknown one takes the bilinearly upsampled value of
    the next coarser level, whose pixels are the mean of the known pixels under them (recursively,
    down to 1 x 1). An image with no known pixel stays as it is.
    """
    if image.shape[-1] <= 1 or image.shape[-2] <= 1:
        return image
    h, w = image.shape[-2:]
    pad = (0, w % 2, 0, h % 2)  # odd sides: the last row / column pools with a zero (unknown) neighbour
    weight = F.avg_pool2d(F.pad(known, pad), 2)  # (B, 1, h/2, w/2) share of known pixels
    coarse = F.avg_pool2d(F.pad(image * known, pad), 2) / weight.clamp_min(1e-12)  # their mean
    coarse = fill_holes(coarse, (weight > 0).to(image.dtype))
    up = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return torch.where(known > 0, image, up)


def background_plate(source: torch.Tensor, source_alpha: torch.Tensor) -> torch.Tensor:
    """Source images (B, 3, S, S) and their rendered opacity (B, 1, R, R) from the source camera -> plates (B, 3, S, S)."""
    alpha = F.interpolate(source_alpha, size=source.shape[-2:], mode="bilinear", align_corners=False)
    head = F.max_pool2d((alpha > HEAD_ALPHA).to(source.dtype), 2 * MARGIN_PX + 1, stride=1, padding=MARGIN_PX)
    return fill_holes(source, 1 - head)


def composite(image: torch.Tensor, alpha: torch.Tensor, plate: torch.Tensor) -> torch.Tensor:
    """Views (B, 3, S, S) over plates (B or 1, 3, S, S) by their opacity (B, 1, R, R), bilinear to S: (B, 3, S, S).

    The view where its opacity is at least ``OPAQUE``, a linear blend below.
    """
    a = (F.interpolate(alpha, size=image.shape[-2:], mode="bilinear", align_corners=False) / OPAQUE).clamp(0, 1)
    return image * a + plate * (1 - a)
