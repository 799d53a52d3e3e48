"""benchmarks/learning.py's depth regions: which pixels a depth L1 is scored on (closed forms, one-pixel maps)."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import torch

from gazegen.config import NormalisationConfig
from gazegen.geometry import head_pose_to_camera

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "learning.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("learning_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_depth_regions_closed_form():
    """A frontal camera 2.7 units from the cube's centre; each one-pixel map is its optical axis. A true z-depth d puts
    the surface at |d - 2.7| from the centre: inside the unit cube for |d - 2.7| <= 0.5. The render keeps a depth
    where its alpha is at least the threshold."""
    learning = load_benchmark()
    norm = NormalisationConfig()
    depth = torch.tensor([2.7, 3.1, 3.3, 2.1, 2.5]).view(5, 1, 1, 1)  # |d - 2.7|: 0, 0.4, 0.6, 0.6, 0.2
    valid = torch.tensor([True, True, True, True, False]).view(5, 1, 1, 1)
    alpha = torch.tensor([0.9, 0.4, 0.5, 0.7, 1.0]).view(5, 1, 1, 1)
    batch = SimpleNamespace(depth_valid=valid, depth_prior=depth,
                            camera=head_pose_to_camera(torch.zeros(5, 2), norm).float())
    regions = {k: v.flatten().tolist() for k, v in learning.depth_regions(batch, alpha, 1.0, 0.5).items()}
    assert norm.radius == 2.7
    assert regions[""] == [True, True, True, True, False]
    assert regions["_in_volume"] == [True, True, False, False, False]
    assert regions["_kept"] == [True, False, True, True, False]
