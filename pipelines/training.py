"""The ferflow training pipeline: data → gate → train → evaluate → promotion gate.

    resolve-data ─▶ pull-and-ingest ─▶ tune-setup ─▶ ParallelFor(tune-worker) ─▶ tune-finalize ─┐
    (never cached)   (DVC, GX gate:      (Optuna study  (one RDB study,          (best params,  │
                      fails the run)      + MLflow run)  trials split)            plots)        │
    ┌──────────────────────────────────────────────────────────────────────────────────────────┘
    └▶ train-model ─▶ evaluate-model ─▶ summarize-run
       (MLflow,       (Metrics,
        ONNX, card)    ClassificationMetrics)
                      └─ dsl.If above the floors ─▶ register-and-promote
                                                    (MLflow registry gate: infra-validation,
                                                     no regression vs champion; never cached)
    all inside dsl.ExitHandler(record-outcome)

Parameters are the fields of :class:`ferflow.config.PipelineProfile` (``profile.arguments()``);
their defaults are the ``default`` profile's. Caching is on for every step except the three
that must always run: resolve-data (the data may have changed), summarize-run and the exit
handler. ``build_pipeline(cluster)`` adds the cluster-only settings (resources, accelerators,
retries, node selectors) at compile time; kfp.local ignores them. With
``cluster.train_job.workers`` > 1 the train step is train-job: a Kubeflow TFJob of that many
workers (ferflow.trainjob), whose model and metrics enter the same downstream steps.
"""

from kfp import dsl

from components import (
    evaluate_model,
    pull_and_ingest,
    record_outcome,
    register_and_promote,
    resolve_data,
    summarize_run,
    train_job,
    train_model,
    tune_finalize,
    tune_setup,
    tune_worker,
)
from ferflow.config import PIPELINE_IMAGE, PIPELINE_NAME, PROFILES, ClusterConfig
from ferflow.trainjob import RUN_ID_ENV, RUN_ID_LABEL, cluster_to_json

_D = PROFILES["default"].arguments()


def _kubernetes():
    try:
        from kfp import kubernetes
    except ImportError as exc:
        raise RuntimeError(
            "node selectors, tolerations and secrets need the kfp-kubernetes package "
            "(pip install kfp-kubernetes==2.17.0, compatible with kfp 2.17.0)"
        ) from exc
    return kubernetes


def _configure_cluster(
    task: dsl.PipelineTask, cluster: ClusterConfig, heavy: bool = False, retry: bool = True
) -> None:
    """Cluster-only settings; kfp.local ignores all of them."""
    if cluster.secret_env:
        kubernetes = _kubernetes()
        for env, secret, key in cluster.secret_env:
            kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={key: env})
    if retry and cluster.retries:
        task.set_retry(
            num_retries=cluster.retries, backoff_duration=cluster.retry_backoff, backoff_factor=2.0
        )
    if not heavy:
        return
    task.set_cpu_request(cluster.train_cpu).set_memory_request(cluster.train_memory)
    task.set_memory_limit(cluster.train_memory)
    if cluster.gpus:
        task.set_accelerator_type(cluster.accelerator).set_accelerator_limit(cluster.gpus)
    if cluster.node_selector or cluster.tolerations:
        kubernetes = _kubernetes()
        for key, value in cluster.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for key, value, effect in cluster.tolerations:
            kubernetes.add_toleration(task, key=key, operator="Equal", value=value, effect=effect)


def _data_steps(cluster: ClusterConfig, source, source_format, data_version, **gate):
    """resolve-data (never cached: the data may have changed) and pull-and-ingest (GX gate)."""
    version = resolve_data(source=source, source_format=source_format, data_version=data_version)
    version.set_caching_options(False)
    _configure_cluster(version, cluster, retry=False)
    data = pull_and_ingest(source=source, version=version.output, source_format=source_format, **gate)
    _configure_cluster(data, cluster, retry=False)  # a failed gate is not transient
    return version, data


def _tuning_steps(cluster: ClusterConfig, dataset, **study) -> dsl.PipelineTask:
    """tune-setup builds the study's TuneConfig once; workers and finalize get it in its plan."""
    setup = tune_setup(**study)
    _configure_cluster(setup, cluster)
    with dsl.ParallelFor(setup.output, name="tune-workers") as item:
        # the item carries the study's config: no outer task output enters the loop body
        worker = tune_worker(dataset=dataset, worker=item)
        _configure_cluster(worker, cluster, heavy=True)
    tuned = tune_finalize(worker_trials=dsl.Collected(worker.output), workers=setup.output)
    _configure_cluster(tuned, cluster)
    return tuned


