"""The driver-side plan of a synthesis run: everything decided before Ray starts.

``plan_run`` reads the checkpoint's config, hash and weights header, resolves the normalised
camera, lists the sorted sources and cuts them into shards (whole sources, ``rows_per_shard //
rows per source`` each); ``RunPlan.settings`` is what the manifest compares on restart;
``stage_settings`` are the decode and render stages' settings (pipelines/inputs.py,
pipelines/render_actor.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gazegen.checkpoint import CONFIG_FILE, CheckpointError, check_weights, checkpoint_hash, checkpoint_normalisation, read_model_config
from gazegen.config import GridSpec, ModelConfig, NormalisationConfig, SynthConfig
from gazegen.data.schema import FORMAT_VERSION
from gazegen.pipelines.grid import rows_per_source, turns_views
from gazegen.pipelines.inputs import DecodeSettings, photo_sources
from gazegen.pipelines.sources import SourceRecord, input_root, list_sources
from gazegen.pipelines.render_actor import RenderSettings
from gazegen.pipelines.shards import ShardSpec, plan_shards

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """Everything a run is, decided on the driver before Ray starts."""

    cfg: SynthConfig
    spec: GridSpec
    checkpoint: str  # absolute path
    checkpoint_hash: str
    model: ModelConfig
    normalisation: NormalisationConfig  # at the model's output resolution
    root: str  # the INPUTS root (source ids are relative to it; Parquet path cells must lie inside it)
    records: tuple[SourceRecord, ...]  # sorted by id
    rows_per_source: int
    shards: tuple[ShardSpec, ...]

    @property
    def sources_per_shard(self) -> int:
        return len(self.shards[0].inputs) if self.shards else 1

    def settings(self) -> dict[str, Any]:
        """Everything that changes the rows, compared key by key on restart."""
        grid = ("grid", "pitch", "yaw", "view_pitch", "view_yaw")  # recorded as written: "pitch,yaw,view", "-30:30:5"
        keep = ("sample", "seed", "crop", "faces", "image_column", "depth_min_alpha", "depth_full_resolution", "png_compression", "max_pixels")
        # recorded only when not their default, as before they existed: fp32, and photos' focal the longer side
        later = {k: getattr(self.cfg, k) for k, default in (("precision", "fp32"), ("photo_focal_fraction", 1.0))
                 if getattr(self.cfg, k) != default}
        return {k: str(getattr(self.cfg, k)) for k in grid} | {k: getattr(self.cfg, k) for k in keep} | later | {
            "normalisation": asdict(self.normalisation), "format_version": FORMAT_VERSION,
            "image_resolution": self.model.image_resolution, "output_resolution": self.model.output_resolution,
        }  # fmt: skip


def resolve_normalisation(cfg: SynthConfig, checkpoint: str | Path, model: ModelConfig) -> NormalisationConfig:
    """``cfg.normalisation``, else the checkpoint's ``metadata.normalisation``, at the output size;
    CheckpointError when neither is there (the framing and the depth scale would be guesses)."""
    norm = cfg.normalisation or checkpoint_normalisation(checkpoint)
    if norm is None:
        raise CheckpointError(
            f"{Path(checkpoint) / CONFIG_FILE}: records no normalisation (metadata.normalisation); set the training store's "
            "with --set normalisation.focal=F --set normalisation.distance_mm=D --set normalisation.resolution=S "
            "(e.g. LiveGaze's 512 px store: 1600, 950, 512; for a model trained on gazegen's procedural heads also "
            "--set normalisation.eye_above_centre_mm=0), or the [normalisation] table of a --config preset"
        )  # fmt: skip
    return norm.at_resolution(model.output_resolution)


def photo_views_warning(records: Sequence[SourceRecord], spec: GridSpec) -> str:
    """The warning of a run that turns the view of photo sources, "" for any other run.

    A photo's head pose is estimated (median error about 9-10 degrees: README, "Faces in photos"),
    and the model reads the source through the camera that pose gives; a model trained on exact
    poses only renders such a source under view offsets of +-20 degrees as two heads superimposed
    (the demo model before its stage 11, trained with turned worlds, which draws one). Stores'
    sources carry their head pose and are not concerned.
    """
    if not turns_views(spec):
        return ""
    photos = photo_sources(records)
    if not photos:
        return ""
    return (f"{len(photos)} of {len(records)} sources are photos (e.g. {photos[0].source_id}) and the grid turns the view: "
            "a photo's head pose is estimated (median error about 9-10 degrees), the model reads the source through the "
            "camera that pose gives, so its turned views are less exact than a store source's, and a model trained "
            "without turned worlds (data.world_turn_deg) renders them as a doubled (ghosted) face. For photos, a "
            "gaze-only grid (--grid pitch,yaw) is the safe one.")  # fmt: skip


def plan_run(checkpoint: str | Path, inputs: str | Path, cfg: SynthConfig, out: str | os.PathLike[str] | None = None) -> RunPlan:
    """The run's plan: model, normalisation, sorted sources, rows per source and the shards. ``out``:
    the run's output folder on this machine, whose files are never listed as inputs. Logs a warning
    (once: a run is planned once) when photo sources meet view turns (``photo_views_warning``)."""
    spec = cfg.grid_spec
    model = read_model_config(checkpoint)
    check_weights(checkpoint)  # a damaged weights file is reported here, not by every render actor
    records = tuple(list_sources(inputs, cfg.image_column, cfg.faces, cfg.max_pixels, out))
    if warning := photo_views_warning(records, spec):
        log.warning(warning)
    per_source = rows_per_source(spec)
    shards = plan_shards([r.source_id for r in records], max(1, cfg.rows_per_shard // per_source))
    return RunPlan(cfg, spec, str(Path(checkpoint).resolve()), checkpoint_hash(checkpoint), model,
                   resolve_normalisation(cfg, checkpoint, model), str(input_root(inputs)), records, per_source, tuple(shards))  # fmt: skip


def stage_settings(run: RunPlan, device: str = "cpu", threads: int = 0, png_threads: int = 1) -> tuple[DecodeSettings, RenderSettings]:
    """The decode and render stages' settings of ``run``, with the render stage's device, torch
    threads and PNG-encoding threads."""
    cfg = run.cfg
    render = RenderSettings(run.spec, run.normalisation, cfg.batch_size, cfg.depth_min_alpha, cfg.depth_full_resolution,
                            run.checkpoint_hash, device, threads, cfg.png_compression, png_threads, cfg.precision)  # fmt: skip
    decode = DecodeSettings(run.model.image_resolution, run.normalisation, cfg.crop, cfg.image_column, cfg.max_pixels,
                            cfg.decode_timeout_s, run.root, run.spec.view_pitch_bounds(), cfg.min_face_px,
                            cfg.photo_focal_fraction)  # fmt: skip
    return decode, render


__all__ = ["RunPlan", "photo_views_warning", "plan_run", "resolve_normalisation", "stage_settings"]
