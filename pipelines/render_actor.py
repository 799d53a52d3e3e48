"""The model stage of synthesis: one source in, all its grid rows out, PNG-encoded.

``SourceRenderer`` holds a LiveGaze and renders one source's grid the staged way: ``encode``
once, ``redirect`` once per gaze (``batch_size`` gazes per call), ``render`` each gaze's views
(``batch_size`` views per call; halved while the device runs out of memory). It knows nothing of
Ray; ``RenderActor`` wraps it as the class of the pool's Ray actors (pipelines/dispatch.py), and
the benchmark's bare loop uses it as is.

Labels (gazegen/geometry.py): for a source with head pose h and a view offset o the rendered
head pose is h + o, the camera ``head_pose_to_camera(h + o, normalisation)``, the gaze in the
camera ``gaze_head_to_camera(gaze_head, head_pose_to_rotation(h + o))``. Depth is z-depth in
world units times ``mm_per_world_unit(normalisation)``: millimetres of the normalised camera.
Every row of a source also carries h as ``source_head_pose`` and the source's ``face_mat_norm``
(its photo's camera -> its normalised camera; gazegen/data/schema.py).

Records are dicts of numpy arrays, one entry per output row or per failed source (``status``
"error", with ``stage`` and ``reason``; its arrays are zeros). ``RenderActor`` emits them with
their PNGs already encoded (``encode_records``): the rendered arrays never leave its process (an
object-store hop and a stage of CPU tasks fewer), and a thread encodes each batch of rows while
the model renders the next. A source's rows are rendered completely before the first is emitted,
so an exception on a source yields one error record and no rows (never a partial source), except
a device error (``torch.AcceleratorError``), which is the device's fault, not the source's: it
ends the process of a Ray actor (``RenderActor.records``), so that the source is retried on a
fresh device context, and is raised in the bare in-process loop.

Faults (a crash, a hang) are injected by the tests, which pass a subclass as synthesis's
``actor`` parameter; this module has no fault hook.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gazegen import geometry
from gazegen.allocator import keep_freed_memory
from gazegen.checkpoint import load_checkpoint
from gazegen.config import GridSpec, NormalisationConfig
from gazegen.data.images import from_model_range, to_model_range
from gazegen.data.schema import DEPTH_SCALE, LABEL_WIDTHS, depth_to_uint16, encode_alpha_png, encode_depth_png, encode_png
from gazegen.errors import first_line
from gazegen.models.livegaze import LiveGaze, LiveGazeOutput, SourceFeatures
from gazegen.models.staged_grid import staged_grid
from gazegen.pipelines.grid import plan_source, pose_problem, rendered_poses
from gazegen.pipelines.inputs import CARRIED

log = logging.getLogger(__name__)

BLOCK_BYTES = 64 * 2**20  # output rows per yielded block: about this many bytes of arrays
PNG_COLUMNS = ("image", "depth", "alpha")
DEVICE_FAILED = 70  # the exit status of an actor whose device failed (EX_SOFTWARE): Ray restarts it
# a device failure (an illegal memory access, a device-side assert): torch >= 2.8 raises AcceleratorError; older
# versions a plain RuntimeError, which stays the source's error row
DEVICE_ERRORS: tuple[type[Exception], ...] = tuple(getattr(torch, n) for n in ("AcceleratorError",) if hasattr(torch, n))

ChunkHook = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]  # (rows, image, depth, alpha) of a few rows


@dataclass(frozen=True)
class RenderSettings:
    spec: GridSpec
    normalisation: NormalisationConfig  # the model's normalised camera (SynthConfig)
    batch_size: int = 16  # gazes per redirect, views per render
    depth_min_alpha: float = 0.5  # depth 0 (no surface) where alpha is below
    depth_full_resolution: bool = True  # depth and alpha at the image's size (bilinear)
    checkpoint_hash: str = ""
    device: str = "cpu"
    threads: int = 0  # torch threads (0: leave torch's default)
    png_compression: int = 1  # zlib level of the PNGs
    png_threads: int = 1  # the actor's PNG-encoding threads
    precision: str = "fp32"  # SynthConfig.precision: fp32, or bf16 autocast around the model's calls


@dataclass(frozen=True)
class RenderedSource:
    """All rows of one source, in the plan's row order."""

    image: np.ndarray  # (R, S, S, 3) uint8 RGB
    depth: np.ndarray  # (R, D, D) uint16, depth_to_uint16 of millimetres
    alpha: np.ndarray  # (R, D, D) uint8, alpha * 255
    labels: dict[str, np.ndarray]  # LABEL_WIDTHS: (R, width) float32
    gaze_index: np.ndarray  # (R,) int32
    view_index: np.ndarray  # (R,) int32


