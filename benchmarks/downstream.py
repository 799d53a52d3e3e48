"""Downstream benchmark: does data gazegen synthesises improve a gaze estimator on people it never saw?

    python benchmarks/downstream.py --checkpoint RUN_OR_CHECKPOINT [--out demo_out/downstream]

On procedural heads (`gazegen data synth-heads`, exact labels, photographed by a rig within --max-yaw and
--max-pitch: by default the demo model's training stores' 30 and 20 degrees, since sources turned further
are outside what it learned: in session 23 the shipped reference estimator read the synthesised gaze of
sources within 30 degrees 11 degrees off its labels, and of sources beyond 30-33), the reference estimator
(evaluation/estimator.py, configs/estimator/demo.toml) is trained three times, for the same number of
steps, and each model is evaluated on held-out identities none of them (nor the LiveGaze model's
synthesis) saw:

    (a) few real     the first --few training identities only;
    (b) few + synth  the same, plus what the LiveGaze checkpoint synthesises from them: every image
                     of those identities re-rendered under --sample random (gaze, view) pairs (or
                     the preset's full grid with --sample 0), exported as ETH-XGaze h5 files with
                     `gazegen export` and read as such;
    (c) large real   --large training identities (the few among them): the upper bound.

Printed: gaze and head-pose error (mean, and per bin of the label's angle from the camera axis,
so gains at large angles show), (b) - (a), and the fraction of the gap from (a) to (c) that
synthesis closes, (a - b) / (a - c). Also the error of (c), the best judge here, on the
synthesised images against their own labels: if it is far above (c)'s error on real faces, the
synthesised images do not show the gaze they are labelled with, and (b) cannot gain. Writes
report.json and error_vs_angle.png to --out.

Everything is procedural: these are not ETH-XGaze figures. The store and the synthesis are made
once under --out and reused while the checkpoint and settings stay the same (another checkpoint
redoes the synthesis); the export (seconds) and the three estimators are redone every run.
Default sizes run in about 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: train/ and pipelines/ are top-level packages

from gazegen.checkpoint import CONFIG_FILE, load_pretrained, read_model_config  # noqa: E402
from gazegen.config import CONFIG_DIR, EstimatorConfig, ExportConfig, SynthHeadsConfig, load_config, load_synth_config  # noqa: E402
from gazegen.data.export import export_run  # noqa: E402
from gazegen.data.heads import synthesize_store  # noqa: E402
from gazegen.data.store import SPLIT_FILE  # noqa: E402
from gazegen.geometry import angular_error  # noqa: E402
from gazegen.metrics.estimator import GazeEstimator  # noqa: E402
from gazegen.pipelines.manifest import RunMismatchError  # noqa: E402
from gazegen.pipelines.synthesis import run_synthesis  # noqa: E402
from gazegen.evaluation.estimator import open_gaze_data, predict, store_files, train_estimator  # noqa: E402
from gazegen.train.trainer import latest_checkpoint  # noqa: E402

log = logging.getLogger("downstream")
BIN_EDGES = (0.0, 10.0, 20.0, 30.0, 45.0, 60.0, 180.0)  # degrees of the label from the camera axis
HEADS_SEED = 2_000_003  # identities of this benchmark: another draw than the demo's and the redirection benchmark's
CONDITIONS = ("a", "b", "c")
NAMES = {"a": "(a) few real", "b": "(b) few real + synthesised", "c": "(c) large real (upper bound)"}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="LiveGaze checkpoint, or a training run (its newest)")
    p.add_argument("--out", type=Path, default=ROOT / "demo_out" / "downstream")
    p.add_argument("--few", type=int, default=3, help="real identities of (a) and (b), synthesised from in (b)")
    p.add_argument("--large", type=int, default=12, help="real identities of (c), the few among them")
    p.add_argument("--held-out", type=int, default=4, help="identities evaluated, seen by no model")
    p.add_argument("--gazes", type=int, default=8, help="gaze targets per identity (x 18 cameras)")
    p.add_argument("--max-yaw", type=float, default=30.0, help="the rig's widest camera yaw, degrees: the demo model's "
                   "training stores' (heads turned further are outside what it learned)")
    p.add_argument("--max-pitch", type=float, default=20.0, help="the rig's widest camera pitch, degrees (likewise)")
    p.add_argument("--sample", type=int, default=2, help="(gaze, view) pairs synthesised per real image; 0: the full grid")
    p.add_argument("--synth-config", type=Path, default=CONFIG_DIR / "synth" / "default.toml",
                   help="synthesis ranges (gaze in the head frame, camera views)")
    p.add_argument("--estimator-config", type=Path, default=CONFIG_DIR / "estimator" / "demo.toml")
    p.add_argument("--steps", type=int, help="override the estimator config's steps (the same for a, b, c)")
    p.add_argument("--seed", type=int, help="override the estimator config's seed (initialisation and batch order)")
    p.add_argument("--device", default="cpu")
    return p.parse_args()


# --------------------------------------------------------------------------- data


def resolve_checkpoint(path: Path) -> Path:
    if (path / CONFIG_FILE).is_file():
        return path
    newest = latest_checkpoint(path)
    if newest is None:
        raise SystemExit(f"{path}: neither a checkpoint nor a training run with checkpoints")
    return newest


def make_heads(args: argparse.Namespace, resolution: int) -> Path:
    """The procedural store: --large training identities, then --held-out test identities."""
    store = args.out / "heads"
    rig = dataclasses.replace(SynthHeadsConfig().rig, max_yaw_deg=args.max_yaw, max_pitch_deg=args.max_pitch)
    cfg = SynthHeadsConfig(subjects=args.large + args.held_out, test_subjects=args.held_out, resolution=resolution,
                           gazes=args.gazes, seed=HEADS_SEED, rig=rig)
    recorded = store / "heads_config.json"
    if not (recorded.is_file() and json.loads(recorded.read_text()) == dataclasses.asdict(cfg)):
        log.info("making the procedural store %s (%d identities, %d held out)", store, cfg.subjects, cfg.test_subjects)
        synthesize_store(store, cfg, overwrite=True)  # another config's store, if any, is replaced
        recorded.write_text(json.dumps(dataclasses.asdict(cfg)))
    return store


def training_store(folder: Path, train: dict[str, Path], test: dict[str, Path]) -> Path:
    """A store of links: ``train/NAME`` and ``test/NAME`` pointing at h5 files, and its split file."""
    for split, files in (("train", train), ("test", test)):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for name, file in files.items():
            link = folder / split / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(file.resolve())
    (folder / SPLIT_FILE).write_text(json.dumps({"train": sorted(train), "test": sorted(test)}, indent=1))
    return folder


def named(files: list[Path], prefix: str = "") -> dict[str, Path]:
    return {f"{prefix}{f.name}": f for f in files}


def synthesise(args: argparse.Namespace, checkpoint: Path, few: list[Path]) -> tuple[Path, Path]:
    """LiveGaze re-renders every image of the few identities; the shards exported as ETH-XGaze h5 files."""
    inputs = args.out / "synth_inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for file in few:
        link = inputs / file.name
        if not link.is_symlink():
            link.symlink_to(file.resolve())
    shards, exported = args.out / "synth", args.out / "synth_xgaze"
    cfg = load_synth_config(args.synth_config, ["cpu_threads=1"], sample=args.sample or None)
    try:  # an earlier run of the same settings is reused (resumed if unfinished)
        result = run_synthesis(checkpoint, inputs, shards, cfg, command=sys.argv)
    except RunMismatchError as e:  # another checkpoint or settings: this benchmark's own folder is redone
        log.info("%s; synthesising afresh", str(e).splitlines()[0])
        result = run_synthesis(checkpoint, inputs, shards, cfg, overwrite=True, command=sys.argv)
    log.info("synthesis: %s", result.summary())
    log.info("export: %s", export_run(str(shards), exported, ExportConfig(format="xgaze"), overwrite=True).summary())
    return shards, exported


# --------------------------------------------------------------------------- evaluation


def _loader(dataset) -> DataLoader:
    keep = ("image", "gaze", "head_pose")
    return DataLoader(dataset, batch_size=64, collate_fn=lambda items: {k: torch.stack([it[k] for it in items]) for k in keep})


def errors(model: GazeEstimator, data: Path, split: str | None, device: str) -> dict[str, np.ndarray]:
    """Per image: gaze and head errors (deg) and the labels' angles from the camera axis (deg)."""
    pred = predict(model, _loader(open_gaze_data(data, split=split, net=model.cfg)), device)
    return {
        "gaze_error": angular_error(pred["gaze"], pred["gaze_label"]),
        "head_error": angular_error(pred["head_pose"], pred["head_pose_label"]),
        "gaze_angle": angular_error(pred["gaze_label"], np.zeros_like(pred["gaze_label"])),
        "head_angle": angular_error(pred["head_pose_label"], np.zeros_like(pred["head_pose_label"])),
        # what predicting the set's own mean label for every image scores: a model that learnt nothing
        "gaze_constant": angular_error(pred["gaze_label"].mean(0, keepdims=True), pred["gaze_label"]),
        "head_constant": angular_error(pred["head_pose_label"].mean(0, keepdims=True), pred["head_pose_label"]),
    }


