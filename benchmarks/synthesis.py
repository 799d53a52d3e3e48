"""Speed of `gazegen synthesize`: the Ray pipeline against a bare in-process loop, and the grid gain.

    python benchmarks/synthesis.py --preset configs/model/tiny.toml --sources 200

Prints JSON. Three figures, measured in one run on the same model (a checkpoint, or a randomly
initialised one of ``--preset``) and the same inputs (``--inputs``, or ``--sources`` noise crops):

* ``bare``: ``run_synthesis`` without Ray: the run opened (``open_run``: plan, manifest), the
  pipeline's own stage functions called in sequence in this process (decode, render, PNG encoding,
  shard writing; ``gazegen.pipelines.graph.local_records``) and the run finalised (errors table,
  manifest, dataset card): images/s.
* ``ray``: ``run_synthesis`` into a fresh output, images/s over its whole wall clock (planning,
  the Ray pool's start-up, actors loading the checkpoint, writing, finalising) and over the Ray
  start-up excluded (``ray.init`` timed apart); ``ratio`` = ray / bare, both ways. The two
  alternate ``--rounds`` times (bare, Ray, bare, Ray, ...; each Ray round a fresh session) and the
  median ratio is reported with every round's: a shared machine's speed drifts by 10-30% over
  minutes, which one bare run followed by one Ray run reads as the pipeline's cost.
* ``model_s`` in both: the seconds the render stage spent on sources (``RenderActor.source_records``:
  encode, redirect, render and the arrays' conversion; no PNGs), summed over sources, with its thread's
  CPU seconds; for Ray also ``first_source_s``, from the pipeline's start (after ``ray.init``) to the
  actor's first source. So a ratio splits into Ray's fixed start-up and the model's pace in either
  process (the actor logs each source to a JSON-lines file in the work folder: ``timed_actor``).
* ``grid``: model time of sources' grids rendered the staged way (encode once per source,
  redirect once per gaze, render the rows in batches: ``staged_grid``, the actor's own calls), against
  one full forward per output image in batches of the same size.

Like with like: the bare loop and the render actor run the same number of torch threads,
``--threads``, by default what ``gazegen synthesize`` gives a CPU actor (the cores less one, which
the pipeline's decode / PNG / driver work needs; on 2 cores: 1). The bare loop does everything
on that one thread in turn; the pipeline overlaps decoding and PNG encoding with the model on the
remaining core, so on CPU it beats the bare loop once its fixed start-up is paid (``ray.init``
2-3 s, then ~1 s to the actor's first source: its worker importing torch and gazegen, loading
the checkpoint; 2 idle cores, session 15): at 100 sources of the tiny preset (~20 s bare) that
start-up is about a sixth of the run. Both loops render with glibc's malloc thresholds fixed
(gazegen/allocator.py, set by the render actor). On a shared machine the figures move with the
load, reported as ``loadavg`` (1, 5 and 15 minute averages before and after); two torch threads
on two busy cores thrash (several times slower), which is why the actor defaults to fewer
threads than cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from gazegen import geometry
from gazegen.checkpoint import load_checkpoint, save_pretrained
from gazegen.config import PUBLISHED_NORMALISATIONS, ModelConfig, load_config, load_synth_config
from gazegen.data.images import to_model_range
from gazegen.models.livegaze import LiveGaze
from gazegen.models.staged_grid import staged_grid
from gazegen.pipelines.graph import default_cpu_threads, local_records, quiet_auth_setup
from gazegen.pipelines.grid import plan_source
from gazegen.pipelines.manifest import finalize
from gazegen.pipelines.plan import plan_run
from gazegen.pipelines.render_actor import RenderActor
from gazegen.pipelines.router import ShardRouter
from gazegen.pipelines.synthesis import open_run, run_synthesis


def make_inputs(folder: Path, count: int, side: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):  # square noise crops of the model's size, read with --crop never (auto finds no face)
        cv2.imwrite(str(folder / f"src{i:05d}.png"), np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8))
    return folder


def timed_actor(log: Path) -> type[RenderActor]:
    """A RenderActor that appends each source's model time to ``log`` (JSON lines: wall-clock start, seconds,
    thread CPU seconds); defined here, so Ray ships it to the actor by value."""

    class TimedActor(RenderActor):
        def source_records(self, batch, i, on_chunk=None):
            start, wall, cpu = time.time(), time.perf_counter(), time.thread_time()
            records = super().source_records(batch, i, on_chunk)
            line = {"start": start, "seconds": time.perf_counter() - wall, "cpu_s": time.thread_time() - cpu}
            with open(log, "a") as f:
                f.write(json.dumps(line) + "\n")
            return records

    return TimedActor


def model_figures(log: Path, pipeline_start: float) -> dict:
    """Sum of the logged sources' model seconds and CPU seconds, and the first source's start after ``pipeline_start``."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return {"model_s": sum(x["seconds"] for x in lines), "model_cpu_s": sum(x["cpu_s"] for x in lines),
            "first_source_s": min(x["start"] for x in lines) - pipeline_start}  # fmt: skip


