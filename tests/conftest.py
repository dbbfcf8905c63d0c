"""Shared fixtures: the project root, the DVC-pulled FERPlus data and the shared sample photos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FERPLUS = ROOT / "data" / "ferplus"
PHOTOS = SHARED / "samples" / "photos"


@pytest.fixture(scope="session")
def ferplus_dir() -> Path:
    """The real FERPlus pull; pulled through DVC on first use (the test command also pulls)."""
    if not (FERPLUS / "FER2013Valid" / "label.csv").is_file():
        if not (SHARED / "dvc-remote").is_dir():
            pytest.skip(f"no FERPlus data at {FERPLUS} and no DVC remote at {SHARED / 'dvc-remote'}")
        from ferflow.versioning import pull

        pull(ROOT)
    return FERPLUS


@pytest.fixture(scope="session")
def data_version() -> str:
    """The md5 of data/ that the project's data.dvc pins."""
    import yaml

    return yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"]


@pytest.fixture(scope="session")
def photo_pool(ferplus_dir: Path) -> Path:
    """data/photos: the labelled photo pool of the DVC data (pulled with FERPlus)."""
    pool = ROOT / "data" / "photos"
    if not (pool / "valid").is_dir():
        pytest.skip(f"no photo pool at {pool}: data.dvc pins a version without data/photos")
    return pool


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    if not (PHOTOS / "labels.csv").is_file():
        pytest.skip(f"no sample photos at {PHOTOS}")
    return PHOTOS


@pytest.fixture(autouse=True, scope="session")
def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
