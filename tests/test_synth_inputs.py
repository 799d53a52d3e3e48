"""The decode stage's guards (pipelines/guards.py, pipelines/inputs.py): every bad input is one
error record naming its problem, the good ones around it decode, and nothing hangs. No Ray."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import struct
import threading
import zlib
from pathlib import Path

import cv2
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gazegen import geometry
from gazegen.config import PUBLISHED_NORMALISATIONS, NormalisationConfig, RigConfig, load_synth_config
from gazegen.data import schema
from gazegen.data.sample import Sample
from gazegen.data.store import SubjectWriter
from gazegen.data.xgaze import open_subject
from gazegen.pipelines.guards import InputError, call_with_timeout, decode_image, pitch_yaw, read_regular_file, resolve_inside
from gazegen.pipelines.inputs import READERS, DecodeSettings, decode_batch, decode_sources, photo_sources
from gazegen.pipelines.manifest import check_or_create, finalize
from gazegen.pipelines.plan import photo_views_warning
from gazegen.pipelines.run_manifest import RunManifest
from gazegen.pipelines.shards import ShardWriter, plan_shards, run_files
from gazegen.pipelines.sources import list_sources

NORM = PUBLISHED_NORMALISATIONS["livegaze512"].at_resolution(64)
SETTINGS = DecodeSettings(64, NORM, "never")


def png_bytes(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring width x height RGB pixels, then IEND: no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def write_store(path: Path, poses: list, gazes: list, subject: str = "subject0000") -> None:
    norm = NormalisationConfig(focal=1600.0, distance_mm=950.0, resolution=32)
    with SubjectWriter(path, norm, subject) as writer:
        writer.write(
            Sample(image=np.full((32, 32, 3), 90, np.uint8), gaze=np.zeros(2, np.float32), head_pose=np.asarray(p, np.float32),
                   gaze_head=np.asarray(g, np.float32), camera=np.zeros(25, np.float32), normalisation=norm, subject=subject,
                   frame_index=i)
            for i, (p, g) in enumerate(zip(poses, gazes))
        )  # fmt: skip


def by_id(folder: Path, settings: DecodeSettings = SETTINGS) -> dict:
    records = list_sources(folder)
    return {r.source_id: d for r, d in zip(records, decode_sources(records, settings))}


def test_bad_labels_fail_their_own_source_only(tmp_path):
    write_store(tmp_path / "s.h5", [[0.1, 0.2], [np.nan, 0.0], [30.0, 10.0], [0.0, 0.3]],
                [[0.0, 0.1], [0.0, 0.0], [0.0, 0.0], [0.1, np.inf]])  # fmt: skip
    crop = {"bytes": png_bytes(np.zeros((64, 64, 3), np.uint8)), "path": None}
    pq.write_table(pa.table({"image": [crop, crop, crop], "head_pose": [[0.2, 0.1], [0.1, 0.2, 0.3], [0.0, 0.0]],
                             "gaze_head": [[0.0, 0.0], [0.0, 0.0], None]}), tmp_path / "t.parquet")  # fmt: skip
    decoded = by_id(tmp_path)
    reasons = {k: d.reason for k, d in decoded.items() if not d.ok}
    assert sorted(reasons) == ["s.h5#000001", "s.h5#000002", "s.h5#000003", "t.parquet#000001"]
    assert "head_pose holds non-finite" in reasons["s.h5#000001"]
    assert "degrees given?" in reasons["s.h5#000002"]
    assert "gaze_head holds non-finite" in reasons["s.h5#000003"]
    assert "head_pose has shape (3,)" in reasons["t.parquet#000001"]
    np.testing.assert_allclose(decoded["s.h5#000000"].head_pose, [0.1, 0.2], atol=1e-6)
    np.testing.assert_allclose(decoded["t.parquet#000000"].head_pose, [0.2, 0.1], atol=1e-6)
    assert decoded["t.parquet#000002"].ok and decoded["t.parquet#000002"].gaze_head is None
    # the Ray stage's batch: a wrong shape next to a good row no longer breaks the stacking of the block
    records = list_sources(tmp_path)
    batch = {"shard_id": np.zeros(len(records), int), "source_id": np.array([r.source_id for r in records]),
             "source_path": np.array([r.path for r in records]), "kind": np.array([r.kind for r in records]),
             "index": np.array([r.index for r in records]), "face": np.array([r.face for r in records]),
             "error": np.array([r.error for r in records])}  # fmt: skip
    out = decode_batch(batch, SETTINGS)
    assert out["status"].tolist() == ["ok", "error", "error", "error", "ok", "error", "ok"]
    assert out["head_pose"].shape == (7, 2) and out["image"].shape == (7, 64, 64, 3)
    assert [d.reason for d in decode_sources(records, SETTINGS)] == out["reason"].tolist()  # a rerun: the same outcome


def test_tiff_photos_are_sources_and_skipped_kinds_are_named(tmp_path, caplog):
    """TIFF (scanners, microscopes, some cameras) is read like PNG: 8-bit RGB and 16-bit grey pages
    decode to the pixels written; files of other kinds are skipped with their suffixes named."""
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "scan.tif")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "grey16.tiff")
    cv2.imwrite(str(tmp_path / "photo.png"), rgb[..., ::-1])
    (tmp_path / "iphone.heic").write_bytes(b"not read")
    (tmp_path / "notes.txt").write_text("a sidecar")
    with caplog.at_level("INFO", logger="gazegen.pipelines.sources"):
        records = list_sources(tmp_path)
    assert [r.source_id for r in records] == ["grey16.tiff", "photo.png", "scan.tif"]
    assert "2 files of other kinds skipped (.heic x1, .txt x1)" in caplog.text
    decoded = {r.source_id: decode_image((tmp_path / r.source_id).read_bytes(), 10**6) for r in records}
    np.testing.assert_array_equal(decoded["scan.tif"], rgb)
    np.testing.assert_array_equal(decoded["grey16.tiff"], np.repeat(rgb[..., :1], 3, -1))  # 16-bit -> 8-bit: the high byte
    np.testing.assert_array_equal(decoded["photo.png"], rgb)


def test_files_that_are_not_images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("hello, not a jpeg")
    (folder / "truncated.png").write_bytes(png_bytes(np.full((64, 64, 3), 7, np.uint8))[:60])
    (folder / "bomb.png").write_bytes(png_header_only(20000, 20000))  # past Pillow's own limit too
    (folder / "big.png").write_bytes(png_header_only(5000, 4000))
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(folder / "good.png"), np.full((64, 64, 3), 5, np.uint8))
    os.mkfifo(folder / "fifo.jpg")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "h5fifo.h5").symlink_to(folder / "fifo.jpg")  # an h5 that is a FIFO: never opened while listing
    decoded = by_id(folder, DecodeSettings(64, NORM, "never", max_pixels=10**6))
    reasons = {k: d.reason for k, d in decoded.items() if not d.ok}
    assert decoded["good.png"].ok
    assert "1 x 1 pixels: smaller than 32 px" in reasons["tiny.png"]
    assert "empty file" in reasons["empty.png"]
    assert "not a readable image header" in reasons["text.jpg"]
    assert "not a decodable image" in reasons["truncated.png"] or "header" in reasons["truncated.png"]
    assert reasons["big.png"].endswith("5000 x 4000 pixels, more than max_pixels = 1000000 (checked from the header, not decoded; "
                                       "--set max_pixels=20000000 takes it)")
    assert "more than max_pixels = 1000000 (checked from the header, not decoded)" in reasons["bomb.png"]
    for name in ("fifo.jpg", "zero.png", "h5fifo.h5"):
        assert "not a regular file" in reasons[name], name
    assert decoded["h5fifo.h5"].stage == "list"
    assert len(reasons) == 9


def test_parquet_path_cells_stay_inside_the_root_and_read_only_regular_files(tmp_path):
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    cv2.imwrite(str(root / "imgs" / "a.png"), np.full((64, 64, 3), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "outside.png"), np.full((64, 64, 3), 1, np.uint8))
    os.mkfifo(root / "imgs" / "pipe.png")
    (root / "imgs" / "link.png").symlink_to(tmp_path / "outside.png")
    cells = ["imgs/a.png", str(root / "imgs" / "a.png"), "../outside.png", "imgs/pipe.png", "/dev/zero", "imgs/link.png"]
    pq.write_table(pa.table({"image": [{"bytes": None, "path": c} for c in cells], "head_pose": [[0.0, 0.0]] * len(cells)}),
                   root / "t.parquet")  # fmt: skip
    records = list_sources(root / "t.parquet")  # the root: the file's folder
    settings = DecodeSettings(64, NORM, "never", root=str(root))
    decoded = decode_sources(records, settings)
    assert [d.ok for d in decoded] == [True, True, False, False, False, False]
    assert decoded[0].image[0, 0].tolist() == [200, 200, 200]
    assert "outside the input root" in decoded[2].reason and "row 2" in decoded[2].reason
    assert "not a regular file" in decoded[3].reason
    assert "outside the input root" in decoded[4].reason  # /dev/zero is never opened
    assert "outside the input root" in decoded[5].reason  # a symlink is followed before the check
    with pytest.raises(InputError, match="not a regular file"):  # and a device inside the root is refused unread
        read_regular_file("/dev/zero", 1000)


def test_a_decode_past_its_time_limit_is_an_error_and_the_rest_goes_on(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 64, 3), np.uint8))
    write_store(tmp_path / "s.h5", [[0.0, 0.0]], [[0.0, 0.0]])
    release = threading.Event()

    def hanging(records, settings):  # an image reader that never returns until the test lets it
        release.wait(600)
        return []

    image, h5 = list_sources(tmp_path)
    try:
        [stuck] = decode_sources([image], DecodeSettings(64, NORM, "never", timeout_s=0.05), readers=READERS | {"image": hanging})
        [after] = decode_sources([h5], SETTINGS)  # with the reader still hanging, the next source decodes
    finally:
        release.set()
    assert not stuck.ok and stuck.stage == "decode" and "longer than decode_timeout_s = 0.05 s" in stuck.reason
    assert after.ok


def test_head_pitch_the_view_offsets_would_carry_past_90_degrees(tmp_path):
    write_store(tmp_path / "s.h5", [[np.radians(75), 0.0], [np.radians(40), 0.0]], [[0.0, 0.0], [0.0, 0.0]])
    settings = DecodeSettings(64, NORM, "never", view_pitch=(np.radians(-20), np.radians(20)))
    decoded = decode_sources(list_sources(tmp_path), settings)
    assert not decoded[0].ok and "reaches 95.0 deg" in decoded[0].reason
    assert decoded[1].ok


def test_guards_directly():
    with pytest.raises(InputError, match="shape"):
        pitch_yaw([[0.1, 0.2]], "head_pose")
    with pytest.raises(InputError, match="not numbers"):
        pitch_yaw(["a", "b"], "gaze_head")
    np.testing.assert_array_equal(pitch_yaw([np.pi / 2, -np.pi], "x"), [np.pi / 2, -np.pi])  # the bounds themselves pass
    with pytest.raises(InputError, match="outside the input root"):
        resolve_inside("a/../../b.png", Path("/data/in"), Path("/data/in"))
    with pytest.raises(InputError, match="max_pixels = 1000 "):
        decode_image(png_bytes(np.zeros((40, 40, 3), np.uint8)), 1000)
    assert decode_image(png_bytes(np.zeros((32, 48, 3), np.uint8)), 2000).shape == (32, 48, 3)
    with pytest.raises(ZeroDivisionError):  # a reader's own exception comes back to the caller
        call_with_timeout(lambda: 1 / 0, 5.0)


# --------------------------------------------------------------------------- what is never an input


def write_run(out: Path, sources: list[str]) -> None:
    """A finished synthesis run in ``out``, written by the run's own writers: one row per source but the
    first, which failed (so the run has shards, their stats and errors, the errors file, card, histograms)."""
    plan = plan_shards(sources, 1)
    check_or_create(str(out), RunManifest.create(sources, "ab" * 32, {}, 1))
    png = schema.encode_png(np.zeros((32, 32, 3), np.uint8))
    for spec in plan:
        with ShardWriter(str(out), spec) as writer:
            source = spec.inputs[0]
            if spec.shard_id == 0:
                writer.add_error(f"/photos/{source}", "empty file", source_id=source, stage="decode")
                continue
            labels = {name: np.zeros((1, width)) for name, width in schema.LABEL_WIDTHS.items()}
            writer.write({"image": [png], "depth": [schema.encode_depth_png(np.full((32, 32), 900.0))],
                          "alpha": [schema.encode_alpha_png(np.ones((32, 32)))], **labels, "source_id": [source],
                          "source_path": [f"/photos/{source}"], "gaze_index": [0], "view_index": [0],
                          "checkpoint_hash": ["ab" * 32], "seed": [0]})  # fmt: skip
    finalize(str(out), plan)


def test_the_run_output_folder_is_never_an_input(tmp_path):
    """OUT inside INPUTS: a rerun must list what the first run listed, not the run's own shards, errors and card."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(folder / name), np.zeros((64, 64, 3), np.uint8))
    before = [r.source_id for r in list_sources(folder, out=folder / "synth")]
    write_run(folder / "synth", ["a.png", "b.png"])
    (folder / "synth" / "_tmp").mkdir()
    (folder / "synth" / "_tmp" / "shard-00001.parquet.0123abcd").write_bytes(b"PAR1 partial")  # a killed run's file
    assert {"README.md", "label_histograms.png", "_errors.parquet", "_manifest.json"} <= {p.name for p in (folder / "synth").iterdir()}
    assert [r.source_id for r in list_sources(folder, out=folder / "synth")] == before == ["a.png", "b.png"]
    (tmp_path / "link").symlink_to(folder / "synth")
    glob = str(folder / "**" / "*.*")  # a glob reaching into OUT, and OUT named through a link to it
    assert [r.source_id for r in list_sources(glob, out=tmp_path / "link")] == before
    with pytest.raises(InputError, match=f"the inputs lie in the output folder {folder}, whose files are never read as inputs; "
                                         "write the run to another folder"):
        list_sources(folder, out=folder)  # OUT = INPUTS: there would be nothing left to read
    with pytest.raises(InputError, match="the inputs lie in the output folder"):
        list_sources(folder / "synth" / "_errors", out=folder / "synth")


