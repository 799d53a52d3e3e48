"""`gazegen synthesize`: the Ray synthesis pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gazegen.config.camera import DetectorConfig, NormalisationConfig
from gazegen.config.grid import GridAxes, GridSpec, PitchRange, YawRange
from gazegen.config.loader import COMMAND_LINE, ConfigError, bounded, load_with_options, option_name


# --------------------------------------------------------------------------- synthesis

PRECISIONS = ("fp32", "bf16")  # SynthConfig.precision


@dataclass(frozen=True)
class SynthConfig:
    """`gazegen synthesize` (pipelines/synthesis.py): grid, inputs, labels and execution of the Ray pipeline.

    Grid ranges are `start:stop:count` in degrees, both ends included, parsed and checked at load
    (gazegen/config/grid.py); ``grid_spec`` gathers the grid keys into one ``GridSpec``.
    `normalisation` is the normalised camera of the model's training store: rendered cameras come
    from it (`radius`, focal / resolution), depth is written in its millimetres (distance_mm /
    radius per world unit), photos are cropped to its framing and h5 patches taken with another
    camera are re-zoomed to it. Unset: the checkpoint's `metadata.normalisation` (training,
    fine-tuning and `save_pretrained(normalisation=...)` record it); a checkpoint without one is
    refused. Either way it is taken at the model's output resolution (`at_resolution`: the same
    camera) and recorded in the run manifest. Fields under "execution" do not change the rows and may differ
    between a run and its restart; all others are compared on restart.
    """

    grid: GridAxes = GridAxes(("pitch", "yaw", "view"))  # swept axes: a comma list of pitch, yaw, view
    pitch: PitchRange = PitchRange(-30.0, 30.0, 5)  # gaze pitch in the head frame, "start:stop:count" degrees
    yaw: YawRange = YawRange(-40.0, 40.0, 5)  # gaze yaw in the head frame, degrees
    view_pitch: PitchRange = PitchRange(0.0, 0.0, 1)  # camera offset added to the source's head pitch, degrees
    view_yaw: YawRange = YawRange(-30.0, 30.0, 5)  # camera offset added to the source's head yaw, degrees
    sample: int = bounded(0, 0)  # 0: the full grid; N: N random (gaze, view) pairs per source
    seed: int = bounded(0, 0)  # seeds the --sample draws; written in every row
    crop: str = "auto"  # photos without labels: auto | always | never (gazegen/data/faces.py crop_faces)
    faces: str = "largest"  # photos (files, Parquet rows): largest | all (each face of a photo with several its own source, id photo.jpg#face00 ...,
    # largest first; detected while listing on the driver: pipelines/sources.py)
    min_face_px: int = bounded(40, DetectorConfig().min_face_px)  # photos: narrower faces are error rows ("face too
    # small"); down to the smallest face the detector searches for (DetectorConfig.min_face_px)
    photo_focal_fraction: float = bounded(1.0, 0.1, 20.0)  # photos: the focal length assumed, times the longer side of the
    # upright image (its EXIF orientation applied); principal point at the centre (PhotoCameraConfig). Sets the head pose,
    # face_mat_norm and gaze_in_photo of photo rows
    image_column: str = "image"  # Parquet inputs: image bytes or a {bytes, path} struct (Hugging Face Image)
    normalisation: NormalisationConfig | None = None  # see above; None: the checkpoint's (refused if it has none)
    max_pixels: int = bounded(36_000_000, 1, 178_956_970)  # images declaring more pixels are error rows (checked from the header)
    depth_min_alpha: float = bounded(0.5, 0.0, 1.0)  # depth is written 0 (no surface) where alpha < this
    depth_full_resolution: bool = True  # depth and alpha upsampled (bilinear) to the image; False: neural size
    png_compression: int = bounded(1, 0, 9)  # zlib level of the PNGs (1: fast; the bytes change, not the pixels)
    rows_per_shard: int = bounded(1000, 1)  # a shard holds max(1, rows_per_shard // rows per source) sources
    precision: str = "fp32"  # the model's arithmetic: fp32 | bf16 (autocast: convolutions and matmuls in bfloat16;
    # camera math, the volume integral and the labels stay float32). bf16 pays where the convolutions dominate: the
    # base preset on a CPU with AMX, 2.1x (docs/design.md); the rows differ slightly (tests/test_synth_stages.py)
    # execution
    batch_size: int = bounded(16, 1, 4096)  # gazes per redirect and views per render call
    num_gpus: int = bounded(-1, -1)  # GPU actors, one per GPU; -1: every GPU of the cluster; 0: CPU actors
    cpu_actors: int = bounded(1, 1)  # render actors when there is no GPU (each reserves 1 CPU)
    cpu_threads: int = bounded(0, 0)  # torch threads per CPU actor; 0: (the cores - 1) / cpu_actors, at least 1
    max_restarts: int = bounded(40, 0)  # times a dead render actor is restarted (Ray's default: forever); 40 =
    # (max_task_retries + 1) x max_lost_sources: the pool outlives every source it may lose (pipelines/synthesis.py)
    max_task_retries: int = bounded(3, 0)  # times a source whose worker died is retried (Ray's default: forever)
    max_lost_sources: int = bounded(10, 0)  # sources that may fail for good (error rows "lost"); past it the run stops
    decode_timeout_s: float = bounded(60.0, 0.001)  # a source still decoding after this is an error row

    def __post_init__(self) -> None:
        if self.crop not in ("auto", "always", "never"):
            raise ConfigError(f"crop {self.crop!r}: expected 'auto', 'always' or 'never'")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: expected one of {', '.join(map(repr, PRECISIONS))}")
        if self.faces not in ("largest", "all"):
            raise ConfigError(f"faces {self.faces!r}: expected 'largest' or 'all'")
        if self.faces == "all" and self.crop == "never":
            raise ConfigError("faces 'all' detects faces; crop 'never' takes inputs as crops without detecting: use crop auto or always")

    @property
    def grid_spec(self) -> GridSpec:
        """The grid keys (axes, ranges, sample, seed) as one ``GridSpec``: what the render stage plans from."""
        return GridSpec(self.grid, self.pitch, self.yaw, self.view_pitch, self.view_yaw, self.sample, self.seed)


RANGE_AXES = {"pitch": "pitch", "yaw": "yaw", "view_pitch": "view", "view_yaw": "view"}  # range key -> the axis it sweeps


def _check_swept(cfg: SynthConfig, options: dict[str, Any], overrides: Sequence[str]) -> None:
    """A range typed on the command line for an axis the grid does not sweep would be ignored without a
    word: ConfigError naming the options and the grid. (A preset's ranges may cover axes its user drops.)"""
    typed = {k: f"{option_name(k)} {v}" for k, v in options.items() if k in RANGE_AXES}
    typed |= {k: f"--set {item}" for item in overrides if (k := item.partition("=")[0].strip()) in RANGE_AXES and k not in typed}
    unswept = {k: text for k, text in typed.items() if RANGE_AXES[k] not in cfg.grid}
    if unswept:
        grid = f"--grid {cfg.grid}" if "grid" in options else f"the grid {str(cfg.grid)!r}"
        axes = " or ".join(dict.fromkeys(RANGE_AXES[k] for k in unswept))
        this, axis, option = ("these options", "the axes", "the options") if len(unswept) > 1 else ("this option", "the axis", "the option")
        raise ConfigError(f"{COMMAND_LINE}: {', '.join(unswept.values())}: {grid} does not sweep {axes}, so {this} would be "
                          f"ignored: add {axis} to --grid or leave {option} out")  # fmt: skip


def load_synth_config(config: str | Path | None = None, overrides: Sequence[str] = (), **options: Any) -> SynthConfig:
    """The TOML preset (or the defaults) with ``--set`` overrides, then the options that are not None
    (the CLI's typed flags, checked like the file's keys: types and ranges; an error names the flag, and
    a range flag for an axis the grid does not sweep is refused)."""
    given = {k: v for k, v in options.items() if v is not None}
    cfg = load_with_options(SynthConfig, config, overrides, given)
    _check_swept(cfg, given, overrides)
    return cfg
