"""`gazegen data synth-heads`: procedural multi-view gaze heads with exact labels, in the store layout.

Subject i draws everything from a generator seeded by ``(cfg.seed, i)`` only (its identity from
one child stream, its frames from another), so a file depends neither on ``cfg.subjects`` nor on
the order subjects are made in. Each subject has ``cfg.gazes`` frames; a frame is one gaze target,
seen by every camera of the rig. Lighting and background are drawn once per subject: within a subject
two images differ only by gaze (inside the eye openings) and camera, so a model conditioned on the
gaze cannot use it as a code for the frame's lighting (a per-frame lighting, with few gazes, taught
exactly that).

Labels (conventions of gazegen/geometry.py; geometry of gazegen/data/head_model.py, in mm):
  gaze_head  pitch/yaw of the direction from the face centre (world origin, midway between the
             eyeball centres) to the target, in the head frame (world = FLIP @ head); sampled
             uniformly within +-cfg.gaze.max_pitch_deg / +-max_yaw_deg, the target's distance
             uniformly in cfg.gaze.target_mm.
  head_pose  the pose the camera sees; the rig is a grid of poses, camera 0 exactly frontal.
  camera     geometry.head_pose_to_camera(head_pose, cfg.camera), world units.
  gaze       geometry.gaze_head_to_camera(gaze_head, R_head).
Images are written frame-major (frame 0 cameras 0..V-1, frame 1, ...); frame_index is the gaze
index and cam_index the camera, both 0-based.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from gazegen import geometry
from gazegen.config import GazeRangeConfig, RigConfig, SynthHeadsConfig
from gazegen.data.head_model import (
    LEFT_EYE, RIGHT_EYE, Ellipsoids, Eyes, Identity, Lighting, ViewCast, cast_view, eye_axes, shade_frames,
)
from gazegen.data.sample import Sample
from gazegen.data.store import SubjectWriter, subject_filename, write_split
from gazegen.data.store_folder import new_store_folder

log = logging.getLogger(__name__)

PIXELS_PER_CHUNK = 1 << 22  # frames x views x pixels rendered at once: bounds memory at large sizes
IRIS_COLOURS = ((0.36, 0.2, 0.09), (0.24, 0.13, 0.07), (0.46, 0.35, 0.15), (0.3, 0.44, 0.24), (0.3, 0.46, 0.7), (0.45, 0.5, 0.55))
HAIR_COLOURS = ((0.05, 0.045, 0.04), (0.15, 0.09, 0.05), (0.3, 0.18, 0.09), (0.72, 0.58, 0.33), (0.45, 0.17, 0.07), (0.58, 0.57, 0.55))
SKIN_LIGHT, SKIN_DARK = np.array([0.96, 0.79, 0.67]), np.array([0.4, 0.25, 0.17])


@dataclass(frozen=True)
class Frames:
    """G frames of one subject: what every view of a frame shares."""

    gaze_head: np.ndarray  # (G, 2) float64 pitch/yaw radians, head frame
    target: np.ndarray  # (G, 3) float64 mm, world frame: the point both eyes look at
    axes: np.ndarray  # (G, 2, 3) float64 optical axes of the left and right eye, world
    light: Lighting  # one lighting (batch 1), shared by the G frames


@dataclass(frozen=True)
class SubjectPlan:
    index: int
    name: str  # "subject0003"
    identity: Identity
    frames: Frames


def subject_generators(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for subject ``index``'s identity and frames, from (seed, index) only."""
    identity, frames = np.random.SeedSequence([seed, index]).spawn(2)
    return np.random.default_rng(identity), np.random.default_rng(frames)


def _colour(rng: np.random.Generator, palette: tuple, jitter: float) -> tuple[float, float, float]:
    base = np.asarray(palette[rng.integers(len(palette))]) + rng.uniform(-jitter, jitter, 3)
    return tuple(float(c) for c in base.clip(0.04, 1.0))


