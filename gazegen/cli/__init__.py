"""The `gazegen` command line. Thin: parse, build a config, call one function.

This package is the composition root: the only part of gazegen/ that reaches train/ and pipelines/,
and it imports them (and torch-heavy modules) inside each command so `--help` stays fast. Here: the
app and its top-level commands; `gazegen data ...` in data.py; what every command shares in common.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from gazegen.cli.common import FROM_CONFIGS, USER_ERRORS, SetOption, _fail, _reported, config_default
from gazegen.cli.data import data_app
from gazegen.config.synth import SynthConfig
from gazegen.errors import first_line

app = typer.Typer(help="gazegen: LiveGaze gaze redirection and labelled gaze data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s")


@app.command("export")
def export(
    out: str = typer.Argument(..., help="A finished synthesis output folder (or pyarrow URI)."),
    dest: Path = typer.Argument(..., help="Local folder to write (new, empty, or an earlier export of the same run to resume)."),
    format: str = typer.Option("xgaze", "--format", help="xgaze: ETH-XGaze h5 per identity; gazehub: image folders + .label."),
    resolution: Optional[int] = typer.Option(None, help="Resize the images to this side (labels are unchanged)."),
    image_format: Optional[str] = typer.Option(None, "--image-format", help="--format gazehub's images: jpg (default) or png."),
    test: Optional[list[str]] = typer.Option(None, "--test", help="Identity put in the test split (repeatable)."),
    identity: Optional[str] = typer.Option(None, help="One identity per source 'file' (default) or per 'folder'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an export of other shards or settings in DEST."),
) -> None:
    """Write synthesised shards where gaze trainers read them: ETH-XGaze h5 files or a GazeHub folder."""
    from gazegen.config.export import load_export_config
    from gazegen.data.export import export_run

    try:
        with _reported():
            cfg = load_export_config(format=format, resolution=resolution, image_format=image_format, identity=identity,
                                     test=test or None)
            result = export_run(out, dest, cfg, overwrite=overwrite)
    except KeyboardInterrupt:  # Ctrl-C: finished identities are in place, the open ones' temporary files went (data/export.py)
        typer.secho(f"interrupted: the finished identities in {dest} are kept; the same command exports the rest", err=True)
        raise typer.Exit(code=130)
    typer.echo(result.summary())


@app.command("weights")
def weights() -> None:
    """List every pretrained weight file gazegen can use, where it looks, and what is present."""
    from gazegen.weights import format_weights_report

    for line in format_weights_report():
        typer.echo(line)


@app.command("bench")
def bench(
    preset: Path = typer.Option(Path("configs/model/tiny.toml"), help=f"Model preset (configs/model/*.toml; {FROM_CONFIGS})."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    batch: int = typer.Option(1, min=1, help="Images per call of every figure (ms per image, memory, throughput, grid); "
                              "the latency is at batch 1."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile each stage (warm-up grows to 3 runs)."),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16 (autocast)."),
    repeats: int = typer.Option(5, min=1, help="Timed runs per stage figure (the median is reported; the grid ratio "
                                "takes 3)."),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here."),
    overrides: Optional[list[str]] = SetOption,
) -> None:
    """Speed of the model: ms per image per stage, latency, throughput, memory, MACs, grid ratio (JSON)."""
    import json

    from gazegen.benchmark import bench_model
    from gazegen.paths import check_out_file

    with _reported():
        if out is not None:  # before the measurement, which takes minutes
            if out.is_dir():
                raise FileNotFoundError(f"{out}: is a folder; --out names the JSON file to write")
            check_out_file(out)  # a file on the way, no permission: refused here, not after the figures
            out.parent.mkdir(parents=True, exist_ok=True)
        result = bench_model(preset, device, batch, compile=compile, dtype=dtype, repeats=repeats, warmup=3 if compile else 1,
                             overrides=overrides or ())
    text = json.dumps(result, indent=2)
    typer.echo(text)
    if out is not None:
        out.write_text(text + "\n")


def _synth_default(key: str) -> str:
    return config_default(SynthConfig, key)


@app.command("synthesize")
def synthesize(
    checkpoint: Path = typer.Argument(..., help="A gazegen checkpoint folder (config.json + model.safetensors)."),
    inputs: str = typer.Argument(..., help="An image file, folder or glob, a training-store h5 (or store), or Parquet with an "
                                 "image column."),
    out: str = typer.Argument(..., help="Output folder or pyarrow filesystem URI (s3://, gs://, file://)."),
    grid: Optional[str] = typer.Option(None, help="Swept axes: a comma list of pitch, yaw, view.", show_default=_synth_default("grid")),
    pitch: Optional[str] = typer.Option(None, help="Gaze pitch in the head frame, start:stop:count degrees.",
                                        show_default=_synth_default("pitch")),
    yaw: Optional[str] = typer.Option(None, help="Gaze yaw in the head frame, start:stop:count degrees.", show_default=_synth_default("yaw")),
    view_pitch: Optional[str] = typer.Option(None, "--view-pitch", help="Camera pitch offset, start:stop:count degrees.",
                                             show_default=_synth_default("view_pitch")),
    view_yaw: Optional[str] = typer.Option(None, "--view-yaw", help="Camera yaw offset, start:stop:count degrees.",
                                           show_default=_synth_default("view_yaw")),
    sample: Optional[int] = typer.Option(None, help="N random (gaze, view) pairs per source instead of the full grid (0: the "
                                         "full grid): each value drawn uniformly within its swept axis's start:stop range "
                                         "(the count is ignored).", show_default=_synth_default("sample")),
    seed: Optional[int] = typer.Option(None, help="Seed of --sample (written in every row).", show_default=_synth_default("seed")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Gazes per redirect and views per render call.",
                                             show_default=_synth_default("batch_size")),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", help="GPU actors (-1: all GPUs; 0: CPU actors).",
                                           show_default=_synth_default("num_gpus")),
    address: Optional[str] = typer.Option(None, help="Join this Ray cluster (default: a private local Ray)."),
    rows_per_shard: Optional[int] = typer.Option(None, "--rows-per-shard", help="Rows per Parquet shard (whole sources).",
                                                 show_default=_synth_default("rows_per_shard")),
    crop: Optional[str] = typer.Option(None, help="Face detection and alignment of photos: auto (a square image whose face "
                                       "already sits where the model's camera puts one passes through; others are cropped), "
                                       "always, or never (every input is taken as a normalised crop of a frontal head).",
                                       show_default=_synth_default("crop")),
    faces: Optional[str] = typer.Option(None, help="Photos with several faces: largest | all (each its own source, photo.jpg#face00 ...).",
                                        show_default=_synth_default("faces")),
    config: Optional[Path] = typer.Option(None, help="TOML preset (configs/synth/*.toml)."),
    overrides: Optional[list[str]] = SetOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh: delete an earlier run of other inputs or settings "
                                   "in OUT, or write into an OUT that holds other files (they are kept)."),
) -> None:
    """Render every input face under a grid of gazes and views into Parquet shards (Ray)."""
    import sys

    from gazegen.config import load_synth_config
    from gazegen.pipelines.synthesis import run_synthesis

    flags = {"grid": grid, "pitch": pitch, "yaw": yaw, "view_pitch": view_pitch, "view_yaw": view_yaw, "sample": sample,
             "seed": seed, "batch_size": batch_size, "num_gpus": num_gpus, "rows_per_shard": rows_per_shard, "crop": crop,
             "faces": faces}  # fmt: skip
    try:
        cfg = load_synth_config(config, overrides or (), **flags)
        result = run_synthesis(checkpoint, inputs, out, cfg, address=address, overwrite=overwrite, command=sys.argv)
    except KeyboardInterrupt:  # Ctrl-C: complete shards are in place, open ones were dropped (pipelines/synthesis.py)
        typer.secho(f"interrupted: the complete shards in {out} are kept; the same command renders the rest", err=True)
        raise typer.Exit(code=130)
    except USER_ERRORS as e:
        _fail(str(e))
    except Exception as e:  # anything else (a Ray failure): its type and first line; the traceback with -v
        logging.getLogger("gazegen.synthesize").debug("synthesis failed", exc_info=True)
        _fail(f"synthesis failed: {type(e).__name__}: {first_line(e)}")
    typer.echo(result.summary())
    for line in result.failure_report():  # which inputs failed and why, not only how many
        typer.echo(line, err=True)
    if result.rows == 0:  # sources were given (an empty INPUTS is refused earlier), and not one made a row
        failed = "its one source" if result.sources == 1 else f"all {result.sources} sources"
        typer.secho(f"error: {out}: no rows: {failed} failed (reasons above)", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)


estimator_app = typer.Typer(help="The reference gaze estimator: the judge of redirection and a consumer of the shards.", no_args_is_help=True)
app.add_typer(estimator_app, name="estimator")


@estimator_app.command("train")
def estimator_train(
    data: str = typer.Argument(..., help="A training store, h5 file(s) (a file, folder or glob such as 'store/train/*.h5'), "
                                         "or Parquet shards (folder, glob or URI)."),
    out: Path = typer.Option(..., help="Checkpoint folder to write: new, empty, or an earlier estimator checkpoint (with --overwrite)."),
    eval_data: Optional[str] = typer.Option(None, "--eval", help="Evaluate on this data after training (default: the store's "
                                            "eval_split, 'test', when its split file lists subjects)."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    config: Optional[Path] = typer.Option(None, help=f"TOML preset (configs/estimator/*.toml; {FROM_CONFIGS}); default: "
                                                     "EstimatorConfig's defaults, written out in configs/estimator/default.toml "
                                                     "(3000 steps of 32 at 96 px, for a GPU); configs/estimator/demo.toml is the "
                                                     "CPU-minutes preset; --set steps=N caps the steps."),
    overrides: Optional[list[str]] = SetOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="OUT holds an earlier estimator checkpoint: replace it (a folder "
                                   "holding anything else is refused)."),
) -> None:
    """Train the compact gaze + head-pose CNN; writes OUT/config.json, model.safetensors and estimator_report.json."""
    from gazegen.config import EstimatorConfig, load_config
    from gazegen.evaluation.estimator import TrainingInterrupted, train_estimator

    try:
        with _reported():
            cfg = load_config(EstimatorConfig, config, overrides or [])
            result = train_estimator(data, out, cfg, eval_data=eval_data, device=device, overwrite=overwrite)
    except KeyboardInterrupt as e:  # Ctrl-C: training runs in this process, its weights only in memory
        typer.secho(str(e) if isinstance(e, TrainingInterrupted) else "interrupted: nothing saved", err=True)
        raise typer.Exit(code=130)
    typer.echo(f"estimator: {result.checkpoint} ({result.steps} steps, {result.seconds:.0f} s)")
    typer.echo("train: " + result.train_eval.summary())
    if result.test_eval is not None:
        typer.echo("test: " + result.test_eval.summary())


@estimator_app.command("eval")
def estimator_eval(
    checkpoint: Path = typer.Argument(..., help="An estimator checkpoint folder."),
    data: str = typer.Argument(..., help="A training store, h5 file(s), or Parquet shards."),
    split: str = typer.Option("test", help="Store split (ignored for other sources)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per forward."),
    max_images: int = typer.Option(0, "--max-images", min=0, help="0: all."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    out: Optional[Path] = typer.Option(None, help="Also write the figures as JSON here."),
) -> None:
    """Angular errors of a trained estimator, next to the constant-prediction baseline."""
    import dataclasses
    import json

    from gazegen.evaluation.estimator import evaluate_estimator

    with _reported():
        result = evaluate_estimator(checkpoint, data, split=split, batch_size=batch_size, max_images=max_images, device=device)
    typer.echo(result.summary())
    if out is not None:
        out.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")


@app.command("evaluate")
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A LiveGaze checkpoint folder."),
    data: str = typer.Argument(..., help="A training store (its test split is evaluated)."),
    out: Path = typer.Option(..., help="Folder for report.json, report.md, sheet.png and (with --estimator, the gaze sweep) "
                             "sweep.png; one holding an earlier evaluation is refused (see --overwrite)."),
    estimator: Optional[Path] = typer.Option(None, help="Reference estimator checkpoint (gaze and head errors)."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    config: Optional[Path] = typer.Option(None, help="TOML with EvaluateConfig keys."),
    overrides: Optional[list[str]] = SetOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="OUT holds an earlier evaluation: delete its files (report.json, "
                                   "report.md, sheet.png, sweep.png; nothing else) before starting."),
) -> None:
    """The paper's Table 1 protocol: per test subject, redirect the input group to the target group."""
    from gazegen.config import EvaluateConfig, load_config
    from gazegen.evaluation.evaluate import evaluate as run_evaluation
    from gazegen.evaluation.preflight import interrupted_note
    from gazegen.evaluation.report import report_files, table1

    try:
        with _reported():
            cfg = load_config(EvaluateConfig, config, overrides or [])
            report = run_evaluation(checkpoint, data, out, cfg, estimator=estimator, device=device, overwrite=overwrite)
    except KeyboardInterrupt:  # the scores are only in memory: nothing to resume, a rerun starts afresh
        typer.secho(f"interrupted: {interrupted_note(out)}", err=True)
        raise typer.Exit(code=130)
    typer.echo("\n".join(table1(report)))
    typer.echo("wrote " + ", ".join(str(out / name) for name in reversed(report_files(report))))


