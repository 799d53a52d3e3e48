"""`gazegen synthesize`: faces re-rendered under a gaze x view grid, written as Parquet shards.

The Ray Data graph (one row per pending source, sorted by id, each tagged with its shard; blocks
of ``SOURCES_PER_TASK`` = 2 sources from end to end, made on the driver up to
``MAX_INPUT_BLOCKS`` blocks, split after decoding beyond)::

    from_items ─ decode + crop (CPU tasks, a block each; pipelines/inputs.py)
               ─ RenderActor (actor pool: one per GPU with num_gpus=1, or CPU actors;
                 checkpoint loaded once; per source: encode once, redirect once per gaze,
                 render all views in batches; a block per task, ``TASKS_IN_FLIGHT`` = 2 tasks
                 queued per actor; pipelines/render_actor.py)
               ─ PNG encoding (CPU tasks)
               ─ driver: ShardRouter -> one ShardWriter per shard (pipelines/shards.py)

Ray schedules; gazegen names, writes and completes shards. The driver plans the shards from
the sorted source ids before anything runs, skips complete ones, and routes every record it
receives to its shard's writer; a shard is closed (parquet, errors, then stats, each by temp
name + rename) once each of its sources has all its rows or an error. Writing on the driver
keeps every row of a shard in one writer without a shuffle, and makes delivery idempotent: a
row id seen twice (a retried batch) is dropped, so Ray's at-least-once retries never duplicate
rows. The driver's share is small (~0.2 ms per row to route and write, PNGs already encoded);
a cluster whose GPUs together render thousands of images per second would want writers on
the workers instead.

Where the time goes (CPU, 2 cores, 1 CPU actor; benchmarks/synthesis.py): the actor holds one
core with ``default_cpu_threads`` = the cores less one = 1 torch thread (two threads next to the
decode / PNG / driver work, or any other process, thrash: 3-20x slower); decoding (~3-10 ms a
source), PNG encoding (0.4-1 ms an image, its three PNGs, at 64-128 px) and the driver's routing and writing run on
the other core, overlapped with the model. Ray Data dispatches a new actor task 30-110 ms after
the last one ended, so with one source per task and one task in flight the actor idled 11% of
the time (demo model, ~0.3 s a source) and a separate repartition step cost a task per decode
block; with two tasks in flight it is busy > 99.9% of the span. What remains is fixed: ray.init
(3-8 s), worker processes importing torch and the actor loading the checkpoint (first render
~8-13 s after ray.init).

Faults: kill -9 at any point leaves complete shards (valid stats) and temporary files; the same
command resumes (the manifest must match, pipelines/manifest.py) and rewrites only incomplete
shards. Actors are restarted up to ``max_restarts`` times and a batch whose worker died is
retried up to ``max_task_retries`` times (Ray Data's defaults are unbounded). An actor that dies
takes its running and its queued task with it, at most ``SOURCES_PER_TASK * TASKS_IN_FLIGHT`` = 4
sources: both tasks are retried on the restarted actor, and rows that had already arrived come
again and are dropped by row id. A batch that still fails is dropped (``max_errored_blocks`` =
``max_lost_sources``); its sources become error rows ("lost"), unless some of their rows were
already written, in which case that shard is left incomplete for the next run. So a source that
kills the actor every time is lost with the other source of its task, and possibly with the
task queued beside it. Beware: such a source also uses up ``max_restarts`` (its 4 attempts are 4
deaths with the defaults), and Ray Data does not replace an actor that is out of restarts: the
tasks still to run then fail at once (lost, or the run stops past ``max_lost_sources``). With one
task in flight Ray Data 2.60 hung there instead. For a pool to outlive one such source,
``max_restarts`` must be at least ``max_task_retries + 1``; the default, 40 =
(``max_task_retries`` + 1) x ``max_lost_sources``, outlives every batch the run may lose.
Exceptions on one source are caught in the stages: error rows. Inputs are checked at decode
(pipelines/guards.py: regular files only, the pixel cap read from the header, Parquet path cells
inside the INPUTS root, finite (pitch, yaw) radians, a time limit), so nothing bad reaches a
writer. The normalised camera comes from the checkpoint (``metadata.normalisation``) or the
config; a checkpoint without one is refused. Every pyarrow file the driver opens is closed, and
a Ray session it started is shut down, before the command returns.

Cluster runs (``address``): CKPT and INPUTS must be readable at the same path on every node;
OUT is written by the driver only (a local path or any pyarrow filesystem URI).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gazegen.checkpoint import CONFIG_FILE, CheckpointError, checkpoint_hash, checkpoint_normalisation, read_model_config
from gazegen.config import ModelConfig, NormalisationConfig, SynthConfig, load_config
from gazegen.data.parquet import FORMAT_VERSION
from gazegen.errors import GazegenError
from gazegen.pipelines.grid import GridSpec, rows_per_source
from gazegen.pipelines.inputs import DecodeSettings, SourceRecord, decode_batch, input_root, list_sources
from gazegen.pipelines.manifest import RunManifest, check_or_create, finalize
from gazegen.pipelines.render_actor import RenderActor, RenderSettings, encode_records
from gazegen.pipelines.schema import ROW_COLUMNS, row_id
from gazegen.pipelines.shards import OutputDir, ShardSpec, ShardStats, ShardWriter, completed_shards, plan_shards

log = logging.getLogger(__name__)

SOURCES_PER_TASK = 2  # sources per decode task and per render actor task (one block from end to end)
TASKS_IN_FLIGHT = 2  # render tasks queued per actor: the next one is there when the last ends
MAX_INPUT_BLOCKS = 1000  # blocks made on the driver; beyond, blocks are split after decoding
ROW_INPUTS = tuple(c for c in ROW_COLUMNS if c not in ("row_id", "checkpoint_hash", "seed"))  # what the stages carry


class IncompleteShardsError(GazegenError, RuntimeError):
    """Some shards could not be completed in this run; the same command resumes them."""


@dataclass(frozen=True)
class SynthesisResult:
    out: str
    sources: int  # inputs of the whole run
    rows: int  # rows of the whole run
    errors: int  # error rows of the whole run
    shards: int
    shards_written: int  # by this invocation (the others were complete already)
    rows_written: int  # by this invocation
    seconds: float  # wall clock of this invocation's pipeline (Ray start-up included)
    images_per_s: float  # rows_written / seconds

    def summary(self) -> str:
        return (f"{self.out}: {self.sources} sources, {self.rows} rows, {self.errors} errors, {self.shards} shards; this run: "
                f"{self.shards_written} shards, {self.rows_written} images in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s)")  # fmt: skip


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
        keep = ("grid", "pitch", "yaw", "view_pitch", "view_yaw", "sample", "seed", "crop", "image_column",
                "depth_min_alpha", "depth_full_resolution", "png_compression", "max_pixels")  # fmt: skip
        return {k: getattr(self.cfg, k) for k in keep} | {
            "normalisation": asdict(self.normalisation), "format_version": FORMAT_VERSION,
            "image_resolution": self.model.image_resolution, "output_resolution": self.model.output_resolution,
        }  # fmt: skip


def load_synth_config(config: str | Path | None = None, overrides: Sequence[str] = (), **options: Any) -> SynthConfig:
    """The TOML preset (or the defaults) with ``--set`` overrides, then the options that are not None
    (checked like the file's keys: types and ranges)."""
    given = [f"{k}={json.dumps(v)}" for k, v in options.items() if v is not None]  # JSON scalars are TOML
    return load_config(SynthConfig, config, [*overrides, *given])


def resolve_normalisation(cfg: SynthConfig, checkpoint: str | Path, model: ModelConfig) -> NormalisationConfig:
    """``cfg.normalisation``, else the checkpoint's ``metadata.normalisation``, at the output size;
    CheckpointError when neither is there (the framing and the depth scale would be guesses)."""
    norm = cfg.normalisation or checkpoint_normalisation(checkpoint)
    if norm is None:
        raise CheckpointError(
            f"{Path(checkpoint) / CONFIG_FILE}: records no normalisation (metadata.normalisation); set the training store's "
            "with --set normalisation.focal=F --set normalisation.distance_mm=D --set normalisation.resolution=S "
            "(e.g. LiveGaze's 512 px store: 1600, 950, 512), or the [normalisation] table of a --config preset"
        )  # fmt: skip
    return norm.at_resolution(model.output_resolution)


def plan_run(checkpoint: str | Path, inputs: str | Path, cfg: SynthConfig) -> RunPlan:
    spec = GridSpec.parse(cfg.grid, cfg.pitch, cfg.yaw, cfg.view_pitch, cfg.view_yaw, cfg.sample, cfg.seed)
    model = read_model_config(checkpoint)
    records = tuple(list_sources(inputs, cfg.image_column))
    per_source = rows_per_source(spec)
    shards = plan_shards([r.source_id for r in records], max(1, cfg.rows_per_shard // per_source))
    return RunPlan(cfg, spec, str(Path(checkpoint).resolve()), checkpoint_hash(checkpoint), model,
                   resolve_normalisation(cfg, checkpoint, model), str(input_root(inputs)), records, per_source, tuple(shards))  # fmt: skip


# --------------------------------------------------------------------------- stages


def _items(run: RunPlan, todo: Sequence[ShardSpec]) -> list[dict[str, Any]]:
    by_id = {r.source_id: r for r in run.records}
    return [
        {"shard_id": spec.shard_id, "source_id": sid, "source_path": by_id[sid].path, "kind": by_id[sid].kind,
         "index": by_id[sid].index, "error": by_id[sid].error}
        for spec in todo for sid in spec.inputs
    ]  # fmt: skip


def default_cpu_threads(actors: int, cpus: int | None = None) -> int:
    """Torch threads per CPU actor when ``cpu_threads`` is 0: the cores less one (decoding, PNG
    encoding and the driver need it), shared among the actors; at least 1. On a 2-core machine
    that is 1: two torch threads next to the other stages (or any other process) thrash, several
    times slower than one."""
    return max(1, ((cpus or os.cpu_count() or 1) - 1) // actors)


def stage_settings(run: RunPlan, device: str = "cpu", threads: int = 0) -> tuple[DecodeSettings, RenderSettings]:
    cfg = run.cfg
    render = RenderSettings(run.spec, run.normalisation, cfg.batch_size, cfg.depth_min_alpha, cfg.depth_full_resolution,
                            run.checkpoint_hash, device, threads)  # fmt: skip
    decode = DecodeSettings(run.model.image_resolution, run.normalisation, cfg.crop, cfg.image_column, cfg.max_pixels,
                            cfg.decode_timeout_s, run.root, run.spec.view_pitch_bounds())  # fmt: skip
    return decode, render


def build_dataset(run: RunPlan, todo: Sequence[ShardSpec], actor: type[RenderActor] = RenderActor) -> Any:
    """The lazy Ray Dataset of the pending shards' records (see the module docstring); ``actor``:
    the render stage's class (tests pass a subclass that crashes or waits)."""
    import ray

    cfg = run.cfg
    available = int(ray.cluster_resources().get("GPU", 0))
    if cfg.num_gpus > available:
        raise ValueError(f"--num-gpus {cfg.num_gpus}: the Ray cluster has {available} GPUs")
    gpus = available if cfg.num_gpus < 0 else cfg.num_gpus
    actors = gpus or cfg.cpu_actors
    threads = 0 if gpus else cfg.cpu_threads or default_cpu_threads(actors)
    decode, render = stage_settings(run, "cuda" if gpus else "cpu", threads)
    items = _items(run, todo)
    retries = {"max_retries": cfg.max_task_retries}
    with warnings.catch_warnings():  # Ray 2.60 deprecates **ray_remote_args but names no bounded-retry option yet
        warnings.simplefilter("ignore", DeprecationWarning)
        blocks = -(-len(items) // SOURCES_PER_TASK)
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(blocks, MAX_INPUT_BLOCKS)))
        ds = ds.map_batches(decode_batch, fn_kwargs={"settings": decode}, batch_size=SOURCES_PER_TASK, num_cpus=1, **retries)
        if blocks > MAX_INPUT_BLOCKS:  # a crash must cost at most SOURCES_PER_TASK sources per task
            ds = ds.repartition(target_num_rows_per_block=SOURCES_PER_TASK)
        ds = ds.map_batches(
            actor, fn_constructor_kwargs={"checkpoint": run.checkpoint, "settings": render}, batch_size=SOURCES_PER_TASK,
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=TASKS_IN_FLIGHT), num_cpus=1,
            num_gpus=1 if gpus else 0, max_restarts=cfg.max_restarts, max_task_retries=cfg.max_task_retries,
        )  # fmt: skip
        return ds.map_batches(encode_records, fn_kwargs={"compression": cfg.png_compression}, batch_size=None, num_cpus=1, **retries)


def local_records(run: RunPlan, todo: Sequence[ShardSpec], device: str = "cpu", threads: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The graph's records computed in this process, one source at a time, without Ray: the same
    stage functions in sequence (the benchmark's bare loop, and the tests' reference)."""
    decode, render = stage_settings(run, device, threads)
    actor = RenderActor(run.checkpoint, render)
    for item in _items(run, todo):
        batch = decode_batch({k: np.array([v]) for k, v in item.items()}, decode)
        for records in actor(batch):
            yield encode_records(records, run.cfg.png_compression)


# --------------------------------------------------------------------------- writing


class ShardRouter:
    """Routes records to one ``ShardWriter`` per shard and closes a shard when all its sources are in.

    A source is in when all ``rows_per_source`` rows or an error arrived; the first outcome wins
    (rows of a failed source and rows already written are dropped: retried batches are harmless).
    """

    def __init__(self, out: OutputDir, shards: Sequence[ShardSpec], run: RunPlan) -> None:
        self.out, self.run = out, run
        self.specs = {s.shard_id: s for s in shards}
        self.remaining = {s.shard_id: set(s.inputs) for s in shards}
        self.paths = {r.source_id: r.path for r in run.records}
        self.writers: dict[int, ShardWriter] = {}
        self.seen: dict[int, set[str]] = defaultdict(set)  # row ids written, per open shard
        self.rows: dict[str, int] = defaultdict(int)  # rows written, per source
        self.failed: set[str] = set()
        self.closed: list[ShardStats] = []
        self.dropped = 0  # duplicate records ignored

    def _writer(self, shard_id: int) -> ShardWriter:
        if shard_id not in self.writers:  # opened on the shard's first record
            self.writers[shard_id] = ShardWriter(self.out, self.specs[shard_id])
        return self.writers[shard_id]

    def add(self, batch: dict[str, np.ndarray]) -> tuple[int, int]:
        """Routes one batch of records; returns (rows written, sources failed)."""
        rows = errors = 0
        for shard_id in np.unique(batch["shard_id"]):
            part = {k: v[batch["shard_id"] == shard_id] for k, v in batch.items()}
            r, e = self._add(int(shard_id), part)
            rows, errors = rows + r, errors + e
        return rows, errors

    def _add(self, shard_id: int, part: dict[str, np.ndarray]) -> tuple[int, int]:
        if shard_id not in self.remaining:
            self.dropped += len(part["source_id"])
            return 0, 0
        writer, seen, errors, keep, ids = self._writer(shard_id), self.seen[shard_id], 0, [], []
        for i, (sid, status) in enumerate(zip(part["source_id"], part["status"])):
            sid = str(sid)
            if status != "ok":
                if sid in self.failed or self.rows[sid]:
                    self.dropped += 1
                    continue
                writer.add_error(self.paths[sid], str(part["reason"][i]), source_id=sid, stage=str(part["stage"][i]))
                self.failed.add(sid)
                self.remaining[shard_id].discard(sid)
                errors += 1
                continue
            rid = row_id(sid, int(part["gaze_index"][i]), int(part["view_index"][i]))
            if sid in self.failed or rid in seen:
                self.dropped += 1
                continue
            seen.add(rid)
            keep.append(i)
            ids.append(rid)
        if keep:
            columns = {k: part[k][keep] for k in ROW_INPUTS}
            constants = {"checkpoint_hash": [self.run.checkpoint_hash] * len(keep), "seed": [self.run.cfg.seed] * len(keep)}
            writer.write(columns | constants | {"row_id": ids})
            for sid in columns["source_id"]:
                self.rows[str(sid)] += 1
                if self.rows[str(sid)] == self.run.rows_per_source:
                    self.remaining[shard_id].discard(str(sid))
        if not self.remaining[shard_id]:
            self._close(shard_id)
        return len(keep), errors

    def _close(self, shard_id: int) -> None:
        self.closed.append(self._writer(shard_id).close())
        del self.writers[shard_id], self.remaining[shard_id]
        self.seen.pop(shard_id, None)

    def finish(self, max_lost: int) -> list[str]:
        """After the stream: sources that never arrived become "lost" error rows (up to
        ``max_lost``); shards with a partly written source are aborted. Returns the problems."""
        lost = [(s, sid) for s, ids in self.remaining.items() for sid in sorted(ids) if not self.rows[sid]]
        partial = {s for s, ids in self.remaining.items() for sid in ids if self.rows[sid]}
        problems = [f"{self.specs[s].name}: a source arrived only in part" for s in sorted(partial)]
        if len(lost) > max_lost:
            problems.append(f"{len(lost)} sources lost (more than max_lost_sources={max_lost}), e.g. {[i for _, i in lost[:3]]}")
            partial |= {s for s, _ in lost}
        for shard_id, sid in lost:
            if shard_id not in partial:
                reason = f"lost: its batch failed {self.run.cfg.max_task_retries + 1} times (worker died or task error; see the Ray logs)"
                self._writer(shard_id).add_error(self.paths[sid], reason, source_id=sid, stage="render")
                self.remaining[shard_id].discard(sid)
        for shard_id in list(self.remaining):
            if shard_id in partial:
                self.abort(shard_id)
            elif not self.remaining[shard_id]:
                self._close(shard_id)
        return problems

    def abort(self, shard_id: int | None = None) -> None:
        """Drops open shards (one, or all): their temporary files go, nothing is moved into place."""
        for s in [shard_id] if shard_id is not None else list(self.writers):
            if s in self.writers:
                self.writers.pop(s).abort()


@contextlib.contextmanager
def ray_cluster(address: str | None) -> Iterator[Any]:
    """Ray for the run: the session already started in this process, else a new local one
    (``address="local"``: a plain ``ray.init()`` would join any cluster running on the machine),
    or the cluster at ``address``. A session started here is shut down at the end."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _render_pending(run: RunPlan, out: OutputDir, todo: Sequence[ShardSpec], address: str | None, progress: bool,
                    actor: type[RenderActor]) -> tuple[ShardRouter, list[str]]:
    router = ShardRouter(out, todo, run)
    with ray_cluster(address) as ray:
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.max_errored_blocks, ctx.enable_progress_bars)
        ctx.max_errored_blocks, ctx.enable_progress_bars = run.cfg.max_lost_sources, False
        total = sum(len(s.inputs) for s in todo) * run.rows_per_source
        bar = tqdm(total=total, unit="img", desc="synthesize", disable=not progress, dynamic_ncols=True)
        try:
            # prefetch_batches=0: each block is routed when it arrives (with 1, Ray Data holds a block back until the
            # next one comes, so a shard's last rows wait on the next batch: up to a whole task of a slow source)
            blocks = build_dataset(run, todo, actor).iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)
            with contextlib.closing(iter(blocks)) as batches:
                for batch in batches:
                    rows, errors = router.add(batch)
                    bar.update(rows + errors * run.rows_per_source)
                    bar.set_postfix(shards=len(router.closed), errors=len(router.failed), refresh=False)
            problems = router.finish(run.cfg.max_lost_sources)
            if router.dropped:
                log.info("%d repeated records (retried batches) were dropped", router.dropped)
        except BaseException:
            router.abort()
            raise
        finally:
            bar.close()
            ctx.max_errored_blocks, ctx.enable_progress_bars = saved
    return router, problems


