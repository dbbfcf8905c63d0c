"""Tuning stage: an Optuna study over the training recipe, pruned per epoch, shared by workers.

``run_study(cfg, dataset)`` does, in order:

1. **study**: :func:`create_study` creates (or, with the same name, resumes) the study in an
   RDB storage — a SQLite file by default, any SQLAlchemy URL (PostgreSQL) unchanged — and
   its MLflow parent run (the run id lives in the study's user attributes, so every worker
   and every resumption logs under the same parent);
2. **workers**: :func:`run_worker` runs trials in this process, or ``cfg.workers`` processes
   share the study (each pinned to its own core when they fit, TensorFlow limited to that
   core). Every trial samples :class:`~ferflow.config.TuneSpace` with a seeded TPE sampler,
   trains :func:`ferflow.train.train` on Train minus the tuning split, and reports the
   tuning-split accuracy after every epoch to the pruner; a pruned trial stops training at the
   end of that epoch. Exceptions and NaN losses mark the trial failed; the study goes on.
   Each trial prints one line per epoch and is a nested MLflow run (``tune-trial-<N>`` under
   ``tune-<study>-<UTC time>``, in an experiment tagged as model development) with its
   parameters and per-epoch curve;
3. **finalize**: :func:`finalize_study` puts the best parameters, optimisation-history,
   intermediate-values and parameter-importance plots, the trials table and study_report.html
   (plots and trials in one self-contained page) on the parent run.

The dataset's ``valid`` split is the test set: only ``train`` is ever loaded here.
:func:`best_train_config` turns the study's best trial into the final ``TrainConfig``
(``ferflow train --from-study NAME``).
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ferflow.canonical import CanonicalDataset, Split, open_dataset
from ferflow.config import LabelScheme, Paths, PrunerName, PruneSignal, TrainConfig, TuneConfig

TUNED_PARAMS: tuple[str, ...] = (
    "learning_rate",
    "weight_decay",
    "width",
    "dropout",
    "erase_prob",
    "rotation_deg",
    "label_scheme",
    "rb_margin",
    "batch_size",
)
"""Names of the searched hyper-parameters (Optuna parameter names = TrainConfig/AugmentConfig fields)."""

_AUGMENT_PARAMS = ("erase_prob", "rotation_deg")
_CATEGORICAL_PARAMS = ("width", "label_scheme", "batch_size")
PARENT_RUN_ATTR = "mlflow_run_id"
BASELINE_ATTR = "baseline"  # trial user attribute: this trial ran the untuned base recipe

TuningData = tuple[dict[str, Split], dict[str, Any]]


class TuneError(RuntimeError):
    """The study cannot be created, loaded or summarised; says which and why."""


# ----------------------------------------------------------------------------------------
# storage, sampler, pruner


def redact(url: str) -> str:
    """The storage URL with its password hidden (safe for logs and MLflow tags)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: let Optuna report it; hide nothing sensitive here
        return url.split("@")[-1] if "@" in url else url


def storage(url: str):
    """An Optuna RDB storage for ``url``; stale trials of killed workers fail after 3 minutes."""
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # several processes share one file
    else:
        engine_kwargs["pool_pre_ping"] = True
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=60, grace_period=180
        )
    except Exception as exc:
        raise TuneError(f"Optuna storage {redact(url)}: {exc}") from exc


def make_sampler(cfg: TuneConfig, seed_offset: int = 0, parallel: bool = False):
    """Seeded TPE. ``seed_offset`` differs per worker and per resumption (no repeated draws)."""
    import optuna

    return optuna.samplers.TPESampler(
        n_startup_trials=cfg.startup_trials, seed=cfg.seed + seed_offset, constant_liar=parallel
    )


def make_pruner(cfg: TuneConfig):
    """The pruner of ``cfg.pruner``; with ``cfg.prune_within`` it judges each choice apart, with
    ``cfg.horizon_correction`` it judges horizon-corrected accuracy."""
    name = PrunerName(cfg.pruner)
    if cfg.horizon_correction and name is PrunerName.HYPERBAND:
        raise ValueError("horizon_correction works with the asha and median pruners, not hyperband")
    if cfg.horizon_correction and PruneSignal(cfg.prune_on) is not PruneSignal.ACCURACY:
        raise ValueError("horizon_correction corrects tuning accuracy: it needs prune_on='accuracy'")
    if cfg.horizon_correction and name is not PrunerName.NONE:
        first = cfg.warmup_epochs + 1
        pruner = _horizon_pruner_class()(name, first, cfg.reduction_factor, max(2, cfg.startup_trials))
    else:
        pruner = _base_pruner(cfg)
    if not cfg.prune_within or name is PrunerName.NONE:
        return pruner
    if cfg.prune_within not in _CATEGORICAL_PARAMS:
        raise ValueError(
            f"prune_within={cfg.prune_within!r}: not a categorical parameter of the search space; "
            f"one of {list(_CATEGORICAL_PARAMS)} or ''"
        )
    if name is PrunerName.HYPERBAND:  # its brackets read the storage directly
        raise ValueError("prune_within works with the asha and median pruners, not hyperband")
    return _per_choice_pruner_class()(pruner, cfg.prune_within)


