"""Eye patches of a normalised face image, cut where the head pose puts the eyes.

In a normalised image (ETH-XGaze, Zhang et al.) the virtual camera looks at the face centre from a
fixed distance, with a fixed focal length and no roll (gazegen/geometry.py), so a point fixed to
the head projects to a place that depends on the head pose alone: ``geometry.head_pose_to_camera``
then ``geometry.project``. The eye branch of the reference estimator (gazegen/metrics/estimator.py)
cuts, around each eye, a window of fixed size in millimetres at the eye's depth: the same part of
the face at every head pose and image resolution, sampled at a few pixels per millimetre where the
whole face gets fewer.

Eye points are in the head's world frame (gazegen/data/head_model.py: EG3D axes, x to the subject's
left, y up, z out of the face, millimetres, the origin the face centre):
``(+-half_spacing_mm, above_centre_mm, forward_mm)``, the subject's left eye first. Image
coordinates are grid_sample's: [-1, 1] across the image edges (``align_corners=False``), x to the
right, y down; the principal point of the normalised camera is the image centre, 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gazegen import geometry
from gazegen.config import EyePatchConfig


@dataclass(frozen=True)
class EyeCentres:
    """Where the two eyes of B images are: the subject's left eye (index 0), then the right."""

    xy: torch.Tensor  # (B, 2, 2) image coordinates in [-1, 1], x right, y down
    depth_mm: torch.Tensor  # (B, 2) z along the camera axis


def eye_centres(head_pose: torch.Tensor, cfg: EyePatchConfig) -> EyeCentres:
    """(B, 2) head pitch/yaw radians (the image's normalised camera) -> the eyes' image positions."""
    norm = cfg.normalisation
    per_unit = geometry.mm_per_world_unit(norm)
    s = cfg.half_spacing_mm
    points = head_pose.new_tensor([[s, cfg.above_centre_mm, cfg.forward_mm],
                                   [-s, cfg.above_centre_mm, cfg.forward_mm]]) / per_unit  # (2, 3) world units
    camera = geometry.head_pose_to_camera(head_pose, norm)  # (B, 25)
    points = points.expand(len(head_pose), 2, 3)
    uv = geometry.project(points, camera, 1)  # (B, 2, 2) in image sides, principal point 0.5
    depth = geometry.world_to_camera_points(points, camera)[..., 2] * per_unit  # (B, 2)
    return EyeCentres(xy=2.0 * uv - 1.0, depth_mm=depth)


def eye_patches(image: torch.Tensor, head_pose: torch.Tensor, cfg: EyePatchConfig) -> torch.Tensor:
    """Images (B, 3, H, W) and their head poses (B, 2) -> eye patches (B, 2, 3, h, w), (w, h) = cfg.pixels.

    Patch 0 is the subject's left eye (on the image's right), patch 1 the right eye mirrored left
    to right, so that both show an eye with its nose side on the left.
    """
    b = len(image)
    centres = eye_centres(head_pose.to(image.dtype), cfg)
    # grid units per mm at the eye's depth: focal (in image sides) * 2 / depth
    scale = 2.0 * (cfg.normalisation.focal / cfg.normalisation.resolution) / centres.depth_mm  # (B, 2)
    half_w, half_h = (scale * cfg.window_mm[0] / 2, scale * cfg.window_mm[1] / 2)  # (B, 2) each
    mirror = image.new_tensor([1.0, -1.0])  # the right eye is sampled right to left
    zero = torch.zeros_like(half_w)
    theta = torch.stack([torch.stack([half_w * mirror, zero, centres.xy[..., 0]], -1),
                         torch.stack([zero, half_h, centres.xy[..., 1]], -1)], -2)  # (B, 2, 2, 3)
    w, h = cfg.pixels
    grid = F.affine_grid(theta.reshape(2 * b, 2, 3), [2 * b, image.shape[1], h, w], align_corners=False)
    patches = F.grid_sample(image.repeat_interleave(2, 0), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)  # (2B, 3, h, w)
    return patches.reshape(b, 2, image.shape[1], h, w)
