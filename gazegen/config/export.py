"""`gazegen export`: synthesis shards -> the files the field's gaze trainers read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gazegen.config.loader import ConfigError, bounded, load_with_options

EXPORT_FORMATS = ("xgaze", "gazehub")
IMAGE_FORMATS = ("jpg", "png")
IDENTITY_KEYS = ("file", "folder")


@dataclass(frozen=True)
class ExportConfig:
    """`gazegen export OUT DEST` (gazegen/data/export.py): one output file (or folder) per source identity.

    An identity is the person a source shows (`identity = "file"`: one h5 subject file of a store, one
    face of a photo, one row of a Parquet input), or the folder holding its file (`"folder"`: a folder
    of photos of one person).
    """

    format: str = "xgaze"  # xgaze: ETH-XGaze h5 per identity; gazehub: GazeHub image folders + .label files
    resolution: int = bounded(0, 0, 4096)  # image side written (0: the shards' own); labels do not change
    image_format: str = "jpg"  # gazehub images: jpg (GazeHub's) or png (lossless)
    jpeg_quality: int = bounded(95, 1, 100)
    test: tuple[str, ...] = ()  # identities put in the test split (key, its stem, or the output name)
    identity: str = "file"  # what one identity is: the source "file" or its "folder"
    batch_rows: int = bounded(64, 1, 65536)  # rows decoded and written at a time

    def __post_init__(self) -> None:
        for name, value, allowed in (("format", self.format, EXPORT_FORMATS), ("image_format", self.image_format, IMAGE_FORMATS),
                                     ("identity", self.identity, IDENTITY_KEYS)):
            if value not in allowed:
                raise ConfigError(f"export {name} {value!r}: expected one of {', '.join(allowed)}")


def load_export_config(**options: Any) -> ExportConfig:
    """The defaults with the options that are not None (the CLI's typed flags, checked like ``--set`` keys: an
    error names the flag). ``--image-format`` with a format other than gazehub, which would ignore it, is refused."""
    given = {k: v for k, v in options.items() if v is not None}
    cfg = load_with_options(ExportConfig, None, (), given)
    if "image_format" in given and cfg.format != "gazehub":
        raise ConfigError(f"--image-format {given['image_format']}: applies to --format gazehub only (--format {cfg.format} "
                          "writes its images inside h5 files), so it would be ignored: leave it out")
    return cfg