def test_an_earlier_runs_folder_gives_its_shards_not_its_errors_card_or_histograms(tmp_path, caplog):
    """A run's folder given as INPUTS (or its shards by a glob): its shards are Parquet sources (labelled crops); what it
    wrote beside them (pipelines/shards.py run_files) is not: no error rows for _errors.parquet, _errors/shard-*.parquet
    or label_histograms.png. A run folder below a folder given as INPUTS (a run written inside a photo folder) is not
    read at all: its rows would come back as new sources in every later run there."""
    run = tmp_path / "old"
    write_run(run, ["a.png", "b.png", "c.png"])
    beside = run_files(str(run), shards=False)
    assert set(beside) >= {"_errors", "_errors.parquet", "README.md", "label_histograms.png", "_manifest.json", "shard-00001_stats.json"}
    with caplog.at_level("INFO", logger="gazegen.pipelines.sources"):
        records = list_sources(run)
    assert [r.source_id for r in records] == ["shard-00001.parquet#000000", "shard-00002.parquet#000000"]
    assert "10 files a synthesis run wrote beside its shards skipped" in caplog.text
    assert all(d.ok for d in decode_sources(records, SETTINGS))
    by_glob = [r.source_id for r in list_sources(str(tmp_path / "*" / "shard-*.parquet"))]
    assert by_glob == ["old/shard-00001.parquet#000000", "old/shard-00002.parquet#000000"]
    # the same names in a folder that holds no run's manifest are the user's own files, read as ever; the run beside
    # them, below the INPUTS folder, is skipped with a warning naming it
    mine = tmp_path / "mine"
    (mine / "_errors").mkdir(parents=True)
    cv2.imwrite(str(mine / "label_histograms.png"), np.zeros((64, 64, 3), np.uint8))
    pq.write_table(pa.table({"image": [{"bytes": png_bytes(np.zeros((64, 64, 3), np.uint8)), "path": None}]}), mine / "_errors" / "x.parquet")
    caplog.clear()
    with caplog.at_level("INFO", logger="gazegen.pipelines.sources"):
        ids = [r.source_id for r in list_sources(tmp_path)]
    assert ids == ["mine/_errors/x.parquet#000000", "mine/label_histograms.png"]
    files = sum(1 for p in run.rglob("*") if p.is_file())  # its shards, manifest, card, errors, ...
    assert f"{files} files of 1 earlier synthesis runs inside it skipped ({run})" in caplog.text


