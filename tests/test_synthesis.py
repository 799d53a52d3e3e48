"""`gazegen synthesize` end to end on the tiny preset: rows, labels, errors, readers, faults.

Ray tests share the session's local Ray (``ray_session``); the kill test runs the pipeline in a
second driver process joined to that cluster (``address=``, as ``--address`` does), holds it at a
batch of its choosing (an injected gated actor, tests/synth_faults.py) and SIGKILLs it there, then
runs the same command again with an actor that dies once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from gazegen import geometry
from gazegen.checkpoint import CheckpointError, load_checkpoint, save_pretrained
from gazegen.config import (CONFIG_DIR, PUBLISHED_NORMALISATIONS, ConfigError, ModelConfig, NormalisationConfig, load_config,
                            load_synth_config)
from gazegen.data.parquet import gaze_in_photo
from gazegen.data.schema import LABEL_WIDTHS, decode_alpha_png, decode_depth_png, decode_png
from gazegen.data.sample import Sample
from gazegen.data.store import SubjectWriter
from gazegen.models.livegaze import LiveGaze
from gazegen.pipelines.inputs import DecodeSettings, decode_sources, renormalise
from gazegen.pipelines.sources import list_sources
from gazegen.pipelines.manifest import ERRORS_NAME, RunMismatchError, read_manifest
from gazegen.pipelines.render_actor import RenderedSource, encode_records, row_records
from gazegen.pipelines.shards import OutputDir
from gazegen.pipelines.dispatch import PoolShape, RenderPoolError, pool_shape
from gazegen.pipelines.graph import default_cpu_threads, local_records
from gazegen.pipelines.plan import plan_run
from gazegen.pipelines.router import ShardRouter
from gazegen.pipelines.synthesis import IncompleteShardsError, run_synthesis
from synth_faults import GATE_LIMIT_S, always_crash_actor, broken_actor, crash_once_actor, device_failure_actor, editing_actor, pid_actor

ROOT = Path(__file__).resolve().parents[1]
PITCH, YAW, VIEW_YAW = "-10:10:2", "-20:20:2", "-15:15:2"  # the 2 x 2 x 2 grid
GRID = {"grid": "pitch,yaw,view", "pitch": PITCH, "yaw": YAW, "view_pitch": "0:0:1", "view_yaw": VIEW_YAW}
SETTINGS = ["depth_min_alpha=0.0", "cpu_threads=1",  # depth everywhere (a random model is half transparent)
            "crop=never"]  # noise images stand for normalised crops
NORM = PUBLISHED_NORMALISATIONS["livegaze512"].at_resolution(64)  # the default, at tiny's output size


def noise_png(path: Path, seed: int, shape: tuple[int, int] = (64, 64)) -> None:
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml"))
    return save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny", model, normalisation=PUBLISHED_NORMALISATIONS["livegaze512"])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A square 64 px crop (noise, passed through: --crop never), a corrupt file, an image that is not square."""
    folder = tmp_path_factory.mktemp("photos")
    noise_png(folder / "crop.png", 1)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    cv2.imwrite(str(folder / "landscape.png"), np.full((60, 90, 3), 128, np.uint8))
    return folder


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faces")
    for i in range(10):
        noise_png(folder / f"f{i:02d}.png", 100 + i)
    return folder


@pytest.fixture(scope="module")
def first_run(ray_session, checkpoint, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    result = run_synthesis(checkpoint, photos, str(out), load_synth_config(None, SETTINGS, rows_per_shard=8, **GRID), progress=False)
    return out, result


def read_all(out: Path) -> pa.Table:
    """Every row of a run, sorted by row id."""
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("shard-*.parquet"))).sort_by("row_id")


# --------------------------------------------------------------------------- inputs (no Ray)


