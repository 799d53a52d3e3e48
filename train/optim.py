"""AdamW with one parameter group per part of LiveGaze, and its learning-rate schedule (train/trainer.py uses both)."""

from __future__ import annotations

import math

import torch

from gazegen.config import OptimConfig
from gazegen.models.livegaze import LiveGaze
from gazegen.train.errors import TrainingError

# Parameter groups by top-level module: the split of Live3D's checkpoint (encoder / renderer), LiveGaze's gaze modules,
# the source-surface branch and the mean planes (new on a trained model, each learns at its own rate).
PARTS = {"encoder": ("high_encoder", "low_encoder", "triplane_head", "lifting", "pixels"), "renderer": ("decoder", "superres", "detail"),
         "gaze": ("gaze_encoder", "gaze_fusion"), "surface": ("surface",), "mean_planes": ("mean",)}
FROZEN = {"gaze": (), "reconstruction": ("gaze",)}  # parts each stage leaves as they start


def build_optimizer(model: LiveGaze, optim: OptimConfig, frozen: tuple[str, ...] = ()) -> torch.optim.AdamW:
    """AdamW with the groups of ``PARTS``, named, each at its configured rate; the ``frozen`` parts get no gradient."""
    lrs = {"encoder": optim.lr_encoder, "renderer": optim.lr_renderer, "gaze": optim.lr_gaze, "surface": optim.lr_surface,
           "mean_planes": optim.lr_mean_planes}
    groups = {part: [] for part in PARTS if part not in frozen}
    for name, param in model.named_parameters():
        part = next((p for p, prefixes in PARTS.items() if name.split(".")[0] in prefixes), None)
        if part is None:
            raise TrainingError(f"parameter {name} belongs to no optimiser group; add its module to train/optim.py PARTS")
        param.requires_grad_(part not in frozen)
        if part not in frozen:
            groups[part].append(param)
    return torch.optim.AdamW([{"params": ps, "lr": lrs[p], "name": p} for p, ps in groups.items() if ps],
                             betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then constant or cosine to ``min_lr_ratio`` at ``total_steps``."""
    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.decay == "constant":
            return 1.0
        progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
