"""`gazegen evaluate`: the protocol's pairs, known-answer metrics, errors against the target labels, the report."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gazegen import geometry
from gazegen.checkpoint import save_pretrained
from gazegen.config import (
    EstimatorNetConfig, EvaluateConfig, ModelConfig, NormalisationConfig, RigConfig, SynthHeadsConfig, load_config,
)
from gazegen.data.heads import synthesize_store
from gazegen.data.sample import Sample
from gazegen.data.xgaze import DataError
from gazegen.data.store import SubjectWriter, write_split
from gazegen.metrics.estimator import GazeEstimate, GazeEstimator
from gazegen.models.livegaze import LiveGaze
from gazegen.evaluation.evaluate import (
    CONSTANT, CopySource, GroundTruthTarget, LiveGazeMethod, PerfectRender, check_model_camera, evaluate, pair_rows,
    run_evaluation,
)
from gazegen.evaluation.report import PAPER_TABLE1, table1, verdict, write_report

ROOT = Path(__file__).resolve().parents[1]
RES = 64  # the tiny preset's input and output side
NORM = NormalisationConfig().at_resolution(RES)
C1, C2 = 0.01**2, 0.03**2


@pytest.fixture(scope="module")
def tiny_model() -> LiveGaze:
    torch.manual_seed(0)
    return LiveGaze(load_config(ModelConfig, ROOT / "configs" / "model" / "tiny.toml")).eval()


def write_store(root: Path, subjects: dict[str, list[int]], mask: str = "full", seed: int = 0) -> dict[str, dict]:
    """Test-split subjects whose image k is uniform grey ``values[k]``; random labels. Returns the labels by grey."""
    rng = np.random.default_rng(seed)
    table = {}
    for name, values in subjects.items():
        n = len(values)
        gaze, head = rng.uniform(-0.5, 0.5, (n, 2)), rng.uniform(-0.4, 0.4, (n, 2))
        gaze_head = geometry.gaze_camera_to_head(gaze, geometry.head_pose_to_rotation(head))
        camera = geometry.head_pose_to_camera(head, NORM)
        face = np.ones((RES, RES), np.uint8)
        if mask == "centre":
            face[:] = 0
            face[16:48, 16:48] = 1
        with SubjectWriter(root / "test" / f"{name}.h5", NORM, name) as writer:
            writer.write(Sample(image=np.full((RES, RES, 3), v, np.uint8), gaze=gaze[k].astype(np.float32),
                                head_pose=head[k].astype(np.float32), gaze_head=gaze_head[k].astype(np.float32),
                                camera=camera[k].astype(np.float32), normalisation=NORM, subject=name, frame_index=k,
                                face_mask=face) for k, v in enumerate(values))
        table[name] = {"values": values, "gaze": gaze, "head": head}
    write_split(root, [], [f"{name}.h5" for name in subjects])
    return table


class LabelLookup:
    """A fake estimator: reads the grey level of a uniform image and returns that image's labels exactly."""

    def __init__(self, table: dict[str, dict]):
        self.grey = np.concatenate([np.asarray(t["values"], float) for t in table.values()])
        self.gaze = np.concatenate([t["gaze"] for t in table.values()])
        self.head = np.concatenate([t["head"] for t in table.values()])

    def __call__(self, image: torch.Tensor) -> GazeEstimate:
        grey = ((image[:, 0].mean((1, 2)) + 1) * 127.5).double().numpy()
        k = np.abs(grey[:, None] - self.grey[None]).argmin(1)  # nearest grey (a rendered output is not uniform)
        return GazeEstimate(torch.from_numpy(self.gaze[k]), torch.from_numpy(self.head[k]))


def expected_pairs(cfg: EvaluateConfig, values: list[int]) -> list[tuple[float, float]]:
    return [(values[i] / 255, values[j] / 255) for i, j in pair_rows(len(values), cfg)]