def sample_identity(rng: np.random.Generator) -> Identity:
    """A random head: proportions, eyes, colours (mm, world frame; see head_model)."""
    u = rng.uniform
    r_eye, lid = u(11.5, 12.5), u(1.3, 2.0)
    eyes = Eyes(
        half_spacing=u(29.0, 34.0), radius=r_eye, lid_thickness=lid, half_width=u(11.5, 13.5),
        upper=u(4.8, 6.5), lower=u(3.0, 4.5), tilt=math.radians(u(-2.0, 8.0)), offset=(u(-0.5, 1.0), u(-0.5, 1.0)),
        iris_radius=u(5.6, 6.3), pupil_radius=u(2.0, 2.8), iris_colour=_colour(rng, IRIS_COLOURS, 0.04),
        sclera_colour=(u(0.88, 0.95), u(0.85, 0.92), u(0.8, 0.88)), iris_stripes=int(rng.integers(18, 34)),
    )
    s = eyes.half_spacing
    cr = np.array([u(70, 80), u(95, 108), u(92, 104)])  # cranium radii
    cc = np.array([0.0, u(18, 30), u(8, 14) - cr[2]])  # skull front at z = 8..14: behind the eyelids
    fr = np.array([u(50, 58), u(58, 68), u(56, 66)])  # lower face
    nl, nt, tz = u(38, 50), u(8, 11), u(32, 40)  # nose length (eyes to tip), tip radius, tip projection
    top, tip = np.array([0.0, 4.0, u(18, 22)]), np.array([0.0, -nl, tz - 0.5 * nt])
    bridge_tilt = math.atan2(top[2] - tip[2], top[1] - tip[1])  # local y along the ridge, tip to top
    bridge_half, bridge_depth = np.linalg.norm(top - tip) / 2 + 2.0, u(9, 12)
    bridge_c = (top + tip) / 2 - bridge_depth * np.array([0.0, -math.sin(bridge_tilt), math.cos(bridge_tilt)])
    mouth_y, mouth_w = -(nl + u(18, 24)), u(19, 26)
    face_front = u(12, 18)
    face_y, chin_y = u(-42, -36), mouth_y - u(18, 24)
    chin_front = face_front - fr[2] + fr[2] * math.sqrt(max(0.0, 1 - ((chin_y - face_y) / fr[1]) ** 2)) + u(1, 4)
    ear_c = (cr[0] * 0.96, u(-14, -6), cc[2] + u(-2, 8))
    ear_r = (7.0, u(26, 32), u(15, 19))
    cheek_r = (u(20, 26), u(14, 18), u(22, 28))
    cheek = (u(34, 40), u(-24, -18), u(3, 7) - cheek_r[2])  # cheekbones: front 3..7 mm before the eyes
    brow_r = (u(56, 64), u(22, 28), u(40, 48))
    lid_r = (r_eye + lid + u(1.5, 3), r_eye + lid + u(0.5, 1.5), r_eye + lid)  # contains the eyeball
    wing = (0.75 * nt + 2.0, -nl + 2.0, tz - nt - 3.0)
    parts = {  # name: (centre, radii, tilt about x)
        "cranium": (cc, cr, 0.0),
        "hair": (cc + [0.0, u(8, 14), -u(8, 14)], cr + [u(3, 7), u(2, 6), u(2, 5)], 0.0),
        "face": ((0.0, face_y, face_front - fr[2]), fr, 0.0),
        "chin": ((0.0, chin_y, chin_front - 20.0), (u(22, 28), u(14, 18), 20.0), 0.0),
        "brow": ((0.0, u(18, 24), u(20, 25) - brow_r[2]), brow_r, 0.0),
        "cheek_l": (cheek, cheek_r, 0.0),
        "cheek_r": ((-cheek[0], cheek[1], cheek[2]), cheek_r, 0.0),
        "nose_bridge": (bridge_c, (u(6, 8), bridge_half, bridge_depth), bridge_tilt),
        "nose_tip": ((0.0, -nl, tz - nt), (nt, 0.8 * nt, nt), 0.0),
        "wing_l": (wing, (6.5, 5.5, 6.5), 0.0),
        "wing_r": ((-wing[0], wing[1], wing[2]), (6.5, 5.5, 6.5), 0.0),
        "lips": ((0.0, mouth_y, face_front - 6.0), (mouth_w + 3.0, 8.0, 8.0), 0.0),
        "ear_l": (ear_c, ear_r, 0.0),
        "ear_r": ((-ear_c[0], ear_c[1], ear_c[2]), ear_r, 0.0),
        "neck": ((0.0, -150.0, cc[2] - 12.0), (u(38, 46), 100.0, u(40, 46)), 0.0),
        "torso": ((0.0, -265.0, cc[2] - 15.0), (u(150, 175), 90.0, u(85, 100)), 0.0),
        "lid_l": ((s, 0.0, 0.0), lid_r, 0.0),
        "lid_r": ((-s, 0.0, 0.0), lid_r, 0.0),
    }
    depth = np.array([0.0, 0.0, u(2, 4)])  # how deep the eyes sit: everything but the lids moves forward
    shape = Ellipsoids(
        names=tuple(parts),
        centres=np.array([np.asarray(v[0], float) + (0 if name.startswith("lid") else depth) for name, v in parts.items()]),
        radii=np.array([np.asarray(v[1], float) for v in parts.values()]), tilts=np.array([v[2] for v in parts.values()]),
    )
    skin = SKIN_LIGHT + u(0, 1) * (SKIN_DARK - SKIN_LIGHT) + rng.uniform(-0.03, 0.03, 3)
    lips = skin * np.array([0.8, 0.5, 0.5]) + np.array([0.08, 0.0, 0.02])
    rgb = lambda c: tuple(float(v) for v in np.clip(c, 0.04, 1.0))  # noqa: E731
    return Identity(
        shape=shape, eyes=eyes, skin=rgb(skin), hair=_colour(rng, HAIR_COLOURS, 0.03), lips=rgb(lips),
        clothes=rgb(rng.uniform(0.08, 0.85, 3)), brow=(u(17, 23), u(20, 25), u(2.2, 3.8), u(2, 5)), mouth=(mouth_y, mouth_w),
    )


