"""Specks: detached blobs of opacity beside the head in views turned away from the source.

    python benchmarks/specks.py [--checkpoint weights/demo-livegaze] [--turn 20] [--work DIR]

Makes a small store of procedural heads at the demo's rig (3 subjects, 9 views x 8 gazes, 128 px;
the held-out subject is used), then renders every row of it from its own head pose turned by
-turn, 0 and +turn degrees of yaw (as ``gazegen synthesize --set view_yaw=...`` does) with the gaze
straight ahead. A view's opacity (the neural render's, 64 px) above 0.1 is split into 8-connected
blobs; every blob but the largest (the head) is a speck. Printed per turn: the views with a speck,
the specks, and where they lie in world units (the mean of each speck's surface points: its depth
along its rays). A head turned 0 degrees is the source itself, a reference without specks.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from gazegen.checkpoint import checkpoint_normalisation, load_checkpoint
from gazegen.config import RigConfig, SynthHeadsConfig
from gazegen.data.heads import synthesize_store
from gazegen.data.images import image_tensor
from gazegen.data.xgaze import iter_samples
from gazegen.geometry import head_pose_to_camera
from gazegen.rendering.rays import camera_rays

OPAQUE = 0.1  # a pixel of the 64 px opacity above this belongs to a blob


def specks(alpha: np.ndarray) -> list[np.ndarray]:
    """Opacity (R, R) -> the pixel masks (R, R) of every 8-connected blob above OPAQUE but the largest."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((alpha > OPAQUE).astype(np.uint8), connectivity=8)
    if count <= 2:
        return []
    head = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return [labels == k for k in range(1, count) if k != head]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="weights/demo-livegaze")
    parser.add_argument("--turn", type=float, default=20.0, help="degrees of yaw the views are turned from each source")
    parser.add_argument("--work", type=Path, default=None, help="where the store is made (default: a temporary folder)")
    args = parser.parse_args()
    model, norm = load_checkpoint(args.checkpoint).eval(), checkpoint_normalisation(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        heads = SynthHeadsConfig(subjects=3, test_subjects=1, resolution=128, gazes=8,
                                 rig=RigConfig(views=9, max_yaw_deg=30.0, max_pitch_deg=20.0))
        store = synthesize_store(work / "heads", heads, workers=1, overwrite=True)  # a --work folder's earlier store, remade
        samples = list(iter_samples(next((store / "test").glob("*.h5"))))
    sources = torch.stack([image_tensor(s.image, model.cfg.image_resolution) for s in samples])  # (N, 3, S, S)
    source_cameras = torch.from_numpy(np.stack([s.camera for s in samples])).float()
    poses = np.stack([s.head_pose for s in samples])  # (N, 2) radians
    print(f"{args.checkpoint}: {len(samples)} sources of the held-out subject, opacity > {OPAQUE} at "
          f"{model.cfg.render.neural_resolution} px")
    for turn in (-args.turn, 0.0, args.turn):
        views = torch.from_numpy(head_pose_to_camera(poses + np.radians([0.0, turn]), norm)).float()
        with torch.no_grad():
            out = model(sources, torch.zeros(len(sources), 2), views, source_cameras)
        alpha, depth = out.alpha[:, 0].numpy(), out.depth[:, 0]
        rays = camera_rays(views, alpha.shape[-1])
        found, centres = 0, []
        for i in range(len(alpha)):
            blobs = specks(alpha[i])
            found += bool(blobs)
            for mask in blobs:
                j = torch.from_numpy(np.flatnonzero(mask))
                t = depth[i].flatten()[j] / rays.z_per_t[i, j, 0]  # z-depth -> distance along the ray
                centres.append((rays.origins[i, j] + t[:, None] * rays.directions[i, j]).mean(0).numpy())
        where = "" if not centres else "; centres " + ", ".join(
            "(" + ", ".join(f"{v:+.2f}" for v in c) + ")" for c in np.unique(np.round(centres, 2), axis=0)[:6])
        print(f"  turned {turn:+5.1f} deg: {found}/{len(alpha)} views with a speck, {len(centres)} specks{where}")


if __name__ == "__main__":
    main()
