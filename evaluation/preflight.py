"""What `gazegen evaluate` checks of its checkpoint and --out before any work (`finetune` shares the first).

* A training run folder given where a checkpoint is expected (``gazegen evaluate RUN ...``): the checkpoint
  reader would only say that RUN/config.json is missing; ``check_checkpoint_folder`` says that RUN is a run and
  names its newest checkpoint, RUN/checkpoints/step_NNNNNNN.
* A store seen through another camera than the checkpoint's (evaluation/evaluate.py ``check_model_camera``):
  ``same_camera_hint`` says how to get one of the checkpoint's camera, which depends on who made the store.
* evaluate's --out (``check_report_folder``, and after Ctrl-C ``interrupted_note``): a folder, new or not, holding none of the files evaluate writes
  (evaluation/report.py ``REPORT_FILES`` and their staged names). One that holds an earlier evaluation's is refused,
  unless ``overwrite``: then ``clear_report_folder`` deletes exactly those files, and nothing else, before the run,
  so that no stale file (another checkpoint's sweep.png) stays beside the new report.
"""

from __future__ import annotations

from pathlib import Path

from gazegen.checkpoint import CONFIG_FILE, CheckpointError
from gazegen.config import NormalisationConfig
from gazegen.data.store import PREPARE_FILE, STORE_FORMAT
from gazegen.data.xgaze import detect_format
from gazegen.evaluation.report import REPORT_FILES, staged_name
from gazegen.paths import OutputPathError, check_out_folder
from gazegen.train.trainer import CHECKPOINTS, checkpoint_dirs

def check_checkpoint_folder(checkpoint: str | Path) -> None:
    """CheckpointError when ``checkpoint`` is a training run folder (no config.json, a checkpoints/ folder), naming
    its newest checkpoint; anything else is left to the checkpoint reader."""
    path = Path(checkpoint)
    if (path / CONFIG_FILE).is_file() or not (path / CHECKPOINTS).is_dir():
        return
    models = checkpoint_dirs(path, holding=CONFIG_FILE)  # the newest that holds a model, resumable or not
    newest = models[-1] if models else None
    give = f"give one of its checkpoints, e.g. the newest, {newest}" if newest else f"{path / CHECKPOINTS} holds no checkpoint yet"
    raise CheckpointError(f"{path / CONFIG_FILE}: missing: {path} is a training run folder, not a checkpoint; {give}")


def same_camera_hint(path: Path, norm: NormalisationConfig) -> str:
    """How to get images of subject file ``path``'s kind through the camera ``norm``: a synth-heads store (a gazegen store
    with no prepare.json in its folder) is made again with that camera's settings; `gazegen data prepare` keeps its
    source's field of view and distance (--resolution resizes), so no store it makes changes camera."""
    prepared = any((folder / PREPARE_FILE).is_file() for folder in path.parents[:2])
    if detect_format(path) == STORE_FORMAT and not prepared:
        return ("make the store again at that camera: `gazegen data synth-heads OUT --set normalisation.focal="
                f"{norm.focal:g} --set normalisation.resolution={norm.resolution} --set normalisation.distance_mm="
                f"{norm.distance_mm:g}` with its other options")
    return ("this store's camera is its source's (`gazegen data prepare` keeps a source's focal and distance; --resolution "
            "only resizes): evaluate a checkpoint trained on data of this camera")


def held_report_files(out: str | Path) -> list[str]:
    """The names of the files evaluate writes (final or staged) that the folder ``out`` holds, in REPORT_FILES' order."""
    names = [*REPORT_FILES, *(staged_name(name) for name in REPORT_FILES)]
    return [name for name in names if (Path(out) / name).is_file()]


def check_report_folder(out: str | Path, *, overwrite: bool = False) -> Path:
    """``out`` as a Path when evaluate may write its report there: a folder that is or can be made (OutputPathError
    otherwise) holding no earlier evaluation's files, or any with ``overwrite``; OutputPathError naming them if not."""
    path = check_out_folder(out)
    held = held_report_files(path) if path.is_dir() else []
    if held and not overwrite:
        raise OutputPathError(f"{out}: holds an earlier evaluation ({', '.join(held)}); give another --out, or pass "
                              "--overwrite to replace it (only these files are deleted)")
    return path


def clear_report_folder(out: str | Path) -> list[Path]:
    """Delete the files evaluate writes (``held_report_files``) from ``out``; returns them. Every other file stays."""
    removed = [Path(out) / name for name in held_report_files(out)]
    for path in removed:
        path.unlink()
    return removed


def interrupted_note(out: str | Path) -> str:
    """What an evaluation interrupted before its end left in ``out``, and how to redo it: its scores were only in memory."""
    held = held_report_files(out) if Path(out).is_dir() else []
    if not held:
        return f"no report written to {out}; rerun the command to evaluate again"
    kept = "an earlier report" if "report.md" in held else f"{', '.join(held)} but no report.md"
    return f"{out} holds {kept}; rerun the command with --overwrite to evaluate again"