def test_pairs_follow_gazenerf_groups():
    cfg = EvaluateConfig()
    pairs = pair_rows(200, cfg)
    assert [i for i, _ in pairs] == list(range(100))  # input group: the first 100 images
    assert sorted(j for _, j in pairs) == list(range(100, 200))  # target group: the next 100, each once
    assert pair_rows(200, cfg) == pairs and pair_rows(200, EvaluateConfig(seed=1)) != pairs
    small = pair_rows(9, cfg)  # fewer than 2 * group_size: half each, the odd image unused
    assert [i for i, _ in small] == [0, 1, 2, 3] and sorted(j for _, j in small) == [4, 5, 6, 7]
    assert len(pair_rows(200, EvaluateConfig(max_pairs=7))) == 7


def test_copy_source_closed_form_and_errors_against_target_labels(tmp_path, tiny_model):
    subjects = {"subject0000": [30, 60, 90, 120, 150, 180, 210, 240], "subject0001": [35, 65, 95, 125, 155, 185, 215, 245]}
    table = write_store(tmp_path, subjects)
    cfg = EvaluateConfig(group_size=4, batch_size=3, sheet_pairs=3)
    methods = [LiveGazeMethod(tiny_model), CopySource(), GroundTruthTarget()]
    report = run_evaluation(tmp_path, methods, cfg, estimator=LabelLookup(table))
    copy, truth = report.method(CopySource.name), report.method(GroundTruthTarget.name)
    for scores, (name, values) in zip(copy.subjects, subjects.items()):
        ab = expected_pairs(cfg, values)
        # uniform images: SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly; PSNR = -20 log10 |a - b|
        assert scores.ssim == pytest.approx(np.mean([(2 * a * b + C1) / (a * a + b * b + C1) for a, b in ab]), rel=1e-5)
        assert scores.psnr == pytest.approx(np.mean([-20 * math.log10(abs(a - b)) for a, b in ab]), rel=1e-5)
        # the copied source is judged against the TARGET's labels: the angle between source and target labels
        t, pairs = table[name], pair_rows(len(values), cfg)
        src, tgt = [i for i, _ in pairs], [j for _, j in pairs]
        assert scores.gaze_error == pytest.approx(float(geometry.angular_error(t["gaze"][src], t["gaze"][tgt]).mean()), rel=1e-6)
        assert scores.head_error == pytest.approx(float(geometry.angular_error(t["head"][src], t["head"][tgt]).mean()), rel=1e-6)
        assert scores.pairs == 4
    for scores in truth.subjects:  # the target itself: perfect images, and the estimator returns the labels
        assert scores.ssim == pytest.approx(1.0, abs=1e-9) and scores.psnr == cfg.psnr_cap_db and scores.psnr_capped == 4
        assert scores.gaze_error == pytest.approx(0.0, abs=1e-3) and scores.head_error == pytest.approx(0.0, abs=1e-3)
    assert "PSNR inf" in truth.notes["psnr"] and "psnr" not in copy.notes
    for m in report.methods:  # means are the means of the per-subject values (the constant row has no image metrics)
        for key in ("ssim", "psnr", "gaze_error", "head_error"):
            values = [getattr(s, key) for s in m.subjects]
            if m.name == CONSTANT and key in ("ssim", "psnr"):
                assert m.mean[key] is None and values == [None, None]
                continue
            assert m.mean[key] == pytest.approx(np.mean(values), rel=1e-12)
    live = report.method(methods[0].name)
    assert all(s.total_ms > 0 and s.encode_ms > 0 for s in live.subjects) and copy.mean["total_ms"] is None
    assert len(report.sheet) == 3 and report.sheet[0].depth is not None


