"""The folder a store command writes into (`gazegen data synth-heads OUT`, `gazegen data prepare SRC OUT`).

A store is whole files in one layout (gazegen/data/store.py), read through its split file. Two
datasets in one folder make a store that lies: the split file of one beside the subject files of
both, which `data inspect` reports and a trainer cannot use. So a command that creates a store
wants a folder, never a file, and one that holds no other store; ``--overwrite`` first clears the
store a folder holds: exactly the files gazegen writes there (``store_files``: the split file,
prepare's record, the subject files of ``train/`` and ``test/`` and their unfinished ``.tmp``
copies), then ``train/`` and ``test/`` when that leaves them empty. Anything else in the folder
is kept: a mistyped OUT costs at most a store, never a user's other files.
"""

from __future__ import annotations

from pathlib import Path

from gazegen.data.store import PREPARE_FILE, SPLIT_FILE
from gazegen.data.xgaze import DataError

SPLITS = ("train", "test")  # the folders gazegen writes subject files into


def check_folder(out: str | Path) -> Path:
    """``out`` as a Path; DataError when it, or the nearest existing folder above it, is a file."""
    out = Path(out)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == out else f"cannot be made: {existing} is a file"
        raise DataError(f"{out}: {where}, not a folder; give a store folder to create")
    return out


def store_files(out: str | Path) -> list[Path]:
    """The files of ``out`` that gazegen writes in a store, sorted: the ones ``clear_store`` deletes."""
    out = Path(out)
    tops = [out / name for name in (SPLIT_FILE, PREPARE_FILE) if (out / name).is_file()]
    subjects = [p for split in SPLITS for pattern in ("*.h5", "*.h5.tmp") for p in (out / split).glob(pattern) if p.is_file()]
    return sorted([*tops, *subjects])


def is_empty(out: str | Path) -> bool:
    """True when ``out`` does not exist or is a folder with nothing in it but empty ``train/`` and ``test/``
    (what a store command stopped before its first subject file leaves)."""
    out = Path(out)
    empty_split = lambda p: p.name in SPLITS and p.is_dir() and not any(p.iterdir())  # noqa: E731
    return not out.exists() or (out.is_dir() and all(empty_split(p) for p in out.iterdir()))


def clear_store(out: str | Path) -> list[Path]:
    """Delete the store in ``out`` (``store_files``, then ``train/`` and ``test/`` if left empty);
    returns the files deleted. Every other file stays."""
    out = Path(out)
    removed = store_files(out)
    for path in removed:
        path.unlink()
    for split in SPLITS:
        folder = out / split
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed


def new_store_folder(out: str | Path, *, overwrite: bool = False) -> Path:
    """``out`` ready for a new store: a folder to create or an empty one; with ``overwrite``, the store
    it holds is cleared (``clear_store``). DataError naming the folder otherwise, or when it is a file."""
    out = check_folder(out)
    if is_empty(out):
        return out
    if not overwrite:
        raise DataError(f"{out}: exists and is not empty; choose a new folder, or pass --overwrite to replace "
                        "the store in it")
    clear_store(out)
    return out
