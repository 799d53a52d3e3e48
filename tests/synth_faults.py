"""Render-actor classes the synthesis tests pass as ``run_synthesis(actor=...)``: faults, and one that says who rendered.

The classes are made inside functions, so Ray's cloudpickle ships them by value to the workers
(nothing here has to be importable there). Production code has no fault hook.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from gazegen.pipelines.render_actor import RenderActor

GATE_LIMIT_S = 1800.0  # a gate never opened (a broken test) still lets the worker go eventually


def gated_actor(source_id: str, folder: str) -> type[RenderActor]:
    """Renders as usual, but a batch holding ``source_id`` first writes ``folder/waiting`` and waits
    (rendering nothing) until ``folder/release`` exists: the test decides when the run moves on."""

    class GatedActor(RenderActor):
        def __call__(self, batch):
            if source_id in {str(s) for s in batch["source_id"]}:
                Path(folder, "waiting").touch()
                deadline = time.monotonic() + GATE_LIMIT_S
                while not Path(folder, "release").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
            yield from super().__call__(batch)

    return GatedActor


def crash_once_actor(source_id: str, marker: str) -> type[RenderActor]:
    """Exits its process (like a segfault or an OOM kill: no exception, no clean-up) on the first
    batch holding ``source_id``, after creating ``marker``; while ``marker`` exists it renders."""

    class CrashOnceActor(RenderActor):
        def __call__(self, batch):
            if source_id in {str(s) for s in batch["source_id"]} and not os.path.exists(marker):
                Path(marker).touch()
                os._exit(1)
            yield from super().__call__(batch)

    return CrashOnceActor


def always_crash_actor(source_ids: set[str], folder: str) -> type[RenderActor]:
    """Exits its process on every call holding one of ``source_ids`` (sources that kill the worker
    each time), after creating ``folder/<source id>``: which sources reached an actor."""

    class AlwaysCrashActor(RenderActor):
        def __call__(self, batch):
            for source_id in {str(s) for s in batch["source_id"]} & source_ids:
                Path(folder, source_id).touch()
                os._exit(1)
            yield from super().__call__(batch)

    return AlwaysCrashActor


def pid_actor(folder: str) -> type[RenderActor]:
    """Renders as usual and creates ``folder/<its process id>``: which processes rendered."""

    class PidActor(RenderActor):
        def __call__(self, batch):
            Path(folder, str(os.getpid())).touch()
            yield from super().__call__(batch)

    return PidActor


def editing_actor(path: str) -> type[RenderActor]:
    """Renders as usual, and rewrites the input file ``path`` (another modification time) as it renders its first
    source: an input edited while the run reads it."""

    class EditingActor(RenderActor):
        def __call__(self, batch):
            stat = os.stat(path)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
            yield from super().__call__(batch)

    return EditingActor


def device_failure_actor(source_id: str, marker: str) -> type[RenderActor]:
    """Its device fails (``torch.AcceleratorError``, as CUDA raises an illegal memory access) inside
    the render of ``source_id``, after creating ``marker``; while ``marker`` exists it renders."""

    class DeviceFailureActor(RenderActor):
        def __init__(self, checkpoint, settings):
            super().__init__(checkpoint, settings)
            render = self.renderer.render

            def failing(source_id_: str, *args, **kwargs):
                if source_id_ == source_id and not os.path.exists(marker):
                    Path(marker).touch()
                    raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
                return render(source_id_, *args, **kwargs)

            self.renderer.render = failing

    return DeviceFailureActor


def broken_actor(message: str) -> type[RenderActor]:
    """Cannot start: its ``__init__`` raises RuntimeError(message) (a missing GPU, an unreadable checkpoint)."""

    class BrokenActor(RenderActor):
        def __init__(self, checkpoint, settings):
            raise RuntimeError(message)

    return BrokenActor
