"""The Kubeflow pipeline stage: the step logic behind the KFP components.

The components in ``components/`` are thin: they turn KFP artifacts into paths and call the
``*_step`` functions here, which call the library stages (``ferflow.data``, ``ferflow.train``,
``ferflow.evaluate``, ``ferflow.registry``). Compiling, running (``kfp.local``), submitting
and scheduling the pipeline is the adapter :mod:`pipelines.driver`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ferflow.config import (
    DEFAULT_SOURCES,
    DVC_SOURCE,
    PIPELINE_NAME,
    DataSource,
    GateConfig,
    IngestConfig,
    LabelScheme,
    LeakagePolicy,
    Paths,
    PipelineProfile,
    SourceFormat,
    TrainConfig,
    TuneConfig,
)

RUN_EXPERIMENT = "ferflow-pipeline"  # MLflow experiment of the per-run outcome records


class PipelineError(RuntimeError):
    """The pipeline cannot be built, compiled, submitted or its input resolved; says why."""


# --------------------------------------------------------------------------------------------
# Step logic (called inside the KFP components)


def project_root() -> Path:
    """The checkout the steps work in: ``FERFLOW_HOME`` or the working directory."""
    return Paths().root.resolve()


def fingerprint(path: str | Path) -> str:
    """Cheap content version of a non-DVC source: names, sizes and mtimes of every file."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"data source {path} does not exist")
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"fp-{h.hexdigest()[:16]}"


def dvc_raw_dir(root: Path, source_format: str | SourceFormat) -> Path:
    if SourceFormat(source_format) is not SourceFormat.FERPLUS:
        raise PipelineError(f"source 'dvc' holds FERPlus folders; format {source_format!r} needs a path")
    return Paths(root).ferplus_raw


def resolve_data(source: str, source_format: str, data_version: str = "") -> dict[str, str]:
    """Where the data is and which version it is, without reading images.

    For ``source == "dvc"`` the version is the md5 that ``data.dvc`` pins (the data need not be
    pulled yet); a non-empty ``data_version`` must equal it. For a folder or CSV it is a
    :func:`fingerprint`. Downstream steps take the version as input, so a cached ingest is
    reused exactly while the data is unchanged.
    """
    from ferflow.data import dvc_version_of

    if source == DVC_SOURCE:
        root = project_root()
        raw = dvc_raw_dir(root, source_format)
        version = dvc_version_of(raw)
        if version is None:
            raise PipelineError(
                f"source 'dvc': no DVC pointer (data.dvc) tracks {raw} under {root}; run in the ferflow "
                "checkout or set FERFLOW_HOME to it"
            )
        if data_version and data_version != version:
            raise PipelineError(
                f"data_version {data_version!r} requested but {root / 'data.dvc'} pins {version!r}; "
                "check out the commit whose data.dvc has that md5, or leave data_version empty"
            )
        return {"path": str(raw), "version": version}
    path = Path(source).expanduser().resolve()
    version = fingerprint(path)
    if data_version and data_version != version:
        raise PipelineError(f"data_version {data_version!r} requested but {path} is {version!r}")
    return {"path": str(path), "version": version}


def ingest_config(
    source_format: str, class_set: str, leakage: str, drop_bad_votes: bool, min_class_count: int
) -> IngestConfig:
    gate = GateConfig(
        min_class_count=min_class_count, leakage=LeakagePolicy(leakage), drop_bad_votes=drop_bad_votes
    )
    return IngestConfig(SourceFormat(source_format), LabelScheme.MAJORITY, class_set, gate)


def dvc_sources(names: str, config: IngestConfig) -> list[DataSource]:
    """The sources of ``data/`` named in ``names`` (comma-separated); the profile's gate settings
    apply to FERPlus, the photo gate to photo trees."""
    wanted = [n.strip() for n in names.split(",") if n.strip()] or ["ferplus"]
    known = {s.name: s for s in DEFAULT_SOURCES}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise PipelineError(f"sources {unknown} are not sources of data/ ({', '.join(known)})")
    return [replace(known[n], gate=config.gate) if n == "ferplus" else known[n] for n in wanted]