TRAIN_CONFIG = Path("configs/train/demo.toml")  # `gazegen train`'s config when none is given and the run is new


@app.command("train")
def train(
    config: Optional[Path] = typer.Option(None, help=f"Training preset (configs/train/*.toml; {FROM_CONFIGS}); default "
                                                     f"{TRAIN_CONFIG}, or with --resume the run's own (OUT/train_config.json)."),
    data: Optional[Path] = typer.Option(None, help="Training store folder (train_test_split.json + train/*.h5); with --resume "
                                                   "the run's own by default."),
    out: Path = typer.Option(..., help="Run folder: checkpoints, logs, loss curve, validation grids."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop after this many steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT exactly where it stopped, with its own settings "
                                "(a config, --set or --data given must agree, run-time keys aside)."),
    workers: int = typer.Option(1, min=1, help="Ray Train workers (DDP); 1: this process."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="GPUs per Ray Train worker."),
    address: Optional[str] = typer.Option(None, help="Ray cluster for --workers > 1 (default: local)."),
    overrides: Optional[list[str]] = SetOption,
) -> None:
    """Train LiveGaze (paper section 3.4) on a training store."""
    from gazegen.config import TrainConfig, load_config
    from gazegen.paths import check_out_folder
    from gazegen.train.resume import resume_settings
    from gazegen.train.trainer import run_training

    if data is None and not resume:
        _fail("--data: the training store folder is required (with --resume the run's own store is used)")
    parallel = f" --workers {workers} --gpus-per-worker {gpus_per_worker:g}" if workers > 1 else ""
    try:
        with _reported():
            check_out_folder(out)  # a file, or a file on the way: one line before the config and the store are read
            if resume:
                cfg, data = resume_settings(out, config, overrides or [], data)
            else:
                cfg = load_config(TrainConfig, config or TRAIN_CONFIG, overrides or [])
            if workers > 1:
                from gazegen.train.distributed import run_distributed

                result = run_distributed(cfg, data, out, max_steps, resume, workers=workers, gpus_per_worker=gpus_per_worker, address=address)
            else:
                result = run_training(cfg, data, out, max_steps, resume)
    except KeyboardInterrupt:  # a second Ctrl-C (the step in progress is not saved), or one before the loop began
        _train_aborted(out, parallel)
    typer.echo(f"{result.status} at step {result.step}: {result.checkpoint}")
    if result.metrics:
        typer.echo("validation: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.metrics.items())))
    if result.status == "interrupted":  # Ctrl-C, checkpointed: exit 130 (SIGINT's), so `train && synthesize` stops here
        typer.secho(f"interrupted: the checkpoint keeps the run; continue it with `gazegen train --out {out} --resume{parallel}`",
                    err=True)
        raise typer.Exit(code=130)


def _train_aborted(out: Path, parallel: str) -> None:
    """Say what a `train` aborted without a checkpoint of its own kept (the run's newest checkpoint, if any) and how to
    go on (``parallel``: the data-parallel options to repeat), and exit 130 (SIGINT's)."""
    from gazegen.train.trainer import latest_checkpoint

    newest = latest_checkpoint(out)
    if newest is None:
        typer.secho(f"aborted: no checkpoint was kept ({out} has none); the same command starts the run again", err=True)
    else:
        typer.secho(f"aborted: the newest checkpoint kept is {newest}; continue from it with `gazegen train --out {out} "
                    f"--resume{parallel}`", err=True)
    raise typer.Exit(code=130)


@app.command("finetune")
def finetune(
    checkpoint: Path = typer.Argument(..., help="A trained LiveGaze checkpoint folder."),
    data: Path = typer.Argument(..., help="Training store holding the subjects, or one subject's h5 file."),
    out: Path = typer.Option(Path("finetuned"), help="One checkpoint per subject under OUT/<subject>/; scores before and "
                             "after in OUT/finetune.json."),
    subject: Optional[list[str]] = typer.Option(None, help="Subject name(s); default: the store's test split."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Epochs on the input group (paper: 10)."),
    overrides: Optional[list[str]] = SetOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo a subject whose OUT/<subject>/ holds a fine-tuning "
                                   "(that folder is deleted first)."),
) -> None:
    """Personalised fine-tuning on each subject's input group (GazeNeRF protocol)."""
    from gazegen.config import FinetuneConfig, load_config
    from gazegen.evaluation.preflight import check_checkpoint_folder
    from gazegen.paths import check_out_folder
    from gazegen.train.finetune import REPORT, iter_finetune

    sets = [*(overrides or []), *([f"epochs={epochs}"] if epochs is not None else [])]
    done = []
    try:
        with _reported():
            check_out_folder(out)
            check_checkpoint_folder(checkpoint)  # a run folder given: name its newest checkpoint
            cfg = load_config(FinetuneConfig, None, sets, {"epochs": "--epochs"} if epochs is not None else {})
            for result in iter_finetune(checkpoint, data, out, subject or None, cfg, overwrite=overwrite):
                typer.echo(result.summary())
                done.append(result)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a subject's training loop
        _finetune_interrupted(out / REPORT, [r.subject for r in done], "")
    if done and done[-1].interrupted:  # Ctrl-C: the subject stopped with a checkpoint, no later subject started
        stopped = done.pop()
        _finetune_interrupted(out / REPORT, [r.subject for r in done],
                              f"{stopped.subject} stopped at step {stopped.train.step}: {stopped.checkpoint} is part-way")
    typer.echo(f"scores: {out / REPORT}")


def _finetune_interrupted(report: Path, finished: list[str], partial: str) -> None:
    """Say what an interrupted `finetune` kept (``partial``: the subject it stopped in, if checkpointed), and exit 130 (SIGINT's)."""
    kept = f"finished: {', '.join(finished)} (scores in {report})" if finished else "no subject finished"
    typer.secho(f"interrupted: {'; '.join(filter(None, [kept, partial]))}; redo a subject with --subject NAME --overwrite", err=True)
    raise typer.Exit(code=130)
