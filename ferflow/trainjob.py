"""The pipeline's training step as a distributed job of Kubeflow's training engine.

The job is a ``TFJob`` of the Kubeflow Training Operator v1 (``kubeflow.org/v1``): the operator
starts ``workers`` pods, gives each the ``TF_CONFIG`` that ``tf.distribute.MultiWorkerMirroredStrategy``
reads, restarts pods that die of a signal, and reports ``Succeeded``/``Failed`` conditions.
Kubeflow Trainer v2's ``TrainJob`` has no TensorFlow policy (its maintainers deprioritised
distributed TensorFlow); there every worker would have to derive TF_CONFIG from JobSet's pod
names itself. docs/kubeflow.md has the full reasoning.

    stage_dataset ─▶ render_tfjob ─▶ check_tfjob ─▶ submit ─▶ wait ─▶ collect
    (an MLflow run    (Worker × N,     (the operator   (409:       (Succeeded,   (the chief's run,
     holds the data)   1 command)       webhook's rules) adopt it)   Failed, or    tagged with the
                                                                     timeout)      job's name)

In each pod ``ferflow pipeline job-worker`` calls :func:`run_worker`: it downloads the staged
dataset and trains with ``distribute=multi-worker`` (ferflow.train: only the chief, worker 0,
tracks and exports); the chief then logs the export folder and the step's outputs on its
MLflow run and, last, tags the run with the job's name, so a run found by the tag is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ferflow.config import ClusterConfig, DistributeMode, Paths, TrainJobConfig

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "tfjobs", "TFJob"
CONTAINER = "tensorflow"  # the operator puts TF_CONFIG into this container; its webhook requires it
PORT = 2222  # the operator's default TFJob port (named tfjob-port)
SPEC_ENV = "FERFLOW_TRAINJOB"  # the worker's WorkerSpec, as JSON
JOB_TAG = "ferflow.trainjob"  # MLflow tag: the TFJob's name
ROLE_TAG = "ferflow.trainjob.role"  # "dataset" (staging run) or "chief" (the training run)
STAGING_EXPERIMENT = "ferflow-trainjob"
EXPORT_PATH = "export"  # artifact folder of the chief's run: model.onnx, metrics.json, MODEL_CARD.md
OUTPUTS_FILE = "trainjob_outputs.json"  # the step's metrics and model metadata
RUN_ID_ENV = "KFP_RUN_ID"  # the step pod's pipeline/runid label (downward API), see pipeline_run_id
RUN_ID_LABEL = "pipeline/runid"  # KFP puts the run's id on every pod of the run
MAX_FAILED_READS = 10  # failed reads of the job in a row (API server down) before the step fails
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class TrainJobError(RuntimeError):
    """The training job could not be submitted, failed, timed out or left no model; says why."""


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker pod trains: the train step's own inputs, and where the data is."""

    job: str
    dataset_run_id: str
    model_name: str
    epochs: int
    tuned_params: str = ""
    limit_train: int = 0
    steps_per_epoch: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        try:
            data = json.loads(text)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise TrainJobError(f"${SPEC_ENV} is not a worker spec ({exc}); the TFJob sets it") from exc


def job_name(seed: str, prefix: str = "ferflow-train") -> str:
    """A TFJob name (DNS-1035 label, as the operator's webhook demands) fixed by ``seed``: the
    same pipeline task asks for the same job, so a restarted step adopts it instead of
    starting a second one."""
    return f"{prefix}-{hashlib.sha256(seed.encode()).hexdigest()[:12]}"


def pipeline_run_id(placeholder: str) -> str:
    """The pipeline run's id: ``dsl.PIPELINE_JOB_ID_PLACEHOLDER`` as the backend resolved it,
    or, where a KFP backend passes placeholders in parameter values through unresolved, the
    run's label on this pod (``$KFP_RUN_ID``). Never the literal placeholder: every run would
    then name the same job and adopt an earlier run's."""
    if placeholder and "{{" not in placeholder:
        return placeholder
    label = os.environ.get(RUN_ID_ENV, "")
    if label:
        return label
    raise TrainJobError(
        f"the pipeline run's id is unknown (run_id {placeholder!r} and ${RUN_ID_ENV} unset): "
        "compile the pipeline with kfp-kubernetes installed, which maps the pod's "
        f"{RUN_ID_LABEL} label to ${RUN_ID_ENV}"
    )


