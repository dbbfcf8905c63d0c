"""The `ferflow data` contract other tools rely on: exit codes, what is written, messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferflow.cli import app
from tests.data.test_gate import copy_subset, read_rows

pytestmark = pytest.mark.data
runner = CliRunner()


def test_ingest_writes_dataset_and_stats_plots(ferplus_dir: Path, tmp_path: Path) -> None:
    src = copy_subset(ferplus_dir, tmp_path / "src")
    out = tmp_path / "canonical"
    res = runner.invoke(
        app,
        [
            "data",
            "ingest",
            "--format",
            "ferplus",
            str(src),
            "--out",
            str(out),
            "--min-class-count",
            "0",
            "--report",
            str(tmp_path / "report"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "PASSED" in res.output and (out / "train.npz").is_file()
    res = runner.invoke(app, ["data", "stats", str(out)])
    assert res.exit_code == 0, res.output
    assert "happiness" in res.output
    png = out / "class_balance.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_fails_names_file_and_writes_only_report(ferplus_dir: Path, tmp_path: Path) -> None:
    src = copy_subset(ferplus_dir, tmp_path / "src")
    bad = read_rows(src / "FER2013Valid")[0][0]
    (src / "FER2013Valid" / bad).write_bytes(b"GIF89a")
    before = sorted(p.name for p in tmp_path.iterdir())
    report = tmp_path / "report"
    res = runner.invoke(
        app,
        [
            "data",
            "validate",
            "--format",
            "ferplus",
            str(src),
            "--min-class-count",
            "0",
            "--report",
            str(report),
        ],
    )
    assert res.exit_code == 1
    assert f"FER2013Valid/{bad}" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "report"])
    assert (report / "summary.json").is_file()


def test_bad_layout_exit_2(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["data", "ingest", "--format", "folders", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "no such file or directory" in res.output


def test_pull_without_remote_says_how_to_configure(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    res = runner.invoke(app, ["data", "pull", "--root", str(project)])
    assert res.exit_code == 1 and "dvc remote add -d storage" in res.output


def test_pull_with_missing_remote_folder(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "storage", "../missing"], cwd=project, check=True
    )
    res = runner.invoke(app, ["data", "pull", "--root", str(project)])
    assert (
        res.exit_code == 1
        and "does not exist" in res.output
        and "dvc remote modify storage url" in res.output
    )


def test_console_script_help() -> None:
    exe = shutil.which("ferflow", path=str(Path(sys.executable).parent))
    assert exe, "ferflow console script not installed"
    res = subprocess.run([exe, "data", "ingest", "--help"], capture_output=True, text=True, check=True)
    for option in ("--format", "--out", "--scheme", "--class-set", "--leakage"):
        assert option in res.stdout
