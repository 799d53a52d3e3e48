"""`inspect_store` finds planted problems; `write_contact_sheet` draws the gaze arrows where they point."""

from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest

from gazegen import geometry
from gazegen.config import PUBLISHED_NORMALISATIONS
from gazegen.data.inspect import inspect_store, write_contact_sheet
from gazegen.data.sample import Sample
from gazegen.data.store import SubjectWriter, subject_filename, write_split
from gazegen.data.xgaze import DataError

NORM = PUBLISHED_NORMALISATIONS["livegaze512"].at_resolution(32)


def samples(subject: str, n: int = 6, seed: int = 0, gaze_head: np.ndarray | None = None) -> list[Sample]:
    """Consistent labels (gaze = R_head @ gaze_head, camera from head pose), grey images, 0/1 masks."""
    rng = np.random.default_rng(seed)
    head = rng.uniform(-0.4, 0.4, (n, 2))
    gh = rng.uniform(-0.5, 0.5, (n, 2)) if gaze_head is None else gaze_head
    gaze = geometry.gaze_head_to_camera(gh, geometry.head_pose_to_rotation(head))
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    return [Sample(
        image=np.full((32, 32, 3), 128, np.uint8), gaze=gaze[i].astype(np.float32), head_pose=head[i].astype(np.float32),
        gaze_head=gh[i].astype(np.float32), camera=geometry.head_pose_to_camera(head[i], NORM).astype(np.float32),
        normalisation=NORM, subject=subject, frame_index=i // 3, cam_index=i % 3, face_mask=mask, left_eye_mask=mask,
        right_eye_mask=mask,
    ) for i in range(n)]


def make_store(root, subjects: int = 2, **kw) -> dict[str, list[Sample]]:
    written = {}
    for i in range(subjects):
        name = subject_filename(i)
        written[name] = samples(name[:-3], seed=i, **kw)
        with SubjectWriter(root / "train" / name, NORM, name[:-3]) as writer:
            writer.write(written[name])
    write_split(root, list(written), [])
    return written


def test_clean_store_reports_counts_and_ranges_in_degrees(tmp_path):
    written = make_store(tmp_path)
    report = inspect_store(tmp_path)
    assert report.problems == () and report.images == 12 and len(report.subjects) == 2
    first = report.subjects[0]
    assert (first.subject, first.split, first.format, first.frames, first.cameras, first.resolution) == \
        ("subject0000", "train", "gazegen-store", 2, 3, 32)
    assert first.masks == ("head_mask", "left_eye_mask", "right_eye_mask")
    gaze = np.rad2deg(np.stack([s.gaze for s in written["subject0000.h5"]]).astype(np.float64))
    assert first.gaze_deg[0] == pytest.approx((gaze[:, 0].min(), gaze[:, 0].max()), abs=1e-4)
    assert first.gaze_deg[1] == pytest.approx((gaze[:, 1].min(), gaze[:, 1].max()), abs=1e-4)
    text = report.summary()
    assert "2 subject file(s), 12 images" in text and "0 problem(s)" in text and "(deg)" in text
    single = inspect_store(tmp_path / "train" / "subject0001.h5")  # one file: no split file to check
    assert single.problems == () and single.images == 6 and single.subjects[0].split == "train"  # its folder's name
    lone = tmp_path / "lone.h5"
    lone.write_bytes((tmp_path / "train" / "subject0001.h5").read_bytes())
    assert inspect_store(lone).subjects[0].line().startswith("  lone.h5/subject0001 ")  # no split claimed


