"""benchmarks/pose_error.py's geometry: the view the model is asked for, in the told head frame, is the exact
camera it names in the true frame."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from benchmark_modules import import_benchmark

from gazegen import geometry
from gazegen.config import NormalisationConfig
from gazegen.train.world_turn import turn_cameras

NORM = NormalisationConfig(focal=400.0, distance_mm=950.0, resolution=128)


@pytest.fixture(scope="module")
def pose_error():
    return import_benchmark("pose_error")


@pytest.mark.parametrize("truth, told", [((0, 0), (2, 0)), ((0, 20), (-5, 25)), ((10, -15), (20, -15)), ((5, 5), (5, 5))])
def test_the_told_source_camera_turned_back_is_the_true_one(pose_error, truth, told):
    """Q takes the camera of the true pose to the camera of the told one; turned back by Q^T, the camera the model
    is told for the source (view turn 0) is the true source camera: the two frames differ by Q exactly."""
    truth, told = np.radians(truth, dtype=np.float64), np.radians(told, dtype=np.float64)
    q = pose_error.turn_between(truth, told, NORM)
    np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-12)
    told_camera = geometry.head_pose_to_camera(torch.from_numpy(told)[None], NORM)
    true_camera = geometry.head_pose_to_camera(torch.from_numpy(truth)[None], NORM)
    torch.testing.assert_close(turn_cameras(told_camera, q.T), true_camera, rtol=0, atol=1e-12)
