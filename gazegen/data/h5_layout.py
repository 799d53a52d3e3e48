"""What a gaze h5 file must hold, checked before it is read: the keys each layout requires, the shapes and dtypes
of the keys it has, and labels that are finite radians. The three layouts are gazegen/data/xgaze.py's."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from gazegen.data.store import STORE_FORMAT

XGAZE, GAZENERF, STORE = "eth-xgaze", "gazenerf", STORE_FORMAT
MASKS = {"head_mask": "face_mask", "left_eye_mask": "left_eye_mask", "right_eye_mask": "right_eye_mask"}
# Shapes by key: "N" rows, "H" the image side, "*" any, ints exact.
SHAPES: dict[str, tuple] = {
    "face_patch": ("N", "H", "H", 3), "face_gaze": ("N", 2), "face_head_pose": ("N", 2),
    "pitchyaw_head": ("N", 2), "camera": ("N", 25), "frame_index": ("N", 1), "cam_index": ("N", 1),
    "facial_landmarks": ("N", 68, 2), "depth": ("N", "H", "H"), "face_mat_norm": ("N", 3, 3),
    **{k: ("N", "H", "H") for k in MASKS}, "latent_codes": ("N", "*"), "w2c_Rmat": ("N", 3, 3),
    "w2c_Tvec": ("N", 3), "c2w_Rmat": ("N", 3, 3), "c2w_Tvec": ("N", 3), "inmat": ("N", 3, 3),
    "inv_inmat": ("N", 3, 3),
}
REQUIRED = {
    XGAZE: ("face_patch", "face_gaze", "face_head_pose", "frame_index", "cam_index"),
    GAZENERF: ("face_patch", "pitchyaw_head", "face_head_pose", "frame_index", "cam_index"),
    STORE: ("face_patch", "face_gaze", "face_head_pose", "pitchyaw_head", "camera", "frame_index", "cam_index"),
}
ANGLE_KEYS = ("face_gaze", "face_head_pose", "pitchyaw_head")


def layout_problems(f: h5py.File, path: Path, fmt: str) -> list[str]:
    """Missing keys, wrong shapes or dtypes, row counts that disagree: one message per problem."""
    missing = [k for k in REQUIRED[fmt] if k not in f]
    keys = ", ".join(f"'{k}'" for k in missing)
    problems = [f"{path}: key{'s' if len(missing) > 1 else ''} {keys} {'are' if len(missing) > 1 else 'is'} missing "
                f"(required in {fmt} files; keys present: {sorted(f.keys())})"] if missing else []
    if "face_patch" not in f:
        return problems
    shape = f["face_patch"].shape
    n, h = shape[0], shape[1] if len(shape) > 1 else 0
    for key in sorted(set(f.keys()) & set(SHAPES)):
        want = tuple({"N": n, "H": h}.get(d, d) if isinstance(d, str) else d for d in SHAPES[key])
        got = f[key].shape
        ok = len(got) == len(want) and all(w == "*" or g == w for g, w in zip(got, want))
        if key in ("frame_index", "cam_index") and got == (n,):
            ok = True
        if not ok:
            problems.append(f"{path}: key '{key}' has shape {got}, expected {want} (N={n} images of {h} px)")
    for key in ("face_patch", *MASKS):
        if key in f and f[key].dtype != np.uint8:
            problems.append(f"{path}: key '{key}' has dtype {f[key].dtype}, expected uint8")
    return problems


def label_problems(path: Path, key: str, values: np.ndarray) -> list[str]:
    """NaN/inf rows, and angles outside the radian range (labels written in degrees)."""
    flat = values.reshape(len(values), -1)
    bad = np.flatnonzero(~np.isfinite(flat).all(axis=1))
    if len(bad):
        return [f"{path}: key '{key}' has NaN/inf labels in {len(bad)} of {len(values)} rows (rows {bad[:8].tolist()})"]
    limit = np.array([np.pi / 2, np.pi]) + 1e-3  # |pitch|, |yaw|
    if key in ANGLE_KEYS and len(values) and (np.abs(values) > limit).any():
        return [f"{path}: key '{key}' has values up to {np.abs(values).max():.3g}, outside the radian range (degrees?)"]
    return []