def test_planted_problems_are_all_found(tmp_path):
    make_store(tmp_path, subjects=5)
    store = tmp_path / "train"
    with h5py.File(store / "subject0000.h5", "r+") as f:
        f["face_gaze"][1] = np.nan
    with h5py.File(store / "subject0001.h5", "r+") as f:
        f["head_mask"][2, 0, 0] = 7
    with h5py.File(store / "subject0002.h5", "r+") as f:
        del f["camera"]
        f.create_dataset("camera", data=np.zeros((6, 24), np.float32))
    with h5py.File(store / "subject0003.h5", "r+") as f:
        f["pitchyaw_head"][:, 0] *= -1  # GazeNeRF's pitch sign left unconverted
    with h5py.File(store / "subject0004.h5", "r+") as f:
        f["cam_index"][1] = 0
    write_split(tmp_path, [subject_filename(i) for i in (0, 1, 2, 3, 4, 9)], [])
    with SubjectWriter(store / "subject0005.h5", NORM, "subject0005") as writer:
        writer.write(samples("subject0005"))
    report = inspect_store(tmp_path)
    problems = "\n".join(report.problems)
    assert "subject0000.h5: key 'face_gaze' has NaN/inf labels in 1 of 6 rows (rows [1])" in problems
    assert "subject0001.h5: key 'head_mask' has values other than 0/255 in 1 of 6 masks" in problems
    assert "subject0002.h5: key 'camera' has shape (6, 24), expected (6, 25)" in problems
    assert "subject0003.h5: keys 'face_gaze' vs 'pitchyaw_head' disagree" in problems
    assert "; gaze = R_head(head_pose) @ gaze_head expected)" in problems
    assert "subject0004.h5: keys 'frame_index'/'cam_index' repeat a (frame, camera) pair in 1 rows" in problems
    assert "lists 'subject0009.h5' under 'train' but no such file exists" in problems
    assert "subject0005.h5: h5 file present but not listed in the split file" in problems
    assert len(report.problems) == 7
    assert [s.subject for s in report.subjects] == ["subject0000", "subject0001", "subject0003", "subject0004"]
    assert np.isfinite(report.subjects[0].gaze_deg).all()  # ranges skip the NaN row
    assert "7 problem(s):" in report.summary()


def test_a_camera_that_disagrees_with_the_head_pose_says_which_relation_failed(tmp_path):
    make_store(tmp_path, subjects=1)
    with h5py.File(tmp_path / "train" / "subject0000.h5", "r+") as f:
        f["face_head_pose"][:, 1] *= -1  # the yaw's sign flipped: gaze and camera now disagree with it
    problems = inspect_store(tmp_path).problems
    camera = next(p for p in problems if "'camera' vs 'face_head_pose'" in p)
    assert camera.endswith("; the camera looks at the head from its head pose expected)") and "R_head" not in camera


def test_synthesis_shards_are_pointed_to_data_sheet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"row_id": ["a"]}), tmp_path / "shard-00000.parquet")
    for path in (tmp_path, tmp_path / "shard-00000.parquet"):
        with pytest.raises(DataError, match=r"Parquet shards, not an h5 store: `gazegen data sheet .* sheet\.png`"):
            inspect_store(path)
        with pytest.raises(DataError, match="Parquet shards"):
            write_contact_sheet(path, tmp_path / "sheet.png")
    assert not (tmp_path / "sheet.png").exists()


