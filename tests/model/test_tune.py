"""Optuna tuning on a small real subset: pruning, failures, resumption, and two workers on PostgreSQL.

Trials are tiny (width-8 RAN, a few steps per epoch) so that each test stays well under 90 s on
two cores; what is checked is the study machinery, not model quality. The PostgreSQL server is
Debian's, started for the session by ``scripts/postgres.sh`` (installed first when missing and
this runs as root); MLflow uses the same server as its backend store in that test.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
optuna = pytest.importorskip("optuna")

from ferflow.config import (  # noqa: E402
    LabelScheme,
    Precision,
    PrunerName,
    PruneSignal,
    TrainConfig,
    TuneConfig,
    TuneSpace,
)

pytestmark = [
    pytest.mark.data,
    # enqueued out-of-range values are deliberate (a diverging learning rate, an invalid dropout)
    pytest.mark.filterwarnings("ignore:Fixed parameter:UserWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
State = optuna.trial.TrialState

BASE = TrainConfig(
    model="ran_fm",
    width=8,
    depths=(1, 1, 1, 1),
    warmup_epochs=0,
    precision=Precision.FLOAT32,
    early_stopping_patience=0,
    quantize_int8=False,
)
SPACE = TuneSpace(width=(8,), batch_size=(32,), learning_rate=(1e-3, 5e-3))
GOOD = {
    "learning_rate": 3e-3,
    "weight_decay": 0.01,
    "width": 8,
    "dropout": 0.1,
    "erase_prob": 0.0,
    "rotation_deg": 0.0,
    "label_scheme": "majority",
    "rb_margin": 0.02,
    "batch_size": 32,
}


def tiny(tmp_path: Path, study: str, **kw) -> TuneConfig:
    defaults = dict(
        study=study,
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        trials=0,
        epochs=3,
        subset=300,
        steps_per_epoch=4,
        startup_trials=2,
        warmup_epochs=0,
        base=BASE,
        space=SPACE,
        experiment="ferflow-tune-test",
        baseline=False,  # tests enqueue their own trials; the baseline has its own test
    )
    return TuneConfig(**{**defaults, **kw})


@pytest.fixture
def mlflow_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working dir
    return MlflowClient(tracking_uri=uri)


def nested_runs(client, parent_id: str) -> dict[int, object]:
    parent = client.get_run(parent_id)
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return {int(r.data.tags["optuna.trial"]): r for r in runs}


def test_bad_configuration_is_pruned_and_stops_training(small_dataset, tmp_path, mlflow_sqlite):
    from ferflow.tune import create_study, finalize_study, run_worker

    cfg = tiny(tmp_path, "prune", pruner=PrunerName.MEDIAN)
    study, parent = create_study(cfg)
    study.enqueue_trial(GOOD)
    study.enqueue_trial({**GOOD, "learning_rate": 3e-3, "dropout": 0.2})
    study.enqueue_trial({**GOOD, "learning_rate": 1e-7})  # learns nothing: stays at its random init
    assert run_worker(cfg, small_dataset, 3) == 3

    good1, good2, bad = study.get_trials()
    assert (good1.state, good2.state) == (State.COMPLETE, State.COMPLETE)
    assert len(good1.intermediate_values) == cfg.epochs
    assert bad.state == State.PRUNED, (bad.intermediate_values, good1.intermediate_values)
    assert bad.user_attrs["epochs_run"] < cfg.epochs  # training stopped when the pruner said so
    assert max(bad.intermediate_values) == bad.user_attrs["epochs_run"]  # steps = epochs done
    assert len(bad.user_attrs["val_loss"]) == bad.user_attrs["epochs_run"]  # a loss per epoch run
    # CPU seconds beside wall seconds: two training threads can exceed the wall clock, but a
    # trial that trained cannot have used no CPU
    assert all(0 < t.user_attrs["cpu_seconds"] <= 8 * t.user_attrs["seconds"] for t in (good1, bad))
    # it trained longer: more epochs (a few steps each, so CPU seconds are dominated by the
    # trial's fixed cost and do not order reliably between the two)
    assert good1.user_attrs["epochs_run"] > bad.user_attrs["epochs_run"]

    runs = nested_runs(mlflow_sqlite, parent)
    assert sorted(runs) == [0, 1, 2]
    assert [runs[i].info.run_name for i in range(3)] == ["tune-trial-0", "tune-trial-1", "tune-trial-2"]
    assert re.fullmatch(r"tune-prune-\d{8}T\d{6}Z", mlflow_sqlite.get_run(parent).info.run_name)
    experiment = mlflow_sqlite.get_experiment(runs[0].info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert runs[2].info.status == "KILLED" and runs[2].data.tags["optuna.state"] == "PRUNED"
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.params["learning_rate"] == str(GOOD["learning_rate"])
    curve = mlflow_sqlite.get_metric_history(runs[0].info.run_id, "val_accuracy")
    assert [m.step for m in curve] == list(range(cfg.epochs))

    result = finalize_study(cfg)
    assert result.states == {"COMPLETE": 2, "PRUNED": 1}
    assert result.best_trial in (0, 1)
    tags = mlflow_sqlite.get_run(parent).data.tags
    assert tags["optuna.storage"].startswith("sqlite:///") and tags["best.learning_rate"]
    params = mlflow_sqlite.get_run(parent).data.params
    assert (params["pruner"], params["prune_on"], params["prune_within"]) == ("median", "accuracy", "none")
    assert params["horizon_correction"] == "False"


def test_new_study_starts_with_the_untuned_baseline_and_reports_the_gain(
    small_dataset, tmp_path, mlflow_sqlite
):
    from ferflow.tune import BASELINE_ATTR, baseline_params, create_study, finalize_study, run_worker

    base = replace(BASE, learning_rate=1e-7)  # an untuned default that learns nothing
    space = replace(SPACE, learning_rate=(1e-7, 5e-3))
    cfg = tiny(tmp_path, "baseline", pruner=PrunerName.NONE, epochs=2, base=base, space=space, baseline=True)
    expected = baseline_params(cfg)
    assert expected["learning_rate"] == 1e-7 and expected["width"] == 8
    assert "batch_size" not in expected  # 64 is outside this space's (32,): sampled instead
    study, _ = create_study(cfg)
    study.enqueue_trial(GOOD)
    assert run_worker(cfg, small_dataset, 2) == 2
    create_study(cfg)  # loading the study again (resume) enqueues no second baseline
    first, second = study.get_trials()
    assert first.user_attrs.get(BASELINE_ATTR) and not second.user_attrs.get(BASELINE_ATTR)
    assert {k: first.params[k] for k in expected} == expected
    result = finalize_study(cfg)
    assert result.baseline_value == first.value
    assert result.gain == pytest.approx(result.best_value - first.value)
    assert result.gain > 0, (first.value, second.value)  # GOOD learns; lr 1e-7 does not
    assert "untuned baseline" in result.render()
    assert len(study.get_trials()) == 2


def test_pruning_on_the_tuning_loss(small_dataset, tmp_path):
    """With ``prune_on=loss`` the pruner sees minus the tuning-split loss after each epoch, and
    the study still scores trials by their best tuning-split accuracy."""
    from ferflow.tune import create_study, run_worker

    cfg = tiny(tmp_path, "prune-loss", pruner=PrunerName.MEDIAN, prune_on=PruneSignal.LOSS, track=False)
    study, _ = create_study(cfg)
    study.enqueue_trial(GOOD)
    study.enqueue_trial({**GOOD, "learning_rate": 3e-3, "dropout": 0.2})
    study.enqueue_trial({**GOOD, "learning_rate": 1e-7})  # its loss stays at the random init's
    assert run_worker(cfg, small_dataset, 3) == 3

    good1, good2, bad = study.get_trials()
    assert (good1.state, good2.state, bad.state) == (State.COMPLETE, State.COMPLETE, State.PRUNED)
    for t in (good1, good2, bad):
        reported = [v for _, v in sorted(t.intermediate_values.items())]
        assert reported == pytest.approx([-v for v in t.user_attrs["val_loss"]], abs=1e-4)
    assert 0 < good1.value <= 1  # an accuracy, not a loss


def test_failed_trials_are_recorded_and_the_study_continues(small_dataset, tmp_path, mlflow_sqlite):
    from ferflow.tune import create_study, run_worker

    cfg = tiny(tmp_path, "failures", pruner=PrunerName.NONE, epochs=1)
    study, parent = create_study(cfg)
    study.enqueue_trial({**GOOD, "learning_rate": 30.0})  # diverges: NaN loss
    study.enqueue_trial({**GOOD, "dropout": 1.5})  # Keras rejects the layer: an exception
    assert run_worker(cfg, small_dataset, 3) == 3  # the third trial (sampled by TPE) still runs

    nan, broken, sampled = study.get_trials()
    assert nan.state == State.FAIL and "NaN" in nan.user_attrs["fail_reason"]
    assert broken.state == State.FAIL and "ValueError" in broken.user_attrs["fail_reason"]
    assert sampled.state == State.COMPLETE and 0.0 <= sampled.value <= 1.0
    runs = nested_runs(mlflow_sqlite, parent)
    assert [runs[i].info.status for i in range(3)] == ["FAILED", "FAILED", "FINISHED"]
    assert "NaN" in runs[0].data.tags["fail_reason"]


def test_cli_resume_adds_trials_to_the_study_and_train_from_study(small_dataset, tmp_path, mlflow_sqlite):
    from typer.testing import CliRunner

    from ferflow.cli import app
    from ferflow.tune import best_train_config

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["tune", "--study", "resume", "--storage", storage, "--dataset", str(small_dataset)]
    settings = ["base.model=cnn", "epochs=1", "steps_per_epoch=3", "subset=300", "startup_trials=1"]
    args += [a for item in [*settings, "experiment=ferflow-tune-test"] for a in ("--set", item)]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--trials", "2"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, [*args, "--trials", "1", "--report", str(tmp_path / "report")])
    assert second.exit_code == 0, second.output
    assert "2 trials so far" in second.output
    # a trial is not silent for minutes: one line per epoch
    assert re.search(
        r"\[worker 0\] trial 0 epoch 1/1: loss [0-9.]+, tune loss [0-9.]+, tune acc", first.output
    )

    study = optuna.load_study(study_name="resume", storage=storage)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state in (State.COMPLETE, State.PRUNED) for t in trials)
    assert trials[2].params != trials[0].params  # the resumed sampler does not replay the first draws
    parent = study.user_attrs["mlflow_run_id"]
    assert sorted(nested_runs(mlflow_sqlite, parent)) == [0, 1, 2]  # one parent run across both calls
    artifacts = {a.path for a in mlflow_sqlite.list_artifacts(parent)}
    assert {"best_params.json", "trials.csv", "optimization_history.png"} <= artifacts
    assert (tmp_path / "report" / "optimization_history.png").stat().st_size > 1000
    # the plots and every trial in one self-contained page (plotly is not installed)
    assert "study_report.html" in artifacts
    page = (tmp_path / "report" / "study_report.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page and "http://" not in page
    assert all(f"<td>{t.number}" in page for t in trials) and "learning_rate" in page

    cfg = best_train_config("resume", storage, base=TrainConfig(epochs=7))
    best = study.best_trial.params
    assert cfg.learning_rate == best["learning_rate"] and cfg.augment.erase_prob == best["erase_prob"]
    assert cfg.label_scheme == LabelScheme(best["label_scheme"]) and cfg.epochs == 7
    missing = runner.invoke(
        app, ["train", "--dataset", str(small_dataset), "--from-study", "nope", "--storage", storage]
    )
    assert missing.exit_code == 2 and "no study 'nope'" in missing.output


# --------------------------------------------------------------------------------------------
# PostgreSQL: two worker processes, one study; MLflow on the same server


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server on localhost for the session (databases ``optuna`` and ``mlflow``)."""
    script = ROOT / "scripts" / "postgres.sh"
    proc = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(f"PostgreSQL binaries absent and not installable: {proc.stderr.strip()}")
    assert proc.returncode == 0, f"scripts/postgres.sh start failed:\n{proc.stderr}"
    data_dir, url = proc.stdout.split()[-2:]
    yield url
    subprocess.run([str(script), "stop", data_dir], capture_output=True, timeout=120)


