"""`gazegen synthesize`: faces re-rendered under a gaze x view grid, written as Parquet shards.

The Ray graph (Ray Core tasks and actors; one item per pending source, sorted by id, each tagged
with its shard; pipelines/dispatch.py)::

    items ─ decode + crop (a CPU task per source, as many ahead as the cluster has CPUs; pipelines/inputs.py)
          ─ RenderActor (a fixed pool: one actor per GPU with num_gpus=1, or CPU actors; checkpoint
            loaded once; a call per source, its decoded image passed through the object store:
            encode once, redirect once per gaze, render all views in batches, each batch
            PNG-encoded on a thread of the actor while the next renders; one call in flight per
            actor, the next sent as soon as the last ends; pipelines/render_actor.py)
          ─ driver: ShardRouter (pipelines/router.py) -> one ShardWriter per shard (pipelines/shards.py)

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
decode / PNG / driver work, or any other process, thrash: 3-20x slower); its PNG thread (0.3-0.5
ms an image, its three PNGs, at 64 px), decoding (~3-10 ms a source) and the driver's routing and
writing run on the other core, overlapped with the model, so on CPU the pipeline beats the bare
in-process loop once its fixed start-up is paid: ``ray.init`` (2-3 s: Ray's own processes), then
~1 s to the actor's first source (its worker importing torch and gazegen, loading the
checkpoint). An actor's next call is sent as soon as its last one ends, before the driver
fetches and routes the result, its decoded source already waiting in the object store. Encoding
in the actor rather than in a stage of CPU tasks keeps the rendered arrays in its process (at
512 px ~1.5 MB a row through the object store otherwise), and the first rows reach
the driver within seconds, so shards close as the run goes. The actor keeps the memory it frees
(gazegen/allocator.py): in a Ray worker glibc handed the render's large tensors back to the OS
and faulted them in again, 10,000-21,000 page faults a source, and the actor's model time was
1.24-1.30x the bare loop's on the same sources; with fixed thresholds 1.04-1.07x. Until session
15 the graph ran on Ray Data: its import in every worker, its three helper actors and its
executor cost 2-3 s more before the first source and CPU beside the model (Ray/bare 0.79-0.86 at
100 sources, now 0.96-1.03; pipelines/dispatch.py).

Faults: kill -9 at any point leaves complete shards (valid stats) and temporary files; the same
command resumes (the manifest must match, pipelines/manifest.py) and rewrites only incomplete
shards. Actors are restarted up to ``max_restarts`` times, and a call whose actor died (or a decode
task whose worker died) is retried up to ``max_task_retries`` times (Ray's defaults are
unbounded). An actor has one call in flight, so a death is charged to the source it was
rendering only (with a second call queued, Ray failed and charged both, and a source that killed
the actor every time took the one behind it along; tested with the victim first and last). A
call returns its source's records whole, so a death never leaves a source half written. A source
whose call still fails is lost: an error row ("lost"). Beware: such a source also uses up
``max_restarts`` (its 4 attempts are 4 deaths with the defaults), and an actor out of restarts
stays dead: the calls still to make then fail at once. Past ``max_lost_sources`` lost sources
the driver stops the run: the sources not rendered then leave their shards for the next run, and
the complete ones stay. For a pool to outlive one such source, ``max_restarts`` must be at least
``max_task_retries + 1``; the default, 40 = (``max_task_retries`` + 1) x ``max_lost_sources``,
outlives every source the run may lose.
Faults of the device rather than of a source (pipelines/render_actor.py, dispatch.py): an actor
that cannot start (its ``__init__`` raised: no GPU on the node, a checkpoint it cannot read)
stops the run with that cause (``RenderPoolError``), where every source would otherwise be lost
and the run end complete and empty; a device error while rendering (``torch.AcceleratorError``)
ends the actor's worker, so that Ray restarts it on a fresh CUDA context and makes the source
again; out of device memory halves the render batch for this and the next sources.
Exceptions on one source are caught in the stages: error rows. Inputs are checked at decode
(pipelines/guards.py: regular files only, the pixel cap read from the header, Parquet path cells
inside the INPUTS root, finite (pitch, yaw) radians, a time limit), so nothing bad reaches a
writer. The normalised camera comes from the checkpoint (``metadata.normalisation``) or the
config; a checkpoint without one is refused. Every pyarrow file the driver opens is closed, and
a Ray session it started is shut down, before the command returns.

Where the parts live: the driver-side plan in pipelines/plan.py, the Ray pool in pipelines/dispatch.py,
the driver loop in pipelines/graph.py, the shard router in pipelines/router.py; this module runs them.

Cluster runs (``address``): CKPT and INPUTS must be readable at the same path on every node;
OUT is written by the driver only (a local path or any pyarrow filesystem URI). A local OUT is
checked first (``check_local_out``: an existing file, or a folder that cannot be made, is refused
before the inputs are listed or Ray starts).
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gazegen.config import SynthConfig
from gazegen.errors import GazegenError
from gazegen.paths import check_out_folder
from gazegen.pipelines.graph import render_pending
from gazegen.pipelines.manifest import (ERRORS_NAME, RunMismatchError, check_or_create, finalize, read_manifest, read_run_errors,
                                       remove_outputs)
from gazegen.pipelines.run_manifest import RunManifest, changed_inputs
from gazegen.pipelines.plan import RunPlan, plan_run
from gazegen.pipelines.render_actor import RenderActor
from gazegen.pipelines.shards import MANIFEST_NAME, STATS_GLOB, OutputDir, ShardSpec, completed_shards
from gazegen.pipelines.sources import file_fingerprints

log = logging.getLogger(__name__)


class IncompleteShardsError(GazegenError, RuntimeError):
    """Some shards could not be completed in this run; the same command resumes them."""


SHOWN_FAILURES = 10  # failed sources a result names; every one is in the errors file


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
    errors_file: str = ""  # every failed source with its reason (_errors.parquet)
    failures: tuple[str, ...] = ()  # the first SHOWN_FAILURES failed sources by id, "file: reason"

    def summary(self) -> str:
        return (f"{self.out}: {self.sources} sources, {self.rows} rows, {self.errors} errors, {self.shards} shards; this run: "
                f"{self.shards_written} shards, {self.rows_written} images in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s)")  # fmt: skip

    def failure_report(self) -> list[str]:
        """Lines naming the failed sources and why (the first ``SHOWN_FAILURES``) and where all of them are;
        [] when none failed. A count alone leaves the user to open the errors file to learn which."""
        if not self.errors:
            return []
        more = [f"  ... and {self.errors - len(self.failures)} more"] if self.errors > len(self.failures) else []
        head = f"{self.errors} source{'s' if self.errors > 1 else ''} failed (all, with the reasons, in {self.errors_file}):"
        return [head, *(f"  {f}" for f in self.failures), *more]


def failure_line(row: dict[str, str]) -> str:
    """An error row as "file: reason": its file with the source's row or face (``#000012``), the reason
    without the file's path when it already begins with it."""
    path, source_id = row["source_path"], row["source_id"]
    within = source_id[source_id.index("#"):] if "#" in source_id else ""
    return f"{path}{within}: {row['reason'].removeprefix(f'{path}: ')}"