def bare_loop(checkpoint: Path, inputs: Path, out: Path, options: dict, device: str, threads: int) -> dict:
    log = out.with_name(out.name + "_model.jsonl")
    start, wall = time.time(), time.perf_counter()
    run, target, todo = open_run(checkpoint, inputs, out, load_synth_config(None, **options), overwrite=True)
    router = ShardRouter(target, todo, run)
    for records in local_records(run, todo, device, threads, actor_class=timed_actor(log)):
        router.add(records)
    router.finish(0)
    finalize(target, run.shards)  # the manifest, errors table and dataset card, as run_synthesis ends
    seconds = time.perf_counter() - wall
    rows = sum(s.rows for s in router.closed)
    return {"rows": rows, "seconds": seconds, "images_per_s": rows / seconds} | model_figures(log, start)


def grid_gain(checkpoint: Path, inputs: Path, options: dict, device: str, sources: int, repeats: int) -> dict:
    """Model seconds per source: staged grid vs one full forward per output image."""
    run = plan_run(checkpoint, inputs, load_synth_config(None, **options))
    model, batch = load_checkpoint(checkpoint, device=device).requires_grad_(False), run.cfg.batch_size
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    side = run.model.image_resolution
    images = [np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8) for i in range(sources)]
    head = np.zeros(2)

    def tensors(plan, image: np.ndarray) -> tuple[torch.Tensor, ...]:
        cameras = geometry.head_pose_to_camera(head[None] + plan.views, run.normalisation)
        x = to_model_range(torch.from_numpy(image).to(device).permute(2, 0, 1)[None])
        source = torch.from_numpy(geometry.head_pose_to_camera(head[None], run.normalisation)).float().to(device)
        return torch.from_numpy(plan.gazes).float().to(device), torch.from_numpy(cameras).float().to(device), x, source

    @torch.inference_mode()
    def staged() -> None:  # SourceRenderer.render's model calls, without its labels and array conversion
        for k, image in enumerate(images):
            plan = plan_source(run.spec, f"s{k}", None)
            gazes, cameras, x, source = tensors(plan, image)
            features = model.encode(x, source)  # once per source
            for _ in staged_grid(model.redirect, model.render, features, gazes, cameras, *plan.pairs.T, batch):
                pass

    @torch.inference_mode()
    def full() -> None:  # one whole forward per output image, in the same batches
        for k, image in enumerate(images):
            plan = plan_source(run.spec, f"s{k}", None)
            gazes, cameras, x, source = tensors(plan, image)
            for start in range(0, len(plan.pairs), batch):
                g, v = (torch.from_numpy(c).to(device) for c in plan.pairs[start : start + batch].T)
                model(x.expand(len(g), -1, -1, -1), gazes[g], cameras[v], source.expand(len(g), -1))

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    staged(), full()  # warm-up
    runs = [(timed(staged), timed(full)) for _ in range(repeats)]
    staged_s, full_s = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    rows = sources * run.rows_per_source
    return {"sources": sources, "rows_per_source": run.rows_per_source, "staged_images_per_s": rows / staged_s,
            "full_forward_images_per_s": rows / full_s, "speedup": full_s / staged_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint directory (default: random weights of --preset)")
    parser.add_argument("--preset", default="configs/model/tiny.toml", help="ModelConfig preset for random weights")
    parser.add_argument("--inputs", type=Path, help="INPUTS (default: --sources noise crops)")
    parser.add_argument("--sources", type=int, default=200, help="generated sources")
    parser.add_argument("--pitch", default="-30:30:5")
    parser.add_argument("--yaw", default="-40:40:5")
    parser.add_argument("--view-yaw", default="-30:30:5")
    parser.add_argument("--view-pitch", default="0:0:1")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="the bare loop's device; Ray uses the GPUs it finds")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the bare loop and of the CPU actor (0: the pipeline's default, the cores less one)")
    parser.add_argument("--grid-sources", type=int, default=2, help="sources timed for the grid gain")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the grid gain (median)")
    parser.add_argument("--rounds", type=int, default=2, help="alternated bare and Ray runs (the median ratio is reported)")
    parser.add_argument("--grid-only", action="store_true", help="only the grid gain (e.g. for the base preset on CPU)")
    parser.add_argument("--work", type=Path, help="folder for inputs and outputs (default: a temporary one, removed at the end)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    threads = args.threads or default_cpu_threads(1)
    torch.set_num_threads(threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="gazegen-bench-"))
    try:
        figures = measure(args, work, threads)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=2))