def test_inputs_listing_ids_and_reading(tmp_path):
    folder = tmp_path / "in"
    (folder / "store").mkdir(parents=True)
    noise_png(folder / "a.png", 0)
    source = NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=32)  # another camera than the model's
    poses = np.array([[0.1, -0.2], [0.0, 0.3]], np.float32)
    with SubjectWriter(folder / "store" / "subject0000.h5", source, "subject0000") as writer:
        writer.write(
            Sample(image=np.full((32, 32, 3), 200, np.uint8), gaze=np.zeros(2, np.float32), head_pose=p,
                   gaze_head=np.array([0.05, 0.1], np.float32), camera=geometry.head_pose_to_camera(p.astype(np.float64), source).astype(np.float32),
                   normalisation=source, subject="subject0000", frame_index=i)
            for i, p in enumerate(poses)
        )  # fmt: skip
    (folder / "store" / "broken.h5").write_bytes(b"not hdf5")
    ok, png = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))
    pq.write_table(pa.table({"image": [{"bytes": png.tobytes(), "path": None}, {"bytes": b"junk", "path": None}],
                             "head_pose": [[0.2, 0.1], [0.0, 0.0]]}), folder / "table.parquet")  # fmt: skip
    (folder / "notes.txt").write_text("skipped")

    records = list_sources(folder)
    ids = [r.source_id for r in records]
    assert ids == ["a.png", "store/broken.h5", "store/subject0000.h5#000000", "store/subject0000.h5#000001",
                   "table.parquet#000000", "table.parquet#000001"]  # fmt: skip
    globbed = [r.source_id for r in list_sources(str(folder / "store" / "*.h5"))]  # root: the glob's folder
    assert globbed == [i.removeprefix("store/") for i in ids[1:4]]

    decoded = decode_sources(records, DecodeSettings(64, NORM, "never"))  # a.png: noise as a normalised crop
    assert [d.ok for d in decoded] == [True, False, True, True, True, False]
    assert decoded[1].stage == "list" and decoded[1].reason
    assert decoded[5].stage == "decode"
    np.testing.assert_allclose(decoded[3].head_pose, poses[1], atol=1e-6)
    np.testing.assert_allclose(decoded[2].gaze_head, [0.05, 0.1], atol=1e-6)
    np.testing.assert_allclose(decoded[4].head_pose, [0.2, 0.1], atol=1e-6)
    assert decoded[4].gaze_head is None
    assert decoded[0].gaze_head is None and (decoded[0].head_pose == 0).all()
    assert all(d.image.shape == (64, 64, 3) for d in decoded if d.ok)
    # the 32 px ETH-XGaze-like patch is framed ~2.2x tighter than LiveGaze's: re-zoomed, black around
    assert decoded[2].image[32, 32].tolist() == [200, 200, 200] and decoded[2].image[0, 0].tolist() == [0, 0, 0]


def test_renormalise_is_a_zoom_about_the_principal_point():
    source = NormalisationConfig(focal=1600.0, distance_mm=950.0, resolution=64)
    target = NormalisationConfig(focal=3200.0, distance_mm=475.0, resolution=128)  # zoom 2 in image fractions
    image = np.zeros((64, 64, 3), np.uint8)
    image[36, 40] = 255  # (u, v) = (40, 36): (8, 4) px from the principal point (W / 2, H / 2)
    out = renormalise(image, source, target).max(axis=2)
    v, u = np.unravel_index(np.argmax(out), out.shape)
    assert (abs(u - (64 + 4 * 8)) <= 1) and (abs(v - (64 + 4 * 4)) <= 1)  # 4 = zoom 2 x size 128 / 64
    same = NormalisationConfig(focal=3200.0, distance_mm=950.0, resolution=128)  # the same camera at 128 px
    assert renormalise(image, source, same).shape == (128, 128, 3)
    np.testing.assert_array_equal(renormalise(image, source, same), cv2.resize(image, (128, 128), interpolation=cv2.INTER_CUBIC))


def test_pool_shape_one_actor_per_gpu_or_cpu_actors_with_a_cpu_left_for_decoding():
    cfg = load_synth_config(None, SETTINGS)
    assert pool_shape(cfg, {"CPU": 16.0, "GPU": 4.0}) == PoolShape(actors=4, gpus_per_actor=1, cpus=16)  # num_gpus -1: all
    assert pool_shape(replace(cfg, num_gpus=2), {"CPU": 16.0, "GPU": 4.0}) == PoolShape(2, 1, 16)
    assert pool_shape(cfg, {"CPU": 2.0}) == PoolShape(1, 0, 2)
    assert pool_shape(replace(cfg, num_gpus=0, cpu_actors=3), {"CPU": 8.0, "GPU": 1.0}) == PoolShape(3, 0, 8)
    with pytest.raises(ConfigError, match="num_gpus = 2 .*has 1 GPUs"):
        pool_shape(replace(cfg, num_gpus=2), {"CPU": 8.0, "GPU": 1.0})
    with pytest.raises(ConfigError, match="4 GPU actor.*4 CPUs.*at most 3"):
        pool_shape(cfg, {"CPU": 4.0, "GPU": 4.0})


