"""The distributed train step (ferflow.trainjob) without a cluster: the TFJob manifest checked
against the Training Operator's CRD schema, and submit/wait/collect against a fake Kubernetes
API server (the kubernetes client's HTTP layer replaced) and a real MLflow store in tmp."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from ferflow.cli import app
from ferflow.config import PIPELINE_IMAGE, ClusterConfig, TrainJobConfig
from ferflow.trainjob import (
    CONTAINER,
    JOB_TAG,
    ROLE_TAG,
    RUN_ID_ENV,
    SPEC_ENV,
    TFJobAPI,
    TrainJobError,
    WorkerSpec,
    check_tfjob,
    cluster_from_json,
    cluster_to_json,
    collect,
    job_name,
    pipeline_run_id,
    publish_chief_run,
    render_tfjob,
    train_job_step,
    wait,
)

SCHEMA = Path(__file__).parent / "schemas" / "tfjob-v1.schema.json"
NS = "team-a"
CLUSTER = ClusterConfig(
    accelerator="nvidia.com/gpu",
    node_selector={"pool": "gpu"},
    tolerations=(("nvidia.com/gpu", "present", "NoSchedule"),),
    secret_env=(("MLFLOW_TRACKING_URI", "ferflow-db", "mlflow-uri"),),
    train_job=TrainJobConfig(
        workers=3, gpus_per_worker=2, namespace=NS, service_account="ferflow-train", poll_s=0.0
    ),
)
SPEC = WorkerSpec("ferflow-train-0123456789ab", "dataset-run", "ran_fm", 2, '{"width": 32}', 384, 6)


def _strict(schema):
    """The CRD schema as the API server applies it with strict field validation (kubectl's
    default): an unknown field is an error, not silently pruned."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in out and not open_ended:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.Validator:
    schema = _strict(json.loads(SCHEMA.read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _manifest() -> dict:
    return render_tfjob(SPEC.job, NS, "registry.test/ferflow:1", SPEC, CLUSTER)


def test_rendered_tfjob_validates_against_the_operator_crd_schema(validator) -> None:
    manifest = _manifest()
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(manifest)]
    assert errors == []
    check_tfjob(manifest)
    assert (manifest["apiVersion"], manifest["kind"]) == ("kubeflow.org/v1", "TFJob")
    worker = manifest["spec"]["tfReplicaSpecs"]["Worker"]
    assert set(manifest["spec"]["tfReplicaSpecs"]) == {"Worker"}  # worker 0 is the chief
    assert worker["replicas"] == 3 and worker["restartPolicy"] == "ExitCode"
    assert worker["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    pod = worker["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == CONTAINER and container["command"] == ["ferflow", "pipeline", "job-worker"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    env = {e["name"]: e for e in container["env"]}
    assert WorkerSpec.from_json(env[SPEC_ENV]["value"]) == SPEC
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "ferflow-db",
        "key": "mlflow-uri",
    }
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["serviceAccountName"] == "ferflow-train"
    assert pod["tolerations"][0]["effect"] == "NoSchedule"
    assert manifest["spec"]["runPolicy"]["activeDeadlineSeconds"] == CLUSTER.train_job.timeout_s


def _set(path: str, value):
    def mutate(m: dict) -> None:
        *keys, last = path.split(".")
        node = m
        for k in keys:
            node = node[int(k)] if k.isdigit() else node[k]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return mutate


BROKEN_FOR_THE_SCHEMA = {
    "replicas as a string": _set("spec.tfReplicaSpecs.Worker.replicas", "3"),
    "no replica specs": _set("spec.tfReplicaSpecs", KeyError),
    "misspelt field": lambda m: m["spec"].update(tfReplicaSpec=m["spec"].pop("tfReplicaSpecs")),
    "container without a name": _set("spec.tfReplicaSpecs.Worker.template.spec.containers.0.name", KeyError),
    "env value not a string": _set("spec.tfReplicaSpecs.Worker.template.spec.containers.0.env.0.value", 7),
    "backoff limit as text": _set("spec.runPolicy.backoffLimit", "three"),
}


@pytest.mark.parametrize("case", BROKEN_FOR_THE_SCHEMA)
def test_a_broken_manifest_fails_the_crd_schema(validator, case: str) -> None:
    manifest = copy.deepcopy(_manifest())
    BROKEN_FOR_THE_SCHEMA[case](manifest)
    assert list(validator.iter_errors(manifest)), f"{case}: accepted by the schema"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("metadata.name", "Ferflow_Train"), "DNS-1035"),
        (_set("spec.tfReplicaSpecs", {}), "at least one replica spec"),
        (_set("spec.tfReplicaSpecs.Worker.replicas", 0), "integer ≥ 1"),
        (_set("spec.tfReplicaSpecs.Worker.template.spec.containers.0.name", "trainer"), "named 'tensorflow'"),
        (_set("spec.tfReplicaSpecs.Worker.template.spec.containers.0.image", ""), r"containers\[0\].image"),
        (lambda m: m["spec"]["tfReplicaSpecs"].update(Chief={}, Master={}), "more than one Chief"),
    ],
)
def test_operator_admission_rules_are_checked_before_submitting(mutate, message: str) -> None:
    manifest = copy.deepcopy(_manifest())
    mutate(manifest)
    with pytest.raises(TrainJobError, match=message):
        check_tfjob(manifest)


