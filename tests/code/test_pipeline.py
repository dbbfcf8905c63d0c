"""The Kubeflow layer without a cluster: the compiled IR, cluster settings, and the exact requests
``ferflow pipeline submit/schedule`` send to the KFP API (its HTTP layer replaced by a recorder)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import kfp_server_api
import pytest
import urllib3
from kfp_server_api import rest
from typer.testing import CliRunner

from ferflow.cli import app
from ferflow.config import PIPELINE_IMAGE, PIPELINE_NAME, PROFILES, ClusterConfig
from ferflow.pipeline import PipelineError, pipeline_arguments
from pipelines.driver import compile_pipeline, read_pipeline_spec, schedule, submit, validate_cron

STEPS = {
    "resolve-data",
    "pull-and-ingest",
    "tune-setup",
    "tune-worker",
    "tune-finalize",
    "train-model",
    "evaluate-model",
    "register-and-promote",
    "summarize-run",
    "record-outcome",
}
ALWAYS_RUN = {"resolve-data", "summarize-run", "record-outcome", "register-and-promote"}  # never cached


def _tasks(spec) -> dict:
    """Every task of every DAG in the spec, by task name."""
    out = dict(spec.root.dag.tasks)
    for comp in spec.components.values():
        if comp.WhichOneof("implementation") == "dag":
            out.update(comp.dag.tasks)
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory):
    path = compile_pipeline(tmp_path_factory.mktemp("ir") / "pipeline.yaml")
    return path, *read_pipeline_spec(path)


def test_compiled_yaml_parses_into_pipeline_spec_with_every_step(compiled) -> None:
    _, spec, _ = compiled
    assert spec.pipeline_info.name == PIPELINE_NAME
    tasks = _tasks(spec)
    assert set(tasks) >= STEPS
    for name in STEPS:
        executor = spec.components[tasks[name].component_ref.name].executor_label
        image = spec.deployment_spec["executors"][executor]["container"]["image"]
        assert image == PIPELINE_IMAGE, name


def test_promotion_conditional_exit_handler_and_caching(compiled) -> None:
    _, spec, _ = compiled
    tasks = _tasks(spec)
    conditions = {n: t for n, t in tasks.items() if t.trigger_policy.condition}
    assert len(conditions) == 1
    ((_, gate),) = conditions.items()
    assert gate.task_info.name == "promotion-gate"
    assert "evaluate-model-Output" in gate.trigger_policy.condition
    assert "register-and-promote" in spec.components[gate.component_ref.name].dag.tasks
    # the exit handler: record-outcome runs after the handler's DAG whatever its outcome
    outcome = spec.root.dag.tasks["record-outcome"]
    assert outcome.trigger_policy.strategy == outcome.trigger_policy.ALL_UPSTREAM_TASKS_COMPLETED
    assert "task_final_status" in str(outcome.inputs.parameters["status"])
    for step in STEPS:
        assert tasks[step].caching_options.enable_cache == (step not in ALWAYS_RUN), step


def test_tuning_fans_out_workers_on_one_study_and_feeds_training(compiled) -> None:
    _, spec, _ = compiled
    tasks = _tasks(spec)
    # tune-worker runs inside a ParallelFor over tune-setup's output (the worker indices)
    (loop_name,) = [n for n, t in tasks.items() if t.WhichOneof("iterator") == "parameter_iterator"]
    loop = tasks[loop_name]
    assert loop.task_info.name == "tune-workers"
    items = loop.parameter_iterator.items.input_parameter
    assert loop.inputs.parameters[items].task_output_parameter.producer_task == "tune-setup"
    body = spec.components[loop.component_ref.name].dag.tasks
    assert set(body) == {"tune-worker"}
    worker_index = body["tune-worker"].inputs.parameters["worker"].component_input_parameter
    assert worker_index == loop.parameter_iterator.item_input
    # fan-in: tune-finalize collects every worker's output, train-model takes its best params
    collected = tasks["tune-finalize"].inputs.parameters["worker_trials"].task_output_parameter
    assert collected.producer_task == loop_name
    tuned = tasks["train-model"].inputs.parameters["tuned_params"].task_output_parameter
    assert (tuned.producer_task, tuned.output_parameter_key) == ("tune-finalize", "Output")
    # tune-setup alone takes the profile's tuning fields; its plan of workers hands the study's
    # config on as one object: to each worker inside its loop item, and to finalize
    assert {"profile", "version", "model_name", "trials", "tune_workers"} <= set(
        tasks["tune-setup"].inputs.parameters
    )
    assert set(tasks["tune-finalize"].inputs.parameters) == {"worker_trials", "workers"}
    plan = tasks["tune-finalize"].inputs.parameters["workers"].task_output_parameter
    assert (plan.producer_task, plan.output_parameter_key) == ("tune-setup", "Output")
    assert set(body["tune-worker"].inputs.parameters) == {"worker"}


def test_pipeline_parameters_are_the_profile_fields_with_default_profile_defaults(compiled) -> None:
    _, spec, _ = compiled
    params = spec.root.input_definitions.parameters
    default = PROFILES["default"].arguments()
    assert set(params) == set(default)
    for key, value in default.items():
        got = params[key].default_value
        kind = got.WhichOneof("kind")
        actual = {"string_value": got.string_value, "bool_value": got.bool_value}.get(kind, got.number_value)
        assert actual == value, key


def test_cluster_settings_gpu_and_retries(tmp_path: Path) -> None:
    spec, _ = read_pipeline_spec(
        compile_pipeline(tmp_path / "gpu.yaml", ClusterConfig(gpus=1, retries=3, train_memory="32G"))
    )
    tasks = _tasks(spec)
    train = spec.components[tasks["train-model"].component_ref.name].executor_label
    resources = spec.deployment_spec["executors"][train]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources["resourceMemoryLimit"] == "32G"
    assert tasks["train-model"].retry_policy.max_retry_count == 3
    worker = spec.components[tasks["tune-worker"].component_ref.name].executor_label
    assert (
        spec.deployment_spec["executors"][worker]["container"]["resources"]["accelerator"]["resourceCount"]
        == "1"
    )  # trials train like the final model: on the accelerator
    assert tasks["pull-and-ingest"].retry_policy.max_retry_count == 0  # a failed gate is not transient
    local, _ = read_pipeline_spec(compile_pipeline(tmp_path / "local.yaml", ClusterConfig(retries=0)))
    assert _tasks(local)["train-model"].retry_policy.max_retry_count == 0


def test_node_selector_needs_kfp_kubernetes(tmp_path: Path) -> None:
    cluster = ClusterConfig(
        node_selector={"ferflow/pool": "gpu"},
        tolerations=(("gpu", "true", "NoSchedule"),),
        secret_env=(("MLFLOW_TRACKING_URI", "ferflow-db", "mlflow-uri"),),
    )
    try:
        import kfp.kubernetes  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"kfp-kubernetes==2\.17\.0"):
            compile_pipeline(tmp_path / "sel.yaml", cluster)
        return
    from google.protobuf import json_format

    _, platform = read_pipeline_spec(compile_pipeline(tmp_path / "sel.yaml", cluster))
    k8s = json_format.MessageToDict(platform)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-train-model"]["nodeSelector"]["labels"] == {"ferflow/pool": "gpu"}
    assert k8s["exec-train-model"]["tolerations"][0]["effect"] == "NoSchedule"
    for executor in ("exec-train-model", "exec-record-outcome", "exec-pull-and-ingest"):
        (secret,) = k8s[executor]["secretAsEnv"]
        assert secret["secretName"] == "ferflow-db"
        assert secret["keyToEnv"] == [{"secretKey": "mlflow-uri", "envVar": "MLFLOW_TRACKING_URI"}]


def test_cron_must_have_six_fields() -> None:
    assert validate_cron("0 0 3 * * *") == "0 0 3 * * *"
    with pytest.raises(PipelineError, match="prepend the seconds"):
        validate_cron("0 3 * * *")


def test_unknown_override_is_named() -> None:
    with pytest.raises(PipelineError, match="epoch"):
        pipeline_arguments(PROFILES["smoke"], epoch=3)
    assert pipeline_arguments(PROFILES["smoke"], epochs=None)["epochs"] == PROFILES["smoke"].epochs


# --------------------------------------------------------------------------------------------
# kfp.Client against a recorded HTTP layer


class FakeKFP:
    """Stands in for the KFP API server at the HTTP layer kfp_server_api uses (urllib3)."""

    def __init__(self) -> None:
        self.requests: list[SimpleNamespace] = []

    def __call__(self, _rest, method, url, query_params=None, headers=None, body=None, **_):
        path = url.split("/apis/v2beta1", 1)[1]
        self.requests.append(SimpleNamespace(method=method, path=path, query=query_params, body=body))
        if path.startswith("/healthz"):
            payload = {"multi_user": False}
        elif method == "GET" and path.startswith("/experiments"):
            payload = {}  # no experiment of that name yet
        elif method == "POST" and path == "/experiments":
            payload = {"experiment_id": "exp-1", **body}
        elif method == "POST" and path == "/runs":
            payload = {"run_id": "run-1", **body}
        elif method == "POST" and path == "/recurringruns":
            payload = {"recurring_run_id": "rr-1", **body}
        else:
            raise AssertionError(f"unexpected request {method} {path}")
        raw = urllib3.HTTPResponse(
            body=json.dumps(payload).encode(), status=200, headers={"content-type": "application/json"}
        )
        return rest.RESTResponse(raw)

    def posted(self, path: str) -> dict:
        bodies = [r.body for r in self.requests if r.method == "POST" and r.path == path]
        assert len(bodies) == 1, f"{len(bodies)} POSTs to {path}"
        return bodies[0]


@pytest.fixture
def kfp_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeKFP:
    fake = FakeKFP()
    monkeypatch.setattr(rest.RESTClientObject, "request", lambda self, *a, **kw: fake(self, *a, **kw))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json from the machine
    return fake


def _as_model(body: dict, klass: str):
    """Read a recorded request body back through the client's own model classes."""
    return kfp_server_api.ApiClient().deserialize(SimpleNamespace(data=json.dumps(body)), klass)


