"""Ingestion: three real-world layouts into one per-image table, then into the canonical dataset.

Readers never raise on a bad image: they record what is wrong in the table so the validation
gate can name every offending file at once. Only a layout that cannot be read at all (no
split folders, no label file, a CSV without the right columns) raises :class:`IngestError`.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ferflow.canonical import Split, write_dataset
from ferflow.config import (
    CLASS_SYNONYMS,
    FER2013_CODES,
    FERPLUS_ANNOTATORS,
    FERPLUS_VOTE_COLUMNS,
    IMAGE_SIZE,
    SPLIT_ORDER,
    ClassSet,
    DataSource,
    IngestConfig,
    LabelScheme,
    SourceFormat,
    get_class_set,
)
from ferflow.labels import hard_label_votes, scheme_distribution, to_class_set
from ferflow.table import NO_FACE, IngestTable

if TYPE_CHECKING:
    from ferflow.validate import GateReport

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}

FERPLUS_SPLIT_DIRS = {"FER2013Train": "train", "FER2013Valid": "valid", "FER2013Test": "test"}
CSV_USAGE_SPLITS = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
FOLDER_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "valid",
    "valid": "valid",
    "validation": "valid",
    "test": "test",
    "testing": "test",
}


class IngestError(ValueError):
    """The source layout itself is unusable; the message names the path and what is missing."""


@dataclass
class ImageRecord:
    """One image as read from the source, before any label scheme or gate decision."""

    split: str
    source: str
    pixels: np.ndarray | None = None  # 48x48 uint8 when readable
    error: str | None = None  # why the image could not be used as read
    width: int | None = None
    height: int | None = None
    votes: np.ndarray | None = None  # ten FERPlus counts, or None for hard-label sources
    vote_error: str | None = None
    raw_label: str | None = None  # hard label as written in the source (folder name, code)


# --------------------------------------------------------------------------------------------
# Image decoding


def content_hash(pixels: np.ndarray) -> str:
    """Key for duplicate and leakage detection: identical faces give identical keys."""
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:20]


def to_canonical_pixels(image: Image.Image) -> np.ndarray:
    """Any size or colour to a 48x48 grayscale face: centre square crop, then area resize."""
    gray = image.convert("L")
    w, h = gray.size
    if (w, h) != (IMAGE_SIZE, IMAGE_SIZE):
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        gray = gray.crop((left, top, left + side, top + side)).resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX if side > IMAGE_SIZE else Image.BILINEAR
        )
    return np.asarray(gray, dtype=np.uint8)


def _face_pixels(data: bytes, name: str, record: ImageRecord) -> None:
    """A photo's face exactly as the server finds it: the server's decoder (EXIF orientation,
    16-bit PNGs, reduced-scale decoding of huge JPEGs, its limits), detector and FER framing.
    An image already 48x48 is a face crop as it stands. No face: ``error`` says so (never a
    centre crop)."""
    from ferflow.faces import main_face_crop, to_gray
    from ferflow.inference import ImageLimits, InferenceError
    from ferflow.inference import decode_image as decode_upload

    limits = ImageLimits()
    try:
        rgb, scale = decode_upload(data, limits, name=name, max_side=limits.detect_max_side)
    except InferenceError as exc:
        record.error = exc.message
        return
    record.height, record.width = (round(side * scale) for side in rgb.shape[:2])
    if rgb.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE):
        record.pixels = to_gray(rgb)
        return
    crop = main_face_crop(rgb)
    if crop is None:
        record.error = NO_FACE
    else:
        record.pixels = crop


def decode_image(path: Path, record: ImageRecord, detect: bool = False) -> None:
    """Fill ``record`` from an image file; a missing, truncated or non-image file sets ``error``.

    ``detect``: find the face (photos); otherwise the image is the face, centre-square cropped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        record.error = "file missing"
        return
    except OSError as exc:
        record.error = f"unreadable: {exc.strerror or exc}"
        return
    if not data:
        record.error = "empty file"
        return
    if detect:
        _face_pixels(data, path.name, record)
        return
    try:
        with Image.open(io.BytesIO(data)) as image:
            record.width, record.height = image.size
            image.load()  # forces a full decode: truncated files fail here, not later
            record.pixels = to_canonical_pixels(image)
    except UnidentifiedImageError:
        record.error = "not an image"
    except (OSError, SyntaxError, ValueError) as exc:
        record.error = f"corrupt image: {exc}"


# --------------------------------------------------------------------------------------------
# Readers: each yields ImageRecords


