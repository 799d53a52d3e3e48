"""`gazegen export` (gazegen/data/export.py): each layout read back by a reader written here from its
published description, never by the project's writer.

* ETH-XGaze: the access pattern of the official baseline's ``GazeDataset`` (xucong-zhang/ETH-XGaze,
  data_loader.py): ``train_test_split.json`` names the files of a split under ``DEST/<split>/``; each
  is opened with ``h5py.File(path, "r", swmr=True)``; ``face_patch[i][:, :, [2, 1, 0]]`` is the RGB
  image and ``face_gaze[i].astype(float)`` its label; plus the published keys' dtypes and shapes.
* GazeHub: as GazeTR's / L2CS-Net's readers do: the first line of the ``.label`` file is a header,
  every other line splits on spaces into face path (relative to ``Image/<split>``), ``pitch,yaw``
  gaze, ``pitch,yaw`` head pose, origin, camera, frame, and the 9 numbers of the normalisation matrix.

The oracle is the run made here: its rows' images and labels, and the ETH-XGaze vector of a
(pitch, yaw), written out below, for the rotation's meaning. No Ray: the shards come from the
shard writer directly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote

import cv2
import h5py
import numpy as np
import pyarrow as pa
import pytest

from gazegen import geometry
from gazegen.config import PUBLISHED_NORMALISATIONS, ExportConfig
from gazegen.data import export as export_module
from gazegen.data.export import ExportError, export_run
from gazegen.data.xgaze import open_subject
from gazegen.data import schema
from gazegen.pipelines.manifest import RunManifest, check_or_create, finalize
from gazegen.pipelines.shards import ShardWriter, plan_shards

SIZE, GAZES, VIEWS = 16, 2, 2
SOURCES = ["s1.h5#000000", "s1.h5#000001", "s2.h5#000000", "s3.h5#000000", "s3.h5#000001"]
IDENTITIES = {"s1.h5": "subject0000", "s2.h5": "subject0001", "s3.h5": "subject0002"}
NORM = PUBLISHED_NORMALISATIONS["livegaze512"].at_resolution(SIZE)


def vector(pitchyaw: np.ndarray) -> np.ndarray:
    """ETH-XGaze's gaze vector of (pitch, yaw): (-cos p sin y, -sin p, -cos p cos y)."""
    p, y = pitchyaw[..., 0], pitchyaw[..., 1]
    return np.stack([-np.cos(p) * np.sin(y), -np.sin(p), -np.cos(p) * np.cos(y)], -1)


