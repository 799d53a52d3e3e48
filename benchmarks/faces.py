"""Faces in photos: speed, head-pose error and how many faces MTCNN finds.

    python benchmarks/faces.py                 # all three parts, sheet in faces_bench/
    python benchmarks/faces.py --identities 2 --repeats 1 --out /tmp/faces

1. Time per image on CPU (one thread) of detection + landmarks + ETH-XGaze normalisation at
   640x480, 1920x1080 and 4000x3000: scikit-image's astronaut pasted
   into scikit-image's coffee photo stretched to the size, and the same photo without a face
   (the worst case: every turned copy is searched). The pasted head is an eighth of the width wide.
2. Head-pose error on procedural heads seen through the rig's cameras (its 18 head poses, pitch
   +-30 and yaw +-60 degrees, roll +-10), photographed off-centre at 600 mm by a 320 px camera of
   known focal: the angle between the true and the recovered head rotation, from the exact
   projected landmarks or the detected ones, with each head's own five 3-D points or ETH-XGaze's
   human face (gazegen/data/normalise.py, the photo path's model):
       exact/own       the solver alone (0 when it is right)
       exact/human     the generic face's misfit to these heads
       detected/own    the detector's landmark error alone
       detected/human  the photo path
       detected/triangulated  with the five points the detector behaves as if it saw on this
                       head: triangulated from its readings of the head's other photos at the
                       true poses (benchmarks/triangulate.py). It has come out no lower than
                       detected/own: the detector's error is not a fixed offset that a face model
                       could absorb
   and the photo path's error on the same heads turned a quarter either way (roll +-90), with how
   many are read upside down (more than 90 degrees off).
   Then the head pose (pitch, yaw, degrees; focal = the longer side) of real portraits that ship
   with installed packages (scikit-image's astronaut, matplotlib's Grace Hopper, scikit-image's
   cameraman), the same turned by every 45 degrees (the pose should turn with the photo: its angle
   to the upright pose so turned), and of the 100 faces of scikit-image's LFW subset (25 px,
   upscaled 4x: frontal news photos, so their pitch should centre near 0).
   Then real faces at known poses: the astronaut and Grace Hopper lifted onto a generic face
   surface (benchmarks/relief.py) and turned through pitch -20..20 and yaw -40..40 degrees, and
   LFW's faces 0-39 through pitch -15..15 and yaw -30..30: the same rows (against the relief's
   own five points, and the generic human face), and ``relief_sheet.png`` with the true and the
   detected landmarks.
3. The fraction of faces found on a made set: the astronaut pasted small (face 40-80 px wide) into
   1920x1080 and 4000x3000 canvases, turned by random rolls, stored turned with an EXIF
   orientation, in grey, and three faces of different sizes in one image. (OpenCV's Haar
   cascades, gazegen's detector before MTCNN, found 3/8, 3/8, 3/3, 1/2 and 8/9 of these at
   commit 01f3ff6, against MTCNN's 8/8, 8/8, 3/3, 2/2, 9/9.)

Writes ``sheet.png``: set images with the detected boxes and landmarks, and their normalised crops.
"""

from __future__ import annotations

import argparse
import os
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

from gazegen import geometry
from gazegen.config import CropConfig, NormalisationConfig, RigConfig
from gazegen.data.faces import crop_faces, read_image
from gazegen.data.head_model import Identity
from gazegen.data.heads import rig_head_poses, sample_identity
from gazegen.data.mtcnn import MtcnnDetector
from gazegen.data.normalise import FACE_MODEL_MM, estimate_head_pose, photo_camera_matrix, rotation_angle_deg
from gazegen.data.photo_heads import HeadPhoto, head_landmarks_mm, photograph_head, rotation_from_pose
from relief import Relief, lift, photograph
from triangulate import projection, triangulate

