"""Per-column digests of one fixed synthesis run: compare them before and after a refactor (same rows, same bytes).

Fixed inputs, made in OUT the first time: a tiny LiveGaze (seed 0) saved with LiveGaze's 512 px normalisation,
and a procedural store of 2 subjects (seed 3). The run is the CLI itself:
`gazegen synthesize CKPT heads/test OUT/run --grid pitch,yaw,view --pitch=-10:10:2 --yaw=-20:20:2
--view-yaw=-15:15:2 --view-pitch=0:0:1 --set cpu_threads=1 --set depth_min_alpha=0.0`. Printed: the row count,
then the first 16 hex digits of the sha256 of each column over all rows sorted by row id.

    python benchmarks/synth_digest.py /tmp/digest > before.txt; (change the code); ... > after.txt; diff before.txt after.txt
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gazegen.checkpoint import save_pretrained
from gazegen.config import CONFIG_DIR, PUBLISHED_NORMALISATIONS, ModelConfig, SynthHeadsConfig, load_config
from gazegen.data.heads import synthesize_store
from gazegen.models.livegaze import LiveGaze

GRID = ["--grid", "pitch,yaw,view", "--pitch=-10:10:2", "--yaw=-20:20:2", "--view-yaw=-15:15:2", "--view-pitch=0:0:1",
        "--set", "cpu_threads=1", "--set", "depth_min_alpha=0.0"]


def fixed_inputs(folder: Path) -> tuple[Path, Path]:
    checkpoint, heads = folder / "ckpt", folder / "heads"
    if not checkpoint.is_dir():
        torch.manual_seed(0)
        model = LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml"))
        save_pretrained(checkpoint, model, normalisation=PUBLISHED_NORMALISATIONS["livegaze512"])
    if not heads.is_dir():
        synthesize_store(heads, load_config(SynthHeadsConfig, None, ["subjects=2", "resolution=64", "rig.views=2",
                                                                       "gazes=2", "seed=3", "test_subjects=1"]), workers=1)
    return checkpoint, heads


def column_digests(run: Path) -> list[str]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(run.glob("shard-*.parquet"))).sort_by("row_id")
    lines = [f"rows {table.num_rows}"]
    for name in table.column_names:
        lines.append(f"{name} {hashlib.sha256(repr(table.column(name).to_pylist()).encode()).hexdigest()[:16]}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder for the fixed inputs (kept) and the run (remade)")
    args = p.parse_args()
    checkpoint, heads = fixed_inputs(args.out)
    run = args.out / "run"
    shutil.rmtree(run, ignore_errors=True)
    gazegen = Path(sys.executable).with_name("gazegen")
    subprocess.run([str(gazegen), "synthesize", str(checkpoint), str(heads / "test"), str(run), *GRID], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("\n".join(column_digests(run)))


if __name__ == "__main__":
    main()
