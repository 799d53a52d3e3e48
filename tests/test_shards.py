"""Shards, schema and manifest of the synthesis output (gazegen/data/schema.py, pipelines/shards.py, manifest.py).

Rows carry fake images; every reader the dataset promises (pyarrow, polars, Hugging Face
datasets) reads them back; kills are simulated by leaving the files a kill would leave.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from gazegen.data import schema
from gazegen.pipelines.manifest import (
    ERRORS_NAME,
    IncompleteRunError,
    RunMismatchError,
    check_or_create,
    finalize,
    read_manifest,
)
from gazegen.pipelines.run_manifest import RunManifest
from gazegen.pipelines.shards import OutputDir, ShardSpec, ShardWriter, completed_shards, plan_shards

GAZES, VIEWS, SIZE = 2, 3, 16
INPUTS = [f"faces/img{i:02d}.png" for i in range(7)]


def source_id(path: str) -> str:
    return Path(path).stem


def fake_image(source: str, g: int, v: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{source}/{g}/{v}".encode()))
    return rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def fake_labels(source: str, g: int, v: int) -> dict[str, np.ndarray]:
    k = int(source_id(source)[-2:])
    base = np.array([0.01 * k + 0.1 * g, -0.02 * k + 0.05 * v], np.float32)
    view = np.array([0.1 * v, -0.1 * v], np.float32)
    return {"gaze": base, "head_pose": base / 3, "gaze_head": base * 2, "view_offset": view, "source_head_pose": base / 3 - view,
            "face_mat_norm": np.eye(3, dtype=np.float32).ravel()}


def fake_columns(inputs: tuple[str, ...]) -> dict[str, list]:
    cols: dict[str, list] = {name: [] for name in schema.ROW_COLUMNS if name != "row_id"}
    for path in inputs:
        for g in range(GAZES):
            for v in range(VIEWS):
                cols["image"].append(schema.encode_png(fake_image(path, g, v)))
                depth = np.full((SIZE, SIZE), 950.0 + g + v, np.float32)
                depth[0] = 0.0
                cols["depth"].append(schema.encode_depth_png(depth))
                cols["alpha"].append(schema.encode_alpha_png(depth > 0))
                for key, value in fake_labels(path, g, v).items():
                    cols[key].append(value)
                cols["camera"].append(np.arange(25, dtype=np.float32) * 0.1)
                cols["source_id"].append(source_id(path))
                cols["source_path"].append(path)
                cols["gaze_index"].append(g)
                cols["view_index"].append(v)
                cols["checkpoint_hash"].append("ab" * 32)
                cols["seed"].append(7)
    return cols


def write_shard(out: str | OutputDir, spec: ShardSpec) -> None:
    """What a worker does: render the sources of one shard (the last source of shard 1 fails)."""
    with ShardWriter(out, spec, row_group_size=4) as writer:
        for path in spec.inputs:
            if path == INPUTS[5]:
                writer.add_error(path, "ValueError: no face found", source_id=source_id(path), stage="crop")
                continue
            writer.write(schema.rows_table(fake_columns((path,))))


def run(out: str | OutputDir, n: int = 3, settings: dict | None = None, overwrite: bool = False) -> RunManifest:
    """The whole driver: check_or_create, skip complete shards, write the rest, finalize."""
    manifest = RunManifest.create(INPUTS, "ab" * 32, settings or {"grid": {"gazes": GAZES, "views": VIEWS}}, n, ["gazegen", "synthesize"])
    check_or_create(out, manifest, overwrite=overwrite)
    plan = plan_shards(INPUTS, n)
    for spec in completed_shards(out, plan).todo(plan):
        write_shard(out, spec)
    return finalize(out, plan, verify=True)


ROWS = (len(INPUTS) - 1) * GAZES * VIEWS


def test_features_json_is_what_datasets_writes():
    datasets = pytest.importorskip("datasets")
    assert schema.FEATURES["gaze"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 2, "_type": "Sequence"}
    features = datasets.Features.from_dict(schema.FEATURES)
    assert features.arrow_schema.equals(schema.ROW_SCHEMA, check_metadata=False)
    assert all(isinstance(features[name], datasets.Image) for name in ("image", "depth", "alpha"))
    assert datasets.Features.from_arrow_schema(schema.ROW_SCHEMA) == features


def test_png_round_trips():
    rgb = fake_image("x", 0, 0)
    assert np.array_equal(schema.decode_png(schema.encode_png(rgb)), rgb)  # RGB in, RGB out
    depth = np.random.default_rng(0).uniform(300.0, 1200.0, (SIZE, SIZE)).astype(np.float32)
    depth[0, :3] = [0.0, np.nan, -5.0]  # no surface
    back = schema.decode_depth_png(schema.encode_depth_png(depth))
    assert np.all(back[0, :3] == 0)
    assert np.abs(back[1:] - depth[1:]).max() <= 0.5 / schema.DEPTH_SCALE + 1e-4
    with pytest.raises(ValueError, match="uint8 RGB"):
        schema.encode_png(rgb.astype(np.float32))


def test_rows_table_checks_labels():
    cols = fake_columns(INPUTS[:1])
    table = schema.rows_table(cols)
    assert table.schema.equals(schema.ROW_SCHEMA) and table.num_rows == GAZES * VIEWS
    assert table.column("row_id")[0].as_py() == "img00-0000-0000"
    cols["gaze"][2] = np.array([np.nan, 0.0])
    with pytest.raises(ValueError, match="'gaze'"):
        schema.rows_table(cols)


def test_plan_is_deterministic_and_covers_inputs():
    plan = plan_shards(INPUTS, 3)
    assert plan == plan_shards(list(reversed(INPUTS)), 3) == plan_shards(sorted(INPUTS, key=hash), 3)
    assert [len(s.inputs) for s in plan] == [3, 3, 1] and [s.name for s in plan] == ["shard-00000", "shard-00001", "shard-00002"]
    assert sum((s.inputs for s in plan), ()) == tuple(sorted(INPUTS))
    assert plan[1].start == 3
    with pytest.raises(ValueError, match="more than once"):
        plan_shards(INPUTS + INPUTS[:1], 3)


def test_readers_agree(tmp_path):
    out = tmp_path / "out"
    final = run(str(out))
    assert final.status == "complete" and final.rows == ROWS and final.errors == 1
    glob = str(out / "shard-*.parquet")
    table = pq.read_table([str(p) for p in sorted(out.glob("shard-*.parquet"))])
    assert table.num_rows == ROWS and table.column("row_id").to_pylist() == sorted(table.column("row_id").to_pylist())
    frame = pl.read_parquet(glob)
    assert frame.height == ROWS and frame["row_id"].n_unique() == ROWS
    assert frame["gaze"].dtype == pl.Array(pl.Float32, 2)
    # Hugging Face datasets decodes the PNG structs as images and the labels as float32 pairs
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=glob, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.features["image"] == datasets.Image() and ds.features["gaze"].feature.dtype == "float32"
    for i in (0, 17, ROWS - 1):
        row = ds[i]
        source, g, v = row["source_path"], row["gaze_index"], row["view_index"]
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), fake_image(source, g, v))
        np.testing.assert_array_equal(np.float32(row["gaze"]), fake_labels(source, g, v)["gaze"])
        depth = np.asarray(row["depth"], dtype=np.float32) / schema.DEPTH_SCALE
        assert depth[0].max() == 0 and abs(depth[1:].mean() - (950 + g + v)) < 1e-3
    # the dataset card's YAML points the loader at the shards
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "radians" in card and "gazegen synthesize" in card
    by_card = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf2"))
    assert by_card.num_rows == ROWS and by_card.features["image"] == datasets.Image()


def test_errors_merged_with_reasons(tmp_path):
    run(str(tmp_path))
    errors = pq.read_table(tmp_path / ERRORS_NAME).to_pylist()
    assert errors == [{"shard_id": 1, "source_path": INPUTS[5], "source_id": "img05", "stage": "crop", "reason": "ValueError: no face found"}]
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [18, 12, 6] and manifest["errors"] == 1
    assert manifest["inputs"]["names"] == sorted(INPUTS) and "pyarrow" in manifest["versions"]


def test_resume_after_kill(tmp_path):
    out = OutputDir.from_uri(str(tmp_path))
    manifest = RunManifest.create(INPUTS, "ab" * 32, {"grid": {"gazes": GAZES, "views": VIEWS}}, 3)
    check_or_create(out, manifest)
    plan = plan_shards(INPUTS, 3)
    write_shard(out, plan[0])
    # shard 1: killed after its parquet was moved into place, before its stats
    write_shard(out, plan[1])
    (tmp_path / "shard-00001_stats.json").unlink()
    # shard 2: killed mid-write: a partial temporary file
    (tmp_path / "_tmp").mkdir(exist_ok=True)
    (tmp_path / "_tmp" / "shard-00002.parquet.deadbeef").write_bytes(b"PAR1 partial")
    scan = completed_shards(out, plan)
    assert set(scan.complete) == {0} and [s.shard_id for s in scan.todo(plan)] == [1, 2]
    assert sorted(p.name for p in tmp_path.glob("shard-*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]
    with pytest.raises(IncompleteRunError, match="shard-00001"):
        finalize(out, plan)
    before = (tmp_path / "shard-00000.parquet").stat().st_mtime_ns
    final = run(str(tmp_path))  # the same command again
    assert (tmp_path / "shard-00000.parquet").stat().st_mtime_ns == before  # complete shard skipped
    ids = pl.read_parquet(str(tmp_path / "shard-*.parquet"))["row_id"]
    assert len(ids) == ROWS == final.rows and ids.n_unique() == ROWS
    assert not (tmp_path / "_tmp").exists()


def test_truncated_or_inconsistent_stats_do_not_count(tmp_path):
    run(str(tmp_path))
    plan = plan_shards(INPUTS, 3)
    stats = tmp_path / "shard-00001_stats.json"
    stats.write_text(stats.read_text()[:40])  # truncated
    (tmp_path / "shard-00002.parquet").write_bytes(b"garbage")  # parquet replaced: size differs
    scan = completed_shards(str(tmp_path), plan)
    assert set(scan.complete) == {0}
    assert "invalid stats" in scan.invalid["shard-00001_stats.json"] and "bytes" in scan.invalid["shard-00002_stats.json"]
    assert run(str(tmp_path)).rows == ROWS


def test_checksum_verification(tmp_path):
    run(str(tmp_path))
    path = tmp_path / "shard-00000.parquet"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    assert 0 in completed_shards(str(tmp_path)).complete
    assert "checksum" in completed_shards(str(tmp_path), verify=True).invalid["shard-00000_stats.json"]


def test_restart_with_other_run_refuses(tmp_path):
    out = str(tmp_path)
    run(out)
    other = RunManifest.create(INPUTS[:-1] + ["faces/new.png"], "cd" * 32, {"grid": {"gazes": 5, "views": VIEWS}}, 4)
    with pytest.raises(RunMismatchError) as refusal:
        check_or_create(out, other)
    message = str(refusal.value)
    assert "inputs differ: 1 added ['faces/new.png'], 1 removed ['faces/img06.png']" in message
    assert "checkpoint differs" in message and "grid.gazes: 2 -> 5" in message and "--overwrite" in message
    assert "sources_per_shard" not in message  # 3 -> 4 here: it follows from the inputs, which the message names
    with pytest.raises(RunMismatchError, match="sources_per_shard: 3 -> 4"):
        run(out, n=4)
    final = run(out, n=4, settings={"grid": {"gazes": GAZES, "views": VIEWS}}, overwrite=True)
    assert final.sources_per_shard == 4 and len(final.shards) == 2
    assert sorted(p.name for p in tmp_path.glob("shard-*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert read_manifest(out).sources_per_shard == 4


def test_shards_without_manifest_refuse(tmp_path):
    (tmp_path / "shard-00000.parquet").write_bytes(b"x")
    with pytest.raises(RunMismatchError, match="no _manifest.json"):
        run(str(tmp_path))
    assert run(str(tmp_path), overwrite=True).rows == ROWS


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "null"])
def test_an_unreadable_manifest_is_named_with_the_way_out(tmp_path, text):
    """Valid JSON that is no object once failed as "AttributeError: 'list' object has no attribute 'get'"."""
    (tmp_path / "_manifest.json").write_text(text)
    with pytest.raises(RunMismatchError, match=r"unreadable _manifest.json \(.+\); pass --overwrite to start afresh"):
        run(str(tmp_path))
    assert run(str(tmp_path), overwrite=True).rows == ROWS


def test_writer_aborts_on_exception_and_rejects_duplicates(tmp_path):
    spec = plan_shards(INPUTS, 3)[0]
    with pytest.raises(ValueError, match="written twice"):
        with ShardWriter(str(tmp_path), spec) as writer:
            writer.write(fake_columns(spec.inputs[:1]))
            writer.write(fake_columns(spec.inputs[:1]))
    assert not list(tmp_path.glob("shard-*")) and not list((tmp_path / "_tmp").iterdir())


@pytest.mark.parametrize("kind", ["file_uri", "subtree", "mock"])
def test_pyarrow_filesystems(tmp_path, kind):
    if kind == "file_uri":
        out: str | OutputDir = tmp_path.as_uri() + "/out"
    elif kind == "subtree":
        out = OutputDir(pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "")
    else:
        out = OutputDir.from_uri("mock:///bucket/out")  # each from_uri makes a new, empty mock
    final = run(out)
    assert final.rows == ROWS
    target = OutputDir.from_uri(out)
    assert target.list("shard-*.parquet") == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    table = pq.read_table(target.path("shard-00001.parquet"), filesystem=target.fs)
    assert table.num_rows == 12 and table.schema.metadata[b"huggingface"]
    assert run(out).rows == ROWS  # a finished run restarted finalizes again


def test_real_kill_then_restart(tmp_path):
    """kill -9 a writing process mid-shard, run the same command again: every row exactly once.

    No race: the child parks itself (sleeps until killed) when it encodes a row while shard 0 is complete and
    shard 1 is open, so the state the test kills in lasts until the kill, however loaded the machine.
    """
    out = tmp_path / "out"
    parked = (
        "import sys, threading; from pathlib import Path; sys.path.insert(0, 'tests'); import test_shards as t; "
        f"out = Path({str(out)!r}); encode = t.schema.encode_png; "
        "mid_shard = lambda: (out / 'shard-00000_stats.json').exists() and any((out / '_tmp').glob('shard-00001.parquet.*')); "
        "park = lambda: threading.Event().wait(); "  # blocks until the kill
        "t.schema.encode_png = lambda a: park() if mid_shard() else encode(a); "
        "t.run(str(out))"
    )
    process = subprocess.Popen([sys.executable, "-c", parked], cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 300  # a hang guard only: the child waits at the kill point
        while not ((out / "shard-00000_stats.json").exists() and any((out / "_tmp").glob("shard-00001.parquet.*"))):
            assert process.poll() is None and time.monotonic() < deadline, "writer ended before it could be killed"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "shard-00001_stats.json").exists()
    final = run(str(out))
    ids = pl.read_parquet(str(out / "shard-*.parquet"))["row_id"]
    assert len(ids) == ids.n_unique() == ROWS == final.rows


def test_finalize_verify_finds_row_ids_repeated_across_shards(tmp_path):
    inputs = ["a/img00.png", "b/img00.png"]  # two inputs whose file stems (source ids) collide
    check_or_create(str(tmp_path), RunManifest.create(inputs, "ab" * 32, {}, 1))
    plan = plan_shards(inputs, 1)
    for spec in plan:
        with ShardWriter(str(tmp_path), spec) as writer:
            writer.write(fake_columns(spec.inputs))
    assert finalize(str(tmp_path), plan).rows == 2 * GAZES * VIEWS  # without verify: not checked
    with pytest.raises(IncompleteRunError, match="6 duplicate row ids"):
        finalize(str(tmp_path), plan, verify=True)


def test_ranges_of_axes_the_grid_does_not_sweep_are_no_difference():
    """They shape no row: two runs of the same gaze-only grid whose view ranges differ (a preset's, say) are one run, and
    a run refused for another grid does not also list the view ranges the new grid ignores."""
    gaze_only = {"grid": "pitch,yaw", "pitch": "-30:30:5", "yaw": "-40:40:5", "view_pitch": "0:0:1", "view_yaw": "-30:30:5"}
    recorded = RunManifest.create(INPUTS, "ab" * 32, gaze_only, 3)
    assert recorded.differences(RunManifest.create(INPUTS, "ab" * 32, gaze_only | {"view_yaw": "-10:10:3"}, 3)) == []
    swept = RunManifest.create(INPUTS, "ab" * 32, gaze_only | {"grid": "pitch,yaw,view", "view_yaw": "-30:30:2"}, 3)
    [difference] = swept.differences(recorded)
    assert difference == "settings differ (1): grid: 'pitch,yaw,view' -> 'pitch,yaw'"
    assert recorded.differences(RunManifest.create(INPUTS, "ab" * 32, gaze_only | {"pitch": "-20:20:5"}, 3)) == [
        "settings differ (1): pitch: '-30:30:5' -> '-20:20:5'"]