def check_local_out(target: OutputDir) -> None:
    """OUT on this machine: a folder, or one that can be made (gazegen/paths.py ``check_out_folder``), checked
    before the inputs are listed or Ray starts; named as given. Other filesystems (s3://, gs://) are not checked."""
    folder = target.local_folder()
    if folder is not None:
        check_out_folder(target.uri if target.uri and "://" not in target.uri else folder)


def check_inputs_unchanged(out: OutputDir, run: RunPlan) -> None:
    """RunMismatchError when an input file changed (size or modification time) since the run started, as the manifest
    recorded it: its rows may mix two versions of it, so the run is not marked complete; the message says how to
    start afresh."""
    changed = changed_inputs(read_manifest(out).files, file_fingerprints(run.records, run.root))
    if changed:
        raise RunMismatchError(f"{out}: {len(changed)} input file(s) changed while the run read them {changed[:3]}: its rows may "
                               "mix two versions of them, so it is not marked complete; run again with --overwrite")


def open_run(checkpoint: str | Path, inputs: str | Path, out: str | Path, cfg: SynthConfig, *, overwrite: bool = False,
             command: Sequence[str] = ()) -> tuple[RunPlan, OutputDir, list[ShardSpec]]:
    """Plans the run and opens OUT for it (its manifest checked, or created); returns the plan, OUT and the
    shards still to write. ``run_synthesis`` renders them on Ray; the benchmark's bare loop, in process."""
    target = OutputDir.from_uri(os.fspath(out))
    check_local_out(target)
    run = plan_run(checkpoint, inputs, cfg, target.local_folder())  # OUT may lie inside INPUTS: never listed
    manifest = RunManifest.create([r.source_id for r in run.records], run.checkpoint_hash, run.settings(),
                                  run.sources_per_shard, command, file_fingerprints(run.records, run.root))  # fmt: skip
    check_or_create(target, manifest, overwrite=overwrite)
    scan = completed_shards(target, run.shards, verify=True)  # a shard changed in place (same size) is written again
    if scan.invalid:
        log.warning("%s: %d shards to write again: %s", out, len(scan.invalid),
                    "; ".join(f"{name}: {why}" for name, why in list(scan.invalid.items())[:5]))
    return run, target, scan.todo(run.shards)


