"""The record of a synthesis run, ``_manifest.json``'s content (pipelines/manifest.py reads and writes it;
pipelines/card.py describes it in the dataset card)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gazegen.config.synth import RANGE_AXES
from gazegen.data.schema import GAZEGEN_METADATA
from gazegen.pipelines.shards import sha256_text, utc_now
from gazegen.settings_diff import settings_differ

MANIFEST_FORMAT = "gazegen-synthesis-manifest"
VERSIONED = ("gazegen", "torch", "pyarrow", "numpy", "opencv-python-headless", "ray", "datasets")


def library_versions() -> dict[str, str]:
    """Versions of the installed libraries that shape the output (read without importing them)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _jsonable(value: Any) -> Any:
    """The value as it reads back from JSON (tuples -> lists, ...), so comparisons are fair."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unswept_ranges(settings: Mapping[str, Any]) -> set[str]:
    """The range keys of the axes a run's ``grid`` does not sweep (recorded, as typed, but shaping no row)."""
    swept = str(settings.get("grid", "")).split(",")
    return {key for key, axis in RANGE_AXES.items() if axis not in swept}


def changed_inputs(recorded: Mapping[str, Sequence[int]], now: Mapping[str, Sequence[int]]) -> list[str]:
    """The input files of both fingerprint maps (pipelines/sources.py ``file_fingerprints``) whose size or modification
    time differ, sorted."""
    return sorted(k for k in recorded.keys() & now.keys() if list(recorded[k]) != list(now[k]))


@dataclass(frozen=True)
class RunManifest:
    """The content of ``_manifest.json``."""

    inputs: tuple[str, ...]  # sorted input names
    checkpoint_hash: str  # one sha256 over config.json and model.safetensors (gazegen/checkpoint.py checkpoint_hash)
    settings: Mapping[str, Any]  # everything that changes the rows; JSON-normalised
    sources_per_shard: int
    command: tuple[str, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)
    status: str = "running"  # "running" until finalize, then "complete"
    created: str = ""
    finished: str = ""
    shards: tuple[Mapping[str, Any], ...] = ()  # per shard: name, rows, errors, bytes, sha256
    files: Mapping[str, Sequence[int]] = field(default_factory=dict)  # input file -> [size, mtime ns] (sources.py)

    @classmethod
    def create(
        cls,
        inputs: Sequence[str],
        checkpoint_hash: str,
        settings: Mapping[str, Any],
        sources_per_shard: int,
        command: Sequence[str] = (),
        files: Mapping[str, Sequence[int]] | None = None,
    ) -> RunManifest:
        """A new run's manifest: inputs sorted, settings normalised, versions and time recorded."""
        return cls(
            inputs=tuple(sorted(inputs)), checkpoint_hash=checkpoint_hash, settings=_jsonable(dict(settings)),
            sources_per_shard=sources_per_shard, command=tuple(command), versions=library_versions(), created=utc_now(),
            files=_jsonable(dict(files or {})),
        )  # fmt: skip

    @property
    def inputs_hash(self) -> str:
        return sha256_text(self.inputs)

    @property
    def rows(self) -> int:
        return sum(int(s["rows"]) for s in self.shards)

    @property
    def errors(self) -> int:
        return sum(int(s["errors"]) for s in self.shards)

    def to_json(self) -> str:
        data = asdict(self) | {"settings": dict(self.settings), "versions": dict(self.versions)}
        data["shards"] = [dict(s) for s in self.shards]
        inputs = {"count": len(self.inputs), "sha256": self.inputs_hash, "names": list(self.inputs), "files": dict(self.files)}
        head = {"format": MANIFEST_FORMAT, "version": 1, "inputs": inputs, "rows": self.rows, "errors": self.errors}
        rest = {k: v for k, v in data.items() if k not in ("inputs", "files")}
        return json.dumps(head | rest | {"schema": GAZEGEN_METADATA}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> RunManifest:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object but {type(data).__name__}")
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a gazegen manifest (format {data.get('format')!r})")
        if sha256_text(data["inputs"]["names"]) != data["inputs"]["sha256"]:
            raise ValueError("manifest inputs do not match their recorded checksum")
        names = {f.name for f in cls.__dataclass_fields__.values()} - {"inputs", "files"}
        kept = {k: v for k, v in data.items() if k in names}
        kept |= {"command": tuple(kept.get("command", ())), "shards": tuple(kept.get("shards", ()))}
        return cls(inputs=tuple(data["inputs"]["names"]), files=data["inputs"].get("files", {}), **kept)  # {}: older runs

    def differences(self, other: RunManifest) -> list[str]:
        """What makes ``other`` (a new run) a different run from this recorded one; [] if none."""
        found = []
        if self.inputs_hash != other.inputs_hash:
            old, new = set(self.inputs), set(other.inputs)
            added, removed = sorted(new - old), sorted(old - new)
            found.append(f"inputs differ: {len(added)} added {added[:3]}, {len(removed)} removed {removed[:3]}")
        changed_files = changed_inputs(self.files, other.files)
        if changed_files:
            found.append(f"inputs changed since the run started (size or modification time): {len(changed_files)} "
                         f"file(s) {changed_files[:3]}")
        if self.checkpoint_hash != other.checkpoint_hash:
            found.append(f"checkpoint differs: recorded {self.checkpoint_hash!r}, now {other.checkpoint_hash!r}")
        # sources_per_shard follows from the number of sources when there are fewer than a shard holds: with other
        # inputs, its change is theirs, not a setting the user changed
        same_inputs = self.inputs_hash == other.inputs_hash
        old_settings = _flatten(dict(self.settings)) | ({"sources_per_shard": self.sources_per_shard} if same_inputs else {})
        new_settings = _flatten(_jsonable(dict(other.settings))) | ({"sources_per_shard": other.sources_per_shard} if same_inputs else {})
        unswept = unswept_ranges(new_settings)  # no row of the new run depends on them; a grid that swept them differs
        return found + settings_differ(old_settings, new_settings, ignored=unswept, shown=5)
