"""`gazegen data ...`: make, convert and inspect training stores, and draw synthesis output."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gazegen.cli.common import SetOption, _reported, config_default
from gazegen.config.camera import SynthHeadsConfig

data_app = typer.Typer(help="Make, convert and inspect training stores.", no_args_is_help=True)


def _heads_default(key: str) -> str:
    return config_default(SynthHeadsConfig, key)


@data_app.command("synth-heads")
def synth_heads(
    out: Path = typer.Argument(..., help="Store folder to create, new or empty (train/, test/, train_test_split.json)."),
    subjects: Optional[int] = typer.Option(None, help="Number of identities (one h5 each).", show_default=_heads_default("subjects")),
    resolution: Optional[int] = typer.Option(None, help="Image side in pixels.", show_default=_heads_default("resolution")),
    views: Optional[int] = typer.Option(None, help="Cameras in the rig (ETH-XGaze: 18).", show_default=_heads_default("rig.views")),
    gazes: Optional[int] = typer.Option(None, help="Gaze targets (frames) per subject.", show_default=_heads_default("gazes")),
    seed: Optional[int] = typer.Option(None, help="Random seed.", show_default=_heads_default("seed")),
    config: Optional[Path] = typer.Option(None, help="TOML file of SynthHeadsConfig keys (gazegen/config/camera.py; none ship, "
                                                     "the defaults and --set cover them)."),
    overrides: Optional[list[str]] = SetOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="OUT holds a store: delete it first (its split file, prepare.json "
                                   "and train/ test/ *.h5); other files in OUT are kept."),
    workers: Optional[int] = typer.Option(None, min=1, help="Processes rendering subjects, one torch thread each (the files "
                                          "do not depend on it).", show_default="one per available core"),
) -> None:
    """Procedural multi-view gaze heads with exact labels, in the ETH-XGaze h5 layout."""
    from gazegen.config import load_config
    from gazegen.data.heads import held_out_subjects, synthesize_store

    flags = {"subjects": subjects, "resolution": resolution, "rig.views": views, "gazes": gazes, "seed": seed}
    typed = {k: v for k, v in flags.items() if v is not None}
    names = {k: f"--{k.rpartition('.')[2]}" for k in typed}  # a wrong value is named by its option: --views, not rig.views
    with _reported():
        cfg = load_config(SynthHeadsConfig, config, [*(overrides or []), *(f"{k}={v}" for k, v in typed.items())], names)
        try:
            synthesize_store(out, cfg, workers, overwrite=overwrite)
        except KeyboardInterrupt:
            _synth_heads_interrupted(out)
    typer.echo(f"wrote {out}")
    if held_out_subjects(cfg) == cfg.subjects:
        typer.secho(f"warning: all {cfg.subjects} subject(s) are in the test split and train/ is empty: a store for "
                    "`evaluate` or `finetune`, not for `train` or `estimator train` (--set test_subjects=0 keeps them in train)",
                    fg=typer.colors.YELLOW, err=True)


def _synth_heads_interrupted(out: Path) -> None:
    """Say what a Ctrl-C'd synth-heads left in ``out`` (no split file: not a store) and exit 130 (SIGINT's)."""
    from gazegen.data.store_folder import store_files

    left = store_files(out)
    kept = (f"{out} holds {len(left)} unfinished store file(s) and no split file; rerun with --overwrite to start again"
            if left else f"no subject file was kept; the same command starts again in {out}")
    typer.secho(f"interrupted: {kept}", err=True)
    raise typer.Exit(code=130)


@data_app.command("prepare")
def prepare(
    src: Path = typer.Argument(..., help="ETH-XGaze / GazeNeRF h5 file or folder of them, ETH-XGaze's raw release, or an MPIIFaceGaze / ColumbiaGaze release."),
    out: Path = typer.Argument(..., help="Training store to create, or to resume: a rerun of the same SRC and settings "
                                         "skips the subjects already converted (OUT/prepare.json records them)."),
    resolution: int = typer.Option(512, help="Output image side (the paper: 512)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="OUT holds another store (other source or settings): delete it "
                                   "first (its split file, prepare.json and train/ test/ *.h5); other files in OUT are kept."),
) -> None:
    """Convert published ETH-XGaze or GazeNeRF h5 files, ETH-XGaze's raw release, MPIIFaceGaze or ColumbiaGaze (the last three
    normalised the ETH-XGaze way) into a training store."""
    from gazegen.data.prepare import prepare_store

    try:
        with _reported():
            report = prepare_store(src, out, resolution=resolution, overwrite=overwrite)
    except KeyboardInterrupt:  # the subject in progress was a temporary file; finished ones are in place (data/prepare.py)
        typer.secho(f"interrupted: the finished subject files in {out} are kept; the same command converts the rest "
                    "(the split file is written once all are done)", err=True)
        raise typer.Exit(code=130)
    typer.echo(report.summary())


@data_app.command("inspect")
def inspect(
    path: Path = typer.Argument(..., help="A training store, or one h5 file."),
    sheet: Optional[Path] = typer.Option(None, help="Write a contact sheet PNG here."),
) -> None:
    """Print subjects, frames, label ranges and problems; optionally write a contact sheet."""
    from gazegen.data.inspect import inspect_store, write_contact_sheet
    from gazegen.paths import check_image_file

    with _reported():
        if sheet is not None:
            check_image_file(sheet)
        report = inspect_store(path)
    typer.echo(report.summary())
    if sheet is not None:
        write_contact_sheet(path, sheet)
        typer.echo(f"contact sheet: {sheet}")
    if report.problems:
        raise typer.Exit(code=1)


@data_app.command("sheet")
def sheet(
    shards: str = typer.Argument(..., help="Synthesis output folder, shard glob or URI."),
    out: Path = typer.Argument(..., help="PNG to write."),
    rows: int = typer.Option(27, min=1, help="Rows shown, spread evenly over the run (its first and last rows included)."),
    columns: int = typer.Option(9, min=1, help="Tiles per line."),
    histograms: Optional[Path] = typer.Option(None, help="Label histograms PNG (default: OUT's name + _labels.png)."),
) -> None:
    """Contact sheet of synthesised Parquet rows (gaze labels drawn as arrows) and the label histograms."""
    from gazegen.data.inspect import write_shard_sheet
    from gazegen.data.label_plots import write_label_histograms
    from gazegen.paths import check_image_file

    with _reported():
        check_image_file(out)  # before the shards are read: a folder or a name OpenCV cannot write is refused first
        histograms = check_image_file(histograms or out.with_name(f"{out.stem}_labels.png"), png_only=True)
        write_shard_sheet(shards, out, rows=rows, columns=columns)
        write_label_histograms(shards, histograms)
    typer.echo(f"contact sheet: {out}")
    typer.echo(f"label histograms (gaze, head pose, views): {histograms}")
