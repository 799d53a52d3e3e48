"""The dataset card (``README.md``) and label histograms (``label_histograms.png``) beside the shards.

The card answers the question users of gaze data ask most: which frame, which units, which
order and which sign is each label in. It states them per column, works one real row of the run
through them (its angles in degrees, its gaze vector, and the check that the head-frame gaze
rotated by the head pose gives the camera-frame gaze), and embeds the histograms of the labels
(gazegen/data/label_plots.py), so the coverage is seen before training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from gazegen import geometry
from gazegen.data.label_plots import ShardLabels
from gazegen.data.parquet import SHARD_GLOB
from gazegen.data.schema import DEPTH_SCALE, FEATURES, ROW_ID_FORMAT
from gazegen.pipelines.run_manifest import RunManifest, unswept_ranges
from gazegen.pipelines.shards import CARD_NAME, HISTOGRAMS_NAME

_SIGN = "(0, 0) looks straight into the camera; pitch > 0 up, yaw > 0 towards the image's left (the subject's right)"
_MEANINGS = {
    "image": "the rendered face, 8-bit RGB PNG; with `render.source_background` (the demo) composited by `alpha` onto "
             "the source's own background, the source's head filled in",
    "depth": f"z-depth along the camera axis, 16-bit PNG, millimetres x {DEPTH_SCALE:g}; 0 = no surface",
    "alpha": "coverage of the rendered head, 8-bit PNG, alpha x 255",
    "gaze": "gaze of the rendered image: what a gaze estimator learns",
    "head_pose": "head pose of the rendered image",
    "gaze_head": "gaze in the head frame: the model's condition, the same for every view of a gaze",
    "view_offset": "how far the camera was turned from the source's camera",
    "camera": "EG3D camera of the rendered image",
    "source_head_pose": "head pose of the source face in its own normalised camera, before the view turn",
    "face_mat_norm": "rotation from the source photo's camera into the source's normalised camera (ETH-XGaze's name)",
    "row_id": f"stable id {ROW_ID_FORMAT}",
    "source_id": "id of the source face: its input file (+ `#row` for h5 / Parquet inputs, + `#faceNN` for each face of a photo with several)",
    "source_path": "the input the source came from",
    "gaze_index": "index into the gaze grid (with --sample: the draw)",
    "view_index": "index into the view grid (with --sample: the draw)",
    "checkpoint_hash": "the checkpoint's identity: one sha256 over its config.json and model.safetensors (not the weights file's sha256)",
    "seed": "random seed of the rendering",
}
# column: (frame, units, order, sign and zero)
_LABELS = {
    "gaze": ("normalised camera of the rendered image: OpenCV axes, x right, y down, z forward", "radians",
             "(pitch, yaw)", f"{_SIGN}; vector = (-cos p sin y, -sin p, -cos p cos y)"),
    "head_pose": ("normalised camera of the rendered image", "radians", "(pitch, yaw)",
                  "pitch/yaw of the face's forward direction R_head @ (0, 0, -1); (0, 0) faces the camera; pitch > 0 "
                  "faces up, yaw > 0 towards the image's left; no roll: R_head = R_y(yaw) @ R_x(-pitch)"),
    "gaze_head": ("the head's frame: the camera's axes when the face looks straight into it", "radians", "(pitch, yaw)",
                  f"{_SIGN} when the head pose is (0, 0); vector(gaze) = R_head(head_pose) @ vector(gaze_head)"),
    "view_offset": ("added to the source's head pose", "radians", "(pitch, yaw)",
                    "head_pose = source head pose + view_offset; (0, 0) is the source's own camera"),
    "camera": ("EG3D: world = the head (origin at the face centre, x to the subject's left, y up, z out of the face)",
               "renderer world units; intrinsics / image size", "cam2world 4x4 row-major (16), then intrinsics 3x3 (9)",
               "camera axes OpenCV (x right, y down, z towards the face); principal point 0.5"),
    "source_head_pose": ("the source's normalised camera (the rendered camera before the view turn)", "radians", "(pitch, yaw)",
                         "head_pose = source_head_pose + view_offset, yaw wrapped into [-pi, pi); the same in every row of a source"),
    "face_mat_norm": ("the source photo's camera -> the source's normalised camera", "rotation matrix", "3x3 row-major (9)",
                      "vector_normalised = R @ vector_photo; identity for inputs that were already normalised crops; "
                      "`gaze_in_photo(row)` maps a row's gaze into the photo's camera"),
}


def _feature_name(feature: Mapping[str, Any]) -> str:
    if feature["_type"] == "Image":
        return "Image (PNG struct)"
    if feature["_type"] == "Sequence":
        return f"{feature['length']} x {feature['feature']['dtype']}"
    return str(feature["dtype"])


def _pitchyaw(values: np.ndarray) -> str:
    p, y = (float(v) for v in values)
    return f"({p:+.4f}, {y:+.4f}) rad = ({np.degrees(p):+.1f}°, {np.degrees(y):+.1f}°)"


def _reading(values: np.ndarray) -> str:
    p, y = np.degrees(values.astype(np.float64))
    return f"{abs(p):.1f}° {'up' if p >= 0 else 'down'} and {abs(y):.1f}° towards the image's {'left' if y >= 0 else 'right'}"


def _vector(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:+.4f}" for v in geometry.pitchyaw_to_vector(values.astype(np.float64))) + ")"


def example_row(labels: ShardLabels, i: int = 0) -> str:
    """Markdown working row ``i`` through the conventions, with the numbers of the run."""
    gaze, head, gaze_head, view = (a[i].astype(np.float64) for a in (labels.gaze, labels.head_pose, labels.gaze_head, labels.view_offset))
    rotated = geometry.gaze_head_to_camera(gaze_head, geometry.head_pose_to_rotation(head))
    error = float(geometry.angular_error(rotated, gaze))
    return "\n".join([
        f"Row `{labels.row_id[i]}` (the first row of the first shard):",
        "",
        f"- `gaze` {_pitchyaw(gaze)}: the eyes look {_reading(gaze)}; unit vector {_vector(gaze)}",
        f"- `head_pose` {_pitchyaw(head)}: the face is turned {_reading(head)}",
        f"- `gaze_head` {_pitchyaw(gaze_head)}: the same gaze relative to the head; vector {_vector(gaze_head)}",
        f"- `view_offset` {_pitchyaw(view)}: the camera turned this far from the source's camera",
        f"- check: R_head(`head_pose`) @ vector(`gaze_head`) = {_vector(rotated)} is `gaze`'s vector to {error:.2g}°",
    ])  # fmt: skip


def _ranges(labels: ShardLabels) -> str:
    lines = []
    for name in ("gaze", "head_pose", "gaze_head", "view_offset"):
        deg = np.degrees(getattr(labels, name).astype(np.float64))
        lines.append(f"| `{name}` | {deg[:, 0].min():+.1f} .. {deg[:, 0].max():+.1f} | {deg[:, 1].min():+.1f} .. {deg[:, 1].max():+.1f} |")
    return "| column | pitch (deg) | yaw (deg) |\n|---|---|---|\n" + "\n".join(lines)


def _distribution(labels: ShardLabels | None) -> str:
    if labels is None or not len(labels):
        return "The run holds no rows: no label distribution to show."
    return f"""![label distribution: gaze, head pose, views]({HISTOGRAMS_NAME})

