"""The reference gaze estimator (network and its training) and `gazegen evaluate`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gazegen.config.camera import NormalisationConfig
from gazegen.config.loader import ConfigError, _build, bounded


# --------------------------------------------------------------------------- reference gaze estimator


@dataclass(frozen=True)
class EyePatchConfig:
    """The estimator's eye branch: two eye patches cut where the head pose puts the eyes.

    In the images' normalised camera (`normalisation`: its focal length over its resolution is the
    field of view, the same at every image size) the head-fixed points
    (+-half_spacing_mm, above_centre_mm, forward_mm) of the head's world frame (x to the subject's
    left, y up, z out of the face, origin the face centre) are projected with the predicted head
    pose; a `window_mm` (width, height) window at each point's depth is sampled to `pixels`
    (gazegen/metrics/eye_patches.py). The defaults fit the procedural heads of `gazegen data
    synth-heads` (gazegen/data/head_model.py: eyeball centres 29-34 mm either side of the face
    centre, the eye openings 13-15 mm in front of them and up to 27 mm wide) in its camera, LiveGaze's
    512 px normalisation. ETH-XGaze's face centre lies between the eyes and the nose: there the
    eyes are above it (`above_centre_mm`), and the camera is another (PUBLISHED_NORMALISATIONS).
    """

    width: int = bounded(0, 0, 1024)  # channels of the eye branch's first stage (0: no eye branch)
    blocks: tuple[int, ...] = (1, 1, 1)  # residual blocks per stage of the eye branch (stride 1 stem)
    pixels: tuple[int, int] = (24, 16)  # patch width, height in pixels
    window_mm: tuple[float, float] = (36.0, 24.0)  # patch width, height in millimetres at the eye
    half_spacing_mm: float = bounded(31.5, 0.0)  # eye centre to the face centre, sideways
    above_centre_mm: float = 0.0  # eye centre above the face centre
    forward_mm: float = bounded(13.0, 0.0)  # eye centre in front of the face centre (the opening, not the eyeball's centre)
    normalisation: NormalisationConfig = NormalisationConfig()  # the images' normalised camera

    def __post_init__(self) -> None:
        if self.width and (not self.blocks or min(self.blocks) < 1):
            raise ConfigError(f"eyes.blocks {self.blocks}: at least one stage, each with >= 1 block")
        if min(self.pixels) < 4 or min(self.window_mm) <= 0:
            raise ConfigError(f"eyes: pixels {self.pixels} must be >= 4 and window_mm {self.window_mm} > 0")


@dataclass(frozen=True)
class EstimatorNetConfig:
    """The reference gaze estimator's network (gazegen/metrics/estimator.py): a compact ResNet.

    Images of any size are resized (antialiased) to `resolution`; a 3x3 stride-2 stem of `width`
    channels (and a 3x3 stride-2 max-pool with `stem_pool`, as ResNet's), then one stage per entry
    of `blocks` (stage i: width * 2^i channels, stride 2 from the second stage on), global average
    pooling, a linear layer to the head pose. Gaze: a linear layer on those face features and,
    with `eyes.width`, on the features of the eye branch's two patches (`EyePatchConfig`).
    """

    resolution: int = bounded(96, 16, 1024)  # input side in pixels
    width: int = bounded(32, 4, 1024)  # channels of the stem and of the first stage
    stem_pool: bool = False  # max-pool after the stem: the stages cost at 2S what they cost at S without it
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # residual blocks per stage (ResNet-18's layout at width 32)
    norm_groups: int = bounded(8, 1, 64)  # GroupNorm groups (independent of the batch size); divides the widths
    eyes: EyePatchConfig = EyePatchConfig()  # the eye branch (off: eyes.width = 0)

    def __post_init__(self) -> None:
        if not self.blocks or min(self.blocks) < 1:
            raise ConfigError(f"blocks {self.blocks}: at least one stage, each with >= 1 block")
        for name, width in (("width", self.width), ("eyes.width", self.eyes.width)):
            if width % self.norm_groups:
                raise ConfigError(f"{name} {width} is not a multiple of norm_groups {self.norm_groups}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EstimatorNetConfig:
        """An EstimatorNetConfig from plain data (an estimator checkpoint's config.json), validated."""
        return _build(cls, data, "")


@dataclass(frozen=True)
class EstimatorConfig:
    """`gazegen estimator train` (evaluation/estimator.py): the judge of redirection accuracy.

    Loss = L1(gaze) + head_weight * L1(head pose), pitch/yaw radians in the image's normalised
    camera; AdamW with linear warm-up then cosine decay to zero at `steps`.
    """

    net: EstimatorNetConfig = EstimatorNetConfig()
    steps: int = bounded(3000, 1)  # optimiser steps
    batch_size: int = bounded(32, 1, 4096)
    lr: float = bounded(1e-3, 0.0, 1.0)  # peak learning rate
    weight_decay: float = bounded(1e-4, 0.0, 1.0)
    warmup_steps: int = bounded(100, 0)  # linear warm-up from 0 to `lr`
    head_weight: float = bounded(1.0, 0.0)  # weight of the head-pose term
    flip: bool = True  # random horizontal flips with both yaws negated (valid: the normalised camera is centred)
    shuffle_buffer: int = bounded(2048, 0)  # rows shuffled through a buffer of this size (0: file order)
    workers: int = bounded(0, 0, 64)  # DataLoader worker processes
    seed: int = bounded(0, 0)
    log_every: int = bounded(100, 1)  # steps between progress lines
    split: str = "train"  # store split trained on (train_test_split.json); Parquet shards have none
    eval_split: str = "test"  # store split evaluated after training
    eval_images: int = bounded(0, 0)  # images evaluated after training (0: all)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvaluateConfig:
    """`gazegen evaluate` (evaluation/evaluate.py): GazeNeRF's protocol, as the paper's supplement follows it.

    Per test subject, in file order: the input group is the first `group_size` images, the target
    group the next `group_size` (fewer when the subject has under 2 * group_size images: half each).
    Input i is redirected to the gaze and camera of target perm[i], perm a permutation of the target
    group drawn once from `seed` (GazeNeRF uses one fixed list for every subject).
    """

    split: str = "test"  # store split whose subjects are evaluated
    group_size: int = bounded(100, 1)  # images per input group and per target group (GazeNeRF: 100 + 100)
    max_pairs: int = bounded(0, 0)  # pairs per subject (0: one per input image)
    max_subjects: int = bounded(0, 0)  # subjects evaluated (0: all of the split)
    seed: int = bounded(0, 0)  # draws the input -> target permutation
    finetune: bool = False  # personalised fine-tuning on each subject's input group first (paper: yes)
    finetune_epochs: int = bounded(10, 1)  # epochs of that fine-tuning (paper: 10)
    background: str = "white"  # outside the target's face mask, for image metrics: white (GazeNeRF), black, keep
    batch_size: int = bounded(1, 1, 1024)  # pairs per forward pass; ms/img = batch time / batch size
    warmup: int = bounded(1, 0)  # untimed forward passes before the first timed one
    baselines: bool = True  # also score copy-the-source, a perfect render at the neural side and the ground truth (the floor)
    probes: bool = True  # with an estimator: the gaze sweep and the swap test (evaluation/probes.py)
    lpips: bool = True  # False: LPIPS is not loaded (reported n/a)
    fid: bool = True  # False: FID is not loaded (reported n/a)
    psnr_cap_db: float = bounded(100.0, 1.0)  # PSNR of identical images (inf) is reported as this, and counted
    sheet_pairs: int = bounded(8, 0, 64)  # pairs drawn on sheet.png

    def __post_init__(self) -> None:
        if self.background not in ("white", "black", "keep"):
            raise ConfigError(f"background {self.background!r}: expected 'white', 'black' or 'keep'")
