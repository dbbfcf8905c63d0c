"""The data steps of the Kubeflow pipeline, executed by kfp.local on a small real FERPlus subset."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from kfp import local

from components import pull_and_ingest, resolve_data
from ferflow.canonical import open_dataset
from ferflow.config import PROFILES
from ferflow.pipeline import pipeline_arguments
from pipelines.driver import run_local
from tests.data.test_gate import copy_subset, read_rows

pytestmark = [
    pytest.mark.data,
    # kfp.local: the ferflow image is not used by SubprocessRunner(use_venv=False); expected here
    pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning"),
]


@pytest.fixture
def subset(ferplus_dir: Path, tmp_path: Path) -> Path:
    return copy_subset(ferplus_dir, tmp_path / "ferplus")


def test_pull_and_ingest_component_writes_dataset_docs_and_metrics(subset: Path, tmp_path: Path) -> None:
    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    version = resolve_data(source=str(subset), source_format="ferplus", data_version="").output
    assert version.startswith("fp-")
    task = pull_and_ingest(
        source=str(subset),
        version=version,
        source_format="ferplus",
        sources="",
        class_set="ferplus8",
        leakage="fail",
        drop_bad_votes=False,
        min_class_count=0,
    )
    dataset = task.outputs["dataset"]
    ds = open_dataset(dataset.path)
    assert set(ds.splits) == {"train", "valid"}
    assert len(ds.load("train")) == dataset.metadata["splits"]["train"] > 200
    assert dataset.metadata["version"] == version
    docs = Path(task.outputs["data_docs"].path)
    index = (docs / "index.html").read_text()
    linked = [p for p in docs.rglob("*.html") if p.name != "index.html"]
    assert linked and all(p.relative_to(docs).as_posix() in index for p in linked)  # relative links resolve
    summary = json.loads((docs / "summary.json").read_text())
    assert summary["passed"] is True
    # what the KFP UI shows: one self-contained file, not the folder
    page = Path(task.outputs["gate_report"].path)
    assert page.is_file()
    text = page.read_text()
    assert "<script" not in text and "https://" not in text and "<style>" in text
    assert summary["run_name"] in text and "ferplus.images" in text
    metrics = task.outputs["metrics"].metadata
    assert metrics["images_read"] == sum(len(read_rows(subset / s)) for s in ("FER2013Train", "FER2013Valid"))
    assert metrics["images_kept"] == metrics["train_images"] + metrics["valid_images"]


def test_failed_gate_stops_the_pipeline_before_training(
    subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    train = subset / "FER2013Train"
    truncated = read_rows(train)[0][0]
    data = (train / truncated).read_bytes()
    (train / truncated).write_bytes(data[: len(data) // 2])

    args = pipeline_arguments(PROFILES["smoke"], source=str(subset), min_class_count=0)
    progress = io.StringIO()
    run = run_local(args, pipeline_root=tmp_path / "kfp", echo=progress)

    assert not run.succeeded
    assert run.failed_step == "pull-and-ingest"
    assert run.gate_report is not None
    readable = next(f for f in run.gate_report["findings"] if f["check"] == "readable")
    assert f"FER2013Train/{truncated}" in readable["sources"]
    for later in ("train-model", "evaluate-model", "register-and-promote", "summarize-run"):
        assert later not in run.steps
        assert not (run.run_dir / later).exists()
    assert not any((run.run_dir / "pull-and-ingest" / "dataset").glob("*.npz"))  # no half-written data
    assert (run.run_dir / "pull-and-ingest" / "data_docs" / "index.html").is_file()
    # the exit handler ran and recorded the failure
    assert run.steps["record-outcome"].status == "SUCCESS"
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ferflow-pipeline"])
    assert list(runs["tags.pipeline.state"]) == ["FAILED"]
    assert list(runs["tags.pipeline.profile"]) == ["smoke"]
    assert "FAILED" in run.render() and truncated in run.render()
    assert "pull-and-ingest: failure" in progress.getvalue()


def test_smoke_profile_end_to_end_registers_a_champion(
    ferplus_dir: Path, data_version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI's end-to-end run: the real DVC data through every step, ending in the registry."""
    from ferflow.config import RegistryConfig
    from ferflow.registry import list_versions

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("FERFLOW_OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    args = pipeline_arguments(PROFILES["smoke"])
    run = run_local(args, pipeline_root=tmp_path / "kfp", echo=io.StringIO())

    assert run.succeeded, run.render()
    assert run.promotion is not None and run.promotion["promoted"], run.render()
    assert "first model" in run.promotion["reason"]
    (version,) = list_versions(RegistryConfig(model_name=args["registered_model"]))
    assert "champion" in version["aliases"] and "challenger" in version["aliases"]
    assert version["dataset_md5"] == data_version
    assert version["git_commit"] and version["gate.promoted"] == "true"
    # the decision names what it was measured on: the ingested dataset's data version and split
    assert version["gate.split"] == run.promotion["eval_split"] != "unknown"
    assert version["gate.dataset_version"] == data_version
    # FERPlus and the photos, each through its own gate, each scored apart by the promotion gate
    assert {"gate.ferplus.accuracy", "gate.photos.accuracy"} <= set(version)
    docs = run.run_dir / "pull-and-ingest" / "data_docs"
    assert (docs / "ferplus" / "index.html").is_file() and (docs / "photos" / "summary.json").is_file()
    assert float(version["gate.accuracy"]) == pytest.approx(run.summary["evaluation"]["accuracy"], abs=1e-6)
    assert "PROMOTED to champion" in run.render()
    # one trial, and it is the untuned baseline: nothing to adopt, and the summary says so
    tuning = run.summary["tuning"]
    assert tuning["best_trial"] == 0 and tuning["best_value"] == tuning["baseline_value"]
    assert tuning["adopted"] is False and "kept the recipe" in tuning["decision"]
    assert "best trial 0" in run.render()