def pull_and_ingest_step(
    source: str,
    version: str,
    config: IngestConfig,
    dataset_dir: str | Path,
    docs_dir: str | Path,
    sources: str = "ferplus",
) -> dict[str, Any]:
    """DVC-pull (for the project's data: the ``sources`` of data/), ingest and gate into
    ``dataset_dir``; a folder or CSV ``source`` is one dataset in ``config.source_format``.

    The GX Data Docs (``index.html`` and the pages it links; one folder per source) and
    ``summary.json`` land in ``docs_dir`` whether the gate passes or not; a failed gate raises
    :class:`~ferflow.validate.GateFailed` and writes no dataset.
    """
    from ferflow.data import dvc_version_of, ingest, ingest_sources
    from ferflow.validate import GateFailed
    from ferflow.versioning import pull

    started = time.perf_counter()
    if source == DVC_SOURCE:
        root = project_root()
        chosen = dvc_sources(sources, config)
        pull(root, targets=[s.path for s in chosen])
        pulled = dvc_version_of(root / chosen[0].path)
        if pulled != version:
            raise PipelineError(f"pulled data is version {pulled!r}, expected {version!r}")

        def run(tmp: str):
            return ingest_sources(
                chosen, config.label_scheme, config.class_set, tmp, False, root, out=dataset_dir
            )
    else:
        src = Path(source).expanduser().resolve()

        def run(tmp: str):
            return ingest(src, dataset_dir, config, report_dir=tmp, progress=False)

    docs_dir = Path(docs_dir)
    with tempfile.TemporaryDirectory(prefix="ferflow-gate-") as tmp:
        try:
            result = run(tmp)
        except GateFailed as exc:
            _copy_report(Path(tmp), docs_dir)
            print(exc.report.human(), flush=True)
            raise
        _copy_report(Path(tmp), docs_dir)
    for name, report in result.reports.items():
        print(f"[{name}] {report.human()}", flush=True)
    return {"metrics": _ingest_metrics(result, started), "dataset": _dataset_meta(result, version)}


def _ingest_metrics(result, started: float) -> dict[str, float]:
    summaries = [r.summary for r in result.reports.values()]
    metrics: dict[str, float] = {
        "images_read": sum(s["n_rows"] for s in summaries),
        "images_kept": sum(s["n_kept"] for s in summaries),
        "dropped_by_policy": sum(s["n_policy_dropped"] for s in summaries),
        "dropped_by_scheme": sum(s["n_scheme_dropped"] for s in summaries),
        "cross_split_duplicates": sum(s["duplicates"]["cross_split_groups"] for s in summaries),
        "seconds": round(time.perf_counter() - started, 2),
    }
    for split, info in result.meta["splits"].items():
        metrics[f"{split}_images"] = info["n"]
    if len(result.reports) > 1:
        for name, s in zip(result.reports, summaries, strict=True):
            metrics[f"{name}_images_kept"] = s["n_kept"]
    return metrics


def _dataset_meta(result, version: str) -> dict[str, Any]:
    return {
        "version": version,
        "source": result.meta["source"],
        "source_format": result.meta["source_format"],
        "sources": ",".join(result.reports),
        "class_set": result.meta["class_set"],
        "classes": result.meta["classes"],
        "splits": {k: v["n"] for k, v in result.meta["splits"].items()},
        "gate": "passed",
    }


def _copy_report(report: Path, docs_dir: Path) -> None:
    """Data Docs to ``docs_dir`` (so ``docs_dir/index.html`` and its links work): one source's at
    the root, several sources' each in its folder under an index page that links them."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    if (report / "data_docs").is_dir():
        shutil.copytree(report / "data_docs", docs_dir, dirs_exist_ok=True)
    if (report / "summary.json").is_file():
        shutil.copy2(report / "summary.json", docs_dir / "summary.json")
    per_source = sorted(p for p in report.iterdir() if (p / "summary.json").is_file())
    for sub in per_source:
        _copy_report(sub, docs_dir / sub.name)
    if per_source:
        links = "".join(f'<li><a href="{p.name}/index.html">{p.name}</a></li>' for p in per_source)
        (docs_dir / "index.html").write_text(
            f"<html><body><h1>Data gate, per source</h1><ul>{links}</ul></body></html>"
        )


def train_config(model_name: str, epochs: int, tuned_params: str = "") -> TrainConfig:
    """The final training recipe: ``TrainConfig`` defaults, the tune step's best values on top."""
    cfg = replace(TrainConfig(), model=model_name, epochs=epochs)
    params = json.loads(tuned_params) if tuned_params else {}
    if params:
        from ferflow.tune import apply_params

        cfg = apply_params(cfg, params)
    return cfg


