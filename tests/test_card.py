"""The dataset card and label histograms beside the shards (pipelines/card.py, gazegen/data/label_plots.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from gazegen import geometry
from gazegen.cli import app
from gazegen.data.label_plots import label_figure, read_labels
from gazegen.data import schema
from gazegen.pipelines.card import HISTOGRAMS_NAME
from gazegen.pipelines.manifest import check_or_create, finalize
from gazegen.pipelines.run_manifest import RunManifest
from gazegen.pipelines.shards import ShardWriter, plan_shards

SIZE, PER_SOURCE = 8, 6
SOURCES = [f"src{i}" for i in range(5)]


def labels_of(k: int) -> dict[str, np.ndarray]:
    """Random but consistent labels of source k: gaze = R_head(head_pose) @ gaze_head."""
    rng = np.random.default_rng(k)
    gaze_head, view = rng.uniform(-0.5, 0.5, (PER_SOURCE, 2)), rng.uniform(-0.3, 0.3, (PER_SOURCE, 2))
    head = view + rng.uniform(-0.2, 0.2, 2)
    gaze = geometry.gaze_head_to_camera(gaze_head, geometry.head_pose_to_rotation(head))
    return {"gaze": gaze, "head_pose": head, "gaze_head": gaze_head, "view_offset": view, "source_head_pose": head - view,
            "face_mat_norm": np.tile(np.eye(3).ravel(), (PER_SOURCE, 1))}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    plan = plan_shards(SOURCES, 2)
    check_or_create(str(out), RunManifest.create(SOURCES, "ab" * 32, {}, 2, ["gazegen", "synthesize"]))
    for spec in plan:
        with ShardWriter(str(out), spec, row_group_size=4) as writer:
            for source in spec.inputs:
                image = schema.encode_png(np.zeros((SIZE, SIZE, 3), np.uint8))
                depth = schema.encode_depth_png(np.full((SIZE, SIZE), 900.0))
                writer.write({
                    "image": [image] * PER_SOURCE, "depth": [depth] * PER_SOURCE,
                    "alpha": [schema.encode_alpha_png(np.ones((SIZE, SIZE)))] * PER_SOURCE,
                    **labels_of(int(source[3:])), "camera": np.zeros((PER_SOURCE, 25)),
                    "source_id": [source] * PER_SOURCE, "source_path": [source] * PER_SOURCE,
                    "gaze_index": list(range(PER_SOURCE)), "view_index": list(range(PER_SOURCE)),
                    "checkpoint_hash": ["ab" * 32] * PER_SOURCE, "seed": [0] * PER_SOURCE,
                })  # fmt: skip
    finalize(str(out), plan)
    return out


def expected(name: str) -> np.ndarray:
    """(N, 2) float32 of every row in shard order (sources sorted, rows in written order)."""
    return np.concatenate([labels_of(int(s[3:]))[name] for s in SOURCES]).astype(np.float32)


def test_read_labels_returns_every_row_in_shard_order(run):
    labels = read_labels(str(run))
    for name in ("gaze", "head_pose", "gaze_head", "view_offset"):
        assert np.array_equal(getattr(labels, name), expected(name))
    assert labels.row_id[0] == schema.row_id("src0", 0, 0) and len(labels) == len(SOURCES) * PER_SOURCE


def test_histogram_bars_count_the_labels(run):
    fig = label_figure(read_labels(str(run)))
    axes = fig.axes  # the six panels first, then the two colour bars
    for ax, values in ((axes[0], expected("gaze")[:, 0]), (axes[1], expected("gaze")[:, 1]),
                       (axes[3], expected("head_pose")[:, 0]), (axes[4], expected("head_pose")[:, 1])):
        (steps,) = ax.patches  # one filled step outline per panel
        assert steps.get_data().values.tolist() == np.histogram(np.degrees(values.astype(np.float64)), bins=36)[0].tolist()
    for ax in (axes[2], axes[5]):  # 2D histograms: every image counted once
        assert ax.collections[0].get_array().sum() == len(SOURCES) * PER_SOURCE


def test_card_states_conventions_shows_histograms_and_works_a_row(run):
    png = cv2.imread(str(run / HISTOGRAMS_NAME))
    assert png is not None and png.shape == (560, 960, 3)  # 12 x 7 inches at 80 dpi
    card = (run / "README.md").read_text()
    assert f"![label distribution: gaze, head pose, views]({HISTOGRAMS_NAME})" in card
    for column in ("gaze", "head_pose", "gaze_head", "view_offset", "camera"):
        line = next(row for row in card.splitlines() if row.startswith(f"| `{column}` | ") and row.count("|") == 6)
        assert "(pitch, yaw)" in line or "cam2world" in line
    assert "yaw > 0 towards the image's left" in card and "(-cos p sin y, -sin p, -cos p cos y)" in card
    assert "for a photo it is estimated" in card  # a photo's head-pose labels are not exact: the card says so
    text = " ".join(card.split())  # and what that does to a photo under a view turn, and how to avoid it
    assert "a photo source may come out as a doubled (ghosted) face" in text and "(`--grid pitch,yaw`) avoids the turn" in text
    gaze, head = expected("gaze")[0].astype(np.float64), expected("head_pose")[0]
    assert f"Row `{schema.row_id('src0', 0, 0)}`" in card
    assert f"({np.degrees(gaze[0]):+.1f}°, {np.degrees(gaze[1]):+.1f}°)" in card
    assert f"{abs(np.degrees(gaze[0])):.1f}° {'up' if gaze[0] >= 0 else 'down'}" in card
    assert f"({np.degrees(head[0]):+.1f}°, {np.degrees(head[1]):+.1f}°)" in card
    vector = ", ".join(f"{v:+.4f}" for v in (-np.cos(gaze[0]) * np.sin(gaze[1]), -np.sin(gaze[0]), -np.cos(gaze[0]) * np.cos(gaze[1])))
    assert f"unit vector ({vector})" in card


def test_data_sheet_writes_the_same_histograms(run, tmp_path):
    result = CliRunner().invoke(app, ["data", "sheet", str(run), str(tmp_path / "sheet.png"), "--rows", "4"])
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(tmp_path / "sheet_labels.png")).shape == (560, 960, 3)
    assert f"label histograms (gaze, head pose, views): {tmp_path / 'sheet_labels.png'}" in result.output


def test_card_counts_sources_and_says_which_ranges_shape_no_row():
    """The card once said "from 24 inputs" of a run of 4 files (it counts sources), and listed view_yaw "-30:30:5" for a
    gaze-only grid whose rows all have view_offset 0."""
    from gazegen.pipelines.card import dataset_card

    gaze_only = RunManifest.create(["a.png", "b.png#face01"], "ab" * 32, {"grid": "pitch,yaw", "view_yaw": "-30:30:5"}, 2)
    text = " ".join(dataset_card(gaze_only).split())
    assert "from 2 sources (faces:" in text and "failed sources: 0" in text
    assert "Settings (the grid sweeps pitch,yaw: view_pitch, view_yaw shape no row):" in text
    every_axis = RunManifest.create(["a.png"], "ab" * 32, {"grid": "pitch,yaw,view"}, 1)
    assert "Settings:" in dataset_card(every_axis) and "shape no row" not in dataset_card(every_axis)