def _per_choice_pruner_class():
    import optuna

    class _Choice:
        """The study as the pruner sees it: only the trials that drew ``value`` for ``param``."""

        def __init__(self, study, param: str, value: Any) -> None:
            self._study, self._param, self._value = study, param, value

        def get_trials(self, deepcopy: bool = True, states=None):
            trials = self._study.get_trials(deepcopy=deepcopy, states=states)
            return [t for t in trials if t.params.get(self._param) == self._value]

        def __getattr__(self, name: str) -> Any:  # direction, _storage, ...: the real study's
            return getattr(self._study, name)

    class PerChoicePruner(optuna.pruners.BasePruner):
        """``pruner``, applied among the trials that share the trial's choice of ``param``."""

        def __init__(self, pruner, param: str) -> None:
            self.pruner, self.param = pruner, param

        def prune(self, study, trial) -> bool:
            if self.param not in trial.params:
                return self.pruner.prune(study, trial)
            return self.pruner.prune(_Choice(study, self.param, trial.params[self.param]), trial)

    return PerChoicePruner


def horizon_slope(complete: Sequence[Any], step: int) -> float:
    """Least-squares slope of (final value - value at ``step``) on log(learning rate)."""
    pairs = [
        (math.log(t.params["learning_rate"]), t.value - t.intermediate_values[step])
        for t in complete
        if step in t.intermediate_values and t.params.get("learning_rate", 0) > 0
    ]
    if len(pairs) < 2:
        return 0.0
    x, gain = np.array(pairs).T
    spread = float(np.var(x))
    return float(np.mean((x - x.mean()) * (gain - gain.mean())) / spread) if spread > 1e-12 else 0.0


def _horizon_pruner_class():
    import optuna

    State = optuna.trial.TrialState

    class HorizonCorrectedPruner(optuna.pruners.BasePruner):
        """Successive halving (``asha``) or median pruning on horizon-corrected accuracy.

        At epoch ``step`` a trial counts as ``value(step) + slope(step) * log(learning_rate)``,
        the slope fitted by :func:`horizon_slope` on the complete trials: what trials with its
        learning rate went on to gain. No trial is pruned before ``min_complete`` trials have
        completed. ``asha`` judges at epochs first, first * factor, ...: a trial goes on if it
        is among the best n // factor of the n trials scored there (the best while n < factor),
        Optuna's successive-halving rule; ``median`` judges every epoch from ``first`` on.
        """

        def __init__(self, rule: PrunerName, first: int, factor: int, min_complete: int) -> None:
            self.rule, self.first, self.factor, self.min_complete = rule, first, max(2, factor), min_complete

        def _judged(self, step: int) -> bool:
            if step < self.first:
                return False
            if self.rule is PrunerName.MEDIAN:
                return True
            rung = self.first
            while rung < step:
                rung *= self.factor
            return rung == step

        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is None or not self._judged(step):
                return False
            trials = study.get_trials(deepcopy=False)
            complete = [t for t in trials if t.state == State.COMPLETE and step in t.intermediate_values]
            if len(complete) < self.min_complete:
                return False
            slope = horizon_slope(complete, step)

            def corrected(t) -> float:
                lr = t.params.get("learning_rate", 0)
                return t.intermediate_values[step] + (slope * math.log(lr) if lr > 0 else 0.0)

            mine = corrected(trial)
            peers = [
                corrected(t) for t in trials if t.number != trial.number and step in t.intermediate_values
            ]
            if not math.isfinite(mine):
                return True
            if self.rule is PrunerName.MEDIAN:
                return bool(peers) and mine < float(np.median(peers))
            ranked = sorted([*peers, mine], reverse=True)
            return mine < ranked[max(1, len(ranked) // self.factor) - 1]

    return HorizonCorrectedPruner


def _base_pruner(cfg: TuneConfig):
    import optuna

    name = PrunerName(cfg.pruner)
    # A trial reports step = epochs completed (1, 2, ...): the resource Hyperband/ASHA count.
    # No pruner judges a trial before it has completed warmup_epochs + 1 epochs: early on, the
    # high-learning-rate trials that end best sit below the majority-class rate (docs/training.md).
    first, factor = cfg.warmup_epochs + 1, cfg.reduction_factor
    if name is PrunerName.MEDIAN:
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=first)
    if name is PrunerName.HYPERBAND:
        return optuna.pruners.HyperbandPruner(
            min_resource=first, max_resource=max(first, cfg.epochs), reduction_factor=factor
        )
    if name is PrunerName.ASHA:
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=factor)
    return optuna.pruners.NopPruner()


