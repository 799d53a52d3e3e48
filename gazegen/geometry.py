"""Gaze, head-pose and camera conventions. Every label in gazegen passes through here.

Frames
------
camera   The normalised camera (ETH-XGaze, Zhang et al.): OpenCV axes, x right, y down,
         z forward; the face centre sits on the optical axis at the normalisation distance.
head     The head's own frame with OpenCV-aligned axes: it equals the camera frame when the
         face looks straight into the camera. ``R_head`` maps head-frame vectors to camera
         vectors, so ``gaze_cam = R_head @ gaze_head``.
world    The renderer's frame (EG3D): origin at the face centre, x to the subject's left,
         y up, z out of the face. ``world = FLIP @ head`` with ``FLIP = diag(1, -1, -1)``.

Angles are radians, (pitch, yaw) pairs in the last axis. The ETH-XGaze vector of a pitch/yaw
pair is ``(-cos p sin y, -sin p, -cos p cos y)``: (0, 0) points from the face back to the
camera; positive pitch looks up, positive yaw looks to the image's left. A head pose
(pitch, yaw) is the pitch/yaw of the face's forward direction ``R_head @ (0, 0, -1)``;
equivalently, with ``z = R_head[:, 2]``, pitch = asin(z_y) and yaw = atan2(z_x, z_z) (the
MPIIGaze / ETH-XGaze formula). Head rotations built from a pose carry no roll:
``R_head = R_y(yaw) @ R_x(-pitch)``.

Cameras are EG3D's 25 numbers: the 4x4 cam2world matrix (OpenCV axes, world above)
flattened row-major, then the 3x3 intrinsics divided by the image size (fx/W, cx/W, ...).
``project`` uses OpenCV's pixel convention: ``u = fx * x / z + cx``, cx = W / 2.

Every public function takes torch tensors or numpy arrays with any leading batch shape and
returns the same kind (numpy is computed in float64 through torch). Camera math ignores autocast
(``full_precision``): under bf16 autocast a rotation's matmul would otherwise round ray directions
and projections to 3 significant digits, about 1% of a head at the cameras' distance.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import numpy as np
import torch

from gazegen.config import NormalisationConfig

Array = TypeVar("Array", np.ndarray, torch.Tensor)

FLIP = (1.0, -1.0, -1.0)  # diagonal of head frame (OpenCV axes) -> world frame (EG3D axes)


def full_precision(like: torch.Tensor) -> torch.autocast:
    """A context without autocast on ``like``'s device: its matmuls run in the tensors' own dtype."""
    return torch.autocast(like.device.type, enabled=False)


def _accepts_numpy(fn: Callable) -> Callable:
    """Run ``fn`` on torch tensors, outside autocast; numpy arguments go in as float64 tensors and come back as numpy."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not any(isinstance(a, np.ndarray) for a in args):
            tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if tensor is None or not torch.is_autocast_enabled(tensor.device.type):
                return fn(*args, **kwargs)
            with full_precision(tensor):
                return fn(*args, **kwargs)
        out = fn(*(torch.from_numpy(np.asarray(a, dtype=np.float64)) if isinstance(a, np.ndarray) else a for a in args), **kwargs)
        if isinstance(out, tuple):
            return tuple(o.numpy() for o in out)
        return out.numpy()

    return wrapper


def _flip(like: torch.Tensor) -> torch.Tensor:
    return torch.diag(torch.tensor(FLIP, dtype=like.dtype, device=like.device))


@_accepts_numpy
def pitchyaw_to_vector(pitchyaw: Array) -> Array:
    """(..., 2) pitch/yaw radians -> (..., 3) unit vectors, ETH-XGaze convention."""
    p, y = pitchyaw[..., 0], pitchyaw[..., 1]
    return torch.stack([-p.cos() * y.sin(), -p.sin(), -p.cos() * y.cos()], -1)


@_accepts_numpy
def vector_to_pitchyaw(vector: Array) -> Array:
    """(..., 3) vectors of any length > 0 -> (..., 2) pitch/yaw radians."""
    v = vector / vector.norm(dim=-1, keepdim=True)
    return torch.stack([torch.asin((-v[..., 1]).clamp(-1.0, 1.0)), torch.atan2(-v[..., 0], -v[..., 2])], -1)


@_accepts_numpy
def angular_error(a: Array, b: Array) -> Array:
    """Degrees between two sets of gaze labels, each (..., 2) pitch/yaw or (..., 3) vectors."""
    va = pitchyaw_to_vector(a) if a.shape[-1] == 2 else a
    vb = pitchyaw_to_vector(b) if b.shape[-1] == 2 else b
    cos = (va * vb).sum(-1) / (va.norm(dim=-1) * vb.norm(dim=-1))
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def _rotation(angle: torch.Tensor, axis: int) -> torch.Tensor:
    c, s = angle.cos(), angle.sin()
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]  # the plane the rotation turns, right-handed
    m = [[one if r == col else zero for col in range(3)] for r in range(3)]
    m[i][i], m[i][j], m[j][i], m[j][j] = c, -s, s, c
    return torch.stack([torch.stack(row, -1) for row in m], -2)


@_accepts_numpy
def rotation_x(angle: Array) -> Array:
    """(...,) radians -> (..., 3, 3) right-handed rotation about x."""
    return _rotation(angle, 0)


