"""Model registry: every trained model is registered; a gate decides who serves.

Aliases on the MLflow registered model (``ferflow`` by default):

- ``challenger``: the newest registered version, waiting for the gate;
- ``champion``: the version the service loads (``models:/ferflow@champion``).

The promotion gate (TFX's InfraValidator + Evaluator, in one step) moves ``champion`` to the
challenger only if (a) the challenger loads and answers a real request through the serving
code, and (b) on the same evaluation set it is at least ``margin`` better than the champion in
accuracy and does not regress macro-F1 by more than ``f1_margin`` (nor accuracy on any one
source by more than ``dataset_tolerance``). A setting below "no regression" (:func:`lowered_bars`)
is refused unless forced, and a forced decision says so on the version.

Every decision is recorded on the version: ``gate.<n>`` holds decision ``n`` (JSON: verdict,
reason, margins, dataset and data version, split, metrics) and is never rewritten; the ``gate.*``
tags hold the latest decision alone. A refused challenger never becomes champion. Champion
history lives in a registered-model tag, so ``rollback`` can step back.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
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
GATE = "gate."  # prefix of a version's gate tags
DECISION_TAG = re.compile(r"gate\.(\d+)")  # gate.<n>: decision n, a JSON record
ROLLED_BACK_TAG = "rolled_back"
TAG_VALUE_MAX = 5000  # characters of a model version tag value in MLflow's SQL store


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says which model/version and why."""


class RegistryUsageError(RegistryError, ValueError):
    """The request is wrong, not the registry: a model or version it does not have, a gate below
    "no regression" without ``force``. Fixed by changing the command (the CLI exits 2)."""


@dataclass(frozen=True)
class EvalSet:
    """What a gate decision is measured on; recorded with the decision."""

    dataset: str = "unknown"  # the evaluation set's folder
    version: str = "unknown"  # its data version: the canonical dataset.json's ``source_version``
    split: str = "unknown"

    @classmethod
    def of(cls, dataset: str | Path, meta: dict[str, Any], split: str) -> EvalSet:
        """The split ``split`` of the dataset at ``dataset`` whose metadata is ``meta``."""
        return cls(str(dataset), str(meta.get("source_version") or "unversioned"), split)


@dataclass
class GateDecision:
    promoted: bool
    reason: str
    version: str
    champion_before: str | None
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    infra: dict[str, Any] = field(default_factory=dict)
    number: int = 0  # the decision's number on the version (tag gate.<number>)
    time: str = ""  # UTC, ISO 8601
    margins: dict[str, float] = field(default_factory=dict)  # margin, f1_margin, dataset_tolerance
    evaluated_on: dict[str, Any] = field(default_factory=dict)  # dataset, version, split, n
    forced: str = ""  # what a forced gate lowered (see lowered_bars); "" when not forced

    def human(self) -> str:
        verdict = "PROMOTED to champion" if self.promoted else "NOT promoted"
        lines = [f"version {self.version}: {verdict} — {self.reason}"]
        if self.forced:
            lines.append(f"  FORCED gate: {self.forced}")
        if self.margins and self.evaluated_on:
            m, e = self.margins, self.evaluated_on
            lines.append(
                f"  gate: margin {m['margin']:+.4f}, f1_margin {m['f1_margin']:.4f}, dataset_tolerance "
                f"{m['dataset_tolerance']:.4f}; {e['dataset']} (data version {e['version']}), "
                f"split {e['split']}, {e['n']} rows; recorded as gate.{self.number}"
            )
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


def lowered_bars(cfg: RegistryConfig) -> list[str]:
    """The settings of ``cfg`` that lower the gate below "no regression", each letting a
    challenger worse than the champion through; empty for the defaults.

    ``margin`` is the required accuracy gain: below 0 an accuracy loss passes. ``f1_margin`` is the
    allowed macro-F1 regression: above 0 an F1 loss passes. ``dataset_tolerance`` is the allowed
    accuracy loss on one source: above its default (0.02, about 1.5 standard errors on the 684
    photos of photos/valid) a loss beyond noise passes. Negative allowances ask for a gain:
    stricter, not lower. A value that is not a finite number is refused (NaN would pass anything).
    """
    values = {"margin": cfg.margin, "f1_margin": cfg.f1_margin, "dataset_tolerance": cfg.dataset_tolerance}
    for key, value in values.items():
        if not math.isfinite(value):
            raise RegistryUsageError(f"gate {key} {value} is not a finite number (pass a number, e.g. 0)")
    tolerance = RegistryConfig.dataset_tolerance
    lowered = []
    if cfg.margin < 0:
        lowered.append(f"margin {cfg.margin:+.4f} < 0 lets an accuracy loss through")
    if cfg.f1_margin > 0:
        lowered.append(f"f1_margin {cfg.f1_margin:.4f} > 0 lets a macro-F1 loss through")
    if cfg.dataset_tolerance > tolerance:
        lowered.append(
            f"dataset_tolerance {cfg.dataset_tolerance:.4f} > {tolerance:.4f} lets a per-source "
            "accuracy loss beyond noise through"
        )
    return lowered


