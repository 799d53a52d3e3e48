"""What `gazegen synthesize` makes of a folder of bad inputs: every bad one one error row, every good
one its rows, no hang, and the run's peak memory.

    python benchmarks/bad_inputs.py [--work DIR] [--timeout 900]

Builds a corpus (what a real folder of photos and a few labelled files hold), a tiny random
checkpoint (normalisation recorded), and runs the command line, ``gazegen synthesize`` with one
row per source, in a subprocess under a time limit. While it runs, the resident memory of the
command's whole process tree (driver, Ray's GCS and raylet, decode / render / PNG workers) is
sampled from /proc every 50 ms; printed: the peak of the tree's sum and of its largest process.
Then one line per input: rows, or the error row's stage and reason, and whether that is what the
input should give. Exits 1 when an input gave something else, or the run failed or hung.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from gazegen.checkpoint import save_pretrained
from gazegen.config import CONFIG_DIR, PUBLISHED_NORMALISATIONS, ModelConfig, NormalisationConfig, load_config
from gazegen.data.sample import Sample
from gazegen.data.store import SubjectWriter
from gazegen.models.livegaze import LiveGaze

ROOT = Path(__file__).resolve().parents[1]
BOMB_SIDE = 20000  # a real PNG of 20000 x 20000 black pixels: ~0.4 MB on disk, 1.2 GB as RGB


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def black_png(side: int) -> bytes:
    """A valid RGB PNG of side x side black pixels, compressed row by row (never held whole)."""
    pack, row = zlib.compressobj(9), b"\x00" * (1 + 3 * side)
    body = b"".join(pack.compress(row) for _ in range(side)) + pack.flush()
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def face_like(side: int, seed: int) -> np.ndarray:
    """A square of noise: a labelled crop's image (read as given), or a photo without a face."""
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def face_photo(seed: int) -> np.ndarray:
    """A 160 px BGR photo of a real face (scikit-image's astronaut, from the dev extras), its brightness jittered per
    seed so that no two are the same file: `--crop auto` finds the face and crops it (a square image without a face
    is an error row)."""
    from skimage import data

    face = cv2.resize(cv2.cvtColor(data.astronaut()[20:260, 110:350], cv2.COLOR_RGB2BGR), (160, 160), interpolation=cv2.INTER_AREA)
    return np.clip(face.astype(np.int16) + int(np.random.default_rng(seed).integers(-20, 21)), 0, 255).astype(np.uint8)


def make_photos(folder: Path) -> dict[str, bool]:
    """Image files; returns {source id: good}."""
    folder.mkdir(parents=True)
    good = {}

    def image(name: str, array: np.ndarray, ok: bool, *params: int) -> None:
        cv2.imwrite(str(folder / name), array, list(params))
        good[name] = ok

    image("ok.png", face_photo(0), True)
    image("ok.jpg", face_photo(1), True, cv2.IMWRITE_JPEG_QUALITY, 90)
    image("ok_progressive.jpg", face_photo(2), True, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    image("ok_gray.png", cv2.cvtColor(face_photo(3), cv2.COLOR_BGR2GRAY), True)
    image("ok_16bit.png", face_photo(4).astype(np.uint16) * 257, True)
    image("ok_rgba.png", np.dstack([face_photo(5), np.full((160, 160), 128, np.uint8)]), True)
    image("ok.bmp", face_photo(6), True)
    image("ok.webp", face_photo(7), True, cv2.IMWRITE_WEBP_QUALITY, 90)
    image("no_face_4000px.jpg", cv2.resize(face_like(8, 8), (4000, 4000), interpolation=cv2.INTER_LINEAR), False)
    image("Ünïcødé name.png", face_photo(9), True)
    Image.fromarray(cv2.cvtColor(face_photo(10), cv2.COLOR_BGR2RGB)).convert("CMYK").save(folder / "ok_cmyk.jpg")
    good["ok_cmyk.jpg"] = True
    image("no_face_landscape.jpg", np.full((480, 640, 3), 120, np.uint8), False)
    image("one_pixel.png", face_like(1, 11), False)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(3000))
    (folder / "truncated.png").write_bytes(cv2.imencode(".png", face_like(64, 12))[1].tobytes()[:2000])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text_named.jpg").write_text("this is a text file with an image suffix\n")
    (folder / "decompression_bomb.png").write_bytes(black_png(BOMB_SIDE))
    os.mkfifo(folder / "fifo.jpg")
    (folder / "dev_zero.png").symlink_to("/dev/zero")
    (folder / "dangling_link.jpg").symlink_to(folder / "no_such_file.jpg")
    good |= dict.fromkeys(["corrupt.jpg", "truncated.png", "empty.png", "text_named.jpg", "decompression_bomb.png", "fifo.jpg",
                           "dev_zero.png", "dangling_link.jpg"], False)  # fmt: skip
    (folder / "notes.txt").write_text("not an input kind: skipped")  # and hidden files: skipped
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "folder_named.jpg").mkdir()  # a folder is no source
    return good


