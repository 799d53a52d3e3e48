"""`gazegen synthesize` on the command line, end to end on tiny data: what it says about the inputs that
failed, which folders it reads and writes, what it refuses, and the warning about photos under view turns."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from gazegen.checkpoint import save_pretrained
from gazegen.cli import app
from gazegen.config import CONFIG_DIR, PUBLISHED_NORMALISATIONS, ModelConfig, load_config, load_synth_config
from gazegen.data.sample import Sample
from gazegen.data.store import SubjectWriter
from gazegen.models.livegaze import LiveGaze
from gazegen.pipelines.manifest import check_or_create
from gazegen.pipelines.plan import plan_run
from gazegen.pipelines.run_manifest import RunManifest
from gazegen.pipelines.synthesis import SHOWN_FAILURES, SynthesisResult

runner = CliRunner()
# 2 rows per source, one source per shard; depth everywhere (a random model is half transparent)
GRID = ["--grid", "pitch,yaw", "--pitch", "-10:10:2", "--yaw", "0:0:1", "--rows-per-shard", "2",
        "--set", "cpu_threads=1", "--set", "depth_min_alpha=0.0", "--crop", "never"]  # fmt: skip (noise as normalised crops)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml"))
    return save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny", model, normalisation=PUBLISHED_NORMALISATIONS["livegaze512"])


def synthesize(checkpoint: Path, inputs: Path, out: Path, *args: str):
    return runner.invoke(app, ["synthesize", str(checkpoint), str(inputs), str(out), *GRID, *args])


def crops(folder: Path, names: list[str]) -> None:
    """Square 64 px noise images, taken as normalised crops (GRID's --crop never)."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def bad_inputs(folder: Path) -> dict[str, str]:
    """Inputs that fail, each with (the end of) the reason it is named by."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (folder / "text.png").write_text("hello, not a png")
    (folder / "empty.png").write_bytes(b"")
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((20, 20, 3), np.uint8))
    cv2.imwrite(str(folder / "wide.png"), np.full((60, 90, 3), 128, np.uint8))
    return {"corrupt.png": "not a readable image header (no image format recognised; 208 bytes)",
            "text.png": "not a readable image header (no image format recognised; 16 bytes)", "empty.png": "empty file",
            "tiny.png": "20 x 20 pixels: smaller than 32 px, too small to hold a face", "wide.png": "not square"}  # fmt: skip


@pytest.mark.ray
def test_failed_inputs_are_named_and_a_run_without_rows_exits_1(ray_session, checkpoint, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    reasons = bad_inputs(folder)
    crops(folder, ["crop.png"])
    result = synthesize(checkpoint, folder, out)
    assert result.exit_code == 0, result.output
    assert f"{out}: 6 sources, 2 rows, 5 errors, 6 shards" in result.output
    lines = result.output.splitlines()
    assert f"5 sources failed (all, with the reasons, in {out / '_errors.parquet'}):" in lines
    named = sorted(line for line in lines if line.startswith(f"  {folder}"))  # sorted by source id, whatever came first
    reasons["wide.png"] = "--crop never needs square normalised crops, got 90x60 pixels"
    assert named == sorted(f"  {folder / name}: {why}" for name, why in reasons.items())
    stored = pq.read_table(out / "_errors.parquet").to_pylist()  # the stored reason names the file, with no address
    assert next(e["reason"] for e in stored if e["source_id"] == "text.png") == f"{folder / 'text.png'}: {reasons['text.png']}"
    assert not any(" at 0x" in e["reason"] for e in stored)

    (folder / "crop.png").unlink()
    for k in range(7):  # 12 failing sources: ten named, the rest counted
        (folder / f"z{k}.jpg").write_text("not a jpeg")
    result = synthesize(checkpoint, folder, tmp_path / "out2")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    failures = [line for line in lines if line.startswith(f"  {folder}")]
    assert len(failures) == SHOWN_FAILURES and failures[-1].startswith(f"  {folder / 'z4.jpg'}: ")  # ids: corrupt, empty, ... z4
    assert "  ... and 2 more" in lines
    assert lines[-1] == f"error: {tmp_path / 'out2'}: no rows: all 12 sources failed (reasons above)"


def test_failure_report_names_ten_and_counts_the_rest():
    result = SynthesisResult("o", 12, 0, 12, 1, 1, 0, 1.0, 0.0, "o/_errors.parquet", tuple(f"f{i}.png: empty file" for i in range(10)))
    assert result.failure_report() == ["12 sources failed (all, with the reasons, in o/_errors.parquet):",
                                       *(f"  f{i}.png: empty file" for i in range(10)), "  ... and 2 more"]  # fmt: skip
    assert SynthesisResult("o", 1, 2, 0, 1, 1, 2, 1.0, 2.0).failure_report() == []


@pytest.mark.ray
def test_out_inside_inputs_is_resumed_not_read(ray_session, checkpoint, tmp_path):
    """OUT inside INPUTS: a finished run, and one cut short (a shard without stats, a temporary file, no card),
    rerun with the same command, resume; the run's own files never become inputs."""
    folder = tmp_path / "photos"
    crops(folder, ["a.png", "b.png", "c.png"])
    out = folder / "synth"
    first = synthesize(checkpoint, folder, out)
    assert first.exit_code == 0, first.output
    again = synthesize(checkpoint, folder, out)
    assert again.exit_code == 0 and "6 rows, 0 errors, 3 shards; this run: 0 shards" in again.output, again.output
    for name in ("shard-00001_stats.json", "README.md", "_errors.parquet", "label_histograms.png"):  # cut short
        (out / name).unlink()
    (out / "_tmp").mkdir()
    (out / "_tmp" / "shard-00002.parquet.0123abcd").write_bytes(b"PAR1 partial")
    resumed = synthesize(checkpoint, folder, out)
    assert resumed.exit_code == 0 and "6 rows, 0 errors, 3 shards; this run: 1 shards, 2 images" in resumed.output, resumed.output
    assert json.loads((out / "_manifest.json").read_text())["inputs"]["names"] == ["a.png", "b.png", "c.png"]
    rows = pa.concat_tables(pq.read_table(p, columns=["row_id"]) for p in sorted(out.glob("shard-*.parquet")))
    assert sorted(rows.column("row_id").to_pylist()) == [f"{s}.png-{g:04d}-0000" for s in "abc" for g in range(2)]

    same = synthesize(checkpoint, folder, folder)
    assert same.exit_code == 2 and f"error: {folder}: the inputs lie in the output folder {folder}" in same.output


def test_a_folder_that_is_not_a_run_is_refused_and_left_as_it_was(checkpoint, tmp_path):
    """Synthesis writes README.md (the card) and more into OUT: a user's own folder is refused before any work."""
    crops(tmp_path / "in", ["a.png"])
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    (out / "data.csv").write_text("1,2\n")
    result = synthesize(checkpoint, tmp_path / "in", out)
    assert result.exit_code == 2
    assert result.output == (f"error: {out} is not empty (e.g. README.md) and holds no gazegen run (_manifest.json): choose a new or "
                             "empty output folder (--overwrite writes into it anyway, replacing files named like the run's, such as "
                             "README.md)\n")  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data.csv"] and (out / "README.md").read_text() == "my notes\n"
    check_or_create(str(out), RunManifest.create(["a.png"], "ab" * 32, {}, 1), overwrite=True)  # --overwrite: as before
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "_manifest.json", "_tmp", "data.csv"]