def check_gate(cfg: RegistryConfig, force: bool = False) -> str:
    """``""`` for a gate at or above "no regression"; for a lower one, what it lowers when
    ``force`` (recorded on the decision), else :class:`RegistryUsageError`."""
    lowered = lowered_bars(cfg)
    if lowered and not force:
        raise RegistryUsageError(
            f"the gate would be lowered below no regression: {'; '.join(lowered)} "
            "(use margins >= 0 and allowances within the defaults, or pass --force to gate with "
            "them anyway: the version records that it was forced)"
        )
    return "; ".join(lowered)


def _missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _require_model(c: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException as exc:
        if not _missing(exc):
            raise
        known = ", ".join(sorted(m.name for m in c.search_registered_models())) or "none"
        raise RegistryUsageError(
            f"no registered model {name!r} (registered: {known}; pass --name, or register a run "
            "first with `ferflow registry register RUN_ID`)"
        ) from exc


def _require_version(c: MlflowClient, name: str, version: str | None) -> str:
    """The version to gate: ``version`` if the registry has it, else the challenger."""
    from mlflow.exceptions import MlflowException

    _require_model(c, name)
    if version is None:
        challenger = _alias_version(c, name, CHALLENGER)
        if challenger is None:
            raise RegistryError(
                f"registered model {name!r} has no {CHALLENGER!r} alias; register a run first"
            )
        return str(challenger.version)
    if str(version).isdigit():
        try:
            return str(c.get_model_version(name, str(version)).version)
        except MlflowException as exc:
            if not _missing(exc):
                raise
    versions = sorted(int(v.version) for v in c.search_model_versions(f"name='{name}'"))
    raise RegistryUsageError(
        f"registered model {name!r} has no version {version!r} (its versions: "
        f"{', '.join(map(str, versions)) or 'none'}; pass one to --version, "
        f"or see `ferflow registry list --name {name}`)"
    )


def promote(
    eval_split: Split,
    classes: list[str],
    version: str | None = None,
    config: RegistryConfig | None = None,
    tracking_uri: str | None = None,
    label_sets: dict[str, list[str]] | None = None,
    *,
    evaluated_on: EvalSet | None = None,
    force: bool = False,
) -> GateDecision:
    """Run the gate on ``version`` (default: the challenger) against the current champion.

    A split of several source datasets is compared per source too (over ``label_sets``, see
    :func:`ferflow.evaluate.source_label_sets`): a regression beyond ``dataset_tolerance`` on
    any one source refuses the challenger, whatever it gains elsewhere. A gate below "no
    regression" (:func:`lowered_bars`) needs ``force``. The decision, with its margins and
    ``evaluated_on`` (dataset, data version, split), is recorded on the version (:func:`_record`);
    a promoted version loses its ``rolled_back`` tag."""
    cfg = config or RegistryConfig()
    forced = check_gate(cfg, force)
    c = client(tracking_uri)
    name = cfg.model_name
    version = _require_version(c, name, version)
    champion = _alias_version(c, name, CHAMPION)
    decision = GateDecision(False, "", version, str(champion.version) if champion else None)
    decision.time = datetime.now(UTC).isoformat(timespec="seconds")
    decision.margins = {k: getattr(cfg, k) for k in ("margin", "f1_margin", "dataset_tolerance")}
    decision.evaluated_on = asdict(evaluated_on or EvalSet()) | {"n": len(eval_split)}
    decision.forced = forced
    _judge(decision, champion, cfg, eval_split, classes, label_sets, tracking_uri)
    _record(c, name, decision)
    if decision.promoted:
        history = _history(c, name)
        c.set_registered_model_alias(name, CHAMPION, version)
        c.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, version]))
        if ROLLED_BACK_TAG in c.get_model_version(name, version).tags:
            c.delete_model_version_tag(name, version, ROLLED_BACK_TAG)
    return decision


def _judge(
    decision: GateDecision,
    champion: ModelVersion | None,
    cfg: RegistryConfig,
    eval_split: Split,
    classes: list[str],
    label_sets: dict[str, list[str]] | None,
    tracking_uri: str | None,
) -> None:
    """Infra-validate ``decision.version`` and compare it with ``champion``: fills ``decision``."""
    name, version = cfg.model_name, decision.version
    try:
        path = model_path(name, version, tracking_uri)
        decision.infra = infra_validate(path, eval_split, cfg.probe_image)
        if decision.infra["classes"] != list(classes):
            raise RegistryError(
                f"model classes {decision.infra['classes']} differ from the evaluation set's {classes}"
            )
        decision.challenger_metrics = _metrics(path, eval_split, classes, label_sets)
    except (RegistryError, ValueError) as exc:
        decision.reason = str(exc)
        return
    if champion is None:
        decision.promoted, decision.reason = True, "first model: no champion yet"
        return
    if str(champion.version) == version:
        decision.reason = "already champion"
        return
    decision.champion_metrics = _metrics(
        model_path(name, champion.version, tracking_uri), eval_split, classes, label_sets
    )
    refusal = _compare(decision.challenger_metrics, decision.champion_metrics, cfg)
    decision.promoted = refusal is None
    decision.reason = refusal or _gains(decision, champion.version)
    if decision.forced and decision.promoted:
        bar = replace(
            cfg,
            margin=max(cfg.margin, 0.0),
            f1_margin=min(cfg.f1_margin, 0.0),
            dataset_tolerance=min(cfg.dataset_tolerance, RegistryConfig.dataset_tolerance),
        )
        strict = _compare(decision.challenger_metrics, decision.champion_metrics, bar)
        if strict:
            decision.forced += f"; at no regression the gate refuses it: {strict}"


