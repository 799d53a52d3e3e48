"""benchmarks/triangulate.py: a point from its pixels in several calibrated views."""

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest

from gazegen.data.photo_heads import rotation_from_pose

SPEC = importlib.util.spec_from_file_location("triangulate", Path(__file__).resolve().parents[1] / "benchmarks" / "triangulate.py")
triangulate = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(triangulate)
K = np.array([[700.0, 0.0, 160.0], [0.0, 700.0, 160.0], [0.0, 0.0, 1.0]])


def _views(n: int) -> list[np.ndarray]:
    """n projections of a head 600 mm away turned through yaws -40..40 and pitches -20..20 degrees."""
    poses = zip(np.linspace(-20, 20, n), np.linspace(-40, 40, n))
    return [triangulate.projection(K, rotation_from_pose(np.radians(p), np.radians(y)), np.array([5.0, -3.0, 600.0]))
            for p, y in poses]


def _pixel(p: np.ndarray, point: np.ndarray) -> np.ndarray:
    x = p @ np.append(point, 1.0)
    return x[:2] / x[2]


def test_exact_pixels_give_the_point_back():
    point = np.array([12.0, 30.0, -24.0])  # a nose tip's place, mm
    views = _views(5)
    found = triangulate.triangulate(np.stack(views), np.stack([_pixel(p, point) for p in views]))
    np.testing.assert_allclose(found, point, atol=1e-6)


def _ray(p: np.ndarray, pixel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The camera centre (3,) and the direction (3,) of the ray through `pixel`, object frame."""
    return -np.linalg.solve(p[:, :3], p[:, 3]), np.linalg.solve(p[:, :3], np.append(pixel, 1.0))


def test_a_pixel_moved_along_its_epipolar_line_moves_the_point_to_where_the_rays_meet():
    """Two views 80 degrees of yaw apart. The first view's pixel moved 7 px along its epipolar line (the second view's
    ray seen in the first), so the two rays still meet: the point found is where they meet, computed from the rays in
    closed form, and no longer the original point."""
    point = np.array([0.0, 14.0, -24.0])
    views = _views(2)
    centre1, direction1 = _ray(views[1], _pixel(views[1], point))
    along = _pixel(views[0], point + 20.0 * direction1 / np.linalg.norm(direction1)) - _pixel(views[0], point)
    moved = _pixel(views[0], point) + 7.0 * along / np.linalg.norm(along)
    found = triangulate.triangulate(np.stack(views), np.stack([moved, _pixel(views[1], point)]))
    centre0, direction0 = _ray(views[0], moved)
    (a, b), *_ = np.linalg.lstsq(np.stack([direction0, -direction1], 1), centre1 - centre0, rcond=None)
    meet = centre0 + a * direction0
    np.testing.assert_allclose(meet, centre1 + b * direction1, atol=1e-6)  # the rays do meet
    np.testing.assert_allclose(found, meet, atol=1e-5)
    assert np.linalg.norm(found - point) > 3.0


def test_one_view_is_refused():
    with pytest.raises(ValueError, match="at least two views"):
        triangulate.triangulate(np.stack(_views(1)), np.zeros((1, 2)))


def test_faces_benchmark_fits_exact_readings_to_the_true_poses(monkeypatch):
    """benchmarks/faces.py's detected/triangulated row, fed a procedural head's exact landmarks at the rig's poses:
    the triangulated points are the head's own, so every leave-one-out pose is the true one."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import faces

    readings = [(photo.landmarks, photo.camera_matrix, photo.head_rotation, photo.face_centre)
                for _, photo in itertools.islice(faces.rig_photos(1, 0.0), 6)]
    errors = faces.triangulated_errors(readings)
    assert len(errors) == 6
    np.testing.assert_allclose(errors, 0.0, atol=1e-4)