# ----------------------------------------------------------------------------------------
# search space


def suggest(trial, cfg: TuneConfig) -> dict[str, Any]:
    """Sample :class:`~ferflow.config.TuneSpace`; returns Optuna's parameter dict."""
    s = cfg.space

    def num(name: str, bounds: tuple[float, float], log: bool = False) -> float:
        lo, hi = bounds
        if not lo <= hi:
            raise ValueError(f"TuneSpace.{name}: low {lo} > high {hi}")
        return trial.suggest_float(name, lo, hi, log=log and lo > 0)

    params = {
        "learning_rate": num("learning_rate", s.learning_rate, log=True),
        "weight_decay": num("weight_decay", s.weight_decay, log=True),
        "width": trial.suggest_categorical("width", list(s.width)),
        "dropout": num("dropout", s.dropout),
        "erase_prob": num("erase_prob", s.erase_prob),
        "rotation_deg": num("rotation_deg", s.rotation_deg),
        "label_scheme": trial.suggest_categorical(
            "label_scheme", [LabelScheme(x).value for x in s.label_scheme]
        ),
        "rb_margin": num("rb_margin", s.rb_margin),
        "batch_size": trial.suggest_categorical("batch_size", list(s.batch_size)),
    }
    return params


def apply_params(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """``base`` with tuned values on top (unknown names are an error, not silently ignored)."""
    unknown = set(params) - set(TUNED_PARAMS)
    if unknown:
        raise ValueError(f"unknown tuned parameters {sorted(unknown)}; known: {list(TUNED_PARAMS)}")
    top = {k: v for k, v in params.items() if k not in _AUGMENT_PARAMS}
    if "label_scheme" in top:
        top["label_scheme"] = LabelScheme(top["label_scheme"])
    for key in ("width", "batch_size"):
        if key in top:
            top[key] = int(top[key])
    aug = {k: float(params[k]) for k in _AUGMENT_PARAMS if k in params}
    return replace(base, **top, augment=replace(base.augment, **aug))


def baseline_params(cfg: TuneConfig) -> dict[str, Any]:
    """The base recipe's own values of the tuned hyper-parameters, where the space allows them."""
    out: dict[str, Any] = {}
    for name in TUNED_PARAMS:
        value = getattr(cfg.base.augment if name in _AUGMENT_PARAMS else cfg.base, name)
        allowed = getattr(cfg.space, name)
        # choices are a list (LabelScheme is a StrEnum, equal to its value); ranges (low, high)
        categorical = name in _CATEGORICAL_PARAMS
        if value in allowed if categorical else allowed[0] <= value <= allowed[1]:
            out[name] = LabelScheme(value).value if name == "label_scheme" else value
    return out


def baseline_value(complete_trials: Sequence[Any]) -> float | None:
    """The value of the study's untuned baseline trial among ``complete_trials``, if any."""
    return next((t.value for t in complete_trials if t.user_attrs.get(BASELINE_ATTR)), None)


def trial_config(cfg: TuneConfig, params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig one trial trains: the base recipe, tuned values, the trial's epoch budget."""
    return replace(apply_params(cfg.base, params), epochs=cfg.epochs, quantize_int8=False)


# ----------------------------------------------------------------------------------------
# data


def load_tuning_data(dataset: str | Path | CanonicalDataset | TuningData) -> TuningData:
    """Only the ``train`` split (trials carve their tuning split from it); ``valid`` stays unread."""
    if isinstance(dataset, tuple):
        splits, meta = dataset
        if "train" not in splits:
            raise ValueError("tuning data has no 'train' split")
        return {"train": splits["train"]}, meta
    ds = dataset if isinstance(dataset, CanonicalDataset) else open_dataset(dataset)
    if "train" not in ds.splits:
        raise ValueError(f"dataset {ds.root} has no 'train' split")
    return {"train": ds.load("train")}, ds.meta


# ----------------------------------------------------------------------------------------
# MLflow


class _Tracker:
    """MLflow through the client API: no active-run state, so workers and trials never collide."""

    def __init__(self, cfg: TuneConfig):
        import mlflow
        from mlflow.tracking import MlflowClient

        from ferflow.tracking import EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT, mark_experiment

        self.client = MlflowClient(tracking_uri=Paths().mlflow_uri)
        exp = self.client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    cfg.experiment, tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT}
                )
            except mlflow.exceptions.MlflowException:  # another worker created it meanwhile
                self.experiment_id = self.client.get_experiment_by_name(cfg.experiment).experiment_id
        else:
            self.experiment_id = exp.experiment_id
            mark_experiment(self.client, self.experiment_id)

    def parent(self, study, cfg: TuneConfig) -> str:
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        if run_id:
            with contextlib.suppress(Exception):
                if self.client.get_run(run_id).info.run_id == run_id:
                    self.client.update_run(run_id, status="RUNNING")
                    return run_id
        from ferflow.tracking import run_name

        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name("tune", study.study_name),
            tags={"optuna.study": study.study_name, "optuna.storage": redact(cfg.storage_url)},
        )
        run_id = run.info.run_id
        space = {f"space.{k}": json.dumps(v) for k, v in _jsonable(asdict(cfg.space)).items()}
        # how trials were cut short: pruned studies are only comparable under the same settings
        pruning = {
            "pruner": PrunerName(cfg.pruner).value,
            "prune_on": PruneSignal(cfg.prune_on).value,
            "prune_within": cfg.prune_within or "none",
            "warmup_epochs": cfg.warmup_epochs,
            "reduction_factor": cfg.reduction_factor,
            "horizon_correction": cfg.horizon_correction,
            "startup_trials": cfg.startup_trials,
            "seed": cfg.seed,
        }
        self.log_params(run_id, {**space, **pruning, "epochs_per_trial": cfg.epochs, "subset": cfg.subset})
        study.set_user_attr(PARENT_RUN_ATTR, run_id)
        return run_id

    def trial(self, parent_id: str, study_name: str, number: int, params: dict[str, Any], extra: dict) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"tune-trial-{number}",
            tags={"mlflow.parentRunId": parent_id, "optuna.study": study_name, "optuna.trial": str(number)},
        )
        self.log_params(run.info.run_id, {**params, **extra})
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def log_metrics(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in values.items() if v is not None]
        self.client.log_batch(run_id, metrics=metrics)

    def finish(self, run_id: str, state: str, tags: dict[str, str] | None = None) -> None:
        for k, v in (tags or {}).items():
            self.client.set_tag(run_id, k, v)
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")
        self.client.set_terminated(run_id, status=status)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: getattr(v, "value", str(v))))