def fake_rows(source: str, k: int) -> dict[str, list]:
    """GAZES x VIEWS rows of one source: smooth images (a JPEG keeps them), consistent labels; the
    source is a photo (its own normalising rotation) seen under view turns (head_pose differs from
    source_head_pose)."""
    rng = np.random.default_rng(k)
    source_head_pose = rng.uniform(-0.3, 0.3, 2)
    photo_to_norm = geometry.rotation_y(np.array(rng.uniform(-0.4, 0.4))) @ geometry.rotation_x(np.array(rng.uniform(-0.3, 0.3)))
    cols: dict[str, list] = {name: [] for name in schema.ROW_COLUMNS if name != "row_id"}
    ramp = np.linspace(0, 60, SIZE, dtype=np.float32)[None, :, None]
    for g in range(GAZES):
        gaze_head = rng.uniform(-0.4, 0.4, 2)
        for v in range(VIEWS):
            head_pose = rng.uniform(-0.5, 0.5, 2)
            colour = np.array([200.0, 20.0 + 30 * (2 * g + v), 40.0 + 10 * k], np.float32)  # R, G, B all different
            image = np.broadcast_to(colour + ramp, (SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
            depth = np.full((SIZE, SIZE), 900.0 + 10 * k + g + v, np.float32)
            depth[0] = 0.0
            gaze = geometry.gaze_head_to_camera(gaze_head, geometry.head_pose_to_rotation(head_pose))
            cols["image"].append(schema.encode_png(image))
            cols["depth"].append(schema.encode_depth_png(depth))
            cols["alpha"].append(schema.encode_alpha_png(depth > 0))
            cols["gaze"].append(gaze)
            cols["head_pose"].append(head_pose)
            cols["gaze_head"].append(gaze_head)
            cols["view_offset"].append(head_pose - source_head_pose)
            cols["source_head_pose"].append(source_head_pose)
            cols["face_mat_norm"].append(photo_to_norm.ravel())
            cols["camera"].append(geometry.head_pose_to_camera(head_pose, NORM))
            for key, value in (("source_id", source), ("source_path", f"/in/{source.split('#')[0]}"), ("gaze_index", g),
                               ("view_index", v), ("checkpoint_hash", "ab" * 32), ("seed", 0)):
                cols[key].append(value)
    return cols


def make_run(out: Path, corrupt: str = "") -> dict[str, dict]:
    """A finished run of SOURCES, 2 sources a shard (s3 spans two shards), row groups of 3 rows and
    each shard's rows interleaved across its sources, as actors return them. Returns the expected
    rows by row id; the image of row ``corrupt`` is not a PNG."""
    plan = plan_shards(SOURCES, 2)
    check_or_create(str(out), RunManifest.create(SOURCES, "ab" * 32, {"normalisation": NORM.__dict__}, 2))
    expected: dict[str, dict] = {}
    for spec in plan:
        tables = [schema.rows_table(fake_rows(s, SOURCES.index(s))) for s in spec.inputs]
        order = np.argsort(np.concatenate([np.arange(t.num_rows) for t in tables]), kind="stable")  # interleave
        rows = pa.concat_tables(tables).take(pa.array(order)).to_pylist()
        for row in rows:
            bgr = cv2.imdecode(np.frombuffer(row["image"]["bytes"], np.uint8), cv2.IMREAD_COLOR)
            expected[row["row_id"]] = row | {"rgb": bgr[..., ::-1]}
            if row["row_id"] == corrupt:
                row["image"] = {"bytes": b"not a png", "path": None}
        with ShardWriter(str(out), spec, row_group_size=3) as writer:
            writer.write(pa.Table.from_pylist(rows, schema=schema.ROW_SCHEMA))
    finalize(str(out), plan)
    return expected


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    out = tmp_path_factory.mktemp("synth")
    return out, make_run(out)


# --------------------------------------------------------------------------- readers from the published descriptions


def xgaze_baseline_items(dest: Path, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(file, RGB image, gaze) as the ETH-XGaze baseline's GazeDataset yields them."""
    with open(os.path.join(dest, "train_test_split.json")) as f:
        keys = json.load(f)[split]
    items = []
    for key in keys:
        hdf = h5py.File(os.path.join(dest, split, key), "r", swmr=True)
        assert hdf.swmr_mode
        for idx in range(hdf["face_patch"].shape[0]):
            image = hdf["face_patch"][idx, :][:, :, [2, 1, 0]]  # from BGR to RGB
            items.append((key, image, hdf["face_gaze"][idx, :].astype("float")))
        hdf.close()
    return items


def gazehub_items(dest: Path, split: str) -> list[dict]:
    """Lines of ``Label/<split>.label`` as GazeTR / L2CS-Net split them, with the image cv2 reads (BGR)."""
    with open(dest / "Label" / f"{split}.label") as f:
        lines = f.readlines()
    assert lines.pop(0).split() == ["face", "gaze", "head", "origin", "cam_index", "frame_index", "normmat"]
    items = []
    for line in lines:
        face, gaze, head, origin, cam, frame, normmat = line.strip().split(" ")
        items.append({"face": face, "bgr": cv2.imread(os.path.join(dest, "Image", split, face)),
                      "gaze": np.array(gaze.split(",")).astype("float"), "head": np.array(head.split(",")).astype("float"),
                      "row_id": unquote(origin), "cam": int(cam), "frame": int(frame),
                      "normmat": np.array(normmat.split(",")).astype("float").reshape(3, 3)})
    return items


def _is_rotation(mat: np.ndarray) -> bool:
    return np.allclose(mat @ mat.T, np.eye(3), atol=1e-5) and np.isclose(np.linalg.det(mat), 1.0, atol=1e-5)


def check_head_rotation(mat: np.ndarray, row: dict) -> None:
    """head_rotation: a rotation taking the head-frame gaze to the camera-frame gaze; its forward
    direction R @ (0, 0, -1) is the head pose."""
    assert _is_rotation(mat)
    assert np.allclose(mat @ vector(np.array(row["gaze_head"])), vector(np.array(row["gaze"])), atol=1e-5)
    forward = mat @ np.array([0.0, 0.0, -1.0])
    assert np.allclose([np.arcsin(-forward[1]), np.arctan2(-forward[0], -forward[2])], row["head_pose"], atol=1e-5)


def check_mat_norm(mat: np.ndarray, row: dict) -> None:
    """face_mat_norm, ETH-XGaze's meaning: the capture (source photo) camera -> this image's
    normalised camera. The gaze in the photo's camera, in closed form from the source's labels
    (the head-frame gaze seen by the source's normalised camera, taken back by the shard's
    rotation), goes to this image's gaze."""
    assert _is_rotation(mat)
    source_norm = geometry.head_pose_to_rotation(np.array(row["source_head_pose"])) @ vector(np.array(row["gaze_head"]))
    in_photo = np.array(row["face_mat_norm"]).reshape(3, 3).T @ source_norm
    assert np.allclose(mat @ in_photo, vector(np.array(row["gaze"])), atol=1e-5)


# --------------------------------------------------------------------------- ETH-XGaze


def check_xgaze(dest: Path, expected: dict[str, dict], test: tuple[str, ...] = ()) -> None:
    split = json.loads((dest / "train_test_split.json").read_text())
    assert split == {"train": sorted(f"{n}.h5" for k, n in IDENTITIES.items() if k not in test),
                     "test": sorted(f"{n}.h5" for k, n in IDENTITIES.items() if k in test)}
    seen = set()
    for name_split in ("train", "test"):
        items = xgaze_baseline_items(dest, name_split) if split[name_split] else []
        by_file: dict[str, list] = {}
        for key, image, gaze in items:
            by_file.setdefault(key, []).append((image, gaze))
        for key, rows in by_file.items():
            with h5py.File(dest / name_split / key, "r") as f:
                n = len(rows)
                assert f["face_patch"].dtype == np.uint8 and f["face_patch"].shape == (n, SIZE, SIZE, 3)
                for k in ("face_gaze", "face_head_pose"):
                    assert f[k].dtype == np.float32 and f[k].shape == (n, 2)
                for k in ("face_mat_norm", "head_rotation"):
                    assert f[k].dtype == np.float32 and f[k].shape == (n, 3, 3)
                for k in ("cam_index", "frame_index"):
                    assert f[k].shape == (n, 1) and np.issubdtype(f[k].dtype, np.integer)
                row_ids = [r.decode() for r in f["row_id"][...]]
                identity = {k for k, v in IDENTITIES.items() if f"{v}.h5" == key}.pop()
                assert sorted(row_ids) == sorted(r for r in expected if r.startswith(identity + "#"))  # its rows, all of them
                frames = {}
                for i, row_id in enumerate(row_ids):
                    row = expected[row_id]
                    image, gaze = rows[i]
                    assert np.array_equal(image, row["rgb"])  # BGR stored, RGB after the baseline's flip
                    assert np.array_equal(gaze, np.float32(row["gaze"]))
                    assert np.array_equal(f["face_head_pose"][i], np.float32(row["head_pose"]))
                    check_mat_norm(f["face_mat_norm"][i].astype(np.float64), row)
                    check_head_rotation(f["head_rotation"][i].astype(np.float64), row)
                    assert f["cam_index"][i, 0] == row["view_index"]
                    frames.setdefault((row["source_id"], row["gaze_index"]), set()).add(int(f["frame_index"][i, 0]))
                    depth = f["depth"][i]
                    assert depth[0].max() == 0 and np.allclose(depth[1:], 900 + 10 * SOURCES.index(row["source_id"])
                                                               + row["gaze_index"] + row["view_index"], atol=0.05)
                assert all(len(v) == 1 for v in frames.values())  # the views of one (source, gaze) share a frame
                assert len({v.pop() for v in frames.values()}) == len(frames)  # distinct pairs, distinct frames
                seen.update(row_ids)
    assert seen == set(expected)


def test_xgaze_export_opens_in_the_baselines_reader(run, tmp_path):
    out, expected = run
    result = export_run(str(out), tmp_path / "x", ExportConfig(test=("s3",)), progress=False)
    assert (result.rows, result.skipped, len(result.identities)) == (len(expected), 0, 3)
    check_xgaze(tmp_path / "x", expected, test=("s3.h5",))
    with open_subject(tmp_path / "x" / "test" / "subject0002.h5") as reader:  # and gazegen's own store reader
        assert reader.normalisation == NORM and len(reader) == 2 * GAZES * VIEWS
    assert not list((tmp_path / "x").glob("**/*.tmp"))


def test_xgaze_resize_keeps_labels_and_field_of_view(run, tmp_path):
    out, expected = run
    export_run(str(out), tmp_path / "x", ExportConfig(resolution=2 * SIZE), progress=False)
    with h5py.File(tmp_path / "x" / "train" / "subject0000.h5", "r") as f:
        assert f["face_patch"].shape[1:] == (2 * SIZE, 2 * SIZE, 3)
        assert f.attrs["resolution"] == 2 * SIZE and np.isclose(f.attrs["focal"], 2 * NORM.focal)
        row = expected[f["row_id"][0].decode()]
        assert np.array_equal(f["face_gaze"][0], np.float32(row["gaze"]))


# --------------------------------------------------------------------------- GazeHub


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_gazehub_export_reads_as_gazetr_does(run, tmp_path, image_format):
    out, expected = run
    export_run(str(out), tmp_path / "g", ExportConfig(format="gazehub", image_format=image_format, test=("subject0001",)),
               progress=False)
    items = gazehub_items(tmp_path / "g", "train") + gazehub_items(tmp_path / "g", "test")
    assert sorted(i["row_id"] for i in items) == sorted(expected)
    assert {i["face"].split("/")[0] for i in gazehub_items(tmp_path / "g", "test")} == {"subject0001"}
    for item in items:
        row = expected[item["row_id"]]
        assert item["face"].split("/")[0] == IDENTITIES[row["source_id"].split("#")[0]]
        error = np.abs(item["bgr"][..., ::-1].astype(int) - row["rgb"]).max()
        assert error == 0 if image_format == "png" else error <= 4  # cv2 wrote BGR; a JPEG at quality 95 is close
        assert np.array_equal(np.float32(item["gaze"]), np.float32(row["gaze"]))  # 9 digits: float32 exactly
        assert np.array_equal(np.float32(item["head"]), np.float32(row["head_pose"]))
        assert item["cam"] == row["view_index"]
        check_mat_norm(item["normmat"], row)
    per_identity = (tmp_path / "g" / "Label" / "train" / "subject0000.label").read_text().splitlines()
    assert len(per_identity) == 1 + 2 * GAZES * VIEWS


# --------------------------------------------------------------------------- resuming and errors


def test_a_failed_export_resumes_without_redoing_finished_identities(run, tmp_path, monkeypatch):
    out, expected = run
    dest = tmp_path / "x"
    real = export_module.decode_rows

    def failing(table, path, *args):  # a fault at the first rows of s3, which shard 1 interleaves with s2's
        if any(s.startswith("s3.h5") for s in table["source_id"].to_pylist()):
            raise OSError("injected: disk full")
        return real(table, path, *args)

    monkeypatch.setattr(export_module, "decode_rows", failing)
    with pytest.raises(OSError, match="injected"):
        export_run(str(out), dest, progress=False)
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (dest / "train").glob("*.h5")}
    assert sorted(done) == ["subject0000.h5"]  # s2 was still open: its temporary file went with the failure
    assert not list(dest.glob("**/*.tmp")) and not (dest / "train_test_split.json").exists()
    monkeypatch.setattr(export_module, "decode_rows", real)
    result = export_run(str(out), dest, progress=False)
    assert result.skipped == 1
    assert all(((dest / "train" / n).stat().st_ino, (dest / "train" / n).stat().st_mtime_ns) == v for n, v in done.items())
    check_xgaze(dest, expected)


def test_an_undecodable_image_is_named_and_loses_nothing_done(tmp_path):
    bad = "s3.h5#000001-0001-0000"
    out = tmp_path / "synth"
    make_run(out, corrupt=bad)
    with pytest.raises(ExportError, match=rf"shard-00002\.parquet: row '{bad}'"):
        export_run(str(out), tmp_path / "g", ExportConfig(format="gazehub"), progress=False)
    labels = sorted(p.name for p in (tmp_path / "g" / "Label" / "train").glob("*.label"))
    assert labels == ["subject0000.label", "subject0001.label"]  # finished before the bad row
    assert not (tmp_path / "g" / "Image" / "train" / "subject0002").exists()


def test_refuses_unfinished_runs_other_exports_and_unknown_identities(run, tmp_path):
    out, _ = run
    export_run(str(out), tmp_path / "x", progress=False)
    with pytest.raises(ExportError, match="holds an export of other shards or settings"):
        export_run(str(out), tmp_path / "x", ExportConfig(format="gazehub"), progress=False)
    assert export_run(str(out), tmp_path / "x", ExportConfig(format="gazehub"), overwrite=True, progress=False).skipped == 0
    assert not (tmp_path / "x" / "train").exists()  # the xgaze files went with --overwrite
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_run(str(out), tmp_path / "other", progress=False)
    with pytest.raises(ExportError, match="no such identity"):
        export_run(str(out), tmp_path / "y", ExportConfig(test=("nobody",)), progress=False)
    manifest = json.loads((out / "_manifest.json").read_text())
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for shard in out.glob("shard-*.parquet"):
        (unfinished / shard.name).write_bytes(shard.read_bytes())
    (unfinished / "_manifest.json").write_text(json.dumps(manifest | {"status": "running"}))
    with pytest.raises(ExportError, match=r"_manifest\.json: the run is 'running', not complete"):
        export_run(str(unfinished), tmp_path / "z", progress=False)


def test_command_line(run, tmp_path):
    from typer.testing import CliRunner

    from gazegen.cli import app

    out, expected = run
    result = CliRunner().invoke(app, ["export", str(out), str(tmp_path / "g"), "--format", "gazehub", "--test", "s3", "--test", "s1"])
    assert result.exit_code == 0, result.output
    assert f"gazehub export of {len(expected)} images, 3 identities (1 train, 2 test)" in result.output
    result = CliRunner().invoke(app, ["export", str(out), str(tmp_path / "x"), "--format", "tfrecord"])
    assert result.exit_code == 2 and "export format 'tfrecord': expected one of xgaze, gazehub" in result.output


def test_command_line_names_a_missing_run_folder(tmp_path):
    """Once "error: <parent>/_manifest.json: a synthesis run's manifest is needed", the folder itself dropped."""
    from typer.testing import CliRunner

    from gazegen.cli import app

    result = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), str(tmp_path / "xg")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [
        f"error: {tmp_path / 'nope'}: no such file or folder; a finished synthesis output folder is needed to export"]
    assert not (tmp_path / "xg").exists()


def test_command_line_refuses_a_file_as_dest_in_one_line(run, tmp_path):
    """Once a rich traceback ending in FileExistsError; now one line, the file untouched."""
    from typer.testing import CliRunner

    from gazegen.cli import app

    out, _ = run
    afile = tmp_path / "afile"
    afile.write_text("mine")
    result = CliRunner().invoke(app, ["export", str(out), str(afile)])
    assert result.exit_code == 2 and result.output == f"error: {afile}: not a folder\n"
    assert afile.read_text() == "mine"
    result = CliRunner().invoke(app, ["export", str(out), str(afile / "dest")])
    assert result.exit_code == 2 and result.output == f"error: {afile / 'dest'}: cannot be made: {afile} is not a folder\n"


def test_identities_are_people_not_files():
    """An h5 store's file is one subject; a photo's faces and a Parquet input's rows are each their own person; a '#'
    in a file name is part of it (ids as pipelines/sources.py makes them)."""
    cases = {"train/subject0003.h5#000012": ("train/subject0003.h5", "train"), "s.HDF5#000001": ("s.HDF5", "."),
             "photo.jpg": ("photo.jpg", "."), "a/photo.jpg#face01": ("a/photo.jpg#face01", "a"),
             "party#1.jpg": ("party#1.jpg", "."), "d/x.parquet#000012": ("d/x.parquet#000012", "d"),
             "d/x.parquet#000012#face01": ("d/x.parquet#000012#face01", "d"), "p#q/x.png": ("p#q/x.png", "p#q")}
    for source, (by_file, by_folder) in cases.items():
        assert (export_module.identity_of(source, "file"), export_module.identity_of(source, "folder")) == (by_file, by_folder)


def test_an_unknown_test_identity_creates_and_clears_nothing(run, tmp_path):
    """--test is checked before DEST is made (once an empty DEST was left), and before --overwrite clears one."""
    from typer.testing import CliRunner

    from gazegen.cli import app

    out, _ = run
    result = CliRunner().invoke(app, ["export", str(out), str(tmp_path / "new"), "--test", "nosuchid"])
    assert result.exit_code == 2 and result.output.startswith("error: --test ['nosuchid']: no such identity")
    assert not (tmp_path / "new").exists()
    export_run(str(out), tmp_path / "done", progress=False)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "done").rglob("*"))
    result = CliRunner().invoke(app, ["export", str(out), str(tmp_path / "done"), "--test", "nosuchid", "--overwrite"])
    assert result.exit_code == 2 and sorted(p.relative_to(tmp_path) for p in (tmp_path / "done").rglob("*")) == before