class SourceRenderer:
    """A LiveGaze with the settings of a run; ``render`` turns one source into its rows."""

    def __init__(self, model: LiveGaze, settings: RenderSettings) -> None:
        self.model, self.settings = model.eval().requires_grad_(False), settings
        self.device = next(model.parameters()).device
        self.mm_per_unit = geometry.mm_per_world_unit(settings.normalisation)
        self.batch_size = settings.batch_size  # halved when the device runs out of memory, kept for the next sources

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, settings: RenderSettings) -> SourceRenderer:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        return cls(load_checkpoint(checkpoint, device=settings.device), settings)

    @torch.inference_mode()
    def render(self, source_id: str, image: np.ndarray, head_pose: np.ndarray, gaze_head: np.ndarray | None,
               face_mat_norm: np.ndarray, on_chunk: ChunkHook | None = None) -> RenderedSource:
        """image (S, S, 3) uint8 RGB, head pose (2,), gaze_head (2,) or None, face_mat_norm (3, 3) -> every grid row.

        ``on_chunk(rows, image, depth, alpha)``, if given, sees each batch of rows as soon as it is
        rendered (row indices, then the arrays of ``RenderedSource``): the actor encodes them meanwhile."""
        s = self.settings
        plan = plan_source(s.spec, source_id, gaze_head)
        problem = pose_problem(head_pose, (float(plan.views[:, 0].min()), float(plan.views[:, 0].max())))
        if problem:
            raise ValueError(problem)
        poses = rendered_poses(head_pose, plan.views)  # (V, 2) rendered head poses h + o, yaw wrapped
        cameras = geometry.head_pose_to_camera(poses, s.normalisation)  # (V, 25)
        gaze_of, view_of = plan.pairs[:, 0], plan.pairs[:, 1]
        gaze_head_rows = plan.gazes[gaze_of]  # (R, 2)
        labels = {
            "gaze": geometry.gaze_head_to_camera(gaze_head_rows, geometry.head_pose_to_rotation(poses[view_of])),
            "head_pose": poses[view_of], "gaze_head": gaze_head_rows, "view_offset": plan.views[view_of],
            "camera": cameras[view_of],
            "source_head_pose": np.broadcast_to(np.asarray(head_pose, np.float64), (len(view_of), 2)),
            "face_mat_norm": np.broadcast_to(np.asarray(face_mat_norm, np.float64).reshape(9), (len(view_of), 9)),
        }  # fmt: skip
        x = to_model_range(torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None])
        source_camera = geometry.head_pose_to_camera(np.asarray(head_pose, np.float64)[None], s.normalisation)  # (1, 25)
        gazes = torch.from_numpy(plan.gazes).float().to(self.device)  # (G, 2)
        cams = torch.from_numpy(cameras).float().to(self.device)  # (V, 25)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=s.precision == "bf16"):
            features = self.model.encode(x, torch.from_numpy(source_camera).float().to(self.device))  # once per source
            parts = self._rows(features, gazes, cams, gaze_of, view_of, on_chunk)
        order = np.argsort(np.concatenate([c for c, _ in parts]))
        image, depth, alpha = (np.concatenate([a[k] for _, a in parts])[order] for k in range(3))
        return RenderedSource(
            image=image, depth=depth, alpha=alpha, labels={k: np.asarray(v, np.float32) for k, v in labels.items()},
            gaze_index=gaze_of.astype(np.int32), view_index=view_of.astype(np.int32),
        )  # fmt: skip

    def _rows(self, features: SourceFeatures, gazes: torch.Tensor, cameras: torch.Tensor, gaze_of: np.ndarray,
              view_of: np.ndarray, on_chunk: ChunkHook | None) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
        """Every row (gaze_of[i], view_of[i]) as (row indices, arrays) chunks of ``batch_size`` rows.

        When the device runs out of memory (``torch.OutOfMemoryError``) the batch is halved, for
        this source and the next ones, and the rows are made again (``on_chunk`` then sees some rows
        twice, the later the ones kept); at batch 1 the error is the source's. A batch too large for
        the GPU would otherwise make every source an error row."""
        while True:
            try:
                return [self._chunk(chunk, out, on_chunk) for chunk, out in staged_grid(
                    self.model.redirect, self.model.render, features, gazes, cameras, gaze_of, view_of, self.batch_size)]
            except torch.OutOfMemoryError as error:
                if self.batch_size == 1:
                    raise
                log.warning("out of device memory at batch_size %d (%s): rendering at %d from now on",
                            self.batch_size, first_line(error), self.batch_size // 2)
                self.batch_size //= 2
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # the failed attempt's tensors are free once its exception is gone

    def _chunk(self, rows: np.ndarray, out: LiveGazeOutput, on_chunk: ChunkHook | None) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One render call's rows as arrays, shown to ``on_chunk`` first."""
        arrays = self._to_arrays(out.image, out.depth, out.alpha)
        if on_chunk is not None:
            on_chunk(rows, *arrays)
        return rows, arrays

    def _to_arrays(self, image: torch.Tensor, depth: torch.Tensor, alpha: torch.Tensor) -> tuple[np.ndarray, ...]:
        """(B, 3, S, S) [-1, 1], (B, 1, R, R) world units, (B, 1, R, R) -> uint8 / uint16 / uint8 arrays (from float32)."""
        image, depth, alpha = image.float(), depth.float(), alpha.float()  # bf16 under precision = "bf16"
        if self.settings.depth_full_resolution and depth.shape[-1] != image.shape[-1]:
            size = image.shape[-2:]
            depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False)
            alpha = F.interpolate(alpha, size=size, mode="bilinear", align_corners=False)
        alpha = alpha.clamp(0, 1)
        depth_mm = torch.where(alpha >= self.settings.depth_min_alpha, depth * self.mm_per_unit, torch.zeros_like(depth))
        rgb = from_model_range(image).permute(0, 2, 3, 1)  # (B, S, S, 3)
        alpha8 = (alpha * 255).round().to(torch.uint8)[:, 0]
        return rgb.cpu().numpy(), depth_to_uint16(depth_mm[:, 0].double().cpu().numpy()), alpha8.cpu().numpy()