def test_photos_under_view_turns_get_one_warning(checkpoint, tmp_path, caplog):
    """Planned, not rendered: a photo's head pose is estimated, and under view turns the model may draw it doubled."""
    crops(tmp_path / "photos", ["a.png", "b.png", "c.png"])
    store = tmp_path / "store"
    store.mkdir()
    norm = PUBLISHED_NORMALISATIONS["livegaze512"].at_resolution(64)
    with SubjectWriter(store / "subject0000.h5", norm, "subject0000") as writer:
        writer.write([Sample(image=np.zeros((64, 64, 3), np.uint8), gaze=np.zeros(2, np.float32), head_pose=np.array([0.1, 0.2], np.float32),
                             gaze_head=np.zeros(2, np.float32), camera=np.zeros(25, np.float32), normalisation=norm,
                             subject="subject0000", frame_index=0)])  # fmt: skip
    turned, gaze_only = load_synth_config(None, view_yaw="-20:20:3"), load_synth_config(None, grid="pitch,yaw")
    with caplog.at_level("WARNING", logger="gazegen.pipelines.plan"):
        plan_run(checkpoint, tmp_path / "photos", turned)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and warnings[0].startswith("3 of 3 sources are photos (e.g. a.png) and the grid turns the view")
        caplog.clear()
        plan_run(checkpoint, store, turned)
        plan_run(checkpoint, tmp_path / "photos", gaze_only)
        assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_an_out_that_cannot_be_a_folder_is_refused_before_the_inputs_are_listed(checkpoint, tmp_path):
    """An OUT that is a file, or under one, or where no folder can be made: one line naming OUT, before the inputs
    are listed (missing inputs here would be named otherwise) or Ray starts; nothing made. URIs are not checked."""
    from gazegen.pipelines.shards import OutputDir
    from gazegen.pipelines.synthesis import check_local_out

    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out, why in ((afile, "not a folder"), (afile / "out", f"cannot be made: {afile} is not a folder")):
        result = synthesize(checkpoint, tmp_path / "no-inputs", out)
        assert result.exit_code == 2 and result.output == f"error: {out}: {why}\n"
    assert afile.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    if Path("/proc/self").is_dir():  # a pseudo filesystem: no folder can be made in it, whoever runs the test
        result = synthesize(checkpoint, tmp_path / "no-inputs", Path("/proc/nosuch/out"))
        assert result.exit_code == 2 and result.output.startswith("error: /proc/nosuch/out: cannot be made: cannot create a folder in /proc (")
    check_local_out(OutputDir.from_uri("mock:///afile/out"))  # another filesystem: left to pyarrow when the run writes


def test_a_parquet_input_without_the_image_column_is_refused_before_any_work(checkpoint, tmp_path):
    """Once: Ray started, every row an error, exit 1 and OUT marked complete (a rerun with the right column refused).
    Now the column is read from the schema while listing: one line naming the file, its columns and the fix."""
    png = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    inputs = tmp_path / "wrongcol.parquet"
    pq.write_table(pa.table({"img": pa.array([png], pa.binary())}), inputs)
    result = synthesize(checkpoint, inputs, tmp_path / "out")
    assert result.exit_code == 2 and result.output == (
        f"error: {inputs}: no column 'image' (columns: img); name its image column with --set image_column=NAME\n")
    assert not (tmp_path / "out").exists()
    run = plan_run(checkpoint, inputs, load_synth_config(None, ["image_column=img"], grid="pitch,yaw"))
    assert [r.source_id for r in run.records] == ["wrongcol.parquet#000000"] and not run.records[0].error
