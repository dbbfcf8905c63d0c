"""Model registry: every trained model is registered; a gate decides who serves.

Aliases on the MLflow registered model (``ferflow`` by default):

- ``challenger``: the newest registered version, waiting for the gate;
- ``champion``: the version the service loads (``models:/ferflow@champion``).

The promotion gate (TFX's InfraValidator + Evaluator, in one step) moves ``champion`` to the
challenger only if (a) the challenger loads and answers a real request through the serving
code, and (b) on the same evaluation set it is at least ``margin`` better than the champion in
accuracy and does not regress macro-F1 by more than ``f1_margin``. Either way the decision and
its reason are tagged on the version; a refused challenger never becomes champion.
Champion history lives in a registered-model tag, so ``rollback`` can step back.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ferflow.config import Paths, RegistryConfig
from ferflow.model_uri import ModelNotFound, registry_uri, resolve

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from ferflow.canonical import Split

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
MODEL_ARTIFACT = "model"  # the ONNX model logged by ferflow.train
CARD_ARTIFACT = "MODEL_CARD.md"  # the model card logged by ferflow.train: a version's description
DESCRIPTION_MAX = 5000  # characters MLflow stores in a model version's description
INFRA_FACES = 16  # real evaluation faces sent through the serving path


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says which model/version and why."""


@dataclass
class GateDecision:
    promoted: bool
    reason: str
    version: str
    champion_before: str | None
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    infra: dict[str, Any] = field(default_factory=dict)

    def human(self) -> str:
        verdict = "PROMOTED to champion" if self.promoted else "NOT promoted"
        lines = [f"version {self.version}: {verdict} — {self.reason}"]
        if self.challenger_metrics:
            lines.append(f"  challenger: {_fmt(self.challenger_metrics)}")
        if self.champion_metrics:
            lines.append(f"  champion v{self.champion_before}: {_fmt(self.champion_metrics)}")
        return "\n".join(lines)


def _fmt(m: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in m.items())