def make_h5(folder: Path) -> dict[str, bool]:
    folder.mkdir(parents=True)
    norm = NormalisationConfig(focal=960.0, distance_mm=600.0, resolution=64)
    poses = [[0.1, -0.2], [np.nan, 0.0], [25.0, 10.0], [0.0, 0.1], [0.05, 0.05]]  # NaN; degrees
    gazes = [[0.0, 0.1], [0.0, 0.0], [0.0, 0.0], [np.inf, 0.0], [0.1, -0.1]]  # inf
    with SubjectWriter(folder / "subject0000.h5", norm, "subject0000") as writer:
        writer.write(Sample(image=face_like(64, 20 + i), gaze=np.zeros(2, np.float32), head_pose=np.asarray(p, np.float32),
                            gaze_head=np.asarray(g, np.float32), camera=np.zeros(25, np.float32), normalisation=norm,
                            subject="subject0000", frame_index=i) for i, (p, g) in enumerate(zip(poses, gazes)))  # fmt: skip
    (folder / "not_hdf5.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(500))
    return {"h5/subject0000.h5#000000": True, "h5/subject0000.h5#000001": False, "h5/subject0000.h5#000002": False,
            "h5/subject0000.h5#000003": False, "h5/subject0000.h5#000004": True, "h5/not_hdf5.h5": False}  # fmt: skip


def make_parquet(folder: Path, outside: Path) -> dict[str, bool]:
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "beside.ppm"), face_like(64, 30))  # a path cell's target (not an input kind itself)
    cv2.imwrite(str(outside), face_like(64, 31))
    os.mkfifo(folder / "pipe.ppm")
    png = cv2.imencode(".png", face_like(64, 32))[1].tobytes()
    large = cv2.imencode(".png", cv2.resize(face_like(8, 33), (6000, 6000), interpolation=cv2.INTER_LINEAR))[1].tobytes()
    cells = [  # (image cell, head_pose, good)
        ({"bytes": png, "path": None}, [0.0, 0.1], True),
        ({"bytes": large, "path": None}, [0.0, -0.1], True),  # a 6000 x 6000 labelled crop: 36 Mpx, the default cap
        ({"bytes": None, "path": "beside.ppm"}, [0.1, 0.0], True),
        ({"bytes": None, "path": f"../../{outside.name}"}, [0.0, 0.0], False),  # outside the input root
        ({"bytes": None, "path": "pipe.ppm"}, [0.0, 0.0], False),  # a FIFO
        ({"bytes": None, "path": "/dev/zero"}, [0.0, 0.0], False),
        ({"bytes": png, "path": None}, [0.1, 0.2, 0.3], False),  # a wrong shape
        ({"bytes": None, "path": None}, [0.0, 0.0], False),  # no image at all
        ({"bytes": b"junk", "path": None}, [0.0, 0.0], False),
        ({"bytes": png, "path": None}, [float("nan"), 0.0], False),
    ]
    pq.write_table(pa.table({"image": [c for c, _, _ in cells], "head_pose": [p for _, p, _ in cells]}), folder / "crops.parquet")
    # (a Parquet file without the image column is no error row: the whole run is refused while listing, since every
    # row would fail alike; tests/test_synth_inputs.py covers it)
    (folder / "truncated.parquet").write_bytes((folder / "crops.parquet").read_bytes()[:300])
    good = {f"parquet/crops.parquet#{i:06d}": ok for i, (_, _, ok) in enumerate(cells)}
    return good | {"parquet/truncated.parquet": False}


