"""Several source datasets into one canonical dataset: FERPlus and a photo tree (real data)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferflow.canonical import open_dataset
from ferflow.config import PHOTO_GATE, DataSource, SourceFormat
from ferflow.data import ingest_sources
from ferflow.validate import GateFailed
from tests.data.test_gate import LENIENT, copy_subset

PHOTO_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust")


def photo_tree(pool: Path, dest: Path, per_class: int = 22) -> Path:
    """The first photos with a detectable face of each class of the pool's train and valid
    splits, plus one photo without a face in it (a plain gradient)."""
    from ferflow.faces import main_face_crop

    for split, n in (("train", per_class), ("valid", 4)):
        for cls in PHOTO_CLASSES:
            (dest / split / cls).mkdir(parents=True)
            with_face = (
                p for p in sorted((pool / split / cls).iterdir())
                if main_face_crop(np.asarray(Image.open(p).convert("RGB"))) is not None
            )  # fmt: skip
            for path in itertools.islice(with_face, n):
                shutil.copy(path, dest / split / cls / path.name)
    gradient = np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (200, 1))
    Image.fromarray(gradient).convert("RGB").save(dest / "train" / "anger" / "no_face.jpg")
    return dest


@pytest.fixture(scope="module")
def sources(ferplus_dir: Path, photo_pool: Path, tmp_path_factory) -> list[DataSource]:
    root = tmp_path_factory.mktemp("sources")
    return [
        DataSource(
            "ferplus",
            str(copy_subset(ferplus_dir, root / "ferplus")),
            SourceFormat.FERPLUS,
            LENIENT,
        ),
        DataSource("photos", str(photo_tree(photo_pool, root / "photos")), SourceFormat.FOLDERS, PHOTO_GATE),
    ]


def test_sources_land_in_one_dataset_each_through_its_gate(sources, tmp_path: Path) -> None:
    result = ingest_sources(sources, report_dir=tmp_path / "reports", out=tmp_path / "ds", progress=False)
    ds = open_dataset(tmp_path / "ds")
    train = ds.load("train")
    assert train.datasets() == ["ferplus", "photos"]
    photos = train.of_dataset("photos")
    assert len(photos) == 22 * len(PHOTO_CLASSES)  # every photo with a face, and only those
    assert {ds.classes[i] for i in photos.label} == set(PHOTO_CLASSES)
    # the photo without a face is listed by its gate, never centre-cropped into the dataset
    dropped = result.reports["photos"].dropped
    assert dropped == {"no face found (photo not used)": ["train/anger/no_face.jpg"]}
    assert ds.meta["sources"]["photos"]["classes"] == sorted(PHOTO_CLASSES)
    assert ds.meta["sources"]["ferplus"]["splits"]["train"] == len(train.of_dataset("ferplus"))
    for name in ("ferplus", "photos"):  # one gate report (GX Data Docs) per source
        assert (tmp_path / "reports" / name / "data_docs" / "index.html").is_file()


def test_photos_are_cropped_exactly_as_the_server_crops_them(sources, tmp_path: Path) -> None:
    from ferflow.faces import main_face_crop
    from ferflow.inference import ImageLimits, decode_image

    result = ingest_sources(sources[1:], progress=False)
    train = result.splits["train"]
    i = int(np.flatnonzero(np.char.startswith(train.source.astype(str), "train/happiness/"))[0])
    photo = Path(sources[1].path) / train.source[i]
    rgb, _ = decode_image(photo.read_bytes(), ImageLimits(), name=photo.name)
    np.testing.assert_array_equal(train.pixels[i], main_face_crop(rgb))


def test_a_faceless_photo_fails_a_strict_gate_and_writes_nothing(sources, tmp_path: Path) -> None:
    from dataclasses import replace

    strict = replace(sources[1], gate=replace(PHOTO_GATE, drop_no_face=False))
    with pytest.raises(GateFailed) as failed:
        ingest_sources([sources[0], strict], out=tmp_path / "ds", progress=False)
    named = {f.check: f.details for f in failed.value.report.findings}
    assert named["readable"] == ["train/anger/no_face.jpg: no face found"]
    assert not (tmp_path / "ds").exists()


def test_cli_adds_a_labelled_tree_in_one_command(sources, tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from ferflow.cli import app

    res = CliRunner().invoke(app, ["data", "ingest", "--add", "Bad Name=x"])
    assert (
        res.exit_code == 2
        and "--add 'Bad Name=x'" in res.output
        and len(res.output.strip().splitlines()) == 1
    )
    res = CliRunner().invoke(
        app, ["data", "ingest", "--add", f"clinic={tmp_path / 'nowhere'}", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "nowhere" in res.output
    assert not (tmp_path / "o").exists()


def test_only_another_sources_held_out_copy_is_dropped_from_training() -> None:
    from ferflow.canonical import Split
    from ferflow.data import _merge_splits

    def split(hashes: list[str], name: str) -> Split:
        n = len(hashes)
        return Split(
            pixels=np.zeros((n, 48, 48), np.uint8), votes=np.full((n, 10), -1, np.int16),
            target=np.zeros((n, 8), np.float32), label=np.zeros(n, np.int16),
            source=np.array([f"{name}/{h}" for h in hashes]), content_hash=np.array(hashes),
            dataset=np.full(n, name),
        )  # fmt: skip

    a = {"train": split(["x", "y"], "a"), "valid": split(["z"], "a")}
    b = {"train": split(["z", "w", "y2"], "b"), "valid": split(["y"], "b")}
    merged, leaks = _merge_splits([a, b])
    # a's "y" is b's held-out image, b's "z" is a's: both go; nothing else does
    assert leaks == 2 and sorted(merged["train"].content_hash) == ["w", "x", "y2"]
    same = {"train": split(["q"], "a"), "valid": split(["q"], "a")}  # within a source: its gate's call
    assert _merge_splits([same])[1] == 0


def test_no_detect_takes_images_as_framed_crops(tmp_path: Path) -> None:
    from ferflow.config import IngestConfig
    from ferflow.data import ingest_to_memory, to_canonical_pixels

    tree = tmp_path / "crops" / "happiness"
    tree.mkdir(parents=True)
    gradient = np.tile(np.linspace(0, 255, 100, dtype=np.uint8), (100, 1))
    Image.fromarray(gradient).save(tree / "framed.png")  # no face to find: kept as it is
    cfg = IngestConfig(SourceFormat.FOLDERS, gate=LENIENT, detect_faces=False)
    train = ingest_to_memory(tmp_path / "crops", cfg, progress=False).splits["train"]
    np.testing.assert_array_equal(train.pixels[0], to_canonical_pixels(Image.fromarray(gradient)))


def test_cli_without_src_refuses_a_format() -> None:
    from typer.testing import CliRunner

    from ferflow.cli import app

    res = CliRunner().invoke(app, ["data", "ingest", "--format", "folders"])
    assert res.exit_code == 2 and "--format describes SRC" in res.output