# ----------------------------------------------------------------------------------------
# the objective


def _pruning_callback_class():
    import keras

    class OptunaReport(keras.callbacks.Callback):
        """After each epoch: report the tuning-split accuracy (or minus its loss, ``signal``) to
        the pruner; stop cleanly if pruned or NaN. ``values`` keeps the accuracies (the objective).

        It only sets ``stop_training``; the objective raises ``TrialPruned`` (or fails the
        trial for a NaN loss) once ``train`` has returned, so checkpoints and files close.
        """

        def __init__(self, trial, on_epoch=None, signal: PruneSignal = PruneSignal.ACCURACY):
            super().__init__()
            self.trial, self.on_epoch, self.signal = trial, on_epoch, PruneSignal(signal)
            self.monitor = "val_accuracy"
            self.values: list[float] = []
            self.losses: list[float] = []  # tuning-split loss per epoch, for pruning studies
            self.pruned_at: int | None = None
            self.nan_at: int | None = None

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            if self.on_epoch:
                self.on_epoch(epoch, logs)
            if not math.isfinite(logs.get("loss", 0.0)):
                self.nan_at = epoch
                self.model.stop_training = True
                return
            value = logs.get(self.monitor)
            if value is None:
                raise KeyError(f"no {self.monitor!r} in the epoch logs {sorted(logs)}")
            self.values.append(value)
            loss = logs.get("val_loss")
            if loss is not None:
                self.losses.append(round(loss, 5))
            if self.signal is PruneSignal.LOSS:
                if loss is None:
                    raise KeyError(f"no 'val_loss' in the epoch logs {sorted(logs)}")
                value = -loss  # pruners compare larger-is-better, like the study
            self.trial.report(value, epoch + 1)  # step = epochs completed (the resource used)
            epochs = (self.params or {}).get("epochs")  # set by fit; unknown: never "last"
            last = epochs is not None and epoch + 1 >= epochs
            if not last and self.trial.should_prune():  # after the last epoch nothing is saved
                self.pruned_at = epoch
                self.model.stop_training = True

    return OptunaReport


