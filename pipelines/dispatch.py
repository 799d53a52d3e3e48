"""The Ray side of a synthesis run: decode tasks feeding a fixed pool of render actors (Ray Core).

Every pending source is one decode task (a CPU task; pipelines/inputs.py) and one call of a
render actor (pipelines/render_actor.py) whose argument is that task's result, so a decoded image
goes from the decode worker to the actor through the object store, never through the driver::

    driver ─ decode task per source (as many as the cluster's CPUs running or done ahead of the actors)
           ─ render actor call per source (one in flight per actor, the next sent as soon as the
             last one ends)
           ─ driver: (item, its records) in the order the calls end -> the shard router

A call returns its source's records whole (the actor renders a source completely before the first
row is out anyway): its rows' PNGs, ~60 MB for 125 rows at 512 px, ~1 MB at 64 px, through the
object store to the driver. ``render_stream`` yields each source's outcome: its records, or the
Ray error that lost it (its actor died more than ``max_task_retries`` times running it, or its
decode worker did). Ray restarts a dead actor (``max_restarts``) and retries the call it was
running on the restarted one, and retries a decode task whose worker died. An exception in
either stage's Python code is an error row already, never a Ray error.
Leaving the stream (its end, an exception, the driver giving up) kills the pool's actors and
waits for the decodes already sent (one per CPU at most) to end, so that nothing of the run is
left running: a session shared with the next run gets its CPUs and GPUs back, and nothing of
this run acts in the next. The pool once cancelled those decodes instead (``ray.cancel``
interrupts the worker running one); then a run started right after one whose actor could not
start sometimes lost a source (once in CI; twice in six runs of that test after a fresh setup, then
in none of 42 more, under load or cold), and a late cancellation is the suspected cause.

Why Ray Core and not Ray Data: the graph has two stages of fixed shape, which tasks and actors
express directly. Ray Data's own machinery (its import in every worker, three helper actors, its
executor's thread) cost 2-3 s before the first source and CPU beside the model: on 2 cores, 100
sources of the tiny preset (the bare loop ~20 s), the first source came 3-4 s after ``ray.init``
and Ray/bare was 0.79-0.86; on Ray Core, 1.05-1.12 s and 0.96-1.03
(``python benchmarks/synthesis.py --sources 100 --rounds 3``, session 15).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gazegen.config import ConfigError, SynthConfig
from gazegen.errors import GazegenError, last_line
from gazegen.pipelines.inputs import DecodeSettings, decode_batch
from gazegen.pipelines.render_actor import RenderActor, RenderSettings

Item = dict[str, Any]  # one pending source: shard_id, source_id, source_path, kind, index, face, error
Records = list[dict[str, np.ndarray]]


class RenderPoolError(GazegenError, RuntimeError):
    """A render actor could not start (a device that fails, a checkpoint a node cannot read): the
    run stops, its complete shards kept, rather than lose every source as an error row."""


@dataclass(frozen=True)
class PoolShape:
    """The render pool a run gets on a cluster of ``cpus`` CPUs: ``actors`` actors of
    ``gpus_per_actor`` GPUs each (0: CPU actors). As many sources as ``cpus`` are decoded ahead of
    the actors."""

    actors: int
    gpus_per_actor: int
    cpus: int


def pool_shape(cfg: SynthConfig, resources: dict[str, float]) -> PoolShape:
    """One actor per GPU (``num_gpus`` < 0: every GPU of the cluster), else ``cpu_actors`` CPU
    actors; each holds a CPU for its life, so at least one CPU must be left to decoding. Sources
    are decoded ahead by as many tasks as the cluster has CPUs, beside those the actors are rendering."""
    available, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if cfg.num_gpus > available:
        raise ConfigError(f"num_gpus = {cfg.num_gpus} (--num-gpus): the Ray cluster has {available} GPUs")
    gpus = available if cfg.num_gpus < 0 else cfg.num_gpus
    actors = gpus or cfg.cpu_actors
    if actors >= cpus:  # each actor holds a CPU for its life: the decode tasks would wait for one forever
        what = f"{gpus} GPU actor(s)" if gpus else f"cpu_actors = {actors} (--set cpu_actors=N)"
        raise ConfigError(f"{what}: each render actor reserves 1 of the Ray cluster's {cpus} CPUs, and decoding "
                          f"needs one more; use at most {max(cpus - 1, 0)} actor(s)")
    return PoolShape(actors, 1 if gpus else 0, cpus)


def as_batch(item: Item) -> dict[str, np.ndarray]:
    """One source as the decode stage's input batch (columns of length 1)."""
    return {k: np.array([v]) for k, v in item.items()}