def test_two_workers_share_one_study_on_postgresql(small_dataset, tmp_path, monkeypatch, postgres_url):
    import sqlalchemy as sa
    from mlflow.tracking import MlflowClient

    from ferflow.tune import run_study

    mlflow_uri = f"{postgres_url}/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # inherited by the worker processes
    monkeypatch.chdir(tmp_path)
    cfg = tiny(
        tmp_path,
        "pg-two-workers",
        storage=f"{postgres_url}/optuna",
        trials=4,
        workers=2,
        epochs=1,
        steps_per_epoch=3,
        pruner=PrunerName.NONE,
    )
    result = run_study(cfg, small_dataset)

    study = optuna.load_study(study_name=cfg.study, storage=cfg.storage)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(trials) == cfg.trials == result.n_trials
    assert len(set(numbers)) == len(numbers) == 4 and sorted(numbers) == [0, 1, 2, 3]
    assert all(t.state.is_finished() for t in trials)
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}
    assert "ferflow:***@" in result.storage  # the password never reaches logs or tags

    client = MlflowClient(tracking_uri=mlflow_uri)
    parent = study.user_attrs["mlflow_run_id"]
    assert sorted(nested_runs(client, parent)) == [0, 1, 2, 3]
    assert client.get_run(parent).data.tags["optuna.storage"] == result.storage
    with sa.create_engine(mlflow_uri).connect() as conn:  # the runs really live in PostgreSQL
        assert conn.execute(sa.text("select count(*) from runs")).scalar() >= 5


