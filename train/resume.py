"""What a resumed run trains with: the run's own settings, as it recorded them when it started.

    RUN/train_config.json    {"train": the TrainConfig, "model": its model config, "data": the store, ...}

`gazegen train --out RUN --resume` continues RUN with the TrainConfig, the model config and the store
it recorded (train/trainer.py writes the record; the model is the recorded one, not its preset read
again, which may have changed since). Settings given with --resume (a config, --set, --data) must
agree with the record in everything that changes the result; only the ``RUN_TIME`` keys may differ,
and then the given values are used. `--max-steps` (an early stop, not the schedule) is always free.
A store that was moved is the exception: when the recorded store no longer exists, `--data` names
where it is now (with a warning); without it the resume is refused with that advice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gazegen.config import ModelConfig, TrainConfig, load_config, to_dict, with_overrides
from gazegen.train.errors import TrainingError

RECORD = "train_config.json"

log = logging.getLogger("gazegen.train")

# Keys that change where and how a run executes, what it reports and what it keeps, never its weights nor its
# validation scores beyond rounding: the device and threads (the same computation; a GPU rounds its own way, in bf16
# under `bf16`), how often it logs, validates and writes checkpoints and how many it keeps (validation forks the RNG,
# a checkpoint only reads it: train/trainer.py), the rows of the validation picture, TensorBoard, how the data loader
# loads (a batch is a function of the step: train/data.py) and how many cameras the depth teacher renders per call
# (its depths are cached once per run). Everything else (model, losses, optimiser, schedule, max_steps, seed, data
# settings, depth prior, init) and the store change the result.
RUN_TIME = frozenset({"device", "threads", "log_every", "val_every", "checkpoint_every", "keep_checkpoints",
                      "grid_samples", "tensorboard", "data.workers", "data.prefetch", "depth_prior.teacher_batch"})


@dataclass(frozen=True)
class RunRecord:
    """What a run recorded when it started: its settings and its store."""

    path: Path  # RUN/train_config.json
    train: TrainConfig
    model: ModelConfig  # the model the run was built with (its preset and model_overrides, resolved when it started)
    data: Path


def read_record(run: Path) -> RunRecord:
    """``run``'s record; TrainingError when it has none (nothing to resume) or it cannot be read."""
    path = Path(run) / RECORD
    if not path.is_file():
        raise TrainingError(f"{run}: nothing to resume (no {RECORD}: not a run of `gazegen train`)")
    try:
        record = json.loads(path.read_text())
        return RunRecord(path, TrainConfig.from_dict(record["train"]), ModelConfig.from_dict(record["model"]),
                         Path(record["data"]))
    except (ValueError, KeyError, TypeError) as e:  # ConfigError is a ValueError
        raise TrainingError(f"{path}: not a readable run record ({type(e).__name__}: {e})") from None


def resume_settings(run: Path, config: Path | None, overrides: Sequence[str], data: Path | None) -> tuple[TrainConfig, Path]:
    """The settings a resume of ``run`` was given: the config file (default: the run's recorded one) with
    ``overrides``, and the store (default: the run's); ``check_resume`` then holds them to the record."""
    record = read_record(run)
    if config is not None:
        cfg = load_config(TrainConfig, config, overrides)
    else:
        cfg = with_overrides(record.train, overrides, str(record.path))
    if data is None and not record.data.exists():
        raise TrainingError(f"{run}: the run's store {record.data} is gone (moved or deleted); pass --data with its new "
                            f"path: `gazegen train --out {run} --resume --data STORE`")
    return cfg, record.data if data is None else Path(data)


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys (``optim.lr_gaze``); lists and tuples stay whole values."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``key: a's value -> b's value`` (JSON) for each dotted key whose values differ, sorted."""
    fa, fb = flat(a), flat(b)
    return [f"{k}: {json.dumps(fa.get(k))} -> {json.dumps(fb.get(k))}" for k in sorted(fa.keys() | fb.keys())
            if fa.get(k) != fb.get(k)]


def check_resume(run: Path, cfg: TrainConfig, data: Path, *, warn: bool = True) -> None:
    """TrainingError, naming each key with the run's value and the given one, when ``cfg`` or ``data`` differ
    from ``run``'s record in what changes the result (anything but ``RUN_TIME``). Another ``data`` is taken when
    the recorded store no longer exists (it was moved): ``warn``, a warning says so."""
    record = read_record(run)
    given = {k: v for k, v in flat(to_dict(cfg)).items() if k not in RUN_TIME}
    recorded = {k: v for k, v in flat(to_dict(record.train)).items() if k not in RUN_TIME}
    found = differences(recorded, given)
    moved = Path(data).resolve() != record.data.resolve()
    if moved and record.data.exists():
        found.append(f"data: {json.dumps(str(record.data))} -> {json.dumps(str(data))}")
    if found:
        raise TrainingError(f"{run}: --resume continues the run with its own settings ({record.path}), and the ones given "
                            f"differ in what changes its result: {'; '.join(found)}. Resume with `gazegen train --out {run} "
                            f"--resume` (no --config, --set or --data; only run-time keys may be set: "
                            f"{', '.join(sorted(RUN_TIME))})")
    if moved and warn:
        log.warning(f"--data {data}: the run's store {record.data} no longer exists; resuming on {data} as the run's "
                    "store (its other settings stay its own)")