def test_options_that_would_be_ignored_or_are_wrong_are_named(run, tmp_path):
    """--image-format only changes a gazehub export: with xgaze it is refused, as synthesize refuses ignored options;
    a bad typed value is named by its option, not by its config key."""
    from typer.testing import CliRunner

    from gazegen.cli import app

    out, _ = run
    dest = tmp_path / "x"
    result = CliRunner().invoke(app, ["export", str(out), str(dest), "--image-format", "png"])
    assert result.exit_code == 2 and result.output == (
        "error: --image-format png: applies to --format gazehub only (--format xgaze writes its images inside h5 files), "
        "so it would be ignored: leave it out\n")  # fmt: skip
    result = CliRunner().invoke(app, ["export", str(out), str(dest), "--resolution", "-5"])
    assert result.exit_code == 2 and result.output == "error: command line: --resolution: must be in [0, 4096], got -5\n"
    assert not dest.exists()
    result = CliRunner().invoke(app, ["export", str(out), str(dest), "--format", "gazehub", "--image-format", "png"])
    assert result.exit_code == 0, result.output
    assert json.loads((dest / "_export.json").read_text())["settings"]["image_format"] == "png"


def make_failed_run(out: Path) -> None:
    """A finished run of SOURCES in which every input failed: its shards hold no rows, only error records."""
    plan = plan_shards(SOURCES, 2)
    check_or_create(str(out), RunManifest.create(SOURCES, "ab" * 32, {"normalisation": NORM.__dict__}, 2))
    for spec in plan:
        with ShardWriter(str(out), spec, row_group_size=3) as writer:
            for source in spec.inputs:
                writer.add_error(f"/in/{source.split('#')[0]}", "no face found", source_id=source, stage="decode")
    finalize(str(out), plan)