def client(tracking_uri: str | None = None) -> MlflowClient:
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri or Paths().mlflow_uri
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _alias_version(c: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _history(c: MlflowClient, name: str) -> list[str]:
    tags = c.get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def register(
    run_id: str,
    config: RegistryConfig | None = None,
    tracking_uri: str | None = None,
) -> ModelVersion:
    """Register the ONNX model of training run ``run_id`` and make it the challenger.

    Tags copied from the run: dataset md5, git commit, model name, label scheme, and the
    run's test/tune metrics, so ``ferflow registry list`` compares versions at a glance. The
    version's description is the run's model card (:func:`version_description`).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    cfg = config or RegistryConfig()
    c = client(tracking_uri)
    try:
        run = c.get_run(run_id)
    except MlflowException as exc:
        raise RegistryError(f"no MLflow run {run_id!r} at {Paths().mlflow_uri}: {exc}") from exc
    if run.info.status != "FINISHED":
        raise RegistryError(
            f"run {run_id} is {run.info.status}, not FINISHED: only finished runs are registered"
        )
    try:
        c.get_registered_model(cfg.model_name)
    except MlflowException:
        c.create_registered_model(cfg.model_name, description="ferflow facial emotion classifier (ONNX)")
    tags = {
        k: run.data.tags[k]
        for k in ("dataset_md5", "git_commit", "model", "label_scheme")
        if k in run.data.tags
    }
    tags |= {k: f"{v:.6f}" for k, v in run.data.metrics.items() if k.startswith(("test_", "tune_"))}
    version = mlflow.register_model(f"runs:/{run_id}/{MODEL_ARTIFACT}", cfg.model_name, tags=tags)
    description = version_description(c, run)
    c.update_model_version(cfg.model_name, str(version.version), description=description)
    c.set_registered_model_alias(cfg.model_name, CHALLENGER, str(version.version))
    return c.get_model_version(cfg.model_name, str(version.version))


def version_description(c: MlflowClient, run: Any) -> str:
    """A registered version's description: the run's model card (MODEL_CARD.md, cut at a line to
    fit MLflow's 5,000 characters, pointing at the full card), or, for a run that logged no card,
    what the run's tags and metrics say about it."""
    run_id = run.info.run_id
    card = _read_card(c, run_id)
    if card is None:
        tags, metrics = run.data.tags, run.data.metrics
        lines = [
            f"ferflow model `{tags.get('model', '?')}` from MLflow run `{run_id}` "
            f"({run.info.run_name or 'unnamed'}); this run logged no model card.",
            f"- dataset md5: `{tags.get('dataset_md5', 'unknown')}`",
            f"- git commit: `{tags.get('git_commit', '?')}`",
        ]
        lines += [f"- {k}: {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith(("test_", "tune_"))]
        return "\n".join(lines)
    if len(card) <= DESCRIPTION_MAX:
        return card
    tail = f"\n\n… cut to fit; the full card is the run's artifact `runs:/{run_id}/{CARD_ARTIFACT}`."
    head = card[: DESCRIPTION_MAX - len(tail)]
    return head[: head.rfind("\n")] + tail


def _read_card(c: MlflowClient, run_id: str) -> str | None:
    import tempfile

    from mlflow.exceptions import MlflowException

    if CARD_ARTIFACT not in {a.path for a in c.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory(prefix="ferflow-card-") as tmp:
        try:
            return Path(c.download_artifacts(run_id, CARD_ARTIFACT, tmp)).read_text()
        except (MlflowException, OSError):
            return None


def model_path(name: str, ref: str, tracking_uri: str | None = None) -> Path:
    """Local path of the ONNX file of version or alias ``ref`` (e.g. ``3`` or ``champion``)."""
    try:
        return resolve(registry_uri(name, ref), tracking_uri or Paths().mlflow_uri).path
    except ModelNotFound as exc:
        raise RegistryError(str(exc)) from exc


def _png(face: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="PNG")
    return buf.getvalue()


def infra_validate(onnx_path: Path, eval_split: Split, probe_image: str | None = None) -> dict[str, Any]:
    """Load the model through the serving code and answer real requests with it.

    Always: ``/classify``'s path (PNG bytes of real evaluation faces → scores), checking the
    class list and that scores are distributions agreeing with the offline classifier. With a
    probe photo: ``/predict``'s path (detection + crops + scores) must find a face.
    Raises :class:`RegistryError` if the model cannot serve.
    """
    from ferflow.inference import EmotionRecognizer, InferenceError, ModelLoadError

    started = time.perf_counter()
    faces = eval_split.pixels[:INFRA_FACES]
    try:
        recognizer = EmotionRecognizer.from_model(onnx_path)
        answers = [recognizer.classify(_png(face)) for face in faces]
        offline = recognizer.classify_batch(faces).argmax(axis=1)
        photo = recognizer.analyze(Path(probe_image).read_bytes()) if probe_image else None
    except (InferenceError, ModelLoadError, ValueError, OSError) as exc:
        raise RegistryError(f"infra-validation failed for {onnx_path}: {exc}") from exc
    for answer, expected in zip(answers, offline, strict=True):
        total = sum(answer["scores"].values())
        if abs(total - 1.0) > 1e-3 or answer["label"] != recognizer.classes[int(expected)]:
            raise RegistryError(f"infra-validation: inconsistent answer {answer} from {onnx_path}")
    if photo is not None and not photo["faces"]:
        raise RegistryError(f"infra-validation: no face found in the probe photo {probe_image}")
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "requests": len(answers) + (photo is not None),
        "classes": recognizer.classes,
    }


def _metrics(
    onnx_path: Path, split: Split, classes: list[str], label_sets: dict[str, list[str]] | None
) -> dict[str, float]:
    """Accuracy and macro-F1 overall and, for a multi-source split, per source dataset
    (``photos.accuracy``, over the source's own classes)."""
    from ferflow.evaluate import evaluate_split
    from ferflow.predict import FerClassifier

    m = evaluate_split(FerClassifier(onnx_path), split, classes, occlusion=False, label_sets=label_sets)
    out = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    for name, d in m.get("datasets", {}).items():
        out |= {f"{name}.accuracy": d["accuracy"], f"{name}.macro_f1": d["macro_f1"]}
    return out


def _compare(challenger: dict[str, float], champion: dict[str, float], cfg: RegistryConfig) -> str | None:
    """Why the challenger is refused against the champion, or None when it passes."""
    d_acc = challenger["accuracy"] - champion["accuracy"]
    d_f1 = challenger["macro_f1"] - champion["macro_f1"]
    if d_acc < cfg.margin:
        return f"accuracy {d_acc:+.4f} vs champion, below the required margin {cfg.margin:+.4f}"
    if d_f1 < -cfg.f1_margin:
        return f"macro-F1 regresses by {-d_f1:.4f} (allowed {cfg.f1_margin:.4f})"
    for key in sorted(k for k in challenger if k.endswith(".accuracy") and k in champion):
        drop = champion[key] - challenger[key]
        if drop > cfg.dataset_tolerance:
            return (
                f"{key.removesuffix('.accuracy')}: accuracy regresses by {drop:.4f} vs champion "
                f"(allowed {cfg.dataset_tolerance:.4f} per dataset); overall accuracy {d_acc:+.4f}"
            )
    return None


def _gains(decision: GateDecision, champion_version: str) -> str:
    new, old = decision.challenger_metrics, decision.champion_metrics
    parts = [
        f"accuracy {new['accuracy'] - old['accuracy']:+.4f}",
        f"macro-F1 {new['macro_f1'] - old['macro_f1']:+.4f}",
    ]
    parts += [
        f"{k.removesuffix('.accuracy')} {new[k] - old[k]:+.4f}"
        for k in sorted(new)
        if k.endswith(".accuracy") and k in old
    ]
    return ", ".join(parts) + f" vs champion v{champion_version}"


def promote(
    eval_split: Split,
    classes: list[str],
    version: str | None = None,
    config: RegistryConfig | None = None,
    tracking_uri: str | None = None,
    label_sets: dict[str, list[str]] | None = None,
) -> GateDecision:
    """Run the gate on ``version`` (default: the challenger) against the current champion.

    A split of several source datasets is compared per source too (over ``label_sets``, see
    :func:`ferflow.evaluate.source_label_sets`): a regression beyond ``dataset_tolerance`` on
    any one source refuses the challenger, whatever it gains elsewhere."""
    cfg = config or RegistryConfig()
    c = client(tracking_uri)
    name = cfg.model_name
    if version is None:
        challenger = _alias_version(c, name, CHALLENGER)
        if challenger is None:
            raise RegistryError(
                f"registered model {name!r} has no {CHALLENGER!r} alias; register a run first"
            )
        version = challenger.version
    version = str(version)
    champion = _alias_version(c, name, CHAMPION)
    decision = GateDecision(False, "", version, str(champion.version) if champion else None)

    try:
        path = model_path(name, str(version), tracking_uri)
        decision.infra = infra_validate(path, eval_split, cfg.probe_image)
        if decision.infra["classes"] != list(classes):
            raise RegistryError(
                f"model classes {decision.infra['classes']} differ from the evaluation set's {classes}"
            )
        decision.challenger_metrics = _metrics(path, eval_split, classes, label_sets)
    except (RegistryError, ValueError) as exc:
        decision.reason = str(exc)
    else:
        if champion is None:
            decision.promoted, decision.reason = True, "first model: no champion yet"
        elif str(champion.version) == version:
            decision.reason = "already champion"
        else:
            decision.champion_metrics = _metrics(
                model_path(name, champion.version, tracking_uri), eval_split, classes, label_sets
            )
            refusal = _compare(decision.challenger_metrics, decision.champion_metrics, cfg)
            decision.promoted = refusal is None
            decision.reason = refusal or _gains(decision, champion.version)

    tags = {
        "gate.promoted": str(decision.promoted).lower(),
        "gate.reason": decision.reason[:4000],
        "gate.eval_n": str(len(eval_split)),
        **{f"gate.{k}": f"{v:.6f}" for k, v in decision.challenger_metrics.items()},
    }
    for key, value in tags.items():
        c.set_model_version_tag(name, str(version), key, value)
    if decision.promoted:
        history = _history(c, name)
        c.set_registered_model_alias(name, CHAMPION, str(version))
        c.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, str(version)]))
    return decision


