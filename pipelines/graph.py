"""The driver's loop of a synthesis run: the Ray render pool's records drained into the shard router.

One item per pending source, sorted by id, each tagged with its shard; the pool (decode tasks
feeding render actors) is pipelines/dispatch.py, the diagram and the fault story
pipelines/synthesis.py. ``local_records`` runs the same stage functions in this process, without Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from gazegen.errors import first_line
from gazegen.pipelines.dispatch import RenderPoolError, as_batch, pool_shape, render_stream
from gazegen.pipelines.inputs import decode_batch
from gazegen.pipelines.plan import RunPlan, stage_settings
from gazegen.pipelines.render_actor import RenderActor, encode_records
from gazegen.pipelines.router import ShardRouter
from gazegen.pipelines.shards import OutputDir, ShardSpec

log = logging.getLogger(__name__)


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


def local_records(run: RunPlan, todo: Sequence[ShardSpec], device: str = "cpu", threads: int = 0,
                  actor_class: type[RenderActor] = RenderActor) -> Iterator[dict[str, np.ndarray]]:
    """The graph's records computed in this process, one source at a time, without Ray: the same
    stage functions in sequence, PNGs encoded in turn on this thread (the benchmark's bare loop,
    and the tests' reference); ``actor_class``: as ``render_pending``'s ``actor``."""
    decode, render = stage_settings(run, device, threads)
    actor = actor_class(run.checkpoint, render)
    for item in _items(run, todo):
        batch = decode_batch(as_batch(item), decode)
        for records in actor.source_records(batch, 0):
            yield encode_records(records, render.png_compression)


AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def quiet_auth_setup() -> Iterator[None]:
    """Ray's authentication set-up logs its errors only while a new local cluster starts. With ``RAY_AUTH_MODE`` unset,
    Ray warns on every start that it chose token authentication (a token made once in ~/.ray), a line that asks the
    user to decide what is already decided. Ray's choice stands, and so does a ``RAY_AUTH_MODE`` the user set."""
    setup = logging.getLogger(AUTH_SETUP_LOGGER)
    level = setup.level
    setup.setLevel(logging.ERROR)
    try:
        yield
    finally:
        setup.setLevel(level)


CONNECT_TIMEOUT_S = 10.0  # how long a cluster's head may take to accept a connection before --address is refused


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """RenderPoolError when nothing accepts a connection at a ``HOST:PORT`` address: Ray itself retries such an
    address without end. Other forms (``auto``, ``ray://...``) are left to Ray."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()  # [::1]:6379 too
    except OSError as error:
        raise RenderPoolError(f"--address {address}: no Ray cluster answers there ({error.strerror or error}); start one with "
                              "`ray start --head` on its head node and give that node's HOST:PORT") from None


@contextlib.contextmanager
def ray_cluster(address: str | None) -> Iterator[Any]:
    """Ray for the run: the session already started in this process, else a new local one
    (``address="local"``: a plain ``ray.init()`` would join any cluster running on the machine),
    or the cluster at ``address`` (``check_reachable`` first). A session started here is shut down at the end."""
    import ray

    if address is not None:
        check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    with quiet_auth_setup() if address is None else contextlib.nullcontext():
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
    try:
        with terminate_as_interrupt():
            yield ray
    finally:
        ray.shutdown()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `timeout`, `kill`) handled as Ctrl-C is: the calls in flight cancelled, the complete
    shards kept, one line. Ray's own handler (set by ``ray.init``) exits at once, past all of that."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def render_pending(run: RunPlan, out: OutputDir, todo: Sequence[ShardSpec], address: str | None, progress: bool,
                   actor: type[RenderActor]) -> tuple[ShardRouter, list[str]]:
    """Renders the pending shards ``todo`` on Ray and routes every record to its shard; returns the
    router (its closed shards) and the problems that leave shards for a restart. ``actor``: the
    render stage's class (tests pass a subclass that crashes or waits). Past ``max_lost_sources``
    lost sources the run stops: the sources not rendered then are reported by ``router.finish``."""
    router = ShardRouter(out, todo, run)
    cfg = run.cfg
    with ray_cluster(address) as ray:
        shape = pool_shape(cfg, ray.cluster_resources())
        threads = 0 if shape.gpus_per_actor else cfg.cpu_threads or default_cpu_threads(shape.actors)
        decode, render = stage_settings(run, "cuda" if shape.gpus_per_actor else "cpu", threads,
                                        png_threads(shape.actors * shape.gpus_per_actor, shape.cpus))  # fmt: skip
        total = sum(len(s.inputs) for s in todo) * run.rows_per_source
        bar = tqdm(total=total, unit="img", desc="synthesize", disable=not progress, dynamic_ncols=True)
        lost = 0
        try:
            stream = render_stream(_items(run, todo), shape, cfg, str(run.checkpoint), decode, render, actor)
            with contextlib.closing(stream):
                for item, outcome in stream:
                    if isinstance(outcome, Exception):
                        lost += 1
                        log.warning("%s: lost (%s)", item["source_id"], first_line(outcome) or type(outcome).__name__)
                        bar.update(run.rows_per_source)
                        if lost > cfg.max_lost_sources:
                            break
                        continue
                    for block in outcome:
                        rows, errors = router.add(block)
                        bar.update(rows + errors * run.rows_per_source)
                    bar.set_postfix(shards=len(router.closed), errors=len(router.failed), lost=lost, refresh=False)
            problems = router.finish(cfg.max_lost_sources)
            if router.dropped:
                log.info("%d repeated records were dropped", router.dropped)
        except BaseException:
            router.abort()
            raise
        finally:
            bar.close()
    return router, problems


__all__ = ["default_cpu_threads", "local_records", "png_threads", "quiet_auth_setup", "ray_cluster", "render_pending"]