def _training_step(cluster: ClusterConfig, dataset, tuned, **training) -> dsl.PipelineTask:
    """train-model in its pod, or, with ``cluster.train_job.workers`` > 1, train-job: a TFJob of
    that many workers, which this light step submits, waits for and collects. Not retried: the
    operator restarts pre-empted workers, and a restarted step adopts the job of its run."""
    if cluster.train_job.workers <= 1:
        trained = train_model(dataset=dataset, tuned_params=tuned.outputs["Output"], **training)
        _configure_cluster(trained, cluster, heavy=True)
        return trained
    trained = train_job(
        dataset=dataset,
        tuned_params=tuned.outputs["Output"],
        cluster=cluster_to_json(cluster),
        image=PIPELINE_IMAGE,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        **training,
    )
    _configure_cluster(trained, cluster, retry=False)
    # the run's id also from the pod's label: some KFP backends leave run_id's placeholder as is
    _kubernetes().use_field_path_as_env(
        trained, env_name=RUN_ID_ENV, field_path=f"metadata.labels['{RUN_ID_LABEL}']"
    )
    return trained


def _model_steps(cluster: ClusterConfig, dataset, tuned, registered_model, floors, **training):
    """train-model (or train-job), evaluate-model, and register-and-promote inside the
    promotion dsl.If."""
    trained = _training_step(cluster, dataset, tuned, **training)
    evaluation = evaluate_model(model=trained.outputs["model"], dataset=dataset, **floors)
    _configure_cluster(evaluation, cluster)
    with dsl.If(evaluation.outputs["Output"] == True, name="promotion-gate"):  # noqa: E712
        promoted = register_and_promote(
            model=trained.outputs["model"], dataset=dataset, registered_model=registered_model
        ).set_caching_options(False)
        _configure_cluster(promoted, cluster, retry=False)  # a refused model is not transient
    return trained, evaluation


def build_pipeline(cluster: ClusterConfig | None = None):
    """The training pipeline function, with ``cluster`` settings applied to its tasks."""
    cluster = cluster or ClusterConfig()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="ferflow: DVC data → GX gate → RAN training → evaluation → promotion gate.",
    )
    def training_pipeline(
        profile: str = _D["profile"],
        source: str = _D["source"],
        source_format: str = _D["source_format"],
        sources: str = _D["sources"],
        data_version: str = _D["data_version"],
        class_set: str = _D["class_set"],
        leakage: str = _D["leakage"],
        drop_bad_votes: bool = _D["drop_bad_votes"],
        min_class_count: int = _D["min_class_count"],
        model_name: str = _D["model_name"],
        epochs: int = _D["epochs"],
        limit_train: int = _D["limit_train"],
        steps_per_epoch: int = _D["steps_per_epoch"],
        min_accuracy: float = _D["min_accuracy"],
        min_macro_f1: float = _D["min_macro_f1"],
        track: bool = _D["track"],
        trials: int = _D["trials"],
        tune_workers: int = _D["tune_workers"],
        trial_epochs: int = _D["trial_epochs"],
        trial_subset: int = _D["trial_subset"],
        registered_model: str = _D["registered_model"],
    ):
        outcome = record_outcome(profile=profile, track=track).set_caching_options(False)
        _configure_cluster(outcome, cluster)
        with dsl.ExitHandler(outcome, name="ferflow-run"):
            version, data = _data_steps(
                cluster, source, source_format, data_version, sources=sources, class_set=class_set,
                leakage=leakage, drop_bad_votes=drop_bad_votes, min_class_count=min_class_count,
            )  # fmt: skip
            dataset = data.outputs["dataset"]
            tuned = _tuning_steps(
                cluster, dataset, profile=profile, version=version.output, model_name=model_name,
                trial_epochs=trial_epochs, trials=trials, tune_workers=tune_workers,
                trial_subset=trial_subset, steps_per_epoch=steps_per_epoch, track=track,
            )  # fmt: skip
            trained, evaluation = _model_steps(
                cluster, dataset, tuned, registered_model,
                dict(min_accuracy=min_accuracy, min_macro_f1=min_macro_f1),
                model_name=model_name, epochs=epochs, limit_train=limit_train,
                steps_per_epoch=steps_per_epoch, track=track,
            )  # fmt: skip
            summary = summarize_run(
                profile=profile,
                dataset=dataset,
                data_metrics=data.outputs["metrics"],
                model=trained.outputs["model"],
                train_metrics=trained.outputs["metrics"],
                eval_metrics=evaluation.outputs["metrics"],
                blessed=evaluation.outputs["Output"],
                study_report=tuned.outputs["study_report"],
            ).set_caching_options(False)
            _configure_cluster(summary, cluster)

    return training_pipeline


training_pipeline = build_pipeline()
