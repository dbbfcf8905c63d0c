"""The validation gate on real FERPlus data: the pulled dataset, and corrupted copies of it."""

from __future__ import annotations

import csv
import html
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferflow.canonical import open_dataset
from ferflow.config import (
    FERPLUS_DEFAULT_INGEST,
    GateConfig,
    IngestConfig,
    LeakagePolicy,
    SourceFormat,
    get_class_set,
)
from ferflow.data import IngestError, ingest, ingest_to_memory
from ferflow.datadocs import bundle
from ferflow.validate import GateFailed, build_checks

pytestmark = pytest.mark.data

SUBSET = {"FER2013Train": 300, "FER2013Valid": 100}
LENIENT = GateConfig(min_class_count=0)


def copy_subset(ferplus: Path, dest: Path) -> Path:
    """Copy the first rows of each split into a new FERPlus tree, leaving out FERPlus's own
    Train/Valid duplicates so that the copy is clean before a test corrupts it."""
    seen: set[bytes] = set()
    for split, n in reversed(SUBSET.items()):
        (dest / split).mkdir(parents=True)
        with (ferplus / split / "label.csv").open() as fh:
            rows = [r for _, r in zip(range(n), csv.reader(fh), strict=False)]
        pixels = {r[0]: np.asarray(Image.open(ferplus / split / r[0])).tobytes() for r in rows}
        rows = [r for r in rows if split == "FER2013Valid" or pixels[r[0]] not in seen]
        seen |= {pixels[r[0]] for r in rows}
        for row in rows:
            shutil.copy(ferplus / split / row[0], dest / split / row[0])
        write_rows(dest / split, rows)
    return dest


def read_rows(folder: Path) -> list[list[str]]:
    with (folder / "label.csv").open() as fh:
        return list(csv.reader(fh))