def _record(c: MlflowClient, name: str, decision: GateDecision) -> None:
    """Tag the decision on its version: ``gate.<n>`` (a JSON record, n = 1, 2, ...; never
    rewritten) and the ``gate.*`` tags of the latest decision, which replace the previous latest
    ones (a key the new decision lacks, such as another split's ``gate.photos.accuracy``, goes)."""
    version = decision.version
    tags = c.get_model_version(name, version).tags
    numbers = [int(m.group(1)) for key in tags if (m := DECISION_TAG.fullmatch(key))]
    if not numbers and f"{GATE}promoted" in tags:  # the latest decision of a gate without history
        legacy = {k.removeprefix(GATE): v for k, v in tags.items() if k.startswith(GATE)}
        c.set_model_version_tag(name, version, f"{GATE}1", _fit_json(legacy | {"legacy": True}))
        numbers = [1]
    decision.number = max(numbers, default=0) + 1
    record = {
        k: v for k, v in asdict(decision).items() if k not in ("version", "infra", "number") and v != ""
    }
    c.set_model_version_tag(name, version, f"{GATE}{decision.number}", _fit_json(record))
    latest = _latest_tags(decision)
    for key in tags:
        if key.startswith(GATE) and not DECISION_TAG.fullmatch(key) and key not in latest:
            c.delete_model_version_tag(name, version, key)
    for key, value in latest.items():
        c.set_model_version_tag(name, version, key, value)


def _latest_tags(d: GateDecision) -> dict[str, str]:
    """The ``gate.*`` tags of decision ``d``: ``registry list`` and the MLflow UI show these."""
    tags = {
        "decision": str(d.number),
        "time": d.time,
        "promoted": str(d.promoted).lower(),
        "reason": d.reason[:4000],
        "champion_before": d.champion_before or "none",
        "dataset": str(d.evaluated_on["dataset"])[:4000],
        "dataset_version": str(d.evaluated_on["version"]),
        "split": str(d.evaluated_on["split"]),
        "eval_n": str(d.evaluated_on["n"]),
        **{k: f"{v:.6f}" for k, v in d.margins.items()},
        **{k: f"{v:.6f}" for k, v in d.challenger_metrics.items()},
    }
    if d.forced:
        tags["forced"] = d.forced[:4000]
    return {f"{GATE}{k}": v for k, v in tags.items()}


def _fit_json(record: dict[str, Any]) -> str:
    """``record`` as JSON within a tag value's :data:`TAG_VALUE_MAX` characters: its reason is
    cut first, then its metrics go."""
    text = json.dumps(record, sort_keys=True, ensure_ascii=False)
    for key in ("reason", "forced"):
        if len(text) > TAG_VALUE_MAX and isinstance(record.get(key), str):
            keep = max(0, len(record[key]) - (len(text) - TAG_VALUE_MAX) - 3)
            record = {**record, key: record[key][:keep] + "..."}
            text = json.dumps(record, sort_keys=True, ensure_ascii=False)
    for key in ("champion_metrics", "challenger_metrics"):
        if len(text) > TAG_VALUE_MAX:
            record = {k: v for k, v in record.items() if k != key}
            text = json.dumps(record, sort_keys=True, ensure_ascii=False)
    return text


def decisions(
    version: str, config: RegistryConfig | None = None, tracking_uri: str | None = None
) -> list[dict[str, Any]]:
    """Every gate decision recorded on ``version``, oldest first (the ``gate.<n>`` records)."""
    cfg = config or RegistryConfig()
    c = client(tracking_uri)
    version = _require_version(c, cfg.model_name, str(version))
    tags = c.get_model_version(cfg.model_name, version).tags
    numbered = {int(m.group(1)): v for k, v in tags.items() if (m := DECISION_TAG.fullmatch(k))}
    return [{"number": n, **json.loads(numbered[n])} for n in sorted(numbered)]


def rollback(config: RegistryConfig | None = None, tracking_uri: str | None = None) -> tuple[str, str]:
    """Move ``champion`` back to the previous champion; returns (from_version, to_version)."""
    cfg = config or RegistryConfig()
    c = client(tracking_uri)
    name = cfg.model_name
    _require_model(c, name)
    history = _history(c, name)
    if len(history) < 2:
        raise RegistryError(f"{name}: no previous champion to roll back to (history {history})")
    current, previous = history[-1], history[-2]
    c.set_registered_model_alias(name, CHAMPION, previous)
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))
    c.set_model_version_tag(name, current, ROLLED_BACK_TAG, "true")
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
