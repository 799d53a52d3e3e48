"""The torch device a command is asked to run on, checked before any work.

``--device cuda`` on a torch built without CUDA (a ``+cpu`` wheel), on a machine whose GPUs this
torch cannot see, or ``cuda:3`` on a machine with two GPUs is the user's choice gone wrong, not a
bug: ``torch_device`` says so in one line (a ``DeviceError``, which the CLI prints and exits 2 on),
where torch would fail later with a traceback ("Torch not compiled with CUDA enabled"). Every
command that takes a device names it through here: `gazegen bench`, `estimator train` and `eval`,
`evaluate`, and `train` / `finetune` (their config's ``device``, train/trainer.py ``pick_device``).
"""

from __future__ import annotations

import torch

from gazegen.errors import GazegenError


class DeviceError(GazegenError, RuntimeError):
    """The device asked for does not exist on this machine or in this torch build."""


def _torch_build() -> str:
    """This torch's version and CUDA build, e.g. "torch 2.5.1+cpu" or "torch 2.5.1, CUDA 12.4"."""
    cuda = torch.version.cuda
    return f"torch {torch.__version__}" + (f", CUDA {cuda}" if cuda else "")


def _cuda_problem(device: torch.device) -> str | None:
    """Why ``device`` (of type cuda) cannot be used here, or None when it can."""
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return f"this torch has no CUDA ({_torch_build()})"
        return f"no CUDA device is visible to this torch ({_torch_build()}; check CUDA_VISIBLE_DEVICES and the driver)"
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        return f"this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
    return None


def _mps_problem() -> str | None:
    """Why the mps device cannot be used here, or None when it can."""
    return None if torch.backends.mps.is_available() else f"this torch has no MPS device ({_torch_build()})"


def torch_device(name: str | torch.device, given_as: str = "--device") -> torch.device:
    """``name`` as a torch device this process can use; DeviceError naming the option (``given_as``,
    e.g. ``--device`` or ``device =`` for a config key) and why otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise DeviceError(f"{given_as} {name}: not a torch device ({e})") from None
    problem = _cuda_problem(device) if device.type == "cuda" else _mps_problem() if device.type == "mps" else None
    if problem is not None:
        raise DeviceError(f"{given_as} {name}: {problem}")
    return device