def sample_lighting(rng: np.random.Generator) -> Lighting:
    """One light and background (a subject's, shared by all its frames and cameras)."""
    azimuth, elevation = rng.uniform(-1.0, 1.0), rng.uniform(-0.3, 0.9)
    direction = np.array([math.sin(azimuth) * math.cos(elevation), math.sin(elevation), math.cos(azimuth) * math.cos(elevation)])
    warm = rng.uniform(-0.05, 0.1)
    return Lighting(
        direction=torch.from_numpy(direction[None]), ambient=torch.tensor([rng.uniform(0.35, 0.55)], dtype=torch.float64),
        diffuse=torch.tensor([rng.uniform(0.45, 0.8)], dtype=torch.float64),
        tint=torch.tensor([[1.0, 1 - 0.5 * warm, 1 - warm]], dtype=torch.float64),
        background=torch.from_numpy(rng.uniform(0.1, 0.9, (1, 2, 3))),
    )


def sample_frames(rng: np.random.Generator, identity: Identity, gaze: GazeRangeConfig, count: int) -> Frames:
    """``count`` gaze targets and the subject's lighting (see the module docstring for the label)."""
    pitch = rng.uniform(-1, 1, count) * math.radians(gaze.max_pitch_deg)
    yaw = rng.uniform(-1, 1, count) * math.radians(gaze.max_yaw_deg)
    distance = rng.uniform(*gaze.target_mm, count)
    gaze_head = np.stack([pitch, yaw], -1)
    target = distance[:, None] * geometry.pitchyaw_to_vector(gaze_head) * np.array(geometry.FLIP)  # head -> world
    return Frames(gaze_head=gaze_head, target=target, axes=eye_axes(identity, target, gaze.converge),
                  light=sample_lighting(rng))