def test_job_name_worker_spec_cluster_and_run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    name = job_name("8f1d0c1e-run-uuid")
    assert name == job_name("8f1d0c1e-run-uuid") != job_name("another-run")
    # the run's id: the resolved placeholder, else the pod's run label, never the placeholder
    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    assert pipeline_run_id("8f1d0c1e-run-uuid") == "8f1d0c1e-run-uuid"
    with pytest.raises(TrainJobError, match=RUN_ID_ENV):
        pipeline_run_id("{{$.pipeline_job_uuid}}")
    monkeypatch.setenv(RUN_ID_ENV, "run-from-label")
    assert pipeline_run_id("{{$.pipeline_job_uuid}}") == "run-from-label"
    assert pipeline_run_id("8f1d0c1e-run-uuid") == "8f1d0c1e-run-uuid"
    check_tfjob({**_manifest(), "metadata": {"name": name}})
    assert cluster_from_json(cluster_to_json(CLUSTER)) == CLUSTER
    with pytest.raises(TrainJobError, match=SPEC_ENV):
        WorkerSpec.from_json('{"job": "x"}')


# --------------------------------------------------------------------------------------------
# A fake Kubernetes API server (the kubernetes client's HTTP layer)


class FakeKube:
    """TFJobs in memory; each GET of a job advances it one step through ``script``."""

    PREFIX = "/apis/kubeflow.org/v1/namespaces/"

    def __init__(self, script: list[dict] | None = None, on_create=None, create_status: int = 201) -> None:
        self.jobs: dict[tuple[str, str], dict] = {}
        self.script = list(script or [])
        self.on_create = on_create
        self.create_status = create_status
        self.requests: list[SimpleNamespace] = []

    def __call__(self, _rest, method, url, query_params=None, headers=None, body=None, **_):
        path = url.split("k8s.test", 1)[1]
        assert path.startswith(self.PREFIX), path
        ns, plural, *name = path[len(self.PREFIX) :].split("/")
        assert plural == "tfjobs"
        self.requests.append(SimpleNamespace(method=method, ns=ns, name=name, body=body))
        if method == "POST":
            key = (ns, body["metadata"]["name"])
            if key in self.jobs or self.create_status != 201:
                return self._reply(409 if key in self.jobs else self.create_status, {"reason": "no"})
            self.jobs[key] = copy.deepcopy(body)
            if self.on_create:
                self.on_create(body)
            return self._reply(201, body)
        key = (ns, name[0])
        if key not in self.jobs:
            return self._reply(404, {"reason": "NotFound"})
        if method == "DELETE":
            del self.jobs[key]
            return self._reply(200, {"status": "Success"})
        if self.script:
            step = self.script.pop(0)
            if step == "no answer":
                raise urllib3.exceptions.ProtocolError("Connection aborted.")
            if isinstance(step, int):  # the API server answers with this error status
                return self._reply(step, {"reason": "ServiceUnavailable"})
            self.jobs[key]["status"] = step
        return self._reply(200, self.jobs[key])

    @staticmethod
    def _reply(status: int, payload: dict):
        raw = urllib3.HTTPResponse(
            body=json.dumps(payload).encode(), status=status, headers={"content-type": "application/json"}
        )
        response = rest.RESTResponse(raw)
        response.data = raw.data
        if not 200 <= status <= 299:
            raise ApiException(http_resp=response)
        return response

    def calls(self, method: str) -> list[SimpleNamespace]:
        return [r for r in self.requests if r.method == method]