def binned(error: np.ndarray, angle: np.ndarray) -> list[dict[str, float]]:
    out = []
    for lo, hi in zip(BIN_EDGES[:-1], BIN_EDGES[1:]):
        inside = (angle >= lo) & (angle < hi)
        out.append({"lo": lo, "hi": hi, "images": int(inside.sum()), "mean": float(error[inside].mean()) if inside.any() else float("nan")})
    return out


def summarise(e: dict[str, np.ndarray]) -> dict:
    return {"images": len(e["gaze_error"]), "gaze": float(e["gaze_error"].mean()), "head": float(e["head_error"].mean()),
            "gaze_constant": float(e["gaze_constant"].mean()), "head_constant": float(e["head_constant"].mean()),
            "gaze_bins": binned(e["gaze_error"], e["gaze_angle"]), "head_bins": binned(e["head_error"], e["head_angle"])}


# --------------------------------------------------------------------------- report


def gap_closed(a: float, b: float, c: float) -> float:
    """(a - b) / (a - c): 1 when synthesis matches the large real set, 0 when it adds nothing, < 0 when it hurts."""
    return (a - b) / (a - c) if a - c > 1e-9 else float("nan")


def table(results: dict[str, dict]) -> list[str]:
    bins = [f"{b['lo']:.0f}-{b['hi']:.0f}" if b["hi"] < 180 else f">{b['lo']:.0f}" for b in results["a"]["gaze_bins"]]
    lines = [f"{'model':30s} {'train imgs':>10s} {'gaze':>6s} {'head':>6s} | {'by label angle (deg):':22s}" + " ".join(f"{b:>6s}" for b in bins)]
    for kind in ("gaze", "head"):
        for key in CONDITIONS:
            r = results[key]
            lines.append(f"{NAMES[key]:30s} {r['train_images']:10d} {r['gaze']:6.2f} {r['head']:6.2f} | {kind + ' error':22s}"
                         + " ".join(f"{b['mean']:6.2f}" for b in r[f"{kind}_bins"]))
        lines.append(f"{'':30s} {'':10s} {'':6s} {'':6s} | {'held-out images':22s}"
                     + " ".join(f"{b['images']:6d}" for b in results["a"][f"{kind}_bins"]))
    return lines