def test_constant_and_perfect_render_rows_and_read_gaze_correlation(tmp_path):
    """The constant row's error is the angle to the mean direction; the truth row's read gaze correlates exactly."""
    subjects = {"subject0000": [30, 60, 90, 120, 150, 180, 210, 240], "subject0001": [35, 65, 95, 125, 155, 185, 215, 245]}
    table = write_store(tmp_path, subjects)
    cfg = EvaluateConfig(group_size=4, batch_size=3)
    report = run_evaluation(tmp_path, [CopySource(), PerfectRender(16), GroundTruthTarget()], cfg, estimator=LabelLookup(table))
    targets = {name: [j for _, j in pair_rows(8, cfg)] for name in subjects}
    gaze = np.concatenate([table[n]["gaze"][targets[n]] for n in subjects])  # (8, 2) requested, pair order
    head = np.concatenate([table[n]["head"][targets[n]] for n in subjects])
    def others_mean(a, i):  # pair i read as the mean direction of the other pairs' labels
        vectors = [geometry.pitchyaw_to_vector(a[j]) for j in range(len(a)) if j != i]
        return geometry.vector_to_pitchyaw(np.mean(vectors, axis=0))

    def error(a, i):
        return float(geometry.angular_error(others_mean(a, i)[None], a[i][None])[0])

    constant = report.method(CONSTANT)
    for k, s in enumerate(constant.subjects):
        rows = range(4 * k, 4 * k + 4)
        assert s.gaze_error == pytest.approx(np.mean([error(gaze, i) for i in rows]), rel=1e-6)
        assert s.head_error == pytest.approx(np.mean([error(head, i) for i in rows]), rel=1e-6)
    assert constant.mean["pitch_corr"] is None and constant.mean["yaw_corr"] is None  # a constant has no correlation
    truth = report.method(GroundTruthTarget.name)
    assert truth.mean["pitch_corr"] == pytest.approx(1.0) and truth.mean["yaw_corr"] == pytest.approx(1.0)
    copy = report.method(CopySource.name)  # reads the source's labels: r of source vs target labels
    sources = np.concatenate([table[n]["gaze"][[i for i, _ in pair_rows(8, cfg)]] for n in subjects])
    assert copy.mean["pitch_corr"] == pytest.approx(float(np.corrcoef(sources[:, 0], gaze[:, 0])[0, 1]), rel=1e-5)
    perfect = report.method(PerfectRender(16).name)  # uniform images survive the round trip through 16 px exactly
    assert perfect.mean["psnr"] == cfg.psnr_cap_db and perfect.mean["gaze_error"] == pytest.approx(0.0, abs=1e-3)


def test_one_pair_has_no_constant_row(tmp_path):
    """The constant reads a pair as the others' mean: with one pair there is none, and the report says so."""
    table = write_store(tmp_path, {"subject0000": [30, 60]})
    report = run_evaluation(tmp_path, [CopySource()], EvaluateConfig(group_size=1), estimator=LabelLookup(table))
    assert [m.name for m in report.methods] == [CopySource.name] and report.method(CopySource.name).mean["pairs"] == 1
    assert any("no constant-prediction row" in n for n in report.notes)


def test_verdict_says_when_a_model_carries_no_gaze(tmp_path, tiny_model):
    subjects = {"subject0000": [30, 60, 90, 120, 150, 180, 210, 240]}
    table = write_store(tmp_path, subjects)

    class Blank:  # a "model" whose every output reads as the first image: one constant gaze
        name, three_d = "blank model", True

        def prepare(self, pairs):
            pass

        def __call__(self, batch):
            from gazegen.evaluation.evaluate import Redirected
            return Redirected(torch.full_like(batch.target, 30 / 127.5 - 1))

    report = run_evaluation(tmp_path, [Blank(), GroundTruthTarget()], EvaluateConfig(group_size=4),
                            estimator=LabelLookup(table))
    assert verdict(report).startswith("NO GAZE: blank model") or verdict(report).startswith("WEAK GAZE: blank model")
    truth_like = run_evaluation(tmp_path, [type("Echo", (GroundTruthTarget,), {"three_d": True, "name": "echo"})()],
                                EvaluateConfig(group_size=4), estimator=LabelLookup(table))
    assert verdict(truth_like).startswith("GAZE FOLLOWS: echo")
    assert any("r pitch" in line for line in table1(report))