def test_cpu_actors_leave_a_core_to_the_other_stages():
    """Two torch threads beside decoding, PNG encoding and the driver on 2 cores thrash."""
    assert [default_cpu_threads(1, 2), default_cpu_threads(1, 1), default_cpu_threads(1, 16), default_cpu_threads(2, 16)] == [1, 1, 15, 7]
    assert default_cpu_threads(4, 2) == 1


# --------------------------------------------------------------------------- the router (no Ray)


def fake_rows(run, source_id: str) -> dict[str, np.ndarray]:
    n = run.rows_per_source
    rng = np.random.default_rng(len(source_id))
    rows = RenderedSource(
        image=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), depth=np.full((n, 8, 8), 9000, np.uint16),
        alpha=np.full((n, 8, 8), 255, np.uint8), labels={k: np.zeros((n, w), np.float32) for k, w in LABEL_WIDTHS.items()},
        gaze_index=np.arange(n, dtype=np.int32) // 2, view_index=np.arange(n, dtype=np.int32) % 2,
    )  # fmt: skip
    shard = next(s.shard_id for s in run.shards if source_id in s.inputs)
    meta = {"shard_id": shard, "source_id": source_id, "source_path": "/x/" + source_id}
    return encode_records(next(row_records(meta, rows)))


def test_router_drops_repeats_reports_lost_and_aborts_partial(tmp_path, checkpoint, photos):
    cfg = load_synth_config(None, SETTINGS, rows_per_shard=8, **GRID)
    run = plan_run(checkpoint, photos, cfg)  # 3 sources, one per shard
    out = OutputDir.from_uri(str(tmp_path / "out"))
    router = ShardRouter(out, run.shards, run)
    first, second, third = (s.inputs[0] for s in run.shards)
    assert router.add(fake_rows(run, first)) == (8, 0)
    assert router.add(fake_rows(run, first)) == (0, 0)  # a retried batch delivered twice: dropped
    half = {k: v[:3] for k, v in fake_rows(run, second).items()}
    assert router.add(half) == (3, 0)
    problems = router.finish(max_lost=5)
    assert len(problems) == 1 and run.shards[1].name in problems[0]
    assert out.exists(run.shards[0].stats_name) and out.exists(run.shards[2].stats_name)
    assert not out.exists(run.shards[1].stats_name) and not out.list("*", "_tmp")
    lost = pq.read_table(out.path(run.shards[2].errors_name)).to_pylist()
    assert lost[0]["source_id"] == third and lost[0]["reason"].startswith("lost")
    assert len(pq.read_table(out.path(run.shards[0].parquet_name))) == 8


# --------------------------------------------------------------------------- Ray runs


