"""Redirection benchmark on held-out procedural subjects: the model's Table-1 row beside two baselines.

    python benchmarks/redirection.py --store demo_out/heads --checkpoint CKPT --out demo_out/redirection

Evaluates with `gazegen evaluate`'s protocol (evaluation/evaluate.py) on the test split of a procedural
store (the subjects the model was not trained on), these rows on the same pairs:

* the LiveGaze checkpoint (without --checkpoint: a randomly initialised tiny model, labelled so);
* copy-the-source: the input image as the output (what no redirection at all scores);
* a perfect render at the model's neural resolution: the target shrunk to it and scaled back, the
  ceiling that resolution allows;
* the ground-truth target: its gaze error is the reference estimator's own error, the floor;
* the constant prediction: each pair read as the mean label of the others, what a model carrying no gaze scores.

Each row has the estimator-read gaze and head errors and the correlation of read vs requested
pitch and yaw; then the gaze sweep and the swap test (evaluation/probes.py; sweep.png), and a last line
that says in words whether the model's outputs carry gaze.

The judge is the reference estimator (evaluation/estimator.py) at --estimator. When that folder holds
no finished estimator, one is trained into it (configs/estimator/demo.toml: about 4 minutes on a
CPU core) on a separate procedural store of --estimator-subjects identities drawn from another seed
(so none of them is an evaluated subject), made beside it (ESTIMATOR_heads) at the evaluation
store's resolution; a later run reuses both. Why not the demo store's own five training subjects:
an estimator trained on so few faces fits them and judges a new one badly.

Everything is procedural: the numbers say how well redirection agrees with an estimator trained on
procedural heads, on procedural heads; they are not ETH-XGaze numbers, and the paper's rows printed
beside them (quoted, ETH-XGaze) are context, not a like-for-like comparison. Prints the table;
writes report.json, report.md and sheet.png to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import torch

from gazegen.checkpoint import CONFIG_FILE, load_checkpoint, load_pretrained, read_header
from gazegen.config import EstimatorConfig, EvaluateConfig, ModelConfig, SynthHeadsConfig, load_config
from gazegen.data.heads import synthesize_store
from gazegen.data.xgaze import open_subject
from gazegen.metrics.estimator import GazeEstimator
from gazegen.models.livegaze import LiveGaze
from gazegen.evaluation.estimator import check_store_camera, store_files, train_estimator
from gazegen.evaluation.evaluate import CopySource, GroundTruthTarget, LiveGazeMethod, PerfectRender, run_evaluation
from gazegen.evaluation.probes import run_probes
from gazegen.evaluation.report import probes_markdown, table1, verdict, write_report
from gazegen.train.trainer import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("redirection")
ESTIMATOR_SEED = 1_000_003  # identities of the estimator's store: another draw than any demo store's


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=ROOT / "demo_out" / "heads", help="procedural store; made if absent")
    p.add_argument("--checkpoint", type=Path, help="LiveGaze checkpoint or training run (its newest checkpoint); "
                   "default: an untrained tiny model")
    p.add_argument("--preset", type=Path, default=ROOT / "configs" / "model" / "tiny.toml", help="model without --checkpoint")
    p.add_argument("--estimator", type=Path, help="reference estimator checkpoint; trained there when it holds none "
                   "(default: OUT/estimator)")
    p.add_argument("--estimator-config", type=Path, default=ROOT / "configs" / "estimator" / "demo.toml")
    p.add_argument("--estimator-subjects", type=int, default=24, help="identities of the estimator's own store")
    p.add_argument("--estimator-steps", type=int, help="override the estimator config's steps")
    p.add_argument("--out", type=Path, default=ROOT / "demo_out" / "redirection")
    p.add_argument("--group-size", type=int, default=100, help="input / target group size per subject")
    p.add_argument("--max-pairs", type=int, default=0, help="pairs per subject (0: all)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def ensure_store(path: Path) -> Path:
    if not (path / "train_test_split.json").is_file():
        log.info("no store at %s: making the demo's (4 subjects, 128 px, 8 gazes)", path)
        synthesize_store(path, SynthHeadsConfig(subjects=4, resolution=128, gazes=8))
    return path


def ensure_estimator(args: argparse.Namespace, resolution: int) -> Path:
    path = args.estimator or args.out / "estimator"
    if (path / CONFIG_FILE).is_file():  # the folder appears by a rename once complete: a finished estimator
        log.info("using the estimator already trained at %s", path)
        return path
    heads = SynthHeadsConfig(subjects=args.estimator_subjects, test_subjects=0, resolution=resolution, gazes=8,
                             seed=ESTIMATOR_SEED)
    store = path.with_name(f"{path.name}_heads")
    if not (store / "train_test_split.json").is_file():
        log.info("no estimator at %s: making its training store %s (%d identities)", path, store, heads.subjects)
        synthesize_store(store, heads)
    cfg = load_config(EstimatorConfig, args.estimator_config)
    if args.estimator_steps:
        cfg = dataclasses.replace(cfg, steps=args.estimator_steps)
    log.info("training the reference estimator on %s (%d steps)", store, cfg.steps)
    result = train_estimator(store, path, cfg, eval_data=args.store, device=args.device)
    log.info("estimator: train %s", result.train_eval.summary())
    return path


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(0)
    args = parse()
    store = ensure_store(args.store)
    with open_subject(store_files(store, "test")[0]) as reader:
        resolution = reader.resolution
    estimator_path = ensure_estimator(args, resolution)
    estimator = load_pretrained(estimator_path, GazeEstimator, device=args.device)
    check_store_camera(store, "test", estimator.cfg)
    meta = read_header(estimator_path, GazeEstimator).metadata
    if args.checkpoint is not None:
        if not (args.checkpoint / CONFIG_FILE).is_file():  # a training run: its newest checkpoint
            newest = latest_checkpoint(args.checkpoint)
            if newest is None:
                raise SystemExit(f"{args.checkpoint}: neither a checkpoint nor a training run with checkpoints")
            args.checkpoint = newest
        model, name = load_checkpoint(args.checkpoint, device=args.device), f"LiveGaze ({args.checkpoint.name})"
    else:
        model = LiveGaze(load_config(ModelConfig, args.preset)).to(args.device).eval()
        name = f"LiveGaze (UNTRAINED, random init, {args.preset.stem})"
    cfg = EvaluateConfig(group_size=args.group_size, max_pairs=args.max_pairs, batch_size=args.batch_size)
    held_out = [p.stem for p in store_files(store, "test")]
    test_eval = meta.get("test_eval") or {}
    notes = [
        f"checkpoint: {args.checkpoint or 'none: an untrained model with random weights (no trained checkpoint given)'}",
        f"evaluated subjects (the store's test split, held out from training): {', '.join(held_out)}",
        f"estimator: {estimator_path}, trained on {meta.get('data', '?')} (procedural heads, other identities); "
        f"its error when trained, on {test_eval.get('data') or '?'}: gaze {test_eval.get('gaze_error', float('nan')):.2f} deg, "
        f"head {test_eval.get('head_error', float('nan')):.2f} deg "
        f"(constant-prediction baseline: {test_eval.get('constant_gaze_error', float('nan')):.2f} / "
        f"{test_eval.get('constant_head_error', float('nan')):.2f} deg); on the evaluated subjects: the floor row",
        "PROCEDURAL DATA: the estimator is trained on procedural heads and judges procedural heads; these numbers "
        "are not ETH-XGaze results and do not compare like for like with the paper's quoted rows.",
    ]
    methods = [LiveGazeMethod(model, name=name, warmup=cfg.warmup), CopySource(),
               PerfectRender(model.cfg.render.neural_resolution), GroundTruthTarget()]
    start = time.perf_counter()
    report = run_evaluation(store, methods, cfg, estimator=estimator, device=args.device, notes=notes)
    report.probes = run_probes(model, store_files(store, "test"), estimator, args.device)
    write_report(report, args.out)
    for line in notes:  # what to read the table with, then the table (the last thing `make demo` prints)
        print(f"- {line}")
    print("\n" + "\n".join(table1(report)))
    print("\n" + "\n".join(probes_markdown(report.probes)[2:]))
    print(f"\n{report.methods[0].mean['pairs']} pairs of {len(held_out)} held-out subject(s) in "
          f"{time.perf_counter() - start:.1f} s; report: {args.out / 'report.md'}; sheets: {args.out / 'sheet.png'}, "
          f"{args.out / 'sweep.png'}")
    print(verdict(report))


if __name__ == "__main__":
    main()