def rollback(config: RegistryConfig | None = None, tracking_uri: str | None = None) -> tuple[str, str]:
    """Move ``champion`` back to the previous champion; returns (from_version, to_version)."""
    cfg = config or RegistryConfig()
    c = client(tracking_uri)
    name = cfg.model_name
    history = _history(c, name)
    if len(history) < 2:
        raise RegistryError(f"{name}: no previous champion to roll back to (history {history})")
    current, previous = history[-1], history[-2]
    c.set_registered_model_alias(name, CHAMPION, previous)
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))
    c.set_model_version_tag(name, current, "rolled_back", "true")
    return current, previous


def list_versions(
    config: RegistryConfig | None = None, tracking_uri: str | None = None
) -> list[dict[str, Any]]:
    cfg = config or RegistryConfig()
    c = client(tracking_uri)
    rows = []
    found = c.search_model_versions(f"name='{cfg.model_name}'")
    for number in sorted(int(v.version) for v in found):
        v = c.get_model_version(cfg.model_name, str(number))  # search results carry no aliases
        rows.append(
            {
                "version": str(v.version),
                "aliases": list(v.aliases),
                "run_id": v.run_id,
                **{k: v.tags[k] for k in sorted(v.tags)},
            }
        )
    return rows


def decision_dict(decision: GateDecision) -> dict[str, Any]:
    return asdict(decision)