def measure(args: argparse.Namespace, work: Path, threads: int) -> dict:
    load_before = os.getloadavg()
    checkpoint = args.checkpoint
    if checkpoint is None:
        torch.manual_seed(0)
        checkpoint = save_pretrained(work / "checkpoint", LiveGaze(load_config(ModelConfig, args.preset)),
                                     normalisation=PUBLISHED_NORMALISATIONS["livegaze512"])
    side = load_checkpoint(checkpoint).cfg.image_resolution
    inputs = args.inputs or make_inputs(work / "inputs", args.sources, side)
    options = {"grid": "pitch,yaw,view", "pitch": args.pitch, "yaw": args.yaw, "view_pitch": args.view_pitch,
               "view_yaw": args.view_yaw, "batch_size": args.batch_size,
               "crop": "auto" if args.inputs else "never"}  # fmt: skip
    overrides = [f"cpu_threads={threads}"]  # the CPU actor gets the bare loop's threads

    if args.grid_only:
        grid = grid_gain(checkpoint, inputs, options, args.device, args.grid_sources, args.repeats)
        return {"model": str(args.checkpoint or args.preset), "device": args.device, "threads": threads, "grid": grid,
                "loadavg": [load_before, os.getloadavg()]}  # fmt: skip
    import ray

    rounds = []
    for k in range(args.rounds):
        bare = bare_loop(checkpoint, inputs, work / f"bare{k}", options, args.device, threads)
        ray_figures = ray_run(checkpoint, inputs, work / f"ray{k}", load_synth_config(None, overrides, **options))
        rounds.append({"bare": bare, "ray": ray_figures, "ratio": ray_figures["images_per_s"] / bare["images_per_s"],
                       "ratio_after_init": ray_figures["images_per_s_after_init"] / bare["images_per_s"],
                       "model_s_ray_over_bare": ray_figures["model_s"] / bare["model_s"]})  # fmt: skip
    figures = {
        "model": str(args.checkpoint or args.preset), "device": args.device, "cpu_count": os.cpu_count(), "threads": threads,
        "torch": torch.__version__, "ray_version": ray.__version__, "sources": rounds[0]["ray"]["sources"],
        "batch_size": args.batch_size, "rounds": rounds, "ratio": statistics.median(r["ratio"] for r in rounds),
        "ratio_after_init": statistics.median(r["ratio_after_init"] for r in rounds),
        "model_s_ray_over_bare": statistics.median(r["model_s_ray_over_bare"] for r in rounds),
        "grid": grid_gain(checkpoint, inputs, options, args.device, args.grid_sources, args.repeats),
    }  # fmt: skip
    return figures | {"loadavg": [load_before, os.getloadavg()]}


def ray_run(checkpoint: Path, inputs: Path, out: Path, cfg) -> dict:
    """``run_synthesis`` in a fresh Ray session: images/s with and without ``ray.init``."""
    import ray

    log = out.with_name(out.name + "_model.jsonl")
    start = time.perf_counter()
    with quiet_auth_setup():  # as `gazegen synthesize` starts its own (pipelines/graph.py)
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - start
    pipeline_start = time.time()
    try:
        result = run_synthesis(checkpoint, inputs, str(out), cfg, overwrite=True, progress=False, actor=timed_actor(log))
    finally:
        ray.shutdown()
    return {"sources": result.sources, "rows": result.rows_written, "ray_init_s": init_s, "pipeline_s": result.seconds,
            "images_per_s": result.rows_written / (init_s + result.seconds),
            "images_per_s_after_init": result.rows_written / result.seconds} | model_figures(log, pipeline_start)  # fmt: skip


if __name__ == "__main__":
    main()