def render_stream(items: Sequence[Item], shape: PoolShape, cfg: SynthConfig, checkpoint: str, decode: DecodeSettings,
                  render: RenderSettings, actor: type[RenderActor] = RenderActor) -> Iterator[tuple[Item, Records | Exception]]:
    """Each of ``items`` rendered on the pool ``shape`` (a running Ray session): ``(item, records)``, or
    ``(item, the Ray error)`` for a source lost, in the order the actors end them.

    One call in flight per actor, so a death is charged by Ray's retries to the call it was
    running only: with a second call queued behind it, Ray failed and charged both, and a source
    that killed its actor every time took the one behind it along (tested). An actor gets its next
    call as soon as its last one ends, before the driver fetches and routes the result. Raises
    ``RenderPoolError`` when an actor cannot start.
    """
    import ray

    decode_task = ray.remote(num_cpus=1, max_retries=cfg.max_task_retries)(decode_batch)
    actor_class = ray.remote(actor).options(num_cpus=1, num_gpus=shape.gpus_per_actor, max_restarts=cfg.max_restarts,
                                            max_task_retries=cfg.max_task_retries)  # fmt: skip
    actors = [actor_class.remote(checkpoint, render) for _ in range(shape.actors)]
    waiting = iter(items)
    decoded: deque[tuple[Item, Any]] = deque()  # (item, its decode task's result ref), in item order
    calls: dict[Any, tuple[int, Item]] = {}  # each actor's call in flight: ref -> (actor index, item)
    idle = deque(range(len(actors)))  # actors without a call

    def feed() -> None:
        """Decode ahead (as many sources as the cluster has CPUs), and give every idle actor its next source."""
        while len(decoded) < shape.cpus and (item := next(waiting, None)) is not None:
            decoded.append((item, decode_task.remote(as_batch(item), decode)))
        while idle and decoded:
            k, (item, source) = idle.popleft(), decoded.popleft()
            calls[actors[k].records.remote(source)] = (k, item)

    try:
        feed()
        while calls:
            (ready,), _ = ray.wait(list(calls), num_returns=1)
            k, item = calls.pop(ready)
            idle.append(k)
            feed()  # the actor's next call goes out before this one's result is fetched
            try:
                outcome: Records | Exception = ray.get(ready)
            except ray.exceptions.RayActorError as error:
                if error.actor_init_failed:  # not the source's fault: every call of the actor would fail alike
                    raise RenderPoolError(f"a render actor could not start ({last_line(error)}); the complete shards "
                                          "are kept: fix the cause and run the same command again") from error
                outcome = error
            except ray.exceptions.RayError as error:
                outcome = error
            yield item, outcome
    finally:
        for ref in calls:
            ray.cancel(ref)  # not retried when its actor is killed: Ray would log each as failed, "will be retried"
        for handle in actors:
            ray.kill(handle)  # its call in flight fails now; no call waits behind it
        if left := [*calls, *(ref for _, ref in decoded)]:
            ray.wait(left, num_returns=len(left), fetch_local=False)  # the run's last decodes end here, not in the next run


__all__ = ["PoolShape", "RenderPoolError", "as_batch", "pool_shape", "render_stream"]