@dataclass
class Objective:
    """The function Optuna calls per trial: sample, train on the tuning data, report, score."""

    cfg: TuneConfig
    data: TuningData
    parent_run_id: str | None = None
    worker: int = 0
    callbacks: Sequence[Any] = ()  # extra Keras callbacks for every trial (tests, profiling)
    verbose: bool = True
    calls: int = 0  # trials this objective has run
    _tracker: _Tracker | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.cfg.track and self.parent_run_id:
            self._tracker = _Tracker(self.cfg)

    def __call__(self, trial) -> float:
        import keras
        import optuna

        from ferflow.train import configure_device, fit_model, load_history, prepare_data

        started, started_cpu = time.perf_counter(), time.process_time()
        self.calls += 1
        params = suggest(trial, self.cfg)
        tcfg = trial_config(self.cfg, params)
        trial.set_user_attr("worker", self.worker)
        run_id = None
        if self._tracker:
            extra = {"epochs": self.cfg.epochs, "subset": self.cfg.subset, "worker": self.worker}
            run_id = self._tracker.trial(
                self.parent_run_id, trial.study.study_name, trial.number, params, extra
            )
            trial.set_user_attr("mlflow_run_id", run_id)
        tracker = self._tracker
        progress = _EpochProgress(self.worker, trial.number, self.cfg.epochs) if self.verbose else None

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            if progress:
                progress(epoch, logs)
            if tracker and run_id:
                tracker.log_metrics(run_id, {k: v for k, v in logs.items() if math.isfinite(v)}, step=epoch)

        report = _pruning_callback_class()(trial, on_epoch, self.cfg.prune_on)
        state, value, reason = "FAIL", None, ""
        try:
            # a trial only fits: its value is its best epoch, read from the reports, so it writes
            # no checkpoint, saves no model and exports nothing (fixed costs pruning cannot cut)
            configure_device(tcfg.precision, verbose=False)
            data = prepare_data(tcfg, self.data, self.cfg.steps_per_epoch or None, self.cfg.subset or None)
            with tempfile.TemporaryDirectory(prefix=f"ferflow-trial{trial.number}-") as run_dir:
                callbacks = [report, *self.callbacks]
                fit_model(tcfg, data, Path(run_dir), callbacks=callbacks, verbose=0, checkpoint=False)
                history = load_history(Path(run_dir) / "history.json")
            trial.set_user_attr("epochs_run", len(history))
            if report.nan_at is not None:
                raise FloatingPointError(f"loss is NaN at epoch {report.nan_at + 1}")
            if not report.values:
                raise RuntimeError("training ended before the first epoch was scored")
            value = max(report.values)
            if report.pruned_at is not None:
                state = "PRUNED"
                raise optuna.TrialPruned(f"pruned after epoch {report.pruned_at + 1}")
            state = "COMPLETE"
            return value
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason[:1000])
            raise
        finally:
            seconds = time.perf_counter() - started
            # CPU seconds of this process (all its threads): what a slow or shared host moves
            # less than the wall clock; steal time is not in it
            cpu_seconds = time.process_time() - started_cpu
            trial.set_user_attr("seconds", round(seconds, 2))
            trial.set_user_attr("cpu_seconds", round(cpu_seconds, 2))
            trial.set_user_attr("val_loss", report.losses)
            if tracker and run_id:
                with contextlib.suppress(Exception):
                    if value is not None:
                        clocks = {"trial_seconds": seconds, "trial_cpu_seconds": cpu_seconds}
                        tracker.log_metrics(run_id, {"value": value, **clocks})
                    tracker.finish(
                        run_id, state, {"optuna.state": state, **({"fail_reason": reason} if reason else {})}
                    )
            if self.verbose:
                shown = f"{value:.4f}" if value is not None else "-"
                print(
                    f"[worker {self.worker}] trial {trial.number}: {state:<8} tune acc {shown} "
                    f"({len(report.values)} epochs, {seconds:.1f} s) {_short(params)}"
                    + (f" — {reason}" if reason else ""),
                    flush=True,
                )
            keras.backend.clear_session()


class _EpochProgress:
    """One line per epoch of a trial: the worker, trial, epoch of its budget, losses, tuning
    accuracy and the epoch's seconds (a trial can take minutes; the study is not silent)."""

    def __init__(self, worker: int, trial: int, epochs: int) -> None:
        self.prefix, self.epochs, self.last = f"[worker {worker}] trial {trial}", epochs, time.perf_counter()

    def __call__(self, epoch: int, logs: dict[str, float]) -> None:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        shown = [f"{key} {logs[key]:.4f}" for key in ("loss", "val_loss", "val_accuracy") if key in logs]
        text = ", ".join(shown).replace("val_accuracy", "tune acc").replace("val_loss", "tune loss")
        print(f"{self.prefix} epoch {epoch + 1}/{self.epochs}: {text} ({seconds:.1f} s)", flush=True)


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# ----------------------------------------------------------------------------------------
# study, workers, summary