def test_split_trials_and_apply_params_validate() -> None:
    from ferflow.tune import apply_params, split_trials

    assert split_trials(5, 2) == [3, 2] and sum(split_trials(20, 3)) == 20
    with pytest.raises(ValueError, match="workers"):
        split_trials(4, 0)
    with pytest.raises(ValueError, match=r"unknown tuned parameters.*'lr'"):
        apply_params(BASE, {"lr": 1e-3})
    cfg = apply_params(replace(BASE, epochs=5), {**GOOD, "rotation_deg": 12.5})
    assert cfg.augment.rotation_deg == 12.5 and cfg.epochs == 5 and cfg.label_scheme is LabelScheme.MAJORITY


def test_pipeline_adopts_tuned_values_only_above_the_minimum_gain() -> None:
    from ferflow.tune import TuneResult

    def result(best: float | None, baseline: float | None) -> TuneResult:
        return TuneResult(
            study_name="s",
            storage="sqlite://",
            n_trials=3,
            states={"COMPLETE": 3},
            best_value=best,
            best_params={} if best is None else {"dropout": 0.3},
            best_trial=None if best is None else 2,
            seconds=1.0,
            mlflow_run_id=None,
            baseline_value=baseline,
        )

    assert result(0.62, 0.60).adopted(0.005) == (
        {"dropout": 0.3},
        "best trial 2: +2.00 points over the untuned baseline",
    )
    params, why = result(0.603, 0.60).adopted(0.005)
    assert params == {} and "kept the recipe" in why and "+0.30 points" in why
    assert result(0.60, None).adopted(0.005)[0] == {"dropout": 0.3}  # no baseline to compare with
    assert result(None, None).adopted(0.005) == ({}, "no completed trial: the recipe as it is")