# --------------------------------------------------------------------------------------------
# The manifest


def cluster_to_json(cluster: ClusterConfig) -> str:
    """The compile-time cluster settings the train-job step needs, as one pipeline constant."""
    return json.dumps(asdict(cluster), sort_keys=True)


def cluster_from_json(text: str) -> ClusterConfig:
    data = json.loads(text)
    job = TrainJobConfig(**data.pop("train_job"))
    tuples = {k: tuple(tuple(x) for x in data.pop(k)) for k in ("tolerations", "secret_env")}
    return ClusterConfig(**data, **tuples, train_job=job)


def _container(image: str, spec: WorkerSpec, cluster: ClusterConfig) -> dict[str, Any]:
    job = cluster.train_job
    env: list[dict[str, Any]] = [{"name": SPEC_ENV, "value": spec.to_json()}]
    env += [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for var, secret, key in cluster.secret_env
    ]
    limits: dict[str, Any] = {"memory": job.memory}
    if job.gpus_per_worker:
        limits[cluster.accelerator] = job.gpus_per_worker  # extended resources: limit = request
    return {
        "name": CONTAINER,
        "image": image,
        "command": ["ferflow", "pipeline", "job-worker"],
        "env": env,
        "ports": [{"name": "tfjob-port", "containerPort": PORT}],
        "resources": {"requests": {"cpu": job.cpu, "memory": job.memory}, "limits": limits},
    }


def render_tfjob(
    name: str, namespace: str, image: str, spec: WorkerSpec, cluster: ClusterConfig
) -> dict[str, Any]:
    """The TFJob: ``workers`` Worker replicas of the ferflow image running ``job-worker``.

    Worker 0 is the chief (TensorFlow's rule without a Chief replica, and the operator's: the
    job succeeds when worker 0 does). ``restartPolicy: ExitCode`` restarts a pod killed by a
    signal (pre-emption, exit codes 128+) up to ``backoff_limit`` times and fails the job on an
    error (exit 1-127): a bad dataset should not be retried. ``activeDeadlineSeconds`` is the
    step's timeout, so the operator stops the job even if the waiting step is gone. No Istio
    sidecar (Kubeflow profile namespaces inject one): it keeps a finished worker's pod running
    and sits between the workers' gRPC links.
    """
    job = cluster.train_job
    labels = {"app.kubernetes.io/part-of": "ferflow", "app.kubernetes.io/component": "train-job"}
    pod: dict[str, Any] = {"containers": [_container(image, spec, cluster)]}
    if cluster.node_selector:
        pod["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        pod["tolerations"] = [
            {"key": k, "operator": "Equal", "value": v, "effect": e} for k, v, e in cluster.tolerations
        ]
    if job.service_account:
        pod["serviceAccountName"] = job.service_account
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "runPolicy": {
                "backoffLimit": job.backoff_limit,
                "activeDeadlineSeconds": job.timeout_s,
                "ttlSecondsAfterFinished": job.ttl_after_finished_s,
                "cleanPodPolicy": "Running",
            },
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": job.workers,
                    "restartPolicy": "ExitCode",
                    "template": {
                        "metadata": {"labels": labels, "annotations": {"sidecar.istio.io/inject": "false"}},
                        "spec": pod,
                    },
                }
            },
        },
    }