@dataclass
class TuneResult:
    study_name: str
    storage: str  # redacted URL
    n_trials: int
    states: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    seconds: float
    mlflow_run_id: str | None
    artifacts: dict[str, Path] = field(default_factory=dict)
    baseline_value: float | None = None  # the untuned base recipe's trial, when it completed

    def adopted(self, min_gain: float) -> tuple[dict[str, Any], str]:
        """The values a final training should use, and why: the best trial's when they beat the
        untuned baseline by at least ``min_gain``, else none (the recipe as it is)."""
        if self.best_trial is None:
            return {}, "no completed trial: the recipe as it is"
        if self.gain is None:
            return dict(self.best_params), f"best trial {self.best_trial} (the study has no baseline trial)"
        if self.gain < min_gain:
            return {}, (
                f"kept the recipe: the best trial ({self.best_trial}) gained {100 * self.gain:+.2f} points "
                f"over the untuned baseline, less than the {100 * min_gain:.2f} required"
            )
        return dict(self.best_params), (
            f"best trial {self.best_trial}: {100 * self.gain:+.2f} points over the untuned baseline"
        )

    @property
    def gain(self) -> float | None:
        """Best value minus the untuned baseline's (tuning-split accuracy, 0-1)."""
        if self.best_value is None or self.baseline_value is None:
            return None
        return self.best_value - self.baseline_value

    def render(self) -> str:
        lines = [
            f"study {self.study_name!r} ({self.storage}): {self.n_trials} trials — "
            + ", ".join(f"{v} {k.lower()}" for k, v in sorted(self.states.items())),
        ]
        if self.best_trial is not None:
            lines.append(f"best trial {self.best_trial}: tuning-split accuracy {self.best_value:.4f}")
            lines += [f"  {k:<14} {v}" for k, v in self.best_params.items()]
            if self.gain is not None:
                lines.append(
                    f"untuned baseline: {self.baseline_value:.4f}; tuning gained "
                    f"{100 * self.gain:+.2f} points under the same trial budget"
                )
        else:
            lines.append("no completed trial yet")
        lines.append(f"wall time {self.seconds:.1f} s")
        if self.mlflow_run_id:
            lines.append(f"MLflow parent run {self.mlflow_run_id}")
        return "\n".join(lines)


def create_study(cfg: TuneConfig):
    """Create the study or load it by name (resume); set up its MLflow parent run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=cfg.study,
            storage=storage(cfg.storage_url),
            direction="maximize",
            load_if_exists=True,
        )
    except TuneError:
        raise
    except Exception as exc:
        raise TuneError(
            f"cannot create or load study {cfg.study!r} in {redact(cfg.storage_url)}: {exc}"
        ) from exc
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise TuneError(f"study {cfg.study!r} exists and minimises; ferflow studies maximise accuracy")
    if cfg.baseline and not study.get_trials(deepcopy=False):
        study.enqueue_trial(baseline_params(cfg), user_attrs={BASELINE_ATTR: True})
    parent = _Tracker(cfg).parent(study, cfg) if cfg.track else None
    return study, parent


def split_trials(n_trials: int, workers: int) -> list[int]:
    """The trial budget per worker: ``n_trials`` in total, as even as possible."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return [n_trials // workers + (i < n_trials % workers) for i in range(workers)]


def pin_to_core(core: int) -> None:
    """Pin this process to one core and keep TensorFlow/oneDNN to one thread (before TF starts)."""
    os.sched_setaffinity(0, {core})
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = "1"


def load_worker_study(cfg: TuneConfig, worker: int = 0):
    """The existing study as worker ``worker`` runs it: with its seeded sampler and the pruner."""
    import optuna

    store = storage(cfg.storage_url)
    try:
        probe = optuna.load_study(study_name=cfg.study, storage=store)
    except KeyError as exc:
        raise TuneError(f"no study {cfg.study!r} in {redact(cfg.storage_url)}; create it first") from exc
    offset = 7919 * worker + len(probe.get_trials(deepcopy=False))
    return optuna.load_study(
        study_name=cfg.study,
        storage=store,
        sampler=make_sampler(cfg, offset, parallel=cfg.workers > 1),
        pruner=make_pruner(cfg),
    )


def run_worker(
    cfg: TuneConfig,
    dataset: str | Path | CanonicalDataset | TuningData,
    n_trials: int,
    worker: int = 0,
    core: int | None = None,
    callbacks: Sequence[Any] = (),
    verbose: bool = True,
) -> int:
    """Run ``n_trials`` trials of the (existing) study in this process; returns how many ran."""
    import optuna

    if core is not None:
        pin_to_core(core)
        from ferflow.train import configure_device

        configure_device(cfg.base.precision, verbose=False)
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
    # the objective prints each trial's outcome and failure reason; Optuna's own traceback is noise
    optuna.logging.set_verbosity(optuna.logging.ERROR if verbose else optuna.logging.WARNING)
    if n_trials <= 0:
        return 0
    study = load_worker_study(cfg, worker)
    data = load_tuning_data(dataset)
    objective = Objective(cfg, data, study.user_attrs.get(PARENT_RUN_ATTR), worker, callbacks, verbose)
    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=cfg.timeout or None,
        catch=(Exception,),
        gc_after_trial=True,
    )
    return objective.calls


