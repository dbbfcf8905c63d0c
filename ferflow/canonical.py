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

:func:`write_dataset` writes into a temporary sibling folder ``.<name>.<8 characters>`` and
renames it over the dataset; see there for how the folders of killed writers are cleaned up.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferflow.config import CANONICAL_FORMAT_VERSION, SPLIT_ORDER

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: stale temporary folders go by age alone
    fcntl = None  # type: ignore[assignment]

META_FILE = "dataset.json"
WRITER_LOCK = ".writing"  # in a temporary folder while its writer runs; that writer holds a flock on it
STALE_AFTER_S = 3600.0  # a temporary folder without a lock file, untouched this long, is abandoned


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

    Files go to a temporary sibling folder first, which then replaces ``out`` with a rename, so an
    interrupted ingest never leaves a half-written dataset behind. The folder is created with
    mode 0777 less the umask (0755 under the usual 022), like any folder the user makes.

    A writer killed outright (``kill -9``, out of memory) leaves its temporary folder behind; each
    successful write then removes the abandoned ones of ``out`` (:func:`remove_abandoned`).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_temp(out)
    lock = None
    try:
        lock = _hold_lock(tmp)
        for name, split in splits.items():
            np.savez(tmp / f"{name}.npz", **split.arrays())
        meta = {**meta, "format_version": CANONICAL_FORMAT_VERSION}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        (tmp / WRITER_LOCK).unlink()  # not part of the dataset; the lock stays held until the rename
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
    finally:
        if lock is not None:
            os.close(lock)
    remove_abandoned(out)
    return out


def _temp_name(out: Path) -> re.Pattern[str]:
    """Names of ``out``'s temporary folders: ``.<name>.`` and 8 characters (hex here; the
    ``tempfile.mkdtemp`` names of earlier versions too). ``.<name>.old`` is not one."""
    return re.compile(re.escape(f".{out.name}.") + r"[a-z0-9_]{8}")


def _make_temp(out: Path) -> Path:
    """A new empty temporary folder next to ``out``, mode 0777 less the umask."""
    for _ in range(100):
        tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}"
        try:
            tmp.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary folder name", str(out.parent / f".{out.name}.*"))


def _hold_lock(tmp: Path) -> int:
    """Create ``tmp``'s lock file and hold an exclusive flock on it (the returned descriptor):
    the kernel releases it when this process ends, however it ends."""
    fd = os.open(tmp / WRITER_LOCK, os.O_CREAT | os.O_WRONLY, 0o666)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_abandoned(folder: Path, now: float | None = None) -> bool:
    """Whether the temporary folder ``folder`` belongs to no running writer.

    Its lock file exists and nobody holds its lock: the writer died (the kernel released the
    lock). No lock file: abandoned only when the folder has not changed for
    :data:`STALE_AFTER_S` (a writer between creating the folder and its lock file, or between
    removing the lock file and the rename, changed it a moment ago; an older ferflow wrote none).
    """
    now = time.time() if now is None else now
    try:
        fd = os.open(folder / WRITER_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        try:
            return now - folder.stat().st_mtime > STALE_AFTER_S
        except FileNotFoundError:  # renamed or removed meanwhile
            return False
    except OSError:
        return False
    try:
        if fcntl is None:  # pragma: no cover
            return now - os.fstat(fd).st_mtime > STALE_AFTER_S
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its writer is alive
            return False
        return True
    finally:
        os.close(fd)  # releases the lock taken to test it


def remove_abandoned(out: str | Path) -> list[Path]:
    """Remove the temporary folders that killed writers of ``out`` left next to it: folders named
    like ``out``'s temporary folders (``.<name>.<8 characters>``) that :func:`is_abandoned` says
    no running writer owns. Another writer's live folder, and anything else, stay. Returns what
    was removed."""
    out = Path(out)
    pattern = _temp_name(out)
    removed = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        ours = pattern.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()
        if ours and is_abandoned(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