# tuning: tune-setup ─▶ dsl.ParallelFor(tune-worker × tune_workers) ─▶ tune-finalize ─▶ train-model


def study_name(profile: str, version: str, model_name: str) -> str:
    """One Optuna study per (profile, data version, model): a re-run resumes it, new data starts anew."""
    return f"{PIPELINE_NAME}-{profile}-{model_name}-{version[:16]}"


def pipeline_tune_config(
    profile: str,
    version: str,
    model_name: str,
    trial_epochs: int,
    trials: int,
    workers: int,
    trial_subset: int,
    steps_per_epoch: int,
    track: bool,
) -> TuneConfig:
    """The study of a pipeline run, built once from the profile's tuning fields: storage from
    ``FERFLOW_OPTUNA_STORAGE`` (a Secret on a cluster; the project's ``optuna.db`` locally); each
    trial trains ``trial_epochs`` epochs on at most ``trial_subset`` images (0: all of Train
    minus the tuning split).

    Width and batch size stay at the recipe's: they set the final training's cost, and a profile
    documents that time. Short trials also favour the cheaper, weaker settings of both.
    ``ferflow tune`` searches them."""
    base = TuneConfig()
    return replace(
        base,
        space=replace(base.space, width=(base.base.width,), batch_size=(base.base.batch_size,)),
        study=study_name(profile, version, model_name),
        trials=trials,
        workers=max(1, workers),
        subset=trial_subset,
        epochs=max(1, trial_epochs),
        steps_per_epoch=steps_per_epoch,
        base=replace(base.base, model=model_name),
        track=track,
    )


def tune_setup_step(cfg: TuneConfig) -> list[dict[str, Any]]:
    """Create (or resume) the study and its MLflow parent run. Returns one item per ParallelFor
    worker: the study's config as plain data (the object the later tuning steps take), the
    worker's index and its trial budget. A worker thus needs no other task's output (kfp.local
    2.17 resolves outer task outputs inside a loop as 0.0, and loops only over ``Output``).
    """
    from ferflow.recipes import to_dict
    from ferflow.tune import create_study, split_trials

    create_study(cfg)
    tuning = to_dict(cfg)
    budgets = split_trials(cfg.trials, cfg.workers)
    return [{"tuning": tuning, "worker": i, "trials": n} for i, n in enumerate(budgets)]


def tune_worker_step(dataset_dir: str | Path, item: dict[str, Any]) -> int:
    """One ParallelFor worker: its share of the trial budget on the shared study (Train only)."""
    from ferflow.recipes import tune_config_from_dict
    from ferflow.tune import run_worker

    cfg = tune_config_from_dict(item["tuning"], "tune-worker item")
    return run_worker(cfg, dataset_dir, int(item["trials"]), worker=int(item["worker"]))


def tune_finalize_step(tuning: dict[str, Any], report_dir: str | Path) -> dict[str, Any]:
    """The values train-model uses (JSON), counts, and the study report (plots, trials.csv).

    Train-model gets the best trial's values only when they beat the study's untuned baseline by
    ``min_gain``; otherwise ``{}`` (the recipe), and ``study.decision`` says which and why.
    """
    from ferflow.recipes import tune_config_from_dict
    from ferflow.tune import finalize_study

    cfg = tune_config_from_dict(tuning, "tune-finalize tuning")
    result = finalize_study(cfg, out_dir=report_dir)
    params, decision = result.adopted(cfg.min_gain)
    metrics: dict[str, Any] = {f"trials_{k.lower()}": v for k, v in result.states.items()}
    metrics["trials_total"] = result.n_trials
    if result.best_value is not None:
        metrics["best_tune_accuracy"] = result.best_value
    if result.gain is not None:
        metrics["baseline_tune_accuracy"] = result.baseline_value
        metrics["tuning_gain"] = result.gain
    return {
        "best_params": json.dumps(params),
        "metrics": metrics,
        "study": {
            "study": result.study_name,
            "storage": result.storage,
            "best_trial": result.best_trial,
            "best_value": result.best_value,
            "baseline_value": result.baseline_value,
            "adopted": bool(params),
            "decision": decision,
        },
    }


