"""Guards of the decode stage: what an input must pass before it reaches the model.

Every check raises ``InputError`` with the reason the errors table shows; the decode stage
(pipelines/inputs.py) turns it into that source's error row, so nothing bad reaches the render
actor or the shard writer, and a rerun meets the same inputs with the same outcome.

* Files: opened without blocking and accepted only when regular (a FIFO would hang a reader,
  ``/dev/zero`` would grow without end), read up to a byte cap (``max_file_bytes``).
* Path cells of Parquet inputs (``{bytes: null, path}``): resolved, symlinks followed, and
  accepted only inside the input root.
* Images: the pixel count is read from the header (Pillow reads the header only) and refused
  above ``max_pixels`` before anything is decoded: a 400 KiB PNG may declare 20000 x 20000
  pixels (1.2 GB as RGB). Pillow refuses headers past ``PILLOW_MAX_PIXELS`` (~179 Mpx) itself,
  which bounds ``max_pixels``; images under ``MIN_IMAGE_SIDE`` on a side are refused too.
* Labels: (pitch, yaw) pairs of finite radians, |pitch| <= pi/2 and |yaw| <= pi (a value past
  those is most likely in degrees); a store's ``face_mat_norm``, a finite 3x3 rotation.
* Time: ``call_with_timeout`` runs a read in a daemon thread and gives up after a while; the
  thread is abandoned (Python cannot stop it) and ends with its worker process.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image

from gazegen.errors import GazegenError

T = TypeVar("T")
PILLOW_MAX_PIXELS = 2 * int(Image.MAX_IMAGE_PIXELS or 89_478_485)  # Pillow refuses larger headers itself
MIN_IMAGE_SIDE = 32  # pixels; a smaller image cannot hold a face worth rendering (a 1 x 1 PNG, an icon)
BYTES_PER_PIXEL = 8  # a file larger than 8 bytes per allowed pixel (16-bit RGBA, uncompressed) is refused unread


class InputError(GazegenError, ValueError):
    """An input that cannot be used; the message is the reason in the errors table."""


def max_file_bytes(max_pixels: int) -> int:
    return BYTES_PER_PIXEL * max_pixels + 2**20


def read_regular_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; FIFOs, devices and sockets are refused
    without blocking (opened O_NONBLOCK, checked with fstat on the open descriptor)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise InputError(f"{path}: cannot open ({error.strerror or error})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{path}: not a regular file (a FIFO, device or socket is never read)")
        if info.st_size > max_bytes:
            raise InputError(f"{path}: {info.st_size} bytes, more than the {max_bytes} an image within max_pixels may take")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InputError(f"{path}: grew past {max_bytes} bytes while being read")
    if not data:
        raise InputError(f"{path}: empty file")
    return data


def resolve_inside(path: str, base: Path, root: Path) -> Path:
    """A path cell (absolute, or relative to ``base``) resolved with its symlinks; refused outside ``root``."""
    resolved = Path(os.path.realpath(path if os.path.isabs(path) else base / path))
    if not resolved.is_relative_to(os.path.realpath(root)):
        raise InputError(f"path {path!r} resolves to {resolved}, outside the input root {root}")
    return resolved


def image_pixels(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by an image's header, read without decoding the pixels; None when
    Pillow itself refuses the header as a decompression bomb (more than ``PILLOW_MAX_PIXELS``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError:
        return None
    except Image.UnidentifiedImageError:  # its message names the in-memory buffer by address, new every run
        raise InputError(f"not a readable image header (no image format recognised; {len(data)} bytes)") from None
    except Exception as error:  # Pillow raises SyntaxError, OSError, ...
        raise InputError(f"not a readable image header ({type(error).__name__}: {error}; {len(data)} bytes)") from None


def decode_image(data: bytes, max_pixels: int, name: str = "") -> np.ndarray:
    """Image file bytes -> (H, W, 3) uint8 RGB, refused from its header above ``max_pixels``. ``name``
    (the file) begins the InputError's reason, as ``read_regular_file``'s do."""
    try:
        return _decoded(data, max_pixels)
    except InputError as error:
        if not name:
            raise
        raise InputError(f"{name}: {error}") from None


def _decoded(data: bytes, max_pixels: int) -> np.ndarray:
    size = image_pixels(data)
    if size is None:
        raise InputError(f"more than {PILLOW_MAX_PIXELS} pixels, more than max_pixels = {max_pixels} (checked from the header, not decoded)")
    width, height = size
    if width * height > max_pixels:
        raise InputError(f"{width} x {height} pixels, more than max_pixels = {max_pixels} (checked from the header, not decoded; "
                         f"--set max_pixels={width * height} takes it)")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(f"{width} x {height} pixels: smaller than {MIN_IMAGE_SIDE} px, too small to hold a face")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise InputError(f"not a decodable image (corrupt or unsupported, {len(data)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def pitch_yaw(value: object, name: str) -> np.ndarray:
    """A (pitch, yaw) label as (2,) float64 radians, or InputError saying what is wrong with it."""
    try:
        array = np.asarray(value, np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name}: not numbers ({error})") from None
    if array.shape != (2,):
        raise InputError(f"{name} has shape {array.shape}, expected (2,) pitch and yaw")
    if not np.isfinite(array).all():
        raise InputError(f"{name} holds non-finite values {array.tolist()}")
    if abs(array[0]) > np.pi / 2 or abs(array[1]) > np.pi:
        raise InputError(f"{name} {array.tolist()} is outside |pitch| <= pi/2, |yaw| <= pi radians (degrees given?)")
    return array


def check_labels(head_pose: object, gaze_head: object | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(head_pose, gaze_head or None) as checked (2,) radians arrays."""
    return pitch_yaw(head_pose, "head_pose"), None if gaze_head is None else pitch_yaw(gaze_head, "gaze_head")


def check_rotation(matrix: object, name: str = "face_mat_norm") -> np.ndarray:
    """A (3, 3) float64 rotation (orthonormal to 1e-3, determinant +1), else InputError naming ``name``."""
    r = np.asarray(matrix, np.float64)
    if r.shape != (3, 3) or not np.isfinite(r).all():
        raise InputError(f"{name}: expected a finite 3x3 rotation, got shape {r.shape}")
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-3) or np.linalg.det(r) < 0:
        raise InputError(f"{name}: not a rotation (R R^T != I or det < 0)")
    return r


def call_with_timeout(fn: Callable[[], T], timeout_s: float) -> T:
    """``fn()``, or InputError once ``timeout_s`` has passed (``fn`` keeps running in its abandoned daemon thread)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=target, name="gazegen-decode", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise InputError(f"decoding took longer than decode_timeout_s = {timeout_s:g} s (abandoned)")
    if failure:
        raise failure[0]
    return result[0]


__all__ = ["InputError", "call_with_timeout", "check_labels", "decode_image", "image_pixels", "max_file_bytes",
           "pitch_yaw", "read_regular_file", "resolve_inside"]  # fmt: skip