FACE = (slice(40, 200), slice(160, 290))  # the astronaut's head in the 512 px image
EYES = np.array([[204.0, 101.0], [246.5, 103.0]]) - [160, 40]  # her eye centres in FACE (measured by hand)
FACE_BOX = 0.7  # MTCNN's face box is ~0.7 of FACE's width (91 of 130 px): paste width = face px / FACE_BOX
NORM = NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=224)


def paste(canvas: np.ndarray, face: np.ndarray, width: int, at: tuple[int, int]) -> np.ndarray:
    return paste_eyes(canvas, face, width, at)[0]


def paste_eyes(canvas: np.ndarray, face: np.ndarray, width: int, at: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The face resized to `width` px wide pasted at (x, y), and where its two eyes now are (2, 2)."""
    s = width / face.shape[1]
    small = cv2.resize(face, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    out = canvas.copy()
    out[at[1] : at[1] + small.shape[0], at[0] : at[0] + small.shape[1]] = small
    return out, EYES * s + at


def background(w: int, h: int) -> np.ndarray:
    return cv2.resize(data.coffee(), (w, h), interpolation=cv2.INTER_CUBIC)


def speed(detector: MtcnnDetector, repeats: int) -> None:
    print("\n1. detection + landmarks + normalisation, seconds per image (median of", repeats, "runs, one thread)")
    face = data.astronaut()[FACE]
    cfg = CropConfig(resolution=224, normalisation=NORM)
    for w, h in ((640, 480), (1920, 1080), (4000, 3000)):
        scene = paste(background(w, h), face, w // 8, (w // 3, h // 3))
        times, status = [], ""
        for _ in range(repeats):
            t = time.perf_counter()
            status = crop_faces(scene, detector, cfg, "always").status
            times.append(time.perf_counter() - t)
        empty = background(w, h)
        t = time.perf_counter()
        found = len(detector.detect(empty))
        none = time.perf_counter() - t
        print(f"   {w}x{h}: with a face {np.median(times):.3f} s ({status}); without a face {none:.3f} s "
              f"(all {1 + len(detector.cfg.rolls)} rolls, {found} found)")


def rig_photos(identities: int, roll_deg: float) -> Iterator[tuple[Identity, HeadPhoto]]:
    """Procedural identities 1000, 1001, ... at the rig's 18 head poses, rolled by `roll_deg` +-10
    degrees, photographed off-centre at 600 mm by a 320 px camera of focal 700 px (the same draws
    for every `roll_deg`)."""
    rng = np.random.default_rng(0)
    for i in range(identities):
        identity = sample_identity(np.random.default_rng(1000 + i))
        for pitch, yaw in rig_head_poses(RigConfig()):
            rot = rotation_from_pose(pitch, yaw, np.radians(roll_deg + rng.uniform(-10, 10)))
            yield identity, photograph_head(identity, rot, np.array([rng.uniform(-40, 40), rng.uniform(-30, 30), 600.0]), 320, 700.0)


Reading = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # landmarks (5, 2) px, K, R, t: X_cam = R X + t


def triangulated_errors(readings: list[Reading]) -> list[float]:
    """One face's detected landmarks in photos at known poses: each photo's pose fitted to the five points triangulated
    from the face's other photos (leave one out), its error in degrees against the true R. The points are where the
    detector behaves as if the landmarks were: errors no lower than with the face's true points mean that its error
    moves with the pose, which no fixed face model absorbs."""
    errors = []
    for i, (points, k, rotation, _) in enumerate(readings):
        others = readings[:i] + readings[i + 1 :]
        if len(others) < 2:
            continue
        views = np.stack([projection(*view[1:]) for view in others])  # (V, 3, 4)
        model = np.stack([triangulate(views, np.stack([view[0][j] for view in others])) for j in range(5)])  # (5, 3)
        errors.append(rotation_angle_deg(estimate_head_pose(points, k, model).rotation, rotation))
    return errors


def head_pose(detector: MtcnnDetector, identities: int) -> None:
    print(f"\n2. head-pose error on procedural heads: {identities} identities x the rig's 18 poses, 320 px, f 700 px, 600 mm")
    rows: dict[str, list[float]] = {k: [] for k in ("exact/own", "exact/human", "detected/own", "detected/human")}
    readings: list[list[Reading]] = []  # per identity
    found = total = 0
    last = None
    for identity, photo in rig_photos(identities, 0.0):
        if identity is not last:  # the photos come identity by identity
            readings.append([])
            last = identity
        marks, centre = head_landmarks_mm(identity)
        models = {"own": marks - centre, "human": FACE_MODEL_MM}
        faces = detector.detect(photo.image)
        detected = np.array(faces[0].landmarks) if faces else None
        total += 1
        found += bool(faces)
        if faces:
            readings[-1].append((detected, photo.camera_matrix, photo.head_rotation, photo.face_centre))
        for source, points in (("exact", photo.landmarks), ("detected", detected)):
            for name, model in models.items():
                if points is not None:
                    pose = estimate_head_pose(points, photo.camera_matrix, model)
                    rows[f"{source}/{name}"].append(rotation_angle_deg(pose.rotation, photo.head_rotation))
    rows["detected/triangulated"] = [e for face in readings for e in triangulated_errors(face)]
    print(f"   found {found}/{total} heads")
    for key, errors in rows.items():
        e = np.array(errors)
        print(f"   {key:21s} rotation error, degrees: median {np.median(e):5.1f}  mean {e.mean():5.1f}  "
              f"90th pct {np.percentile(e, 90):5.1f}  max {e.max():5.1f}  (n={len(e)})")
    turned_heads(detector, identities)
    real_poses(detector)


def portraits() -> dict[str, np.ndarray]:
    """Real portraits that ship with installed packages (scikit-image, matplotlib)."""
    from matplotlib import cbook

    return {"astronaut": data.astronaut(), "grace_hopper": read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
            "cameraman": np.repeat(data.camera()[..., None], 3, -1)}  # fmt: skip


def relief_poses(detector: MtcnnDetector, out: Path) -> None:
    """Frontal faces on a generic face surface (benchmarks/relief.py) turned to known poses: the photo path's error on
    real faces. Each face's landmarks are where MTCNN finds them unturned. With the generic human face the head frame
    differs from the relief's by a fixed turn (the face is not the model's), so its errors are taken against the true
    turns applied to the pose that the exact landmarks give unturned. The portraits turn through pitch -20..20 x yaw
    -40..40 (steps of 10) before a 320 px camera of focal 700 px; LFW's faces 0-39 (those the generic face's layout
    was not taken from, gazegen/data/normalise.py) through pitch -15, 0, 15 x yaw -30, 0, 30 before a 200 px camera
    of focal 420 px (their eyes ~40 px apart, as in the 160 px images they come from)."""
    print("\n   real faces at known poses: faces on a generic face surface, turned; 600 mm away")
    tiles, images = [], portraits()
    for name in ("astronaut", "grace_hopper"):
        rows = _relief_errors(detector, images[name], range(-20, 21, 10), range(-40, 41, 10), 320, 700.0, tiles)
        _print_rows(f"{name} (pitch -20..20 x yaw -40..40)", rows)
    rows = {}
    for image in lfw_faces()[:40]:
        for key, errors in _relief_errors(detector, image, (-15, 0, 15), (-30, 0, 30), 200, 420.0).items():
            rows.setdefault(key, []).extend(errors)
    _print_rows("LFW faces 0-39 (pitch -15, 0, 15 x yaw -30, 0, 30)", rows)
    rows_png = [np.concatenate(tiles[i : i + 7], 1) for i in range(0, len(tiles) - len(tiles) % 7, 7)]
    cv2.imwrite(str(out / "relief_sheet.png"), cv2.cvtColor(np.concatenate(rows_png, 0), cv2.COLOR_RGB2BGR))
    print(f"   sheet: {out / 'relief_sheet.png'} (per portrait: pitch -20 and +20 at yaw -40, 0, +40, and the unturned one; "
          "true landmarks green, MTCNN's red)")


RELIEF_AT = np.array([0.0, 0.0, 600.0])  # where a relief's eye midpoint is photographed, camera frame, mm


@dataclass(frozen=True)
class TurnedRelief:
    """One photo of a relief turned to (pitch, yaw) degrees at `RELIEF_AT`."""

    pitch: float
    yaw: float
    turn: np.ndarray  # (3, 3) head frame -> camera: the true rotation in the relief's frame
    photo: np.ndarray  # (size, size, 3) uint8 RGB
    marks: np.ndarray  # (5, 2) px, the exact landmarks
    k: np.ndarray  # (3, 3)
    detected: np.ndarray | None  # (5, 2) px, MTCNN's landmarks (None: no face found)


def lifted(detector: MtcnnDetector, image: np.ndarray, size: int, focal: float) -> tuple[Relief, np.ndarray] | None:
    """A frontal face lifted onto the generic surface at the landmarks MTCNN finds on it (None: no face), and the
    generic human face's frame in the relief's: the pose its exact landmarks give unturned before a `size`-square
    camera of focal `focal` (the head frames differ by that fixed turn, as the face is not the model's)."""
    unturned = detector.detect(image)
    if not unturned:
        return None
    relief = lift(image, np.array(unturned[0].landmarks))
    _, marks, k = photograph(relief, np.eye(3), RELIEF_AT, size, focal)
    return relief, estimate_head_pose(marks, k).rotation


def relief_turns(detector: MtcnnDetector, relief: Relief, poses: Iterable[tuple[float, float]], size: int, focal: float
                 ) -> Iterator[TurnedRelief]:
    """The relief turned to each (pitch, yaw) of `poses`, degrees, in a `size`-square camera of focal `focal`, and read by MTCNN."""
    for pitch, yaw in poses:
        turn = rotation_from_pose(np.radians(pitch), np.radians(yaw))
        photo, marks, k = photograph(relief, turn, RELIEF_AT, size, focal)
        found = detector.detect(photo)
        yield TurnedRelief(pitch, yaw, turn, photo, marks, k, np.array(found[0].landmarks) if found else None)


def _relief_errors(detector: MtcnnDetector, image: np.ndarray, pitches, yaws, size: int, focal: float,
                   tiles: list | None = None) -> dict[str, list[float]]:
    """Rotation errors (degrees) of one face lifted and turned to each (pitch, yaw), by kind; `found` counts 1 per
    turned photo with a face (none for a face MTCNN does not find unturned). Appends marked photos of the corner and
    the unturned poses to `tiles` if given."""
    rows: dict[str, list[float]] = {kind: [] for kind in ("found", "exact/human", "detected/own", "detected/human")}
    readings: list[Reading] = []
    if (face := lifted(detector, image, size, focal)) is None:
        return rows
    relief, frame = face
    for t in relief_turns(detector, relief, [(p, y) for p in pitches for y in yaws], size, focal):
        rows["found"].append(float(t.detected is not None))
        if t.pitch or t.yaw:  # unturned, the exact landmarks give the frame itself
            rows["exact/human"].append(rotation_angle_deg(estimate_head_pose(t.marks, t.k).rotation, t.turn @ frame))
        if t.detected is None:
            continue
        readings.append((t.detected, t.k, t.turn, RELIEF_AT))
        rows["detected/own"].append(rotation_angle_deg(estimate_head_pose(t.detected, t.k, relief.landmarks).rotation, t.turn))
        rows["detected/human"].append(rotation_angle_deg(estimate_head_pose(t.detected, t.k).rotation, t.turn @ frame))
        corner = t.pitch in (min(pitches), max(pitches)) and t.yaw in (min(yaws), 0, max(yaws))
        if tiles is not None and (corner or t.pitch == t.yaw == 0):
            tiles.append(_marked(t.photo, t.marks, t.detected))
    rows["detected/triangulated"] = triangulated_errors(readings)
    return rows


def _print_rows(title: str, rows: dict[str, list[float]]) -> None:
    found = rows.pop("found")
    print(f"   {title}: found {int(sum(found))}/{len(found)}")
    for key, errors in rows.items():
        e = np.array(errors)
        print(f"   {key:21s} rotation error, degrees: median {np.median(e):5.1f}  mean {e.mean():5.1f}  "
              f"90th pct {np.percentile(e, 90):5.1f}  max {e.max():5.1f}  (n={len(e)})")


def _marked(photo: np.ndarray, true: np.ndarray, found: np.ndarray) -> np.ndarray:
    """The photo with the true landmarks (green) and the detected ones (red), 2x."""
    view = cv2.resize(photo, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    for points, colour in ((true, (0, 255, 0)), (found, (255, 0, 0))):
        for p in points:
            cv2.circle(view, tuple(int(v) for v in 2 * p), 3, colour, -1)
    return view


def turned_heads(detector: MtcnnDetector, identities: int) -> None:
    """The same heads and poses turned a quarter either way (roll +-90, +-10): the photo path's error,
    and how many are read upside down (more than 90 degrees off: the mouth taken for the eyes)."""
    for quarter in (90.0, -90.0):
        errors = []
        for _, photo in rig_photos(identities, quarter):
            faces = detector.detect(photo.image)
            if faces:
                pose = estimate_head_pose(np.array(faces[0].landmarks), photo.camera_matrix)
                errors.append(rotation_angle_deg(pose.rotation, photo.head_rotation))
        e = np.array(errors)
        print(f"   turned {quarter:+.0f}: detected/human median {np.median(e):5.1f}  90th pct {np.percentile(e, 90):5.1f}  "
              f"max {e.max():5.1f}  (n={len(e)}); read upside down: {(e > 90).sum()}")


def real_poses(detector: MtcnnDetector) -> None:
    """Head poses of real photos: the portraits one by one, the LFW subset as a distribution."""
    line, images = "   real photos, (pitch, yaw) degrees:", portraits()
    for name, image in images.items():
        faces = detector.detect(image)
        k = photo_camera_matrix(image.shape[1], image.shape[0])
        pose = np.degrees(estimate_head_pose(np.array(faces[0].landmarks), k).pitchyaw) if faces else None
        line += f"  {name} " + ("no face" if pose is None else f"({pose[0]:+.0f}, {pose[1]:+.0f})")
    print(line)
    turned_poses(detector, images)
    poses = {}
    for i, image in enumerate(lfw_faces()):
        found = detector.detect(image)
        if found:
            poses[i] = np.degrees(estimate_head_pose(np.array(found[0].landmarks), photo_camera_matrix(160, 160)).pitchyaw)
    p, held_out = np.array(list(poses.values())), np.array([v for i, v in poses.items() if i < 40])
    print(f"   LFW subset: {len(p)}/100 faces found; pitch median {np.median(p[:, 0]):+.1f} (faces 0-39, which the generic "
          f"face's layout was not taken from: {np.median(held_out[:, 0]):+.1f}), |pitch| 90th pct "
          f"{np.percentile(np.abs(p[:, 0]), 90):.1f} max {np.abs(p[:, 0]).max():.1f}; |yaw| 90th pct {np.percentile(np.abs(p[:, 1]), 90):.1f}")


def lfw_faces() -> list[np.ndarray]:
    """scikit-image's LFW subset's first 100 images (faces, 25 px), upscaled 4x and padded: 160 px RGB."""
    faces = []
    for face in data.lfw_subset()[:100]:
        image = cv2.resize((face * 255).astype(np.uint8), (100, 100), interpolation=cv2.INTER_CUBIC)
        faces.append(cv2.copyMakeBorder(np.repeat(image[..., None], 3, -1), 30, 30, 30, 30, cv2.BORDER_REPLICATE))
    return faces


def turned_poses(detector: MtcnnDetector, portraits: dict[str, np.ndarray]) -> None:
    """Each portrait on a grey square canvas turned by every 45 degrees (no EXIF): the head pose
    should turn with the photo, R -> Rz(-a) R for a counter-clockwise turn on screen."""
    errors = []
    for image in portraits.values():
        h, w = image.shape[:2]
        side = int(np.hypot(h, w)) + 2
        canvas = np.full((side, side, 3), 90, np.uint8)
        canvas[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = image
        camera = photo_camera_matrix(side, side)
        poses = {}
        for degrees in range(0, 360, 45):
            turned = cv2.warpAffine(canvas, cv2.getRotationMatrix2D((side / 2, side / 2), degrees, 1.0), (side, side),
                                    borderValue=(90, 90, 90))
            faces = detector.detect(turned)
            poses[degrees] = estimate_head_pose(np.array(faces[0].landmarks), camera).rotation if faces else None
        for degrees, pose in poses.items():
            if degrees and pose is not None and poses[0] is not None:
                errors.append(rotation_angle_deg(pose, geometry.rotation_z(np.array(np.radians(-degrees))) @ poses[0]))
    e = np.array(errors)
    print(f"   the portraits turned by 45, 90, ... 315 degrees: {len(e)}/{7 * len(portraits)} found; head pose against the "
          f"upright one turned with the photo, degrees: median {np.median(e):.1f}, max {e.max():.1f}; read upside down: {(e > 90).sum()}")


def exif_jpeg(image_rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG of the pixels as stored, with an EXIF orientation tag (6: display turned 90 degrees clockwise)."""
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    raw = jpeg.tobytes()
    return raw[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + raw[2:]


def made_set(rng: np.random.Generator, tmp: Path) -> dict[str, list[tuple[np.ndarray, list[np.ndarray]]]]:
    """Category -> [(image, the eyes (2, 2) of each face in it)]."""
    face = data.astronaut()[FACE]
    sets: dict[str, list] = {k: [] for k in ("small", "rotated", "exif", "grey", "several")}
    for w, h in ((1920, 1080), (4000, 3000)):
        for face_px in (40, 50, 60, 80):  # face box widths
            at = (int(rng.integers(0, w - 150)), int(rng.integers(0, h - 200)))
            image, eyes = paste_eyes(background(w, h), face, round(face_px / FACE_BOX), at)
            sets["small"].append((image, [eyes]))
    for _ in range(8):
        scene, eyes = paste_eyes(background(800, 800), face, 120, (340, 320))
        turn = cv2.getRotationMatrix2D((400, 400), float(rng.uniform(0, 360)), 1.0)
        sets["rotated"].append((cv2.warpAffine(scene, turn, (800, 800), borderMode=cv2.BORDER_REFLECT), [np.c_[eyes, np.ones(2)] @ turn.T]))
    stored = {3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1)}  # the pixels as saved
    for orientation, turn_back in stored.items():
        scene, eyes = paste_eyes(background(1200, 900), face, 100, (500, 300))
        path = tmp / f"exif{orientation}.jpg"
        path.write_bytes(exif_jpeg(np.ascontiguousarray(turn_back(scene)), orientation))
        sets["exif"].append((read_image(path), [eyes]))  # read_image turns it upright again
    for face_px in (45, 90):
        scene, eyes = paste_eyes(background(1280, 960), face, round(face_px / FACE_BOX), (600, 400))
        sets["grey"].append((cv2.cvtColor(cv2.cvtColor(scene, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB), [eyes]))
    for k in range(3):
        scene, all_eyes = background(1600, 1000), []
        for face_px, x in ((45 + 10 * k, 150), (100, 650), (70, 1200)):
            scene, eyes = paste_eyes(scene, face, round(face_px / FACE_BOX), (x, 300 + 50 * k))
            all_eyes.append(eyes)
        sets["several"].append((scene, all_eyes))
    return sets


def matched(found: list, eyes: np.ndarray) -> bool:
    """A detection holds this face when its eye midpoint is within half the eye distance of the face's."""
    centre, ipd = eyes.mean(0), np.linalg.norm(eyes[1] - eyes[0])
    return any(np.linalg.norm(np.mean(d.eyes(), 0) - centre) < 0.5 * ipd for d in found)


def found_fraction(detectors: dict, sets: dict, out: Path) -> None:
    print("\n3. faces found on the made set (a face counts when a detection's eye midpoint lies within half its eye distance)")
    tiles = []
    for category, items in sets.items():
        line = f"   {category:8s}"
        for name, detector in detectors.items():
            hit = total = 0
            for image, faces in items:
                found = detector.detect(image)
                hit += sum(matched(found, eyes) for eyes in faces)
                total += len(faces)
                if name == "mtcnn" and found and sum(t[1] == category for t in tiles) < 2:
                    tiles.append((sheet_tile(image, found[0]), category))
            line += f"  {name} {hit}/{total} ({hit / total:.0%})"
        print(line)
    tiles = [t for t, _ in tiles][:8]
    rows = [np.concatenate(tiles[i : i + 2], 1) for i in range(0, len(tiles) - len(tiles) % 2, 2)]
    cv2.imwrite(str(out / "sheet.png"), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    print(f"   sheet: {out / 'sheet.png'} (each tile: the detection's surroundings with box and landmarks | its normalised crop)")


def sheet_tile(image: np.ndarray, face) -> np.ndarray:
    """A 256x128 tile: the face's surroundings with its box and landmarks, then its normalised crop."""
    x, y, w, h = face.box
    side = int(max(w, h) * 2.2)
    cx, cy = int(x + w / 2), int(y + h / 2)
    pad = cv2.copyMakeBorder(image, side, side, side, side, cv2.BORDER_CONSTANT)
    view = pad[cy + side - side // 2 : cy + side + side // 2, cx + side - side // 2 : cx + side + side // 2].copy()
    s = 128 / view.shape[0]
    view = cv2.resize(view, (128, 128), interpolation=cv2.INTER_AREA)
    offset = np.array([cx - side // 2, cy - side // 2])
    corner = (np.array([x, y]) - offset) * s
    cv2.rectangle(view, tuple(int(v) for v in corner), tuple(int(v) for v in corner + np.array([w, h]) * s), (0, 255, 0), 1)
    for k, p in enumerate(face.landmarks):
        colour = ((255, 0, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))[k]
        cv2.circle(view, tuple(int(v) for v in (np.array(p) - offset) * s), 2, colour, -1)
    result = crop_faces(image, _Fixed(face), CropConfig(resolution=128, normalisation=NORM), "always")
    crop = result.image if result.ok else np.zeros((128, 128, 3), np.uint8)
    if not result.ok:  # black with the status: the crop failed
        cv2.putText(crop, result.status, (4, 64), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([view, crop], 1)


class _Fixed:
    """A detector that returns one known face (to crop a detection already made)."""

    def __init__(self, face) -> None:
        self.face = face

    def detect(self, image):
        return [self.face]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=4, help="procedural identities for the head-pose part")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image size")
    parser.add_argument("--out", type=Path, default=Path("faces_bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    mtcnn = MtcnnDetector()
    speed(mtcnn, args.repeats)
    head_pose(mtcnn, args.identities)
    relief_poses(mtcnn, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        sets = made_set(np.random.default_rng(0), Path(tmp))
    found_fraction({"mtcnn": mtcnn}, sets, args.out)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
