"""Typed, frozen configs loaded from TOML presets under ``configs/`` with ``--set key=value`` overrides.

A config is a frozen dataclass; nested tables are nested dataclasses. Each field says what it
means in a comment; bounded fields carry their range in ``bounded(...)`` metadata, checked at
load time. Loading rejects unknown keys, wrong types and values out of range with a message
that names the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the source and the key."""


def bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A dataclass field whose value must lie in [lo, hi] (either bound may be None)."""
    return field(default=default, metadata={"range": (lo, hi)})


# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class NormalisationConfig:
    """ETH-XGaze-style normalised camera (Zhang et al.) plus the renderer's world scale."""

    focal: float = bounded(1600.0, 1.0)  # focal length in pixels at `resolution`
    distance_mm: float = bounded(950.0, 1.0)  # camera to face-centre distance, millimetres
    resolution: int = bounded(512, 8, 4096)  # image side in pixels
    radius: float = bounded(2.7, 0.1)  # the same distance in renderer world units (EG3D: 2.7)

    def at_resolution(self, resolution: int) -> NormalisationConfig:
        """The same camera (same field of view) for images resized to ``resolution`` pixels."""
        return dataclasses.replace(self, focal=self.focal * resolution / self.resolution, resolution=resolution)


# The normalisations of published stores. ETH-XGaze (Zhang et al. 2020, official patches):
# focal 960 with 600 mm at 224 px and 300 mm at 448 px. LiveGaze's 512 px store (supplement,
# section 6): focal 1600, 950 mm. GazeNeRF's 512 px files: focal 1600, 680 mm (its
# pre_processing/data_process.py).
PUBLISHED_NORMALISATIONS: dict[str, NormalisationConfig] = {
    "xgaze224": NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=224),
    "xgaze448": NormalisationConfig(focal=960.0, distance_mm=300.0, resolution=448),
    "livegaze512": NormalisationConfig(focal=1600.0, distance_mm=950.0, resolution=512),
    "gazenerf512": NormalisationConfig(focal=1600.0, distance_mm=680.0, resolution=512),
}


# --------------------------------------------------------------------------- procedural heads


@dataclass(frozen=True)
class RigConfig:
    """The camera rig around the head (ETH-XGaze has 18 cameras)."""

    views: int = bounded(18, 1, 64)  # number of cameras; camera 0 is frontal
    max_yaw_deg: float = bounded(60.0, 0.0, 85.0)  # widest horizontal camera angle
    max_pitch_deg: float = bounded(30.0, 0.0, 80.0)  # widest vertical camera angle


@dataclass(frozen=True)
class GazeRangeConfig:
    """Range of gaze directions in the head frame (ETH-XGaze: about +-50 yaw, +-40 pitch)."""

    max_yaw_deg: float = bounded(50.0, 0.0, 80.0)
    max_pitch_deg: float = bounded(40.0, 0.0, 70.0)
    converge: bool = True  # both eyes look at one target point; False: parallel eye axes
    target_mm: tuple[float, float] = (400.0, 1200.0)  # distance range of the gaze target