def _status(*conditions: tuple[str, str, str]) -> dict:
    return {
        "conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions]
    }


RUNNING = _status(("Created", "TFJobCreated", ""), ("Running", "TFJobRunning", "TFJob is running."))


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch):
    def install(fake: FakeKube) -> TFJobAPI:
        monkeypatch.setattr(rest.RESTClientObject, "request", lambda self, *a, **kw: fake(self, *a, **kw))
        configuration = k8s.Configuration()
        configuration.host = "http://k8s.test"
        return TFJobAPI(k8s.CustomObjectsApi(k8s.ApiClient(configuration)))

    return install


@pytest.fixture
def mlflow_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working dir
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def _fake_chief(experiment: str, tmp: Path, job: str) -> str:
    """What the chief pod leaves behind: a training run with its export and outputs, tagged."""
    import mlflow

    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_metric("test_accuracy", 0.81)
    export = tmp / "chief-export"
    export.mkdir()
    (export / "model.onnx").write_bytes(b"onnx-bytes")
    (export / "metrics.json").write_text('{"test": {"accuracy": 0.81}}')
    (export / "MODEL_CARD.md").write_text("# card\n")
    out = {
        "metrics": {"epochs_run": 2, "train_seconds": 12.5, "test_accuracy": 0.81},
        "model": {"framework": "onnx", "model": "ran_fm", "mlflow_run_id": run.info.run_id},
    }
    publish_chief_run(run.info.run_id, export, out, job)
    return run.info.run_id


