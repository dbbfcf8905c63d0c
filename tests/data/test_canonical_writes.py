"""How ``write_dataset`` leaves the file system: folder modes, and the temporary folders of
writers that were killed (``kill -9`` during ``ferflow data ingest``)."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ferflow.canonical import META_FILE, Split, open_dataset, write_dataset

ROOT = Path(__file__).resolve().parents[2]


def tiny_split(n: int = 4) -> Split:
    return Split(
        pixels=np.zeros((n, 48, 48), np.uint8),
        votes=np.full((n, 10), -1, np.int16),
        target=np.eye(8, dtype=np.float32)[np.arange(n) % 8],
        label=(np.arange(n) % 8).astype(np.int16),
        source=np.array([f"row{i}" for i in range(n)]),
        content_hash=np.array([f"h{i}" for i in range(n)]),
    )


META = {"classes": [f"c{i}" for i in range(8)], "splits": {"train": {"n": 4}, "valid": {"n": 4}}}


def write(out: Path) -> Path:
    return write_dataset(out, {"train": tiny_split(), "valid": tiny_split()}, META)


def temps(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700)])
def test_dataset_folder_mode_is_0777_less_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        out = write(tmp_path / "canon")
        rewritten = write(out)  # replacing an existing dataset gives the same mode
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert stat.S_IMODE(rewritten.stat().st_mode) == mode
    assert sorted(p.name for p in out.iterdir()) == [META_FILE, "train.npz", "valid.npz"]


def test_successful_write_removes_the_temp_folder_of_a_killed_writer(tmp_path: Path) -> None:
    out = tmp_path / "canon_full"
    killed = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from ferflow import canonical
        from tests.data.test_canonical_writes import META, tiny_split

        real = np.savez

        def savez_then_die(path, **arrays):  # kill -9 once the first split is on disk
            real(path, **arrays)
            os.kill(os.getpid(), signal.SIGKILL)

        canonical.np.savez = savez_then_die
        canonical.write_dataset({str(out)!r}, {{"train": tiny_split(), "valid": tiny_split()}}, META)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", killed], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == -9, res.stderr
    (left,) = temps(out)  # the killed run's folder, with a partial dataset
    assert (out.parent / left / "train.npz").is_file() and not (out.parent / left / META_FILE).exists()
    assert not out.exists()

    write(out)
    assert temps(out) == []
    assert open_dataset(out).splits == ["train", "valid"]


def test_only_abandoned_temp_folders_are_removed(tmp_path: Path) -> None:
    from ferflow.canonical import WRITER_LOCK

    out = write(tmp_path / "canon")
    hour_ago = time.time() - 2 * 3600

    def folder(name: str, lock: bool = False, old: bool = False) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "train.npz").write_bytes(b"partial")
        if lock:
            (path / WRITER_LOCK).write_text("1\n")
        if old:
            os.utime(path, (hour_ago, hour_ago))
        return path

    live = folder(".canon.0a1b2c3d", lock=True, old=True)  # a writer still running: it holds the lock
    held = os.open(live / WRITER_LOCK, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    dead = folder(".canon.4e5f6a7b", lock=True)  # its writer died: nobody holds the lock
    fresh = folder(".canon.8c9d0e1f")  # no lock file, changed a moment ago: a writer just starting
    stale = folder(".canon.x_7k2p9q", old=True)  # no lock file, untouched for hours (tempfile's names)
    others = [folder(".other.0a1b2c3d", old=True), folder(".canon.oldest", old=True), folder("canon2")]
    try:
        write(out)
        assert live.is_dir() and fresh.is_dir() and all(p.is_dir() for p in others)
        assert not dead.exists() and not stale.exists()
    finally:
        os.close(held)  # the live writer ends without renaming its folder: now it is abandoned
    write(out)
    assert not live.exists() and fresh.is_dir()
    assert open_dataset(out).classes == META["classes"]
    assert np.array_equal(open_dataset(out).load("train").label, tiny_split().label)