def plot(results: dict[str, dict], png: Path) -> None:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    for ax, kind in zip(fig.subplots(1, 2), ("gaze", "head")):
        for key, colour in zip(CONDITIONS, ("tab:red", "tab:green", "tab:blue")):
            bins = results[key][f"{kind}_bins"]
            centres = [(b["lo"] + min(b["hi"], BIN_EDGES[-2] + 15.0)) / 2 for b in bins]
            ax.plot(centres, [b["mean"] for b in bins], "o-", color=colour, label=f"{NAMES[key]}: {results[key][kind]:.2f} deg")
        ax.set_xlabel(f"{kind} label: angle from the camera axis (deg; last point: > {BIN_EDGES[-2]:.0f})")
        ax.set_ylabel(f"mean {kind} error on held-out identities (deg)")
        ax.set_title(f"{kind} error vs angle", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Downstream benchmark on procedural heads: estimator error on identities no model saw", fontsize=11)
    fig.savefig(png, dpi=90)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    checkpoint = resolve_checkpoint(args.checkpoint)
    store = make_heads(args, read_model_config(checkpoint).image_resolution)
    train_files, held_out = store_files(store, "train"), store_files(store, "test")
    few, large = train_files[:args.few], train_files[:args.large]
    shards, exported = synthesise(args, checkpoint, few)
    synthetic = named(store_files(exported, "train"), "synth_")  # named apart from the real files they come from
    stores = {"a": training_store(args.out / "store_a", named(few), named(held_out)),
              "b": training_store(args.out / "store_b", named(few) | synthetic, named(held_out)),
              "c": training_store(args.out / "store_c", named(large), named(held_out))}
    cfg = load_config(EstimatorConfig, args.estimator_config)
    overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
    cfg = dataclasses.replace(cfg, eval_images=64, **overrides)
    results: dict[str, dict] = {}
    for key in CONDITIONS:
        log.info("training %s on %s (%d steps)", NAMES[key], stores[key], cfg.steps)
        trained = train_estimator(stores[key], args.out / f"estimator_{key}", cfg, device=args.device, overwrite=True)  # its own, of a rerun
        model = load_pretrained(trained.checkpoint, GazeEstimator, device=args.device)
        results[key] = summarise(errors(model, stores[key], "test", args.device))
        results[key]["train_images"] = len(open_gaze_data(stores[key], split="train"))
        results[key]["train_seconds"] = trained.seconds
    judge = summarise(errors(model, shards, None, args.device))  # model: (c)
    a, b, c = (results[k]["gaze"] for k in CONDITIONS)
    ha, hb, hc = (results[k]["head"] for k in CONDITIONS)
    print("\n".join(["", *table(results), ""]))
    print(f"(b) - (a): gaze {b - a:+.2f} deg, head {hb - ha:+.2f} deg (negative: synthesis helps)")
    print(f"fraction of the (a) -> (c) gap closed by synthesis: gaze {gap_closed(a, b, c):+.2f}, head {gap_closed(ha, hb, hc):+.2f}")
    print(f"constant prediction of the held-out mean label (a model that learnt nothing): gaze "
          f"{results['a']['gaze_constant']:.2f} deg, head {results['a']['head_constant']:.2f} deg")
    print(f"label fidelity: estimator (c) on the {judge['images']} synthesised images, against their own labels: gaze "
          f"{judge['gaze']:.2f} deg, head {judge['head']:.2f} deg (on real held-out faces: {c:.2f} / {hc:.2f}; the "
          f"synthesised set's constant baseline: {judge['gaze_constant']:.2f} / {judge['head_constant']:.2f})")
    report = {"checkpoint": str(checkpoint), "results": results, "synthesised_judged_by_c": judge, "args": {
        k: str(v) for k, v in vars(args).items()}, "estimator_steps": cfg.steps, "estimator_seed": cfg.seed, "seconds": time.perf_counter() - clock}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    plot(results, args.out / "error_vs_angle.png")
    print(f"{time.perf_counter() - clock:.0f} s; report {args.out / 'report.json'}, plot {args.out / 'error_vs_angle.png'}")


if __name__ == "__main__":
    main()