class _AlwaysPrune:
    """A stand-in Optuna trial whose pruner always says stop."""

    def __init__(self) -> None:
        self.reported: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reported.append((value, step))

    def should_prune(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("epochs", "pruned_at"),
    [(3, 0), (1, None)],  # a trial's last epoch is never pruned: stopping there saves nothing
)
def test_pruning_callback_reports_epochs_done_and_never_prunes_the_last_epoch(epochs, pruned_at) -> None:
    import keras

    from ferflow.tune import _pruning_callback_class

    trial = _AlwaysPrune()
    report = _pruning_callback_class()(trial)
    report.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    report.set_params({"epochs": epochs, "steps": 1, "verbose": 0})
    report.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.4})
    assert trial.reported == [(0.4, 1)]  # step = epochs completed, the resource pruners count
    assert report.pruned_at == pruned_at
    assert getattr(report.model, "stop_training", False) is (pruned_at is not None)


def stopped_at(study, curve: list[float], fixed: dict | None = None) -> int | None:
    """Run one trial of ``study`` that reports ``curve`` (``fixed``: enqueued params, with their
    distributions); the epoch the pruner stops it at, or None if it completes."""
    if fixed:
        study.enqueue_trial({name: value for name, (value, _) in fixed.items()})
    trial = study.ask({name: dist for name, (_, dist) in (fixed or {}).items()})
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
        if trial.should_prune():
            study.tell(trial, state=State.PRUNED)
            return epoch
    study.tell(trial, max(curve))
    return None