@pytest.mark.ray
def test_rows_labels_errors_and_readers(first_run, photos):
    out, result = first_run
    assert (result.sources, result.rows, result.errors, result.shards) == (3, 8, 2, 3)
    errors = pq.read_table(out / ERRORS_NAME).to_pylist()
    assert {(e["source_id"], e["stage"]) for e in errors} == {("corrupt.jpg", "decode"), ("landscape.png", "crop")}
    assert all(e["reason"] for e in errors) and "90x60" in next(e["reason"] for e in errors if e["stage"] == "crop")

    table = read_all(out)
    assert table.num_rows == 8 and set(table.column("source_id").to_pylist()) == {"crop.png"}
    pitches, yaws, views = (np.radians(np.linspace(*map(float, r.split(":")[:2]), 2)) for r in (PITCH, YAW, VIEW_YAW))
    expected_ids = {f"crop.png-{2 * i + j:04d}-{k:04d}" for i in range(2) for j in range(2) for k in range(2)}
    assert set(table.column("row_id").to_pylist()) == expected_ids
    for row in table.drop_columns(["image", "depth", "alpha"]).to_pylist():
        g, v = row["gaze_index"], row["view_index"]
        gaze_head = np.array([pitches[g // 2], yaws[g % 2]])
        head_pose = np.array([0.0, views[v]])  # a photo is frontal: h = (0, 0), plus the view offset
        np.testing.assert_allclose(row["gaze_head"], gaze_head, atol=1e-6)
        np.testing.assert_allclose(row["view_offset"], head_pose, atol=1e-6)
        np.testing.assert_allclose(row["head_pose"], head_pose, atol=1e-6)
        np.testing.assert_allclose(row["camera"], geometry.head_pose_to_camera(head_pose, NORM), atol=1e-5)
        gaze = geometry.gaze_head_to_camera(gaze_head, geometry.head_pose_to_rotation(head_pose))
        np.testing.assert_allclose(row["gaze"], gaze, atol=1e-6)
        assert row["source_head_pose"] == [0.0, 0.0]  # the source's own pose, whatever the view
        assert row["face_mat_norm"] == np.eye(3).ravel().tolist()  # a passed-through crop: already normalised
        np.testing.assert_allclose(gaze_in_photo(row), gaze_head, atol=1e-6)  # frontal source, identity: the head-frame gaze
        assert row["source_path"] == str(photos / "crop.png")
        assert row["seed"] == 0 and len(row["checkpoint_hash"]) == 64

    polars = pl.read_parquet(str(out / "shard-*.parquet"))
    assert polars.height == 8 and polars["gaze"].dtype == pl.Array(pl.Float32, 2)
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(out / "shard-*.parquet"), split="train")
    assert len(ds) == 8 and isinstance(ds.features["image"], datasets.Image)
    assert ds[0]["image"].size == (64, 64)
    manifest = read_manifest(str(out))
    assert manifest.status == "complete" and manifest.settings["normalisation"]["distance_mm"] == 950.0
    assert (out / "README.md").exists()


@pytest.mark.ray
def test_the_readmes_loading_block_runs_as_written(first_run):
    """README.md's Python block that loads a run (pyarrow, polars, datasets, the DataLoader, gaze_in_photo), verbatim but
    for the run's folder in place of OUT: each reader gets the run's 8 rows."""
    pytest.importorskip("datasets")
    out, _ = first_run
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in readme.split("```python\n")[1:] if "GazeParquetDataset" in b.split("```")[0]]
    code = block.split("```")[0].replace('"OUT', f'"{out}')
    assert code.count(str(out)) >= 5  # every reader is pointed at the run
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["table"].num_rows == scope["df"].height == len(scope["ds"]) == 8
    batch = next(iter(scope["loader"]))
    assert len(batch["gaze"]) == 8 and tuple(batch["image"].shape[1:]) == (3, 64, 64)


@pytest.mark.ray
def test_rows_equal_a_direct_forward(first_run, checkpoint, photos):
    """The staged, batched actor renders what one full LiveGaze.forward per image renders."""
    out, _ = first_run
    model = load_checkpoint(checkpoint)
    rgb = cv2.cvtColor(cv2.imread(str(photos / "crop.png")), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    for row in read_all(out).to_pylist():
        gaze = torch.tensor([row["gaze_head"]])
        camera = torch.tensor([row["camera"]])
        with torch.no_grad():
            ref = model(x, gaze, camera)
        image = ((ref.image[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
        assert np.abs(decode_png(row["image"]["bytes"]).astype(float) - image).max() <= 1
        depth = F.interpolate(ref.depth, size=(64, 64), mode="bilinear", align_corners=False)[0, 0].numpy()
        depth_mm = depth * geometry.mm_per_world_unit(NORM)  # 950 mm / 2.7 units
        np.testing.assert_allclose(decode_depth_png(row["depth"]["bytes"]), depth_mm, atol=0.06)
        alpha = F.interpolate(ref.alpha, size=(64, 64), mode="bilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(decode_alpha_png(row["alpha"]["bytes"]), alpha, atol=0.5 / 255 + 1e-4)


@pytest.mark.ray
def test_restart_of_a_finished_run_and_of_a_different_one(first_run, checkpoint, photos):
    out, result = first_run
    before = read_all(out)
    again = run_synthesis(checkpoint, photos, str(out), load_synth_config(None, SETTINGS, rows_per_shard=8, **GRID), progress=False)
    assert again.shards_written == 0 and again.rows == result.rows and read_all(out).equals(before)
    with pytest.raises(RunMismatchError, match="settings differ.*pitch"):
        run_synthesis(checkpoint, photos, str(out), load_synth_config(None, SETTINGS, rows_per_shard=8, **(GRID | {"pitch": "-5:5:2"})),
                      progress=False)  # fmt: skip
    with pytest.raises(RunMismatchError, match="sources_per_shard"):
        run_synthesis(checkpoint, photos, str(out), load_synth_config(None, SETTINGS, rows_per_shard=16, **GRID), progress=False)


@pytest.mark.ray
def test_as_many_cpu_actors_as_cpus_is_refused_not_hung(ray_session, checkpoint, photos, tmp_path):
    """Each actor reserves a CPU for its life; with none left the decode tasks would wait forever (it hung)."""
    cfg = load_synth_config(None, [*SETTINGS, "cpu_actors=3"], rows_per_shard=8, **GRID)
    with pytest.raises(ConfigError, match=r"cpu_actors = 3 .*3 CPUs.*at most 2 actor"):
        run_synthesis(checkpoint, photos, str(tmp_path / "out"), cfg, progress=False)


def local_reference(checkpoint: Path, inputs: Path, out: Path, **options) -> pa.Table:
    """The same run computed by the bare in-process loop (no Ray), written by the same router."""
    run = plan_run(checkpoint, inputs, load_synth_config(None, SETTINGS, **options))
    router = ShardRouter(OutputDir.from_uri(str(out)), run.shards, run)
    for records in local_records(run, run.shards):
        router.add(records)
    assert router.finish(max_lost=0) == []
    return read_all(out)


FACES_PER_SHARD = 3  # 10 sources of 8 rows: shards [f00-f02] [f03-f05] [f06-f08] [f09]; one source per actor call
GATE = "f04.png"  # the run waits at the fifth source: shard 0 complete, shard 1 holds f03 only
VICTIM = "f07.png"  # the resumed run's actor dies once on this source


@pytest.fixture(scope="module")
def killed_and_resumed(ray_session, checkpoint, faces, tmp_path_factory):
    """kill -9 a run at a point the test chooses, then run the same command again with an actor
    that dies once.

    The first run is a second driver on the session's cluster (as --address joins one), with an
    actor that waits at the source ``GATE`` (one actor runs its calls in the order they were made),
    so when it waits, shard 0 is complete and shard 1 has one of its three sources written: the
    test sees that state, then SIGKILLs the driver. Nothing depends on timing: the test waits for
    the state however long the machine takes (seen to need over 300 s at a load of 140 on 2 cores)."""
    root = tmp_path_factory.mktemp("kill")
    out, gate = root / "out", root / "gate"
    gate.mkdir()
    address = ray_session.get_runtime_context().gcs_address
    rows_per_shard = FACES_PER_SHARD * 8
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import ray; from synth_faults import gated_actor; "
        "from gazegen.config import load_synth_config; from gazegen.pipelines.synthesis import run_synthesis; "
        "ray.init(address=%r, log_to_driver=False); "
        f"run_synthesis({str(checkpoint)!r}, {str(faces)!r}, {str(out)!r}, load_synth_config(None, {SETTINGS!r}, "
        f"rows_per_shard={rows_per_shard}, **{GRID!r}), progress=False, actor=gated_actor({GATE!r}, {str(gate)!r}))"
    ) % address
    log = root / "driver.log"  # a file, not a pipe: a pipe nobody reads fills up and stops the driver
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
                                   stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
    try:
        state = lambda: ((gate / "waiting").exists(), (out / "shard-00000_stats.json").exists(),  # noqa: E731
                         bool(list(out.glob("_tmp/shard-00001.parquet.*"))))  # fmt: skip
        hang_guard = time.monotonic() + 2 * GATE_LIMIT_S  # the run ends by itself (its gate opens after GATE_LIMIT_S)
        while state() != (True, True, True):
            assert process.poll() is None, f"the run ended before its state was seen: {state()}, {log.read_text()[-2000:]}"
            assert time.monotonic() < hang_guard, f"the run hung: {state()}"
            time.sleep(0.05)
        seen = sorted(p.name for p in out.glob("shard-*")), sorted(p.name.split(".")[0] for p in out.glob("_tmp/*"))
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        (gate / "release").touch()  # lets a worker of the dead driver go, if Ray has not reaped it yet
    assert process.returncode == -signal.SIGKILL
    marker = root / "crashed"
    result = run_synthesis(checkpoint, faces, str(out), load_synth_config(None, SETTINGS, rows_per_shard=rows_per_shard, **GRID),
                           progress=False, actor=crash_once_actor(VICTIM, str(marker)))  # fmt: skip
    return out, result, seen, marker


@pytest.mark.ray
def test_kill_9_then_restart_completes_identically(killed_and_resumed, checkpoint, faces, tmp_path):
    out, result, (written, pending), _ = killed_and_resumed
    assert written == ["shard-00000.parquet", "shard-00000_stats.json"]  # killed with shard 0 complete
    assert pending == ["shard-00001"]  # and shard 1 half written
    assert result.shards_written == 3 and (result.rows, result.errors, result.shards) == (80, 0, 4)
    resumed = read_all(out)
    expected = local_reference(checkpoint, faces, tmp_path / "reference", rows_per_shard=FACES_PER_SHARD * 8, **GRID)
    assert resumed.column("row_id").to_pylist() == expected.column("row_id").to_pylist()  # no duplicate, none missing
    assert resumed.equals(expected)  # the very rows of an uninterrupted in-process run, bytes included
    assert not (out / "_tmp").exists() and read_manifest(str(out)).status == "complete"


@pytest.mark.ray
def test_dead_actor_is_replaced_and_its_batch_retried(killed_and_resumed):
    out, result, _, marker = killed_and_resumed
    assert marker.exists()  # the actor process did exit on the victim's batch
    assert read_all(out).column("source_id").to_pylist().count(VICTIM) == 8 and result.errors == 0


@pytest.mark.ray
@pytest.mark.parametrize("victim", ["f00.png", "f09.png"])  # the first (one queued behind it), the last (none)
def test_a_source_that_kills_its_actor_every_time_is_lost_and_the_rest_written(ray_session, checkpoint, faces, tmp_path, victim):
    """A source kills its actor on every try: after 1 + max_task_retries deaths it is an error row
    "lost", and every other source is written, the next one on the same actor too (one call in flight:
    a death is charged to the source being rendered; with a second call queued Ray charged both, and
    with the victim first the run stopped on the two losses)."""
    cfg = load_synth_config(None, [*SETTINGS, "max_task_retries=1", "max_restarts=4", "max_lost_sources=1"],
                            rows_per_shard=FACES_PER_SHARD * 8, **GRID)  # fmt: skip
    result = run_synthesis(checkpoint, faces, str(tmp_path / "out"), cfg, progress=False, actor=always_crash_actor({victim}, str(tmp_path)))
    assert (tmp_path / victim).exists() and (result.rows, result.errors, result.shards) == (72, 1, 4)
    (error,) = pq.read_table(tmp_path / "out" / ERRORS_NAME).to_pylist()
    assert error["source_id"] == victim and error["reason"].startswith("lost: its worker died 2 times")
    counts = read_all(tmp_path / "out").group_by("source_id").aggregate([("row_id", "count")]).to_pylist()
    others = [f"f{i:02d}.png" for i in range(10) if f"f{i:02d}.png" != victim]
    assert sorted((c["source_id"], c["row_id_count"]) for c in counts) == [(source, 8) for source in others]


@pytest.mark.ray
def test_a_device_error_restarts_the_actor_and_its_source_is_made_again(ray_session, checkpoint, faces, tmp_path):
    """The device fails once (torch.AcceleratorError) in the middle of a source: not an error row (the
    CUDA context would fail every later source); the actor's worker exits, Ray restarts it, and every
    source is written, that one too."""
    marker = tmp_path / "failed"
    cfg = load_synth_config(None, SETTINGS, rows_per_shard=FACES_PER_SHARD * 8, **GRID)
    result = run_synthesis(checkpoint, faces, str(tmp_path / "out"), cfg, progress=False,
                           actor=device_failure_actor("f01.png", str(marker)))  # fmt: skip
    assert marker.exists() and (result.rows, result.errors, result.shards) == (80, 0, 4)
    counts = read_all(tmp_path / "out").group_by("source_id").aggregate([("row_id", "count")]).to_pylist()
    assert sorted((c["source_id"], c["row_id_count"]) for c in counts) == [(f"f{i:02d}.png", 8) for i in range(10)]


@pytest.mark.ray
def test_a_shard_changed_in_place_is_written_again(first_run, checkpoint, photos, tmp_path, caplog):
    """A shard whose bytes changed but not its size (64 zeroed in its middle) once passed the restart's check, and the
    run ended complete with a damaged image; its recorded sha256 now sends it back to be written, as it was."""
    out = shutil.copytree(first_run[0], tmp_path / "out")
    before = read_all(out)
    shard = sorted(out.glob("shard-*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="gazegen.pipelines.synthesis"):
        again = run_synthesis(checkpoint, photos, str(out), load_synth_config(None, SETTINGS, rows_per_shard=8, **GRID), progress=False)
    assert again.shards_written == 1 and f"{shard.stem}_stats.json: {shard.name} checksum differs" in caplog.text
    assert read_all(out).equals(before)


@pytest.mark.ray
def test_an_input_edited_while_the_run_reads_it_leaves_the_run_unfinished(ray_session, checkpoint, faces, tmp_path):
    """An input rewritten during the run (here by the render stage itself, as its first source renders) once went into
    a run that ended complete, its rows from two versions of it; the run now stops, naming the file, not complete."""
    inputs = shutil.copytree(faces, tmp_path / "in")
    out = tmp_path / "out"
    cfg = load_synth_config(None, SETTINGS, rows_per_shard=FACES_PER_SHARD * 8, **GRID)
    with pytest.raises(RunMismatchError, match=r"1 input file\(s\) changed while the run read them \['f00.png'\]: .*--overwrite"):
        run_synthesis(checkpoint, inputs, str(out), cfg, progress=False, actor=editing_actor(str(inputs / "f00.png")))
    assert read_manifest(str(out)).status != "complete"


@pytest.mark.ray
def test_an_actor_that_cannot_start_stops_the_run_and_loses_nothing(ray_session, checkpoint, faces, tmp_path):
    """The render actor's __init__ fails: the run stops with the cause, no source is written as an
    error row (they once all were, "lost", and the run ended complete and empty); the same command
    with a working actor then renders every source."""
    out = tmp_path / "out"
    cfg = load_synth_config(None, SETTINGS, rows_per_shard=FACES_PER_SHARD * 8, **GRID)
    with pytest.raises(RenderPoolError, match=r"could not start \(RuntimeError: CUDA error: no CUDA-capable device"):
        run_synthesis(checkpoint, faces, str(out), cfg, progress=False,
                      actor=broken_actor("CUDA error: no CUDA-capable device is detected"))  # fmt: skip
    assert not list(out.glob("shard-*")) and not (out / ERRORS_NAME).exists()
    assert sorted(p.name for p in out.iterdir()) == []  # nor a manifest claiming OUT: another command may start there
    result = run_synthesis(checkpoint, faces, str(out), cfg, progress=False)
    errors = pq.read_table(out / ERRORS_NAME).to_pylist() if (out / ERRORS_NAME).exists() else []
    assert (result.rows, result.errors, result.shards_written) == (80, 0, 4), errors


def test_an_address_where_no_cluster_answers_is_refused_leaving_out_unclaimed(checkpoint, faces, tmp_path):
    """`--address HOST:PORT` with nothing listening there: Ray retried it without end (still at it after 300 s); now one
    error naming the address, and OUT holds no manifest that would refuse the next command."""
    import socket

    with socket.socket() as probe:  # a port just freed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = load_synth_config(None, SETTINGS, rows_per_shard=FACES_PER_SHARD * 8, **GRID)
    with pytest.raises(RenderPoolError, match=rf"^--address 127.0.0.1:{port}: no Ray cluster answers there \(Connection refused\)"):
        run_synthesis(checkpoint, faces, str(tmp_path / "out"), cfg, address=f"127.0.0.1:{port}", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_sigterm_stops_a_run_as_ctrl_c_does():
    """A scheduler's or `timeout`'s SIGTERM once met Ray's own handler (exit at once, a C++ stack trace); while Ray runs
    the render pool it raises KeyboardInterrupt, the path of Ctrl-C (calls cancelled, shards kept, one line), and the
    previous handler is back afterwards."""
    import signal

    from gazegen.pipelines.graph import terminate_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt():
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_damaged_checkpoint_is_refused_before_anything_is_written(checkpoint, faces, tmp_path):
    """A truncated weights file is named by the driver's plan (its header alone is read), before Ray
    starts and before OUT exists, so the fixed checkpoint runs with the same command; before, every
    render actor failed to start on it."""
    damaged = tmp_path / "ckpt"
    shutil.copytree(checkpoint, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cfg = load_synth_config(None, SETTINGS, rows_per_shard=FACES_PER_SHARD * 8, **GRID)
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(weights))}: not a readable safetensors file"):
        run_synthesis(damaged, faces, str(tmp_path / "out"), cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_device_error_stops_the_in_process_loop(checkpoint, faces, tmp_path):
    """Without Ray the device error is raised (the run stops, resumable), never written as the source's error row."""
    run = plan_run(checkpoint, faces, load_synth_config(None, SETTINGS, rows_per_shard=FACES_PER_SHARD * 8, **GRID))
    records = local_records(run, run.shards, actor_class=device_failure_actor("f01.png", str(tmp_path / "failed")))
    first = next(records)
    assert first["source_id"][0] == "f00.png" and set(first["status"]) == {"ok"}
    with pytest.raises(torch.AcceleratorError, match="illegal memory access"):
        next(records)


@pytest.mark.ray
def test_two_actors_write_the_rows_of_an_in_process_run(ray_session, checkpoint, faces, tmp_path):
    """Two CPU actors share the sources (the calls of each end in its own order, the two interleave):
    the shards hold the very rows the bare in-process loop writes."""
    cfg = load_synth_config(None, [*SETTINGS, "cpu_actors=2"], rows_per_shard=FACES_PER_SHARD * 8, **GRID)
    (tmp_path / "pids").mkdir()
    result = run_synthesis(checkpoint, faces, str(tmp_path / "out"), cfg, progress=False, actor=pid_actor(str(tmp_path / "pids")))
    assert len(list((tmp_path / "pids").iterdir())) == 2  # both actors rendered
    assert (result.rows, result.errors, result.shards_written) == (80, 0, 4)
    assert read_all(tmp_path / "out").equals(local_reference(checkpoint, faces, tmp_path / "reference",
                                                             rows_per_shard=FACES_PER_SHARD * 8, **GRID))  # fmt: skip


@pytest.mark.ray
def test_past_max_lost_sources_the_run_stops(ray_session, checkpoint, faces, tmp_path):
    """Every source kills its actor: the first loss (max_lost_sources = 0) stops the run before any
    source beyond the second (sent as the first one's last try ends) reaches an actor; nothing is
    written, and the error says why."""
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    cfg = load_synth_config(None, [*SETTINGS, "max_task_retries=1", "max_restarts=40", "max_lost_sources=0"],
                            rows_per_shard=FACES_PER_SHARD * 8, **GRID)  # fmt: skip
    everyone = {f"f{i:02d}.png" for i in range(10)}
    with pytest.raises(IncompleteShardsError, match=r"10 sources lost \(more than max_lost_sources=0\)"):
        run_synthesis(checkpoint, faces, str(tmp_path / "out"), cfg, progress=False, actor=always_crash_actor(everyone, str(attempts)))
    assert {p.name for p in attempts.iterdir()} <= {"f00.png", "f01.png"}
    assert not list((tmp_path / "out").glob("shard-*"))