def test_nothing_to_inspect_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no .h5 subject files"):
        inspect_store(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        inspect_store(tmp_path / "nowhere")


def red_pixels(tile: np.ndarray) -> np.ndarray:
    """(row, col) of the arrow's red pixels in a BGR tile."""
    return np.argwhere((tile[..., 2] > 200) & (tile[..., 1] < 80) & (tile[..., 0] < 80))


def test_contact_sheet_size_and_arrow_directions(tmp_path):
    up_left = np.tile([0.4, 0.6], (6, 1))  # looking up and to the image's left, in the head frame
    make_store(tmp_path, subjects=2, gaze_head=up_left)
    sheet = write_contact_sheet(tmp_path, tmp_path / "sheets" / "sheet.png", views=4, thumb=64)
    image = cv2.imread(str(sheet))
    assert image.shape == (2 * 64, 4 * 64, 3)
    with h5py.File(tmp_path / "train" / "subject0001.h5") as f:
        gaze = f["face_gaze"][...]
    rows = np.unique(np.linspace(0, 5, 4).round().astype(int))
    for c, row in enumerate(rows):  # second subject's row of tiles
        tile = image[64:128, c * 64:(c + 1) * 64]
        red = red_pixels(tile)
        assert len(red) > 20, "the gaze arrow is drawn in red"
        pitch, yaw = gaze[row]
        dx, dy = -np.sin(yaw) * np.cos(pitch), -np.sin(pitch)
        tip = red[np.argmax(((red - 32) * [dy, dx]).sum(1))]  # the red pixel furthest along the arrow
        expect = np.array([32 + 0.4 * 64 * dy, 32 + 0.4 * 64 * dx])
        assert np.abs(tip - expect).max() <= 3, (tip, expect)
    assert len(red_pixels(np.full((64, 64, 3), 128, np.uint8))) == 0


def test_contact_sheet_marks_unreadable_files(tmp_path):
    make_store(tmp_path, subjects=1)
    (tmp_path / "train" / "subject0001.h5").write_bytes(b"garbage" * 20)
    write_split(tmp_path, ["subject0000.h5", "subject0001.h5"], [])
    image = cv2.imread(str(write_contact_sheet(tmp_path, tmp_path / "sheet.png", views=3, thumb=48)))
    assert image.shape == (96, 144, 3)
    assert len(red_pixels(image[:48])) > 0 and len(red_pixels(image[48:])) == 0
    assert (image[48:] > 0).any()  # the error text


def test_cli_inspect_exit_codes(tmp_path):
    from typer.testing import CliRunner

    from gazegen.cli import app

    make_store(tmp_path)
    result = CliRunner().invoke(app, ["data", "inspect", str(tmp_path), "--sheet", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert "0 problem(s)" in result.output and (tmp_path / "s.png").is_file()
    with h5py.File(tmp_path / "train" / "subject0000.h5", "r+") as f:
        f["face_head_pose"][0] = np.nan
    result = CliRunner().invoke(app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 1 and "NaN" in result.output


def test_cli_sheet_of_a_missing_path_names_it_in_one_line(tmp_path):
    """Once a bare pyarrow "[Errno 2] Failed to open local file"; now gazegen's own line, nothing written."""
    from typer.testing import CliRunner

    from gazegen.cli import app

    for shards, why in ((tmp_path / "nope", "no such file or folder"), (tmp_path / "nope" / "shard-*.parquet", f"no such folder {tmp_path / 'nope'}")):
        result = CliRunner().invoke(app, ["data", "sheet", str(shards), str(tmp_path / "x.png")])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert [line for line in result.output.splitlines() if line.strip()] == [f"error: {shards}: {why}"]
    assert not (tmp_path / "x.png").exists()


def test_cli_sheet_refuses_a_path_it_cannot_write_before_reading_the_shards(tmp_path):
    """Once an OpenCV imwrite error after the work; now the PNG path is checked first (the shards here do not
    even exist, and are not named), in one line, and nothing is written."""
    from typer.testing import CliRunner

    from gazegen.cli import app

    (tmp_path / "photos").mkdir()
    for png, extra, why in ((tmp_path / "photos", [], "a folder; give a .png path"),
                            (tmp_path / "sheet", [], "not an image file name (no suffix); give a .png path"),
                            (tmp_path / "sheet.txt", [], "not an image file name (.txt); give a .png path"),
                            (tmp_path / "s.png", ["--histograms", str(tmp_path / "h.jpg")], "not a PNG file name (.jpg); give a .png path")):
        result = CliRunner().invoke(app, ["data", "sheet", str(tmp_path / "no-shards"), str(png), *extra])
        named = tmp_path / "h.jpg" if extra else png
        assert result.exit_code == 2 and result.output == f"error: {named}: {why}\n", result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"] and not any((tmp_path / "photos").iterdir())


def test_shard_sheet_captions_tell_the_sources_apart():
    """Once the last 14 characters of the row id: two JPEG sources both read "jpg-0000-0000". Now the source id,
    its middle elided when too wide for the tile (the start of the name and its end kept), then gaze and view."""
    from gazegen.data.inspect import caption_font, fit_caption

    def width(text: str) -> float:
        return caption_font().getlength(text)

    ids = ["photos/astronaut.jpg", "photos/astro_alpha.png", "photos/astro_gray.png", "photos/corrupt.jpg",
           "subject0002.h5#000012", "subject0002.h5#000013"]
    assert [fit_caption(s, 124) for s in ids] == ids  # they fit a 128 px tile whole
    long = ["holiday/2024/summer/IMG_20240101_123456.jpg", "holiday/2024/summer/IMG_20240101_123457.jpg"]
    captions = [fit_caption(s, 124) for s in long]
    assert len(set(captions)) == 2 and all(width(c) <= 124 for c in captions)
    assert all(c.startswith("holiday/") and ".." in c and s.endswith(c.split("..")[1]) for c, s in zip(captions, long))
    assert width(fit_caption("x" * 200, 28)) <= 28  # a 32 px tile


def test_captions_draw_file_names_beyond_ascii():
    """OpenCV's Hershey fonts drew 'my phötö ü.jpg' as 'my ph??t?? ??.jpg' (and Pillow's default font as boxes): each
    accented letter draws differently from '?', from its bare letter and from a letter the font lacks (a CJK one)."""
    from gazegen.data.inspect import draw_captions

    def drawn(text: str) -> np.ndarray:
        return draw_captions(np.zeros((32, 64, 3), np.uint8), (text,), (255, 255, 255))

    assert drawn("o").any()
    for accented, bare in (("ö", "o"), ("ü", "u"), ("é", "e"), ("Ж", "K")):
        assert not any(np.array_equal(drawn(accented), drawn(other)) for other in ("?", bare, "\u5199"))