def train_step(
    dataset_dir: str | Path,
    model_dir: str | Path,
    config: TrainConfig,
    limit_train: int = 0,
    steps_per_epoch: int = 0,
    track: bool = True,
) -> dict[str, Any]:
    """Train on the canonical dataset; ``model_dir`` gets model.onnx, metrics.json, MODEL_CARD.md."""
    from ferflow.train import train

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ferflow-train-") as run_dir:
        result = train(
            config,
            dataset_dir,
            run_dir=run_dir,
            track=track,
            export=True,
            export_dir=model_dir,
            steps_per_epoch=steps_per_epoch or None,
            limit_train=limit_train or None,
        )
    return train_outputs(result, config, started, model_dir)


def train_outputs(result: Any, config: TrainConfig, started: float, model_dir: str | Path) -> dict[str, Any]:
    """What the train step hands on (metrics, model metadata, the card's path), from a
    :class:`~ferflow.train.TrainResult`; the distributed train step's chief sends the same."""
    test = result.metrics.get("test", {})
    metrics = {
        "epochs_run": len(result.history),
        "train_seconds": round(result.train_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    for key in ("accuracy", "macro_f1", "occluded_accuracy"):
        if key in test:
            metrics[f"test_{key}"] = test[key]
    return {
        "metrics": metrics,
        "model": {
            "framework": "onnx",
            "model": config.model,
            "onnx_precision": result.metrics.get("onnx_precision"),
            "mlflow_run_id": result.mlflow_run_id,
            "device": result.device.describe(),
        },
        "card": Path(model_dir) / "MODEL_CARD.md",
    }


def evaluate_step(
    model_dir: str | Path, dataset_dir: str | Path, min_accuracy: float, min_macro_f1: float
) -> dict[str, Any]:
    """Score the exported model on the most held-out split and decide whether it may be promoted.

    The decision here is the absolute floor of the profile; the registry's champion/challenger
    gate (infra-validation, no regression) comes after it.
    """
    from ferflow.canonical import open_dataset
    from ferflow.evaluate import evaluate

    started = time.perf_counter()
    ds = open_dataset(dataset_dir)
    splits = {s: ds.load(s) for s in ds.splits}
    out = evaluate(model_dir, splits, ds.classes)
    acc, f1 = out["accuracy"], out["macro_f1"]
    failed = []
    if acc < min_accuracy:
        failed.append(f"accuracy {acc:.4f} < floor {min_accuracy:.4f}")
    if f1 < min_macro_f1:
        failed.append(f"macro-F1 {f1:.4f} < floor {min_macro_f1:.4f}")
    blessed = not failed
    reason = (
        "; ".join(failed)
        if failed
        else f"accuracy {acc:.4f} ≥ {min_accuracy:.4f} and macro-F1 {f1:.4f} ≥ {min_macro_f1:.4f}"
    )
    metrics = {
        "accuracy": acc,
        "macro_f1": f1,
        "n": out["n"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    if "occluded_accuracy" in out:
        metrics["occluded_accuracy"] = out["occluded_accuracy"]
    for c, r in out["per_class_recall"].items():
        metrics[f"recall_{c}"] = r
    return {
        "metrics": metrics,
        "classes": list(out["classes"]),
        "confusion_matrix": out["confusion_matrix"],
        "split": out["split"],
        "blessed": blessed,
        "reason": reason,
    }


def register_and_promote_step(
    mlflow_run_id: str, dataset_dir: str | Path, registered_model: str, margin: float = 0.0
) -> dict[str, Any]:
    """Register the training run's model (alias ``challenger``) and run the registry's gate.

    The gate (infra-validation through the serving code, then no regression against the
    champion on the dataset's most held-out split) decides whether ``champion`` moves.
    """
    from ferflow.canonical import open_dataset
    from ferflow.config import RegistryConfig
    from ferflow.evaluate import source_label_sets
    from ferflow.registry import EvalSet, decision_dict, promote, register

    if not mlflow_run_id:
        raise PipelineError("the training step logged no MLflow run (track=False): nothing to register")
    ds = open_dataset(dataset_dir)
    split = ds.splits[-1]
    cfg = RegistryConfig(model_name=registered_model, margin=margin)
    version = register(mlflow_run_id, cfg)
    decision = promote(
        ds.load(split),
        ds.classes,
        version=str(version.version),
        config=cfg,
        label_sets=source_label_sets(ds.meta),
        evaluated_on=EvalSet.of(dataset_dir, ds.meta, split),
    )
    print(decision.human(), flush=True)
    return decision_dict(decision) | {"registered_model": registered_model, "eval_split": split}


def record_outcome(state: str, error: str, job: str, profile: str, track: bool) -> dict[str, str]:
    """Exit-handler record of a run: printed, and an MLflow run when tracking is on."""
    record = {"state": state, "error": error or "", "pipeline_job": job, "profile": profile}
    print(f"ferflow pipeline run {job}: {state}" + (f" — {error}" if error else ""), flush=True)
    if track:
        import mlflow

        from ferflow.tracking import use_experiment

        mlflow.set_tracking_uri(Paths().mlflow_uri)
        use_experiment(RUN_EXPERIMENT)
        with mlflow.start_run(run_name=job) as run:
            mlflow.set_tags({f"pipeline.{k}": v[:5000] for k, v in record.items()})
            record["mlflow_run_id"] = run.info.run_id
    return record


def summarize(
    profile: str,
    data: dict[str, Any],
    data_metrics: dict[str, Any],
    train: dict[str, Any],
    train_metrics: dict[str, Any],
    evaluation: dict[str, Any],
    blessed: bool,
    tuning: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """The run summary as JSON and as the Markdown the KFP UI shows."""
    # KFP metadata is a protobuf Struct: every number comes back a float
    data, data_metrics, train, train_metrics, evaluation = (
        _ints(d) for d in (data, data_metrics, train, train_metrics, evaluation)
    )
    reason = str(evaluation.pop("reason", ""))
    summary = {
        "profile": profile,
        "data_version": data.get("version"),
        "data": {"splits": data.get("splits"), "gate": data.get("gate"), **data_metrics},
        "model": {**train, **train_metrics},
        "evaluation": evaluation,
        "blessed": blessed,
        "reason": reason,
        "tuning": _ints(tuning or {}),
    }
    lines = [
        f"# ferflow training run — profile `{profile}`",
        "",
        f"- **Data version**: `{summary['data_version']}`; gate {data.get('gate')}; "
        f"images kept {data_metrics.get('images_kept')} of {data_metrics.get('images_read')} "
        f"(splits {data.get('splits')})",
        f"- **Tuning**: {tuning_line(summary['tuning'])}",
        f"- **Model**: `{train.get('model')}`, {train_metrics.get('epochs_run')} epochs, "
        f"{train_metrics.get('train_seconds')} s training on {train.get('device')}, "
        f"ONNX {train.get('onnx_precision')}; MLflow run `{train.get('mlflow_run_id')}`",
        f"- **Test accuracy** {evaluation.get('accuracy', float('nan')):.4f}, macro-F1 "
        f"{evaluation.get('macro_f1', float('nan')):.4f} (n = {evaluation.get('n')})",
        f"- **Quality floor**: {'passed' if blessed else 'not passed'} — {reason}",
    ]
    return summary, "\n".join(lines) + "\n"


def tuning_line(t: dict[str, Any]) -> str:
    if t.get("best_trial") is None:
        return "no completed trial"
    base = t.get("baseline_value")
    baseline = f", untuned baseline {base:.4f}" if isinstance(base, float) else ""
    return (
        f"study `{t.get('study')}`, best trial {t['best_trial']} (tuning-split accuracy "
        f"{t.get('best_value', float('nan')):.4f}{baseline}); {t.get('decision', '')}"
    )


def _ints(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def log_metrics(artifact: Any, values: dict[str, Any]) -> None:
    """Log numbers on a KFP ``Metrics`` artifact and also write them to its file.

    The file matters: kfp.local treats an output artifact without a file as missing and
    never serves the task from its cache.
    """
    for k, v in values.items():
        if isinstance(v, bool | int | float):
            artifact.log_metric(k, float(v))
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(values, indent=1, default=str))


def pipeline_arguments(profile: PipelineProfile, **overrides: Any) -> dict[str, Any]:
    """Runtime parameters of a run: the profile's, with non-None ``overrides`` on top."""
    args = profile.arguments()
    unknown = set(overrides) - set(args)
    if unknown:
        raise PipelineError(f"unknown pipeline parameters {sorted(unknown)}; known: {sorted(args)}")
    args.update({k: v for k, v in overrides.items() if v is not None})
    return args
