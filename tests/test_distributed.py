"""The training loop under Ray Train: 2 gloo workers on CPU, tiny preset (train/distributed.py)."""

from __future__ import annotations

import json

import pytest
import torch

from gazegen.checkpoint import load_checkpoint, load_train_state
from gazegen.config import RigConfig, SynthHeadsConfig, TrainConfig, load_config
from gazegen.data.heads import synthesize_store
from gazegen.train.errors import TrainingError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    cfg = SynthHeadsConfig(subjects=3, resolution=64, gazes=3, test_subjects=1, rig=RigConfig(views=4))
    return synthesize_store(tmp_path_factory.mktemp("distributed") / "heads", cfg, workers=1)


@pytest.mark.ray
def test_two_gloo_workers_train_one_model(ray_session, store, tmp_path):
    from gazegen.train.distributed import run_distributed

    cfg = load_config(TrainConfig, None, [
        "model=model/tiny.toml", "loss.perceptual=false", "data.workers=0", "data.val_samples=2", "max_steps=2",
        "val_every=0", "log_every=1", "tensorboard=false", "optim.lr_encoder=1e-3", "optim.lr_renderer=1e-3",
        "optim.lr_gaze=1e-3"])
    result = run_distributed(cfg, store, tmp_path / "run", workers=2, gpus_per_worker=0)
    assert (result.status, result.step) == ("finished", 2)
    model = load_checkpoint(result.checkpoint)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    state = load_train_state(result.checkpoint)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's RNG, gathered for an exact resume
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # ranks draw different jitter/dropout
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]  # rank 0 logs, once per step
    assert any("2 worker(s)" in r.get("message", "") for r in records)
    assert result.metrics["psnr_eyes"] > 0  # rank 0 validated at the end
    with pytest.raises(TrainingError, match="not divisible by the 3 workers"):
        run_distributed(cfg, store, tmp_path / "other", workers=3)
