"""The depth a model must beat: the mean head, one fixed depth map per camera of a rig, with no image at all.

On a store whose camera k frames every subject the same way (a procedural rig: ``gazegen data synth-heads``),
the per-pixel median of the training subjects' depth seen by camera k is what a model would render
if it knew the head's shape class and nothing of the head in front of it. A depth error at or above
this baseline says the model has not learned even the shape all heads share
(``benchmarks/learning.py`` prints it beside the model's).
"""

from __future__ import annotations

import numpy as np
import torch

from gazegen.train.data import TripletDataset


def median_by_camera(depth: torch.Tensor, valid: torch.Tensor, cams: torch.Tensor, views: int) -> torch.Tensor:
    """Depth maps (N, 1, R, R), where valid (N, 1, R, R) bool, seen by cameras cams (N,) in [0, views) -> (V, 1, R, R).

    Each pixel is the median of the valid values of its camera's maps; a pixel no map of its camera has
    takes the median of all that camera's valid values (a baseline predicts everywhere, as a render does).
    """
    out = []
    for k in range(views):
        mine = cams == k
        if not bool(mine.any()):
            raise ValueError(f"camera {k}: no depth map seen by it")
        maps = torch.where(valid[mine], depth[mine], torch.full_like(depth[mine], float("nan")))  # (n, 1, R, R)
        seen = maps[~torch.isnan(maps)]
        if seen.numel() == 0:
            raise ValueError(f"camera {k}: none of its {int(mine.sum())} depth maps has a valid pixel")
        median = maps.nanmedian(0).values  # (1, R, R) NaN where no map is valid
        out.append(torch.where(torch.isnan(median), seen.median(), median))
    return torch.stack(out)


def mean_head_depth(dataset: TripletDataset, per_camera: int = 2) -> torch.Tensor:
    """The mean head of ``dataset``'s subjects (V, 1, R, R), one map per camera index: ``per_camera`` rows of each camera of
    each subject, at the dataset's depth side, in world units."""
    depth, valid, cams = [], [], []
    for k, subject in enumerate(dataset.subjects):
        cam_index = subject.labels.cam_index
        for cam in np.unique(cam_index):
            for row in np.flatnonzero(cam_index == cam)[:per_camera]:
                item = dataset.load(k, int(row), int(row))
                depth.append(item.depth_prior)
                valid.append(item.depth_valid)
                cams.append(int(cam))
    views = max(cams) + 1
    return median_by_camera(torch.cat(depth), torch.cat(valid), torch.tensor(cams), views)
