"""The estimator-free pupil reading (evaluation/pupils.py) against drawn eyes whose pupil positions are known."""

from __future__ import annotations

import numpy as np
import pytest

from gazegen.evaluation.probes import pearson
from gazegen.evaluation.pupils import PupilFollowing, offsets_vs_gaze, pupil_offset


def eyes_image(pupil_dx: int, pupil_dy: int) -> tuple[np.ndarray, np.ndarray]:
    """Two white 21 x 11 eye regions on grey skin, each with a black 3 x 3 pupil moved by (dx, dy) pixels."""
    image = np.full((40, 80, 3), 120, np.uint8)
    mask = np.zeros((40, 80), np.uint8)
    for left in (10, 50):
        mask[15:26, left:left + 21] = 1
        image[15:26, left:left + 21] = 255
        cy, cx = 20 + pupil_dy, left + 10 + pupil_dx
        image[cy - 1:cy + 2, cx - 1:cx + 2] = 0
    return image, mask


@pytest.mark.parametrize("dx, dy", [(0, 0), (4, 0), (-6, 2), (3, -3)])
def test_the_offset_is_the_pupil_shift_over_the_eye_size(dx, dy):
    image, mask = eyes_image(dx, dy)
    offset = pupil_offset(image, mask)
    np.testing.assert_allclose(offset, [dx / 21, dy / 11], atol=1e-12)  # the region is 21 wide, 11 high


def test_no_contrast_gives_nan_and_is_dropped():
    image, mask = eyes_image(0, 0)
    flat = np.full_like(image, 200)
    offsets = np.stack([pupil_offset(flat, mask), pupil_offset(image, mask)])
    kept, gaze = offsets_vs_gaze(offsets, np.array([[0.1, 0.2], [0.3, 0.4]]))
    assert np.isnan(offsets[0]).all() and len(kept) == 1 and gaze.tolist() == [[0.3, 0.4]]


def test_pupils_that_move_against_the_yaw_correlate_negatively_and_the_direction_is_compared():
    yaws = np.radians([-20.0, -10.0, 0.0, 10.0, 20.0])
    offsets = np.stack([pupil_offset(*eyes_image(-round(np.degrees(y) / 5), 0)) for y in yaws])
    r = pearson(offsets[:, 0], yaws)
    assert r == pytest.approx(-1.0)
    assert PupilFollowing(r, None, -0.9, None).same_direction is True
    assert PupilFollowing(-r, None, -0.9, None).same_direction is False
    assert PupilFollowing(None, None, -0.9, None).same_direction is None

