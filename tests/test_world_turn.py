"""A triplet's world turned about the face centre (train/world_turn.py): what each image shows and the gaze it
has are unchanged; only the frame they are written in turns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gazegen import geometry
from gazegen.config import NormalisationConfig, RigConfig, SynthHeadsConfig
from gazegen.data.heads import synthesize_store
from gazegen.data.splits import store_splits
from gazegen.train.data import TripletDataset, TripletSizes
from gazegen.train.depth_prior import DatasetDepth
from gazegen.train.subjects import read_subject
from gazegen.train.world_turn import random_turn, turn_cameras, turn_gaze_head

NORM = NormalisationConfig(focal=400.0, distance_mm=950.0, resolution=128)


def _cameras_and_gazes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head poses within +-30 degrees, their cameras (count, 25) and gazes (count, 2) in the head frame, float64."""
    rng = np.random.default_rng(seed)
    poses = torch.from_numpy(np.radians(rng.uniform(-30, 30, (count, 2))))
    gazes = torch.from_numpy(np.radians(rng.uniform(-35, 35, (count, 2))))
    return poses, geometry.head_pose_to_camera(poses, NORM), gazes


@pytest.mark.parametrize("max_deg", [5.0, 20.0, 45.0])
def test_a_random_turn_is_a_rotation_within_the_angle(max_deg):
    rng = np.random.default_rng(1)
    for _ in range(50):
        q = random_turn(rng, max_deg)
        np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(q) == pytest.approx(1.0, abs=1e-12)
        assert math.degrees(math.acos(np.clip((np.trace(q) - 1) / 2, -1, 1))) <= max_deg + 1e-9


def test_each_camera_sees_the_turned_world_as_it_saw_the_world():
    """A point X seen by camera c lands where Q X is seen by the turned camera: every image is unchanged."""
    _, cameras, _ = _cameras_and_gazes(8, 0)
    q = torch.from_numpy(random_turn(np.random.default_rng(2), 15.0))
    points = torch.from_numpy(np.random.default_rng(3).uniform(-0.5, 0.5, (8, 20, 3)))  # (B, N, 3) world units
    turned = turn_cameras(cameras, q)
    before = geometry.world_to_camera_points(points, cameras)
    after = geometry.world_to_camera_points(points @ q.T, turned)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-12)
    torch.testing.assert_close(turned[:, 16:], cameras[:, 16:], rtol=0, atol=0)  # intrinsics untouched


def test_the_gaze_in_each_camera_is_unchanged():
    """The gaze condition in the turned head frame, carried into each turned camera by R_head = R_w2c @ FLIP
    (geometry.head_pose_to_camera), gives the camera-frame gaze the untouched labels give."""
    poses, cameras, gazes = _cameras_and_gazes(16, 4)
    flip = torch.diag(torch.tensor(geometry.FLIP, dtype=torch.float64))
    for seed in range(5):
        q = torch.from_numpy(random_turn(np.random.default_rng(seed), 20.0))
        turned = turn_cameras(cameras, q)
        rot_head = geometry.split_camera(turned)[0][:, :3, :3].transpose(-1, -2) @ flip  # (B, 3, 3) turned head -> camera
        expected = geometry.gaze_head_to_camera(gazes, geometry.head_pose_to_rotation(poses))
        got = geometry.gaze_head_to_camera(turn_gaze_head(gazes, q), rot_head)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_no_turn_leaves_cameras_and_gazes_as_they_are():
    _, cameras, gazes = _cameras_and_gazes(4, 5)
    torch.testing.assert_close(turn_cameras(cameras, torch.eye(3, dtype=torch.float64)), cameras, rtol=0, atol=0)
    torch.testing.assert_close(turn_gaze_head(gazes, torch.eye(3, dtype=torch.float64)), gazes, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    cfg = SynthHeadsConfig(subjects=2, resolution=64, gazes=2, test_subjects=0, rig=RigConfig(views=3))
    store = synthesize_store(tmp_path_factory.mktemp("data") / "heads", cfg, workers=1)
    return [read_subject(p) for p in store_splits(store).split("train")]


def test_a_dataset_with_turns_turns_only_the_frames(subjects):
    """Items keep their images, masks, depths and camera-frame gazes; their cameras and gaze conditions are the
    untouched item's turned by one rotation, the same on every read of the item and another for another item."""
    sizes = TripletSizes(input=64, output=32, depth=16)
    plain = TripletDataset(subjects, sizes, DatasetDepth(), seed=3)
    turned = TripletDataset(subjects, sizes, DatasetDepth(), seed=3, world_turn_deg=10.0)
    turns = []
    for item in [(0, 0), (0, 1), (1, 0)]:
        a, b = plain[item], turned[item]
        for name in ("source", "target", "face_mask", "depth_prior", "source_depth", "gaze", "rows"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        c2w_a, c2w_b = (geometry.split_camera(x.camera.double())[0][0, :3, :3] for x in (a, b))
        q = c2w_b @ c2w_a.T  # the turn that took this item's target camera to the turned one
        torch.testing.assert_close(turn_cameras(a.source_camera.double(), q), b.source_camera.double(), rtol=0, atol=1e-5)
        assert math.degrees(math.acos(min(1.0, (float(torch.trace(q)) - 1) / 2))) <= 10.0 + 1e-3
        assert torch.equal(turned[item].camera, b.camera)
        turns.append(q)
    assert not torch.allclose(turns[0], turns[1])


def test_a_share_of_the_items_is_turned(subjects):
    """With world_turn_share 0.5, about half the items carry turned cameras and the rest the exact ones."""
    sizes = TripletSizes(input=64, output=32, depth=16)
    plain = TripletDataset(subjects, sizes, DatasetDepth(), seed=3)
    half = TripletDataset(subjects, sizes, DatasetDepth(), seed=3, world_turn_deg=10.0, world_turn_share=0.5)
    items = [(epoch, i) for epoch in range(4) for i in range(len(plain))]
    turned = [not torch.equal(plain[item].camera, half[item].camera) for item in items]
    assert 0.3 < np.mean(turned) < 0.7, np.mean(turned)