def test_asha_judges_first_after_the_warm_up_epochs() -> None:
    """A collapsed trial (the high-lr dip) survives warmup_epochs + 1 epochs, then is pruned."""
    from ferflow.tune import make_pruner

    cfg = TuneConfig(pruner=PrunerName.ASHA, epochs=9, warmup_epochs=2)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(cfg))
    for top in (0.60, 0.62, 0.64, 0.66):
        assert stopped_at(study, [top - 0.1 * (9 - e) / 9 for e in range(1, 10)]) is None
    assert stopped_at(study, [0.10] * 9) == 3


def test_make_pruner_builds_each_named_pruner() -> None:
    from ferflow.tune import make_pruner

    def pruner(name: str, **kw):
        return make_pruner(TuneConfig(pruner=PrunerName(name), epochs=9, **kw))

    assert isinstance(pruner("asha"), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(pruner("hyperband"), optuna.pruners.HyperbandPruner)
    assert isinstance(pruner("none"), optuna.pruners.NopPruner)
    median = pruner("median", warmup_epochs=2)
    assert isinstance(median, optuna.pruners.MedianPruner)
    # steps are epochs completed: 2 warm-up epochs means step 3 is the first one it may prune
    assert median._n_warmup_steps == 3


@pytest.mark.parametrize("name", ["asha", "median"])
def test_prune_within_judges_each_label_scheme_apart(name: str) -> None:
    """A label scheme whose curves start lower is pruned when judged against the others; with
    ``prune_within`` its first trial runs on (it has no peers yet) and its weaker second trial is
    judged against that one only."""
    from ferflow.tune import make_pruner

    space = TuneSpace(label_scheme=(LabelScheme.PROBABILITY, LabelScheme.CROSSENTROPY))
    scheme = optuna.distributions.CategoricalDistribution([s.value for s in space.label_scheme])
    trials = [("probability", 0.60), ("probability", 0.62), ("probability", 0.64)]
    trials += [("crossentropy", 0.45), ("crossentropy", 0.40)]

    def run(within: str) -> list[int | None]:
        """The epoch each trial is stopped at (None: it ran all 9)."""
        cfg = TuneConfig(
            pruner=PrunerName(name),
            epochs=9,
            warmup_epochs=1,
            startup_trials=1,
            space=space,
            prune_within=within,
        )
        study = optuna.create_study(direction="maximize", pruner=make_pruner(cfg))
        out = [
            stopped_at(
                study, [top - 0.2 * (9 - e) / 9 for e in range(1, 10)], {"label_scheme": (label, scheme)}
            )
            for label, top in trials
        ]
        assert [t.params["label_scheme"] for t in study.trials] == [label for label, _ in trials]
        return out

    across, within = run(""), run("label_scheme")
    assert across[3:] == [2, 2]  # both crossentropy trials, at the first decision
    assert within[3] is None and within[4] == 2
    assert within[:3] == across[:3]  # the probability trials see the same peers either way


def test_prune_within_rejects_what_it_cannot_do() -> None:
    from ferflow.tune import make_pruner

    with pytest.raises(ValueError, match="not a categorical parameter"):
        make_pruner(TuneConfig(pruner=PrunerName.ASHA, prune_within="learning_rate"))
    with pytest.raises(ValueError, match="hyperband"):
        make_pruner(TuneConfig(pruner=PrunerName.HYPERBAND, prune_within="label_scheme"))
    assert isinstance(
        make_pruner(TuneConfig(pruner=PrunerName.NONE, prune_within="width")), optuna.pruners.NopPruner
    )


def test_horizon_correction_keeps_the_slow_starting_high_learning_rate() -> None:
    """Low rates lead early and stall; high rates start slow and end best (short-horizon bias).
    Given complete trials showing that, plain ASHA prunes the next high-rate trial at the first
    rung; horizon-corrected ASHA keeps it, and still prunes a high-rate trial that stays hopeless
    after the gain its rate predicts."""
    from ferflow.tune import horizon_slope, make_pruner

    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)

    def curve(start: float, end: float) -> list[float]:  # epoch 2 = start, linear to end at 6
        return [start - 0.05, start, *(start + (end - start) * k / 4 for k in range(1, 5))]

    def run(horizon: bool) -> list[int | None]:
        cfg = TuneConfig(
            pruner=PrunerName.ASHA,
            epochs=6,
            warmup_epochs=1,
            reduction_factor=4,  # rungs at epochs 2 and 8: one decision in these 6 epochs
            startup_trials=4,
            horizon_correction=horizon,
        )
        study = optuna.create_study(direction="maximize", pruner=make_pruner(cfg))
        # the history, each trial the leader at epoch 2 when it gets there: none is pruned
        for rate, start, end in [
            (1e-2, 0.40, 0.70),
            (3e-3, 0.44, 0.66),
            (1e-3, 0.48, 0.62),
            (3e-4, 0.50, 0.58),
        ]:
            assert stopped_at(study, curve(start, end), {"learning_rate": (rate, lr)}) is None
        # what a 10x higher rate went on to gain after epoch 2: ln(10) * slope
        assert horizon_slope(study.trials, 2) * math.log(10) == pytest.approx(0.145, abs=0.005)
        return [
            stopped_at(study, curve(start, 0.72), {"learning_rate": (1e-2, lr)}) for start in (0.42, 0.30)
        ]

    assert run(horizon=False) == [2, 2]
    assert run(horizon=True) == [None, 2]


def test_horizon_correction_waits_for_complete_trials_and_refuses_what_it_cannot_do() -> None:
    from ferflow.tune import horizon_slope, make_pruner

    cfg = TuneConfig(
        pruner=PrunerName.ASHA, epochs=6, warmup_epochs=1, startup_trials=3, horizon_correction=True
    )
    study = optuna.create_study(direction="maximize", pruner=make_pruner(cfg))
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    # until 3 trials have completed there is no slope to fit, and nothing is pruned
    for top in (0.6, 0.2, 0.1):
        assert stopped_at(study, [top] * 6, {"learning_rate": (1e-3, lr)}) is None
    assert stopped_at(study, [0.05] * 6, {"learning_rate": (1e-3, lr)}) == 2
    assert horizon_slope(study.get_trials(states=(State.COMPLETE,)), 2) == 0.0  # one rate: no slope

    with pytest.raises(ValueError, match="hyperband"):
        make_pruner(replace(cfg, pruner=PrunerName.HYPERBAND))
    with pytest.raises(ValueError, match="prune_on='accuracy'"):
        make_pruner(replace(cfg, prune_on=PruneSignal.LOSS))