@dataclass(frozen=True)
class SynthHeadsConfig:
    """`gazegen data synth-heads`: procedural multi-view gaze heads in the training-store layout."""

    subjects: int = bounded(4, 1, 100000)  # identities, one h5 file each
    resolution: int = bounded(128, 16, 2048)  # image side in pixels
    gazes: int = bounded(20, 1, 100000)  # frames per subject, one gaze target each
    test_subjects: int = bounded(1, 0, 100000)  # the last subjects go to the test split
    seed: int = bounded(0, 0)  # subject i uses seed (seed, i): files do not depend on `subjects`
    normalisation: NormalisationConfig = NormalisationConfig()  # defaults: LiveGaze's 512 px store
    rig: RigConfig = RigConfig()
    gaze: GazeRangeConfig = GazeRangeConfig()

    @property
    def camera(self) -> NormalisationConfig:
        """The normalised camera of the written images: `normalisation` at `resolution`."""
        return self.normalisation.at_resolution(self.resolution)


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderConfig:
    """EG3D-style volume rendering of a triplane (paper section 3.1; EG3D's FFHQ settings by default)."""

    neural_resolution: int = bounded(128, 4, 1024)  # side of the low-resolution feature image
    samples_coarse: int = bounded(48, 1, 512)  # stratified samples per ray
    samples_fine: int = bounded(48, 0, 512)  # importance samples per ray (0: coarse only)
    ray_start: float = bounded(2.25, 0.0)  # near bound along the ray, world units
    ray_end: float = bounded(3.3, 0.0)  # far bound along the ray, world units
    box_warp: float = bounded(1.0, 1e-3)  # side of the cube the triplane spans, world units
    plane_resolution: int = bounded(256, 4, 1024)  # side of each plane
    plane_channels: int = bounded(32, 1, 256)  # channels of each plane
    decoder_hidden: int = bounded(64, 1, 1024)  # width of the decoder MLP
    feature_channels: int = bounded(32, 3, 256)  # decoder output features; the first 3 are RGB
    density_bias: float = -1.0  # sigma = softplus(raw + density_bias) (EG3D: -1)
    white_background: bool = False  # composite onto white instead of black
    chunk_rays: int = bounded(65536, 1)  # rays decoded at once, bounds memory at large sizes


# --------------------------------------------------------------------------- face cropping


@dataclass(frozen=True)
class CropConfig:
    """Detect, align and crop faces in photographs like the training data (gazegen/data/faces.py).

    The target framing is not a literal: it is where a frontal face at `normalisation` lands.
    The eyes are `ipd_mm` apart and `eye_above_centre_mm` above the ETH-XGaze face centre (the
    midpoint of the eye centre and the nose-base centre, which the normalised camera looks at);
    both defaults are measured on ETH-XGaze's generic 3D face model (face_model.txt: eye-corner
    centres 63.5 mm apart, 23.7 mm above that face centre; 63 mm is also the adult mean IPD).
    """

    resolution: int = bounded(512, 16, 4096)  # side of the output crop, pixels
    normalisation: NormalisationConfig = NormalisationConfig()  # framing to match (LiveGaze 512 px store)
    ipd_mm: float = bounded(63.0, 40.0, 80.0)  # distance between the eye centres, millimetres
    eye_above_centre_mm: float = bounded(23.7, 0.0, 60.0)  # eye line above the face centre, mm
    min_face_px: int = bounded(48, 8)  # faces narrower than this (input pixels) are rejected
    # --crop auto: an input counts as a normalised crop when its eye distance and eye midpoint are
    # within this fraction of the target eye distance of the targets
    auto_tolerance: float = bounded(0.2, 0.0, 1.0)
    auto_max_roll_deg: float = bounded(8.0, 0.0, 45.0)  # --crop auto: largest eye-line tilt of a crop

    @property
    def eye_distance_fraction(self) -> float:
        """Target distance between the eye centres as a fraction of the side (LiveGaze: ~0.21)."""
        n = self.normalisation
        return n.focal / n.resolution * self.ipd_mm / n.distance_mm

    @property
    def eye_line_fraction(self) -> float:
        """Target height of the eye line as a fraction of the side from the top (LiveGaze: ~0.42)."""
        n = self.normalisation
        return 0.5 - n.focal / n.resolution * self.eye_above_centre_mm / n.distance_mm


