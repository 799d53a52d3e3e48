"""The redirection probes (evaluation/probes.py): read-vs-requested statistics and change maps, on known cases."""

import numpy as np
import pytest
import torch

from gazegen.config import CONFIG_DIR, ModelConfig, RigConfig, SynthHeadsConfig, load_config
from gazegen.data.heads import synthesize_store
from gazegen.data.xgaze import open_subject
from gazegen.metrics.estimator import GazeEstimate
from gazegen.models.livegaze import LiveGaze
from gazegen.evaluation.estimator import store_files
from gazegen.evaluation.probes import Following, Regions, gaze_sweep, pearson, run_probes, sweep_gazes, swap_test


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    cfg = SynthHeadsConfig(subjects=3, test_subjects=2, resolution=64, gazes=3, seed=2, rig=RigConfig(views=3))
    return synthesize_store(tmp_path_factory.mktemp("probes") / "heads", cfg, workers=1)


@pytest.fixture(scope="module")
def fresh_model():
    torch.manual_seed(0)
    return LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")).eval()


def constant_estimator(image: torch.Tensor) -> GazeEstimate:
    return GazeEstimate(torch.zeros(len(image), 2, dtype=torch.float64), torch.zeros(len(image), 2, dtype=torch.float64))


def test_following_statistics_against_numpy():
    rng = np.random.default_rng(0)
    requested = rng.uniform(-0.5, 0.5, (40, 2))
    read = requested * [1.0, -1.0] + rng.normal(0, 0.05, (40, 2))
    f = Following.of(read, requested)
    assert f.pitch_corr == pytest.approx(np.corrcoef(read[:, 0], requested[:, 0])[0, 1])
    assert f.yaw_corr == pytest.approx(np.corrcoef(read[:, 1], requested[:, 1])[0, 1]) and f.yaw_corr < -0.9
    assert pearson(np.ones(5), np.arange(5.0)) is None and f.count == 40
    grid = sweep_gazes(3, 20.0)
    assert grid.shape == (9, 2) and np.allclose(np.degrees(grid[:3, 1]), [-20, 0, 20])


def test_regions_grow_the_eyes_by_the_lid_margin(store):
    with open_subject(store_files(store, "test")[0]) as reader:
        sample = reader[0]
    tight, wide = Regions.of([sample], 64, 0.5), Regions.of([sample], 64, 8.0)
    eyes = torch.from_numpy(sample.eye_mask).float()
    assert (tight.eyes[0, 0] >= eyes).all() and wide.eyes.sum() > tight.eyes.sum() > eyes.sum() - 1
    assert (wide.eyes * wide.rest).sum() == 0  # disjoint


def test_a_model_whose_gaze_path_is_at_its_zero_start_moves_nothing_with_the_gaze(store, fresh_model):
    """LiveGaze starts with a zero cross-attention output: F_app = F_h, so no gaze changes any pixel; sources do."""
    subjects = []
    for path in store_files(store, "test"):
        with open_subject(path) as reader:
            subjects.append(reader.read(0, len(reader)))
    sweep, outputs, _ = gaze_sweep(fresh_model, subjects, constant_estimator, torch.device("cpu"), steps=3)
    assert sweep.change_eyes < 1e-6 and sweep.change_rest < 1e-6 and sweep.subjects == 2  # float rounding only
    assert sweep.following.pitch_corr is None and outputs.shape[0] == 9  # a constant read has no correlation
    pairs = [(subjects[0][0], subjects[0][5]), (subjects[0][1], subjects[0][4]), (subjects[1][0], subjects[1][5]),
             (subjects[1][1], subjects[1][4])]
    swap = swap_test(fresh_model, pairs, torch.device("cpu"))
    assert swap.gaze_eyes < 1e-6 and swap.gaze_rest < 1e-6
    assert swap.source_rest > 0 and swap.data_rest > 1e-2  # (an untrained model depends on its source only faintly)
    report = run_probes(fresh_model, store_files(store, "test"), constant_estimator, "cpu", steps=3, swap_pairs=2)
    assert report.sweep_images.shape == (9, 64, 64, 3) and len(report.sweep_labels) == 9 and report.swap.pairs == 4