@pytest.mark.parametrize("format", ["xgaze", "gazehub"])
def test_a_run_without_rows_is_refused_and_nothing_is_written(run, tmp_path, format):
    """Once exit 0 and an empty export (xgaze: a split file of empty lists; gazehub: _export.json alone),
    which a trainer reads as a finished data set of no subjects. Refused as `gazegen data sheet` refuses
    it, before DEST is made, or cleared by --overwrite."""
    from typer.testing import CliRunner

    from gazegen.cli import app

    failed = tmp_path / "failed"
    make_failed_run(failed)
    assert json.loads((failed / "_manifest.json").read_text())["status"] == "complete"
    message = (f"error: {failed}: the shards hold no rows (every input of the run failed, _errors.parquet says why); "
               "nothing to export\n")
    result = CliRunner().invoke(app, ["export", str(failed), str(tmp_path / "new"), "--format", format])
    assert (result.exit_code, result.output) == (2, message)
    assert not (tmp_path / "new").exists()
    out, _ = run
    export_run(str(out), tmp_path / "done", progress=False)  # an earlier export, kept
    before = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in (tmp_path / "done").rglob("*")}
    result = CliRunner().invoke(app, ["export", str(failed), str(tmp_path / "done"), "--format", format, "--overwrite"])
    assert (result.exit_code, result.output) == (2, message)
    assert {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in (tmp_path / "done").rglob("*")} == before


