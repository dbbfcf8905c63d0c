"""Registry and promotion gate with real MLflow runs of real (small) trainings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ferflow.canonical import open_dataset
from ferflow.config import Precision, RegistryConfig, TrainConfig
from ferflow.registry import (
    CHALLENGER,
    CHAMPION,
    DESCRIPTION_MAX,
    client,
    list_versions,
    promote,
    register,
    rollback,
)

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


def test_gate_promotes_first_refuses_worse_and_rolls_back(
    runs, small_dataset: Path, tracking: str, tmp_path: Path
) -> None:
    assert runs["good_acc"] > runs["worse_acc"]  # the premise of the test
    ds = open_dataset(small_dataset)
    valid, classes = ds.load("valid"), ds.classes
    cfg = RegistryConfig(model_name="ferflow-test")

    v1 = register(runs["good"], cfg)
    assert alias_of(cfg, v1.version) == [CHALLENGER]
    # the version's description is the run's model card (cut to MLflow's 5,000 characters)
    card = Path(client(tracking).download_artifacts(runs["good"], "MODEL_CARD.md", str(tmp_path)))
    assert v1.description.startswith("# ferflow reference model — `resnet`")
    assert len(v1.description) <= DESCRIPTION_MAX and card.read_text().startswith(v1.description[:2000])
    assert client(tracking).get_model_version(cfg.model_name, v1.version).description == v1.description
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

    # a permissive gate, forced, lets the worse model through; rollback restores the previous champion
    permissive = replace(cfg, margin=-1.0, f1_margin=1.0)
    forced = promote(valid, classes, version=v2.version, config=permissive, force=True)
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
    assert "logged no model card" in version.description  # a run without a card still says what it is
    decision = promote(ds.load("valid"), ds.classes, config=cfg)
    assert not decision.promoted and "infra-validation failed" in decision.reason
    assert alias_of(cfg, version.version) == [CHALLENGER]


def test_unfinished_or_unknown_run_is_refused(tracking: str) -> None:
    from ferflow.registry import RegistryError

    with pytest.raises(RegistryError, match="no MLflow run"):
        register("0" * 32, RegistryConfig(model_name="ferflow-x"))


def _split_of(parts: dict[str, tuple[object, np.ndarray]]):
    """One evaluation split from ``{dataset name: (split, row indices)}``."""
    from ferflow.canonical import Split

    pieces = [split.subset(idx) for split, idx in parts.values()]
    names = [np.full(len(idx), name) for name, (_, idx) in parts.items()]
    arrays = {
        k: np.concatenate([p.arrays()[k] for p in pieces]) for k in ("pixels", "votes", "target", "label")
    }
    arrays["source"] = np.concatenate([p.source for p in pieces])
    arrays["content_hash"] = np.concatenate([p.content_hash for p in pieces])
    return Split(**arrays, dataset=np.concatenate(names))


def _register_onnx(path: Path, cfg: RegistryConfig) -> str:
    """Register an exported ONNX model (here the committed reference model) as a run's model."""
    import mlflow
    import onnx

    mlflow.set_experiment("ferflow-registry-test")
    with mlflow.start_run() as run:
        mlflow.onnx.log_model(onnx.load(str(path)), name="model")
    return register(run.info.run_id, cfg).version


