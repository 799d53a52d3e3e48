"""Pretrained weight files: what exists, where it is looked for, and checked loading.

Nothing here downloads. Every file gazegen can use is listed in ``WEIGHTS`` with its published
file name, its sha256 where it is established, the address to fetch it from (text only) and
what uses it. ``find_weight`` looks for the file, in order, in

1. every folder of ``$GAZEGEN_WEIGHTS`` (``os.pathsep``-separated),
2. the torch hub cache, ``torch.hub.get_dir()/checkpoints`` (where torchvision and pytorch-fid
   put their downloads, so files fetched by those tools on another machine can be copied over),
3. for LPIPS' linear layers only: ``weights/v0.1/`` of an installed ``lpips`` package, which
   bundles ``vgg.pth`` (looked up without importing the package).

A file that is found is checked before use: its size (where known) and then its sha256 (where
known; a published name that ends in ``-<8 hex digits>`` carries the sha256's prefix, the torch
hub convention, and that prefix is checked when the full hash is not recorded). The first file
found is the one used: a bad file is an error, never skipped for a later one. Hashes are
computed once per process per (path, size, mtime).

Loading uses ``torch.load(weights_only=True)`` (``.pth``/``.pt``) or safetensors
(``.safetensors``): no pickled code runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gazegen.errors import GazegenError

ENV_VAR = "GAZEGEN_WEIGHTS"


class MissingWeightsError(GazegenError, FileNotFoundError):
    """A pretrained weight file is not on this machine; the message says what and where."""


class WeightsChecksumError(GazegenError, ValueError):
    """A weight file was found but its size or sha256 is not the published one."""

    def __init__(self, message: str, what: str):
        super().__init__(message)
        self.what = what  # "size" or "sha256"


@dataclass(frozen=True)
class WeightSpec:
    """One published pretrained weight file."""

    name: str  # registry key
    filename: str  # the published file name; it is looked for under exactly this name
    sha256: str | None  # published/established sha256 of the whole file; None: not established
    size: int | None  # bytes, where established (a cheap first check against truncated downloads)
    url: str  # where to get it (never fetched by gazegen)
    used_by: str  # what in gazegen needs it
    note: str = ""  # provenance of the hash, caveats

    @property
    def hash_prefix(self) -> str | None:
        """The sha256 prefix carried by the file name (``vgg16-397923af.pth`` -> ``397923af``)."""
        m = re.search(r"-([0-9a-f]{8,})\.[A-Za-z0-9]+$", self.filename)
        return m.group(1) if m else None


# sha256 values: torchvision and pytorch-fid name their files with the sha256's first 8 hex digits
# (torch.hub's `check_hash` convention); the full digests below agree with those prefixes and were
# cross-checked against several independent public records (manifests and checksum scripts of
# projects that pin these exact files, with matching byte sizes). LPIPS' `vgg.pth` carries no
# hash in its name; its digest is likewise taken from independent public pins of the v0.1 file.
WEIGHTS: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            name="vgg16",
            filename="vgg16-397923af.pth",
            sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
            size=553_433_881,
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            used_by="perceptual loss L_P (train/losses.py) and the LPIPS backbone (metrics)",
            note="torchvision VGG16 IMAGENET1K_V1; only the features.* tensors are used",
        ),
        WeightSpec(
            name="lpips_vgg",
            filename="vgg.pth",
            sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
            size=7_289,
            url="https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
            used_by="LPIPS metric (linear layers lin0..lin4; the backbone is `vgg16`)",
            note="LPIPS v0.1 VGG linear calibration; also bundled in the `lpips` pip package",
        ),
        WeightSpec(
            name="fid_inception",
            filename="pt_inception-2015-12-05-6726825d.pth",
            sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
            size=95_628_359,
            url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
            used_by="FID metric (Inception v3 pool features, gazegen/metrics/inception.py)",
            note="TensorFlow's 2015-12-05 Inception ported by pytorch-fid (torch-fidelity ships the same bytes)",
        ),
        WeightSpec(
            name="live3d",
            filename="encoder_render.pt",
            sha256=None,  # no official release and no published digest: not verified
            size=None,
            url="https://drive.google.com/drive/folders/1Z6uri8pH048Qzyhu0PE3llxO5EC7ic_v "
            "(github.com/Dong142857/Live3DPortrait, unofficial re-implementation)",
            used_by="depth prior D_gt for L_D and initialisation of the `base` model",
            note="NVIDIA released no Live3D weights; this is the public unofficial checkpoint that "
            "3DPE (Bai et al.) builds on. It needs EG3D's ffhqrebalanced512-128.pth beside it "
            "for its renderer/super-resolution. Unverified: no published sha256",
        ),
    )
}


# --------------------------------------------------------------------------- finding


def _spec(name: str) -> WeightSpec:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise KeyError(f"unknown weight {name!r}; known: {', '.join(WEIGHTS)}") from None


def search_dirs(name: str | None = None) -> list[Path]:
    """The folders searched for ``name``'s file, in order (they need not exist)."""
    dirs = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    if name == "lpips_vgg":
        spec = importlib.util.find_spec("lpips")  # locates the package without importing it
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(Path(p) / "weights" / "v0.1" for p in spec.submodule_search_locations)
    return dirs


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (cached per process by path, size and mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def verify_weight(spec: WeightSpec, path: Path) -> bool:
    """Check ``path`` against ``spec``: True if a hash was checked, False if none is known.

    Raises ``WeightsChecksumError`` naming the file on a size or hash mismatch.
    """
    if spec.size is not None and (actual := path.stat().st_size) != spec.size:
        raise WeightsChecksumError(
            f"{spec.filename} at {path} has {actual} bytes, expected {spec.size} "
            f"(truncated or a different file?). Delete it and fetch it again from {spec.url}",
            "size",
        )
    expected = spec.sha256 or spec.hash_prefix
    if expected is None:
        return False
    actual_hash = sha256_file(path)
    if not actual_hash.startswith(expected):
        raise WeightsChecksumError(
            f"{spec.filename} at {path} has sha256 {actual_hash}, expected "
            f"{expected if spec.sha256 else expected + '...'}. Delete it and fetch it again from {spec.url}",
            "sha256",
        )
    return True


def _env_state() -> str:
    return f"${ENV_VAR} = {os.environ[ENV_VAR]!r}" if os.environ.get(ENV_VAR, "").strip() else f"${ENV_VAR} is not set"


def missing_message(name: str) -> str:
    """What ``MissingWeightsError`` says: the file, the folders searched, where to get it and put it."""
    spec = _spec(name)
    return (
        f"pretrained weights '{name}' ({spec.filename}) not found; looked in: "
        + ", ".join(str(d) for d in search_dirs(name))
        + f" ({_env_state()}). Download it from {spec.url} and put it in one of those folders "
        f"(or point ${ENV_VAR} at the folder that holds it). Used by: {spec.used_by}."
    )


def find_weight(name: str, *, verify: bool = True) -> Path:
    """Path of the weight file ``name`` (a key of ``WEIGHTS``), checked against its hash.

    Raises ``MissingWeightsError`` (names the file, the folders searched and where to get it) or
    ``WeightsChecksumError`` (names the file, its path and the expected hash).
    """
    spec = _spec(name)
    for folder in search_dirs(name):
        path = folder / spec.filename
        if path.is_file():
            if verify:
                verify_weight(spec, path)
            return path
    raise MissingWeightsError(missing_message(name))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a tensors-only torch file, on the CPU."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return dict(state)


def load_weight(name: str, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """``find_weight`` then ``load_state_dict_file``."""
    return load_state_dict_file(find_weight(name, verify=verify))


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class WeightStatus:
    """One row of `gazegen weights`."""

    name: str
    filename: str
    status: str  # "ok" (hash checked), "unverified" (no hash known), "missing", "bad size"/"bad sha256"
    path: Path | None  # where it was found
    used_by: str
    url: str

    def line(self) -> str:
        """The row, then what needs the file on a second, indented line."""
        where = str(self.path) if self.path else f"get it from {self.url}"
        return f"{self.name:<14} {self.status:<11} {self.filename:<38} {where}\n{'':<14} needed by: {self.used_by}"


def weights_report(*, verify: bool = True) -> list[WeightStatus]:
    """The status of every registered weight file (hashing the large ones takes a few seconds)."""
    rows = []
    for name, spec in WEIGHTS.items():
        path, status = None, "missing"
        for folder in search_dirs(name):
            if (folder / spec.filename).is_file():
                path = folder / spec.filename
                break
        if path is not None:
            try:
                status = "ok" if (verify and verify_weight(spec, path)) else "unverified"
            except WeightsChecksumError as e:
                status = f"bad {e.what}"
        rows.append(WeightStatus(name, spec.filename, status, path, spec.used_by, spec.url))
    return rows


SHIPPED_DIR = Path(__file__).resolve().parents[1] / "weights"  # weights/ of the repository: made by gazegen itself
CARD = "MODEL_CARD.md"
CARD_HASH = re.compile(r"model\.safetensors sha256: `?([0-9a-f]{64})`?")


def shipped_report(root: Path = SHIPPED_DIR) -> list[WeightStatus]:
    """The gazegen checkpoints shipped in the repository's weights/ folder, each checked against its model card's sha256."""
    rows = []
    for folder in sorted(p for p in root.glob("*") if (p / "model.safetensors").is_file()):
        card = folder / CARD
        found = CARD_HASH.search(card.read_text()) if card.is_file() else None
        if found is None:
            status = "unverified"
        else:
            status = "ok" if sha256_file(folder / "model.safetensors") == found.group(1) else "bad sha256"
        rows.append(WeightStatus(folder.name, "model.safetensors", status, folder / "model.safetensors",
                                 f"gazegen's own checkpoint, model card {card}", "made by this repository"))
    return rows


def format_weights_report(rows: list[WeightStatus] | None = None) -> list[str]:
    """Printable lines for `gazegen weights`: the searched folders, then one line per file, then the shipped checkpoints."""
    rows = weights_report() if rows is None else rows
    folders = (f"{d}" if d.is_dir() else f"{d} (no such folder)" for d in search_dirs())
    lines = [f"searched in order ({_env_state()}): " + ", ".join(folders)]
    lines.append(f"{'name':<14} {'status':<11} {'file':<38} location")
    lines.extend(line for r in rows for line in r.line().splitlines())
    shipped = shipped_report()
    if shipped:
        lines.append(f"shipped with the repository ({SHIPPED_DIR}), made by gazegen's own commands:")
        lines.extend(line for r in shipped for line in r.line().splitlines())
    return lines