def test_command_line_ctrl_c_says_what_is_kept_and_the_same_command_resumes(run, tmp_path, monkeypatch):
    """Once exit 130 and nothing said. Ctrl-C at the first rows of s3 (shard 1 interleaves them with s2's):
    s1's file is finished and kept, s2's temporary file goes, and the same command exports the rest."""
    from typer.testing import CliRunner

    from gazegen.cli import app

    out, expected = run
    dest = tmp_path / "x"
    real = export_module.decode_rows

    def ctrl_c_at_s3(table, path, *args):
        if any(s.startswith("s3.h5") for s in table["source_id"].to_pylist()):
            raise KeyboardInterrupt
        return real(table, path, *args)

    monkeypatch.setattr(export_module, "decode_rows", ctrl_c_at_s3)
    command = ["export", str(out), str(dest)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert result.output.splitlines()[-1] == (  # after the progress bar
        f"interrupted: the finished identities in {dest} are kept; the same command exports the rest")
    assert sorted(p.name for p in (dest / "train").glob("*.h5")) == ["subject0000.h5"]
    assert not list(dest.glob("**/*.tmp")) and json.loads((dest / "_export.json").read_text())["status"] == "running"
    monkeypatch.undo()
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0 and f"{len(expected)} images, 3 identities (3 train, 0 test); 1 were already done" in result.output
    check_xgaze(dest, expected)


@pytest.mark.parametrize("first, again, named", [
    ([], ["--resolution", "32"], "settings differ (1): resolution: 0 -> 32"),
    (["--format", "gazehub"], ["--format", "gazehub", "--image-format", "png", "--test", "s2"],
     "settings differ (2): image_format: 'jpg' -> 'png', test: [] -> ['s2']"),
])  # fmt: skip
def test_another_export_in_dest_is_refused_naming_what_differs(run, tmp_path, first, again, named):
    """Once only "holds an export of other shards or settings": now each setting with its recorded and new
    values (as `gazegen synthesize` names what differs from its manifest), and DEST is left as it was."""
    from typer.testing import CliRunner

    from gazegen.cli import app

    out, _ = run
    dest = tmp_path / "x"
    assert CliRunner().invoke(app, ["export", str(out), str(dest), *first]).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    result = CliRunner().invoke(app, ["export", str(out), str(dest), *again])
    assert result.exit_code == 2 and result.output == (
        f"error: {dest / '_export.json'}: {dest} holds an export of other shards or settings ({named}); "
        "choose another DEST or pass --overwrite to replace it\n")  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == before


def test_another_run_exported_in_dest_is_named(run, tmp_path):
    """The shards differ, the settings being the same: DEST holds an export of another run, or of this
    folder before its shards were rewritten."""
    out, _ = run
    other = tmp_path / "other"
    make_run(other, corrupt="s1.h5#000000-0000-0000")  # other shard bytes, so other checksums
    export_run(str(out), tmp_path / "x", progress=False)
    with pytest.raises(ExportError, match=rf"\(shards differ: {out} was exported, not {other}\);"):
        export_run(str(other), tmp_path / "x", progress=False)
    redone = tmp_path / "redone"
    shutil.copytree(out, redone)
    export_run(str(redone), tmp_path / "y", progress=False)
    for name in [p.name for p in other.glob("shard-*.parquet")] + ["_manifest.json"]:  # the run made again, differently
        shutil.copyfile(other / name, redone / name)
    with pytest.raises(ExportError, match=rf"\(shards differ: {redone} was exported, and its shards have changed since\);"):
        export_run(str(redone), tmp_path / "y", progress=False)