def _parse_votes(cells: list[str]) -> tuple[np.ndarray | None, str | None]:
    if len(cells) != len(FERPLUS_VOTE_COLUMNS):
        return None, f"expected {len(FERPLUS_VOTE_COLUMNS)} vote counts, found {len(cells)}"
    try:
        votes = np.array([int(c) for c in cells], dtype=np.int16)
    except ValueError:
        return None, f"vote counts are not integers: {','.join(cells)}"
    if (votes < 0).any():
        return None, f"negative vote count: {','.join(cells)}"
    return votes, None


def read_ferplus(src: Path) -> Iterator[ImageRecord]:
    """FERPlus layout: ``src/FER2013{Train,Valid,Test}/`` with a headerless ``label.csv``."""
    split_dirs = [(src / d, s) for d, s in FERPLUS_SPLIT_DIRS.items() if (src / d).is_dir()]
    if not split_dirs:
        raise IngestError(
            f"{src}: no FERPlus split folders; expected one or more of {sorted(FERPLUS_SPLIT_DIRS)}"
        )
    for folder, split in split_dirs:
        label_file = folder / "label.csv"
        if not label_file.is_file():
            raise IngestError(f"{folder}: missing label.csv (headerless: name, box, 10 votes)")
        labelled: set[str] = set()
        with label_file.open(newline="") as fh:
            for line_no, row in enumerate(csv.reader(fh), start=1):
                if not row or not row[0].strip():
                    continue
                name = row[0].strip()
                labelled.add(name)
                record = ImageRecord(split=split, source=f"{folder.name}/{name}")
                record.votes, record.vote_error = _parse_votes(row[2:])
                if record.vote_error:
                    record.vote_error = f"{label_file.name} line {line_no}: {record.vote_error}"
                decode_image(folder / name, record)
                yield record
        for path in sorted(folder.iterdir()):
            if path.name != "label.csv" and path.name not in labelled and not path.name.startswith("."):
                yield ImageRecord(
                    split=split,
                    source=f"{folder.name}/{path.name}",
                    error="file has no row in label.csv",
                )


def read_fer2013_csv(src: Path) -> Iterator[ImageRecord]:
    """Kaggle FER2013 CSV: ``emotion,pixels,Usage`` with 2304 space-separated pixels per row."""
    csv_path = src
    if src.is_dir():
        candidates = sorted(src.glob("*.csv"))
        if len(candidates) != 1:
            raise IngestError(f"{src}: expected exactly one .csv file, found {len(candidates)}")
        csv_path = candidates[0]
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"emotion", "pixels"} - set(reader.fieldnames or [])
        if missing:
            raise IngestError(
                f"{csv_path}: missing column(s) {sorted(missing)}; expected emotion,pixels,Usage"
            )
        for line_no, row in enumerate(reader, start=2):
            usage = (row.get("Usage") or "Training").strip()
            split = CSV_USAGE_SPLITS.get(usage)
            record = ImageRecord(split=split or usage, source=f"{csv_path.name}:{line_no}")
            if split is None:
                record.error = f"Usage {usage!r} is not one of {sorted(CSV_USAGE_SPLITS)}"
            code = (row.get("emotion") or "").strip()
            record.raw_label = (
                FER2013_CODES[int(code)] if code.isdigit() and int(code) < len(FER2013_CODES) else code
            )
            try:
                values = np.array((row.get("pixels") or "").split(), dtype=np.int64)
            except ValueError:
                record.error = "pixels are not integers"
                yield record
                continue
            side = round(float(np.sqrt(values.size)))
            record.width, record.height = (side, side) if side * side == values.size else (values.size, 1)
            if values.size != IMAGE_SIZE * IMAGE_SIZE:
                record.error = record.error or f"{values.size} pixels, expected {IMAGE_SIZE * IMAGE_SIZE}"
            elif values.min(initial=0) < 0 or values.max(initial=0) > 255:
                record.error = record.error or "pixel values outside 0..255"
            else:
                record.pixels = values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)
            yield record