def check_tfjob(manifest: dict[str, Any]) -> None:
    """The Training Operator's admission rules for a TFJob, checked before it is sent, so a
    bad manifest fails with the field's path here rather than as a webhook rejection."""
    name = manifest.get("metadata", {}).get("name", "")
    if len(name) > 63 or not _DNS1035.match(name):
        raise TrainJobError(f"metadata.name {name!r} is not a DNS-1035 label (a-z, 0-9, '-', ≤ 63)")
    replicas = manifest.get("spec", {}).get("tfReplicaSpecs") or {}
    if not replicas:
        raise TrainJobError("spec.tfReplicaSpecs is missing: a TFJob needs at least one replica spec")
    if sum(role in ("Chief", "Master") for role in replicas) > 1:
        raise TrainJobError("spec.tfReplicaSpecs has more than one Chief or Master role")
    for role, replica in replicas.items():
        where = f"spec.tfReplicaSpecs.{role}"
        count = replica.get("replicas", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise TrainJobError(f"{where}.replicas must be an integer ≥ 1, got {count!r}")
        containers = replica.get("template", {}).get("spec", {}).get("containers") or []
        if not containers:
            raise TrainJobError(f"{where}.template.spec.containers must be specified")
        for i, container in enumerate(containers):
            if not container.get("image"):
                raise TrainJobError(f"{where}.template.spec.containers[{i}].image must be set")
        if CONTAINER not in [c.get("name") for c in containers]:
            raise TrainJobError(f"{where}.template.spec.containers needs one named {CONTAINER!r}")


# --------------------------------------------------------------------------------------------
# The Kubernetes API


class TFJobAPI:
    """Create, read and delete TFJobs through ``kubernetes.client.CustomObjectsApi``; every
    Kubernetes error comes back as a :class:`TrainJobError` that says what to do."""

    def __init__(self, custom_objects: Any = None) -> None:
        self.api = custom_objects if custom_objects is not None else _custom_objects_api()

    def _call(self, what: str, namespace: str, fn: Callable[[], Any]) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn()
        except ApiException as exc:
            raise _api_error(what, namespace, exc) from exc
        except HTTPError as exc:  # no answer at all (connection refused or reset, timeout): status 0
            raise _APIError(f"cannot {what} in namespace {namespace}: {exc}", 0) from exc

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        ns = manifest["metadata"]["namespace"]
        return self._call(
            f"create TFJob {manifest['metadata']['name']}",
            ns,
            lambda: self.api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest),
        )

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            f"read TFJob {name}",
            namespace,
            lambda: self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
        )

    def delete(self, namespace: str, name: str) -> None:
        self._call(
            f"delete TFJob {name}",
            namespace,
            lambda: self.api.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground"
            ),
        )


