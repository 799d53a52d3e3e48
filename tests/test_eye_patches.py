"""Eye patches: centres in closed form, sampled exactly, and holding the rendered eyes of procedural heads."""

from __future__ import annotations

import math

import numpy as np
import torch

from gazegen.config import EyePatchConfig, SynthHeadsConfig
from gazegen.data.heads import render_subject, subject_plan
from gazegen.metrics.eye_patches import eye_centres, eye_patches

CFG = EyePatchConfig(width=8, above_centre_mm=4.0)


def test_frontal_centres_in_closed_form():
    """Head pose 0: the camera looks down -z of the head at distance d; an eye at (+-s, a, f) is at depth
    d - f and, with image y down, at (+-s, -a) * focal / (d - f) image sides from the centre."""
    c = eye_centres(torch.zeros(1, 2, dtype=torch.float64), CFG)
    n = CFG.normalisation
    depth = n.distance_mm - CFG.forward_mm
    x = 2 * (n.focal / n.resolution) * CFG.half_spacing_mm / depth
    y = -2 * (n.focal / n.resolution) * CFG.above_centre_mm / depth
    assert torch.allclose(c.depth_mm, torch.tensor([[depth, depth]], dtype=torch.float64))
    assert torch.allclose(c.xy, torch.tensor([[[x, y], [-x, y]]], dtype=torch.float64))  # the subject's left eye on the right


def test_pitch_and_yaw_in_closed_form():
    """Eyeball centres on the face centre's horizontal (forward 0, above 0): pitch turns them about
    their own line, so they stay put; yaw psi turns the line about the vertical through the face
    centre, the subject's left eye to depth d - s sin psi at x = focal s cos psi / (d - s sin psi),
    the right eye to d + s sin psi at -focal s cos psi / (d + s sin psi), both at the centre's height."""
    cfg = EyePatchConfig(forward_mm=0.0)
    psi = math.radians(40.0)
    c = eye_centres(torch.tensor([[0.5, 0.0], [-0.3, psi]], dtype=torch.float64), cfg)
    n, s = cfg.normalisation, cfg.half_spacing_mm
    f, d = 2 * n.focal / n.resolution, n.distance_mm  # focal in half image sides: grid coordinates
    near, far = d - s * math.sin(psi), d + s * math.sin(psi)
    expected = torch.tensor([[[f * s / d, 0.0], [-f * s / d, 0.0]],
                             [[f * s * math.cos(psi) / near, 0.0], [-f * s * math.cos(psi) / far, 0.0]]], dtype=torch.float64)
    assert torch.allclose(c.xy, expected, atol=1e-9)
    assert torch.allclose(c.depth_mm, torch.tensor([[d, d], [near, far]], dtype=torch.float64))


def test_patches_sample_the_window_exactly():
    """On an image whose channels are its own grid coordinates (bilinear interpolation of a linear
    ramp is exact), each patch pixel holds the image point it samples: the eye centre plus its offset
    in the window, the right eye's x running backwards (mirrored)."""
    size, w, h = 64, 9, 5
    cfg = EyePatchConfig(width=8, pixels=(w, h), window_mm=(30.0, 20.0))
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    image = torch.stack([coords.expand(size, size), coords[:, None].expand(size, size), torch.zeros(size, size)])[None]
    head = torch.tensor([[0.1, -0.3]], dtype=torch.float64)
    patches = eye_patches(image, head, cfg)  # (1, 2, 3, h, w)
    c = eye_centres(head, cfg)
    n = cfg.normalisation
    grid_per_mm = 2 * (n.focal / n.resolution) / c.depth_mm[0]  # (2,)
    u = (torch.arange(w, dtype=torch.float64) + 0.5) / w * 2 - 1  # patch pixel centres in [-1, 1]
    v = (torch.arange(h, dtype=torch.float64) + 0.5) / h * 2 - 1
    for eye, sign in ((0, 1.0), (1, -1.0)):
        x = c.xy[0, eye, 0] + sign * u * grid_per_mm[eye] * cfg.window_mm[0] / 2
        y = c.xy[0, eye, 1] + v * grid_per_mm[eye] * cfg.window_mm[1] / 2
        assert torch.allclose(patches[0, eye, 0], x.expand(h, w), atol=1e-6)
        assert torch.allclose(patches[0, eye, 1], y[:, None].expand(h, w), atol=1e-6)


def test_patches_hold_the_rendered_eyes():
    """Oracle: the eye masks of procedural heads (the renderer's own pixels of each eye opening). At
    every pose of the 18-camera rig (yaw up to 60 deg, pitch up to 30), for subjects whose eye spacing
    and eye shape differ from the config's nominal ones, every pixel of the subject's left eye lies
    inside patch 0's window and every pixel of the right eye inside patch 1's."""
    heads = SynthHeadsConfig(subjects=2, resolution=64, gazes=2, seed=5)
    cfg = EyePatchConfig()
    checked = 0
    for index in range(heads.subjects):
        samples = [s for chunk in render_subject(subject_plan(heads, index), heads) for s in chunk]
        c = eye_centres(torch.from_numpy(np.stack([s.head_pose for s in samples])).double(), cfg)
        px_per_mm = cfg.normalisation.focal / cfg.normalisation.resolution * heads.resolution / c.depth_mm  # (N, 2)
        for i, s in enumerate(samples):
            for eye, mask in enumerate((s.left_eye_mask, s.right_eye_mask)):
                ys, xs = np.nonzero(mask)
                centre = (c.xy[i, eye].numpy() + 1) / 2 * heads.resolution  # pixels
                half = np.array(cfg.window_mm) / 2 * float(px_per_mm[i, eye])
                inside = (np.abs(xs + 0.5 - centre[0]) <= half[0]) & (np.abs(ys + 0.5 - centre[1]) <= half[1])
                assert inside.all(), (s.subject, s.cam_index, eye)
                checked += len(xs) > 0
    assert checked == 2 * heads.subjects * heads.gazes * heads.rig.views
