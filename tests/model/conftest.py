"""Fixtures for model tests: a small canonical dataset built from the real FERPlus pull."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferflow.canonical import Split, write_dataset
from ferflow.config import LabelScheme, get_class_set
from ferflow.labels import targets_for_votes


def _read_split(folder: Path, limit: int) -> Split:
    class_set = get_class_set("ferplus8")
    with open(folder / "label.csv", newline="") as f:
        rows = [r for r in csv.reader(f) if r][: limit * 2]
    votes = np.array([[int(v) for v in r[2:12]] for r in rows], dtype=np.int16)
    targets, keep = targets_for_votes(votes, LabelScheme.MAJORITY, class_set)
    idx = np.flatnonzero(keep)[:limit]
    targets = targets[:limit]
    pixels = np.stack([np.asarray(Image.open(folder / rows[i][0]).convert("L"), dtype=np.uint8) for i in idx])
    return Split(
        pixels=pixels,
        votes=votes[idx],
        target=targets.astype(np.float32),
        label=targets.argmax(1).astype(np.int16),
        source=np.array([rows[i][0] for i in idx]),
        content_hash=np.array([hashlib.sha256(p.tobytes()).hexdigest()[:16] for p in pixels]),
    )


@pytest.fixture(scope="session")
def small_dataset(ferplus_dir: Path, tmp_path_factory) -> Path:
    """~800 train / 300 valid real FERPlus faces in canonical form (majority scheme)."""
    out = tmp_path_factory.mktemp("canonical") / "small"
    splits = {
        "train": _read_split(ferplus_dir / "FER2013Train", 800),
        "valid": _read_split(ferplus_dir / "FER2013Valid", 300),
    }
    meta = {
        "classes": list(get_class_set("ferplus8").classes),
        "class_set": "ferplus8",
        "label_scheme": "majority",
        "source": str(ferplus_dir),
        "source_version": "test-subset",
        "splits": {k: {"n": len(v)} for k, v in splits.items()},
    }
    return write_dataset(out, splits, meta)
