"""The torch reader of synthesized shards (gazegen/data/parquet.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gazegen.data.parquet import GazeParquetDataset, resolve_shards
from gazegen.data import schema
from gazegen.pipelines.shards import ShardWriter, plan_shards

SIZE = 8


def image_of(k: int) -> np.ndarray:
    return np.random.default_rng(k).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def gaze_of(k: int) -> np.ndarray:
    return np.array([0.001 * k, -0.002 * k], np.float32)


def write_shards(out: Path, sources: int, per_shard: int, views: int = 5) -> list[str]:
    """Shards with ``sources * views`` rows; row k (in id order) has image_of(k), gaze_of(k)."""
    inputs = [f"src{i:03d}" for i in range(sources)]
    ids = []
    for spec in plan_shards(inputs, per_shard):
        with ShardWriter(str(out), spec, row_group_size=4) as writer:
            for source in spec.inputs:
                ks = [int(source[3:]) * views + v for v in range(views)]
                depth = np.full((SIZE, SIZE), 900.0, np.float32)
                depth[:, :2] = 0.0
                writer.write({
                    "image": [schema.encode_png(image_of(k)) for k in ks],
                    "depth": [schema.encode_depth_png(np.where(depth > 0, depth + 0.25 * k, 0)) for k in ks],
                    "alpha": [schema.encode_alpha_png(depth > 0)] * views,
                    "gaze": np.stack([gaze_of(k) for k in ks]),
                    "head_pose": np.stack([gaze_of(k) / 2 for k in ks]),
                    "gaze_head": np.stack([-gaze_of(k) for k in ks]),
                    "view_offset": np.zeros((views, 2)),
                    "source_head_pose": np.stack([gaze_of(k) / 2 for k in ks]),
                    "face_mat_norm": np.tile(np.eye(3).ravel(), (views, 1)),
                    "camera": np.tile(np.arange(25.0), (views, 1)),
                    "source_id": [source] * views, "source_path": [f"/data/{source}.png"] * views,
                    "gaze_index": [0] * views, "view_index": list(range(views)),
                    "checkpoint_hash": ["0" * 64] * views, "seed": [0] * views,
                })  # fmt: skip
                ids += [schema.row_id(source, 0, v) for v in range(views)]
    return ids


def key(row_id: str) -> int:
    source, _, view = row_id.split("-")
    return int(source[3:]) * 5 + int(view)


def test_items_decode_to_the_written_values(tmp_path):
    write_shards(tmp_path, sources=3, per_shard=2)
    items = list(GazeParquetDataset(str(tmp_path), depth=True, alpha=True))
    assert len(items) == 15
    for item in items:
        k = key(item["row_id"])
        image = item["image"]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1
        expected = torch.from_numpy(image_of(k)).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(image, expected)
        assert item["gaze"].dtype == torch.float32 and torch.equal(item["gaze"], torch.from_numpy(gaze_of(k)))
        assert torch.equal(item["gaze_head"], -item["gaze"]) and item["camera"].shape == (25,)
        depth = item["depth"]
        assert depth.shape == (1, SIZE, SIZE) and torch.all(depth[..., :2] == 0)
        assert torch.allclose(depth[..., 2:], torch.tensor(900.0 + 0.25 * k), atol=0.5 / schema.DEPTH_SCALE)
        assert torch.equal(item["alpha"][..., 2:], torch.ones(1, SIZE, SIZE - 2)) and item["alpha"][..., :2].sum() == 0
    raw = next(iter(GazeParquetDataset(str(tmp_path), uint8=True)))
    assert raw["image"].dtype == torch.uint8
    assert torch.equal(raw["image"], torch.from_numpy(image_of(key(raw["row_id"]))).permute(2, 0, 1))


@pytest.mark.parametrize("sources,per_shard", [(6, 2), (4, 4)])  # 3 shards; 1 shard of 5 row groups
def test_two_workers_yield_every_row_once(tmp_path, sources, per_shard):
    ids = write_shards(tmp_path, sources, per_shard)
    dataset = GazeParquetDataset(str(tmp_path / "shard-*.parquet"))
    assert dataset.num_rows == len(ids)
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    seen = [row_id for batch in loader for row_id in batch["row_id"]]
    assert Counter(seen) == Counter(ids)


def test_ranks_partition_the_rows(tmp_path):
    """25 rows over 3 processes: 8 each, none twice; the 25 % 3 = 1 left out is the last of the epoch's order."""
    ids = write_shards(tmp_path, sources=5, per_shard=1)
    per_rank = [[item["row_id"] for item in GazeParquetDataset(str(tmp_path), rank=rank, world_size=3)] for rank in range(3)]
    assert [len(rows) for rows in per_rank] == [8, 8, 8]
    seen = [row for rows in per_rank for row in rows]
    assert len(set(seen)) == 24 and set(ids) - set(seen) == {sorted(ids)[-1]}