def folder_splits(src: Path) -> list[tuple[Path, str]]:
    subdirs = [p for p in sorted(src.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    splits = [
        (p, FOLDER_SPLIT_NAMES[p.name.lower()]) for p in subdirs if p.name.lower() in FOLDER_SPLIT_NAMES
    ]
    if splits:
        return splits
    if subdirs:  # class folders directly under src: one split
        return [(src, "train")]
    raise IngestError(f"{src}: no class folders; expected e.g. train/angry/*.jpg or angry/*.jpg")


def read_folders(src: Path, detect: bool = True) -> Iterator[ImageRecord]:
    """Folder-per-class trees (``train/angry/x.jpg``) of photos of any size or colour: each goes
    through face detection and FER framing, as the server does (48x48 images are face crops);
    with ``detect=False`` every image is taken as a framed face crop."""
    for split_dir, split in folder_splits(src):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in sorted(class_dir.rglob("*")):
                if not path.is_file() or path.name.startswith("."):
                    continue
                record = ImageRecord(
                    split=split,
                    source=str(path.relative_to(src)),
                    raw_label=CLASS_SYNONYMS.get(class_dir.name.lower(), class_dir.name),
                )
                decode_image(path, record, detect=detect)
                yield record


READERS = {
    SourceFormat.FERPLUS: read_ferplus,
    SourceFormat.FER2013_CSV: read_fer2013_csv,
    SourceFormat.FOLDERS: read_folders,
}


def infer_format(src: Path) -> SourceFormat:
    """The layout of ``src``: FERPlus split folders, a FER2013 CSV, else a folder tree of photos."""
    if src.is_file() or (src.is_dir() and any(src.glob("*.csv")) and not any(src.glob("*/"))):
        return SourceFormat.FER2013_CSV
    if any((src / d).is_dir() for d in FERPLUS_SPLIT_DIRS):
        return SourceFormat.FERPLUS
    return SourceFormat.FOLDERS


def count_hint(src: Path, source_format: SourceFormat) -> int | None:
    """Cheap estimate of the number of images, for the progress bar."""
    try:
        if source_format is SourceFormat.FERPLUS:
            return sum(
                sum(1 for _ in (src / d / "label.csv").open())
                for d in FERPLUS_SPLIT_DIRS
                if (src / d / "label.csv").is_file()
            )
        if source_format is SourceFormat.FOLDERS:
            return sum(1 for p in src.rglob("*") if p.is_file())
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------------------------
# Table building


def read_source(
    src: str | Path, source_format: SourceFormat | str, progress: bool = True, detect_faces: bool = True
) -> list[ImageRecord]:
    src = Path(src)
    source_format = SourceFormat(source_format)
    if not src.exists():
        raise IngestError(f"{src}: no such file or directory")
    if source_format is SourceFormat.FOLDERS:
        records: Iterable[ImageRecord] = read_folders(src, detect_faces)
    else:
        records = READERS[source_format](src)
    if progress:
        records = tqdm(records, total=count_hint(src, source_format), desc=f"reading {src.name}", unit="img")
    return list(records)


def build_table(
    records: list[ImageRecord],
    scheme: LabelScheme,
    class_set: ClassSet,
    source_format: SourceFormat,
    source_path: str,
) -> IngestTable:
    """Per-image table the gate checks: stats, vote sums, scheme labels, content hashes."""
    n = len(records)
    if n == 0:
        raise IngestError(f"{source_path}: no images found")
    pixels = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    votes = np.full((n, len(FERPLUS_VOTE_COLUMNS)), -1, dtype=np.int16)
    targets = np.zeros((n, len(class_set.classes)), dtype=np.float32)
    rows = []
    for k, rec in enumerate(records):
        readable = rec.pixels is not None and rec.error is None
        if readable:
            pixels[k] = rec.pixels
        row = {
            "split": rec.split,
            "source": rec.source,
            "readable": readable,
            "error": rec.error,
            "width": rec.width,
            "height": rec.height,
            "pixel_mean": float(rec.pixels.mean()) if readable else np.nan,
            "pixel_std": float(rec.pixels.std()) if readable else np.nan,
            "content_hash": content_hash(rec.pixels) if readable else None,
            "vote_sum": np.nan,
            "raw_label": rec.raw_label,
            "label": None,
            "scheme_drop": None,
        }
        dist: np.ndarray | None = None
        if rec.votes is not None or rec.vote_error is not None:
            if rec.vote_error:
                row["vote_sum"] = -1.0  # fails the annotator-count expectation by construction
                row["error"] = row["error"] or rec.vote_error
            else:
                votes[k] = rec.votes
                row["vote_sum"] = float(rec.votes.sum())
                dist = scheme_distribution(rec.votes, scheme)
                if dist is None:
                    row["scheme_drop"] = f"{scheme.value}: unknown, not-a-face or no agreement"
        elif rec.raw_label is not None:
            if rec.raw_label in class_set.mapping or rec.raw_label in CLASS_SYNONYMS.values():
                dist = scheme_distribution(hard_label_votes(rec.raw_label), scheme)
            else:
                row["label"] = rec.raw_label  # outside every known class: the gate names it
        if dist is not None:
            mapped = to_class_set(dist, class_set)
            if mapped is None:
                row["scheme_drop"] = f"class set {class_set.name}: emotion outside the set"
            else:
                targets[k] = mapped
                row["label"] = class_set.classes[int(np.argmax(mapped))]
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["annotators"] = np.where(frame["vote_sum"].notna(), FERPLUS_ANNOTATORS, np.nan)
    hashed = frame["content_hash"].notna()
    frame["hash_splits"] = np.nan
    frame.loc[hashed, "hash_splits"] = frame[hashed].groupby("content_hash")["split"].transform("nunique")
    frame["hash_copies"] = np.nan
    frame.loc[hashed, "hash_copies"] = frame[hashed].groupby("content_hash")["split"].transform("size")
    return IngestTable(frame, pixels, votes, targets, source_format, source_path)


# --------------------------------------------------------------------------------------------
# Ingest: read, gate, write


@dataclass
class IngestResult:
    splits: dict[str, Split]
    meta: dict
    report: GateReport  # the last source's; ``reports`` has every source's
    reports: dict[str, GateReport] = field(default_factory=dict)


def ingest_to_memory(
    src: str | Path,
    config: IngestConfig | None = None,
    report_dir: str | Path | None = None,
    progress: bool = True,
    name: str | None = None,
) -> IngestResult:
    """Read ``src``, run the gate, and return the canonical splits without writing them. Rows
    keep ``name`` (default: the folder's name) as their ``dataset``.

    Raises :class:`~ferflow.validate.GateFailed` (carrying the report) when the gate fails.
    """
    from ferflow.validate import GateFailed, run_gate

    config = config or IngestConfig()
    class_set = get_class_set(config.class_set)
    src = Path(src)
    name = name or src.stem
    records = read_source(src, config.source_format, progress, config.detect_faces)
    table = build_table(records, config.label_scheme, class_set, SourceFormat(config.source_format), str(src))
    report, keep = run_gate(
        table, class_set, config.gate, report_dir, source_name=name, version=dvc_version_of(src)
    )
    if not report.passed:
        raise GateFailed(report)
    splits = _kept_splits(table, keep, name)
    source_meta = {
        "path": str(src),
        "source_format": SourceFormat(config.source_format).value,
        "version": dvc_version_of(src),
        "classes": sorted(
            {c for counts in report.summary["class_counts"].values() for c, n in counts.items() if n}
        ),
        "splits": {k: len(v) for k, v in splits.items()},
        "gate": {
            "passed": True,
            "dropped": {k: len(v) for k, v in report.dropped.items()},
            "duplicates": report.summary["duplicates"],
        },
    }
    meta = {
        "classes": list(class_set.classes),
        "class_set": class_set.name,
        "label_scheme": LabelScheme(config.label_scheme).value,
        "source_format": source_meta["source_format"],
        "source": str(src),
        "source_version": source_meta["version"],
        "splits": {
            split: {"n": len(s), "class_counts": report.summary["class_counts"].get(split, {})}
            for split, s in splits.items()
        },
        "gate": source_meta["gate"],
        "sources": {name: source_meta},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return IngestResult(splits, meta, report, {name: report})


def _kept_splits(table: IngestTable, keep: np.ndarray, name: str) -> dict[str, Split]:
    frame = table.frame
    splits: dict[str, Split] = {}
    for split in SPLIT_ORDER:
        idx = np.flatnonzero(keep & (frame["split"] == split).to_numpy())
        if idx.size == 0:
            continue
        target = table.targets[idx]
        splits[split] = Split(
            pixels=table.pixels[idx],
            votes=table.votes[idx],
            target=target,
            label=target.argmax(axis=1).astype(np.int16),
            source=frame["source"].to_numpy()[idx].astype(str),
            content_hash=frame["content_hash"].to_numpy()[idx].astype(str),
            dataset=np.full(idx.size, name),
        )
    return splits


def ingest_sources(
    sources: Sequence[DataSource],
    label_scheme: LabelScheme = LabelScheme.MAJORITY,
    class_set: str = "ferplus8",
    report_dir: str | Path | None = None,
    progress: bool = True,
    root: str | Path = ".",
    out: str | Path | None = None,
) -> IngestResult:
    """Several source datasets into one canonical dataset: each through its own gate (report in
    ``report_dir/<name>``), rows tagged with their source's name. A training image identical to
    another source's held-out image is dropped and counted (``cross_source_leaks``). With ``out``,
    the dataset is written there (atomically; a failed gate leaves ``out`` untouched)."""
    names = [s.name for s in sources]
    if not sources or len(set(names)) != len(names):
        raise IngestError(f"sources need distinct names, got {names}")
    paths = {s.name: Path(s.path) if Path(s.path).is_absolute() else Path(root) / s.path for s in sources}
    missing = [f"{name}={path}" for name, path in paths.items() if not path.exists()]
    if missing:  # before any source is read: a typo should not cost a full ingest
        raise IngestError(f"source folder(s) not found: {', '.join(missing)}")
    results = {}
    for source in sources:
        path = paths[source.name]
        config = IngestConfig(source.source_format, label_scheme, class_set, source.gate, source.detect_faces)
        reports = None if report_dir is None else Path(report_dir) / source.name
        results[source.name] = ingest_to_memory(path, config, reports, progress, name=source.name)
    splits, leaks = _merge_splits([r.splits for r in results.values()])
    first = next(iter(results.values())).meta
    meta = {
        **{k: first[k] for k in ("classes", "class_set", "label_scheme")},
        "source": "+".join(names),
        "source_format": "sources",
        "source_version": first["source_version"],
        "splits": {
            split: {"n": len(s), "class_counts": _class_counts(s, first["classes"])}
            for split, s in splits.items()
        },
        "sources": {
            s.name: results[s.name].meta["sources"][s.name]
            | {"weight": s.weight, "splits": _rows_of(splits, s.name)}
            for s in sources
        },
        "cross_source_leaks": leaks,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if out is not None:
        write_dataset(out, splits, meta)
    last = results[names[-1]].report
    return IngestResult(splits, meta, last, {n: r.report for n, r in results.items()})


def _rows_of(splits: dict[str, Split], name: str) -> dict[str, int]:
    """Rows per split of source ``name`` in the merged dataset."""
    counts = {split: int((s.dataset == name).sum()) for split, s in splits.items()}
    return {split: n for split, n in counts.items() if n}


def _class_counts(split: Split, classes: list[str]) -> dict[str, int]:
    counts = np.bincount(split.label.astype(int), minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts, strict=True)}


def _merge_splits(parts: list[dict[str, Split]]) -> tuple[dict[str, Split], int]:
    """Concatenate the sources' splits; drop training rows whose pixels another source holds in
    a held-out split."""
    merged: dict[str, Split] = {}
    for split in SPLIT_ORDER:
        pieces = [p[split] for p in parts if split in p]
        if pieces:
            merged[split] = Split(
                **{k: np.concatenate([piece.arrays()[k] for piece in pieces]) for k in pieces[0].arrays()}
            )
    train = merged.get("train")
    held_out: dict[str, set[str]] = {}  # content hash -> the sources holding it in a held-out split
    for split, s in merged.items():
        if split != "train":
            for h, d in zip(s.content_hash, s.dataset, strict=True):
                held_out.setdefault(str(h), set()).add(str(d))
    if train is None or not held_out:
        return merged, 0
    # within a source its own gate's leakage policy decided; here only another source's copy counts
    rows = zip(train.content_hash, train.dataset, strict=True)
    leak = np.array([bool(held_out.get(str(h), set()) - {str(d)}) for h, d in rows], bool)
    merged["train"] = train.subset(np.flatnonzero(~leak))
    return merged, int(leak.sum())


def ingest(
    src: str | Path,
    out: str | Path,
    config: IngestConfig | None = None,
    report_dir: str | Path | None = None,
    progress: bool = True,
) -> IngestResult:
    """Ingest ``src`` into the canonical dataset ``out``; a failed gate leaves ``out`` untouched."""
    result = ingest_to_memory(src, config, report_dir, progress)
    write_dataset(out, result.splits, result.meta)
    return result


def dvc_version_of(src: str | Path) -> str | None:
    """md5 of the DVC-tracked directory ``src`` lies in, read from the nearest ``*.dvc`` pointer."""
    src = Path(src).resolve()
    for parent in [src, *src.parents]:
        for pointer in parent.glob("*.dvc"):
            try:
                text = pointer.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                line = line.strip().lstrip("- ")
                if line.startswith("md5:"):
                    tracked = (pointer.parent / pointer.stem).resolve()
                    if src == tracked or tracked in src.parents:
                        return line.split(":", 1)[1].strip()
    return None
