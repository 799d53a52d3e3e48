"""`prepare_store`: published files -> training store; resize keeps labels; reruns skip done subjects."""

from __future__ import annotations

import dataclasses
import json
import os

import h5py
import numpy as np
import pytest
from test_xgaze import NORM32, NORM_GN32, eth_xgaze_labels, make_gazenerf, make_official

from gazegen import geometry
from gazegen.data.prepare import PrepareReport, find_subject_files, prepare_store, resize_sample
from gazegen.data.xgaze import DataError, StoreReader, XGazeReader, file_component


def official_tree(root, subjects=(0, 1), test=(2,), n=4):
    truths = {}
    for i in subjects:
        truths[i] = make_official(root / "train" / f"subject{i:04d}.h5", n=n, seed=i)
    for i in test:
        truths[i] = make_official(root / "test" / f"subject{i:04d}.h5", n=n, seed=i)
    names = lambda ids: [f"subject{i:04d}.h5" for i in ids]  # noqa: E731
    (root / "train_test_split.json").write_text(json.dumps({"train": names(subjects), "test": names(test)}))
    return truths


def test_official_files_become_a_store_at_the_configured_resolution(tmp_path):
    truths = official_tree(tmp_path / "src")
    report = prepare_store(tmp_path / "src", tmp_path / "out", resolution=48, source_normalisation=NORM32, chunk=3,
                           progress=False)
    assert isinstance(report, PrepareReport)
    assert report.written == ("train/subject0000.h5", "train/subject0001.h5", "test/subject0002.h5")
    assert report.images == 12 and report.skipped == () and "3 subject file(s) written" in report.summary()
    split = json.loads((tmp_path / "out" / "train_test_split.json").read_text())
    assert split == {"train": ["subject0000.h5", "subject0001.h5"], "test": ["subject0002.h5"]}
    norm48 = NORM32.at_resolution(48)
    with StoreReader(tmp_path / "out" / "train" / "subject0001.h5") as reader:
        assert reader.normalisation == norm48 and norm48.focal == pytest.approx(960 * 48 / 224)  # same field of view
        samples = list(reader)
    truth = truths[1]
    for i, s in enumerate(samples):
        assert s.image.shape == (48, 48, 3)
        np.testing.assert_array_equal(s.image[5, 5], [200, 100, 10 + i])  # RGB, resized
        np.testing.assert_allclose(s.gaze, truth["face_gaze"][i], atol=1e-6)
        np.testing.assert_allclose(s.head_pose, truth["face_head_pose"][i], atol=1e-6)
        assert geometry.angular_error(s.gaze_head.astype(np.float64), truth["gaze_head"][i]) < 1e-3
        np.testing.assert_allclose(s.camera, geometry.head_pose_to_camera(truth["face_head_pose"][i], norm48), atol=1e-6)
        np.testing.assert_allclose(s.landmarks, truth["facial_landmarks"][i] * 1.5, rtol=1e-5)
        assert (s.frame_index, s.cam_index) == (i // 3, i % 3 * 8)
    with h5py.File(tmp_path / "out" / "train" / "subject0001.h5") as f:  # the published layout, BGR on disk
        assert f["face_patch"].shape == (4, 48, 48, 3) and (f["face_patch"][0, ..., 2] == 200).all()


def test_gazenerf_masks_survive_resizing(tmp_path):
    truth = make_gazenerf(tmp_path / "src" / "xgaze_subject0005.h5", n=3, res=32)
    prepare_store(tmp_path / "src", tmp_path / "out", resolution=16, source_normalisation=NORM_GN32, progress=False)
    with StoreReader(tmp_path / "out" / "train" / "subject0005.h5") as reader:
        samples = list(reader)
    for i, s in enumerate(samples):
        assert s.face_mask.shape == (16, 16) and set(np.unique(s.face_mask)) <= {0, 1}
        np.testing.assert_array_equal(s.face_mask * 255, truth["head_mask"][i, ::2, ::2])  # nearest, exact 2x
        np.testing.assert_allclose(s.gaze_head, truth["pitchyaw_head_gazenerf"][i] * [-1, 1], atol=1e-6)
        assert geometry.angular_error(s.gaze.astype(np.float64), truth["face_gaze"][i]) < 1e-3


def test_resize_sample_keeps_labels_and_scales_landmarks(tmp_path):
    make_official(tmp_path / "s.h5", n=1)
    with XGazeReader(tmp_path / "s.h5", NORM32) as reader:
        sample = reader[0]
    big = resize_sample(sample, NORM32.at_resolution(64))
    assert big.image.shape == (64, 64, 3) and big.normalisation.resolution == 64
    for key in ("gaze", "head_pose", "gaze_head", "camera"):
        np.testing.assert_array_equal(getattr(big, key), getattr(sample, key))
    np.testing.assert_allclose(big.landmarks, sample.landmarks * 2, rtol=1e-6)
    same = resize_sample(sample, NORM32)
    assert same.image is sample.image


def test_rerun_skips_complete_subjects_and_redoes_the_rest(tmp_path):
    official_tree(tmp_path / "src", subjects=(0, 1), test=())
    kw = dict(resolution=32, source_normalisation=NORM32, progress=False)
    prepare_store(tmp_path / "src", tmp_path / "out", **kw)
    done = tmp_path / "out" / "train" / "subject0000.h5"
    stamp = done.stat().st_mtime_ns
    os.remove(tmp_path / "out" / "train" / "subject0001.h5")  # as if killed while writing it:
    (tmp_path / "out" / "train" / "subject0001.h5.tmp").write_bytes(b"half a file")
    report = prepare_store(tmp_path / "src", tmp_path / "out", **kw)
    assert report.skipped == ("train/subject0000.h5",) and report.written == ("train/subject0001.h5",)
    assert report.images == 4 and done.stat().st_mtime_ns == stamp
    assert not (tmp_path / "out" / "train" / "subject0001.h5.tmp").exists()
    with StoreReader(tmp_path / "out" / "train" / "subject0001.h5") as reader:
        assert len(reader) == 4
    again = prepare_store(tmp_path / "src", tmp_path / "out", **kw)
    assert again.written == () and len(again.skipped) == 2 and again.images == 0
    with pytest.raises(DataError, match=r"out: was prepared at resolution 32, this run's is 64; a rerun resumes only the same"):
        prepare_store(tmp_path / "src", tmp_path / "out", **{**kw, "resolution": 64})
    record = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert record == {"format": "gazegen-prepare", "version": 1, "source": str((tmp_path / "src").resolve()), "kind": "h5",
                      "resolution": 32, "source_normalisation": dataclasses.asdict(NORM32),
                      "subjects": {"train/subject0000.h5": {"source": "train/subject0000.h5", "rows": 4},
                                   "train/subject0001.h5": {"source": "train/subject0001.h5", "rows": 4}}}  # fmt: skip


def folder_contents(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_store_of_another_source_is_refused_and_replaced_only_with_overwrite(tmp_path):
    """The audit's case: OUT prepared from one source, then `prepare` of another into it once said
    "2 already complete" and kept the first's test/subject0002.h5 beside the new files. Now the
    record tells them apart: refused, OUT untouched; --overwrite leaves the new source's store only."""
    official_tree(tmp_path / "a", subjects=(0, 1), test=(2,))
    official_tree(tmp_path / "b", subjects=(0, 1), test=())
    kw = dict(resolution=32, source_normalisation=NORM32, progress=False)
    prepare_store(tmp_path / "a", tmp_path / "out", **kw)
    (tmp_path / "out" / "notes.txt").write_text("the user's own")
    before = folder_contents(tmp_path / "out")
    with pytest.raises(DataError) as info:
        prepare_store(tmp_path / "b", tmp_path / "out", **kw)
    assert str(info.value) == (f"{tmp_path / 'out'}: was prepared from the source {(tmp_path / 'a').resolve()}, this run's is "
                               f"{(tmp_path / 'b').resolve()}; with test/subject0002.h5 from test/subject0002.h5 (4 rows), this "
                               "run's source has no such subject; a rerun resumes only the same conversion: choose another "
                               "OUT, or pass --overwrite to replace the store in it")  # fmt: skip
    assert folder_contents(tmp_path / "out") == before
    report = prepare_store(tmp_path / "b", tmp_path / "out", overwrite=True, **kw)
    assert report.written == ("train/subject0000.h5", "train/subject0001.h5") and report.skipped == ()
    assert sorted(folder_contents(tmp_path / "out")) == ["notes.txt", "prepare.json", "train/subject0000.h5",
                                                         "train/subject0001.h5", "train_test_split.json"]
    assert json.loads((tmp_path / "out" / "train_test_split.json").read_text()) == {
        "train": ["subject0000.h5", "subject0001.h5"], "test": []}
    from gazegen.data.inspect import inspect_store

    assert inspect_store(tmp_path / "out").problems == ()
    assert prepare_store(tmp_path / "b", tmp_path / "out", **kw).skipped == ("train/subject0000.h5", "train/subject0001.h5")


def test_a_changed_source_or_a_store_without_a_record_is_refused(tmp_path):
    official_tree(tmp_path / "src", subjects=(0, 1), test=())
    kw = dict(resolution=32, source_normalisation=NORM32, progress=False)
    prepare_store(tmp_path / "src", tmp_path / "out", **kw)
    make_official(tmp_path / "src" / "train" / "subject0001.h5", n=6, seed=9)  # the same path, other data
    with pytest.raises(DataError, match=r"out: was prepared with train/subject0001\.h5 from train/subject0001\.h5 \(4 rows\), "
                                        r"this run's source gives it from train/subject0001\.h5 \(6 rows\);"):
        prepare_store(tmp_path / "src", tmp_path / "out", **kw)
    farther = dataclasses.replace(NORM32, distance_mm=700.0)
    with pytest.raises(DataError, match=r"out: was prepared with source normalisation \{.*'distance_mm': 600\.0.*\}, "
                                        r"this run's is \{.*'distance_mm': 700\.0"):
        prepare_store(tmp_path / "src", tmp_path / "out", **{**kw, "source_normalisation": farther})
    (tmp_path / "out" / "prepare.json").unlink()  # a store made otherwise (synth-heads, by hand, an older gazegen)
    with pytest.raises(DataError, match=r"out: holds a store with no prepare\.json"):
        prepare_store(tmp_path / "src", tmp_path / "out", **kw)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a store")  # a folder holding no store is fine
    assert len(prepare_store(tmp_path / "src", tmp_path / "other", **kw).written) == 2


def test_a_store_is_never_written_over_its_own_source(tmp_path):
    official_tree(tmp_path / "src", subjects=(0,), test=())
    before = folder_contents(tmp_path / "src")
    for out in (tmp_path / "src", tmp_path):
        with pytest.raises(DataError, match="holds the source"):
            prepare_store(tmp_path / "src", out, resolution=32, source_normalisation=NORM32, progress=False, overwrite=True)
    assert folder_contents(tmp_path / "src") == before


def test_bad_source_raises_and_keeps_finished_subjects(tmp_path):
    official_tree(tmp_path / "src", subjects=(0,), test=())
    kw = dict(resolution=32, source_normalisation=NORM32, progress=False)
    prepare_store(tmp_path / "src", tmp_path / "out", **kw)
    gaze = eth_xgaze_labels(np.random.default_rng(1), 4)["face_gaze"]
    gaze[2] = np.nan
    make_official(tmp_path / "src" / "train" / "subject0001.h5", n=4, face_gaze=gaze)
    list_in_train_split(tmp_path / "src", "subject0001.h5")
    with pytest.raises(DataError, match=r"subject0001\.h5: key 'face_gaze' has NaN/inf labels in 1 of 4 rows \(rows \[2\]\)"):
        prepare_store(tmp_path / "src", tmp_path / "out", **kw)
    with StoreReader(tmp_path / "out" / "train" / "subject0000.h5") as reader:
        assert len(reader) == 4
    list_in_train_split(tmp_path / "src", "subject0009.h5")
    with pytest.raises(DataError, match=r"lists 'subject0009\.h5' under 'train' but no such file exists"):
        prepare_store(tmp_path / "src", tmp_path / "out", **kw)


def list_in_train_split(root, name: str) -> None:
    """Add ``name`` to the train list of ``root``'s train_test_split.json."""
    path = root / "train_test_split.json"
    split = json.loads(path.read_text())
    split["train"].append(name)
    path.write_text(json.dumps(split))


def damage_a_chunk(path, key: str, chunk: int) -> None:
    """Overwrite the bytes of one compressed chunk of ``key`` in the h5 file at ``path``."""
    with h5py.File(path, "r") as f:
        info = f[key].id.get_chunk_info(chunk)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + 4)
        raw.write(b"\xff" * (info.size - 8))


def test_a_damaged_image_chunk_names_the_file_and_keeps_finished_subjects(tmp_path):
    official_tree(tmp_path / "src", subjects=(0,), test=())
    kw = dict(resolution=32, source_normalisation=NORM32, progress=False)
    prepare_store(tmp_path / "src", tmp_path / "out", **kw)
    bad = tmp_path / "src" / "train" / "subject0001.h5"
    truth = make_official(bad, n=8)
    with h5py.File(bad, "a") as f:  # the images gzip-compressed one row per chunk, as published files may be
        del f["face_patch"]
        f.create_dataset("face_patch", data=truth["face_patch"], chunks=(1, 32, 32, 3), compression="gzip")
    damage_a_chunk(bad, "face_patch", 5)
    list_in_train_split(tmp_path / "src", "subject0001.h5")
    with pytest.raises(DataError, match=r"subject0001\.h5: rows \d+-\d+ cannot be read \(.*\): the file is damaged"):
        prepare_store(tmp_path / "src", tmp_path / "out", **kw)
    with StoreReader(tmp_path / "out" / "train" / "subject0000.h5") as reader:
        assert len(reader) == 4


def test_test_files_without_gaze_labels_are_skipped_as_eth_xgaze_withholds_them(tmp_path):
    """ETH-XGaze's release root: its test split's files carry every key but `face_gaze`."""
    official_tree(tmp_path / "src", subjects=(0,), test=(2,))
    make_official(tmp_path / "src" / "test" / "subject0002.h5", n=4, face_gaze=None)
    report = prepare_store(tmp_path / "src", tmp_path / "out", resolution=32, source_normalisation=NORM32, progress=False)
    assert report.written == ("train/subject0000.h5",)
    assert report.withheld == (tmp_path / "src" / "test" / "subject0002.h5",)
    assert "without gaze labels" in report.summary() and "subject0002.h5" in report.summary()
    assert json.loads((tmp_path / "out" / "train_test_split.json").read_text())["test"] == []
    assert not (tmp_path / "out" / "test" / "subject0002.h5").exists()
    make_official(tmp_path / "src" / "train" / "subject0000.h5", n=4, face_gaze=None)  # a train file without labels stays an error
    with pytest.raises(DataError, match=r"subject0000\.h5: an ETH-XGaze file without gaze labels \(no key 'face_gaze'\)"):
        prepare_store(tmp_path / "src", tmp_path / "out2", resolution=32, source_normalisation=NORM32, progress=False)
    with pytest.raises(DataError, match=r"subject0002\.h5: an ETH-XGaze file without gaze labels"):  # the test folder alone: train by default
        prepare_store(tmp_path / "src" / "test", tmp_path / "out3", resolution=32, source_normalisation=NORM32, progress=False)


def test_a_subject_attribute_never_becomes_a_path(tmp_path):
    official_tree(tmp_path / "src", subjects=(0,), test=())
    prepare_store(tmp_path / "src", tmp_path / "a", resolution=16, source_normalisation=NORM32, progress=False)
    with h5py.File(tmp_path / "a/train/subject0000.h5", "r+") as f:
        f.attrs["subject"] = "../../escaped/x"  # data, not a path
    report = prepare_store(tmp_path / "a", tmp_path / "b", resolution=16, progress=False)
    assert report.written == ("train/_._.._escaped_x.h5",)
    assert sorted(p.name for p in (tmp_path / "b" / "train").iterdir()) == ["_._.._escaped_x.h5"]
    assert not (tmp_path / "escaped").exists()
    assert [file_component(n) for n in ("subject0003", "a/b", "..", ".hidden", "", "ä b")] == [
        "subject0003", "a_b", "_.", "_hidden", "_", "__b"]


def test_a_store_can_be_prepared_again_at_another_resolution(tmp_path):
    official_tree(tmp_path / "src", subjects=(0,), test=())
    prepare_store(tmp_path / "src", tmp_path / "a", resolution=32, source_normalisation=NORM32, progress=False)
    prepare_store(tmp_path / "a", tmp_path / "b", resolution=16, progress=False)
    with StoreReader(tmp_path / "a/train/subject0000.h5") as a, StoreReader(tmp_path / "b/train/subject0000.h5") as b:
        assert b.normalisation == a.normalisation.at_resolution(16)
        np.testing.assert_array_equal(a.labels.gaze, b.labels.gaze)
        np.testing.assert_array_equal(a.labels.camera, b.labels.camera)
        assert b[0].image.shape == (16, 16, 3)


def test_find_subject_files_follows_split_files(tmp_path):
    for name in ("subject0000", "subject0001"):
        make_official(tmp_path / "official" / "train" / f"{name}.h5", n=1)
    make_official(tmp_path / "official" / "test" / "subject0002.h5", n=1)
    listing = find_subject_files(tmp_path / "official")
    assert [(s, p.name) for s, p in listing.files] == [
        ("test", "subject0002.h5"), ("train", "subject0000.h5"), ("train", "subject0001.h5")]
    flat = tmp_path / "gazenerf"
    make_gazenerf(flat / "xgaze_subject0000.h5", n=1)
    make_gazenerf(flat / "xgaze_subject0012.h5", n=1)
    make_gazenerf(flat / "xgaze_subject0099.h5", n=1)
    (flat / "train_test_split.json").write_text('{"train": ["subject0000.h5"], "val": ["subject0012.h5", "subject0077.h5"]}')
    listing = find_subject_files(flat)
    assert [(s, p.name) for s, p in listing.files] == [("train", "xgaze_subject0000.h5"), ("test", "xgaze_subject0012.h5")]
    assert len(listing.problems) == 1 and "'subject0077.h5' under 'val'" in listing.problems[0]
    assert [p.name for p in listing.unlisted] == ["xgaze_subject0099.h5"]
    (flat / "train_test_split.json").write_text('{"train": "subject0000.h5"}')
    assert "not a JSON object of lists of file names" in find_subject_files(flat).problems[0]


def test_cli_prepare_uses_the_published_normalisation_and_reports_errors(tmp_path):
    from typer.testing import CliRunner

    from gazegen.cli import app

    make_official(tmp_path / "src" / "subject0004.h5", n=2, res=224)
    result = CliRunner().invoke(app, ["data", "prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--resolution", "32"])
    assert result.exit_code == 0, result.output
    assert "1 subject file(s) written (2 images at 32 px)" in result.output
    with StoreReader(tmp_path / "out" / "train" / "subject0004.h5") as reader:
        assert reader.normalisation.focal == pytest.approx(960 * 32 / 224) and reader.normalisation.distance_mm == 600
    make_official(tmp_path / "bad" / "subject0005.h5", n=2, res=224, face_head_pose=np.zeros((2, 3)))
    result = CliRunner().invoke(app, ["data", "prepare", str(tmp_path / "bad"), str(tmp_path / "out2")])
    assert result.exit_code == 2 and "subject0005.h5: key 'face_head_pose' has shape (2, 3)" in result.output
    make_official(tmp_path / "other" / "subject0007.h5", n=2, res=224)
    args = ["data", "prepare", str(tmp_path / "other"), str(tmp_path / "out"), "--resolution", "32"]
    result = CliRunner().invoke(app, args)  # another source into OUT: one line naming OUT, exit 2
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = [l for l in result.output.splitlines() if l.strip()]
    assert line.startswith(f"error: {tmp_path / 'out'}: was prepared from the source {(tmp_path / 'src').resolve()}")
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == ["subject0007.h5"]


def test_an_unknown_cam_index_base_is_warned_about_once_per_file(tmp_path, caplog):
    """prepare opens each file twice (to plan, then to convert): the warning still comes once."""
    official_tree(tmp_path / "src", subjects=(0,), test=())
    with h5py.File(tmp_path / "src" / "train" / "subject0000.h5", "r+") as f:
        f["cam_index"][...] = np.arange(1, len(f["cam_index"]) + 1).reshape(f["cam_index"].shape)  # neither 0 nor 18
    with caplog.at_level("WARNING"):
        prepare_store(tmp_path / "src", tmp_path / "out", resolution=32, source_normalisation=NORM32, progress=False)
    assert sum("cam_index base cannot be told" in r.getMessage() for r in caplog.records) == 1


def test_cli_ctrl_c_keeps_the_finished_subjects_says_so_and_the_same_command_converts_the_rest(tmp_path, monkeypatch):
    """Ctrl-C while the second subject converts: exit 130 with one line, the first subject's file kept and no temporary
    file; the same command then skips it and converts the second."""
    from typer.testing import CliRunner

    from gazegen.cli import app
    from gazegen.data import prepare

    for i in (0, 1):
        make_official(tmp_path / "src" / f"subject000{i}.h5", n=2, res=224)  # a published size: its normalisation is known
    convert, calls = prepare._convert, []

    def interrupted(reader, path, *args):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return convert(reader, path, *args)

    monkeypatch.setattr(prepare, "_convert", interrupted)
    args = ["data", "prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--resolution", "32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130 and "Traceback" not in result.output
    said = [line for line in result.output.splitlines() if line.strip() and not line.startswith("prepare:")]  # the bar aside
    assert said == [f"interrupted: the finished subject files in {tmp_path / 'out'} are kept; the same command converts the "
                    "rest (the split file is written once all are done)"]
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == ["subject0000.h5"]
    monkeypatch.undo()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "1 subject file(s) written" in result.output and "1 already complete" in result.output
