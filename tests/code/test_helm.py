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
import email.parser
import email.policy
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
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
        "tests.enabled=false",
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
        "trainJobRBAC.enabled=true,trainJobRBAC.namespace=kubeflow",
    ),
    # NetworkPolicy without same-namespace access, explicit peers and restricted egress; the
    # HPA on CPU and in-flight requests; the helm test pod with an API key and no /predict.
    "netpol-custom-metric": helm.values_from_yaml(
        """
auth: {existingSecret: ferflow-api-key}
autoscaling:
  customMetric: {enabled: true, name: bentoml_service_request_in_progress, targetAverageValue: 2500m}
networkPolicy:
  enabled: true
  ingress:
    sameNamespace: false
    ingressController:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: traefik}}
    prometheus:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: observability}}
        podSelector: {matchLabels: {app.kubernetes.io/name: prometheus}}
    from:
      - ipBlock: {cidr: 10.0.0.0/8, except: [10.96.0.0/12]}
  egress:
    restrict: true
    rules:
      - to: [{ipBlock: {cidr: 203.0.113.10/32}}]
        ports: [{port: 443, protocol: TCP}]
tests: {predict: false, timeoutSeconds: 90}
"""
    ),
}

EXPECTED_KINDS = {
    "default": {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceAccount", "Pod",
    },
    "production": {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceAccount", "Ingress", "ServiceMonitor", "CronJob", "NetworkPolicy", "Pod",
    },
    "configmap-pinned": {"Deployment", "Service"},
    "ingress-cron": {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceAccount", "Ingress", "ServiceMonitor", "CronJob", "Pod", "Role", "RoleBinding",
    },
    "netpol-custom-metric": {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceAccount", "NetworkPolicy", "Pod",
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
    # The server listens where the container port says, on every interface (the CLI binds loopback).
    serve = ["ferflow", "serve", "--host", "0.0.0.0", "--port", str(port["containerPort"])]
    assert container["command"] == serve
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
            metric = obj["spec"]["metrics"][0]
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
    # its pods are not servers: no Deployment selector (HPA, PDB) or Service counts them
    pod_labels = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    deployment = only(rendered[scenario]["objects"], "Deployment")
    assert not deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert (
        not only(rendered[scenario]["objects"], "Service")["spec"]["selector"].items() <= pod_labels.items()
    )
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
    assert not kinds & {"Ingress", "ServiceMonitor", "CronJob", "NetworkPolicy", "Role", "RoleBinding"}
    (cpu,) = only(rendered["default"]["objects"], "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert cpu["type"] == "Resource"


def test_train_job_rbac_grants_the_pipeline_exactly_what_the_train_job_step_calls(
    rendered: dict[str, Any],
) -> None:
    """The Role holds the verbs ferflow.trainjob.TFJobAPI uses on TFJobs, in the pipeline's
    namespace, bound to the pipeline's ServiceAccount (standalone KFP: pipeline-runner)."""
    from ferflow.trainjob import GROUP, PLURAL, TFJobAPI

    objects = rendered["ingress-cron"]["objects"]
    role, binding = only(objects, "Role"), only(objects, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "kubeflow"
    (rule,) = role["rules"]
    assert (rule["apiGroups"], rule["resources"]) == ([GROUP], [PLURAL])
    calls = {name for name in vars(TFJobAPI) if not name.startswith("_")}
    assert set(rule["verbs"]) == calls == {"create", "get", "delete"}
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}
    ]
    same_namespace = render(set_values("trainJobRBAC.enabled=true"))["objects"]
    assert only(same_namespace, "Role")["metadata"]["namespace"] == NAMESPACE


# --- NetworkPolicy -----------------------------------------------------------------------


def _pod_labels(objects: list[dict[str, Any]], kind: str) -> dict[str, str]:
    obj = only(objects, kind)
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    if kind == "Pod":
        return obj["metadata"]["labels"]
    return obj["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are expected here"
    return selector.get("matchLabels", {}).items() <= labels.items()


@pytest.mark.parametrize("scenario", ["production", "netpol-custom-metric"])
def test_network_policy_guards_the_inference_pods_only(rendered: dict[str, Any], scenario: str) -> None:
    objects = rendered[scenario]["objects"]
    spec = only(objects, "NetworkPolicy")["spec"]
    assert _selects(spec["podSelector"], _pod_labels(objects, "Deployment"))
    assert not _selects(spec["podSelector"], _pod_labels(objects, "Pod")), "selects the test pod"
    if "CronJob" in EXPECTED_KINDS[scenario]:
        assert not _selects(spec["podSelector"], _pod_labels(objects, "CronJob"))
    (rule,) = spec["ingress"]
    # The named port is the server's container port, whatever containerPort says.
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert "http" in {p["name"] for p in server_container(objects)["ports"]}
    assert rule["from"], "an empty `from` would admit every source"
    for peer in rule["from"]:
        kubernetes_validate.validate(
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "peer"}, "spec": {"podSelector": {}, "ingress": [{"from": [peer]}]}},
            KUBE_VERSIONS[0], strict=True,
        )  # fmt: skip


def test_production_network_policy_peers_and_open_egress(rendered: dict[str, Any]) -> None:
    spec = only(rendered["production"]["objects"], "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress"] and "egress" not in spec  # MLflow, S3: open
    (rule,) = spec["ingress"]
    assert rule["from"] == [
        {"podSelector": {}},
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
        },
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        },
    ]
    # Prometheus' namespace is the one the ServiceMonitor's release label belongs to.
    assert only(rendered["production"]["objects"], "ServiceMonitor")["metadata"]["labels"]["release"]


