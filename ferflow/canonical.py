"""The canonical dataset: one ``<split>.npz`` per split plus ``dataset.json``.

Every ingest layout ends here and every trainer starts here. Arrays per split:

- ``pixels``        uint8  (N, 48, 48) grayscale faces
- ``votes``         int16  (N, 10) FERPlus vote counts, ``-1`` where the source has no votes
- ``target``        float32 (N, C) label distribution of the chosen scheme over the class set
- ``label``         int16  (N,) index of the majority class in the class set
- ``source``        str    (N,) source file name (or ``row<k>`` for CSV rows)
- ``content_hash``  str    (N,) sha256 prefix of the 48x48 pixels (duplicate/leakage key)
- ``dataset``       str    (N,) the source dataset a row came from (``ferplus``, ``photos``, ...)

``dataset.json`` holds the classes, the label scheme and, under ``sources``, each source
dataset's path, layout, DVC version, classes and gate summary. A dataset written before
``dataset`` existed reads as one source named by its ``source`` folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferflow.config import CANONICAL_FORMAT_VERSION, SPLIT_ORDER

META_FILE = "dataset.json"


@dataclass
class Split:
    pixels: np.ndarray
    votes: np.ndarray
    target: np.ndarray
    label: np.ndarray
    source: np.ndarray
    content_hash: np.ndarray
    dataset: np.ndarray | None = None  # None: one unnamed source (filled in by CanonicalDataset.load)

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, index: np.ndarray) -> Split:
        return Split(**{k: v[index] for k, v in self.arrays().items()})

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "pixels": self.pixels,
            "votes": self.votes,
            "target": self.target,
            "label": self.label,
            "source": self.source,
            "content_hash": self.content_hash,
        }
        if self.dataset is not None:
            arrays["dataset"] = self.dataset
        return arrays

    def datasets(self) -> list[str]:
        """The source datasets present, in order of first appearance."""
        if self.dataset is None:
            return []
        names, first = np.unique(self.dataset, return_index=True)
        return [str(n) for n in names[np.argsort(first)]]

    def first_source(self) -> tuple[str | None, Split]:
        """The first source dataset's name and rows (the whole split when it has no sources)."""
        names = self.datasets()
        return (names[0], self.of_dataset(names[0])) if names else (None, self)

    def of_dataset(self, name: str) -> Split:
        """The rows of one source dataset."""
        return self.subset(np.flatnonzero(self.dataset == name))


@dataclass
class CanonicalDataset:
    root: Path
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLIT_ORDER if s in self.meta["splits"]]

    def load(self, split: str) -> Split:
        if split not in self.meta["splits"]:
            raise KeyError(f"{self.root}: no split {split!r}; it has {self.splits}")
        with np.load(self.root / f"{split}.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if "dataset" not in arrays:
            arrays["dataset"] = np.full(len(arrays["label"]), self.default_source)
        return Split(**arrays)

    @property
    def default_source(self) -> str:
        """The source name of a single-source dataset: its first ``sources`` key, or its folder."""
        sources = self.meta.get("sources") or {}
        return next(iter(sources), None) or Path(str(self.meta.get("source", "data"))).name


def open_dataset(root: str | Path) -> CanonicalDataset:
    """Open a canonical dataset directory written by :func:`write_dataset`."""
    root = Path(root)
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{root} is not a canonical ferflow dataset (no {META_FILE}); "
            "create one with `ferflow data ingest`"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != CANONICAL_FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: format_version {meta.get('format_version')} is not "
            f"{CANONICAL_FORMAT_VERSION}; re-run `ferflow data ingest`"
        )
    return CanonicalDataset(root, meta)


def write_dataset(out: str | Path, splits: dict[str, Split], meta: dict[str, Any]) -> Path:
    """Write all splits and the metadata atomically: ``out`` is either the old or the new dataset.

    Files go to a temporary sibling directory first, which then replaces ``out`` with a rename,
    so an interrupted ingest never leaves a half-written dataset behind.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, split in splits.items():
            np.savez(tmp / f"{name}.npz", **split.arrays())
        meta = {**meta, "format_version": CANONICAL_FORMAT_VERSION}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
