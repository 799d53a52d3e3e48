"""How two runs' recorded settings differ, as one line a refusal to resume can show (the synthesis manifest,
pipelines/run_manifest.py; the export state, gazegen/data/export.py)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


def settings_differ(old: Mapping[str, Any], new: Mapping[str, Any], *, ignored: Collection[str] = (),
                    shown: int | None = None) -> list[str]:
    """``["settings differ (N): key: old -> new, ..."]`` for the keys of two flat settings mappings whose values differ
    (a key one lacks reads ``<unset>``), sorted, the first ``shown`` of them (None: all); [] when none does. Keys in
    ``ignored`` are not compared."""
    changed = [k for k in sorted(old.keys() | new.keys()) if k not in ignored and old.get(k) != new.get(k)]
    if not changed:
        return []
    listed = ", ".join(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in changed[:shown])
    return [f"settings differ ({len(changed)}): {listed}"]