def test_schedule_sends_cron_parameters_and_compiled_spec(kfp_api: FakeKFP) -> None:
    args = PROFILES["default"].arguments()
    rr = schedule("http://kfp.test:8888", "0 0 3 * * *", args, experiment="ferflow-retrain")
    assert rr.recurring_run_id == "rr-1"
    assert kfp_api.posted("/experiments")["display_name"] == "ferflow-retrain"
    body = kfp_api.posted("/recurringruns")
    sent = _as_model(body, "V2beta1RecurringRun")
    assert isinstance(sent, kfp_server_api.V2beta1RecurringRun)
    assert sent.trigger.cron_schedule.cron == "0 0 3 * * *"
    assert sent.trigger.periodic_schedule is None
    assert sent.experiment_id == "exp-1"
    assert sent.mode == kfp_server_api.RecurringRunMode.ENABLE
    assert sent.max_concurrency == "1" and sent.no_catchup is True
    assert sent.runtime_config.parameters == args
    assert sent.pipeline_spec["pipelineInfo"]["name"] == PIPELINE_NAME
    components = {c.removeprefix("comp-") for c in sent.pipeline_spec["components"]}
    assert components >= STEPS


def test_submit_sends_profile_parameters(kfp_api: FakeKFP) -> None:
    args = pipeline_arguments(PROFILES["smoke"], epochs=2)
    assert submit("http://kfp.test:8888", args, experiment="ferflow", run_name="ci smoke") == "run-1"
    sent = _as_model(kfp_api.posted("/runs"), "V2beta1Run")
    assert sent.display_name == "ci smoke"
    assert sent.experiment_id == "exp-1"
    assert sent.runtime_config.parameters == {**PROFILES["smoke"].arguments(), "epochs": 2}
    assert sent.pipeline_spec["root"]["inputDefinitions"]["parameters"].keys() == args.keys()


