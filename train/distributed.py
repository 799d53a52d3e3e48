"""Data-parallel training under Ray Train: the loop of train/trainer.py on N workers (DDP), one GPU each or CPUs.

    gazegen train --config C --data D --out RUN --workers 2 --gpus-per-worker 1

Every worker runs ``run_training`` with a ``DistContext`` (its rank, Ray's device, and Ray's
``prepare_model`` as the DDP wrapper; the process group is Ray's: NCCL on GPUs, gloo on CPUs).
The global batch (``TrainConfig.batch_size``) is split over the workers, so a run sees the same
batches whatever the worker count. Rank 0 validates, logs and writes the checkpoints, in gazegen's
format, straight into RUN: on a multi-node cluster RUN must be on storage every node sees.
``--resume`` works as in a single process (the run's own settings; every rank's RNG is in the checkpoint),
and the store and a resume's settings are checked here, before Ray starts, as a single process checks them.

This is the only module of train/ that imports Ray.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict
from pathlib import Path

from gazegen.config import TrainConfig
from gazegen.train.errors import TrainingError
from gazegen.train.preflight import checked_store
from gazegen.train.trainer import TrainResult

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"


def _worker(config: dict) -> None:
    """Ray Train's per-worker function: one rank of the loop."""
    import ray.train
    import ray.train.torch
    import torch

    from gazegen.train.trainer import DistContext, run_training

    ctx = ray.train.get_context()
    if ctx.get_world_rank() != 0:  # rank 0 logs the run; the others only what goes wrong
        logging.getLogger("gazegen").setLevel(logging.WARNING)
    # DDP compares a gradient's strides with its bucket's in every dimension, also those of size 1, where they
    # mean nothing: a depthwise conv's (C, 1, k, k) weight warns every step with the same memory layout.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    context = DistContext(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), device=str(device),
                          wrap_model=ray.train.torch.prepare_model)
    result = run_training(config["cfg"], Path(config["data"]), Path(config["out"]), config["max_steps"], config["resume"],
                          context=context)
    if context.is_main:
        record = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
        (Path(config["out"]) / RESULT_FILE).write_text(json.dumps(record, indent=1))


def run_distributed(cfg: TrainConfig, data: Path, out: Path, max_steps: int | None = None, resume: bool = False, *,
                    workers: int = 2, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
                    address: str | None = None) -> TrainResult:
    """`gazegen train --workers N [--gpus-per-worker G]`: ``run_training`` on N Ray Train workers (DDP).

    Uses the Ray session already started in this process, else starts a local one (``address``:
    join that cluster instead). ``gpus_per_worker`` 0: CPU workers with gloo.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if workers < 1:
        raise TrainingError(f"--workers {workers}: at least 1")
    if cfg.batch_size % workers:
        raise TrainingError(f"batch_size {cfg.batch_size} is not divisible by the {workers} workers (the batch is global)")
    checked_store(cfg, Path(data), Path(out), resume)  # a bad store or resume: one line here, not a Ray failure
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)
    if not ray.is_initialized():
        ray.init(address=address or "local")  # a bare ray.init() would join any cluster running on this machine
    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg, "data": str(Path(data).resolve()), "out": str(out), "max_steps": max_steps,
                           "resume": resume, "cpus_per_worker": cpus_per_worker},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=f"gazegen-{out.name}", storage_path=str(out / "ray")),
    )
    outcome = trainer.fit()
    if getattr(outcome, "error", None) is not None:
        raise TrainingError(f"Ray Train run failed: {outcome.error}")
    record_file = out / RESULT_FILE
    if not record_file.is_file():
        raise TrainingError(f"{record_file}: rank 0 wrote no result; see the Ray logs under {out / 'ray'}")
    record = json.loads(record_file.read_text())
    return TrainResult(run=Path(record["run"]), checkpoint=Path(record["checkpoint"]) if record["checkpoint"] else None,
                       step=record["step"], status=record["status"], metrics=record["metrics"])
