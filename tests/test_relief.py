"""benchmarks/relief.py: a portrait on the generic face surface, turned and photographed (known poses for faces.py)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from gazegen.data.photo_heads import rotation_from_pose

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], np.uint8)


@pytest.fixture(scope="module")
def relief():
    spec = importlib.util.spec_from_file_location("relief", BENCHMARKS / "relief.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["relief"] = module
    spec.loader.exec_module(module)
    return module


def _portrait(marks: np.ndarray) -> np.ndarray:
    """A 240 px grey portrait with a 5 px dot of its own colour on each landmark."""
    image = np.full((240, 240, 3), 128, np.uint8)
    for colour, (x, y) in zip(COLOURS, np.round(marks).astype(int)):
        image[y - 2 : y + 3, x - 2 : x + 3] = colour
    return image


def test_a_portraits_pixels_map_along_and_across_its_eye_line(relief):
    """Eyes 100 px apart on a line rolled by 30 degrees: a pixel d px from the eye midpoint along the line is x = d *
    62.8 / 100 mm, across it (image down for a level line) y likewise; the eye centres lie at (-+31.4, 0, 0)."""
    roll = np.radians(30.0)
    along, down = np.array([np.cos(roll), np.sin(roll)]), np.array([-np.sin(roll), np.cos(roll)])
    middle = np.array([120.0, 110.0])
    marks = np.stack([middle - 50 * along, middle + 50 * along, middle + 60 * down, middle + 90 * down - 30 * along,
                      middle + 90 * down + 30 * along])
    frame = relief.PortraitFrame.from_landmarks(marks)
    points = frame.to_head(np.stack([marks[0], marks[1], middle + 20 * along - 40 * down]))
    np.testing.assert_allclose(points[:2], [[-31.4, 0.0, 0.0], [31.4, 0.0, 0.0]], atol=1e-9)
    np.testing.assert_allclose(points[2, :2], [20 * 0.628, -40 * 0.628], atol=1e-9)


def test_the_surface_puts_eth_xgazes_generic_face_at_its_depths(relief):
    """At the points of ETH-XGaze's generic face (eye centres +-31.4 mm, nose tip 39.6 mm and mouth corners +-20.8 mm
    70.9 mm below them) the surface gives that face's depths in front of the eyes: 26.4 and 5.2 mm, within 0.6."""
    face = np.array([[-31.4, 0.0], [31.4, 0.0], [0.0, 39.6], [-20.8, 70.9], [20.8, 70.9]])
    z = relief.surface_depth(face, 39.6)
    np.testing.assert_allclose(z - z[:2].mean(), [0.0, 0.0, -26.4, -5.2, -5.2], atol=0.6)


@pytest.mark.parametrize("pitch, yaw", [(0.0, 0.0), (-20.0, 40.0), (20.0, -40.0), (10.0, 25.0)])
def test_each_landmark_dot_lands_where_the_returned_landmark_is(relief, pitch, yaw):
    """The dots drawn on the portrait's landmarks, turned: each returned landmark pixel shows its own dot's colour
    (the nearest sample wins: at 40 degrees of yaw the nose tip lies in front of the far cheek), and no other dot's."""
    marks = np.array([[80.0, 90.0], [160.0, 90.0], [121.0, 140.0], [92.0, 175.0], [150.0, 176.0]])
    lifted = relief.lift(_portrait(marks), marks)
    turn = rotation_from_pose(np.radians(pitch), np.radians(yaw))
    photo, found, k = relief.photograph(lifted, turn, np.array([5.0, -3.0, 600.0]), 200, 500.0)
    assert photo.shape == (200, 200, 3) and k[0, 0] == 500.0 and k[0, 2] == 100.0
    for colour, (x, y) in zip(COLOURS, found):
        seen = photo[int(y), int(x)].astype(int)
        assert np.abs(seen - colour).max() <= 40, (colour, seen)


def test_an_unturned_relief_keeps_the_portraits_layout(relief):
    """Unturned and seen head-on, the landmarks keep the portrait's shape up to perspective: the eyes (at z = 0,
    600 mm) stay level and 62.8 mm x f / 600 apart."""
    marks = np.array([[80.0, 90.0], [160.0, 90.0], [121.0, 140.0], [92.0, 175.0], [150.0, 176.0]])
    lifted = relief.lift(_portrait(marks), marks)
    _, found, _ = relief.photograph(lifted, np.eye(3), np.array([0.0, 0.0, 600.0]), 200, 500.0)
    np.testing.assert_allclose(found[:2], [[100 - 31.4 * 500 / 600, 100.0], [100 + 31.4 * 500 / 600, 100.0]], atol=1e-9)
