"""Local paths a command will write, checked before any work, so that a command refused for its
output path has read nothing, started nothing and created nothing.

``check_out_folder``: a folder to create or fill (`synthesize` OUT, `export` DEST): an existing
file is refused, and so is a path whose nearest existing folder cannot hold a new one (a file on
the way, ``/proc``, a read-only mount, no permission). Whether a folder can be made is learnt by
making one there and removing it at once: ``os.access`` says yes to root, and on read-only mounts
and pseudo filesystems such as ``/proc``. ``check_out_file``: a file to write (`bench --out`): not a
folder, and a parent that is or can be made. ``check_image_file``: an image to write (`data sheet`):
that, and a suffix OpenCV writes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gazegen.errors import GazegenError


class OutputPathError(GazegenError, ValueError):
    """A path a command would write cannot be written; the message names it and says why."""


def _nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.absolute().parents) if p.exists())


def _can_make_folder_in(folder: Path) -> str:
    """"" when a folder can be made in ``folder``, else why not (the OS's words)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".gazegen-probe-", dir=folder))
    except OSError as e:
        return e.strerror or type(e).__name__
    return ""


def check_out_folder(path: str | Path) -> Path:
    """``path`` as a Path when it is a folder, or can be made one; OutputPathError naming it otherwise."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise OutputPathError(f"{path}: not a folder" if existing == path else f"{path}: cannot be made: {existing} is not a folder")
    why = _can_make_folder_in(existing)
    if why:
        raise OutputPathError(f"{path}: cannot write in it ({why})" if existing == path else
                              f"{path}: cannot be made: cannot create a folder in {existing} ({why})")
    return path


def check_out_file(path: str | Path, wants: str = "a file name") -> Path:
    """``path`` as a Path when a file can be written there: not a folder, a parent folder that is or can be made;
    OutputPathError naming it otherwise (``wants``: what to give instead of a folder)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path}: a folder; give {wants}")
    try:
        check_out_folder(path.parent)
    except OutputPathError as e:
        raise OutputPathError(f"{path}: cannot be written: {e}") from None
    return path


def check_image_file(path: str | Path, png_only: bool = False) -> Path:
    """``path`` as a Path when an image can be written there: not a folder, a suffix OpenCV writes (``png_only``:
    .png, for PNG bytes written as they are), a parent folder that is or can be made; OutputPathError otherwise."""
    import cv2

    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path}: a folder; give a .png path")
    writable = path.suffix.lower() == ".png" if png_only else bool(path.suffix) and cv2.haveImageWriter(str(path))
    if not writable:
        raise OutputPathError(f"{path}: not {'a PNG' if png_only else 'an image'} file name ({path.suffix or 'no suffix'}); "
                              "give a .png path")
    return check_out_file(path, "a .png path")