@_accepts_numpy
def rotation_y(angle: Array) -> Array:
    """(...,) radians -> (..., 3, 3) right-handed rotation about y."""
    return _rotation(angle, 1)


@_accepts_numpy
def rotation_z(angle: Array) -> Array:
    """(...,) radians -> (..., 3, 3) right-handed rotation about z."""
    return _rotation(angle, 2)


@_accepts_numpy
def head_pose_to_rotation(head_pose: Array) -> Array:
    """(..., 2) head pitch/yaw -> (..., 3, 3) R_head (head frame -> camera frame), no roll."""
    return _rotation(head_pose[..., 1], 1) @ _rotation(-head_pose[..., 0], 0)


@_accepts_numpy
def rotation_to_head_pose(rotation: Array) -> Array:
    """(..., 3, 3) R_head -> (..., 2) pitch/yaw of the face's forward direction (roll is dropped)."""
    return vector_to_pitchyaw(-rotation[..., :, 2])


@_accepts_numpy
def gaze_head_to_camera(gaze_head: Array, rotation: Array) -> Array:
    """Gaze (..., 2) in the head frame and R_head (..., 3, 3) -> gaze (..., 2) in the camera frame."""
    return vector_to_pitchyaw((rotation @ pitchyaw_to_vector(gaze_head)[..., None])[..., 0])


@_accepts_numpy
def gaze_camera_to_head(gaze: Array, rotation: Array) -> Array:
    """Gaze (..., 2) in the camera frame and R_head (..., 3, 3) -> gaze (..., 2) in the head frame."""
    return vector_to_pitchyaw((rotation.transpose(-1, -2) @ pitchyaw_to_vector(gaze)[..., None])[..., 0])


@_accepts_numpy
def head_pose_to_camera(head_pose: Array, norm: NormalisationConfig) -> Array:
    """(..., 2) normalised head pose -> (..., 25) EG3D camera in world units.

    World to camera is ``X_cam = R_head @ FLIP @ X_world + (0, 0, radius)``: the camera sits
    ``norm.radius`` world units from the face centre, rotated by the inverse head rotation,
    looking at it. Intrinsics are ``norm``'s divided by the image size.
    """
    batch = head_pose.shape[:-1]
    rot_w2c = head_pose_to_rotation(head_pose) @ _flip(head_pose)  # (..., 3, 3)
    rot_c2w = rot_w2c.transpose(-1, -2)
    t_w2c = head_pose.new_tensor([0.0, 0.0, norm.radius])
    position = -(rot_c2w @ t_w2c)  # (..., 3)
    c2w = torch.zeros(*batch, 4, 4, dtype=head_pose.dtype, device=head_pose.device)
    c2w[..., :3, :3] = rot_c2w
    c2w[..., :3, 3] = position
    c2w[..., 3, 3] = 1.0
    k = normalised_intrinsics(norm, head_pose).expand(*batch, 3, 3)
    return torch.cat([c2w.reshape(*batch, 16), k.reshape(*batch, 9)], -1)


def normalised_intrinsics(norm: NormalisationConfig, like: torch.Tensor | None = None) -> torch.Tensor:
    """(3, 3) intrinsics of the normalised camera divided by the image size (principal point 0.5)."""
    f = norm.focal / norm.resolution
    k = [[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]]
    if like is None:
        return torch.tensor(k, dtype=torch.float64)
    return torch.tensor(k, dtype=like.dtype, device=like.device)


@_accepts_numpy
def split_camera(camera: Array) -> tuple[Array, Array]:
    """(..., 25) -> cam2world (..., 4, 4) and normalised intrinsics (..., 3, 3)."""
    batch = camera.shape[:-1]
    return camera[..., :16].reshape(*batch, 4, 4), camera[..., 16:].reshape(*batch, 3, 3)


@_accepts_numpy
def camera_to_head_pose(camera: Array) -> Array:
    """(..., 25) EG3D camera -> (..., 2) the head pose it shows (inverse of head_pose_to_camera)."""
    c2w, _ = split_camera(camera)
    rot_w2c = c2w[..., :3, :3].transpose(-1, -2)
    return rotation_to_head_pose(rot_w2c @ _flip(camera))


@_accepts_numpy
def world_to_camera_points(points: Array, camera: Array) -> Array:
    """World points (..., N, 3) and cameras (..., 25) -> points (..., N, 3) in OpenCV camera axes."""
    c2w, _ = split_camera(camera)
    rot = c2w[..., :3, :3]  # (..., 3, 3) camera -> world
    return (points - c2w[..., None, :3, 3]) @ rot  # row vectors: x_cam = R^T (x - o)


@_accepts_numpy
def project(points: Array, camera: Array, resolution: int) -> Array:
    """World points (..., N, 3) seen by cameras (..., 25) -> pixel coordinates (..., N, 2)."""
    _, k = split_camera(camera)
    cam = world_to_camera_points(points, camera)
    uv = cam[..., :2] / cam[..., 2:3]  # (..., N, 2)
    f = torch.stack([k[..., 0, 0], k[..., 1, 1]], -1)[..., None, :] * resolution
    c = torch.stack([k[..., 0, 2], k[..., 1, 2]], -1)[..., None, :] * resolution
    return uv * f + c


def mm_per_world_unit(norm: NormalisationConfig) -> float:
    """Millimetres of the normalised camera per world unit of the renderer."""
    return norm.distance_mm / norm.radius