def run_synthesis(
    checkpoint: str | Path,
    inputs: str | Path,
    out: str | Path,
    *,
    grid: str | None = None,
    pitch: str | None = None,
    yaw: str | None = None,
    view_pitch: str | None = None,
    view_yaw: str | None = None,
    sample: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    num_gpus: int | None = None,
    address: str | None = None,
    rows_per_shard: int | None = None,
    crop: str | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = True,
    command: Sequence[str] = (),
    actor: type[RenderActor] = RenderActor,
) -> SynthesisResult:
    """Runs (or resumes) a synthesis into OUT and returns its summary.

    Options left None come from ``config`` (a configs/synth/*.toml preset; SynthConfig's defaults
    without one) after its ``overrides`` (``key=value``). Raises ``RunMismatchError`` when OUT holds
    a different run (``overwrite`` starts afresh), ``ConfigError``/``ValueError`` for bad settings,
    ``FileNotFoundError`` for missing inputs, ``CheckpointError`` for a bad checkpoint, and
    ``IncompleteShardsError`` when shards are left for a restart (the complete ones stay).
    ``actor`` is the render stage's class (tests pass a subclass that crashes or waits).
    """
    start = time.monotonic()
    options = {"grid": grid, "pitch": pitch, "yaw": yaw, "view_pitch": view_pitch, "view_yaw": view_yaw, "sample": sample,
               "seed": seed, "batch_size": batch_size, "num_gpus": num_gpus, "rows_per_shard": rows_per_shard, "crop": crop}  # fmt: skip
    cfg = load_synth_config(config, overrides, **options)
    run = plan_run(checkpoint, inputs, cfg)
    target = OutputDir.from_uri(os.fspath(out))
    manifest = RunManifest.create([r.source_id for r in run.records], run.checkpoint_hash, run.settings(),
                                  run.sources_per_shard, command)  # fmt: skip
    check_or_create(target, manifest, overwrite=overwrite)
    todo = completed_shards(target, run.shards).todo(run.shards)
    log.info("%s: %d sources, %d rows each, %d shards (%d to write)", out, len(run.records), run.rows_per_source, len(run.shards), len(todo))
    router, problems = _render_pending(run, target, todo, address, progress, actor) if todo else (None, [])
    if problems:
        raise IncompleteShardsError(f"{out}: run the same command again to finish; " + "; ".join(problems))
    final = finalize(target, run.shards)
    seconds = time.monotonic() - start
    written = sum(s.rows for s in router.closed) if router else 0
    return SynthesisResult(str(target), len(run.records), final.rows, final.errors, len(final.shards),
                           len(router.closed) if router else 0, written, seconds, written / seconds if seconds else 0.0)  # fmt: skip


__all__ = ["IncompleteShardsError", "RunPlan", "ShardRouter", "SynthesisResult", "build_dataset", "default_cpu_threads",
           "load_synth_config", "local_records", "plan_run", "run_synthesis", "stage_settings"]  # fmt: skip
