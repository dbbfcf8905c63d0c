"""Offline checks of the Helm chart `charts/ferflow-inference` (no cluster, no helm binary).

Helm itself runs in-process: helm-python-sdk ships Helm's Go SDK as a shared library in its
wheel, so `lint` and `render` here are the same code as `helm lint` / `helm template`.
Every rendered object is validated strictly (unknown fields are errors) against the
Kubernetes OpenAPI schemas shipped by kubernetes-validate, for the oldest Kubernetes the
chart supports and the newest the package knows. The ServiceMonitor CRD has no schema
there, so it is checked against the fields of the Prometheus Operator CRD it uses.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version, major_minor

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ferflow-inference"
PRODUCTION_VALUES = CHART / "values-production.yaml"
RELEASE = "ferflow"
NAMESPACE = "ferflow"

# Chart.yaml says kubeVersion >=1.27 (CronJob timeZone is GA there); also check the newest.
KUBE_VERSIONS = ("1.27", major_minor(latest_version()))
CRD_KINDS = {"ServiceMonitor"}


@pytest.fixture(scope="module", autouse=True)
def _route_helm_logs() -> None:
    """Helm's log lines (e.g. for `fail`) go to Python logging, which pytest captures."""
    helm.enable_logging()


def set_values(*expressions: str) -> dict[str, Any]:
    """Values from `--set` expressions, parsed into one map as the helm CLI does."""
    return helm.parse_set_string(",".join(expressions))


def production_values() -> dict[str, Any]:
    return helm.values_from_yaml(PRODUCTION_VALUES.read_text())


DIGEST = "sha256:" + "ab" * 32

SCENARIOS: dict[str, dict[str, Any] | None] = {
    "default": None,
    "production": production_values(),
    # A ConfigMap-held tracking URI, a pinned model version, fixed replicas, no SA creation.
    "configmap-pinned": set_values(
        "mlflow.trackingUri.configMapName=mlflow-endpoint",
        "model.version=7",
        "autoscaling.enabled=false,replicaCount=2",
        "podDisruptionBudget.enabled=false",
        "serviceAccount.create=false,serviceAccount.name=ml-runner",
        "service.type=NodePort",
        f"image.digest={DIGEST}",
        "containerPort=8080",
        "podAnnotations.example\\.com/team=vision,podLabels.tier=gold",
        "nodeSelector.kubernetes\\.io/arch=amd64,priorityClassName=ml-serving",
        "tolerations[0].key=dedicated,tolerations[0].operator=Equal,tolerations[0].value=ml",
        "tolerations[0].effect=NoSchedule",
        "extraEnv[0].name=NODE_NAME,extraEnv[0].valueFrom.fieldRef.fieldPath=spec.nodeName",
        "envFrom[0].configMapRef.name=ferflow-settings,envFrom[0].prefix=APP_",
        "service.annotations.example\\.com/lb=internal",
        "imagePullSecrets[0].name=regcred",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key=pool",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator=In",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].values[0]=inference",
    ),
    # Ingress without TLS, smoke retraining without the KFP token, explicit model URI.
    "ingress-cron": set_values(
        "ingress.enabled=true",
        "retrainCronJob.enabled=true",
        "retrainCronJob.kfpHost=http://ml-pipeline.kubeflow:8888",
        "retrainCronJob.profile=smoke",
        "retrainCronJob.kfpServiceAccountToken=false",
        "model.uri=runs:/0a1b2c/model",
        "limits.maxUploadBytes=5000000",
        "podDisruptionBudget.maxUnavailable=null,podDisruptionBudget.minAvailable=50%",
        "preStopSleepSeconds=0",
        "serviceMonitor.enabled=true,serviceMonitor.interval=1m",
    ),
}

EXPECTED_KINDS = {
    "default": {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceAccount",
    },
    "production": {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceAccount", "Ingress", "ServiceMonitor", "CronJob",
    },
    "configmap-pinned": {"Deployment", "Service"},
    "ingress-cron": {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceAccount", "Ingress", "ServiceMonitor", "CronJob",
    },
}  # fmt: skip


