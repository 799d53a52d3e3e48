"""Where a training step's time goes, and what flushing subnormal floats buys: demo preset, CPU.

    python benchmarks/train_step.py                                  # from the shipped weights (how the project trains)
    python benchmarks/train_step.py --threads 2                      # the demo's setting on a 2-core machine
    python benchmarks/train_step.py --init ""                        # from a random initialisation

The trainer's step (forward, the paper's losses, backward, clipping, AdamW: train/trainer.py's
``forward_backward`` and update, timed in parts) on fixed batches of a small procedural store,
every timed block starting from the same model and optimiser state, so each does the same
arithmetic. Three settings alternate within one run, each block in a fresh process (OpenMP's
threads take the floating-point mode of the thread that starts them, so the mode is set first,
as the trainer does):

  subnormals kept     the CPU's default, and the trainer's before it flushed them
  subnormals flushed  torch.set_flush_denormal(True)
  + freed memory kept also glibc's malloc thresholds fixed (gazegen/allocator.py), so a step's large
                      tensors reuse the last step's pages instead of faulting in fresh ones: what
                      the trainer sets on CPU

A trained field is opaque, so the transmittance behind its surface (exp of minus the optical depth)
and the softplus of very negative raw densities fall below float32's smallest normal value
(1.2e-38), where the CPU computes in microcode; a random field is translucent and has none. Prints
the median seconds per step of each setting and their ratios, and for the trainer's setting the
split into forward (with the loss), backward and optimiser.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gazegen.allocator import keep_freed_memory
from gazegen.config import CONFIG_DIR, RigConfig, SynthHeadsConfig, TrainConfig, load_config
from gazegen.data.heads import synthesize_store
from gazegen.data.splits import store_splits
from gazegen.models.livegaze import LiveGaze
from gazegen.train.data import TripletDataset, Triplets, TripletSizes
from gazegen.train.depth_prior import DatasetDepth
from gazegen.train.optim import FROZEN, build_optimizer
from gazegen.train.subjects import read_subject
from gazegen.train.init_weights import initialise
from gazegen.train.trainer import build_loss

STORE = SynthHeadsConfig(subjects=2, resolution=128, gazes=8, test_subjects=1, rig=RigConfig(views=9))
SETTINGS = {"subnormals kept": (False, False), "subnormals flushed": (True, False), "+ freed memory kept": (True, True)}  # flush, keep


def batches(store: Path, cfg: TrainConfig, count: int) -> list[Triplets]:
    """``count`` fixed training batches of the store's first training subject(s)."""
    subjects = [read_subject(p) for p in store_splits(store).split("train")[:2]]
    model_cfg = cfg.model_config()
    dataset = TripletDataset(subjects, TripletSizes.for_model(model_cfg), DatasetDepth(), seed=cfg.seed)
    b = cfg.batch_size
    return [Triplets.cat([dataset[(0, i * b + j)] for j in range(b)]) for i in range(count)]


class StepTimer:
    """The trainer's step, timed in parts; every process builds the same model (seeded, then ``init``)."""

    def __init__(self, cfg: TrainConfig, init: str):
        torch.manual_seed(cfg.seed)
        self.model = LiveGaze(cfg.model_config())
        initialise(self.model, init)
        self.model.train()
        self.loss_fn = build_loss(cfg)
        self.optimizer = build_optimizer(self.model, cfg.optim, FROZEN[cfg.stage])
        self.grad_clip = cfg.optim.grad_clip

    def step(self, batch: Triplets) -> tuple[float, float, float]:
        """Seconds of forward + loss, backward (with clipping), and the optimiser's update."""
        t0 = time.perf_counter()
        out = self.model(batch.source, batch.gaze_head, batch.camera, batch.source_camera)
        terms = self.loss_fn.on_batch(out, batch)
        t1 = time.perf_counter()
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], self.grad_clip)
        t2 = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t2


def block(args: argparse.Namespace, store: Path, setting: str) -> list[tuple[float, float, float]]:
    """One timed block in this process: the floating-point mode first, then the model, an untimed warm-up step
    (allocations, the optimiser's moments), the timed steps. Every block does the same arithmetic."""
    flush, keep = SETTINGS[setting]
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(flush)  # before any parallel region: OpenMP's threads inherit it
    if keep:
        keep_freed_memory()
    cfg = load_config(TrainConfig, args.config)
    fixed = batches(store, cfg, args.steps + 1)
    timer = StepTimer(cfg, args.init)
    timer.step(fixed[0])
    return [timer.step(b) for b in fixed[1:]]


def run_block(args: argparse.Namespace, store: Path, setting: str) -> list[tuple[float, float, float]]:
    """``block`` in a fresh Python process; its (forward, backward, update) seconds per step."""
    command = [sys.executable, __file__, "--block", setting, "--store", str(store),
               "--config", str(args.config), "--init", args.init, "--steps", str(args.steps), "--threads", str(args.threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return [tuple(step) for step in json.loads(out.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(CONFIG_DIR / "train" / "demo.toml"), help="training config (batch, losses)")
    parser.add_argument("--init", default="weights/demo-livegaze", help='weights to start from ("": random)')
    parser.add_argument("--store", type=Path, help="a procedural store (default: a small one made in a temporary folder)")
    parser.add_argument("--steps", type=int, default=4, help="steps per timed block (distinct batches)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per setting, alternated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--block", choices=tuple(SETTINGS), help=argparse.SUPPRESS)  # one block, as a child process
    args = parser.parse_args()
    if args.block:
        print(json.dumps(block(args, args.store, args.block)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or synthesize_store(Path(tmp) / "store", STORE)
        seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
        parts: list[tuple[float, float, float]] = []
        for _ in range(args.repeats):
            for name, (_, keep) in SETTINGS.items():
                steps = run_block(args, store, name)
                seconds[name].append(sum(sum(s) for s in steps) / len(steps))
                if keep:
                    parts.extend(steps)
    batch = load_config(TrainConfig, args.config).batch_size
    print(f"demo-preset training step ({args.config}, batch {batch}, init {args.init or 'random'}), {args.threads} "
          f"thread(s), median of {args.repeats} blocks of {args.steps} steps; load average {os.getloadavg()[0]:.2f}")
    for name, values in seconds.items():
        print(f"  {name:20s} {statistics.median(values) * 1e3:7.1f} ms/step  ({', '.join(f'{v * 1e3:.0f}' for v in values)})")
    kept, flushed, trainer = (statistics.median(seconds[n]) for n in SETTINGS)
    print(f"  steps per second, flushed / kept: {kept / flushed:.2f}x; + freed memory kept / flushed: {flushed / trainer:.2f}x")
    forward, backward, update = (statistics.median(p[i] for p in parts) * 1e3 for i in range(3))
    print(f"  the trainer's setting, per step: forward + loss {forward:.1f} ms, backward {backward:.1f} ms, optimiser {update:.1f} ms")


if __name__ == "__main__":
    main()