Ranges over the {len(labels)} rows:

{_ranges(labels)}

### Worked example

{example_row(labels)}"""


def dataset_card(manifest: RunManifest, labels: ShardLabels | None = None) -> str:
    """``README.md``: YAML header for the Hugging Face loader, columns, label conventions, distribution, provenance."""
    rows = "\n".join(f"| `{name}` | {_feature_name(f)} | {_MEANINGS.get(name, '')} |" for name, f in FEATURES.items())
    conventions = "\n".join(f"| `{name}` | {frame} | {units} | {order} | {sign} |" for name, (frame, units, order, sign) in _LABELS.items())
    command = " ".join(manifest.command) or "(not recorded)"
    settings = json.dumps(dict(manifest.settings), indent=1, sort_keys=True)
    unswept = sorted(unswept_ranges(manifest.settings))
    unused = f" (the grid sweeps {manifest.settings.get('grid')}: {', '.join(unswept)} shape no row)" if unswept else ""
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: {SHARD_GLOB}
tags:
- gaze-estimation
- synthetic
---

# gazegen synthetic gaze data

Faces re-rendered by LiveGaze under a grid of gaze directions and camera views, one row per
rendered image, with exact labels. {manifest.rows} rows in {len(manifest.shards)} shards from
{len(manifest.inputs)} sources (faces: a photo, an h5 row, a Parquet row, a face of a photo with several); failed
sources: {manifest.errors} (reasons in `_errors.parquet`, and per shard
in `_errors/`). Read the shards by their glob, `{SHARD_GLOB}`: this folder also holds this card, the
run's `_manifest.json`, each shard's `_stats.json` and the error tables, which a reader given the
whole folder would take for data.

```python
import polars as pl
df = pl.read_parquet("OUT/{SHARD_GLOB}", columns=["gaze", "head_pose", "row_id"])
from datasets import load_dataset
ds = load_dataset("parquet", data_files="OUT/{SHARD_GLOB}", split="train")
from gazegen.data.parquet import GazeParquetDataset   # torch IterableDataset
from gazegen.data.parquet import gaze_in_photo        # a row's gaze in its source photo's camera
```

For ETH-XGaze trainers: `gazegen export OUT DEST --format xgaze` (one h5 per identity, the
official baseline's layout); for GazeHub readers (GazeTR, L2CS-Net): `--format gazehub`.

## Columns

| column | type | meaning |
|---|---|---|
{rows}

## Labels: frame, units, order, sign

| column | frame | units | order | sign and zero |
|---|---|---|---|---|
{conventions}

Images are normalised as in ETH-XGaze: a virtual camera at a fixed distance looking at the face
centre (the run's `normalisation` below), so the face centre is the image centre. A horizontal
flip of an image negates both yaws. Depth: `depth_mm = png_value / {DEPTH_SCALE:g}`; 0 = no
surface, 65535 = at or beyond {65535 / DEPTH_SCALE:g} mm; the scale is also in each file's schema
metadata (`gazegen`).

`gaze_head` and `view_offset` are what the model was asked to render. `source_head_pose` comes
with h5 and Parquet inputs; for a photo it is estimated, by a generic face fitted to five detected
landmarks (median error about 9-10° on procedural heads turned in 3-D and on real faces lifted onto
a generic face and turned: gazegen's `benchmarks/faces.py`; real heads may differ). For photo
sources `head_pose` therefore carries that error, and `gaze_head` is relative to the estimated
head frame. The model reads a source through the camera its head pose gives, so under view turns
(a non-zero `view_offset`) a photo source may come out as a doubled (ghosted) face: a model trained
on exact head poses only superimposes two heads at view offsets of ±20° (gazegen's demo model did
before it was trained with turned worlds; now it draws one head there, less exact than for a source
whose head pose is known). Check the
photo sources' rows with a view turn before training on them; a gaze-only grid (`--grid pitch,yaw`)
avoids the turn.

## Label distribution

{_distribution(labels)}

## Files

`shard-XXXXX.parquet` holds the sources `[X * {manifest.sources_per_shard}, (X + 1) * {manifest.sources_per_shard})`
of the sorted inputs; `shard-XXXXX_stats.json` marks it complete; `_manifest.json` lists checksums.

## Provenance

- command: `{command}`
- checkpoint: `{manifest.checkpoint_hash}`
- created {manifest.created}, finished {manifest.finished}
- versions: {", ".join(f"{k} {v}" for k, v in manifest.versions.items())}

Settings{unused}:

```json
{settings}
```
"""
