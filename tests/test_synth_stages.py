"""The render actor's stage settings and its encoded output (no Ray): PNG threads, the actor's
records equal to the arrays encoded afterwards, and the bf16 precision against float32."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from gazegen.checkpoint import save_pretrained
from gazegen.config import CONFIG_DIR, PUBLISHED_NORMALISATIONS, ConfigError, ModelConfig, load_config, load_synth_config
from gazegen.data.schema import DEPTH_SCALE, decode_alpha_png, decode_depth_png, decode_png
from gazegen.models.livegaze import LiveGaze
from gazegen.pipelines.graph import AUTH_SETUP_LOGGER, png_threads, quiet_auth_setup
from gazegen.pipelines.manifest import RunMismatchError
from gazegen.pipelines.render_actor import RenderActor, RenderSettings, SourceRenderer, encode_records
from gazegen.pipelines.synthesis import open_run

NORM = PUBLISHED_NORMALISATIONS["livegaze512"].at_resolution(64)


def test_png_threads_one_beside_a_cpu_actor_the_spare_cores_beside_gpus():
    assert [png_threads(0, 2), png_threads(0, 64), png_threads(1, 16), png_threads(4, 16), png_threads(8, 8)] == [1, 1, 15, 3, 1]


def test_quiet_auth_setup_drops_ray_auth_warnings_keeps_its_errors_and_restores_the_level():
    """While a local Ray starts, its authentication set-up's "token authentication is enabled" warning is not shown;
    an error still is, and afterwards the logger warns again."""
    setup, seen = logging.getLogger(AUTH_SETUP_LOGGER), []
    handler = logging.Handler()
    handler.emit = seen.append  # on the logger itself: a started Ray stops its loggers propagating to the root
    setup.addHandler(handler)
    try:
        setup.setLevel(logging.NOTSET)
        with quiet_auth_setup():
            setup.warning("Token authentication is enabled for this Ray cluster.")
            setup.error("no token found")
        setup.warning("after")
    finally:
        setup.removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["no token found", "after"]
    assert setup.level == logging.NOTSET


def test_the_actor_emits_each_source_encoded_as_its_arrays_encode(tmp_path):
    """The actor encodes a source's rows on its threads batch by batch as they render (here 2
    threads and batches of 4 rows, so batches may finish out of order); its records must be the
    source's records of arrays encoded afterwards, and the PNGs must read back to those arrays.
    (A random tiny model barely reacts to the gaze: the 3 views make the rows differ.)"""
    torch.manual_seed(0)
    checkpoint = save_pretrained(tmp_path / "tiny", LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")), normalisation=NORM)
    spec = load_synth_config(None, grid="pitch,yaw,view", pitch="-10:10:2", yaw="-20:20:3", view_pitch="0:0:1", view_yaw="-15:15:3").grid_spec
    actor = RenderActor(str(checkpoint), RenderSettings(spec, NORM, batch_size=4, depth_min_alpha=0.0, threads=1, png_threads=2))
    rng = np.random.default_rng(0)
    batch = {
        "shard_id": np.array([0, 0, 0]), "source_id": np.array(["a", "b", "c"]), "source_path": np.array(["/a", "/b", "/c"]),
        "status": np.array(["ok", "error", "ok"]), "stage": np.array(["", "decode", ""]), "reason": np.array(["", "bad", ""]),
        "image": rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8), "head_pose": np.array([[0.0, 0.0], [0.0, 0.0], [0.1, -0.2]]),
        "gaze_head": np.zeros((3, 2)), "gaze_known": np.array([False, False, True]), "face_mat_norm": np.stack([np.eye(3)] * 3),
    }  # fmt: skip
    emitted = list(actor(batch))
    arrays = [r for i in range(3) for r in actor.source_records(batch, i)]
    assert [len(r["source_id"]) for r in emitted] == [18, 1, 18]  # 2 x 3 gazes x 3 views; one error row
    assert len({png for png in emitted[0]["image"]}) == 3  # a row per view, distinct
    for got, raw in zip(emitted, arrays, strict=True):
        expected = encode_records(raw)
        assert got.keys() == expected.keys()
        for k in got:
            assert got[k].dtype == expected[k].dtype and got[k].tolist() == expected[k].tolist(), k
        for i in np.flatnonzero(raw["status"] == "ok"):
            np.testing.assert_array_equal(decode_png(got["image"][i]), raw["image"][i])
            np.testing.assert_array_equal(np.rint(decode_depth_png(got["depth"][i]) * DEPTH_SCALE), raw["depth"][i])
            np.testing.assert_array_equal(np.rint(decode_alpha_png(got["alpha"][i]) * 255), raw["alpha"][i])
    assert emitted[1]["status"].tolist() == ["error"] and emitted[1]["image"].tolist() == [b""]


def test_bf16_precision_renders_the_rows_close_to_float32_with_the_same_labels(tmp_path):
    """SynthConfig.precision = "bf16" (autocast around the model's calls) against float32, on a tiny model that reads
    its source per point and per pixel (random weights in those branches). Measured: images differ by 0.23 of 255 on
    average, depth by 0.07 mm, alpha by 0.13 of 255 (tolerances about 4x that); bf16 must change something (0 < the
    image difference); the labels are the same numbers."""
    cfg = load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml",
                      ["pixel_channels=4", "pixel_hidden=4", "detail_hidden=4", "mean_planes=true"])
    torch.manual_seed(0)
    model = LiveGaze(cfg)
    for branch in (model.pixels, model.detail, model.gaze_fusion.proj_out):
        for p in branch.parameters():
            torch.nn.init.normal_(p, std=0.1)
    spec = load_synth_config(None, grid="pitch,yaw,view", pitch="-10:10:2", yaw="-20:20:2", view_yaw="-15:15:2").grid_spec
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rows = {}
    for precision in ("fp32", "bf16"):
        renderer = SourceRenderer(model, RenderSettings(spec, NORM, batch_size=4, depth_min_alpha=0.0, precision=precision))
        rows[precision] = renderer.render("a", image, np.array([0.1, -0.2]), None, np.eye(3))
    full, half = rows["fp32"], rows["bf16"]
    assert full.labels.keys() == half.labels.keys()
    for k in full.labels:
        np.testing.assert_array_equal(full.labels[k], half.labels[k])
    image_diff = np.abs(full.image.astype(float) - half.image).mean()
    depth_diff_mm = np.abs(full.depth.astype(float) - half.depth).mean() / DEPTH_SCALE
    alpha_diff = np.abs(full.alpha.astype(float) - half.alpha).mean()
    assert 0 < image_diff < 1.0 and depth_diff_mm < 0.25 and alpha_diff < 0.5, (image_diff, depth_diff_mm, alpha_diff)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="precision 'fp16'"):
        load_synth_config(None, precision="fp16")


def test_precision_is_part_of_the_run(tmp_path):
    """A run written in float32 does not resume in bf16 (its rows differ); a float32 run records no precision,
    as runs did before the option existed, so those still resume."""
    torch.manual_seed(0)
    checkpoint = save_pretrained(tmp_path / "tiny", LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")), normalisation=NORM)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.zeros((64, 64, 3), np.uint8))
    run, _, _ = open_run(checkpoint, tmp_path / "in", tmp_path / "out", load_synth_config(None, crop="never"))
    assert "precision" not in run.settings() and "photo_focal_fraction" not in run.settings()
    with pytest.raises(RunMismatchError, match="precision"):
        open_run(checkpoint, tmp_path / "in", tmp_path / "out", load_synth_config(None, crop="never", precision="bf16"))
    with pytest.raises(RunMismatchError, match="photo_focal_fraction: '<unset>' -> 2.0"):  # photo rows' labels would differ
        open_run(checkpoint, tmp_path / "in", tmp_path / "out", load_synth_config(None, ["photo_focal_fraction=2.0"], crop="never"))


def test_an_input_edited_since_the_run_started_is_refused_on_resume(tmp_path):
    """The same names with other contents would mix two versions of an input in one run: a file replaced (another
    size) or rewritten in place (same size, another modification time) is refused by name; an untouched one resumes."""
    torch.manual_seed(0)
    checkpoint = save_pretrained(tmp_path / "tiny", LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")), normalisation=NORM)
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(tmp_path / "in" / name), np.zeros((64, 64, 3), np.uint8))
    cfg = load_synth_config(None, crop="never")
    open_run(checkpoint, tmp_path / "in", tmp_path / "out", cfg)
    open_run(checkpoint, tmp_path / "in", tmp_path / "out", cfg)  # nothing changed: resumes
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.full((64, 64, 3), 200, np.uint8))  # compresses otherwise: new size
    b = tmp_path / "in" / "b.png"
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))  # rewritten in place, same bytes count
    with pytest.raises(RunMismatchError, match=r"inputs changed since the run started \(size or modification time\): "
                                               r"2 file\(s\) \['a.png', 'b.png'\]"):
        open_run(checkpoint, tmp_path / "in", tmp_path / "out", cfg)


def _out_of_memory_above(render, most: int, spare_first: bool):
    """``render`` that raises torch.OutOfMemoryError (as CUDA does) on calls of more than ``most`` cameras,
    except the very first call when ``spare_first`` (so some rows are already out when it first fails)."""
    calls = []

    def wrapped(triplane, cameras, **kwargs):
        calls.append(len(cameras))
        if len(cameras) > most and not (spare_first and len(calls) == 1):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return render(triplane, cameras, **kwargs)

    return wrapped, calls


def test_out_of_device_memory_halves_the_batch_and_renders_every_row(tmp_path):
    """The device runs out of memory on render calls of more than 4 rows, from the second call on: the
    batch is halved until it fits (16 -> 8 -> 4) and kept for the next source; the records, PNGs included,
    are those of an actor started at batch 4, though its PNG threads saw the first call's rows twice."""
    torch.manual_seed(0)
    checkpoint = save_pretrained(tmp_path / "tiny", LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")), normalisation=NORM)
    spec = load_synth_config(None, grid="pitch,yaw,view", pitch="-10:10:2", yaw="-20:20:3", view_pitch="0:0:1", view_yaw="-15:15:3").grid_spec
    settings = RenderSettings(spec, NORM, batch_size=16, depth_min_alpha=0.0, threads=1, png_threads=2)
    rng = np.random.default_rng(1)
    batch = {
        "shard_id": np.array([0, 0]), "source_id": np.array(["a", "b"]), "source_path": np.array(["/a", "/b"]),
        "status": np.array(["ok", "ok"]), "stage": np.array(["", ""]), "reason": np.array(["", ""]),
        "image": rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), "head_pose": np.array([[0.0, 0.0], [0.1, -0.2]]),
        "gaze_head": np.zeros((2, 2)), "gaze_known": np.array([False, True]), "face_mat_norm": np.stack([np.eye(3)] * 2),
    }  # fmt: skip
    actor = RenderActor(str(checkpoint), settings)
    model = actor.renderer.model
    model.render, calls = _out_of_memory_above(model.render, 4, spare_first=True)
    emitted = list(actor(batch))
    assert calls[:3] == [9, 9, 6] and max(calls[3:]) == 4 and actor.renderer.batch_size == 4  # 18 rows: 9 + 9, 6 x 3, then 4s
    expected = list(RenderActor(str(checkpoint), replace(settings, batch_size=4))(batch))
    assert [len(r["source_id"]) for r in emitted] == [18, 18]
    for got, want in zip(emitted, expected, strict=True):
        for k in got:
            assert got[k].tolist() == want[k].tolist(), k


def test_out_of_device_memory_at_batch_1_is_the_sources_error(tmp_path):
    torch.manual_seed(0)
    checkpoint = save_pretrained(tmp_path / "tiny", LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")), normalisation=NORM)
    spec = load_synth_config(None, grid="pitch,yaw,view", pitch="0:0:1", yaw="0:0:1", view_pitch="0:0:1", view_yaw="-15:15:3").grid_spec
    renderer = SourceRenderer.from_checkpoint(checkpoint, RenderSettings(spec, NORM, batch_size=2, depth_min_alpha=0.0, threads=1))
    renderer.model.render, calls = _out_of_memory_above(renderer.model.render, 0, spare_first=False)
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(torch.OutOfMemoryError):
        renderer.render("a", image, np.zeros(2), None, np.eye(3))
    assert calls == [2, 1] and renderer.batch_size == 1
