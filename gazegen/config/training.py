"""`gazegen train` and `gazegen finetune`: the objective, optimiser, data, depth prior and run settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gazegen.config.loader import ConfigError, _build, bounded, load_config, resolve_preset
from gazegen.config.model import ModelConfig


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
    # not in the paper (0 = off): face-mask L1 of the raw neural rendering against the target shrunk to its side,
    # added to the face term: a direct gradient to the triplane that does not pass through the super-resolution
    raw_weight: float = bounded(0.0, 0.0)
    # not in the paper (0 = off): L1 of the rendered opacity against the depth prior's surface region, added to the
    # depth term: the silhouette, which the depth L1 alone (valid pixels only) never asks for
    alpha_weight: float = bounded(0.0, 0.0)
    # not in the paper: L1 of a model's predicted source depth (models with surface bands, gazegen/models/source_surface.py)
    # against the source's own depth prior, added to the depth term; the stand-in for E_geo's distillation
    source_depth_weight: float = bounded(1.0, 0.0)
    # not in the paper (0 = off): the mean density of the mean planes (with the batch's source planes: margin_sources)
    # at random points of their margin beyond the cube (train/losses.py empty_margin_loss), added to the total: space
    # no camera sees is empty
    margin_weight: float = bounded(0.0, 0.0)
    margin_points: int = bounded(4096, 1)  # points drawn per step for it
    margin_sources: bool = False  # read the batch's source planes there too, as the render does (False: mean planes alone)
    perceptual: bool = True  # False: no L_P and VGG16 is never loaded (CPU tests, runs without the weights)
    # VGG16 ReLU outputs compared by L_P (the paper does not name them; these are Johnson et al.'s [19]
    # relu1_2..relu4_3). Known names: relu{1,2}_{1,2}, relu{3,4,5}_{1,2,3}.
    vgg_layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


# --------------------------------------------------------------------------- training

DEPTH_PRIOR_KINDS = ("dataset", "teacher", "files")
STAGES = ("gaze", "reconstruction")
LR_DECAYS = ("constant", "cosine")


@dataclass(frozen=True)
class TrainDataConfig:
    """Which images train and validate, and how they are loaded (train/data.py).

    Every image of a training subject is the target I_gt once per epoch; its source I_s is drawn
    from the same subject with another frame (gaze) and another camera; I_f is the frontal camera
    (head pose nearest (0, 0)) of I_gt's frame. With ``same_camera`` > 0, that share of the triplets
    (drawn per item) take I_s from I_gt's own camera instead: redirection in place, where the source
    seen through its own camera is exact outside the eyes (the paper: always another camera).
    """

    val_subjects: int = bounded(1, 0)  # subjects of the store's train split held out for validation (whole subjects)
    frames_per_subject: int = bounded(0, 0)  # frames used per subject, evenly spaced (0: all; GazeNeRF/LiveGaze: 10 x 18 cameras)
    split_seed: int = bounded(0, 0)  # draws the validation subjects
    workers: int = bounded(2, 0, 64)  # DataLoader worker processes (0: load in the training process)
    prefetch: int = bounded(2, 1, 64)  # batches loaded ahead by each worker
    val_samples: int = bounded(16, 1)  # fixed validation triplets scored at every validation
    same_camera: float = bounded(0.0, 0.0, 1.0)  # stage "gaze": share of triplets whose I_s is I_gt's own camera (another frame)
    world_turn_deg: float = bounded(0.0, 0.0, 45.0)  # training triplets' worlds turned by up to this (train/world_turn.py): a head frame off as a photo's estimate is; 0: exact
    world_turn_share: float = bounded(1.0, 0.0, 1.0)  # the share of training triplets turned (drawn per item); the rest keep exact cameras


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
    lr_surface: float = bounded(1e-4, 0.0, 1.0)  # the source-surface branch (not in the paper; models/source_surface.py)
    lr_mean_planes: float = bounded(3e-2, 0.0, 1.0)  # the mean planes' free texels, fitted alone at 0.1-0.3 (not in the paper; models/mean_planes.py)
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

    Stage "reconstruction" trains the reconstruction prior (the project's Live3D): the source is
    another camera of the target's own frame (the same camera included: autoencoding), the gaze
    input is that frame's gaze, and the gaze modules are frozen at their start (the cross-attention's
    zero output projection: F_app = F_h), so the prior is image -> triplane -> render only. A
    "gaze" run starts from it with `init` = the prior's checkpoint and learns the gaze path.
    """

    stage: str = "gaze"  # "gaze": LiveGaze (source of another gaze and camera); "reconstruction": the prior (see below)
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

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage {self.stage!r}: expected one of {', '.join(STAGES)}")
        if not self.model.strip():
            raise ConfigError("model: empty; name a model preset (configs/model/*.toml, e.g. model/demo.toml)", "model")

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
