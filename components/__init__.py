"""Kubeflow Pipelines components: one thin ``@dsl.component`` per pipeline step.

Each body turns KFP artifacts into paths and calls the step logic in :mod:`ferflow.pipeline`
(which calls the library stages). Imports sit inside the bodies because KFP ships a
lightweight component's source alone into its container; there, the ferflow image provides
the package (``base_image``), and ``install_kfp_package=False`` because kfp is in it too.
Locally, ``kfp.local.SubprocessRunner(use_venv=False)`` runs the same bodies in the ferflow venv.

Tuning is three components: ``tune_setup`` (create/resume the Optuna study), ``tune_worker``
(fanned out with dsl.ParallelFor, every worker on the same RDB study) and ``tune_finalize``
(fan-in through dsl.Collected; the best parameters feed ``train_model``).

``train_job`` replaces ``train_model`` when the pipeline is compiled with
``ClusterConfig.train_job.workers`` > 1: the training runs as a Kubeflow TFJob of that many
workers, and the step waits for it and collects its model (ferflow.trainjob).

``evaluate_model`` returns the quality-floor decision as its ``Output: bool``; inside the
pipeline's promotion ``dsl.If`` on it, ``register_and_promote`` registers the model and runs the
registry gate (ferflow.registry: infra-validation, then champion/challenger comparison); it is
never cached, since the champion changes outside the pipeline. See docs/kubeflow.md.
"""

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
    PipelineTaskFinalStatus,
)

from ferflow.config import PIPELINE_IMAGE

component = dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)


@component
def resolve_data(source: str, source_format: str, data_version: str) -> str:
    """Version of the input data (DVC md5, or a file fingerprint); never cached, so that a
    changed dataset changes the cache key of every step after it."""
    from ferflow.pipeline import resolve_data as resolve

    return resolve(source, source_format, data_version)["version"]


@component
def pull_and_ingest(
    source: str,
    version: str,
    source_format: str,
    sources: str,
    class_set: str,
    leakage: str,
    drop_bad_votes: bool,
    min_class_count: int,
    dataset: Output[Dataset],
    data_docs: Output[Artifact],
    gate_report: Output[HTML],
    metrics: Output[Metrics],
):
    """DVC pull + ingest + Great Expectations gate. Raises (fails the run) when the gate fails.

    ``data_docs``: the Data Docs folder (``index.html``, every run's page, ``summary.json``; one
    folder per source). ``gate_report``: one self-contained HTML file with each source's run,
    what the KFP UI shows; written whether the gate passes or not."""
    from ferflow.datadocs import bundle
    from ferflow.pipeline import ingest_config, log_metrics, pull_and_ingest_step

    config = ingest_config(source_format, class_set, leakage, drop_bad_votes, min_class_count)
    data_docs.metadata["index"] = "index.html"
    try:
        out = pull_and_ingest_step(source, version, config, dataset.path, data_docs.path, sources)
    finally:
        bundle(data_docs.path, gate_report.path)
    dataset.metadata.update(out["dataset"])
    log_metrics(metrics, out["metrics"])


@component
def tune_setup(
    profile: str,
    version: str,
    model_name: str,
    trial_epochs: int,
    trials: int,
    tune_workers: int,
    trial_subset: int,
    steps_per_epoch: int,
    track: bool,
) -> list:
    """Create (or resume) the run's Optuna study and its MLflow parent run. Returns the workers'
    plan: one item per worker of the dsl.ParallelFor, each carrying the study's whole TuneConfig,
    the one object the later tuning steps take."""
    from ferflow.pipeline import pipeline_tune_config, tune_setup_step

    cfg = pipeline_tune_config(
        profile, version, model_name, trial_epochs, trials, tune_workers, trial_subset, steps_per_epoch, track
    )
    return tune_setup_step(cfg)


@component
def tune_worker(dataset: Input[Dataset], worker: dict) -> int:
    """One worker of the shared study (its share of the trials, on Train minus the tuning split)."""
    from ferflow.pipeline import tune_worker_step

    return tune_worker_step(dataset.path, worker)


@component
def tune_finalize(
    worker_trials: list,
    workers: list,
    study_report: Output[Artifact],
    metrics: Output[Metrics],
) -> str:
    """Fan-in: the tuned values train-model uses (JSON; ``{}`` keeps the recipe unless the best
    trial beat the untuned baseline), counts, plots and trials.csv."""
    from ferflow.pipeline import log_metrics, tune_finalize_step

    out = tune_finalize_step(workers[0]["tuning"], study_report.path)
    study_report.metadata.update({**out["study"], "worker_trials": list(worker_trials)})
    log_metrics(metrics, out["metrics"])
    return out["best_params"]