def test_gate_refuses_a_challenger_that_regresses_on_photos_while_it_improves_on_ferplus(
    runs, small_dataset: Path, photo_pool: Path, tracking: str
) -> None:
    """A real pair: the committed reference model (champion) and a small model trained here
    (challenger), on real FERPlus faces and real photos cropped by face detection.

    The evaluation rows are picked from the two models' own answers, so that whatever this CPU
    makes of the small training, the challenger wins on FERPlus and loses on the photos: the
    gate must refuse it for the photos alone, and promote it once the photos are left out."""
    from ferflow.evaluate import load_eval_data
    from ferflow.predict import REFERENCE_MODEL, FerClassifier
    from ferflow.preprocess import to_model_input
    from ferflow.registry import model_path

    ds = open_dataset(small_dataset)
    classes = ds.classes
    # macro-F1 is left out (the small model is weak there), a lowered bar that needs force=True:
    # accuracy decides, overall and per source
    cfg = RegistryConfig(model_name="ferflow-photos", f1_margin=1.0)
    champion_v = _register_onnx(REFERENCE_MODEL, cfg)
    assert promote(ds.load("valid"), classes, config=cfg, force=True).promoted
    challenger_v = register(runs["good"], cfg).version
    champion = FerClassifier(model_path(cfg.model_name, str(champion_v)))
    challenger = FerClassifier(model_path(cfg.model_name, str(challenger_v)))

    def right(model, split) -> np.ndarray:
        return model.logits(to_model_input(split.pixels)).argmax(axis=1) == split.label

    ferplus = ds.load("valid")
    photos = load_eval_data(photo_pool, classes, progress=False, split="valid")[0]["valid"]
    f_new, f_old = right(challenger, ferplus), right(champion, ferplus)
    p_new, p_old = right(challenger, photos), right(champion, photos)
    wins, losses = np.flatnonzero(f_new & ~f_old), np.flatnonzero(p_old & ~p_new)
    assert len(wins) >= 4 and len(losses) >= 2, (len(wins), len(losses))  # the premise
    wins = wins[:10]
    ferplus_part = np.concatenate([wins, np.flatnonzero(f_new & f_old)[:20]])
    # half as many photo losses as FERPlus wins: the challenger also gains overall
    photo_part = np.concatenate([losses[: len(wins) // 2], np.flatnonzero(p_new & p_old)[:20]])
    label_sets = {
        "ferplus": classes,
        "photos": ["neutral", "happiness", "surprise", "sadness", "anger", "disgust"],
    }

    mixed = _split_of({"ferplus": (ferplus, ferplus_part), "photos": (photos, photo_part)})
    refused = promote(mixed, classes, config=cfg, label_sets=label_sets, force=True)
    assert not refused.promoted
    assert refused.reason.startswith("photos: accuracy regresses"), refused.reason
    assert refused.challenger_metrics["ferplus.accuracy"] > refused.champion_metrics["ferplus.accuracy"]
    assert refused.challenger_metrics["accuracy"] > refused.champion_metrics["accuracy"]
    assert CHAMPION in alias_of(cfg, champion_v)

    ferplus_only = _split_of({"ferplus": (ferplus, ferplus_part)})
    promoted = promote(ferplus_only, classes, config=cfg, label_sets=label_sets, force=True)
    assert promoted.promoted, promoted.reason
    assert CHAMPION in alias_of(cfg, challenger_v)


def _tags(cfg: RegistryConfig, version: str | int) -> dict[str, str]:
    return dict(client().get_model_version(cfg.model_name, str(version)).tags)


@pytest.mark.parametrize(
    "lowered",
    [{"margin": -0.01}, {"f1_margin": 0.05}, {"dataset_tolerance": 0.5}, {"margin": -1.0, "f1_margin": 1.0}],
)
def test_gate_below_no_regression_needs_force(lowered: dict[str, float]) -> None:
    """The gate's bars cannot be talked down silently: no MLflow call is made without force."""
    from ferflow.registry import RegistryUsageError, check_gate, lowered_bars

    cfg = RegistryConfig(model_name="never-created", **lowered)
    with pytest.raises(RegistryUsageError, match=r"below no regression.*--force"):
        promote(None, [], config=cfg)  # type: ignore[arg-type]  # refused before the split is read
    assert len(lowered_bars(cfg)) == len(lowered)
    assert all(key in check_gate(cfg, force=True) for key in lowered)
    # stricter settings and the defaults pass unforced; NaN is refused even with force
    for strict in ({}, {"margin": 0.01}, {"f1_margin": -0.01}, {"dataset_tolerance": 0.0}):
        assert check_gate(RegistryConfig(**strict)) == ""
    with pytest.raises(RegistryUsageError, match="not a finite number"):
        check_gate(RegistryConfig(margin=float("nan")), force=True)


def test_every_decision_is_recorded_with_its_margins_data_and_split(
    runs, small_dataset: Path, tracking: str
) -> None:
    """Decisions accumulate as gate.<n>; gate.* is the latest one alone (stale keys go); a forced
    decision says so; a re-promoted version loses rolled_back."""
    import json

    from ferflow.registry import EvalSet, decisions

    ds = open_dataset(small_dataset)
    classes = ds.classes
    on_valid = EvalSet.of(small_dataset, ds.meta, "valid")
    on_train = EvalSet.of(small_dataset, ds.meta, "train")
    cfg = RegistryConfig(model_name="ferflow-audit")
    v1 = str(register(runs["good"], cfg).version)
    assert promote(ds.load("valid"), classes, config=cfg, evaluated_on=on_valid).promoted
    tags = _tags(cfg, v1)
    assert (tags["gate.decision"], tags["gate.split"], tags["gate.dataset_version"]) == (
        "1",
        "valid",
        "test-subset",
    )
    assert tags["gate.dataset"] == str(small_dataset) and tags["gate.eval_n"] == str(len(ds.load("valid")))
    assert (tags["gate.margin"], tags["gate.f1_margin"], tags["gate.dataset_tolerance"]) == (
        "0.000000", "0.000000", "0.020000",
    )  # fmt: skip
    assert "gate.forced" not in tags and json.loads(tags["gate.1"])["evaluated_on"]["split"] == "valid"

    v2 = str(register(runs["worse"], cfg).version)
    # v2 as an older ferflow left it: one latest decision, on a split with photos
    for key, value in {"gate.promoted": "false", "gate.reason": "old", "gate.photos.accuracy": "0.5"}.items():
        client().set_model_version_tag(cfg.model_name, v2, key, value)
    refused = promote(ds.load("train"), classes, config=cfg, evaluated_on=on_train)
    assert not refused.promoted and refused.number == 2
    tags = _tags(cfg, v2)
    assert json.loads(tags["gate.1"]) == {
        "promoted": "false",
        "reason": "old",
        "photos.accuracy": "0.5",
        "legacy": True,
    }
    assert "gate.photos.accuracy" not in tags  # no number of another split stays in the latest decision
    assert tags["gate.split"] == "train" and tags["gate.reason"] == refused.reason

    permissive = replace(cfg, margin=-1.0, f1_margin=1.0)
    forced = promote(ds.load("valid"), classes, config=permissive, evaluated_on=on_valid, force=True)
    assert forced.promoted and forced.number == 3 and "refuses it" in forced.forced
    tags = _tags(cfg, v2)
    assert tags["gate.split"] == "valid" and tags["gate.margin"] == "-1.000000"
    assert tags["gate.forced"].startswith("margin -1.0000 < 0")
    assert "FORCED" in forced.human() and "split valid" in forced.human()
    assert rollback(cfg) == (v2, v1) and _tags(cfg, v2)["rolled_back"] == "true"

    again = promote(
        ds.load("valid"), classes, version=v2, config=permissive, evaluated_on=on_valid, force=True
    )
    assert again.promoted and "rolled_back" not in _tags(cfg, v2)
    history = decisions(v2, cfg)
    assert [d["number"] for d in history] == [1, 2, 3, 4]
    assert [d.get("evaluated_on", {}).get("split") for d in history] == [None, "train", "valid", "valid"]
    assert [d["promoted"] for d in history[1:]] == [False, True, True]
    assert history[2]["margins"] == {"margin": -1.0, "f1_margin": 1.0, "dataset_tolerance": 0.02}
    assert history[2]["forced"] == forced.forced and history[3]["champion_before"] == v1


def test_cli_names_an_unknown_version_or_model_in_one_line(runs, small_dataset: Path, tracking: str) -> None:
    from typer.testing import CliRunner

    from ferflow.cli import app

    cfg = RegistryConfig(model_name="ferflow-cli")
    register(runs["good"], cfg)
    runner = CliRunner()
    base = ["registry", "promote", "--dataset", str(small_dataset)]
    for args, expected in (
        (["--name", cfg.model_name, "--version", "99"], "has no version '99' (its versions: 1; pass one"),
        (["--name", "no-such-model"], "no registered model 'no-such-model'"),
        (["--name", cfg.model_name, "--margin", "-1"], "below no regression: margin -1.0000 < 0"),
    ):
        res = runner.invoke(app, base + args)
        assert res.exit_code == 2, res.output
        assert res.stdout == "" and len(res.stderr.splitlines()) == 1, res.output
        assert res.stderr.startswith("error: ") and expected in res.stderr, res.stderr
    res = runner.invoke(app, ["registry", "rollback", "--name", "no-such-model"])
    assert res.exit_code == 2 and "no registered model" in res.stderr, res.output
    # the command line records its dataset, data version and split
    res = runner.invoke(app, [*base, "--name", cfg.model_name, "--split", "train"])
    assert res.exit_code == 0, res.output
    tags = _tags(cfg, 1)
    assert (tags["gate.dataset"], tags["gate.dataset_version"], tags["gate.split"]) == (
        str(small_dataset), "test-subset", "train",
    )  # fmt: skip