def test_identical_input_and_masked_background(tmp_path):
    subjects = {"subject0000": [100] * 6, "subject0001": [40, 60, 80, 120, 160, 200]}
    table = write_store(tmp_path, subjects, mask="centre")
    cfg = EvaluateConfig(group_size=3, background="white")
    report = run_evaluation(tmp_path, [CopySource(), GroundTruthTarget()], cfg, estimator=LabelLookup(table))
    same, masked = report.method(CopySource.name).subjects
    assert same.ssim == pytest.approx(1.0, abs=1e-9) and same.psnr == cfg.psnr_cap_db and same.psnr_capped == 3
    # white outside the target's face mask in both images: only the centre quarter differs
    ab = expected_pairs(cfg, subjects["subject0001"])
    assert masked.psnr == pytest.approx(np.mean([-10 * math.log10(0.25 * (a - b) ** 2) for a, b in ab]), rel=1e-5)
    assert masked.psnr_capped == 0
    copy = report.method(CopySource.name)
    assert copy.mean["psnr"] == pytest.approx((same.psnr + masked.psnr) / 2)
    assert "3 of 6 images identical" in copy.notes["psnr"]


def test_finetune_runs_once_per_subject_on_fresh_weights(tmp_path, tiny_model):
    write_store(tmp_path, {"subject0000": list(range(10, 90, 10)), "subject0001": list(range(15, 95, 10))})
    name, base = "superres.style", tiny_model.state_dict()["superres.style"].clone()
    calls = []

    def finetune(model: LiveGaze, samples, epochs: int) -> LiveGaze:
        assert torch.equal(model.state_dict()[name], base)  # the loaded weights, not the last subject's
        calls.append((samples[0].subject, len(samples), epochs))
        with torch.no_grad():
            dict(model.named_parameters())[name].add_(1.0)
        return model

    method = LiveGazeMethod(tiny_model, finetune=finetune, epochs=3)
    run_evaluation(tmp_path, [method], EvaluateConfig(group_size=4, max_pairs=1, lpips=False, fid=False))
    assert calls == [("subject0000", 4, 3), ("subject0001", 4, 3)]
    method.model.load_state_dict({**method.model.state_dict(), name: base})