@component
def train_model(
    dataset: Input[Dataset],
    model_name: str,
    epochs: int,
    limit_train: int,
    steps_per_epoch: int,
    track: bool,
    tuned_params: str,
    model: Output[Model],
    model_card: Output[Markdown],
    metrics: Output[Metrics],
):
    """Train and export (ONNX + metrics.json + MODEL_CARD.md), tracked in MLflow; ``tuned_params``
    (JSON from tune-finalize, may be ``{}``) override the TrainConfig defaults."""
    import shutil

    from ferflow.pipeline import log_metrics, train_config, train_step

    out = train_step(
        dataset.path,
        model.path,
        train_config(model_name, epochs, tuned_params),
        limit_train,
        steps_per_epoch,
        track,
    )
    model.metadata.update(out["model"])
    shutil.copyfile(out["card"], model_card.path)
    log_metrics(metrics, out["metrics"])


@component
def train_job(
    dataset: Input[Dataset],
    model_name: str,
    epochs: int,
    limit_train: int,
    steps_per_epoch: int,
    track: bool,
    tuned_params: str,
    cluster: str,
    image: str,
    run_id: str,
    model: Output[Model],
    model_card: Output[Markdown],
    metrics: Output[Metrics],
):
    """train-model as a Kubeflow TFJob (ferflow.trainjob): stage the data in MLflow, run
    ``workers`` pods with MultiWorkerMirroredStrategy, wait, collect the chief's model. Same
    outputs as ``train_model``; ``cluster`` is the compile-time ClusterConfig (JSON)."""
    import shutil

    from ferflow.pipeline import log_metrics
    from ferflow.trainjob import (
        TrainJobError,
        WorkerSpec,
        cluster_from_json,
        job_name,
        pipeline_run_id,
        train_job_step,
    )

    if not track:
        raise TrainJobError("the distributed train step hands its model over through MLflow: set track=true")
    job = job_name(pipeline_run_id(run_id))
    spec = WorkerSpec(job, "", model_name, epochs, tuned_params, limit_train, steps_per_epoch)
    out = train_job_step(dataset.path, model.path, spec, cluster_from_json(cluster), image)
    model.metadata.update(out["model"])
    shutil.copyfile(out["card"], model_card.path)
    log_metrics(metrics, out["metrics"])


@component
def evaluate_model(
    model: Input[Model],
    dataset: Input[Dataset],
    min_accuracy: float,
    min_macro_f1: float,
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
) -> bool:
    """Accuracy, macro-F1, per-class recall, confusion matrix. Returns whether the model clears
    the profile's quality floor (the promotion dsl.If); the reason is in the metrics' metadata.
    One unnamed output: kfp.local resolves conditions only on a task's ``Output``."""
    import json

    from ferflow.pipeline import evaluate_step, log_metrics

    out = evaluate_step(model.path, dataset.path, min_accuracy, min_macro_f1)
    log_metrics(metrics, out["metrics"])
    metrics.metadata["reason"] = out["reason"]
    confusion.log_confusion_matrix(out["classes"], out["confusion_matrix"])
    with open(confusion.path, "w") as fh:  # a file, so that kfp.local can cache the step
        json.dump({"classes": out["classes"], "matrix": out["confusion_matrix"]}, fh)
    return out["blessed"]


@component
def register_and_promote(
    model: Input[Model], dataset: Input[Dataset], registered_model: str, promotion: Output[Metrics]
) -> str:
    """Inside the promotion dsl.If: register the run's model and run the registry gate
    (infra-validation + champion/challenger comparison). Never cached: the champion moves."""
    import json

    from ferflow.pipeline import register_and_promote_step

    decision = register_and_promote_step(
        model.metadata.get("mlflow_run_id", ""), dataset.path, registered_model
    )
    promotion.log_metric("promoted", float(decision["promoted"]))
    promotion.log_metric("version", float(decision["version"]))
    promotion.metadata["reason"] = decision["reason"]
    return json.dumps(decision)


@component
def summarize_run(
    profile: str,
    dataset: Input[Dataset],
    data_metrics: Input[Metrics],
    model: Input[Model],
    train_metrics: Input[Metrics],
    eval_metrics: Input[Metrics],
    blessed: bool,
    study_report: Input[Artifact],
    summary: Output[Markdown],
) -> str:
    """The run summary (Markdown for the KFP UI; JSON as the output parameter)."""
    import json

    from ferflow.pipeline import summarize

    data, text = summarize(
        profile,
        dict(dataset.metadata),
        dict(data_metrics.metadata),
        dict(model.metadata),
        dict(train_metrics.metadata),
        dict(eval_metrics.metadata),
        blessed,
        dict(study_report.metadata),
    )
    with open(summary.path, "w") as fh:
        fh.write(text)
    print(text)
    return json.dumps(data, default=str)


@component
def record_outcome(status: PipelineTaskFinalStatus, profile: str, track: bool):
    """Exit handler: records every run's final state (failures included) in MLflow."""
    from ferflow.pipeline import record_outcome as record

    record(status.state, status.error_message or "", status.pipeline_job_resource_name, profile, track)
