"""A device this machine lacks is the user's error, one line, in every command that takes one
(gazegen/device.py): ``--device cuda`` on a torch without CUDA, exit 2, no traceback, nothing written.

The machine need not have a GPU or lack one: ``torch.cuda.is_available`` (and the build's CUDA
version) are monkeypatched to the case under test.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from gazegen.cli import app
from gazegen.config import CONFIG_DIR
from gazegen.device import DeviceError, torch_device
from gazegen.errors import GazegenError
from gazegen.train.trainer import pick_device

runner = CliRunner()


@pytest.fixture
def cpu_torch(monkeypatch):
    """This torch as a ``+cpu`` wheel: no CUDA build, no CUDA device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


def test_cuda_on_a_cpu_torch_names_the_option_and_the_build(cpu_torch):
    with pytest.raises(DeviceError) as info:
        torch_device("cuda")
    assert str(info.value) == f"--device cuda: this torch has no CUDA (torch {torch.__version__})"
    assert isinstance(info.value, GazegenError) and isinstance(info.value, RuntimeError)
    with pytest.raises(DeviceError, match=r"^device = cuda:1: this torch has no CUDA"):
        pick_device("cuda:1")
    assert torch_device("cpu") == torch.device("cpu") and pick_device("auto") == torch.device("cpu")


def test_a_cuda_build_without_a_visible_gpu_and_an_index_past_the_last(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"^--device cuda: no CUDA device is visible to this torch \(torch .*, CUDA 12\.4;"):
        torch_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"^--device cuda:2: this machine has 2 CUDA device\(s\) \(cuda:0 to cuda:1\)$"):
        torch_device("cuda:2")
    assert torch_device("cuda:1") == torch.device("cuda", 1)  # names it; nothing touches the device


def test_a_name_torch_does_not_know_is_one_line():
    with pytest.raises(DeviceError, match=r"^--device gpu: not a torch device"):
        torch_device("gpu")


def _one_line_device_error(result) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output  # typer.Exit(2), not a crash
    (line,) = [l for l in result.output.splitlines() if l.strip()]
    assert line.startswith("error: ") and "cuda: this torch has no CUDA (torch " in line, line


@pytest.mark.parametrize("command", ["bench", "estimator train", "evaluate", "train"])
def test_every_command_with_a_device_fails_in_one_line(cpu_torch, tmp_path, command):
    """The audit's commands, each before it reads or writes anything."""
    store, out = str(tmp_path / "store"), tmp_path / "out"
    args = {
        "bench": ["bench", "--preset", str(CONFIG_DIR / "model" / "base.toml"), "--device", "cuda", "--dtype", "bf16", "--compile"],
        "estimator train": ["estimator", "train", store, "--out", str(out), "--device", "cuda"],
        "evaluate": ["evaluate", "weights/demo-livegaze", store, "--out", str(out), "--device", "cuda"],
        "train": ["train", "--config", str(CONFIG_DIR / "train" / "demo.toml"), "--data", store, "--out", str(out),
                  "--set", "device=cuda"],
    }[command]
    result = runner.invoke(app, args)
    _one_line_device_error(result)
    assert ("--device cuda:" if command != "train" else "device = cuda:") in result.output
    assert not out.exists()