class _APIError(TrainJobError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _api_error(what: str, namespace: str, exc: Any) -> _APIError:
    status = int(getattr(exc, "status", 0) or 0)
    hint = {
        403: f"the pipeline's ServiceAccount may not do this in namespace {namespace}: bind it the "
        "tfjobs Role of docs/kubeflow.md",
        404: "not found (is the Kubeflow Training Operator v1 installed? `kubectl get crd "
        "tfjobs.kubeflow.org`)",
        409: "it already exists",
    }.get(status, (getattr(exc, "reason", "") or str(exc)).strip())
    return _APIError(f"cannot {what} in namespace {namespace}: HTTP {status}, {hint}", status)


def _custom_objects_api() -> Any:
    """In a pod: its ServiceAccount; elsewhere: the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def current_namespace(configured: str = "") -> str:
    if configured:
        return configured
    if SA_NAMESPACE.is_file():
        return SA_NAMESPACE.read_text().strip()
    raise TrainJobError(
        "no namespace for the TFJob: not running in a pod, and TrainJobConfig.namespace is empty; set it"
    )


def submit(api: TFJobAPI, manifest: dict[str, Any], echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Create the job; if one of that name exists (the step was restarted), adopt it."""
    check_tfjob(manifest)
    meta = manifest["metadata"]
    try:
        created = api.create(manifest)
    except _APIError as exc:
        if exc.status != 409:
            raise
        echo(f"TFJob {meta['namespace']}/{meta['name']} exists already: waiting for it")
        return api.get(meta["namespace"], meta["name"])
    echo(f"TFJob {meta['namespace']}/{meta['name']} created: {_workers(manifest)} workers")
    return created


def _workers(job: dict[str, Any]) -> int:
    return int(job["spec"]["tfReplicaSpecs"]["Worker"]["replicas"])


def job_state(job: dict[str, Any]) -> dict[str, str]:
    """The job's newest condition whose status is True (``{}`` before the operator saw it)."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    return conditions[-1] if conditions else {}


def _get_job(
    api: TFJobAPI, namespace: str, name: str, where: str
) -> tuple[dict[str, Any], None] | tuple[None, _APIError]:
    """The job, or the error of a read worth repeating: no answer, 429 or 5xx (an API server
    restarting during a job of hours must not fail the step, which KFP does not retry)."""
    try:
        return api.get(namespace, name), None
    except _APIError as exc:
        if exc.status == 404:
            raise TrainJobError(f"{where} was deleted while the pipeline waited for it") from exc
        if exc.status in (0, 429) or exc.status >= 500:
            return None, exc
        raise


def wait(
    api: TFJobAPI,
    namespace: str,
    name: str,
    timeout_s: float,
    poll_s: float,
    echo: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll the job until its Succeeded condition (returned) or Failed condition (raised, with
    the condition's reason and message). After ``timeout_s`` the job is deleted, so that it
    holds no more nodes, and the error says which condition it was stuck in. Up to
    ``MAX_FAILED_READS - 1`` failed reads in a row are waited out."""
    deadline = clock() + timeout_s
    seen, state, kind, failures = "", {}, "Pending", 0
    where = f"TFJob {namespace}/{name}"
    logs = f"kubectl -n {namespace} logs -l training.kubeflow.org/job-name={name}"
    while True:
        job, error = _get_job(api, namespace, name, where)
        failures = failures + 1 if error else 0
        if error is not None:
            echo(f"{where}: cannot read it ({error}); trying again")
            if failures >= MAX_FAILED_READS:
                raise TrainJobError(
                    f"{where}: {failures} reads in a row failed, the last: {error}"
                ) from error
        else:
            state = job_state(job)
            kind = state.get("type", "Pending")
            if kind != seen:
                echo(f"{where}: {kind}" + (f" ({state.get('reason')})" if state.get("reason") else ""))
                seen = kind
            if kind == "Succeeded":
                return job
            if kind == "Failed":
                raise TrainJobError(
                    f"{where} failed: condition Failed, reason {state.get('reason', '?')}: "
                    f"{state.get('message', '')} (logs: {logs})"
                )
        left = deadline - clock()
        if left <= 0:
            api.delete(namespace, name)
            raise TrainJobError(
                f"{where} did not finish within {timeout_s:g} s (last condition: {kind}"
                f"{', ' + state['reason'] if state.get('reason') else ''}); deleted it (logs: {logs})"
            )
        sleep(min(poll_s, left))


# --------------------------------------------------------------------------------------------
# MLflow: the data in, the model out


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(Paths().mlflow_uri)
    return mlflow


def stage_dataset(dataset_dir: str | Path, job: str) -> str:
    """Log the canonical dataset as artifacts of an MLflow run (experiment ``ferflow-trainjob``),
    which every worker pod can read: the tracking server is the one store all steps share.
    Returns the run's id."""
    from ferflow.tracking import use_experiment

    mlflow = _mlflow()
    use_experiment(STAGING_EXPERIMENT)
    with mlflow.start_run(run_name=job) as run:
        mlflow.set_tags({JOB_TAG: job, ROLE_TAG: "dataset"})
        mlflow.log_artifacts(str(dataset_dir), "dataset")
    return run.info.run_id


def run_worker(spec: WorkerSpec, work_dir: str | Path) -> str | None:
    """One worker pod of the job: fetch the staged data, train with ``distribute=multi-worker``
    on the cluster the operator's ``TF_CONFIG`` names. :func:`ferflow.train.train` decides who
    the chief is (worker 0): only it tracks an MLflow run and exports. The chief then logs its
    export folder and the step's outputs on that run and tags it with the job's name; returns
    the run's id (None on the other workers)."""
    from ferflow.pipeline import train_config, train_outputs
    from ferflow.train import train

    mlflow = _mlflow()
    work = Path(work_dir)
    data = mlflow.artifacts.download_artifacts(
        run_id=spec.dataset_run_id, artifact_path="dataset", dst_path=str(work / "data")
    )
    cfg = replace(
        train_config(spec.model_name, spec.epochs, spec.tuned_params),
        distribute=DistributeMode.MULTI_WORKER,
    )
    started = time.perf_counter()
    export = work / EXPORT_PATH
    result = train(
        cfg,
        data,
        run_dir=work / "run",
        track=True,
        export=True,
        export_dir=export,
        steps_per_epoch=spec.steps_per_epoch or None,
        limit_train=spec.limit_train or None,
    )
    if result.mlflow_run_id is None:  # not the chief: train() tracked nothing here
        return None
    out = train_outputs(result, cfg, started, export)
    publish_chief_run(result.mlflow_run_id, export, out, spec.job)
    return result.mlflow_run_id


def publish_chief_run(run_id: str, export: Path, out: dict[str, Any], job: str) -> None:
    """On the chief's MLflow run: the export folder, the step's outputs, then the job's tag
    (last: a run found by the tag is complete)."""
    client = _mlflow().MlflowClient()
    client.log_artifacts(run_id, str(export), EXPORT_PATH)
    outputs = {"metrics": out["metrics"], "model": {**out["model"], "train_job": job}}
    client.log_dict(run_id, outputs, OUTPUTS_FILE)
    client.set_tag(run_id, ROLE_TAG, "chief")
    client.set_tag(run_id, JOB_TAG, job)


def collect(job: str, experiment: str, model_dir: str | Path) -> dict[str, Any]:
    """The chief's run of ``job`` in ``experiment``: its export folder into ``model_dir``, and
    the train step's outputs (the same keys as :func:`ferflow.pipeline.train_step`'s)."""
    mlflow = _mlflow()
    found = mlflow.MlflowClient().get_experiment_by_name(experiment)
    query = f"tags.`{JOB_TAG}` = '{job}' AND tags.`{ROLE_TAG}` = 'chief'"
    runs = (
        mlflow.MlflowClient().search_runs(
            [found.experiment_id], query, order_by=["attributes.start_time DESC"]
        )
        if found
        else []
    )
    if not runs:
        raise TrainJobError(
            f"TFJob {job} succeeded but no MLflow run in experiment {experiment!r} is tagged "
            f"{JOB_TAG}={job}: its chief (worker 0) did not log its model; read its log"
        )
    run_id = runs[0].info.run_id
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ferflow-collect-") as tmp:
        export = Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=EXPORT_PATH, dst_path=tmp)
        )
        shutil.copytree(export, model_dir, dirs_exist_ok=True)
        outputs = json.loads(
            Path(
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=OUTPUTS_FILE, dst_path=tmp)
            ).read_text()
        )
    if outputs["model"].get("mlflow_run_id") != run_id:
        raise TrainJobError(f"MLflow run {run_id} of TFJob {job}: its {OUTPUTS_FILE} names another run")
    return {"metrics": outputs["metrics"], "model": outputs["model"], "card": model_dir / "MODEL_CARD.md"}