def _worker_process(cfg: TuneConfig, dataset: Any, n_trials: int, worker: int, core: int | None) -> None:
    run_worker(cfg, dataset, n_trials, worker, core)


def run_study(
    cfg: TuneConfig,
    dataset: str | Path | CanonicalDataset | TuningData,
    pin: bool | None = None,
    callbacks: Sequence[Any] = (),
    verbose: bool = True,
) -> TuneResult:
    """Create/resume the study, run ``cfg.trials`` new trials on ``cfg.workers`` workers, summarise.

    ``pin`` (default: when there are several workers) runs every worker in its own process
    pinned to one core; workers that do not fit one core each run unpinned. With one unpinned
    worker the trials run in this process (``callbacks`` are only passed on there).
    """
    started = time.perf_counter()
    if cfg.trials < 0 or cfg.workers < 1 or cfg.epochs < 1:
        raise ValueError(
            f"need trials >= 0, workers >= 1, epochs >= 1 (got {cfg.trials}, {cfg.workers}, {cfg.epochs})"
        )
    study, _ = create_study(cfg)
    if verbose:
        print(
            f"study {cfg.study!r} in {redact(cfg.storage_url)}: {len(study.trials)} trials so far; adding "
            f"{cfg.trials} on {cfg.workers} worker(s), {cfg.epochs} epochs each, "
            f"pruner {PrunerName(cfg.pruner).value}"
            + (f" within {cfg.prune_within}" if cfg.prune_within else "")
            + (", horizon-corrected" if cfg.horizon_correction else "")
            + (f", subset {cfg.subset} images" if cfg.subset else ""),
            flush=True,
        )
    pin = cfg.workers > 1 if pin is None else pin
    budgets = split_trials(cfg.trials, cfg.workers)
    if cfg.workers == 1 and not pin:
        run_worker(cfg, dataset, budgets[0], 0, None, callbacks, verbose)
    else:
        if isinstance(dataset, CanonicalDataset):
            dataset = dataset.root
        cores = sorted(os.sched_getaffinity(0))
        fits = pin and cfg.workers <= len(cores)
        ctx = mp.get_context("spawn")  # a fresh interpreter per worker: TF thread pools start pinned
        procs = [
            ctx.Process(
                target=_worker_process,
                args=(cfg, dataset, budgets[i], i, cores[i] if fits else None),
                name=f"ferflow-tune-worker-{i}",
            )
            for i in range(cfg.workers)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        crashed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
        if crashed:
            print(f"warning: worker processes exited abnormally: {crashed}", flush=True)
    result = finalize_study(cfg)
    result.seconds = time.perf_counter() - started
    if verbose:
        print(result.render(), flush=True)
    return result


def finalize_study(cfg: TuneConfig, out_dir: str | Path | None = None) -> TuneResult:
    """Summarise the study; with tracking, put best params, plots and the trial table on the parent run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=cfg.study, storage=storage(cfg.storage_url))
    except KeyError as exc:
        raise TuneError(f"no study {cfg.study!r} in {redact(cfg.storage_url)}") from exc
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    result = TuneResult(
        study_name=cfg.study,
        storage=redact(cfg.storage_url),
        n_trials=len(trials),
        states=states,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_trial=best.number if best else None,
        seconds=0.0,
        mlflow_run_id=study.user_attrs.get(PARENT_RUN_ATTR) if cfg.track else None,
        baseline_value=baseline_value(complete),
    )
    with tempfile.TemporaryDirectory(prefix="ferflow-study-") as tmp:
        out = Path(out_dir) if out_dir else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        result.artifacts = write_study_report(study, out)
        if cfg.track and result.mlflow_run_id:
            tracker = _Tracker(cfg)
            run_id = result.mlflow_run_id
            for path in result.artifacts.values():
                tracker.client.log_artifact(run_id, str(path))
            tags = {f"best.{k}": str(v) for k, v in result.best_params.items()}
            tags.update({"optuna.storage": result.storage, "optuna.study": cfg.study})
            if best is not None:
                tags["best.trial"] = str(best.number)
            for k, v in tags.items():
                tracker.client.set_tag(run_id, k, v)
            metrics = {f"n_{k.lower()}": float(v) for k, v in states.items()}
            if best is not None:
                metrics["best_value"] = float(best.value)
            if result.gain is not None:
                metrics["baseline_value"] = float(result.baseline_value)
                metrics["gain_over_baseline"] = float(result.gain)
            tracker.log_metrics(run_id, metrics, step=len(trials))
            tracker.client.set_terminated(run_id, status="FINISHED")
        if not out_dir:
            result.artifacts = {}
    return result


def write_study_report(study, out: Path) -> dict[str, Path]:
    """best_params.json, trials.csv, the plots (PNG) that have enough trials to draw, and
    study_report.html (the plots and a table of every trial in one self-contained page)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis

    files: dict[str, Path] = {}
    trials = study.get_trials(deepcopy=False)  # one read: the storage may be a remote database
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    summary = {
        "study": study.study_name,
        "best_trial": best.number if best else None,
        "best_value": best.value if best else None,
        "best_params": best.params if best else {},
        "baseline_value": baseline_value(complete),
        "states": {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState},
    }
    files["best_params"] = out / "best_params.json"
    files["best_params"].write_text(json.dumps(summary, indent=2))
    frame = study.trials_dataframe()
    if len(frame):
        files["trials"] = out / "trials.csv"
        frame.to_csv(files["trials"], index=False)
    plots = {
        "optimization_history": (vis.plot_optimization_history, 1),
        "intermediate_values": (vis.plot_intermediate_values, 1),
        "param_importances": (vis.plot_param_importances, 2),
    }
    for name, (fn, needs) in plots.items():
        if len(complete) < needs:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks the matplotlib backend experimental
                ax = fn(study)
            fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            path = out / f"{name}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            files[name] = path
        except (ValueError, RuntimeError) as exc:  # e.g. importances need ≥ 2 distinct values
            print(f"note: no {name} plot: {exc}", flush=True)
    files["report"] = write_study_html(summary, trials, files, out / "study_report.html")
    return files


_PLOT_TITLES = {
    "optimization_history": "Optimisation history",
    "intermediate_values": "Tuning accuracy per epoch (intermediate values)",
    "param_importances": "Parameter importances",
}
_HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:24px;color:#1f2328}"
    "table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #d1d9e0;padding:4px 8px}"
    "th{background:#eef1f4}tr.best{background:#dafbe1}img{max-width:100%;border:1px solid #d1d9e0}"
)


