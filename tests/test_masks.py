"""Landmark masks against the renderer's exact masks of procedural heads photographed at known poses."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from gazegen.config import NormalisationConfig
from gazegen.data.heads import sample_identity
from gazegen.data.masks import landmark_masks
from gazegen.data.normalise import normalise_face
from gazegen.data.photo_heads import mean_head_model_mm, photograph_head, rotation_from_pose

torch.set_num_threads(1)
NORM = NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=224)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def cases():
    """(crop masks from landmarks, true masks warped into the crop) for six heads."""
    rng = np.random.default_rng(5)
    model = mean_head_model_mm()
    out = []
    for i in range(6):
        identity = sample_identity(np.random.default_rng(200 + i))
        rot = rotation_from_pose(*np.radians(rng.uniform([-15, -30, -20], [15, 30, 20])))
        photo = photograph_head(identity, rot, np.array([rng.uniform(-40, 40), rng.uniform(-30, 30), 600.0]), 256, 500.0)
        face = normalise_face(photo.image, photo.landmarks, photo.camera_matrix, NORM, model=model)
        warp = lambda m: cv2.warpPerspective(m.astype(np.uint8), face.warp, (224, 224), flags=cv2.INTER_NEAREST)  # noqa: E731
        true = {"face": warp(photo.face_mask), "left": warp(photo.left_eye_mask), "right": warp(photo.right_eye_mask)}
        out.append((landmark_masks(face, photo.camera_matrix, model), true))
    return out


def test_masks_are_binary_and_nested(cases):
    for masks, _ in cases:
        for m in (masks.face_mask, masks.left_eye_mask, masks.right_eye_mask):
            assert m.shape == (224, 224) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
        assert np.all(masks.face_mask >= masks.eye_mask)  # the eyes lie inside the face
        assert not np.any(masks.left_eye_mask & masks.right_eye_mask)
        # the subject's left eye is on the crop's right
        cols = np.arange(224)[None]
        assert (masks.left_eye_mask * cols).sum() / masks.left_eye_mask.sum() > (masks.right_eye_mask * cols).sum() / masks.right_eye_mask.sum()


def test_face_mask_matches_the_rendered_face(cases):
    """The true face mask includes hair, ears and neck; the generic outline (forehead to chin, from
    the exact landmarks) covers most of the crop's true face and little background (measured:
    precision 0.89-0.97, IoU 0.80-0.85 on these six heads)."""
    for masks, true in cases:
        predicted, face = masks.face_mask.astype(bool), true["face"].astype(bool)
        assert (predicted & face).sum() / predicted.sum() > 0.85  # precision: the mask is on the face
        assert _iou(predicted, face) > 0.7


def test_eye_masks_hold_the_visible_eyeballs(cases):
    for masks, true in cases:
        for name, predicted in (("left", masks.left_eye_mask), ("right", masks.right_eye_mask)):
            eyeball = true[name].astype(bool)
            if eyeball.sum() < 20:  # an eye turned away
                continue
            assert (eyeball & predicted.astype(bool)).sum() / eyeball.sum() > 0.9  # recall of the visible eyeball
            assert predicted.sum() < 3.5 * eyeball.sum()  # the opening, lids included: measured 1.9-2.6x