def train_job_step(
    dataset_dir: str | Path,
    model_dir: str | Path,
    spec: WorkerSpec,
    cluster: ClusterConfig,
    image: str,
    api: TFJobAPI | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The distributed train step: stage the data, submit the TFJob, wait, collect the model.

    ``spec.job`` names the job and ``spec.dataset_run_id`` may be empty (the data is staged
    here). Returns what :func:`ferflow.pipeline.train_step` returns, plus the job's metrics.
    """
    from ferflow.pipeline import train_config

    job = cluster.train_job
    if job.workers < 2:
        raise TrainJobError(
            f"TrainJobConfig.workers is {job.workers}: a TFJob needs 2 or more (else train in-step)"
        )
    started = time.perf_counter()
    api = api or TFJobAPI()
    namespace = current_namespace(job.namespace)
    if not spec.dataset_run_id:
        spec = replace(spec, dataset_run_id=stage_dataset(dataset_dir, spec.job))
    manifest = render_tfjob(spec.job, namespace, image, spec, cluster)
    submit(api, manifest, echo)
    wait(api, namespace, spec.job, job.timeout_s, job.poll_s, echo)
    experiment = train_config(spec.model_name, spec.epochs, spec.tuned_params).experiment
    out = collect(spec.job, experiment, model_dir)
    out["metrics"] |= {
        "seconds": round(time.perf_counter() - started, 1),
        "workers": job.workers,
        "gpus_per_worker": job.gpus_per_worker,
    }
    out["model"] |= {"train_job_namespace": namespace, "workers": job.workers}
    return out