def test_evaluate_writes_the_report(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("GAZEGEN_WEIGHTS", str(tmp_path / "no-weights"))  # no LPIPS / FID weights anywhere
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    heads = SynthHeadsConfig(subjects=3, test_subjects=2, resolution=32, gazes=3, seed=5, rig=RigConfig(views=4))
    store = synthesize_store(tmp_path / "heads", heads, workers=1)
    save_pretrained(tmp_path / "model", tiny_model)
    save_pretrained(tmp_path / "estimator", GazeEstimator(EstimatorNetConfig(resolution=32, width=8, blocks=(1, 1))))
    out = tmp_path / "report"
    report = evaluate(tmp_path / "model", store, out, EvaluateConfig(group_size=6, max_pairs=4, batch_size=2),
                      estimator=tmp_path / "estimator")
    data = json.loads((out / "report.json").read_text())
    names = [m["name"] for m in data["methods"]]
    assert names == [m.name for m in report.methods] and len(names) == 5 and names[-1] == CONSTANT
    assert "perfect render at 16 px (resolution ceiling)" in names
    for m in data["methods"]:
        assert [s["subject"] for s in m["subjects"]] == ["subject0001", "subject0002"]
        assert all(s["pairs"] == 4 for s in m["subjects"])
        keys = ("gaze_error", "head_error") if m["name"] == CONSTANT else ("ssim", "psnr", "gaze_error", "head_error")
        for key in keys:
            assert m["mean"][key] == pytest.approx(np.mean([s[key] for s in m["subjects"]]))
        assert m["mean"]["lpips"] is None and m["mean"]["fid"] is None
        if m["name"] == CONSTANT:
            continue
        assert "vgg16-397923af.pth" in m["notes"]["lpips"]
        assert "pt_inception-2015-12-05-6726825d.pth" in m["notes"]["fid"]
    md = (out / "report.md").read_text()
    assert "| ST-ED [49] | quoted from the paper, ETH-XGaze | ✗ | 0.726 | 17.530 | 0.300 | 115.020 |" in md
    assert "| 0.715 | 19.007 | 0.272 | 38.346 | - | - | - | - | 0.026s | 0.035s | 0.061s |" in md
    assert len(PAPER_TABLE1) == 4 and md.count("quoted from the paper, ETH-XGaze") >= 5
    assert "vgg16-397923af.pth" in md and "| subject0001 |" in md
    sheet = cv2.imread(str(out / "sheet.png"))
    assert sheet is not None and sheet.shape[0] > sheet.shape[1]  # one row per pair, four columns
    probes = data["probes"]  # the gaze sweep (5 x 5 per subject) and the swap test ran, and the sweep sheet exists
    assert probes["gaze_sweep"]["gazes"] == 25 and probes["gaze_sweep"]["subjects"] == 2
    assert probes["swap"]["pairs"] > 0 and cv2.imread(str(out / "sweep.png")) is not None
    assert data["verdict"] is not None and "Gaze sweep" in md
    write_report(report, out)  # rewriting in place works


def test_errors_use_labels_not_the_estimate_on_the_target(tmp_path):
    table = write_store(tmp_path, {"subject0000": [20, 50, 80, 110, 140, 170]})
    lookup, offset = LabelLookup(table), torch.tensor([[0.1, -0.05]], dtype=torch.float64)

    def biased(image: torch.Tensor) -> GazeEstimate:  # a consistently wrong estimator
        est = lookup(image)
        return GazeEstimate(est.gaze + offset, est.head_pose)

    report = run_evaluation(tmp_path, [GroundTruthTarget()], EvaluateConfig(group_size=3), estimator=biased)
    (scores,) = report.method(GroundTruthTarget.name).subjects
    tgt = [j for _, j in pair_rows(6, EvaluateConfig(group_size=3))]
    gaze = torch.from_numpy(table["subject0000"]["gaze"][tgt])
    expected = geometry.angular_error(gaze + offset, gaze).mean().item()
    assert expected > 3 and scores.gaze_error == pytest.approx(expected, rel=1e-6)  # the floor: the estimator's own error
    assert scores.gaze_error_vs_estimate == pytest.approx(0.0, abs=1e-3)  # GazeNeRF's variant cannot see it
    assert scores.head_error == pytest.approx(0.0, abs=1e-3)


def test_a_store_without_test_subjects_is_named_before_any_work(tmp_path, tiny_model):
    """A training-only store (its split file lists no test subject) is an error naming the split file."""
    write_store(tmp_path / "store", {"subject0000": [10, 20, 30]})
    (tmp_path / "store" / "train").mkdir()
    (tmp_path / "store" / "test" / "subject0000.h5").rename(tmp_path / "store" / "train" / "subject0000.h5")
    write_split(tmp_path / "store", ["subject0000.h5"], [])
    save_pretrained(tmp_path / "model", tiny_model)
    with pytest.raises(DataError, match=r"train_test_split\.json: split 'test' lists no subjects"):
        evaluate(tmp_path / "model", tmp_path / "store", tmp_path / "report", EvaluateConfig(lpips=False, fid=False),
                 estimator=None)
    assert not (tmp_path / "report").exists()


def test_a_store_seen_through_another_camera_than_the_checkpoints_is_refused_naming_it(tmp_path, tiny_model):
    """The model learned faces where its training camera put them: a store framed about another face centre (or
    zoomed otherwise) is an error naming its file and both cameras, before any work; the same camera passes."""
    write_store(tmp_path / "store", {"subject0000": [10, 20, 30]})  # NORM: ETH-XGaze's framing, 23.7 mm
    heads = dataclasses.replace(NORM, eye_above_centre_mm=0.0)
    save_pretrained(tmp_path / "model", tiny_model, normalisation=heads)
    with pytest.raises(DataError, match=r"subject0000\.h5: normalised camera of .* looking 23\.7 mm below the eyes; "
                                        r".*model was trained on .* 0 mm below the eyes"):
        evaluate(tmp_path / "model", tmp_path / "store", tmp_path / "report", EvaluateConfig(lpips=False, fid=False))
    assert not (tmp_path / "report").exists()
    check_model_camera(tmp_path / "store", "test", NORM.at_resolution(512), tmp_path / "model")  # same camera, any size