def render(values: dict[str, Any] | None) -> dict[str, Any]:
    """`helm template`: returns {"objects": [...], "notes": str}."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(
            values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    objects = [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    notes = next((t for p, t in manifests.items() if p.endswith("NOTES.txt")), "")
    return {"objects": objects, "notes": notes}


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    return {name: render(values) for name, values in SCENARIOS.items()}


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --- helm lint ---------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_helm_lint_strict_is_clean(scenario: str) -> None:
    report = helm.lint(CHART, values=copy.deepcopy(SCENARIOS[scenario]), strict=True, kube_version="v1.27.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


# --- rendering + strict Kubernetes schema validation ------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_renders_expected_objects(rendered: dict[str, Any], scenario: str) -> None:
    kinds = {o["kind"] for o in rendered[scenario]["objects"]}
    assert kinds == EXPECTED_KINDS[scenario]
    for obj in rendered[scenario]["objects"]:
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert len(obj["metadata"]["name"]) <= 63


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_object_validates_strictly(rendered: dict[str, Any], scenario: str, version: str) -> None:
    errors = []
    checked = 0
    for obj in rendered[scenario]["objects"]:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {e.message}")
    assert errors == []
    assert checked == len(EXPECTED_KINDS[scenario] - CRD_KINDS)


def test_strict_validation_catches_an_unknown_field(rendered: dict[str, Any]) -> None:
    """The schema check above has teeth: a misspelt field or a wrong type fails it."""
    deployment = copy.deepcopy(only(rendered["default"]["objects"], "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)
    deployment = copy.deepcopy(only(rendered["default"]["objects"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3k"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


# --- ServiceMonitor (CRD: checked against the Prometheus Operator fields it uses) --------

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


def _seconds(duration: str) -> float:
    units = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|[ywdhms])", duration))


@pytest.mark.parametrize("scenario", ["production", "ingress-cron"])
def test_service_monitor_structure(rendered: dict[str, Any], scenario: str) -> None:
    objects = rendered[scenario]["objects"]
    monitor = only(objects, "ServiceMonitor")
    jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(monitor)
    service = only(objects, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items(), "selects no Service"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
        # Prometheus refuses a scrape timeout longer than the interval.
        assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


def test_service_monitor_schema_has_teeth(rendered: dict[str, Any]) -> None:
    monitor = copy.deepcopy(only(rendered["production"]["objects"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(monitor)


# --- what the objects mean ---------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_deployment_is_hardened_and_probed(rendered: dict[str, Any], scenario: str) -> None:
    objects = rendered[scenario]["objects"]
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"} <= tmp_volumes
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert "startupProbe" in container
    port = container["ports"][0]
    assert port["name"] == "http"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    # The server listens where the container port says.
    assert container["command"] == ["ferflow", "serve", "--port", str(port["containerPort"])]
    assert "cpu" in container["resources"]["requests"]
    assert "memory" in container["resources"]["limits"]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_objects_point_at_each_other(rendered: dict[str, Any], scenario: str) -> None:
    objects = rendered[scenario]["objects"]
    deployment = only(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = only(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pod = deployment["spec"]["template"]["spec"]
    accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    if accounts:
        assert pod["serviceAccountName"] == accounts[0]["metadata"]["name"]
    for obj in objects:
        if obj["kind"] == "PodDisruptionBudget":
            assert obj["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        if obj["kind"] == "HorizontalPodAutoscaler":
            ref = obj["spec"]["scaleTargetRef"]
            assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
            assert "replicas" not in deployment["spec"], "HPA and Deployment would fight"
            (metric,) = obj["spec"]["metrics"]
            assert metric["resource"]["name"] == "cpu"
        if obj["kind"] == "Ingress":
            for rule in obj["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    assert backend["name"] == service["metadata"]["name"]
                    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_fixed_replicas_without_autoscaling(rendered: dict[str, Any]) -> None:
    objects = rendered["configmap-pinned"]["objects"]
    assert only(objects, "Deployment")["spec"]["replicas"] == 2
    assert only(objects, "Service")["spec"]["type"] == "NodePort"
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ml-runner"
    assert pod["containers"][0]["image"] == f"ferflow/ferflow@{DIGEST}"
    template = only(objects, "Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"]["example.com/team"] == "vision"
    assert template["metadata"]["labels"]["tier"] == "gold"
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert pod["priorityClassName"] == "ml-serving"
    assert pod["tolerations"][0]["effect"] == "NoSchedule"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["inference"]
    container = pod["containers"][0]
    assert env_of(container)["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert container["envFrom"] == [{"configMapRef": {"name": "ferflow-settings"}, "prefix": "APP_"}]
    assert container["ports"][0]["containerPort"] == 8080


def test_production_runs_three_replicas_spread_and_protected(rendered: dict[str, Any]) -> None:
    objects = rendered["production"]["objects"]
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 3
    assert only(objects, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 2,
        "selector": only(objects, "Deployment")["spec"]["selector"],
    }
    ingress = only(objects, "Ingress")
    assert ingress["spec"]["tls"][0]["hosts"] == ["fer.example.com"]
    assert "https://fer.example.com/predict" in rendered["production"]["notes"]


def test_default_serves_the_reference_model(rendered: dict[str, Any]) -> None:
    container = server_container(rendered["default"]["objects"])
    env = env_of(container)
    assert "MLFLOW_TRACKING_URI" not in env and "FERFLOW_MODEL_URI" not in env
    assert "FERFLOW_API_KEY" not in env
    assert env["HOME"]["value"] == "/tmp"
    assert "reference model" in rendered["default"]["notes"]

    volumes = {
        v["name"]: v
        for v in only(rendered["default"]["objects"], "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["FERFLOW_TASK_DIR"]["value"] == mounts["tasks"] and "emptyDir" in volumes["tasks"]


def test_production_reads_secrets_and_serves_the_champion(rendered: dict[str, Any]) -> None:
    container = server_container(rendered["production"]["objects"])
    env = env_of(container)
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"] == {
        "secretKeyRef": {"name": "ferflow-mlflow", "key": "MLFLOW_TRACKING_URI"}
    }
    assert env["FERFLOW_MODEL_URI"]["value"] == "models:/ferflow@champion"
    assert env["FERFLOW_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "ferflow-api-key", "key": "api-key"}
    }
    assert env["FERFLOW_MAX_UPLOAD_BYTES"]["value"] == "10485760"
    assert env["FERFLOW_MAX_PIXELS"]["value"] == "40000000"
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "https://s3.example.com"
    assert env["FERFLOW_MAX_VIDEO_SECONDS"]["value"] == "1800" and "FERFLOW_MAX_VIDEO_BYTES" not in env
    spec = only(rendered["production"]["objects"], "Deployment")["spec"]["template"]["spec"]
    (tasks,) = [v for v in spec["volumes"] if v["name"] == "tasks"]
    assert tasks == {"name": "tasks", "persistentVolumeClaim": {"claimName": "ferflow-video-tasks"}}
    assert container["envFrom"] == [{"secretRef": {"name": "ferflow-object-storage"}}]


def test_configmap_tracking_uri_and_pinned_version(rendered: dict[str, Any]) -> None:
    container = server_container(rendered["configmap-pinned"]["objects"])
    env = env_of(container)
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"] == {
        "configMapKeyRef": {"name": "mlflow-endpoint", "key": "MLFLOW_TRACKING_URI"}
    }
    assert env["FERFLOW_MODEL_URI"]["value"] == "models:/ferflow/7"


def test_explicit_model_uri_wins_without_tracking(rendered: dict[str, Any]) -> None:
    objects = rendered["ingress-cron"]["objects"]
    container = server_container(objects)
    env = env_of(container)
    assert env["FERFLOW_MODEL_URI"]["value"] == "runs:/0a1b2c/model"
    assert env["FERFLOW_MAX_UPLOAD_BYTES"]["value"] == "5000000"
    assert "FERFLOW_MAX_PIXELS" not in env
    assert "lifecycle" not in container
    assert only(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == "50%"
    assert "maxUnavailable" not in only(objects, "PodDisruptionBudget")["spec"]


@pytest.mark.parametrize(
    ("scenario", "profile", "token"), [("production", "default", True), ("ingress-cron", "smoke", False)]
)
def test_retrain_cronjob_submits_the_pipeline(
    rendered: dict[str, Any], scenario: str, profile: str, token: bool
) -> None:
    cron = only(rendered[scenario]["objects"], "CronJob")
    assert len(cron["metadata"]["name"]) <= 52  # the Job controller appends 11 characters
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == [
        "ferflow", "pipeline", "submit", "--host", "$(KFP_HOST)", "--profile", profile,
    ]  # fmt: skip
    env = env_of(container)
    assert env["KFP_HOST"]["value"].startswith("http://ml-pipeline.kubeflow")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    projected = [v for v in pod["volumes"] if "projected" in v]
    if token:
        (source,) = projected[0]["projected"]["sources"]
        assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
        mount = next(m for m in container["volumeMounts"] if m["name"] == projected[0]["name"])
        token_path = env["KF_PIPELINES_SA_TOKEN_PATH"]["value"]
        assert token_path == f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"
    else:
        assert projected == [] and "KF_PIPELINES_SA_TOKEN_PATH" not in env


def test_optional_objects_are_off_by_default(rendered: dict[str, Any]) -> None:
    kinds = {o["kind"] for o in rendered["default"]["objects"]}
    assert not kinds & {"Ingress", "ServiceMonitor", "CronJob"}


# --- bad values are refused, naming the field -------------------------------------------

BAD_SCHEMA_VALUES = [
    ("replicaCount=three", "/replicaCount"),
    ("bogus=1", "'bogus'"),
    ("image.tags=latest", "'tags'"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("service.type=ExternalName", "/service/type"),
    ("retrainCronJob.profile=huge", "/retrainCronJob/profile"),
    ("retrainCronJob.schedule=daily", "/retrainCronJob/schedule"),
    ("securityContext.readOnlyRootFilesystem=false", "/securityContext/readOnlyRootFilesystem"),
    ("podSecurityContext.runAsNonRoot=false", "/podSecurityContext/runAsNonRoot"),
    ("model.alias=latest", "/model/alias"),
    ("limits.maxUploadBytes=0", "/limits/maxUploadBytes"),
    ("probes.readiness.path=readyz", "/probes/readiness/path"),
    ("serviceMonitor.interval=soon", "/serviceMonitor/interval"),
    ("autoscaling.targetCPUUtilizationPercentage=150", "/autoscaling/targetCPUUtilizationPercentage"),
    ("mlflow.trackingUri.secretName=Not_A_Name", "/mlflow/trackingUri/secretName"),
    ("resources.requests.cpu=lots", "/resources/requests/cpu"),
    ("env.BAD NAME=x", "'BAD NAME'"),
    ("podLabels.app\\.kubernetes\\.io/name=other", "'app.kubernetes.io/name'"),
]


@pytest.mark.parametrize(("expression", "field"), BAD_SCHEMA_VALUES)
def test_schema_rejects_bad_values(expression: str, field: str) -> None:
    values = set_values(expression)
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as error:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    assert field in str(error.value)
    report = helm.lint(CHART, values=values, strict=True)
    assert any(m["severity"] == 3 and field in m["error"] for m in report["messages"]), report


BAD_COMBINATIONS = [
    (
        "mlflow.trackingUri.secretName=a,mlflow.trackingUri.configMapName=b",
        "either secretName or configMapName",
    ),
    ("resources.requests.cpu=null", "needs resources.requests.cpu"),
    ("retrainCronJob.enabled=true", "needs retrainCronJob.kfpHost"),
    ("podDisruptionBudget.maxUnavailable=null", "exactly one of minAvailable and maxUnavailable"),
    ("autoscaling.minReplicas=5,autoscaling.maxReplicas=2", "must not exceed"),
]


@pytest.mark.parametrize(("expression", "message"), BAD_COMBINATIONS)
def test_inconsistent_values_fail_rendering(expression: str, message: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError) as error:
        chart.render(values=set_values(expression), name=RELEASE, namespace=NAMESPACE)
    assert message in str(error.value)


def test_values_and_schema_agree() -> None:
    """values.yaml passes its own schema and the schema allows no key values.yaml lacks."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)
        schema = chart.schema
        assert schema is not None
        assert set(schema["properties"]) == set(chart.values)
        assert schema["additionalProperties"] is False


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [key for key in values if f"`{key}" not in readme]
    assert missing == []


# --- the image the chart runs ------------------------------------------------------------


def test_dockerfile_matches_the_chart() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (base,) = set(re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M))
    assert base == "python:3.11-slim"
    assert "uv sync --frozen --no-dev" in dockerfile and "--compile-bytecode" in dockerfile
    users = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    pod_security = values["podSecurityContext"]
    assert users == [(str(pod_security["runAsUser"]), str(pod_security["runAsGroup"]))]
    assert values["podSecurityContext"]["runAsUser"] == values["securityContext"]["runAsUser"]
    cmd = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert yaml.safe_load(cmd[-1]) == ["ferflow", "serve", "--port", str(values["containerPort"])]
    assert f"EXPOSE {values['containerPort']}" in dockerfile
    # .dockerignore is an allow-list: data, databases and the venv never enter the context.
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line]
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert "*" in lines
    assert allowed and not allowed & {"data", ".venv", "artifacts", "mlruns", "tests", ".git"}
    for path in allowed:
        assert (ROOT / path).exists(), f".dockerignore allows {path}, which does not exist"
