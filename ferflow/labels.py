"""FERPlus label schemes (Barsoum et al. 2016): ten crowd votes to a training target.

The rules follow Microsoft's reference reader for FERPlus:

1. outlier removal: an emotion with a single vote is treated as noise and zeroed;
2. ``majority``: the top emotion must hold more than half of the remaining votes;
3. ``probability`` / ``crossentropy``: take emotions in decreasing vote order until 75 % of the
   votes are covered (at most 3); keep the image only if more than half are covered;
4. ``multi_target``: every emotion with at least 30 % of the votes is a target;
5. an image whose result is ``unknown`` or ``NF`` (not a face) is dropped.

:func:`scheme_distribution` returns the normalised 10-way distribution or ``None`` when the
image is dropped; :func:`to_class_set` then maps the 8 emotions onto a configured class set.
"""

from __future__ import annotations

import numpy as np

from ferflow.config import FERPLUS_EMOTIONS, ClassSet, LabelScheme

_N_EMOTIONS = len(FERPLUS_EMOTIONS)  # votes 8 and 9 are unknown and NF


def drop_single_votes(votes: np.ndarray) -> np.ndarray:
    """Zero every count of exactly one vote: a lone vote is the reference reader's outlier."""
    cleaned = np.asarray(votes, dtype=np.float64).copy()
    cleaned[cleaned <= 1] = 0.0
    return cleaned


def scheme_distribution(votes: np.ndarray, scheme: LabelScheme) -> np.ndarray | None:
    """Ten-way label distribution of one vote row under ``scheme``; ``None`` means drop the image."""
    raw = drop_single_votes(votes)
    total = raw.sum()
    if total <= 0:
        return None
    out = np.zeros_like(raw)

    if scheme is LabelScheme.MAJORITY:
        peak = raw.max()
        if peak <= 0.5 * total:
            return None
        out[int(np.argmax(raw))] = peak
    elif scheme in (LabelScheme.PROBABILITY, LabelScheme.CROSSENTROPY):
        remaining = raw.copy()
        covered, count = 0.0, 0
        while covered < 0.75 * total and count < 3:
            peak = remaining.max()
            tied = np.flatnonzero(remaining == peak)
            stop = False
            for i in tied:
                out[i] = peak
                remaining[i] = 0.0
                covered += peak
                count += 1
                if i >= _N_EMOTIONS:
                    # unknown/NF reached: keep it only if nothing was taken before it
                    stop = True
                    if out.sum() > peak:
                        out[i] = 0.0
                        count -= 1
                    break
            if stop:
                break
        if out.sum() <= 0.5 * total or count > 3:
            return None
    elif scheme is LabelScheme.MULTI_TARGET:
        out[raw >= 0.3 * total] = raw[raw >= 0.3 * total]
        if out.sum() <= 0.5 * total:
            return None
    else:  # pragma: no cover - enum is closed
        raise ValueError(f"unknown label scheme {scheme!r}")

    if int(np.argmax(out)) >= _N_EMOTIONS:
        return None  # unknown or not-a-face wins
    return out / out.sum()


def to_class_set(distribution: np.ndarray, class_set: ClassSet) -> np.ndarray | None:
    """Map a 10-way distribution onto ``class_set``; ``None`` when its top emotion is outside it.

    Mass on emotions outside the set (and on unknown/NF) is removed and the rest renormalised.
    """
    top = FERPLUS_EMOTIONS[int(np.argmax(distribution[:_N_EMOTIONS]))]
    if class_set.index_of(top) is None:
        return None
    out = np.zeros(len(class_set.classes), dtype=np.float64)
    for i, emotion in enumerate(FERPLUS_EMOTIONS):
        j = class_set.index_of(emotion)
        if j is not None:
            out[j] += distribution[i]
    return out / out.sum()


def hard_label_votes(emotion: str, annotators: int = 10) -> np.ndarray:
    """Vote row for a source with a single hard label: all annotators agree.

    Not used as votes in the canonical data (hard-label sources store ``-1`` votes); it lets
    the same scheme code produce one-hot targets for them.
    """
    votes = np.zeros(len(FERPLUS_EMOTIONS) + 2, dtype=np.float64)
    votes[FERPLUS_EMOTIONS.index(emotion)] = annotators
    return votes


def targets_for_votes(
    votes: np.ndarray, scheme: LabelScheme, class_set: ClassSet
) -> tuple[np.ndarray, np.ndarray]:
    """Targets (N, C) for kept rows and the boolean keep mask (N,).

    Ten votes allow few distinct rows (a few thousand in FERPlus's 28k), so each distinct row
    is resolved once: this runs at the start of every training and tuning trial.
    """
    votes = np.asarray(votes)
    if len(votes) == 0:
        return np.zeros((0, len(class_set.classes)), dtype=np.float32), np.zeros(0, dtype=bool)
    rows, inverse = np.unique(votes, axis=0, return_inverse=True)
    row_keep = np.zeros(len(rows), dtype=bool)
    row_targets = np.zeros((len(rows), len(class_set.classes)), dtype=np.float32)
    for k, row in enumerate(rows):
        dist = scheme_distribution(row, scheme)
        if dist is None:
            continue
        mapped = to_class_set(dist, class_set)
        if mapped is None:
            continue
        row_keep[k] = True
        row_targets[k] = mapped
    keep = row_keep[inverse]
    return row_targets[inverse[keep]], keep
