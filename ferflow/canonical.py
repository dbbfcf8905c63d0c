"""The canonical dataset: one ``<split>.npz`` per split plus ``dataset.json``.

Every ingest layout ends here and every trainer starts here. Arrays per split:

- ``pixels``        uint8  (N, 48, 48) grayscale faces
- ``votes``         int16  (N, 10) FERPlus vote counts, ``-1`` where the source has no votes
- ``target``        float32 (N, C) label distribution of the chosen scheme over the class set
- ``label``         int16  (N,) index of the majority class in the class set
- ``source``        str    (N,) source file name (or ``row<k>`` for CSV rows)
- ``content_hash``  str    (N,) sha256 prefix of the 48x48 pixels (duplicate/leakage key)
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

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, index: np.ndarray) -> Split:
        return Split(**{k: v[index] for k, v in self.arrays().items()})

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "pixels": self.pixels,
            "votes": self.votes,
            "target": self.target,
            "label": self.label,
            "source": self.source,
            "content_hash": self.content_hash,
        }


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
            return Split(**{k: z[k] for k in z.files})


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