class TreeMemory:
    """Peak resident memory of a process and all its descendants, sampled from /proc."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid, self.every_s, self.peak_sum, self.peak_one, self.samples = pid, every_s, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _table() -> dict[int, tuple[int, int]]:
        """pid -> (parent pid, resident bytes) of every process."""
        table, page = {}, os.sysconf("SC_PAGE_SIZE")
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    fields = stat[stat.rindex(")") + 2 :].split()
                    table[int(entry)] = (int(fields[1]), int(fields[21]) * page)
                except (OSError, ValueError, IndexError):
                    continue  # the process ended meanwhile
        return table

    def _run(self) -> None:
        while not self._stop.is_set():
            table = self._table()
            tree, grew = {self.pid}, True
            while grew:
                more = {p for p, (parent, _) in table.items() if parent in tree} - tree
                grew, tree = bool(more), tree | more
            sizes = [table[p][1] for p in tree if p in table]
            self.peak_sum, self.peak_one = max(self.peak_sum, sum(sizes)), max([self.peak_one, *sizes])
            self.samples += 1
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def outcomes(out: Path) -> dict[str, str]:
    """source id -> "N rows" or "error (stage): reason"."""
    found: dict[str, str] = {}
    for path in sorted(out.glob("shard-*.parquet")):
        with pq.ParquetFile(path) as file:
            ids = file.read(columns=["source_id"], use_threads=False).column("source_id").to_pylist()
        for sid in set(ids):
            found[sid] = f"{ids.count(sid)} rows"
    with pq.ParquetFile(out / "_errors.parquet") as file:
        for e in file.read(use_threads=False).to_pylist():
            found[e["source_id"]] = f"error ({e['stage']}): {e['reason']}"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="folder for the corpus and the output (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before the run counts as hung")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="gazegen-bad-inputs-"))
    corpus = work / "corpus"
    start = time.perf_counter()
    expected = make_photos(corpus) | make_h5(corpus / "h5") | make_parquet(corpus / "parquet", work / "outside.png")
    print(f"corpus: {len(expected)} inputs in {corpus} ({sum(expected.values())} good), made in {time.perf_counter() - start:.1f} s; "
          f"the bomb is {(corpus / 'decompression_bomb.png').stat().st_size / 1024:.0f} KiB for {BOMB_SIDE}x{BOMB_SIDE} px "
          f"({3 * BOMB_SIDE**2 / 1e9:.2f} GB as RGB)")  # fmt: skip
    torch.manual_seed(0)
    checkpoint = save_pretrained(work / "checkpoint", LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")),
                                 normalisation=PUBLISHED_NORMALISATIONS["livegaze512"])  # fmt: skip
    command = [sys.executable, "-c", "import sys; from gazegen.cli import app; sys.argv[0] = 'gazegen'; app()", "synthesize",
               str(checkpoint), str(corpus), str(work / "out"), "--grid", "view", "--view-yaw", "0:0:1", "--overwrite",
               "--set", "cpu_threads=1"]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(process.pid)
    try:
        stdout, stderr = process.communicate(timeout=args.timeout)
        hung = False
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        hung = True
    memory.stop()
    seconds = time.perf_counter() - start
    print(f"gazegen synthesize: exit {process.returncode} after {seconds:.1f} s{' (HUNG: killed)' if hung else ''}; "
          f"peak RSS of its process tree {memory.peak_sum / 2**20:.0f} MiB, of its largest process "
          f"{memory.peak_one / 2**20:.0f} MiB ({memory.samples} samples)")  # fmt: skip
    print("  " + (stdout.strip().splitlines() or [""])[-1])
    if process.returncode != 0:
        print(stderr[-3000:])
        return 1
    found = outcomes(work / "out")
    wrong = 0
    width = max(map(len, expected))
    for sid in sorted(set(expected) | set(found)):
        outcome = found.get(sid, "MISSING")
        good = expected.get(sid)
        ok = good is not None and (outcome.endswith(" rows") if good else outcome.startswith("error"))
        wrong += not ok
        print(f"  {'ok ' if ok else 'BAD'} {'good' if good else 'bad ' if good is not None else '????'} {sid:<{width}}  {outcome[:150]}")
    print(f"{len(expected) - wrong} of {len(expected)} inputs as expected: {sum(expected.values())} good -> rows, "
          f"{len(expected) - sum(expected.values())} bad -> one error row each")  # fmt: skip
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