def run_synthesis(
    checkpoint: str | Path,
    inputs: str | Path,
    out: str | Path,
    cfg: SynthConfig,
    *,
    address: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: Sequence[str] = (),
    actor: type[RenderActor] = RenderActor,
) -> SynthesisResult:
    """Runs (or resumes) the synthesis ``cfg`` into OUT and returns its summary.

    ``address``: the Ray cluster to join (default: a private local Ray). Raises
    ``RunMismatchError`` when OUT holds a different run (``overwrite`` starts afresh),
    ``ValueError`` for settings the cluster cannot meet, ``FileNotFoundError`` for missing inputs,
    ``CheckpointError`` for a bad checkpoint, ``RenderPoolError`` when a render actor cannot start,
    and ``IncompleteShardsError`` when shards are left for a restart (the complete ones stay).
    ``command`` is recorded in the manifest; ``actor`` is the render stage's class (tests pass a
    subclass that crashes or waits).
    """
    start = time.monotonic()
    fresh = overwrite or not OutputDir.from_uri(os.fspath(out)).exists(MANIFEST_NAME)
    run, target, todo = open_run(checkpoint, inputs, out, cfg, overwrite=overwrite, command=command)
    log.info("%s: %d sources, %d rows each, %d shards (%d to write)", out, len(run.records), run.rows_per_source, len(run.shards), len(todo))
    try:
        router, problems = render_pending(run, target, todo, address, progress, actor) if todo else (None, [])
    except BaseException:
        if fresh and not target.list(STATS_GLOB):  # failed before its first shard (no cluster, no GPU, no actor): OUT unclaimed
            remove_outputs(target)
        raise
    if problems:
        raise IncompleteShardsError(f"{out}: run the same command again to finish; " + "; ".join(problems))
    check_inputs_unchanged(target, run)
    final = finalize(target, run.shards)
    seconds = time.monotonic() - start
    written = sum(s.rows for s in router.closed) if router else 0
    failed = read_run_errors(target).sort_by("source_id").slice(0, SHOWN_FAILURES).to_pylist()  # as listed, not as they came
    return SynthesisResult(str(target), len(run.records), final.rows, final.errors, len(final.shards),
                           len(router.closed) if router else 0, written, seconds, written / seconds if seconds else 0.0,
                           posixpath.join(str(target), ERRORS_NAME), tuple(failure_line(row) for row in failed))  # fmt: skip


__all__ = ["SHOWN_FAILURES", "IncompleteShardsError", "SynthesisResult", "check_local_out", "failure_line", "open_run", "run_synthesis"]
