"""The driver's shard router: records from the Ray graph in, one ``ShardWriter`` per shard out.

Writing on the driver keeps every row of a shard in one writer without a shuffle, and makes
delivery idempotent: a row id seen twice (a retried batch) is dropped, so Ray's at-least-once
retries never duplicate rows (pipelines/synthesis.py tells the whole story).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from gazegen.pipelines.plan import RunPlan
from gazegen.data.schema import ROW_COLUMNS, row_id
from gazegen.pipelines.shards import OutputDir, ShardSpec, ShardStats, ShardWriter

ROW_INPUTS = tuple(c for c in ROW_COLUMNS if c not in ("row_id", "checkpoint_hash", "seed"))  # what the stages carry


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
                reason = f"lost: its worker died {self.run.cfg.max_task_retries + 1} times (decoding or rendering it; see the Ray logs)"
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


__all__ = ["ROW_INPUTS", "ShardRouter"]