# --------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class LossConfig:
    """The training objective (paper eq. 6-11; weights from section 4.1), train/losses.py.

    L = w_R * (w_face * L1_face + w_eyes * L1_eyes) + w_D * L1_depth + w_P * L_P, each L1 a mean
    over its mask's pixels; L_P the L1 distance of VGG16 features at `vgg_layers` (paper eq. 11).
    """

    reconstruction_weight: float = bounded(1.0, 0.0)  # lambda_R, eq. 6
    depth_weight: float = bounded(1.0, 0.0)  # lambda_D, eq. 6
    perceptual_weight: float = bounded(0.8, 0.0)  # lambda_P, eq. 6
    face_weight: float = bounded(1.0, 0.0)  # lambda_Rf, eq. 7 (face-mask L1)
    eye_weight: float = bounded(2.0, 0.0)  # lambda_Re, eq. 7 (eye-mask L1); the paper needs > face_weight
    perceptual: bool = True  # False: no L_P and VGG16 is never loaded (CPU tests, runs without the weights)
    # VGG16 ReLU outputs compared by L_P (the paper does not name them; these are Johnson et al.'s [19]
    # relu1_2..relu4_3). Known names: relu{1,2}_{1,2}, relu{3,4,5}_{1,2,3}.
    vgg_layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig:
    """LiveGaze's network (paper section 3.2, Fig. 2); the defaults are the `base` preset, Live3D's sizes.

    Image side S -> E_h and E_l features at S/2 = the triplane side (`render.plane_resolution`);
    E_tri's output channels are 3 * `render.plane_channels`. Live3D's layout (as reproduced by
    Live3DPortrait) is described in gazegen/models/*.py and mapped in gazegen/checkpoint.py.
    """

    image_resolution: int = bounded(512, 16, 2048)  # input side; a multiple of 16 (E_l reaches stride 16)
    output_resolution: int = bounded(512, 16, 4096)  # output side after super-resolution
    coord_channels: bool = True  # Live3D quirk: append raw (row, col) pixel indices as 2 input channels
    eg3d_plane_axes: bool = True  # EG3D quirk: read plane 2 as ZX (needed by Live3D / EG3D weights)
    # E_h: high-frequency appearance features F_h
    high_hidden: int = bounded(64, 1, 4096)  # channels of its first (7x7, stride 2) conv
    high_channels: int = bounded(96, 1, 4096)  # channels of F_h, also the width C of the gaze tokens
    high_depth: int = bounded(4, 1, 64)  # 3x3 convs after the first
    # E_l: low-frequency geometry features F_geo
    backbone_channels: tuple[int, int] = (64, 128)  # ResNet widths of layer1 and layer2 (ResNet-34)
    backbone_blocks: tuple[int, int] = (3, 4)  # basic blocks in layer1 and layer2 (ResNet-34)
    aspp_channels: int = bounded(256, 1, 4096)  # DeepLabV3 ASPP width
    aspp_rates: tuple[int, int, int] = (12, 24, 36)  # ASPP dilation rates (DeepLabV3)
    aspp_dropout: float = bounded(0.5, 0.0, 0.99)  # dropout after the ASPP projection, training only (DeepLabV3)
    geo_embed_dim: int = bounded(1024, 4, 8192)  # token width of E_l's transformer; a multiple of 4 and of geo_heads
    geo_depth: int = bounded(5, 0, 64)  # SegFormer blocks in E_l
    geo_heads: int = bounded(4, 1, 64)  # attention heads in E_l
    geo_hidden: int = bounded(128, 1, 4096)  # channels of E_l's upsampling convs
    geo_channels: int = bounded(96, 1, 4096)  # channels of F_geo
    # E_g and the gaze cross-attention
    gaze_tokens: int = bounded(8, 1, 256)  # K: gaze tokens (keys and values of the cross-attention)
    gaze_frequencies: int = bounded(6, 0, 16)  # L: Fourier frequencies pi 2^l, l < L, per angle
    gaze_hidden: int = bounded(256, 1, 8192)  # width of E_g's MLP
    fusion_heads: int = bounded(4, 1, 64)  # cross-attention heads; divides high_channels
    # E_tri: triplane decoder
    tri_channels: tuple[int, int] = (256, 128)  # widths of E_tri's conv stacks
    tri_embed_dim: int = bounded(1024, 4, 8192)  # token width of E_tri's transformer; a multiple of 4 and of tri_heads
    tri_depth: int = bounded(1, 0, 64)  # SegFormer blocks in E_tri
    tri_heads: int = bounded(2, 1, 64)  # attention heads in E_tri
    tri_sr_ratio: int = bounded(2, 1, 16)  # spatial reduction of keys/values in E_tri's attention
    mlp_ratio: float = bounded(2.0, 0.25, 16.0)  # hidden width / width of every Mix-FFN
    # super-resolution
    sr_channels: tuple[int, ...] = (256, 128)  # one x2 block per entry: output = neural render x 2^n
    style_dim: int = bounded(512, 1, 4096)  # width of the learned constant style (EG3D's w)
    sr_antialias: bool = True  # antialiased resize when the neural render is not output / 2^n (EG3D)
    render: RenderConfig = RenderConfig()  # neural rendering: planes, samples, decoder MLP

    def __post_init__(self) -> None:
        half, blocks = self.image_resolution // 2, len(self.sr_channels)
        geo, tri = self.geo_embed_dim, self.tri_embed_dim
        sizes = (*self.backbone_channels, *self.backbone_blocks, *self.aspp_rates, *self.tri_channels, *self.sr_channels)
        problems = [
            (self.image_resolution % 16 != 0, f"image_resolution {self.image_resolution} is not a multiple of 16"),
            (
                self.render.plane_resolution != half,
                f"render.plane_resolution {self.render.plane_resolution} must be image_resolution / 2 = {half}",
            ),
            (blocks == 0, "sr_channels is empty: at least one x2 block"),
            (self.output_resolution % 2**blocks != 0, f"output_resolution: not divisible by 2^{blocks} (sr_channels)"),
            (geo % 4 or geo % self.geo_heads, f"geo_embed_dim {geo} must be a multiple of 4 and of geo_heads"),
            (tri % 4 or tri % self.tri_heads, f"tri_embed_dim {tri} must be a multiple of 4 and of tri_heads"),
            (self.high_channels % self.fusion_heads != 0, "high_channels must be a multiple of fusion_heads"),
            (min(sizes) < 1, "backbone_channels, backbone_blocks, aspp_rates, tri_channels, sr_channels must be >= 1"),
        ]
        for bad, message in problems:
            if bad:
                raise ConfigError(message)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A ModelConfig from plain data (``to_dict``'s output, e.g. a checkpoint's config.json), validated."""
        return _build(cls, data, "")


# --------------------------------------------------------------------------- reference gaze estimator


@dataclass(frozen=True)
class EstimatorNetConfig:
    """The reference gaze estimator's network (gazegen/models/estimator.py): a compact ResNet.

    Images of any size are resized (antialiased) to `resolution`; a 3x3 stride-2 stem of `width`
    channels (and a 3x3 stride-2 max-pool with `stem_pool`, as ResNet's), then one stage per entry
    of `blocks` (stage i: width * 2^i channels, stride 2 from the second stage on), global average
    pooling, and a linear head to gaze and head pose.
    """

    resolution: int = bounded(96, 16, 1024)  # input side in pixels
    width: int = bounded(32, 4, 1024)  # channels of the stem and of the first stage
    stem_pool: bool = False  # max-pool after the stem: the stages cost at 2S what they cost at S without it
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # residual blocks per stage (ResNet-18's layout at width 32)
    norm_groups: int = bounded(8, 1, 64)  # GroupNorm groups (independent of the batch size); divides width

    def __post_init__(self) -> None:
        if not self.blocks or min(self.blocks) < 1:
            raise ConfigError(f"blocks {self.blocks}: at least one stage, each with >= 1 block")
        if self.width % self.norm_groups:
            raise ConfigError(f"width {self.width} is not a multiple of norm_groups {self.norm_groups}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EstimatorNetConfig:
        """An EstimatorNetConfig from plain data (an estimator checkpoint's config.json), validated."""
        return _build(cls, data, "")


@dataclass(frozen=True)
class EstimatorConfig:
    """`gazegen estimator train` (train/estimator.py): the judge of redirection accuracy.

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
    """`gazegen evaluate` (train/evaluate.py): GazeNeRF's protocol, as the paper's supplement follows it.

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
    baselines: bool = True  # also score copy-the-source and the ground-truth target (the estimator's floor)
    lpips: bool = True  # False: LPIPS is not loaded (reported n/a)
    fid: bool = True  # False: FID is not loaded (reported n/a)
    psnr_cap_db: float = bounded(100.0, 1.0)  # PSNR of identical images (inf) is reported as this, and counted
    sheet_pairs: int = bounded(8, 0, 64)  # pairs drawn on sheet.png

    def __post_init__(self) -> None:
        if self.background not in ("white", "black", "keep"):
            raise ConfigError(f"background {self.background!r}: expected 'white', 'black' or 'keep'")


# --------------------------------------------------------------------------- synthesis


@dataclass(frozen=True)
class SynthConfig:
    """`gazegen synthesize` (pipelines/synthesis.py): grid, inputs, labels and execution of the Ray pipeline.

    Grid ranges are `start:stop:count` in degrees, both ends included (pipelines/grid.py).
    `normalisation` is the normalised camera of the model's training store: rendered cameras come
    from it (`radius`, focal / resolution), depth is written in its millimetres (distance_mm /
    radius per world unit), photos are cropped to its framing and h5 patches taken with another
    camera are re-zoomed to it. Unset: the checkpoint's `metadata.normalisation` when the trainer
    recorded one, else LiveGaze's 512 px store (PUBLISHED_NORMALISATIONS["livegaze512"]); either
    way it is taken at the model's output resolution (`at_resolution`: the same camera) and
    recorded in the run manifest. Fields under "execution" do not change the rows and may differ
    between a run and its restart; all others are compared on restart.
    """

    grid: str = "pitch,yaw,view"  # swept axes: a comma list of pitch, yaw, view
    pitch: str = "-30:30:5"  # gaze pitch in the head frame, degrees
    yaw: str = "-40:40:5"  # gaze yaw in the head frame, degrees
    view_pitch: str = "0:0:1"  # camera offset added to the source's head pitch, degrees
    view_yaw: str = "-30:30:5"  # camera offset added to the source's head yaw, degrees
    sample: int = bounded(0, 0)  # 0: the full grid; N: N random (gaze, view) pairs per source
    seed: int = bounded(0, 0)  # seeds the --sample draws; written in every row
    crop: str = "auto"  # photos without labels: auto | always | never (gazegen/data/faces.py crop_faces)
    image_column: str = "image"  # Parquet inputs: image bytes or a {bytes, path} struct (Hugging Face Image)
    normalisation: NormalisationConfig | None = None  # see above; None: the checkpoint's, else livegaze512
    depth_min_alpha: float = bounded(0.5, 0.0, 1.0)  # depth is written 0 (no surface) where alpha < this
    depth_full_resolution: bool = True  # depth and alpha upsampled (bilinear) to the image; False: neural size
    png_compression: int = bounded(1, 0, 9)  # zlib level of the PNGs (1: fast; the bytes change, not the pixels)
    rows_per_shard: int = bounded(1000, 1)  # a shard holds max(1, rows_per_shard // rows per source) sources
    # execution
    batch_size: int = bounded(16, 1, 4096)  # gazes per redirect and views per render call
    num_gpus: int = bounded(-1, -1)  # GPU actors, one per GPU; -1: every GPU of the cluster; 0: CPU actors
    cpu_actors: int = bounded(1, 1)  # render actors when there is no GPU (each reserves 1 CPU)
    cpu_threads: int = bounded(0, 0)  # torch threads per CPU actor; 0: the node's cores / cpu_actors
    max_restarts: int = bounded(3, 0)  # times a dead render actor is restarted (Ray's default: forever)
    max_task_retries: int = bounded(3, 0)  # times a batch whose worker died is retried (Ray's default: forever)
    max_lost_sources: int = bounded(10, 0)  # batches that may fail for good (their sources become error rows)

    def __post_init__(self) -> None:
        if self.crop not in ("auto", "always", "never"):
            raise ConfigError(f"crop {self.crop!r}: expected 'auto', 'always' or 'never'")


# --------------------------------------------------------------------------- training

DEPTH_PRIOR_KINDS = ("dataset", "teacher", "files")
LR_DECAYS = ("constant", "cosine")


def resolve_preset(path: str | Path) -> Path:
    """A preset named in a config: absolute as given; relative to configs/ when there; else relative to the working folder."""
    path = Path(path)
    if path.is_absolute() or not (CONFIG_DIR / path).is_file():
        return path
    return CONFIG_DIR / path


@dataclass(frozen=True)
class TrainDataConfig:
    """Which images train and validate, and how they are loaded (train/data.py).

    Every image of a training subject is the target I_gt once per epoch; its source I_s is drawn
    from the same subject with another frame (gaze) and another camera; I_f is the frontal camera
    (head pose nearest (0, 0)) of I_gt's frame.
    """

    val_subjects: int = bounded(1, 0)  # subjects of the store's train split held out for validation (whole subjects)
    frames_per_subject: int = bounded(0, 0)  # frames used per subject, evenly spaced (0: all; GazeNeRF/LiveGaze: 10 x 18 cameras)
    split_seed: int = bounded(0, 0)  # draws the validation subjects
    workers: int = bounded(2, 0, 64)  # DataLoader worker processes (0: load in the training process)
    prefetch: int = bounded(2, 1, 64)  # batches loaded ahead by each worker
    val_samples: int = bounded(16, 1)  # fixed validation triplets scored at every validation


@dataclass(frozen=True)
class DepthPriorConfig:
    """D_gt of the depth loss L_D (paper eq. 5, 10): I_f's identity and gaze seen from I_gt's camera (train/depth_prior.py).

    ``dataset``: the store's own depth of I_gt (exact for procedural heads: same frame, same camera).
    ``teacher``: a frozen network renders I_f at I_gt's camera, once per target image, cached in the run
    folder. ``files``: precomputed ``<subject>.npy`` (N, H, W) float32 millimetres, rows as in the subject's
    h5 file, 0 = no depth. Depth is converted to renderer world units with the subject's normalisation.
    """

    kind: str = "dataset"  # one of DEPTH_PRIOR_KINDS
    teacher: str = "live3d"  # teacher: "live3d" (the registered encoder_render.pt), a Live3D .pt file or a gazegen checkpoint folder
    teacher_model: str = "model/base.toml"  # teacher: model preset a Live3D teacher is built with (a gazegen checkpoint has its own)
    teacher_batch: int = bounded(18, 1, 4096)  # teacher: cameras rendered per call (one frame of the ETH-XGaze rig)
    teacher_min_alpha: float = bounded(0.0, 0.0, 1.0)  # teacher: pixels of lower opacity are invalid (0: all valid, as the paper)
    files: str = ""  # files: folder holding <subject>.npy

    def __post_init__(self) -> None:
        if self.kind not in DEPTH_PRIOR_KINDS:
            raise ConfigError(f"depth_prior.kind {self.kind!r}: expected one of {', '.join(DEPTH_PRIOR_KINDS)}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW (paper 4.1) with one parameter group per part of the network, and the schedule.

    Parts follow Live3D's checkpoint: "encoding" = E_h, E_l, E_tri; "rendering" = the decoder MLP and
    super-resolution; the gaze modules (E_g, cross-attention) are LiveGaze's own, absent from Live3D,
    so they get their own group (the paper trains them with the encoding part's rate).
    """

    lr_encoder: float = bounded(1e-5, 0.0, 1.0)  # encoding part (paper: 1e-5)
    lr_renderer: float = bounded(1e-5, 0.0, 1.0)  # rendering part (paper: 1e-5)
    lr_gaze: float = bounded(1e-5, 0.0, 1.0)  # gaze encoder and cross-attention (paper: encoding part's 1e-5)
    weight_decay: float = bounded(0.01, 0.0, 1.0)  # AdamW's decoupled decay (paper: not stated; torch's default)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW (torch's default)
    eps: float = bounded(1e-8, 0.0, 1.0)
    grad_clip: float = bounded(1.0, 0.0)  # largest global gradient norm (0: no clipping; the paper states none)
    warmup_steps: int = bounded(0, 0)  # linear warm-up from 0 (paper: none stated)
    decay: str = "constant"  # after warm-up: "constant" (paper: none stated) or "cosine" to min_lr_ratio at the last step
    min_lr_ratio: float = bounded(0.0, 0.0, 1.0)  # cosine: final rate / initial rate

    def __post_init__(self) -> None:
        if self.decay not in LR_DECAYS:
            raise ConfigError(f"optim.decay {self.decay!r}: expected one of {', '.join(LR_DECAYS)}")


@dataclass(frozen=True)
class TrainConfig:
    """`gazegen train` (train/trainer.py): LiveGaze on triplets of a training store (paper 3.4, 4.1).

    Steps per epoch = images of the training subjects // batch_size; the schedule spans `max_steps`
    or, when 0, `epochs` epochs. `--max-steps` on the command line only stops a run early: it never
    changes the schedule, so a run stopped and resumed is the run that was not stopped.
    """

    model: str = "model/base.toml"  # model preset; relative paths are looked up in configs/, then the working folder
    model_overrides: tuple[str, ...] = ()  # "key=value" applied to the model preset (as --set)
    init: str = ""  # "": random (seeded); "live3d": the registered Live3D weights; or a Live3D .pt / gazegen checkpoint folder
    seed: int = bounded(0, 0)  # initialisation, ray jitter, dropout, triplet draws
    batch_size: int = bounded(4, 1, 65536)  # triplets per optimiser step, over all workers (paper: 4)
    epochs: int = bounded(50, 1)  # paper: 50
    max_steps: int = bounded(0, 0)  # 0: epochs x steps per epoch
    bf16: bool = True  # bf16 autocast on CUDA (CPU runs in fp32)
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:N"
    threads: int = bounded(0, 0, 1024)  # torch threads of the training process (0: torch's default)
    log_every: int = bounded(10, 1)  # steps between training log records
    val_every: int = bounded(500, 0)  # steps between validations (0: only at the end)
    checkpoint_every: int = bounded(1000, 0)  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = bounded(3, 0)  # newest step checkpoints kept (0: all)
    grid_samples: int = bounded(4, 1, 64)  # rows of the validation prediction grid PNG
    tensorboard: bool = True  # also write TensorBoard events (needs the `tensorboard` package)
    loss: LossConfig = LossConfig()  # the paper's objective
    optim: OptimConfig = OptimConfig()
    data: TrainDataConfig = TrainDataConfig()
    depth_prior: DepthPriorConfig = DepthPriorConfig()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A TrainConfig from plain data (``to_dict``'s output, e.g. a checkpoint's metadata), validated."""
        return _build(cls, data, "")

    def model_config(self) -> ModelConfig:
        """The model preset `model` with `model_overrides` applied."""
        return load_config(ModelConfig, resolve_preset(self.model), self.model_overrides)


@dataclass(frozen=True)
class FinetuneConfig:
    """`gazegen finetune` (train/finetune.py): personalised fine-tuning, GazeNeRF's protocol (supplement 6).

    A subject's images in file order: the input group is the first `group_size`, the target group the
    next `group_size` (half each when the subject has fewer than 2 x group_size), as `EvaluateConfig`.
    The model is fine-tuned on triplets of the input group for `epochs` epochs and scored on input ->
    target pairs; the optimiser, losses and depth prior are the training run's (or a TrainConfig given).
    """

    epochs: int = bounded(10, 1)  # paper: 10
    group_size: int = bounded(100, 1)  # images per input group and per target group (GazeNeRF: 100 + 100)
    val_samples: int = bounded(16, 1)  # input -> target pairs scored before and after


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; int -> float and list -> tuple are allowed."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        v = _coerce(value, hints[name], key)
        lo, hi = fields[name].metadata.get("range", (None, None))
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"{key}: {v!r} is out of range [{lo}, {hi}]")
        kwargs[name] = v
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    return key.strip().split("."), value


def _merge(base: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = base.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part} is not a table")
        base = node
    base[path[-1]] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Build ``cls`` from a TOML file (or its defaults) and ``key.sub=value`` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for item in overrides:
        keys, value = _parse_override(item)
        _merge(data, keys, value)
    try:
        return _build(cls, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain data (tuples become lists), for JSON manifests and checkpoints."""
    return dataclasses.asdict(config)
