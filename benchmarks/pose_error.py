"""How a LiveGaze checkpoint renders a source whose head pose it is told wrong, against the exact image.

A photo's head pose is estimated (gazegen/data/normalise.py; benchmarks/faces.py part 2: about 9-10
degrees median on procedural heads), and the model reads the source through the camera of that pose.
Here procedural heads (never seen in training: seed 9) are photographed at a rig pose h; the model
is told the pose h + d and asked for the view turned by o from it. Telling the model h + d makes
its head frame the true one turned by Q (the turn taking the camera of h to that of h + d), so the
view it is asked for is the true camera turned back by Q^T (train/world_turn.py), which the
procedural renderer draws exactly, with the gaze turned into the told frame as the model sees it.
Printed: face PSNR (the exact image's head mask) per pose error, median over heads, source poses
and view turns, for each checkpoint given; written: a sheet, per error, of the exact view and each
checkpoint's render (one head, frontal source, view turned 20 degrees of yaw).

    python benchmarks/pose_error.py weights/demo-livegaze runs/livegaze-turns/checkpoints/step_0000800 \
        --out pose_error.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gazegen import geometry
from gazegen.checkpoint import checkpoint_normalisation, load_checkpoint
from gazegen.config import SynthHeadsConfig
from gazegen.data.head_model import render
from gazegen.data.heads import subject_plan
from gazegen.data.images import to_model_range
from gazegen.metrics.scores import masked_psnr
from gazegen.train.world_turn import turn_cameras, turn_gaze_head

ERRORS_DEG = [(0, 0), (2, 0), (5, 0), (10, 0), (0, 5), (0, 10), (-5, 5)]  # told pose minus true pose: pitch, yaw
SOURCES_DEG = [(0, 0), (0, 20), (10, -15)]  # true head poses of the sources
VIEWS_DEG = [(0, -20), (0, 20), (15, 0), (0, 0)]  # view turns asked for, from the told pose
SHEET_VIEW = 1  # VIEWS_DEG index shown in the sheet


def turn_between(a: np.ndarray, b: np.ndarray, norm) -> torch.Tensor:
    """(3, 3) Q with c2w(camera of head pose b) = Q @ c2w(camera of head pose a), both at the normalised distance."""
    ca, cb = (geometry.split_camera(geometry.head_pose_to_camera(torch.from_numpy(p), norm))[0][:3, :3] for p in (a, b))
    return cb @ ca.T


def exact_view(plan, camera: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """The head of ``plan`` (its first gaze) seen by ``camera`` (25,): image (1, 3, S, S) in [-1, 1], face mask (1, 1, S, S)."""
    out = render(plan.identity, camera.float(), norm, torch.from_numpy(plan.frames.axes[:1]), plan.frames.light)
    image = torch.from_numpy(out.image_uint8().numpy()[0]).permute(2, 0, 1)[None]
    return to_model_range(image), out.face_mask[:1, None].float()


@torch.inference_mode()
def told_view(model, source: torch.Tensor, told: np.ndarray, view: np.ndarray, gaze_head: torch.Tensor, norm) -> torch.Tensor:
    """The model's render (1, 3, S, S) of ``source`` told to be at head pose ``told``, turned by ``view``."""
    cam = torch.from_numpy(geometry.head_pose_to_camera(told[None], norm)).float()
    features = model.encode(source, cam)
    target = torch.from_numpy(geometry.head_pose_to_camera((told + view)[None], norm)).float()
    return model.render(model.redirect(features, gaze_head.float()), target, source=features).image.clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="LiveGaze checkpoint folders")
    parser.add_argument("--heads", type=int, default=4, help="procedural identities (seed 9)")
    parser.add_argument("--out", type=Path, default=Path("pose_error.png"), help="the sheet")
    args = parser.parse_args()
    torch.set_num_threads(1)
    norm = checkpoint_normalisation(args.checkpoints[0])
    models = [load_checkpoint(c).eval().requires_grad_(False) for c in args.checkpoints]
    cfg = SynthHeadsConfig(seed=9, resolution=norm.resolution, normalisation=norm)
    psnr = {(m, e): [] for m in range(len(models)) for e in ERRORS_DEG}
    sheet: dict[tuple, list[np.ndarray]] = {e: [] for e in ERRORS_DEG}
    for head in range(args.heads):
        plan = subject_plan(cfg, head)
        gaze = torch.from_numpy(plan.frames.gaze_head[:1])  # (1, 2) head frame
        for s, source_deg in enumerate(SOURCES_DEG):
            truth = np.radians(source_deg, dtype=np.float64)
            source, _ = exact_view(plan, geometry.head_pose_to_camera(torch.from_numpy(truth), norm), norm)
            for error in ERRORS_DEG:
                told = truth + np.radians(error)
                q = turn_between(truth, told, norm)  # the told head frame is the true one turned by q
                told_gaze = turn_gaze_head(gaze.double(), q)
                for v, view_deg in enumerate(VIEWS_DEG):
                    view = np.radians(view_deg, dtype=np.float64)
                    asked = geometry.head_pose_to_camera(torch.from_numpy(told + view)[None], norm)  # (1, 25), told frame
                    exact, mask = exact_view(plan, turn_cameras(asked, q.T)[0], norm)
                    renders = [told_view(m, source, told, view, told_gaze, norm) for m in models]
                    for m, r in enumerate(renders):
                        psnr[(m, error)].append(float(masked_psnr(r, exact, mask)[0]))
                    if head == 0 and s == 0 and v == SHEET_VIEW:
                        sheet[error] = [exact] + renders
    print(f"face PSNR (dB) against the exact view, median over {args.heads} heads x {len(SOURCES_DEG)} source poses x "
          f"{len(VIEWS_DEG)} view turns {VIEWS_DEG} (pitch, yaw degrees)")
    print(f"   {'told - true (pitch, yaw)':26s}" + "".join(f"{Path(c).name[:24]:>26s}" for c in args.checkpoints))
    for error in ERRORS_DEG:
        print(f"   {str(error):26s}" + "".join(f"{np.median(psnr[(m, error)]):26.2f}" for m in range(len(models))))
    rows = [np.concatenate([((t[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy() for t in tiles], 1)
            for tiles in sheet.values()]
    Image.fromarray(np.concatenate(rows, 0)).save(args.out)
    print(f"sheet: {args.out} (rows: the errors above; columns: the exact view, then each checkpoint)")


if __name__ == "__main__":
    main()
