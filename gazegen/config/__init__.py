"""Typed, frozen configs loaded from TOML presets under ``configs/`` with ``--set key=value`` overrides.

A config is a frozen dataclass; nested tables are nested dataclasses. Each field says what it
means in a comment; bounded fields carry their range in ``bounded(...)`` metadata, checked at
load time. Loading rejects unknown keys, wrong types and values out of range with a message
that names the file and the dotted key.

Where each concept lives (everything is re-exported here: ``from gazegen.config import X``):

- ``loader``: ConfigError, load_config (TOML + ``--set a.b=v`` overrides), with_overrides (the same
  overrides on a config already built), to_dict, bounded,
  CONFIG_DIR (the repository's ``configs/``), resolve_preset (a preset named in a config) and
  find_config (a config named on the command line).
- ``camera``: the normalised camera (NormalisationConfig, PUBLISHED_NORMALISATIONS), procedural
  heads (RigConfig, GazeRangeConfig, SynthHeadsConfig), face cropping (CropConfig), face detection
  (DetectorConfig) and the assumed camera of a photo (PhotoCameraConfig).
- ``model``: LiveGaze's network (ModelConfig) and its neural renderer (RenderConfig).
- ``training``: `gazegen train` / `gazegen finetune` (TrainConfig, LossConfig, OptimConfig,
  TrainDataConfig, DepthPriorConfig, FinetuneConfig, DEPTH_PRIOR_KINDS, LR_DECAYS).
- ``evaluation``: the reference gaze estimator (EstimatorNetConfig, EyePatchConfig, EstimatorConfig) and
  `gazegen evaluate` (EvaluateConfig).
- ``grid``: the synthesis grid (GridSpec, GridAxes, AxisRange, PitchRange, YawRange): ranges parsed
  and checked at load, the one place degrees become radians.
- ``synth``: `gazegen synthesize` (SynthConfig, load_synth_config).
- ``export``: `gazegen export` (ExportConfig, EXPORT_FORMATS).
"""

from __future__ import annotations

from gazegen.config.camera import (PUBLISHED_NORMALISATIONS, CropConfig, DetectorConfig, GazeRangeConfig, NormalisationConfig,
                                   PhotoCameraConfig, RigConfig, SynthHeadsConfig)
from gazegen.config.evaluation import EstimatorConfig, EstimatorNetConfig, EvaluateConfig, EyePatchConfig
from gazegen.config.export import EXPORT_FORMATS, ExportConfig
from gazegen.config.loader import (CONFIG_DIR, ConfigError, bounded, find_config, load_config, resolve_preset, to_dict,
                                   with_overrides)
from gazegen.config.grid import AxisRange, GridAxes, GridSpec, PitchRange, YawRange
from gazegen.config.model import ModelConfig, RenderConfig
from gazegen.config.synth import SynthConfig, load_synth_config
from gazegen.config.training import (DEPTH_PRIOR_KINDS, LR_DECAYS, DepthPriorConfig, FinetuneConfig, LossConfig, OptimConfig,
                                     TrainConfig, TrainDataConfig)

__all__ = [
    # loader
    "CONFIG_DIR",
    "ConfigError",
    "bounded",
    "find_config",
    "load_config",
    "resolve_preset",
    "to_dict",
    "with_overrides",
    # camera
    "PUBLISHED_NORMALISATIONS",
    "CropConfig",
    "DetectorConfig",
    "PhotoCameraConfig",
    "GazeRangeConfig",
    "NormalisationConfig",
    "RigConfig",
    "SynthHeadsConfig",
    # model
    "ModelConfig",
    "RenderConfig",
    # training
    "DEPTH_PRIOR_KINDS",
    "LR_DECAYS",
    "DepthPriorConfig",
    "FinetuneConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainDataConfig",
    # evaluation
    "EstimatorConfig",
    "EstimatorNetConfig",
    "EvaluateConfig",
    "EyePatchConfig",
    # grid
    "AxisRange",
    "GridAxes",
    "GridSpec",
    "PitchRange",
    "YawRange",
    # synth
    "SynthConfig",
    "load_synth_config",
    # export
    "EXPORT_FORMATS",
    "ExportConfig",
]