def test_step_stages_data_submits_waits_and_collects_the_chiefs_model(kube, mlflow_store: Path) -> None:
    dataset = mlflow_store / "dataset"
    dataset.mkdir()
    (dataset / "dataset.json").write_text('{"format_version": 1}')
    chief: dict[str, str] = {}

    def chief_trains(body: dict) -> None:
        env = {
            e["name"]: e.get("value")
            for e in body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["env"]
        }
        spec = WorkerSpec.from_json(env[SPEC_ENV])
        import mlflow

        staged = mlflow.artifacts.download_artifacts(
            run_id=spec.dataset_run_id, dst_path=str(mlflow_store / "w")
        )
        assert (Path(staged) / "dataset" / "dataset.json").is_file()  # the workers' data
        chief["run"] = _fake_chief("ferflow-train", mlflow_store, spec.job)

    fake = FakeKube([{}, RUNNING, RUNNING, _status(("Succeeded", "TFJobSucceeded", "done"))], chief_trains)
    api = kube(fake)
    spec = WorkerSpec(SPEC.job, "", "ran_fm", 2)
    lines: list[str] = []
    out = train_job_step(dataset, mlflow_store / "model", spec, CLUSTER, PIPELINE_IMAGE, api, lines.append)
    (post,) = fake.calls("POST")
    assert post.ns == NS and post.body["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 3
    assert len(fake.calls("GET")) == 4 and not fake.calls("DELETE")
    assert (mlflow_store / "model" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert out["card"] == mlflow_store / "model" / "MODEL_CARD.md" and out["card"].is_file()
    assert out["model"]["mlflow_run_id"] == chief["run"] and out["model"]["train_job"] == SPEC.job
    assert out["metrics"]["test_accuracy"] == 0.81 and out["metrics"]["workers"] == 3
    assert out["metrics"]["gpus_per_worker"] == 2
    assert any("Running" in line for line in lines) and any("Succeeded" in line for line in lines)


def test_a_failed_job_names_the_job_and_its_failed_condition(kube) -> None:
    failed = _status(
        ("Created", "TFJobCreated", ""), ("Failed", "TFJobFailed", "Worker 1 exited with code 1")
    )
    api = kube(FakeKube([RUNNING, failed]))
    api.create(_manifest())
    with pytest.raises(TrainJobError) as err:
        wait(api, NS, SPEC.job, timeout_s=60, poll_s=0, echo=lambda _: None)
    text = str(err.value)
    assert f"TFJob {NS}/{SPEC.job} failed: condition Failed, reason TFJobFailed" in text
    assert "Worker 1 exited with code 1" in text and "kubectl" in text


def test_wait_rides_out_an_unreachable_api_server_but_not_forever(kube) -> None:
    from ferflow.trainjob import MAX_FAILED_READS

    succeeded = _status(("Succeeded", "TFJobSucceeded", "done"))
    api = kube(FakeKube([RUNNING, 503, "no answer", 429, RUNNING, succeeded]))
    api.create(_manifest())
    lines: list[str] = []
    job = wait(api, NS, SPEC.job, timeout_s=60, poll_s=0, echo=lines.append)
    assert job["status"] == succeeded
    assert sum("cannot read it" in line for line in lines) == 3
    assert any("HTTP 503" in line for line in lines) and any("Connection aborted" in line for line in lines)
    down = FakeKube([RUNNING] + [503] * MAX_FAILED_READS)
    api = kube(down)
    api.create(_manifest())
    with pytest.raises(TrainJobError, match=rf"{MAX_FAILED_READS} reads in a row failed.*HTTP 503"):
        wait(api, NS, SPEC.job, timeout_s=60, poll_s=0, echo=lambda _: None)
    assert not down.calls("DELETE")  # an unreadable job is not known to be stuck: it is left
    api = kube(FakeKube([RUNNING, 403]))
    api.create(_manifest())
    with pytest.raises(TrainJobError, match="HTTP 403"):  # not transient: fails at once
        wait(api, NS, SPEC.job, timeout_s=60, poll_s=0, echo=lambda _: None)


def test_a_job_past_its_timeout_is_deleted_and_the_error_says_where_it_stuck(kube) -> None:
    fake = FakeKube([RUNNING] * 100)
    api = kube(fake)
    api.create(_manifest())
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    with pytest.raises(TrainJobError, match=rf"TFJob {NS}/{SPEC.job} did not finish within 90 s .*Running"):
        wait(
            api, NS, SPEC.job, timeout_s=90, poll_s=40, echo=lambda _: None, clock=lambda: now[0], sleep=sleep
        )
    assert sleeps == [40, 40, 10]  # never sleeps past the deadline
    assert [r.name for r in fake.calls("DELETE")] == [[SPEC.job]] and not fake.jobs


def test_a_restarted_step_adopts_its_job_and_api_errors_say_what_to_do(kube) -> None:
    from ferflow.trainjob import submit

    fake = FakeKube([RUNNING])
    api = kube(fake)
    submit(api, _manifest(), echo=lambda _: None)
    lines: list[str] = []
    job = submit(api, _manifest(), echo=lines.append)  # the same run's step again
    assert job["status"] == RUNNING and len(fake.jobs) == 1
    assert "exists already" in lines[0]
    with pytest.raises(TrainJobError, match=r"HTTP 403.*tfjobs Role of docs/kubeflow\.md"):
        submit(kube(FakeKube(create_status=403)), _manifest(), echo=lambda _: None)
    with pytest.raises(TrainJobError, match="Training Operator v1 installed"):
        submit(kube(FakeKube(create_status=404)), _manifest(), echo=lambda _: None)
    with pytest.raises(TrainJobError, match="deleted while the pipeline waited"):
        wait(kube(FakeKube()), NS, "gone", 10, 0, echo=lambda _: None)


def test_collect_fails_clearly_without_the_chiefs_tagged_run(mlflow_store: Path) -> None:
    with pytest.raises(TrainJobError, match=f"no MLflow run .* tagged {JOB_TAG}=ferflow-train-x"):
        collect("ferflow-train-x", "ferflow-train", mlflow_store / "model")
    _fake_chief("ferflow-train", mlflow_store, "ferflow-train-y")  # another job's run
    with pytest.raises(TrainJobError, match="ferflow-train-x"):
        collect("ferflow-train-x", "ferflow-train", mlflow_store / "model")


# --------------------------------------------------------------------------------------------
# The compiled pipeline and the CLI


def test_compiled_pipeline_has_the_distributed_training_branch(tmp_path: Path) -> None:
    from pipelines.driver import compile_pipeline, read_pipeline_spec

    cluster = ClusterConfig(train_job=TrainJobConfig(workers=4, gpus_per_worker=1))
    spec, _ = read_pipeline_spec(compile_pipeline(tmp_path / "tfjob.yaml", cluster))
    tasks = dict(spec.root.dag.tasks)
    for comp in spec.components.values():
        if comp.WhichOneof("implementation") == "dag":
            tasks.update(comp.dag.tasks)
    assert "train-job" in tasks and "train-model" not in tasks
    job = tasks["train-job"]
    params = job.inputs.parameters
    sent = cluster_from_json(params["cluster"].runtime_value.constant.string_value)
    assert sent.train_job.workers == 4 and sent.train_job.gpus_per_worker == 1
    assert params["run_id"].runtime_value.constant.string_value == "{{$.pipeline_job_uuid}}"
    assert params["image"].runtime_value.constant.string_value == PIPELINE_IMAGE
    assert job.retry_policy.max_retry_count == 0  # the operator restarts workers; no second job
    executor = spec.components[job.component_ref.name].executor_label
    container = spec.deployment_spec["executors"][executor]["container"]
    assert "resources" not in container  # the waiting step holds no CPU block or GPU; the workers do
    # downstream steps take the job's model and metrics exactly as they took train-model's
    model_in = tasks["evaluate-model"].inputs.artifacts["model"].task_output_artifact
    assert (model_in.producer_task, model_in.output_artifact_key) == ("train-job", "model")
    assert {"model", "model_card", "metrics"} <= set(
        spec.components[job.component_ref.name].output_definitions.artifacts
    )
    default, _ = read_pipeline_spec(compile_pipeline(tmp_path / "default.yaml"))
    assert "train-job" not in json.dumps(list(default.components))


def test_cli_train_workers_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    out = tmp_path / "p.yaml"
    res = runner.invoke(
        app, ["pipeline", "compile", "-o", str(out), "--train-workers", "2", "--gpus-per-worker", "1"]
    )
    assert res.exit_code == 0, res.output
    assert "comp-train-job" in out.read_text() and "comp-train-model:" not in out.read_text()
    res = runner.invoke(app, ["pipeline", "compile", "-o", str(out), "--gpus-per-worker", "1"])
    assert res.exit_code == 2 and "--train-workers 2 or more" in res.output
    # the workers reach the shared MLflow through the Secret that every step gets
    secret = ["--secret-env", "MLFLOW_TRACKING_URI=ferflow-db:mlflow-uri"]
    res = runner.invoke(app, ["pipeline", "compile", "-o", str(out), "--train-workers", "3", *secret])
    assert res.exit_code == 0, res.output
    pipeline_spec, platform = yaml.safe_load_all(out.read_text())
    (sent,) = [  # the ClusterConfig constant of train-job: the TFJob's workers get the Secret too
        cluster_from_json(p["runtimeValue"]["constant"])
        for comp in pipeline_spec["components"].values()
        for task in comp.get("dag", {}).get("tasks", {}).values()
        for name, p in task.get("inputs", {}).get("parameters", {}).items()
        if name == "cluster"
    ]
    assert sent.secret_env == (("MLFLOW_TRACKING_URI", "ferflow-db", "mlflow-uri"),)
    assert sent.train_job.workers == 3
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    (mapping,) = executors["exec-train-job"]["secretAsEnv"]
    assert executors["exec-train-job"]["fieldPathAsEnv"] == [
        {"fieldPath": "metadata.labels['pipeline/runid']", "name": RUN_ID_ENV}
    ]
    assert mapping["secretName"] == "ferflow-db"
    assert mapping["keyToEnv"] == [{"envVar": "MLFLOW_TRACKING_URI", "secretKey": "mlflow-uri"}]
    for bad in ("MLFLOW_TRACKING_URI=ferflow-db", "=s:k", "V=s:"):
        res = runner.invoke(app, ["pipeline", "compile", "-o", str(out), "--secret-env", bad])
        assert res.exit_code == 2 and "VAR=SECRET:KEY" in res.output, bad
    package = ["--package", str(out), "--host", "http://kfp.test"]
    res = runner.invoke(app, ["pipeline", "submit", *package, *secret])
    assert res.exit_code == 2 and "compile settings" in res.output
    monkeypatch.delenv(SPEC_ENV, raising=False)
    res = runner.invoke(app, ["pipeline", "job-worker"])
    assert res.exit_code == 2 and SPEC_ENV in res.output


# --------------------------------------------------------------------------------------------
# The worker's real path: staged data in, a trained and exported model out through MLflow


def _synthetic_dataset(out: Path) -> Path:
    """A canonical dataset of random faces: enough for the plumbing, not for accuracy."""
    import hashlib

    import numpy as np

    from ferflow.canonical import Split, write_dataset
    from ferflow.config import get_class_set

    classes = list(get_class_set("ferplus8").classes)
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        pixels = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
        label = (np.arange(n) % len(classes)).astype(np.int16)
        votes = np.zeros((n, 10), np.int16)
        votes[np.arange(n), label] = 10
        return Split(
            pixels=pixels,
            votes=votes,
            target=np.eye(len(classes), dtype=np.float32)[label],
            label=label,
            source=np.array([f"img{i}.png" for i in range(n)]),
            content_hash=np.array([hashlib.sha256(p.tobytes()).hexdigest()[:16] for p in pixels]),
        )

    meta = {
        "classes": classes,
        "class_set": "ferplus8",
        "label_scheme": "majority",
        "source": "synthetic",
        "source_version": "synthetic-1",
        "splits": {"train": {"n": 96}, "valid": {"n": 48}},
    }
    return write_dataset(out, {"train": split(96), "valid": split(48)}, meta)


def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow
def test_two_job_workers_train_and_the_step_collects_the_chiefs_export(mlflow_store: Path) -> None:
    """What the TFJob's pods run, as two local processes: ``ferflow pipeline job-worker`` with
    the spec in $FERFLOW_TRAINJOB and the TF_CONFIG the operator would give worker 0 and 1.
    The data comes from the staging run; only the chief (worker 0) leaves a tagged run, whose
    export and outputs collect() turns into the train step's outputs."""
    import os
    import subprocess
    import sys

    from ferflow.trainjob import stage_dataset

    dataset = _synthetic_dataset(mlflow_store / "canonical")
    job = "ferflow-train-e2e"
    spec = WorkerSpec(job, stage_dataset(dataset, job), "cnn", 1, '{"width": 8}', 64, 2)
    hosts = [f"localhost:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, SPEC_ENV: spec.to_json(), "TF_CONFIG": json.dumps(tf_config)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ferflow", "pipeline", "job-worker", "--work-dir", f"pod{index}"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        logs = [proc.communicate(timeout=300)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "chief: MLflow run" in logs[0] and "worker done" in logs[1]
    out = collect(job, "ferflow-train", mlflow_store / "model")
    assert out["model"]["model"] == "cnn" and out["metrics"]["epochs_run"] == 1
    assert out["model"]["mlflow_run_id"] in logs[0]
    assert {"model.onnx", "metrics.json", "MODEL_CARD.md"} <= {
        p.name for p in (mlflow_store / "model").iterdir()
    }
    import mlflow

    tagged = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`{JOB_TAG}` = '{job}'")
    assert sorted(tagged[f"tags.{ROLE_TAG}"]) == ["chief", "dataset"]  # worker 1 logged no run
    assert not (mlflow_store / "pod1" / "export").exists()  # worker 1 exported nothing
