"""Registry and promotion gate with real MLflow runs of real (small) trainings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ferflow.canonical import open_dataset
from ferflow.config import Precision, RegistryConfig, TrainConfig
from ferflow.registry import CHALLENGER, CHAMPION, list_versions, promote, register, rollback

pytestmark = pytest.mark.data

# a small residual net keeps the two trainings to seconds on 2 cores
BASE = TrainConfig(
    model="resnet",
    width=16,
    depths=(1, 1, 1),
    epochs=4,
    batch_size=32,
    quantize_int8=False,
    precision=Precision.FLOAT32,
    learning_rate=3e-3,
    experiment="ferflow-registry-test",
)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    mp.undo()


@pytest.fixture(scope="module")
def runs(small_dataset: Path, tracking: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A model trained for three epochs and a deliberately worse one trained for one step."""
    from ferflow.train import train

    work = tmp_path_factory.mktemp("runs")
    good = train(BASE, small_dataset, work / "good", verbose=0)
    worse = train(replace(BASE, epochs=1), small_dataset, work / "worse", steps_per_epoch=1, verbose=0)
    return {
        "good": good.mlflow_run_id,
        "worse": worse.mlflow_run_id,
        "good_acc": good.metrics["test"]["accuracy"],
        "worse_acc": worse.metrics["test"]["accuracy"],
    }


def alias_of(cfg: RegistryConfig, version: str | int) -> list[str]:
    return next(r["aliases"] for r in list_versions(cfg) if r["version"] == str(version))


def test_gate_promotes_first_refuses_worse_and_rolls_back(runs, small_dataset: Path, tracking: str) -> None:
    assert runs["good_acc"] > runs["worse_acc"]  # the premise of the test
    ds = open_dataset(small_dataset)
    valid, classes = ds.load("valid"), ds.classes
    cfg = RegistryConfig(model_name="ferflow-test")

    v1 = register(runs["good"], cfg)
    assert alias_of(cfg, v1.version) == [CHALLENGER]
    first = promote(valid, classes, config=cfg)
    assert first.promoted and "first model" in first.reason
    assert first.infra["requests"] >= 16
    assert CHAMPION in alias_of(cfg, v1.version)

    v2 = register(runs["worse"], cfg)
    refused = promote(valid, classes, config=cfg)
    assert not refused.promoted and "accuracy" in refused.reason
    tags = next(r for r in list_versions(cfg) if r["version"] == str(v2.version))
    assert tags["gate.promoted"] == "false" and tags["gate.reason"] == refused.reason
    assert CHAMPION in alias_of(cfg, v1.version)  # the champion stays
    assert tags["dataset_md5"] == "test-subset" and "git_commit" in tags

    # a permissive gate lets the worse model through; rollback restores the previous champion
    forced = promote(valid, classes, version=v2.version, config=replace(cfg, margin=-1.0, f1_margin=1.0))
    assert forced.promoted and CHAMPION in alias_of(cfg, v2.version)
    assert rollback(cfg) == (str(v2.version), str(v1.version))
    assert CHAMPION in alias_of(cfg, v1.version)
    with pytest.raises(Exception, match="no previous champion"):
        rollback(cfg)


def test_model_that_cannot_serve_is_not_promoted(
    runs, small_dataset: Path, tracking: str, tmp_path: Path
) -> None:
    import mlflow

    ds = open_dataset(small_dataset)
    cfg = RegistryConfig(model_name="ferflow-broken")
    # a finished run whose ONNX model is valid ONNX but not a ferflow classifier (no class list)
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 48, 48, 1])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 48, 48, 1])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "identity", [x], [y])
    mlflow.set_experiment("ferflow-registry-test")
    with mlflow.start_run() as run:
        mlflow.onnx.log_model(helper.make_model(graph), name="model")
    version = register(run.info.run_id, cfg)
    decision = promote(ds.load("valid"), ds.classes, config=cfg)
    assert not decision.promoted and "infra-validation failed" in decision.reason
    assert alias_of(cfg, version.version) == [CHALLENGER]


def test_unfinished_or_unknown_run_is_refused(tracking: str) -> None:
    from ferflow.registry import RegistryError

    with pytest.raises(RegistryError, match="no MLflow run"):
        register("0" * 32, RegistryConfig(model_name="ferflow-x"))
