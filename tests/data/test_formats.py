"""FER2013 CSV and folder-per-class layouts, built from real FERPlus faces and real photos."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferflow.config import GateConfig, IngestConfig, LabelScheme, SourceFormat
from ferflow.data import IngestError, ingest_to_memory
from ferflow.validate import GateFailed

pytestmark = pytest.mark.data

LENIENT = GateConfig(min_class_count=0)
USAGE = {"FER2013Train": "Training", "FER2013Valid": "PublicTest"}
FER2013_CODE = {
    "anger": 0,
    "disgust": 1,
    "fear": 2,
    "happiness": 3,
    "sadness": 4,
    "surprise": 5,
    "neutral": 6,
}
VOTE_ORDER = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]


def ferplus_rows(ferplus: Path, split: str, n: int) -> list[tuple[np.ndarray, str]]:
    """(pixels, majority emotion) for the first n FERPlus rows with a clear non-contempt winner."""
    out = []
    with (ferplus / split / "label.csv").open() as fh:
        for row in csv.reader(fh):
            votes = [int(v) for v in row[2:10]]
            emotion = VOTE_ORDER[int(np.argmax(votes))]
            if max(votes) >= 6 and emotion != "contempt":
                out.append((np.asarray(Image.open(ferplus / split / row[0])), emotion))
            if len(out) == n:
                break
    return out


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows(rows)


@pytest.fixture(scope="module")
def csv_rows(ferplus_dir: Path) -> list[tuple[str, str, str]]:
    rows = []
    for split, usage in USAGE.items():
        for pixels, emotion in ferplus_rows(ferplus_dir, split, 60):
            rows.append((str(FER2013_CODE[emotion]), " ".join(map(str, pixels.ravel())), usage))
    return rows


def test_fer2013_csv_ingests_with_hard_labels(csv_rows, tmp_path: Path) -> None:
    write_csv(tmp_path / "fer2013.csv", csv_rows)
    cfg = IngestConfig(source_format=SourceFormat.FER2013_CSV, class_set="fer2013", gate=LENIENT)
    result = ingest_to_memory(tmp_path / "fer2013.csv", cfg, progress=False)
    assert set(result.splits) == {"train", "valid"}
    train = result.splits["train"]
    assert len(train) == 60 and (train.votes == -1).all()
    assert set(np.unique(train.target)) <= {0.0, 1.0}  # hard labels give one-hot targets
    classes = result.meta["classes"]
    first_emotion = next(k for k, v in FER2013_CODE.items() if v == int(csv_rows[0][0]))
    assert classes[train.label[0]] == first_emotion
    np.testing.assert_array_equal(train.pixels[0].ravel(), np.array(csv_rows[0][1].split(), dtype=np.uint8))


def test_fer2013_csv_bad_rows_are_named(csv_rows, tmp_path: Path) -> None:
    rows = list(csv_rows)
    short = " ".join(rows[1][1].split()[:2300])
    rows[1] = (rows[1][0], short, rows[1][2])  # line 3: wrong size
    rows[2] = ("9", rows[2][1], rows[2][2])  # line 4: label outside the class set
    rows[3] = (rows[3][0], rows[3][1].replace(" ", " x", 1), rows[3][2])  # line 5: garbage pixel
    write_csv(tmp_path / "fer2013.csv", rows)
    cfg = IngestConfig(source_format=SourceFormat.FER2013_CSV, class_set="fer2013", gate=LENIENT)
    with pytest.raises(GateFailed) as failed:
        ingest_to_memory(tmp_path / "fer2013.csv", cfg, progress=False)
    named = {f.check: set(f.sources) for f in failed.value.report.findings}
    assert "fer2013.csv:3" in named["width"]
    assert named["label_in_class_set"] == {"fer2013.csv:4"}
    assert "fer2013.csv:5" in named["readable"]


def test_fer2013_csv_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("label,data\n1,2\n")
    with pytest.raises(IngestError, match="missing column"):
        ingest_to_memory(
            tmp_path / "x.csv", IngestConfig(source_format=SourceFormat.FER2013_CSV), progress=False
        )


@pytest.fixture()
def photo_tree(photos_dir: Path, tmp_path: Path) -> Path:
    """train/<class>/ and test/<class>/ from real photos, with tutorial-style class names."""
    folder_names = {
        "anger": "angry",
        "happiness": "happy",
        "sadness": "sad",
        "surprise": "Surprise",
        "neutral": "neutral",
        "fear": "fear",
        "disgust": "disgust",
        "contempt": "contempt",
    }
    with (photos_dir / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for k, row in enumerate(rows):
        split = "test" if k % 6 == 0 else "train"
        dest = tmp_path / "tree" / split / folder_names[row["emotion"]]
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(photos_dir / row["image"], dest / row["image"])
    return tmp_path / "tree"


def test_folders_any_size_and_colour_to_48_gray(photo_tree: Path) -> None:
    cfg = IngestConfig(source_format=SourceFormat.FOLDERS, gate=LENIENT)
    result = ingest_to_memory(photo_tree, cfg, progress=False)
    train = result.splits["train"]
    assert train.pixels.shape[1:] == (48, 48) and train.pixels.dtype == np.uint8
    assert len(train) + len(result.splits["test"]) == 48
    # synonyms: "angry" and "Surprise" folders land in FERPlus class names
    by_source = dict(zip(train.source, train.label, strict=True))
    angry = next(s for s in by_source if s.startswith("train/angry/"))
    assert result.meta["classes"][by_source[angry]] == "anger"


def test_folders_clinical_subset_drops_other_classes(photo_tree: Path) -> None:
    cfg = IngestConfig(source_format=SourceFormat.FOLDERS, class_set="clinical4", gate=LENIENT)
    result = ingest_to_memory(photo_tree, cfg, progress=False)
    assert result.meta["classes"] == ["neutral", "happiness", "sadness", "anger"]
    assert len(result.splits["train"]) + len(result.splits["test"]) == 24  # 4 classes x 6 photos


def test_folders_unknown_class_and_non_image_are_named(photo_tree: Path) -> None:
    bored = photo_tree / "train" / "bored"
    bored.mkdir()
    shutil.copy(next((photo_tree / "train" / "happy").iterdir()), bored / "b.jpg")
    (photo_tree / "train" / "sad" / "readme.jpg").write_text("not a picture")
    cfg = IngestConfig(source_format=SourceFormat.FOLDERS, label_scheme=LabelScheme.MAJORITY, gate=LENIENT)
    with pytest.raises(GateFailed) as failed:
        ingest_to_memory(photo_tree, cfg, progress=False)
    named = {f.check: set(f.sources) for f in failed.value.report.findings}
    assert named["label_in_class_set"] == {"train/bored/b.jpg"}
    assert named["readable"] == {"train/sad/readme.jpg"}
