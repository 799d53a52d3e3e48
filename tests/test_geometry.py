"""Conventions of gazegen/geometry.py against closed forms and OpenCV."""

import cv2
import numpy as np
import pytest
import torch

from gazegen import geometry as g
from gazegen.config import PUBLISHED_NORMALISATIONS, NormalisationConfig
from gazegen.rendering.rays import camera_rays

RNG = np.random.default_rng(0)


def random_pitchyaw(n: int, max_pitch=1.2, max_yaw=2.5) -> np.ndarray:
    return np.stack([RNG.uniform(-max_pitch, max_pitch, n), RNG.uniform(-max_yaw, max_yaw, n)], -1)


def test_pitchyaw_known_vectors():
    cases = {
        (0.0, 0.0): (0, 0, -1),  # looking back at the camera
        (np.pi / 2, 0.0): (0, -1, 0),  # positive pitch looks up (y is down)
        (0.0, np.pi / 2): (-1, 0, 0),  # positive yaw looks toward the image's left
        (0.0, -np.pi / 2): (1, 0, 0),
    }
    for pitchyaw, vector in cases.items():
        np.testing.assert_allclose(g.pitchyaw_to_vector(np.array(pitchyaw)), vector, atol=1e-12)


def test_pitchyaw_round_trip_numpy_and_torch():
    py = random_pitchyaw(500)
    v = g.pitchyaw_to_vector(py)
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(g.vector_to_pitchyaw(v), py, atol=1e-10)
    np.testing.assert_allclose(g.vector_to_pitchyaw(3.7 * v), py, atol=1e-10)  # length does not matter
    vt = g.pitchyaw_to_vector(torch.tensor(py, dtype=torch.float32).reshape(5, 100, 2))
    assert isinstance(vt, torch.Tensor) and vt.shape == (5, 100, 3) and vt.dtype == torch.float32
    np.testing.assert_allclose(vt.reshape(-1, 3).numpy(), v, atol=1e-6)