def test_network_policy_explicit_peers_and_restricted_egress(rendered: dict[str, Any]) -> None:
    objects = rendered["netpol-custom-metric"]["objects"]
    spec = only(objects, "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = spec["ingress"]
    test_pod_peer, *peers = rule["from"]
    # Without same-namespace access the helm test pod is admitted by its own labels.
    assert "namespaceSelector" not in test_pod_peer
    assert _selects(test_pod_peer["podSelector"], _pod_labels(objects, "Pod"))
    assert not _selects(test_pod_peer["podSelector"], _pod_labels(objects, "Deployment"))
    assert peers == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "traefik"}}},
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        },
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}},
    ]
    dns, storage = spec["egress"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert sorted(p["protocol"] for p in dns["ports"]) == ["TCP", "UDP"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert storage == {
        "to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}],
        "ports": [{"port": 443, "protocol": "TCP"}],
    }


def test_network_policy_egress_can_be_closed_entirely() -> None:
    values = set_values(
        "networkPolicy.enabled=true",
        "networkPolicy.egress.restrict=true",
        "networkPolicy.egress.allowDNS=false",
    )
    objects = render(values)["objects"]
    policy = only(objects, "NetworkPolicy")
    assert policy["spec"]["egress"] == [] and "Egress" in policy["spec"]["policyTypes"]
    kubernetes_validate.validate(policy, KUBE_VERSIONS[0], strict=True)


# --- HPA on CPU and a custom metric -------------------------------------------------------


def test_hpa_scales_on_cpu_and_in_flight_requests(rendered: dict[str, Any]) -> None:
    hpa = only(rendered["netpol-custom-metric"]["objects"], "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    cpu, custom = hpa["spec"]["metrics"]
    assert cpu == {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
    }
    assert custom == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "bentoml_service_request_in_progress"},
            "target": {"type": "AverageValue", "averageValue": "2500m"},
        },
    }