def subject_plan(cfg: SynthHeadsConfig, index: int) -> SubjectPlan:
    """Identity and frames of subject ``index`` (deterministic in (cfg.seed, index))."""
    rng_identity, rng_frames = subject_generators(cfg.seed, index)
    identity = sample_identity(rng_identity)
    frames = sample_frames(rng_frames, identity, cfg.gaze, cfg.gazes)
    return SubjectPlan(index=index, name=subject_filename(index).removesuffix(".h5"), identity=identity, frames=frames)


def rig_head_poses(rig: RigConfig) -> np.ndarray:
    """(V, 2) head poses (pitch, yaw radians) the cameras see: camera 0 frontal, the rest nearest it on a grid.

    The grid is odd-sized (so it contains the frontal pose) with about the aspect of the ranges and
    spans +-max_pitch x +-max_yaw; poses are ordered by normalised distance from frontal.
    """
    odd = lambda n: int(n) + 1 - int(n) % 2  # noqa: E731: the odd number >= n
    span = lambda n: np.linspace(-1, 1, n) if n > 1 else np.zeros(1)  # noqa: E731
    if rig.max_pitch_deg == 0 or rig.max_yaw_deg == 0:
        rows = 1 if rig.max_pitch_deg == 0 else odd(rig.views)
    else:
        rows = odd(max(1, round(math.sqrt(rig.views * rig.max_pitch_deg / rig.max_yaw_deg))))
    cols = 1 if rig.max_yaw_deg == 0 else odd(math.ceil(rig.views / rows))
    pitch, yaw = np.meshgrid(span(rows), span(cols), indexing="ij")
    grid = np.stack([pitch.ravel(), yaw.ravel()], -1)
    order = sorted(range(len(grid)), key=lambda i: (np.hypot(*grid[i]), abs(grid[i, 1]), grid[i, 1], grid[i, 0]))
    chosen = [order[i % len(order)] for i in range(rig.views)]  # repeats only when both ranges are 0
    return grid[chosen] * np.radians([rig.max_pitch_deg, rig.max_yaw_deg]) + 0.0  # + 0.0: no negative zeros