def test_cli_schedule_and_compile(kfp_api: FakeKFP, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "p.yaml"
    res = runner.invoke(app, ["pipeline", "compile", "-o", str(out), "--gpus", "1"])
    assert res.exit_code == 0, res.output
    assert "ferflow-training" in res.output and out.is_file()
    res = runner.invoke(
        app,
        [
            "pipeline",
            "schedule",
            "--host",
            "http://kfp.test",
            "--cron",
            "0 30 2 * * 1-5",
            "--profile",
            "smoke",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "rr-1" in res.output
    sent = kfp_api.posted("/recurringruns")
    assert sent["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 1-5"
    assert sent["runtime_config"]["parameters"]["profile"] == "smoke"
    res = runner.invoke(app, ["pipeline", "schedule", "--host", "http://kfp.test", "--cron", "30 2 * * *"])
    assert res.exit_code == 2 and "6" in res.output
    res = runner.invoke(app, ["pipeline", "run", "--profile", "nightly"])
    assert res.exit_code == 2 and "unknown pipeline profile" in res.output


def test_pipeline_study_keeps_the_recipe_width_and_batch_and_starts_from_the_baseline() -> None:
    from ferflow.config import TrainConfig
    from ferflow.pipeline import pipeline_tune_config
    from ferflow.tune import baseline_params

    cfg = pipeline_tune_config(
        "smoke", "0123456789abcdef0123", "ran_fm", trial_epochs=5, trials=8, workers=2,
        trial_subset=4000, steps_per_epoch=0, track=False,
    )  # fmt: skip
    assert cfg.study == "ferflow-training-smoke-ran_fm-0123456789abcdef"
    assert cfg.space.width == (TrainConfig.width,) and cfg.space.batch_size == (TrainConfig.batch_size,)
    assert cfg.baseline
    params = baseline_params(cfg)
    assert params["learning_rate"] == TrainConfig.learning_rate and params["width"] == TrainConfig.width


def test_the_study_config_survives_the_trip_between_pipeline_steps() -> None:
    """KFP passes the tuning object between steps as a protobuf Struct, whose numbers are all
    floats: it must come back the same config."""
    import json

    from ferflow.pipeline import pipeline_tune_config
    from ferflow.recipes import RecipeError, to_dict, tune_config_from_dict

    cfg = pipeline_tune_config("p", "v" * 20, "cnn", 3, 6, 2, 100, 5, False)
    assert tune_config_from_dict(json.loads(json.dumps(to_dict(cfg)), parse_int=float)) == cfg
    with pytest.raises(RecipeError, match="tune-worker item: unknown key 'trails'"):
        tune_config_from_dict({**to_dict(cfg), "trails": 3}, "tune-worker item")
