"""``ferflow pipeline``: compile, run locally (kfp.local), submit, schedule (pipelines.driver)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ferflow.cli.common import USAGE, fail, require_path, require_source
from ferflow.config import MODEL_NAMES, SourceFormat

# --model as a choice: `--help` lists the architectures and a typo is a usage error
ModelName = StrEnum("ModelName", {name: name for name in MODEL_NAMES})

app = typer.Typer(
    help="The Kubeflow training pipeline: compile, run locally (kfp.local), submit, schedule.",
    no_args_is_help=True,
)

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="pipeline profile: smoke or default.")]
HostOpt = Annotated[
    str, typer.Option("--host", help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888.")
]
ExperimentOpt = Annotated[str, typer.Option("--experiment", help="KFP experiment.")]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", help="Kubernetes namespace (multi-user Kubeflow).")
]
PackageOpt = Annotated[
    Path | None, typer.Option("--package", help="compiled pipeline YAML (default: compile now).")
]
SourceOpt = Annotated[str | None, typer.Option("--source", help="'dvc' (project data) or a dataset path.")]
SourceFormatOpt = Annotated[SourceFormat | None, typer.Option("--format", "-f", help="layout of --source.")]
DataVersionOpt = Annotated[
    str | None, typer.Option("--data-version", help="expected DVC md5 of the data (fails on mismatch).")
]
ModelOpt = Annotated[
    ModelName | None, typer.Option("--model", help="architecture to train (ferflow.models).")
]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", min=1, help="training epochs.")]
GpusOpt = Annotated[int, typer.Option("--gpus", min=0, help="accelerators for the train step.")]
NodeSelectorOpt = Annotated[
    list[str] | None,
    typer.Option("--node-selector", help="KEY=VALUE for the train step's pods (repeatable; kfp-kubernetes)."),
]
TolerationOpt = Annotated[
    list[str] | None,
    typer.Option("--toleration", help="KEY=VALUE:EFFECT for the train step (repeatable; kfp-kubernetes)."),
]
TrainWorkersOpt = Annotated[
    int,
    typer.Option(
        "--train-workers",
        min=0,
        help="> 1: train as a Kubeflow TFJob of this many workers (MultiWorkerMirroredStrategy); "
        "0 or 1: in the train step's pod.",
    ),
]
GpusPerWorkerOpt = Annotated[
    int,
    typer.Option("--gpus-per-worker", min=0, help="accelerators per TFJob worker (with --train-workers)."),
]
SecretEnvOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--secret-env",
        help="VAR=SECRET:KEY: every step (and TFJob worker) gets $VAR from that Secret's key "
        "(repeatable; kfp-kubernetes), e.g. MLFLOW_TRACKING_URI=ferflow-db:mlflow-uri.",
    ),
]
RetriesOpt = Annotated[
    int | None,
    typer.Option("--retries", min=0, help="retries of each step on a cluster [default: ClusterConfig]."),
]


def _profile_arguments(profile: str, **overrides):
    from ferflow.config import get_profile
    from ferflow.pipeline import PipelineError, pipeline_arguments

    try:
        return pipeline_arguments(get_profile(profile), **overrides)
    except (ValueError, PipelineError) as exc:
        raise fail(f"error: {exc}", USAGE) from exc


def _cluster_config(
    gpus: int,
    node_selector: list[str] | None,
    toleration: list[str] | None,
    retries: int | None,
    train_workers: int = 0,
    gpus_per_worker: int = 0,
    secret_env: list[str] | None = None,
):
    from ferflow.config import ClusterConfig, TrainJobConfig

    if gpus_per_worker and train_workers <= 1:
        raise fail(
            f"error: --gpus-per-worker {gpus_per_worker} needs --train-workers 2 or more "
            "(for the in-step training use --gpus)",
            USAGE,
        )

    selectors: dict[str, str] = {}
    for item in node_selector or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"error: --node-selector {item!r} is not KEY=VALUE (e.g. gpu=a100)", USAGE)
        selectors[key] = value
    tolerations = []
    for item in toleration or []:
        kv, sep, effect = item.rpartition(":")
        key, eq, value = kv.partition("=")
        if not sep or not eq or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise fail(
                f"error: --toleration {item!r} is not KEY=VALUE:NoSchedule|PreferNoSchedule|NoExecute",
                USAGE,
            )
        tolerations.append((key, value, effect))
    if retries is None:
        retries = ClusterConfig().retries
    job = TrainJobConfig(workers=train_workers, gpus_per_worker=gpus_per_worker)
    return ClusterConfig(
        gpus=gpus,
        node_selector=selectors,
        tolerations=tuple(tolerations),
        retries=retries,
        secret_env=_secret_env(secret_env),
        train_job=job,
    )


def _secret_env(items: list[str] | None) -> tuple[tuple[str, str, str], ...]:
    """--secret-env VAR=SECRET:KEY values as ClusterConfig.secret_env."""
    out = []
    for item in items or []:
        var, eq, ref = item.partition("=")
        secret, colon, key = ref.partition(":")
        if not (var and eq and secret and colon and key):
            raise fail(
                f"error: --secret-env {item!r} is not VAR=SECRET:KEY "
                "(e.g. MLFLOW_TRACKING_URI=ferflow-db:mlflow-uri)",
                USAGE,
            )
        out.append((var, secret, key))
    return tuple(out)


def _compile_settings(
    package: Path | None, train_workers: int, gpus_per_worker: int, secret_env: list[str] | None
):
    """The ClusterConfig submit/schedule compile with; a --package was compiled already."""
    if package is not None:
        require_path(package, "--package", folder=False, hint="write one with `ferflow pipeline compile`")
        if train_workers or gpus_per_worker or secret_env:
            raise fail(
                "error: --train-workers/--gpus-per-worker/--secret-env are compile settings: pass "
                "them to `ferflow pipeline compile`, not with --package",
                USAGE,
            )
        return None
    return _cluster_config(0, None, None, None, train_workers, gpus_per_worker, secret_env)


def _check_cron(cron: str) -> None:
    """Kubeflow's 6-field cron, checked before kfp is imported (the driver checks it again)."""
    fields = cron.split()
    if len(fields) != 6:
        hint = (
            f"for a 5-field crontab prepend the seconds: '0 {cron}'"
            if len(fields) == 5
            else "e.g. '0 0 3 * * *'"
        )
        raise fail(
            f"error: --cron {cron!r} has {len(fields)} fields; Kubeflow needs 6: second minute hour "
            f"day-of-month month day-of-week ({hint})",
            USAGE,
        )


