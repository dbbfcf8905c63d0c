"""Cross-dataset evaluation, prior correction and the robustness suite, on the reference model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ferflow import robustness as rb
from ferflow.evaluate import adjust_logits, evaluate_datasets, subset_scores

CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]


def test_a_subset_label_set_is_scored_over_its_own_classes() -> None:
    # row 0: "fear" beats the true "anger" overall, but fear is not in the dataset's label set
    logits = np.array([[0, 0, 0, 0, 2.0, 0, 3.0, 0], [5.0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 9.0]])
    y_true = np.array([4, 0, 1])
    out = subset_scores(logits, y_true, CLASSES, ["neutral", "happiness", "anger"])
    assert out["label_set"] == ["neutral", "happiness", "anger"]
    assert out["accuracy"] == pytest.approx(2 / 3)  # anger and neutral right; row 2 stays wrong
    assert out["accuracy_all_classes"] == pytest.approx(1 / 3)  # only the neutral row
    assert out["per_class"]["fear"]["support"] == 0 and out["confusion_matrix"][4][6] == 0


def test_logit_adjustment_moves_decisions_towards_the_stated_prior() -> None:
    train = [0.5, 0.5]
    logits = np.array([[1.0, 0.9]])
    assert adjust_logits(logits, train, [0.5, 0.5]).argmax() == 0  # same prior: no change
    assert adjust_logits(logits, train, [0.4, 0.6]).argmax() == 1
    np.testing.assert_allclose(
        adjust_logits(logits, [0.8, 0.2], [0.5, 0.5]) - logits, [[np.log(0.625), np.log(2.5)]]
    )


def test_every_shift_keeps_the_crop_format_and_grows_with_severity(small_dataset: Path) -> None:
    from ferflow.canonical import open_dataset

    faces = open_dataset(small_dataset).load("valid").pixels[:32]
    for shift in rb.SHIFTS:
        changes = []
        for level in (1, 2, 3):
            out = rb.perturb(faces, shift, level, seed=3)
            assert out.shape == faces.shape and out.dtype == np.uint8, shift
            changes.append(np.abs(out.astype(int) - faces).mean())
        assert 0 < changes[0] <= changes[1] <= changes[2], (shift, changes)
    np.testing.assert_array_equal(
        rb.perturb(faces, "noise", 2, seed=3), rb.perturb(faces, "noise", 2, seed=3)
    )
    eyes = rb.perturb(faces, "occlude_eyes", 2)
    assert (eyes[:, rb.EYE_ROW - 4 : rb.EYE_ROW + 4] == 128).all() and (eyes[:, 40:] == faces[:, 40:]).all()


def test_one_call_scores_crops_photos_through_detection_and_robustness(
    small_dataset: Path, photos_dir: Path, tmp_path: Path
) -> None:
    """The reference model on FERPlus crops and on real photos in class folders (one set)."""
    import csv
    import shutil

    tree = tmp_path / "photos"
    with (photos_dir / "labels.csv").open() as fh:
        for row in csv.DictReader(fh):
            (tree / row["emotion"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(photos_dir / row["image"], tree / row["emotion"] / row["image"])
    result = evaluate_datasets(None, [small_dataset, tree], robustness=True, progress=False)
    ferplus, photos = result["datasets"]["ferplus"], result["datasets"]["photos"]
    assert ferplus["route"] == "face crops" and ferplus["n"] == 300 and ferplus["accuracy"] > 0.7
    assert photos["route"] == "face detection" and photos["n"] + photos["no_face"] == 48
    assert photos["accuracy"] >= photos["accuracy_all_classes"]
    suite = result["robustness"]
    assert suite["dataset"] == "ferplus" and len(suite["rows"]) == 3 * len(rb.SHIFTS)
    assert suite["clean_accuracy"] == pytest.approx(ferplus["accuracy_all_classes"])
    worst = {r["shift"]: r["accuracy"] for r in suite["rows"] if r["severity"] == 3}
    assert worst["noise"] < suite["clean_accuracy"] - 0.1  # sigma 32 noise must hurt
    # the prior correction needs the train prior the export recorded, and changes the scores
    uniform = evaluate_datasets(None, [small_dataset], prior="uniform", progress=False)["datasets"]["ferplus"]
    assert uniform["prior"] == "uniform" and uniform["per_class_recall"] != ferplus["per_class_recall"]


def test_cli_evaluate_writes_report_card_and_mlflow_run(
    small_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    import mlflow
    from typer.testing import CliRunner

    from ferflow.cli import app

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# a model\n\nits story\n")
    args = ["evaluate", "--dataset", str(small_dataset), "--robustness", "--out", str(tmp_path / "ev")]
    for _ in range(2):  # twice: the card's section is replaced, not repeated
        res = CliRunner().invoke(app, [*args, "--card", str(card), "--track"])
        assert res.exit_code == 0, res.output
    text = card.read_text()
    assert text.startswith("# a model\n\nits story") and text.count("## Cross-dataset evaluation") == 1
    assert "| occlude_mouth |" in text
    assert (tmp_path / "ev" / "robustness.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    run_id = res.output.strip().splitlines()[-1].split()[-1]
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.run_name.startswith("evaluate-")
    experiment = mlflow.MlflowClient(uri).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    metrics = run.data.metrics
    assert metrics["eval.ferplus.accuracy"] == pytest.approx(saved["datasets"]["ferplus"]["accuracy"])
    assert metrics["robustness.blur.3"] == pytest.approx(
        next(
            r["accuracy"] for r in saved["robustness"]["rows"] if r["shift"] == "blur" and r["severity"] == 3
        )
    )


def test_cli_evaluate_bad_inputs_are_one_line_errors(small_dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ferflow.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--dataset", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing" in res.output
    res = runner.invoke(app, ["evaluate", "--dataset", str(small_dataset), "--prior", "joy=0.5"])
    assert res.exit_code == 2 and "'joy' is not a model class" in res.output


def test_a_class_the_model_never_trained_on_gets_no_boost_from_the_prior() -> None:
    logits = np.array([[2.0, 1.0, 0.0]])
    shifted = adjust_logits(logits, [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3])
    assert shifted[0, 2] == pytest.approx(0.0) and shifted.argmax() == 0
    assert adjust_logits(logits, [0.5, 0.5, 0.0], [0.5, 0.5, 0.0])[0, 2] < -20  # excluded by the target


def test_a_dataset_with_other_classes_is_refused_by_name(small_dataset: Path, tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from ferflow.cli import app

    other = tmp_path / "clinical"
    shutil.copytree(small_dataset, other)
    meta = json.loads((other / "dataset.json").read_text())
    meta["classes"] = ["neutral", "happiness", "sadness", "anger"]
    (other / "dataset.json").write_text(json.dumps(meta))
    res = CliRunner().invoke(app, ["evaluate", "--dataset", str(other)])
    assert res.exit_code == 2 and str(other) in res.output and "differ from the model's" in res.output