def test_an_unreadable_image_is_named_without_a_memory_address(tmp_path):
    """Pillow's own message names its in-memory buffer by address, which changes every run."""
    (tmp_path / "text.png").write_text("hello, not a png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    records = list_sources(tmp_path)
    first, again = decode_sources(records, SETTINGS), decode_sources(records, SETTINGS)
    assert [d.reason for d in first] == [d.reason for d in again]
    for record, decoded in zip(records, first):
        assert not decoded.ok and " at 0x" not in decoded.reason
        assert decoded.reason == f"{record.path}: not a readable image header (no image format recognised; {os.path.getsize(record.path)} bytes)"


def test_photo_sources_under_view_turns_are_warned_about_once(tmp_path):
    """Photos (image files, Parquet rows without head_pose) have an estimated head pose; h5 rows and labelled
    Parquet rows carry theirs. The warning is the run's, one line whatever the number of photos."""
    photos, store = tmp_path / "photos", tmp_path / "store"
    photos.mkdir(), store.mkdir()
    for name in ("a.png", "b.jpg"):
        cv2.imwrite(str(photos / name), np.zeros((64, 64, 3), np.uint8))
    crop = {"bytes": png_bytes(np.zeros((64, 64, 3), np.uint8)), "path": None}
    pq.write_table(pa.table({"image": [crop] * 3, "head_pose": [[0.1, 0.0], None, [0.0, 0.2]]}), photos / "rows.parquet")
    pq.write_table(pa.table({"image": [crop] * 2}), photos / "plain.parquet")
    write_store(store / "s.h5", [[0.1, 0.2], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]])
    pq.write_table(pa.table({"image": [crop], "head_pose": [[0.0, 0.1]]}), store / "labelled.parquet")
    records = list_sources(tmp_path)
    assert [r.source_id for r in photo_sources(records)] == ["photos/a.png", "photos/b.jpg", "photos/plain.parquet#000000",
                                                             "photos/plain.parquet#000001", "photos/rows.parquet#000001"]  # fmt: skip
    turned = load_synth_config(None, grid="pitch,view", view_yaw="-20:20:3").grid_spec
    warning = photo_views_warning(records, turned)
    assert warning.startswith("5 of 10 sources are photos (e.g. photos/a.png) and the grid turns the view")
    assert "doubled (ghosted) face" in warning and "gaze-only grid (--grid pitch,yaw)" in warning and "\n" not in warning
    store_only = list_sources(store)
    assert photo_sources(store_only) == [] and photo_views_warning(store_only, turned) == ""
    assert photo_views_warning(records, load_synth_config(None, grid="pitch,yaw").grid_spec) == ""  # gaze only
    assert photo_views_warning(records, load_synth_config(None, view_pitch="0:0:1", view_yaw="0:0:1").grid_spec) == ""  # offset 0