# --------------------------------------------------------------------------- records


def error_record(meta: dict, stage: str, reason: str, image_side: int, depth_side: int) -> dict[str, np.ndarray]:
    """One failed source as a one-row record (zero arrays keep every block's columns alike)."""
    record = {k: np.array([v]) for k, v in meta.items()}
    record |= {"status": np.array(["error"]), "stage": np.array([stage]), "reason": np.array([reason])}
    record |= {k: np.zeros((1, w), np.float32) for k, w in LABEL_WIDTHS.items()}
    record |= {"gaze_index": np.zeros(1, np.int32), "view_index": np.zeros(1, np.int32)}
    record |= {"image": np.zeros((1, image_side, image_side, 3), np.uint8)}
    record |= {"depth": np.zeros((1, depth_side, depth_side), np.uint16), "alpha": np.zeros((1, depth_side, depth_side), np.uint8)}
    return record


def row_records(meta: dict, rows: RenderedSource) -> Iterator[dict[str, np.ndarray]]:
    """A source's rows as records, in blocks of about ``BLOCK_BYTES``."""
    n = len(rows.gaze_index)
    per_row = rows.image[0].nbytes + rows.depth[0].nbytes + rows.alpha[0].nbytes
    step = max(1, BLOCK_BYTES // per_row)
    for start in range(0, n, step):
        part = slice(start, min(n, start + step))
        m = part.stop - part.start
        record = {k: np.array([v] * m) for k, v in meta.items()}
        record |= {"status": np.array(["ok"] * m), "stage": np.array([""] * m), "reason": np.array([""] * m)}
        record |= {k: v[part] for k, v in rows.labels.items()}
        record |= {"gaze_index": rows.gaze_index[part], "view_index": rows.view_index[part]}
        record |= {"image": rows.image[part], "depth": rows.depth[part], "alpha": rows.alpha[part]}
        yield record


class RenderActor:
    """The render stage, a Ray actor (pipelines/dispatch.py): loads the checkpoint once, then renders sources one by one.

    Input batches hold decoded sources (one per call on Ray;
    ``CARRIED``, ``status``/``stage``/``reason``, ``image``, ``head_pose``, ``gaze_head``,
    ``gaze_known``, ``face_mat_norm``); outputs are the records above with their PNGs encoded,
    source after source. Threads (``png_threads``) encode each batch of rows as soon as it is
    rendered (OpenCV and zlib release the GIL), beside the model rendering the next batch.
    """

    def __init__(self, checkpoint: str, settings: RenderSettings) -> None:
        keep_freed_memory()  # the process renders from here on: its freed tensors are the next source's (gazegen/allocator.py)
        self.renderer = SourceRenderer.from_checkpoint(checkpoint, settings)
        cfg = self.renderer.model.cfg
        self.image_side = cfg.output_resolution
        self.depth_side = cfg.output_resolution if settings.depth_full_resolution else cfg.render.neural_resolution
        self.compression = settings.png_compression
        self.encoder = ThreadPoolExecutor(settings.png_threads, thread_name_prefix="png")  # threads start on the first rows

    def source_records(self, batch: dict[str, np.ndarray], i: int, on_chunk: ChunkHook | None = None) -> list[dict[str, np.ndarray]]:
        """Source ``i`` of ``batch`` as records of arrays (not yet encoded): its rows, or one error
        record; ``on_chunk``: ``SourceRenderer.render``'s."""
        meta = {k: batch[k][i] for k in CARRIED}
        if batch["status"][i] != "ok":
            return [error_record(meta, str(batch["stage"][i]), str(batch["reason"][i]), self.image_side, self.depth_side)]
        try:
            gaze = batch["gaze_head"][i] if batch["gaze_known"][i] else None
            rows = self.renderer.render(str(meta["source_id"]), batch["image"][i], batch["head_pose"][i], gaze,
                                        batch["face_mat_norm"][i], on_chunk)  # fmt: skip
        except DEVICE_ERRORS:
            raise  # the device failed, not the source: every later source would fail too (``records``)
        except Exception as error:  # one source's failure is an error row; the actor goes on
            log.exception("render failed for %s", meta["source_id"])
            return [error_record(meta, "render", f"{type(error).__name__}: {error}", self.image_side, self.depth_side)]
        return list(row_records(meta, rows))

    def records(self, batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Every record of ``batch``, PNGs encoded: the pool's actor method (pipelines/dispatch.py).

        A device error (``torch.AcceleratorError``: an illegal memory access, a device-side assert)
        leaves the CUDA context unusable, so every later source on this actor would become an error
        row. The worker exits instead: Ray restarts the actor on a fresh context and the source is
        made again, charged one death (a source that fails the device every time is lost)."""
        try:
            return list(self(batch))
        except DEVICE_ERRORS as error:
            log.critical("device error on %s (%s): the worker exits so that Ray restarts it", list(batch["source_id"]), error)
            os._exit(DEVICE_FAILED)

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(batch["source_id"])):
            chunks: list[tuple[np.ndarray, Future[tuple[np.ndarray, ...]]]] = []  # (rows, their PNGs being encoded)
            records = self.source_records(batch, i, partial(self._encode_soon, chunks))
            if records[0]["status"][0] != "ok":
                yield encode_records(records[0], self.compression)
                continue
            total = sum(len(record["source_id"]) for record in records)
            pngs = {k: np.empty(total, dtype=object) for k in PNG_COLUMNS}  # (R,) bytes, row order
            for rows, encoding in chunks:  # in the order rendered: rows made again after a halved batch come later
                for k, column in zip(PNG_COLUMNS, encoding.result()):
                    pngs[k][rows] = column
            start = 0
            for record in records:  # consecutive rows in row order
                stop = start + len(record["source_id"])
                yield record | {k: v[start:stop] for k, v in pngs.items()}
                start = stop

    def _encode_soon(self, chunks: list, rows: np.ndarray, image: np.ndarray, depth: np.ndarray, alpha: np.ndarray) -> None:
        """``SourceRenderer.render``'s ``on_chunk``: the rows' PNGs go to the encoding threads."""
        chunks.append((rows, self.encoder.submit(encode_pngs, image, depth, alpha, self.compression)))


def encode_pngs(image: np.ndarray, depth: np.ndarray, alpha: np.ndarray, compression: int = 1) -> tuple[np.ndarray, ...]:
    """(B, S, S, 3) uint8 RGB, (B, D, D) uint16 depth values, (B, D, D) uint8 alpha -> three (B,) object arrays of PNG bytes."""
    # the uint16 values go back to millimetres exactly (v / scale * scale rounds to v)
    return (
        np.array([encode_png(a, compression) for a in image], dtype=object),
        np.array([encode_depth_png(a / DEPTH_SCALE, compression) for a in depth.astype(np.float64)], dtype=object),
        np.array([encode_alpha_png(a, compression) for a in alpha], dtype=object),
    )


def encode_records(batch: dict[str, np.ndarray], compression: int = 1) -> dict[str, np.ndarray]:
    """Records with arrays -> records with PNG bytes in ``image``, ``depth``, ``alpha`` (b"" for errors)."""
    ok = batch["status"] == "ok"
    out = dict(batch)
    for k, pngs in zip(PNG_COLUMNS, encode_pngs(batch["image"][ok], batch["depth"][ok], batch["alpha"][ok], compression)):
        out[k] = np.full(len(ok), b"", dtype=object)
        out[k][ok] = pngs
    return out


__all__ = ["RenderActor", "RenderSettings", "RenderedSource", "SourceRenderer", "encode_pngs", "encode_records", "error_record",
           "row_records"]
