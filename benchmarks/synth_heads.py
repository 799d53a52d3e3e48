"""Speed of `gazegen data synth-heads`: images per second for a whole store, h5 writing included.

    python benchmarks/synth_heads.py                      # 16 subjects x 18 views x 20 gazes, 128 px
    python benchmarks/synth_heads.py --workers 1 --subjects 4

Prints the configuration, the total seconds and images/s of the whole store, then the
rendering rate of one subject in this process (no writing). The machine may be shared:
report the load average printed beside the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import torch

from gazegen.config import RigConfig, SynthHeadsConfig
from gazegen.data.heads import available_cores, render_subject, subject_plan, synthesize_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--views", type=int, default=18)
    parser.add_argument("--gazes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per available core)")
    parser.add_argument("--out", type=Path, default=None, help="store folder (default: a temporary one, removed)")
    args = parser.parse_args()
    cfg = SynthHeadsConfig(subjects=args.subjects, resolution=args.resolution, gazes=args.gazes, rig=RigConfig(views=args.views))
    images = cfg.subjects * cfg.gazes * cfg.rig.views
    print(f"synth-heads: {cfg.subjects} subjects x {cfg.rig.views} views x {cfg.gazes} gazes = {images} images at {cfg.resolution} px")
    print(f"cores available: {available_cores()}, workers: {args.workers or 'auto'}, load average before: {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "store"
        started = time.perf_counter()
        synthesize_store(out, cfg, workers=args.workers)
        total = time.perf_counter() - started
        size = sum(f.stat().st_size for f in out.rglob("*.h5")) / 2**20
    print(f"total: {total:.1f} s, {images / total:.1f} images/s, {size:.0f} MiB written (load average after: {os.getloadavg()[0]:.2f})")

    torch.set_num_threads(1)  # one subject in this process: where the time goes
    one = dataclasses.replace(cfg, subjects=1)
    started = time.perf_counter()
    plan = subject_plan(one, 0)
    count = sum(len(samples) for samples in render_subject(plan, one))
    render = time.perf_counter() - started
    print(f"one subject, one process, one thread: render {render:.2f} s ({count / render:.1f} images/s)")


if __name__ == "__main__":
    main()
