"""The error of training (train/): a run that cannot start or go on."""

from __future__ import annotations

from gazegen.errors import GazegenError


class TrainingError(GazegenError, RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""