@app.command("compile")
def pipeline_compile(
    output: Annotated[Path, typer.Option("--output", "-o", help="IR YAML file to write.")] = Path(
        "ferflow-training.yaml"
    ),
    gpus: GpusOpt = 0,
    node_selector: NodeSelectorOpt = None,
    toleration: TolerationOpt = None,
    retries: RetriesOpt = None,
    train_workers: TrainWorkersOpt = 0,
    gpus_per_worker: GpusPerWorkerOpt = 0,
    secret_env: SecretEnvOpt = None,
) -> None:
    """Compile the training pipeline to KFP IR YAML (upload it or use it with submit --package)."""
    cluster = _cluster_config(
        gpus, node_selector, toleration, retries, train_workers, gpus_per_worker, secret_env
    )
    from pipelines.driver import compile_pipeline, read_pipeline_spec  # kfp: after the checks

    try:
        path = compile_pipeline(output, cluster)
    except RuntimeError as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    spec, _ = read_pipeline_spec(path)  # what the cluster will parse, checked here
    typer.echo(f"{path}: pipeline {spec.pipeline_info.name!r}, {len(spec.components)} components")


@app.command("run")
def pipeline_run(
    profile: ProfileOpt = "default",
    source: SourceOpt = None,
    source_format: SourceFormatOpt = None,
    data_version: DataVersionOpt = None,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
    min_class_count: Annotated[
        int | None, typer.Option("--min-class-count", min=0, help="gate minimum.")
    ] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="reuse unchanged steps.")] = True,
    pipeline_root: Annotated[
        Path | None, typer.Option("--pipeline-root", help="outputs and cache (default artifacts/pipeline).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="stream every step's log.")] = False,
) -> None:
    """Run the training pipeline on this machine (kfp.local); ends with the run summary."""
    if source is not None and source != "dvc":
        require_source(Path(source), source_format, "--source")
    args = _profile_arguments(
        profile,
        source=source,
        source_format=source_format.value if source_format else None,
        data_version=data_version,
        model_name=model.value if model else None,
        epochs=epochs,
        min_class_count=min_class_count,
    )
    typer.echo(f"ferflow pipeline, profile {profile}: " + ", ".join(f"{k}={v}" for k, v in args.items()))
    from ferflow.pipeline import PipelineError
    from pipelines.driver import run_local  # kfp: after the arguments are checked

    try:
        run = run_local(args, pipeline_root=pipeline_root, cache=cache, verbose=verbose)
    except PipelineError as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    typer.echo(run.render())
    if not run.succeeded:
        raise fail(
            f"error: pipeline FAILED at step {run.failed_step or 'unknown'} "
            f"(the summary above says why; full log: {run.log_path})"
        )


@app.command("submit")
def pipeline_submit(
    host: HostOpt,
    profile: ProfileOpt = "default",
    experiment: ExperimentOpt = "ferflow",
    run_name: Annotated[str | None, typer.Option("--run-name", help="run display name.")] = None,
    namespace: NamespaceOpt = None,
    package: PackageOpt = None,
    data_version: DataVersionOpt = None,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
    train_workers: TrainWorkersOpt = 0,
    gpus_per_worker: GpusPerWorkerOpt = 0,
    secret_env: SecretEnvOpt = None,
) -> None:
    """Create one run of the training pipeline on a Kubeflow cluster."""
    args = _profile_arguments(
        profile, data_version=data_version, model_name=model.value if model else None, epochs=epochs
    )
    cluster = _compile_settings(package, train_workers, gpus_per_worker, secret_env)
    from ferflow.pipeline import PipelineError
    from pipelines.driver import submit

    try:
        run_id = submit(host, args, experiment, run_name, namespace, package, cluster)
    except PipelineError as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    typer.echo(f"submitted run {run_id} (profile {profile}) to {host}")


@app.command("schedule")
def pipeline_schedule(
    host: HostOpt,
    cron: Annotated[
        str, typer.Option("--cron", help="6-field cron: second minute hour day month weekday.")
    ] = "0 0 3 * * *",
    profile: ProfileOpt = "default",
    experiment: ExperimentOpt = "ferflow",
    name: Annotated[str | None, typer.Option("--name", help="recurring run name.")] = None,
    namespace: NamespaceOpt = None,
    package: PackageOpt = None,
    max_concurrency: Annotated[int, typer.Option("--max-concurrency", min=1, help="runs at once.")] = 1,
    catchup: Annotated[bool, typer.Option("--catchup/--no-catchup", help="backfill missed runs.")] = False,
    train_workers: TrainWorkersOpt = 0,
    gpus_per_worker: GpusPerWorkerOpt = 0,
    secret_env: SecretEnvOpt = None,
) -> None:
    """Create a recurring run (scheduled retraining) of the training pipeline."""
    args = _profile_arguments(profile)
    _check_cron(cron)
    cluster = _compile_settings(package, train_workers, gpus_per_worker, secret_env)
    from ferflow.pipeline import PipelineError
    from pipelines.driver import schedule

    try:
        rr = schedule(
            host, cron, args, experiment, name, namespace, max_concurrency, catchup, package, cluster
        )
    except PipelineError as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    typer.echo(f"recurring run {rr.recurring_run_id} ({cron}, profile {profile}) created on {host}")


@app.command("job-worker")
def pipeline_job_worker(
    work_dir: Annotated[
        Path, typer.Option("--work-dir", help="where the pod keeps the data and its run.")
    ] = Path("/tmp/ferflow-job"),
) -> None:
    """One worker of the distributed train step (a TFJob pod runs it): the spec comes from
    $FERFLOW_TRAINJOB, the cluster from the TF_CONFIG the Training Operator sets."""
    import os

    from ferflow.trainjob import SPEC_ENV, TrainJobError, WorkerSpec, run_worker

    text = os.environ.get(SPEC_ENV)
    if not text:
        raise fail(f"error: ${SPEC_ENV} is not set; this command runs inside the pipeline's TFJob", USAGE)
    try:
        run_id = run_worker(WorkerSpec.from_json(text), work_dir)
    except TrainJobError as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    typer.echo(f"chief: MLflow run {run_id} holds the model" if run_id else "worker done")
