"""A store folder's subject files by split: the one reader of ``train_test_split.json``.

With the split file (gazegen/data/store.py writes it; ETH-XGaze's own layout), each listed name of
split ``key`` is looked up as ``STORE/<key>/<name>``, ``STORE/<name>`` and GazeNeRF's flat
``STORE/xgaze_<name>``, the first that exists; a name with none of them is reported, not dropped.
Without it, the store's folders are the split: ``STORE/*.h5`` and ``STORE/train/*.h5`` are
``train``, ``STORE/test/*.h5`` is ``test``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gazegen.data.store import SPLIT_FILE
from gazegen.data.xgaze import DataError


@dataclass(frozen=True)
class StoreSplits:
    """The subject files of one store folder, by split."""

    store: Path
    split_file: Path | None  # STORE/train_test_split.json when the store has one
    files: dict[str, tuple[Path, ...]]  # split -> its files found: listing order, or sorted when from folders
    missing: dict[str, tuple[str, ...]]  # split -> one line per listed name with no file
    present: tuple[Path, ...]  # every *.h5 in STORE, STORE/train and STORE/test, sorted

    @property
    def unlisted(self) -> tuple[Path, ...]:
        """Files present in the store's folders that no split lists."""
        listed = {p for paths in self.files.values() for p in paths}
        return tuple(p for p in self.present if p not in listed)

    def split(self, name: str) -> list[Path]:
        """The files of split ``name`` ([] when it lists none); DataError when a listed file does not exist
        or when the store has neither a split file nor a train subject file."""
        if self.split_file is None and not self.files["train"]:
            if not self.store.exists():
                raise DataError(f"{self.store}: no such file or folder")
            raise DataError(f"{self.store}: no {SPLIT_FILE} and no .h5 files: not a training store")
        if self.missing.get(name):
            raise DataError(self.missing[name][0])
        return list(self.files.get(name, ()))


def _listing(split_file: Path) -> dict[str, list[str]]:
    try:
        listing = json.loads(split_file.read_text())
    except ValueError as e:
        raise DataError(f"{split_file}: not valid JSON ({e})") from None
    if not (isinstance(listing, dict) and all(isinstance(v, list) and all(isinstance(n, str) for n in v)
                                              for v in listing.values())):
        raise DataError(f"{split_file}: not a JSON object of lists of file names")
    return listing


def present_files(store: str | Path) -> tuple[Path, ...]:
    """Every ``*.h5`` in ``store``, ``store/train`` and ``store/test``, sorted."""
    store = Path(store)
    return tuple(sorted({*store.glob("*.h5"), *store.glob("train/*.h5"), *store.glob("test/*.h5")}))


def store_splits(store: str | Path) -> StoreSplits:
    """The subject files of the store folder ``store`` by split; DataError when its split file is malformed."""
    store = Path(store)
    present = present_files(store)
    split_file = store / SPLIT_FILE
    if not split_file.is_file():
        files = {"train": (*sorted(store.glob("*.h5")), *sorted(store.glob("train/*.h5"))),
                 "test": tuple(sorted(store.glob("test/*.h5")))}
        return StoreSplits(store, None, files, {}, present)
    found: dict[str, tuple[Path, ...]] = {}
    missing: dict[str, tuple[str, ...]] = {}
    for key, names in _listing(split_file).items():
        paths, lost = [], []
        for name in names:
            candidates = [store / key / name, store / name, store / f"xgaze_{name}"]
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                lost.append(f"{split_file}: lists '{name}' under '{key}' but no such file exists "
                            f"(looked for {', '.join(str(c) for c in candidates)})")
            else:
                paths.append(path)
        found[key], missing[key] = tuple(paths), tuple(lost)
    return StoreSplits(store, split_file, found, missing, present)
