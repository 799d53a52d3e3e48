"""Tiny training sets shared by the learning tests (tests/test_trainer.py, tests/test_source_surface.py)."""

from __future__ import annotations

from pathlib import Path

from gazegen.config import ModelConfig
from gazegen.data.splits import store_splits
from gazegen.train.data import TripletDataset, Triplets, TripletSizes
from gazegen.train.depth_prior import DatasetDepth
from gazegen.train.subjects import read_subject


def own_camera_batch(store: Path, model_cfg: ModelConfig) -> Triplets:
    """Every target row of the store's training subjects as its own source, from its own camera: one batch."""
    subjects = [read_subject(p) for p in store_splits(store).split("train")]
    data = TripletDataset(subjects, TripletSizes.for_model(model_cfg), DatasetDepth(), same_frame=True)
    return Triplets.cat([data.load(k, r, r) for k, s in enumerate(subjects) for r in s.targets])
