"""The ingest table: what the readers in :mod:`ferflow.data` produce and the gate in
:mod:`ferflow.validate` checks. Both import it; ingestion calls the gate, never the reverse."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ferflow.config import SPLIT_ORDER, SourceFormat

NO_FACE = "no face found"  # the error of a photo where face detection finds no face


@dataclass
class IngestTable:
    """The per-image table (one row per record) plus the pixel and vote arrays it indexes."""

    frame: pd.DataFrame
    pixels: np.ndarray  # (N, 48, 48) uint8; zeros where unreadable
    votes: np.ndarray  # (N, 10) int16; -1 where the source has no votes
    targets: np.ndarray  # (N, C) float32; zeros where the row is dropped by the scheme
    source_format: SourceFormat
    source_path: str
    notes: list[str] = field(default_factory=list)


def split_rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else -1


def describe_counts(frame: pd.DataFrame, classes: list[str]) -> dict[str, dict[str, int]]:
    """Per-split class counts over rows with a label in the class set."""
    out: dict[str, dict[str, int]] = {}
    for split, group in frame[frame["label"].isin(classes)].groupby("split"):
        counts = group["label"].value_counts()
        out[str(split)] = {c: int(counts.get(c, 0)) for c in classes}
    return out
