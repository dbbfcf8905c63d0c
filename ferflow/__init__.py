"""ferflow: facial emotion recognition, from versioned data to a served model.

``ferflow.analyze(path_or_paths)`` returns a pandas DataFrame of emotions per face for photos,
folders and videos; ``ferflow.iter_rows`` streams the same rows (see :mod:`ferflow.footage`).
"""

from __future__ import annotations

from typing import Any


def analyze(*args: Any, **kwargs: Any):
    """:func:`ferflow.footage.analyze`, imported on first use so ``import ferflow`` stays light."""
    from ferflow.footage import analyze as run

    return run(*args, **kwargs)


def iter_rows(*args: Any, **kwargs: Any):
    """:func:`ferflow.footage.iter_rows`, imported on first use."""
    from ferflow.footage import iter_rows as run

    return run(*args, **kwargs)