def test_an_h5_missing_several_keys_is_one_line_naming_the_file_once(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    with h5py.File(folder / "nopatch.h5", "w") as f:
        f["face_gaze"] = np.zeros((2, 2), np.float32)
    with h5py.File(folder / "odd.h5", "w") as f:  # several problems of several kinds: the first, and how many more
        f["face_patch"] = np.zeros((2, 8, 8, 3), np.float32)
        f["face_gaze"] = np.zeros((3, 2), np.float32)
    reasons = {r.source_id: r.error for r in list_sources(folder)}
    path = folder / "nopatch.h5"
    assert reasons["nopatch.h5"] == (f"{path}: keys 'face_patch', 'face_head_pose', 'frame_index', 'cam_index' are missing "
                                     "(required in eth-xgaze files; keys present: ['face_gaze'])")
    assert "\n" not in reasons["odd.h5"] and re.search(r"odd\.h5: .*\(and \d+ more problems?\)$", reasons["odd.h5"])
    assert not reasons["odd.h5"].startswith("DataError")


def test_a_store_framed_about_another_face_centre_is_normalised_again(tmp_path):
    """Procedural heads (the camera at their eye midpoint) read for a model framed ETH-XGaze's way (23.7 mm below the
    eyes): frontal rows come out with the eyes f * 23.7 / d pixels above the middle row, and the camera turned down
    by atan(23.7 / d) about its x axis (face_mat_norm), so the head, still facing the old axis, reads as pitched down
    by that angle; normalised back, a row is where it was."""
    from gazegen.config import SynthHeadsConfig
    from gazegen.data.heads import synthesize_store
    from gazegen.pipelines.inputs import reframe

    heads = SynthHeadsConfig(subjects=1, test_subjects=0, resolution=64, gazes=1, rig=RigConfig(views=3))
    store = synthesize_store(tmp_path / "heads", heads, workers=1)
    files = list((store / "train").glob("*.h5"))
    eth = dataclasses.replace(heads.camera, eye_above_centre_mm=23.7)
    decoded = decode_sources([r for r in list_sources(files[0]) if r.index == 0], DecodeSettings(64, eth, "never"))[0]
    tilt = math.atan2(23.7, eth.distance_mm)
    np.testing.assert_allclose(decoded.head_pose, [-tilt, 0.0], atol=1e-9)  # row 0: camera 0, frontal
    np.testing.assert_allclose(decoded.face_mat_norm, geometry.rotation_x(np.array(tilt)), atol=1e-9)
    with open_subject(files[0]) as reader:
        sample = reader[0]
    eyes = np.repeat((np.maximum(sample.left_eye_mask, sample.right_eye_mask) * 255)[..., None], 3, -1).astype(np.uint8)
    rows = [np.nonzero(img[..., 0] > 127)[0].mean() + 0.5 for img in (eyes, reframe(eyes, sample.head_pose, heads.camera, eth).image)]
    assert abs(rows[0] - 32) < 1.0 and abs(rows[0] - rows[1] - eth.focal * 23.7 / eth.distance_mm) < 1.0, rows
    for i in range(heads.rig.views):  # every view: the round trip
        with open_subject(files[0]) as reader:
            sample = reader[i]
        there = reframe(sample.image, sample.head_pose, heads.camera, eth)
        back = reframe(there.image, there.head_pose, eth, heads.camera)
        # to 1e-4 rad, not exactly: ETH-XGaze's distance scaling S is not a rigid camera move (a second-order difference)
        np.testing.assert_allclose(back.head_pose, sample.head_pose, atol=1e-4)
        np.testing.assert_allclose(back.face_mat_norm @ there.face_mat_norm, np.eye(3), atol=1e-4)
        inner = np.s_[16:48, 16:48]
        assert np.abs(back.image[inner].astype(float) - sample.image[inner]).mean() < 6.0