@pytest.mark.parametrize("world_size,workers", [(2, 2), (4, 2), (8, 0), (3, 1)])
def test_every_ddp_process_runs_the_same_batches(tmp_path, world_size, workers):
    """DDP hangs when one process runs out of batches before the others: six shards of 10 rows (row groups of 4), dealt
    by file to rank * workers + worker, once gave 2 ranks 40 and 20 rows, 4 ranks 20, 20, 20 and 0. Now every process
    yields num_rows // world_size rows in as many batches, whatever its DataLoader workers, and no row twice."""
    write_shards(tmp_path, sources=12, per_shard=2)  # 6 shards, 60 rows
    counts, seen = [], []
    for rank in range(world_size):
        dataset = GazeParquetDataset(str(tmp_path), rank=rank, world_size=world_size, shuffle_buffer=5, seed=3)
        batches = [batch["row_id"] for batch in DataLoader(dataset, batch_size=3, num_workers=workers)]
        counts.append((len(batches), sum(len(b) for b in batches)))
        seen += [row for b in batches for row in b]
        assert dataset.rows_per_epoch == 60 // world_size
    assert counts == [counts[0]] * world_size and counts[0][1] == 60 // world_size
    assert len(seen) == len(set(seen))


def test_a_damaged_or_foreign_shard_is_named(tmp_path):
    """A truncated shard and a Parquet file without gazegen's columns are named when the dataset is made (they once
    failed mid-epoch inside a worker with pyarrow's bare error); an image that does not decode is named with its row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gazegen.data.parquet import ShardError

    write_shards(tmp_path, sources=2, per_shard=1)
    first, second = tmp_path / "shard-00000.parquet", tmp_path / "shard-00001.parquet"
    whole = first.read_bytes()
    first.write_bytes(whole[:200])
    with pytest.raises(ShardError, match=f"^{re.escape(str(first))}: cannot be read as Parquet"):
        GazeParquetDataset(str(tmp_path))
    pq.write_table(pa.table({"x": [1, 2]}), first)
    with pytest.raises(ShardError, match=f"^{re.escape(str(first))}: not a gazegen shard: no image, gaze, "):
        GazeParquetDataset(str(tmp_path))
    table = pq.read_table(second)
    broken = pa.array([{"bytes": b"not a png", "path": None}] * table.num_rows, table.schema.field("image").type)
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", broken), first)
    with pytest.raises(ShardError, match=f"^{re.escape(str(first))}: row src001-0000-0000: "):
        list(GazeParquetDataset(str(tmp_path)))


def test_the_shuffle_buffer_holds_png_bytes_and_rows_decode_as_they_leave_it(tmp_path, monkeypatch):
    """A buffer of decoded float images cost ~400 MB per worker at 128 px and the README's 2048 rows; it holds the PNG
    bytes now: the first item of a 10-row buffer has decoded one image, not eleven."""
    from gazegen.data import parquet

    write_shards(tmp_path, sources=6, per_shard=2)
    decoded = []
    monkeypatch.setattr(parquet, "decode_png", lambda data: decoded.append(data) or schema.decode_png(data))
    first = next(iter(GazeParquetDataset(str(tmp_path), shuffle_buffer=10, seed=0)))
    assert len(decoded) == 1 and torch.equal(first["image"], GazeParquetDataset(str(tmp_path))._image(decoded[0]))


def test_shuffle_is_seeded(tmp_path):
    ids = write_shards(tmp_path, sources=6, per_shard=2)

    def order(seed: int, epoch: int = 0) -> list[str]:
        dataset = GazeParquetDataset(str(tmp_path), shuffle_buffer=8, seed=seed)
        dataset.set_epoch(epoch)
        return [item["row_id"] for item in dataset]

    first = order(1)
    assert sorted(first) == sorted(ids) and first != ids
    assert order(1) == first and order(2) != first and order(1, epoch=1) != first


def test_resolve_shards_sources(tmp_path, monkeypatch):
    write_shards(tmp_path, sources=3, per_shard=1)
    (tmp_path / "_errors").mkdir(exist_ok=True)
    expected = [str(tmp_path / f"shard-{i:05d}.parquet") for i in range(3)]
    assert resolve_shards(str(tmp_path))[1] == expected  # stats, errors, _tmp are not shards
    assert resolve_shards(str(tmp_path / "shard-*.parquet"))[1] == expected
    assert resolve_shards(list(reversed(expected)))[1] == expected
    assert resolve_shards(tmp_path.as_uri())[1] == expected
    assert resolve_shards([Path(p).as_uri() for p in expected])[1] == expected  # every URI of a list (the second failed)
    assert resolve_shards(tmp_path)[1] == expected and resolve_shards([Path(p) for p in expected])[1] == expected  # PathLike
    monkeypatch.setenv("HOME", str(tmp_path.parent))
    assert resolve_shards(f"~/{tmp_path.name}")[1] == expected
    with pytest.raises(FileNotFoundError, match="no shards found"):
        resolve_shards(str(tmp_path / "nothing-*.parquet"))
    missing = str(tmp_path / "gone")  # named as given, whatever the item
    for item, why in ((missing, "no such file or folder"), (f"{missing}/shard-*.parquet", f"no such folder {missing}"),
                      ([expected[0], f"{missing}/shard-00000.parquet"], "no such file or folder")):
        target = item[-1] if isinstance(item, list) else item
        with pytest.raises(FileNotFoundError, match=f"^{re.escape(target)}: {re.escape(why)}$"):
            resolve_shards(item)


def test_reader_imports_neither_ray_nor_pipelines():
    code = "import sys, gazegen.data.parquet; bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'pipelines')]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shard_sheet_shows_the_rows_with_their_gaze(tmp_path):
    from gazegen.data.inspect import write_shard_sheet

    write_shards(tmp_path / "out", sources=2, per_shard=1, views=3)  # 6 rows over 2 shards
    png = write_shard_sheet(tmp_path / "out", tmp_path / "sheet.png", rows=4, columns=3, thumb=32)
    sheet = cv2.imread(str(png))
    assert sheet.shape == (64, 96, 3)  # 4 tiles padded to 2 lines of 3
    assert (sheet[32:, 64:] == 0).all() and sheet[:32, :32].any()  # the padding tile is empty, the first is not
    with pytest.raises(FileNotFoundError, match="empty"):
        write_shard_sheet(tmp_path / "empty", tmp_path / "x.png")


def test_shard_sheet_spreads_its_rows_over_the_whole_run(tmp_path):
    """3 tiles of a 12-row run (4 sources x 3 views over 2 shards, row groups of 4): rows 0, 6 (np.round(5.5) is 6)
    and 11, read from the first and the last source: each tile's corner is that row's image."""
    from gazegen.data.inspect import write_shard_sheet

    write_shards(tmp_path / "out", sources=4, per_shard=2, views=3)
    png = write_shard_sheet(tmp_path / "out", tmp_path / "sheet.png", rows=3, columns=3, thumb=SIZE)
    sheet = cv2.imread(str(png))
    assert sheet.shape == (SIZE, 3 * SIZE, 3)
    for tile, k in enumerate((0, 6, 11)):
        expected = cv2.cvtColor(image_of(k), cv2.COLOR_RGB2BGR)
        np.testing.assert_array_equal(sheet[0, tile * SIZE], expected[0, 0])  # the top-left pixel: no arrow, no caption


def test_read_rows_reads_the_rows_asked_for_across_row_groups(tmp_path):
    """Rows 0, 3, 4 and 11 of a file in row groups of 4 (groups 0, 1 and 2): returned in that order, group 2's
    row read without its neighbours'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gazegen.data.parquet import read_rows

    pq.write_table(pa.table({"k": list(range(12)), "x": [10 * i for i in range(12)]}), tmp_path / "t.parquet", row_group_size=4)
    with pq.ParquetFile(tmp_path / "t.parquet") as file:
        assert read_rows(file, [0, 3, 4, 11], ["x"]).to_pydict() == {"x": [0, 30, 40, 110]}
        assert read_rows(file, [], ["x"]).num_rows == 0
