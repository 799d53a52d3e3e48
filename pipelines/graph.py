"""The Ray graph of a synthesis run, and the driver loop that drains it into the shard router.

One row per pending source, sorted by id, each tagged with its shard; blocks of
``SOURCES_PER_TASK`` = 2 sources from end to end, made on the driver up to ``MAX_INPUT_BLOCKS``
blocks, split after decoding beyond (the diagram and the fault story: pipelines/synthesis.py).
``local_records`` runs the same stage functions in this process, without Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from gazegen.config import ConfigError
from gazegen.pipelines.inputs import decode_batch
from gazegen.pipelines.plan import RunPlan, stage_settings
from gazegen.pipelines.render_actor import RenderActor, encode_records
from gazegen.pipelines.router import ShardRouter
from gazegen.pipelines.shards import OutputDir, ShardSpec

log = logging.getLogger(__name__)

SOURCES_PER_TASK = 2  # sources per decode task and per render actor task (one block from end to end)
TASKS_IN_FLIGHT = 2  # render tasks queued per actor: the next one is there when the last ends
MAX_INPUT_BLOCKS = 1000  # blocks made on the driver; beyond, blocks are split after decoding


def _items(run: RunPlan, todo: Sequence[ShardSpec]) -> list[dict[str, Any]]:
    by_id = {r.source_id: r for r in run.records}
    return [
        {"shard_id": spec.shard_id, "source_id": sid, "source_path": by_id[sid].path, "kind": by_id[sid].kind,
         "index": by_id[sid].index, "face": by_id[sid].face, "error": by_id[sid].error}
        for spec in todo for sid in spec.inputs
    ]  # fmt: skip


def default_cpu_threads(actors: int, cpus: int | None = None) -> int:
    """Torch threads per CPU actor when ``cpu_threads`` is 0: the cores less one (decoding, PNG
    encoding and the driver need it), shared among the actors; at least 1. On a 2-core machine
    that is 1: two torch threads next to the other stages (or any other process) thrash, several
    times slower than one."""
    return max(1, ((cpus or os.cpu_count() or 1) - 1) // actors)


def png_threads(gpus: int, cpus: int) -> int:
    """PNG-encoding threads per render actor: 1 beside a CPU actor (``gpus`` = 0: the core the
    model leaves); beside a GPU actor, the cluster's ``cpus`` less one shared among the GPUs
    (decoding runs beside them): one thread encodes ~30 rows/s at 512 px (its three PNGs, ~35 ms),
    fewer than a GPU renders."""
    return default_cpu_threads(gpus, cpus) if gpus else 1


def build_dataset(run: RunPlan, todo: Sequence[ShardSpec], actor: type[RenderActor] = RenderActor) -> Any:
    """The lazy Ray Dataset of the pending shards' records (pipelines/synthesis.py draws it); ``actor``:
    the render stage's class (tests pass a subclass that crashes or waits)."""
    import ray

    cfg = run.cfg
    resources = ray.cluster_resources()
    available = int(resources.get("GPU", 0))
    if cfg.num_gpus > available:
        raise ConfigError(f"num_gpus = {cfg.num_gpus} (--num-gpus): the Ray cluster has {available} GPUs")
    gpus = available if cfg.num_gpus < 0 else cfg.num_gpus
    actors = gpus or cfg.cpu_actors
    cpus = int(resources.get("CPU", 0))
    if actors >= cpus:  # each actor holds a CPU for its life: the decode tasks would wait for one forever
        what = f"{gpus} GPU actor(s)" if gpus else f"cpu_actors = {actors} (--set cpu_actors=N)"
        raise ConfigError(f"{what}: each render actor reserves 1 of the Ray cluster's {cpus} CPUs, and decoding "
                          f"needs one more; use at most {max(cpus - 1, 0)} actor(s)")
    threads = 0 if gpus else cfg.cpu_threads or default_cpu_threads(actors)
    decode, render = stage_settings(run, "cuda" if gpus else "cpu", threads, png_threads(gpus, cpus))
    items = _items(run, todo)
    retries = {"max_retries": cfg.max_task_retries}
    with warnings.catch_warnings():  # Ray 2.60 deprecates **ray_remote_args but names no bounded-retry option yet
        warnings.simplefilter("ignore", DeprecationWarning)
        blocks = -(-len(items) // SOURCES_PER_TASK)
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(blocks, MAX_INPUT_BLOCKS)))
        ds = ds.map_batches(decode_batch, fn_kwargs={"settings": decode}, batch_size=SOURCES_PER_TASK, num_cpus=1, **retries)
        if blocks > MAX_INPUT_BLOCKS:  # a crash must cost at most SOURCES_PER_TASK sources per task
            ds = ds.repartition(target_num_rows_per_block=SOURCES_PER_TASK)
        return ds.map_batches(
            actor, fn_constructor_kwargs={"checkpoint": run.checkpoint, "settings": render}, batch_size=SOURCES_PER_TASK,
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=TASKS_IN_FLIGHT), num_cpus=1,
            num_gpus=1 if gpus else 0, max_restarts=cfg.max_restarts, max_task_retries=cfg.max_task_retries,
        )  # fmt: skip


def local_records(run: RunPlan, todo: Sequence[ShardSpec], device: str = "cpu", threads: int = 0,
                  actor_class: type[RenderActor] = RenderActor) -> Iterator[dict[str, np.ndarray]]:
    """The graph's records computed in this process, one source at a time, without Ray: the same
    stage functions in sequence, PNGs encoded in turn on this thread (the benchmark's bare loop,
    and the tests' reference); ``actor_class``: as ``build_dataset``'s ``actor``."""
    decode, render = stage_settings(run, device, threads)
    actor = actor_class(run.checkpoint, render)
    for item in _items(run, todo):
        batch = decode_batch({k: np.array([v]) for k, v in item.items()}, decode)
        for records in actor.source_records(batch, 0):
            yield encode_records(records, render.png_compression)


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


def render_pending(run: RunPlan, out: OutputDir, todo: Sequence[ShardSpec], address: str | None, progress: bool,
                   actor: type[RenderActor]) -> tuple[ShardRouter, list[str]]:
    """Renders the pending shards ``todo`` on Ray and routes every record to its shard; returns the
    router (its closed shards) and the problems that leave shards for a restart."""
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


__all__ = ["MAX_INPUT_BLOCKS", "SOURCES_PER_TASK", "TASKS_IN_FLIGHT", "build_dataset", "default_cpu_threads",
           "local_records", "png_threads", "ray_cluster", "render_pending"]  # fmt: skip