def render_subject(plan: SubjectPlan, cfg: SynthHeadsConfig, progress: tqdm | None = None) -> Iterator[list[Sample]]:
    """Render every frame x camera of one subject, in frame-major chunks of Samples."""
    norm = cfg.camera
    poses = rig_head_poses(cfg.rig)  # (V, 2)
    cameras = geometry.head_pose_to_camera(poses, norm)  # (V, 25) world units
    rotations = geometry.head_pose_to_rotation(poses)  # (V, 3, 3)
    views: list[ViewCast] = [cast_view(plan.identity, torch.from_numpy(c), norm) for c in cameras]
    frames = plan.frames
    chunk = max(1, PIXELS_PER_CHUNK // (len(views) * norm.resolution**2))
    for start in range(0, len(frames.gaze_head), chunk):
        sel = slice(start, start + chunk)
        axes = torch.from_numpy(frames.axes[sel])
        light = Lighting(**{f.name: getattr(frames.light, f.name).expand(len(axes), *getattr(frames.light, f.name).shape[1:])
                            for f in dataclasses.fields(Lighting)})
        renders = [shade_frames(plan.identity, view, axes, light) for view in views]
        gaze = geometry.gaze_head_to_camera(frames.gaze_head[sel][:, None], rotations[None])  # (g, V, 2)
        images = [r.image_uint8().numpy() for r in renders]  # (g, H, W, 3) per view
        parts = [r.part.numpy() for r in renders]
        faces = [r.face_mask.numpy() for r in renders]
        depths = [r.depth.numpy() for r in renders]
        samples = []
        for g in range(axes.shape[0]):
            for v in range(len(views)):
                part = parts[v][g]
                samples.append(Sample(
                    image=images[v][g], gaze=gaze[g, v].astype(np.float32), head_pose=poses[v].astype(np.float32),
                    gaze_head=frames.gaze_head[start + g].astype(np.float32), camera=cameras[v].astype(np.float32),
                    normalisation=norm, subject=plan.name, frame_index=start + g, cam_index=v,
                    face_mask=faces[v][g].astype(np.uint8), left_eye_mask=(part == LEFT_EYE).astype(np.uint8),
                    right_eye_mask=(part == RIGHT_EYE).astype(np.uint8), depth=depths[v][g],
                ))
            if progress is not None:
                progress.update(len(renders))
        yield samples


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def write_subject(cfg: SynthHeadsConfig, index: int, path: Path, progress: tqdm | None = None) -> Path:
    """Render subject ``index`` into one h5 file at ``path``, with one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops: one thread per process beats contended intra-op threads
    try:
        plan = subject_plan(cfg, index)
        with SubjectWriter(path, cfg.camera, plan.name) as writer:
            for samples in render_subject(plan, cfg, progress):
                writer.write(samples)
    finally:
        torch.set_num_threads(threads)
    return path


def held_out_subjects(cfg: SynthHeadsConfig) -> int:
    """How many subjects (the last ones) go to test/: ``cfg.test_subjects``, less as many as keep one
    in train/ when there are two or more. A single subject with ``test_subjects`` >= 1 is a test
    subject and train/ stays empty: a store to evaluate or fine-tune on (both read the test split),
    not to train on."""
    return min(cfg.test_subjects, cfg.subjects - 1) if cfg.subjects > 1 else min(cfg.test_subjects, cfg.subjects)


def synthesize_store(out: Path, cfg: SynthHeadsConfig, workers: int | None = None, *, overwrite: bool = False) -> Path:
    """Write a training store of procedural heads to ``out`` (train/, test/, train_test_split.json).

    ``out`` must be a new or empty folder; with ``overwrite``, the store it holds is deleted first
    and its other files kept (gazegen/data/store_folder.py); DataError otherwise. The last
    ``held_out_subjects(cfg)`` subjects go to test/. Subjects are rendered by ``workers`` processes
    (default: one per available core), each with one torch thread; the files do not depend on the
    number of workers.
    """
    out = new_store_folder(out, overwrite=overwrite)
    n_test = held_out_subjects(cfg)
    parts = ["test" if i >= cfg.subjects - n_test else "train" for i in range(cfg.subjects)]
    paths = [out / part / subject_filename(i) for i, part in enumerate(parts)]
    workers = max(1, min(workers or available_cores(), cfg.subjects))
    per_subject = cfg.gazes * cfg.rig.views
    log.info("synth-heads: %d subjects (%d test) x %d gazes x %d views at %d px, %d worker(s) -> %s",
             cfg.subjects, n_test, cfg.gazes, cfg.rig.views, cfg.resolution, workers, out)
    started = time.perf_counter()
    with tqdm(total=cfg.subjects * per_subject, unit="img", desc="synth-heads", disable=None) as progress:
        if workers == 1:
            for i, path in enumerate(paths):
                write_subject(cfg, i, path, progress)
        else:
            context = multiprocessing.get_context("spawn")  # no forked torch thread pools
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                for done in as_completed([pool.submit(write_subject, cfg, i, path) for i, path in enumerate(paths)]):
                    done.result()
                    progress.update(per_subject)
    names = {split: [p.name for p, part in zip(paths, parts) if part == split] for split in ("train", "test")}
    write_split(out, names["train"], names["test"])
    seconds = time.perf_counter() - started
    images = cfg.subjects * per_subject
    log.info("synth-heads: wrote %d images in %.1f s (%.1f images/s)", images, seconds, images / max(seconds, 1e-9))
    return out
