"""benchmarks/pose_calibration.py: what the calibration sees, how it is fitted and applied."""


import numpy as np
import pytest
from benchmark_modules import import_benchmark

from gazegen.data.normalise import FACE_MODEL_MM
from gazegen.data.photo_heads import rotation_from_pose


@pytest.fixture(scope="module")
def calibration():
    return import_benchmark("pose_calibration")


def _photo(rotation: np.ndarray, position: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """The generic face's five landmarks (pixels) and K for a 320 px camera of `focal`."""
    k = np.array([[focal, 0.0, 160.0], [0.0, focal, 160.0], [0.0, 0.0, 1.0]])
    cam = FACE_MODEL_MM @ rotation.T + position
    return cam[:, :2] / cam[:, 2:] * focal + 160.0, k


def test_inputs_do_not_change_with_the_photos_roll_or_scale(calibration):
    """The same head seen by the camera rolled 35 degrees about its axis, or through a longer focal: the same rays in
    the level frame, so the same inputs."""
    rotation, position = rotation_from_pose(np.radians(12.0), np.radians(-25.0)), np.array([30.0, -20.0, 600.0])
    base = calibration.face_frame_fit(*_photo(rotation, position, 700.0))[0]
    c, s = np.cos(np.radians(35.0)), np.sin(np.radians(35.0))
    roll = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # about the optical axis
    rolled = calibration.face_frame_fit(*_photo(roll @ rotation, roll @ position, 700.0))[0]
    zoomed = calibration.face_frame_fit(*_photo(rotation, position, 1100.0))[0]
    np.testing.assert_allclose(rolled, base, atol=1e-6)
    np.testing.assert_allclose(zoomed, base, atol=1e-6)
    assert np.all(np.abs(base[6:8]) > 0.05)  # the fit's pitch and yaw are among them, not zero


def test_the_measured_correction_applied_gives_the_true_rotation(calibration):
    """A reading whose true rotation is not the fit's (the generic face's landmarks nudged): its correction target,
    applied as the benchmark applies a model's output, gives the true rotation exactly."""
    rotation, position = rotation_from_pose(*np.radians([-10.0, 30.0, 20.0])), np.array([0.0, 0.0, 600.0])
    points, k = _photo(rotation, position, 700.0)  # rolled 20 degrees: the level frame is not the camera's
    points = points + [[0.0, 0.0], [0.0, 0.0], [3.0, -2.0], [0.0, 1.0], [0.0, 1.0]]
    truth = rotation_from_pose(*np.radians([-10.0, 30.0, 24.0]))
    reading = calibration.fitted([(points, k, truth)])
    target = reading.targets()
    assert np.degrees(np.linalg.norm(target)) > 2.0
    assert reading.errors(lambda x: target)[0] < 1e-6
    assert reading.errors(None)[0] > 2.0


def test_ridge_on_monomials_recovers_a_quadratic(calibration):
    """Targets that are a quadratic of the inputs are predicted exactly on new inputs when the ridge is negligible."""
    rng = np.random.default_rng(0)
    x, new = rng.normal(size=(400, 3)), rng.normal(size=(50, 3))
    truth = lambda v: np.stack([1.0 + 2.0 * v[:, 0] - v[:, 1] * v[:, 2], 0.5 * v[:, 2] ** 2 - 3.0], 1)  # noqa: E731
    model = calibration.fit_correction(x, truth(x), ridge=1e-9)
    np.testing.assert_allclose(model(new), truth(new), atol=1e-6)


def test_the_gate_leaves_far_inputs_uncorrected(calibration):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 2))
    model = calibration.fit_correction(x, np.ones((500, 3)), gate_sd=4.0)
    out = model(np.array([[0.0, 0.0], [10.0, 0.0]]))
    np.testing.assert_allclose(out[0], 1.0, atol=1e-6)  # within: the fitted constant
    np.testing.assert_array_equal(out[1], 0.0)  # 10 sd away: no correction