def test_angular_error_known_values():
    a = np.array([[0.0, 0.0], [0.0, 0.0], [0.3, 0.2]])
    b = np.array([[0.0, np.pi / 2], [np.radians(10), 0.0], [0.3, 0.2]])
    np.testing.assert_allclose(g.angular_error(a, b), [90.0, 10.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(g.angular_error(np.array([1.0, 0, 0]), np.array([0, 0, 5.0])), 90.0, atol=1e-12)


@pytest.mark.parametrize("axis,fn", [(0, g.rotation_x), (1, g.rotation_y), (2, g.rotation_z)])
def test_rotations_match_rodrigues(axis, fn):
    for angle in RNG.uniform(-3, 3, 5):
        rvec = np.zeros(3)
        rvec[axis] = angle
        np.testing.assert_allclose(fn(np.array(angle)), cv2.Rodrigues(rvec)[0], atol=1e-12)


def test_head_pose_matches_mpiigaze_formula_with_roll():
    """Our head pose of any rotation equals pitch=asin(z_y), yaw=atan2(z_x, z_z) of its z column."""
    for _ in range(50):
        rotation = cv2.Rodrigues(RNG.normal(0, 0.6, 3))[0]
        z = rotation[:, 2]
        expected = [np.arcsin(z[1]), np.arctan2(z[0], z[2])]
        np.testing.assert_allclose(g.rotation_to_head_pose(rotation), expected, atol=1e-10)


def test_head_pose_rotation_round_trip_and_no_roll():
    hp = random_pitchyaw(200, max_pitch=1.4, max_yaw=3.0)
    rotation = g.head_pose_to_rotation(hp)
    np.testing.assert_allclose(rotation @ np.swapaxes(rotation, -1, -2), np.broadcast_to(np.eye(3), rotation.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-12)
    np.testing.assert_allclose(g.rotation_to_head_pose(rotation), hp, atol=1e-10)
    # no roll: the head's x axis stays horizontal in the camera (y component zero)
    np.testing.assert_allclose(rotation[:, 1, 0], 0.0, atol=1e-12)
    # the face's forward direction is the head pose's vector
    np.testing.assert_allclose(rotation @ np.array([0, 0, -1.0]), g.pitchyaw_to_vector(hp), atol=1e-12)


def test_gaze_between_head_and_camera_frames():
    hp, gaze_head = random_pitchyaw(300, 0.8, 1.0), random_pitchyaw(300, 0.7, 0.9)
    rotation = g.head_pose_to_rotation(hp)
    gaze = g.gaze_head_to_camera(gaze_head, rotation)
    np.testing.assert_allclose(g.gaze_camera_to_head(gaze, rotation), gaze_head, atol=1e-10)
    # a frontal head changes nothing; a head turned by yaw y turns a straight-ahead gaze by y
    np.testing.assert_allclose(g.gaze_head_to_camera(gaze_head, np.eye(3)), gaze_head, atol=1e-12)
    turned = g.gaze_head_to_camera(np.zeros(2), g.head_pose_to_rotation(np.array([0.0, 0.4])))
    np.testing.assert_allclose(turned, [0.0, 0.4], atol=1e-12)
    # the angle between gaze and head direction is frame independent
    np.testing.assert_allclose(g.angular_error(gaze, hp), g.angular_error(gaze_head, np.zeros_like(gaze_head)), atol=1e-8)


def test_frontal_camera_is_eg3d_canonical():
    norm = PUBLISHED_NORMALISATIONS["livegaze512"]
    cam = g.head_pose_to_camera(np.zeros(2), norm)
    c2w, k = g.split_camera(cam)
    expected = np.eye(4)
    expected[1, 1] = expected[2, 2] = -1.0
    expected[2, 3] = norm.radius
    np.testing.assert_allclose(c2w, expected, atol=1e-12)
    np.testing.assert_allclose(k, [[1600 / 512, 0, 0.5], [0, 1600 / 512, 0.5], [0, 0, 1]], atol=1e-12)


@pytest.mark.parametrize("name", sorted(PUBLISHED_NORMALISATIONS))
def test_project_matches_cv2_project_points(name):
    norm = PUBLISHED_NORMALISATIONS[name]
    hp = random_pitchyaw(6, 0.6, 1.0)
    cams = g.head_pose_to_camera(hp, norm)  # (6, 25)
    points = RNG.uniform(-0.4, 0.4, (6, 30, 3))
    uv = g.project(points, cams, norm.resolution)
    k_px = np.array([[norm.focal, 0, norm.resolution / 2], [0, norm.focal, norm.resolution / 2], [0, 0, 1]])
    for cam, pts, ours in zip(cams, points, uv):
        c2w, _ = g.split_camera(cam)
        rot_w2c = c2w[:3, :3].T
        t_w2c = -rot_w2c @ c2w[:3, 3]
        theirs, _ = cv2.projectPoints(pts, cv2.Rodrigues(rot_w2c)[0], t_w2c, k_px, None)
        np.testing.assert_allclose(ours, theirs[:, 0], atol=1e-6)


def test_camera_looks_at_face_centre_from_normalisation_distance():
    norm = NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=224, radius=2.7)
    hp = random_pitchyaw(50, 0.8, 1.2)
    cams = g.head_pose_to_camera(hp, norm)
    c2w, _ = g.split_camera(cams)
    np.testing.assert_allclose(np.linalg.norm(c2w[:, :3, 3], axis=-1), norm.radius, atol=1e-12)
    np.testing.assert_allclose(g.project(np.zeros((50, 1, 3)), cams, 224), np.full((50, 1, 2), 112.0), atol=1e-9)
    np.testing.assert_allclose(g.camera_to_head_pose(cams), hp, atol=1e-10)
    # the face's forward direction (world +z) seen in the camera is the head pose's vector
    forward_cam = np.einsum("nji,j->ni", c2w[:, :3, :3], np.array([0, 0, 1.0]))
    np.testing.assert_allclose(forward_cam, g.pitchyaw_to_vector(hp), atol=1e-12)
    assert g.mm_per_world_unit(norm) == pytest.approx(600.0 / 2.7)


def test_torch_camera_batched_and_differentiable():
    norm = NormalisationConfig()
    leaf = torch.tensor(random_pitchyaw(8), dtype=torch.float32, requires_grad=True)
    hp = leaf.reshape(2, 4, 2)
    cams = g.head_pose_to_camera(hp, norm)
    assert cams.shape == (2, 4, 25) and cams.dtype == torch.float32
    np.testing.assert_allclose(cams.detach().numpy(), g.head_pose_to_camera(hp.detach().double().numpy(), norm), atol=1e-5)
    cams.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


def test_camera_math_ignores_autocast():
    """Rays and projections under bf16 autocast equal the float32 ones exactly (a bf16 matmul would round the
    rotations to 3 significant digits: directions off by ~1e-3, projections by ~0.1 px at 64 px)."""
    cameras = g.head_pose_to_camera(torch.tensor([[0.2, -0.3], [-0.1, 0.4]]), NormalisationConfig()).float()
    points = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    plain = camera_rays(cameras, 16), g.project(points, cameras, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = camera_rays(cameras, 16), g.project(points, cameras, 64)
    for a, b in ((plain[0].directions, mixed[0].directions), (plain[0].z_per_t, mixed[0].z_per_t), (plain[1], mixed[1])):
        assert b.dtype == torch.float32
        assert torch.equal(a, b)