def test_custom_metric_target_may_be_a_number() -> None:
    values = set_values(
        "autoscaling.customMetric.enabled=true",
        "autoscaling.customMetric.name=bentoml_service_requests_per_second",
        "autoscaling.customMetric.targetAverageValue=20",
    )
    hpa = only(render(values)["objects"], "HorizontalPodAutoscaler")
    (custom,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom["pods"]["target"]["averageValue"] == "20"
    assert custom["pods"]["metric"]["name"] == "bentoml_service_requests_per_second"
    kubernetes_validate.validate(hpa, KUBE_VERSIONS[0], strict=True)


def test_the_default_custom_metric_is_one_the_server_exports() -> None:
    """BentoML names its HTTP metrics <namespace>_request_*; the service's namespace is
    bentoml_service (what /metrics shows), so the default metric exists on every pod."""
    import _bentoml_impl.server.app as bentoml_app
    import bentoml._internal.server.http.instruments as instruments

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    name = values["autoscaling"]["customMetric"]["name"]
    namespace, _, metric = name.partition("_request_")
    assert f'namespace="{namespace}"' in Path(bentoml_app.__file__).read_text()
    assert f'name="request_{metric}"' in Path(instruments.__file__).read_text()


# --- helm test ---------------------------------------------------------------------------


def helm_test_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return only(objects, "Pod")


@pytest.mark.parametrize("scenario", ["default", "production", "ingress-cron", "netpol-custom-metric"])
def test_helm_test_pod_is_a_hardened_hook(rendered: dict[str, Any], scenario: str) -> None:
    objects = rendered[scenario]["objects"]
    pod = helm_test_pod(objects)
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    policy = set(annotations["helm.sh/hook-delete-policy"].split(","))
    assert policy == {"before-hook-creation", "hook-succeeded"}
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["activeDeadlineSeconds"] >= 60
    server_pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"] == server_pod["securityContext"]
    (container,) = spec["containers"]
    server = server_container(objects)
    # The chart's own image: no other registry is needed.
    assert (container["image"], container["imagePullPolicy"]) == (server["image"], server["imagePullPolicy"])
    assert container["securityContext"] == server["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["command"] == ["python", "-c"]
    (script,) = container["args"]
    compile(script, "helm-test", "exec")
    for path in ('"/readyz"', '"/model"', '"/predict"'):
        assert path in script
    assert "memory" in container["resources"]["limits"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    service = only(objects, "Service")
    env = env_of(container)
    host, port = service["metadata"]["name"], service["spec"]["ports"][0]["port"]
    assert env["FERFLOW_URL"]["value"] == f"http://{host}:{port}"
    assert int(env["FERFLOW_READY_TIMEOUT"]["value"]) == spec["activeDeadlineSeconds"] - 30
    # The same API key as the server, from the same Secret, when auth is on.
    assert env.get("FERFLOW_API_KEY") == env_of(server).get("FERFLOW_API_KEY")
    assert env["FERFLOW_TEST_PREDICT"]["value"] == ("false" if scenario == "netpol-custom-metric" else "true")
    assert len(pod["metadata"]["name"]) <= 63
    # Not one of the server's pods: no selector (Deployment and so HPA, PDB, Service) takes it.
    labels = pod["metadata"]["labels"]
    assert not _selects(only(objects, "Deployment")["spec"]["selector"], labels)
    assert not only(objects, "Service")["spec"]["selector"].items() <= labels.items()
    for obj in objects:
        if obj["kind"] == "PodDisruptionBudget":
            assert not _selects(obj["spec"]["selector"], labels)


class _StubServer(http.server.ThreadingHTTPServer):
    """Answers like `ferflow serve`: /readyz is 503 once, then 200; records the requests."""

    def __init__(self, api_key: str, predict_answer: dict[str, Any]) -> None:
        self.api_key = api_key
        self.predict_answer = predict_answer
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.readyz_calls = 0
        super().__init__(("127.0.0.1", 0), _StubHandler)


class _StubHandler(http.server.BaseHTTPRequestHandler):
    server: _StubServer

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.requests.append((method, self.path, dict(self.headers), body))
        if self.path == "/readyz":
            self.server.readyz_calls += 1
            self._answer(503 if self.server.readyz_calls == 1 else 200, {})
            return
        if self.server.api_key and self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
            self._answer(401, {"error": "missing or wrong API key"})
        elif (method, self.path) == ("GET", "/model"):
            self._answer(200, {"name": "ferflow", "version": "1", "classes": ["happy", "sad"]})
        elif (method, self.path) == ("POST", "/predict"):
            self._answer(200, self.server.predict_answer)
        else:
            self._answer(404, {"error": "not found"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


def _run_helm_test(
    pod: dict[str, Any], api_key: str = "", predict_answer: dict[str, Any] | None = None
) -> tuple[subprocess.CompletedProcess[str], _StubServer]:
    """Runs the test pod's script with its own environment, the Service URL pointing at a stub."""
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    no_faces = {"faces": [], "model": {"name": "ferflow", "version": "1"}}
    server = _StubServer(api_key, predict_answer or no_faces)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env["FERFLOW_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
        env["HOME"] = os.environ.get("HOME", "/tmp")
        if api_key:
            env["FERFLOW_API_KEY"] = api_key
        result = subprocess.run(
            [sys.executable, *container["command"][1:], *container["args"]],
            env={**env, "PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    return result, server


def test_helm_test_script_calls_readyz_model_and_predict(rendered: dict[str, Any]) -> None:
    from ferflow.inference import decode_image

    pod = helm_test_pod(rendered["production"]["objects"])
    result, server = _run_helm_test(pod, api_key="s3cret")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("PASS")
    calls = [(method, path) for method, path, _, _ in server.requests]
    assert calls == [("GET", "/readyz"), ("GET", "/readyz"), ("GET", "/model"), ("POST", "/predict")]
    _, _, headers, body = server.requests[-1]
    assert headers["Authorization"] == "Bearer s3cret"
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    )
    (part,) = message.iter_parts()
    assert part.get_param("name", header="content-disposition") == "image"
    assert part.get_content_type() == "image/png"
    # The server's own decoder accepts the generated image.
    rgb, _ = decode_image(part.get_payload(decode=True), name="image")
    assert rgb.shape == (64, 64, 3)


def test_helm_test_script_fails_on_a_bad_answer(rendered: dict[str, Any]) -> None:
    pod = helm_test_pod(rendered["default"]["objects"])
    result, _ = _run_helm_test(pod, predict_answer={"error": "boom"})
    assert result.returncode != 0 and "PASS" not in result.stdout
    # Without `predict` it stops after /model; no API key header is sent without auth.
    pod = helm_test_pod(rendered["netpol-custom-metric"]["objects"])
    result, server = _run_helm_test(pod)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [path for _, path, _, _ in server.requests][-1] == "/model"
    assert all("Authorization" not in headers for _, _, headers, _ in server.requests)


# --- chart metadata and packaging ------------------------------------------------------


def test_chart_metadata_names_the_project() -> None:
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
    repo = meta["home"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo)
    assert meta["sources"][0] == repo
    assert all(source.startswith(repo) for source in meta["sources"])
    owner_repo = repo.removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    assert meta["icon"].startswith(prefix)
    icon = ROOT / meta["icon"].removeprefix(prefix)
    assert icon.is_file() and icon.read_text().lstrip().startswith("<svg")


@pytest.fixture()
def packaged_with_scratch(tmp_path: Path) -> tuple[set[str], set[str]]:
    """`helm package` of a copy of the chart with scratch files dropped into it: the archive's
    file names (relative to the chart folder) and the scratch files."""
    copy_dir = tmp_path / "ferflow-inference"
    shutil.copytree(CHART, copy_dir)
    scratch = [
        "scratch/render.yaml", "rendered/all.yaml", "old-0.0.1.tgz", "values-local.yaml",
        "values.yaml.bak", "templates/deployment.yaml.orig", "templates/.hpa.yaml.swp",
        ".DS_Store", ".vscode/settings.json", "notes.txt~",
    ]  # fmt: skip
    for name in scratch:
        (copy_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (copy_dir / name).write_text("scratch\n")
    archive = helm.package(copy_dir, destination=tmp_path / "dist")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    return names, set(scratch)


def test_helmignore_keeps_scratch_out_of_the_package(
    packaged_with_scratch: tuple[set[str], set[str]],
) -> None:
    names, scratch = packaged_with_scratch
    assert (CHART / ".helmignore").is_file()
    assert not names & scratch, names & scratch
    assert "icon.svg" not in names  # referenced by URL
    tracked = {
        "Chart.yaml", "values.yaml", "values.schema.json", "values-production.yaml", "README.md",
        "templates/tests/test-service.yaml", "templates/networkpolicy.yaml", "templates/_helpers.tpl",
    }  # fmt: skip
    assert tracked <= names
    # Everything else in the chart folder is shipped.
    in_folder = {p.relative_to(CHART).as_posix() for p in CHART.rglob("*") if p.is_file()}
    assert names - {".helmignore"} == in_folder - {"icon.svg", ".helmignore"}


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
    ("networkPolicy.enabled=yes", "/networkPolicy/enabled"),
    ("networkPolicy.ingress.from[0].ipBlock.cidr=10.0.0.0", "/networkPolicy/ingress/from/0"),
    ("networkPolicy.ingress.from[0].podSelectors.matchLabels.a=b", "/networkPolicy/ingress/from/0"),
    ("networkPolicy.egress.rules[0].ports[0].protocol=ICMP", "/networkPolicy/egress/rules/0"),
    ("networkPolicy.egress.restricted=true", "'restricted'"),
    ("autoscaling.customMetric.targetAverageValue=lots", "/autoscaling/customMetric/targetAverageValue"),
    ("autoscaling.customMetric.name=requests in flight", "/autoscaling/customMetric/name"),
    ("tests.timeoutSeconds=10", "/tests/timeoutSeconds"),
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


def test_network_policy_without_any_source_fails_rendering() -> None:
    """An ingress rule with no `from` would admit every source; the chart refuses instead."""
    values = helm.values_from_yaml(
        "networkPolicy: {enabled: true,"
        " ingress: {sameNamespace: false, ingressController: [], prometheus: []}}"
    )
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError) as error:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    assert "leaves the service unreachable" in str(error.value)


def test_values_and_schema_agree() -> None:
    """values.yaml passes its own schema and the schema allows no key values.yaml lacks."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)
        schema = chart.schema
        assert schema is not None
        assert set(schema["properties"]) == set(chart.values)
        assert schema["additionalProperties"] is False


# Free-form maps (Kubernetes objects, label maps) whose keys are not the chart's own settings.
_FREE_FORM = {"resources", "podSecurityContext", "securityContext"}
# Settings nested one level deeper than `section.key`, documented as `section.key.sub` / `.sub`.
_NESTED = ("networkPolicy.ingress", "networkPolicy.egress", "autoscaling.customMetric")


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [key for key in values if f"`{key}" not in readme]
    assert missing == []
    # Every setting inside a section is named (`section.key` or `/ .key` in the table).
    missing = [
        f"{key}.{sub}"
        for key, section in values.items()
        if isinstance(section, dict) and key not in _FREE_FORM
        for sub in section
        if f"`{key}.{sub}" not in readme and f"`.{sub}`" not in readme
    ]
    for dotted in _NESTED:
        first, second = dotted.split(".")
        for sub in values[first][second]:
            if f"`{dotted}.{sub}" not in readme and f"`.{sub}`" not in readme:
                missing.append(f"{dotted}.{sub}")
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