def write_study_html(
    summary: dict[str, Any], trials: Sequence[Any], plots: dict[str, Path], path: Path
) -> Path:
    """study_report.html: one self-contained page (the plots inline as PNG, no script, nothing
    fetched) with the best trial, every trial's state, value, epochs and parameters, and the plots.
    Plotly, which Optuna's interactive plots need, is not a ferflow dependency."""
    import base64
    import html

    e = html.escape
    names = sorted({k for t in trials for k in t.params})
    head = "".join(f"<th>{e(h)}</th>" for h in ["trial", "state", "value", "epochs", "seconds", *names])
    rows = []
    for t in trials:
        cells = [
            str(t.number) + (" (baseline)" if t.user_attrs.get(BASELINE_ATTR) else ""),
            t.state.name,
            "" if t.value is None else f"{t.value:.4f}",
            str(t.user_attrs.get("epochs_run", "")),
            str(t.user_attrs.get("seconds", "")),
            *[_cell(t.params.get(n)) for n in names],
        ]
        best = ' class="best"' if t.number == summary["best_trial"] else ""
        rows.append(f"<tr{best}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    figures = [
        f'<h2>{e(_PLOT_TITLES.get(name, name))}</h2><img alt="{e(name)}" src="data:image/png;base64,'
        + base64.b64encode(file.read_bytes()).decode()
        + '">'
        for name, file in plots.items()
        if file.suffix == ".png"
    ]
    best = summary["best_trial"]
    verdict = "no completed trial yet" if best is None else f"best trial {best}: {summary['best_value']:.4f}"
    if summary.get("baseline_value") is not None:
        verdict += f"; untuned baseline {summary['baseline_value']:.4f}"
    states = ", ".join(f"{n} {k.lower()}" for k, n in summary["states"].items() if n)
    body = (
        f"<h1>Optuna study {e(summary['study'])}</h1><p>{len(trials)} trials ({e(states)}); {e(verdict)} "
        "(tuning-split accuracy).</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>{''.join(figures)}"
    )
    path.write_text(
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Optuna study '
        f"{e(summary['study'])}</title><style>{_HTML_STYLE}</style></head><body>{body}</body></html>\n"
    )
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_train_config(
    study_name: str, storage_url: str | None = None, base: TrainConfig | None = None
) -> TrainConfig:
    """``base`` (default ``TrainConfig()``) with the best trial's parameters of ``study_name``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url or TuneConfig().storage_url
    try:
        study = optuna.load_study(study_name=study_name, storage=storage(url))
    except KeyError as exc:
        raise TuneError(f"no study {study_name!r} in {redact(url)}") from exc
    try:
        best = study.best_trial
    except ValueError as exc:
        raise TuneError(f"study {study_name!r} has no completed trial yet") from exc
    return apply_params(base or TrainConfig(), best.params)