def write_rows(folder: Path, rows: list[list[str]]) -> None:
    with (folder / "label.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


@pytest.fixture(scope="module")
def real_result(ferplus_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("canonical") / "ferplus"
    report = tmp_path_factory.mktemp("report")
    return ingest(ferplus_dir, out, FERPLUS_DEFAULT_INGEST, report_dir=report, progress=False), out, report


def test_real_ferplus_strict_gate_names_the_known_problems(ferplus_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(GateFailed) as failed:
        ingest_to_memory(ferplus_dir, IngestConfig(), report_dir=tmp_path, progress=False)
    findings = {f.check: f for f in failed.value.report.findings}
    assert set(findings) == {"vote_sum", "no_leakage"}
    assert findings["vote_sum"].count == 1  # one Train row has 9 votes
    # 269 images are shared between Train and Valid; every copy is named, both sides
    assert failed.value.report.summary["duplicates"]["cross_split_groups"] == 269
    assert any(s.startswith("FER2013Valid/") for s in findings["no_leakage"].sources)
    assert any(s.startswith("FER2013Train/") for s in findings["no_leakage"].sources)
    assert (tmp_path / "data_docs" / "index.html").is_file()


def test_real_ferplus_default_policy_passes_and_is_leak_free(real_result, data_version: str) -> None:
    result, out, report = real_result
    assert result.report.passed
    ds = open_dataset(out)
    train, valid = ds.load("train"), ds.load("valid")
    assert ds.classes == [
        "neutral",
        "happiness",
        "surprise",
        "sadness",
        "anger",
        "disgust",
        "fear",
        "contempt",
    ]
    assert train.pixels.shape[1:] == (48, 48) and train.pixels.dtype == np.uint8
    assert not set(train.content_hash) & set(valid.content_hash)
    # majority protocol: every kept FERPlus row has a strict majority among its votes
    top = train.votes[:, :8].max(axis=1)
    kept_votes = np.where(train.votes[:, :8] > 1, train.votes[:, :8], 0).sum(axis=1) + np.where(
        train.votes[:, 8:] > 1, train.votes[:, 8:], 0
    ).sum(axis=1)
    assert (top > 0.5 * kept_votes).all()
    np.testing.assert_array_equal(train.label, train.votes[:, :8].argmax(axis=1))
    assert (train.votes.sum(axis=1) == 10).all()
    assert ds.meta["source_version"] == data_version
    # the run is named after the source and the DVC version of the data
    assert re.fullmatch(
        rf"ingest-ferplus-{data_version[:12]}-\d{{8}}T\d{{6}}Z", result.report.summary["run_name"]
    )
    assert sum(len(v) for v in result.report.dropped.values()) == result.report.summary["n_policy_dropped"]
    assert (report / "summary.json").is_file() and (report / "data_docs" / "index.html").is_file()


def test_negative_copies_fail_and_name_each_offender(ferplus_dir: Path, tmp_path: Path) -> None:
    src = copy_subset(ferplus_dir, tmp_path / "src")
    train, valid = src / "FER2013Train", src / "FER2013Valid"
    rows = read_rows(train)
    # 1. truncated PNG
    truncated = rows[0][0]
    data = (train / truncated).read_bytes()
    (train / truncated).write_bytes(data[: len(data) // 2])
    # 2. a 50x50 image in a fixed-size dataset
    wrong_size = rows[1][0]
    Image.open(train / wrong_size).resize((50, 50)).save(train / wrong_size)
    # 3. a vote row that does not sum to 10
    bad_votes = rows[2][0]
    rows[2][2:] = ["3", "3", "0", "0", "0", "0", "0", "0", "0", "0"]
    # 4. a Valid image copied into Train under a new name
    leaked_from = read_rows(valid)[5][0]
    shutil.copy(valid / leaked_from, train / "fer9999999.png")
    rows.append(["fer9999999.png", "(0, 0, 48, 48)", "0", "10", "0", "0", "0", "0", "0", "0", "0", "0"])
    # 5. a text file posing as an image
    (train / "notes.png").write_text("this is not an image\n")
    rows.append(["notes.png", "(0, 0, 48, 48)", "10", "0", "0", "0", "0", "0", "0", "0", "0", "0"])
    write_rows(train, rows)

    out = tmp_path / "canonical"
    with pytest.raises(GateFailed) as failed:
        ingest(src, out, IngestConfig(gate=LENIENT), report_dir=tmp_path / "report", progress=False)
    named = {f.check: set(f.sources) for f in failed.value.report.findings}
    assert f"FER2013Train/{truncated}" in named["readable"]
    assert "FER2013Train/notes.png" in named["readable"]
    assert named["width"] == {f"FER2013Train/{wrong_size}"}
    assert named["vote_sum"] == {f"FER2013Train/{bad_votes}"}
    assert {"FER2013Train/fer9999999.png", f"FER2013Valid/{leaked_from}"} <= named["no_leakage"]
    human = str(failed.value)
    for name in (truncated, wrong_size, bad_votes, "fer9999999.png", "notes.png"):
        assert name in human
    assert not out.exists()  # a failed gate writes no dataset


def test_failed_gate_keeps_the_previous_dataset(ferplus_dir: Path, tmp_path: Path) -> None:
    src = copy_subset(ferplus_dir, tmp_path / "src")
    out = tmp_path / "canonical"
    ingest(src, out, IngestConfig(gate=LENIENT), progress=False)
    before = (out / "train.npz").read_bytes()
    (src / "FER2013Train" / read_rows(src / "FER2013Train")[0][0]).write_bytes(b"\x89PNG garbage")
    with pytest.raises(GateFailed):
        ingest(src, out, IngestConfig(gate=LENIENT), progress=False)
    assert (out / "train.npz").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rare_class_below_minimum_fails(ferplus_dir: Path, tmp_path: Path) -> None:
    src = copy_subset(ferplus_dir, tmp_path / "src")
    with pytest.raises(GateFailed) as failed:
        ingest_to_memory(src, IngestConfig(gate=GateConfig(min_class_count=5)), progress=False)
    finding = next(f for f in failed.value.report.findings if f.check == "class_min_count")
    assert any(s.startswith("class contempt") for s in finding.sources)


def test_blank_image_fails(ferplus_dir: Path, tmp_path: Path) -> None:
    src = copy_subset(ferplus_dir, tmp_path / "src")
    name = read_rows(src / "FER2013Train")[3][0]
    Image.new("L", (48, 48), 128).save(src / "FER2013Train" / name)
    with pytest.raises(GateFailed) as failed:
        ingest_to_memory(src, IngestConfig(gate=LENIENT), progress=False)
    assert {f.check for f in failed.value.report.findings} == {"not_blank"}


def test_drop_policy_removes_train_copy_and_keeps_valid(ferplus_dir: Path, tmp_path: Path) -> None:
    src = copy_subset(ferplus_dir, tmp_path / "src")
    train, valid = src / "FER2013Train", src / "FER2013Valid"
    leaked_from = read_rows(valid)[7][0]
    shutil.copy(valid / leaked_from, train / "fer9999998.png")
    write_rows(train, [*read_rows(train), ["fer9999998.png", "(0, 0, 48, 48)", "0", "10", *["0"] * 8]])
    gate = GateConfig(min_class_count=0, leakage=LeakagePolicy.DROP)
    result = ingest_to_memory(src, IngestConfig(gate=gate), progress=False)
    assert "FER2013Train/fer9999998.png" not in set(result.splits["train"].source)
    dropped = next(iter(result.report.dropped.values()))
    assert any(d.startswith("FER2013Train/fer9999998.png") for d in dropped)


CDN = re.compile(r"<(?:script|link)\b[^>]*(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)


def assert_offline_report(page: str, run: str, notes: list[str]) -> None:
    """A Data Docs page that renders with no network and says what was checked, in words."""
    assert not CDN.search(page), "a script or stylesheet is loaded from the network"
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "<style>" in page  # styled inline
    text = html.unescape(page)
    assert run in text
    assert "ferplus.images" in text and "ferplus.classes" in text  # the named GX assets
    for note in notes:
        assert note in text


def test_data_docs_render_offline_with_run_name_asset_and_notes(ferplus_dir: Path, tmp_path: Path) -> None:
    src = copy_subset(ferplus_dir, tmp_path / "ferplus")
    train = src / "FER2013Train"
    broken = read_rows(train)[0][0]
    good = (train / broken).read_bytes()
    (train / broken).write_bytes(b"\x89PNG garbage")
    report = tmp_path / "report"
    with pytest.raises(GateFailed) as failed:
        ingest_to_memory(src, IngestConfig(gate=LENIENT), report_dir=report, progress=False)
    first = failed.value.report.summary["run_name"]
    assert re.fullmatch(r"ingest-ferplus-content-[0-9a-f]{12}-\d{8}T\d{6}Z", first)  # no DVC pointer
    (train / broken).write_bytes(good)
    second = ingest_to_memory(src, IngestConfig(gate=LENIENT), report_dir=report, progress=False)
    run = second.report.summary["run_name"]
    assert run != first

    notes = [c.note for c in build_checks(get_class_set("ferplus8"), LENIENT, fixed_size=True)]
    assert len(set(notes)) == len(notes) and all(len(n) > 40 for n in notes)
    docs = report / "data_docs"
    index = (docs / "index.html").read_text()
    assert_offline_report(index, run, notes)
    # the index lists both runs, newest first, each linked to its own page
    assert f'href="runs/{run}.html"' in index and f'href="runs/{first}.html"' in index
    assert index.index(f"runs/{run}.html") < index.index(f"runs/{first}.html")
    failed_page = (docs / "runs" / f"{first}.html").read_text()
    assert_offline_report(failed_page, first, notes)
    assert f"FER2013Train/{broken}" in html.unescape(failed_page)  # the offending file, by name
    # one self-contained file (the KFP HTML artifact) with the newest run
    single = bundle(report, tmp_path / "gate.html").read_text()
    assert_offline_report(single, run, notes)


def test_missing_split_folders_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no FERPlus split folders"):
        ingest_to_memory(tmp_path, IngestConfig(source_format=SourceFormat.FERPLUS), progress=False)
