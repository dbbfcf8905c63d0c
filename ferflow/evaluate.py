"""Evaluation stage: score a model on a dataset under the FERPlus majority protocol.

Works from the exported ONNX model (:class:`ferflow.predict.FerClassifier`), so it needs
no TensorFlow and scores exactly what is served. Reports accuracy, macro-F1, per-class
precision/recall/F1, the confusion matrix and the accuracy under synthetic occlusion (one
random 16×16 patch of uniform noise per face, seeded) to compare with RAN's occlusion study.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ferflow.canonical import Split
from ferflow.model_uri import resolve
from ferflow.preprocess import to_model_input
from ferflow.table import NO_FACE

OCCLUSION_SIZE = 16


class Predictor(Protocol):
    classes: list[str]

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray: ...


def occlude(pixels: np.ndarray, size: int = OCCLUSION_SIZE, seed: int = 0) -> np.ndarray:
    """Copy of uint8 faces ``(N, H, W)`` each with one random ``size``² patch of noise."""
    rng = np.random.default_rng(seed)
    out = np.array(pixels, copy=True)
    n, h, w = out.shape[:3]
    tops = rng.integers(0, h - size + 1, n)
    lefts = rng.integers(0, w - size + 1, n)
    noise = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    for i in range(n):
        out[i, tops[i] : tops[i] + size, lefts[i] : lefts[i] + size] = noise[i]
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true.astype(int), y_pred.astype(int)), 1)
    return cm


def per_class_report(cm: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        c: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, c in enumerate(classes)
    }


def scores(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    cm = confusion_matrix(y_true, y_pred, len(classes))
    report = per_class_report(cm, classes)
    present = [c for c in classes if report[c]["support"] > 0]
    return {
        "n": len(y_true),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(np.mean([report[c]["f1"] for c in present])) if present else 0.0,
        "per_class_recall": {c: report[c]["recall"] for c in classes},
        "per_class": report,
        "confusion_matrix": cm.tolist(),
    }


def subset_scores(
    logits: np.ndarray, y_true: np.ndarray, classes: Sequence[str], label_set: Sequence[str] | None = None
) -> dict[str, Any]:
    """Scores of a dataset whose label set is a subset of the model's ``classes``.

    The protocol: the prediction is the best of the dataset's classes (``label_set``; default:
    the classes its rows carry), so a model is not marked wrong for a class the dataset cannot
    hold. ``accuracy_all_classes`` keeps the plain argmax over every class beside it."""
    classes = list(classes)
    label_set = [c for c in classes if c in set(label_set)] if label_set else None
    label_set = label_set or [classes[i] for i in sorted(set(y_true.astype(int).tolist()))]
    keep = np.array([classes.index(c) for c in label_set])
    pred = keep[logits[:, keep].argmax(axis=1)] if len(keep) else logits.argmax(axis=1)
    out = scores(y_true, pred, classes)
    out["accuracy_all_classes"] = float((logits.argmax(axis=1) == y_true).mean()) if len(y_true) else 0.0
    present = [c for c in label_set if out["per_class"][c]["support"] > 0]
    out["macro_f1"] = float(np.mean([out["per_class"][c]["f1"] for c in present])) if present else 0.0
    out["label_set"] = label_set
    return out


def source_label_sets(meta: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each source dataset's classes, as its ingest recorded them in ``dataset.json``."""
    return {name: list(info.get("classes") or []) for name, info in (meta.get("sources") or {}).items()}


def adjust_logits(
    logits: np.ndarray, train_prior: Sequence[float], target_prior: Sequence[float]
) -> np.ndarray:
    """Logit adjustment (Menon et al., 2021): move a model trained under ``train_prior`` to a
    test set whose classes follow ``target_prior``: ``logits + log(target) - log(train)``."""
    train, target = np.asarray(train_prior, np.float64), np.asarray(target_prior, np.float64)
    train, target = train / train.sum(), target / target.sum()
    safe = np.log(np.clip(target, 1e-12, None)) - np.log(np.clip(train, 1e-12, None))
    # a class the model never trained on keeps its logit (no boost), unless the target excludes it
    shift = np.where(train > 0, safe, np.where(target > 0, 0.0, np.log(1e-12)))
    return logits + shift.astype(logits.dtype)


def evaluate_split(
    predictor: Predictor,
    split: Split,
    classes: Sequence[str],
    *,
    occlusion: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    label_sets: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Metrics of ``predictor`` on ``split`` (majority labels); JSON-serialisable dict. A split
    of several source datasets is also scored per source, over ``label_sets[source]`` (default:
    the classes its rows carry; :func:`source_label_sets` reads them from a dataset's meta)."""
    classes = list(classes)
    if list(predictor.classes) != classes:
        raise ValueError(
            f"model classes {predictor.classes} differ from dataset classes {classes}; "
            "ingest the dataset with the model's class set"
        )
    y_true = split.label.astype(int)
    logits = predictor.logits(to_model_input(split.pixels), batch_size)
    pred = logits.argmax(axis=1)
    out = scores(y_true, pred, classes)
    out["classes"] = classes
    if len(split.datasets()) > 1:  # one figure per source dataset, each over its own label set
        out["datasets"] = {
            name: subset_scores(
                logits[split.dataset == name],
                y_true[split.dataset == name],
                classes,
                (label_sets or {}).get(name),
            )
            for name in split.datasets()
        }
    if occlusion:
        occ = occlude(split.pixels, OCCLUSION_SIZE, seed)
        occ_pred = predictor.logits(to_model_input(occ), batch_size).argmax(axis=1)
        out["occluded_accuracy"] = float((occ_pred == y_true).mean()) if len(y_true) else 0.0
        out["occlusion"] = {"patch": OCCLUSION_SIZE, "seed": seed}
    return out


def resolve_model(model: str | Path | None) -> Path:
    """A model path, a folder holding ``model.onnx``, or an MLflow URI → ONNX file path."""
    return resolve(model).path


def evaluate(
    model: str | Path | None,
    splits: dict[str, Split],
    classes: Sequence[str],
    split: str | None = None,
    seed: int = 0,
    tta: str | None = None,
) -> dict[str, Any]:
    """Score ``model`` on ``split`` (default: the most held-out split present).

    ``tta``: test-time augmentation; ``None`` follows the model's metadata."""
    from ferflow.config import SPLIT_ORDER
    from ferflow.predict import FerClassifier

    if split is None:
        split = [s for s in SPLIT_ORDER if s in splits][-1]
    if split not in splits:
        raise KeyError(f"dataset has no split {split!r}; it has {sorted(splits)}")
    path = resolve_model(model)
    predictor = FerClassifier(path, tta=tta)
    out = evaluate_split(predictor, splits[split], classes, seed=seed)
    out["tta"] = predictor.tta.value
    out["split"] = split
    out["model"] = str(path)
    return out


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Cross-dataset evaluation: several datasets (and their sources) in one call


class EvalDataError(ValueError):
    """A dataset given to evaluate cannot be scored; the message names it and the fix."""


def load_eval_data(
    path: str | Path, classes: Sequence[str], progress: bool = True, split: str | None = None
) -> tuple[dict[str, Split], dict]:
    """(splits, meta) of a canonical dataset, or of a raw layout read in memory: FERPlus, a FER2013
    CSV, or a folder tree of photos (through face detection, as served; photos without a face
    are counted in ``meta["no_face"]``, not scored)."""
    from ferflow.canonical import open_dataset
    from ferflow.config import CLASS_SETS, GateConfig, IngestConfig, LabelScheme, LeakagePolicy, SourceFormat
    from ferflow.data import IngestError, infer_format, ingest_to_memory
    from ferflow.validate import GateFailed

    path = Path(path)
    if (path / "dataset.json").is_file():
        ds = open_dataset(path)
        return {s: ds.load(s) for s in ds.splits}, ds.meta
    class_set = next((n for n, c in CLASS_SETS.items() if list(c.classes) == list(classes)), None)
    if class_set is None:
        raise EvalDataError(
            f"model classes {list(classes)} match no class set; ingest {path} with them first"
        )
    gate = GateConfig(0, leakage=LeakagePolicy.DROP, drop_bad_votes=True, drop_no_face=True)
    gate = replace(gate, require_every_class=False, max_dropped_fraction=1.0)
    try:
        fmt = infer_format(path)
        src, split_name = _scored_folder(path, split) if fmt is SourceFormat.FOLDERS else (path, None)
        config = IngestConfig(fmt, LabelScheme.MAJORITY, class_set, gate)
        result = ingest_to_memory(src, config, progress=progress, name=path.name)
    except GateFailed as exc:
        raise EvalDataError(f"{path}: {exc.report.one_line()}") from exc
    except IngestError as exc:
        raise EvalDataError(f"{path}: {exc}".splitlines()[0]) from exc
    if not result.splits:
        no_face = len(result.report.dropped.get(f"{NO_FACE} (photo not used)", []))
        raise EvalDataError(f"{path}: no image to score ({no_face} photos without a detectable face)")
    if split_name is not None:  # the one split folder read, under its own name
        result.splits = {split_name: next(iter(result.splits.values()))}
    meta = dict(result.meta)
    meta["no_face"] = len(result.report.dropped.get(f"{NO_FACE} (photo not used)", []))
    return result.splits, meta


def _scored_folder(path: Path, split: str | None) -> tuple[Path, str | None]:
    """A photo tree's folder to read: ``split``'s, else the most held-out one (only its photos
    go through detection)."""
    from ferflow.data import folder_splits
    from ferflow.table import split_rank

    found = [(d, s) for d, s in folder_splits(path) if d != path]
    if not found:
        return path, None
    if split is not None:
        found = [(d, s) for d, s in found if s == split] or found
    folder, name = max(found, key=lambda item: split_rank(item[1]))
    return folder, name


def _train_prior(predictor: Predictor) -> list[float]:
    prior = getattr(predictor, "metadata", {}).get("train_prior")
    if not prior:
        raise EvalDataError(
            "the model's metadata has no train_prior (exported before it was recorded); "
            "re-export it with `ferflow train`, or evaluate without --prior"
        )
    return json.loads(prior)


def _target_prior(prior: str, label_set: list[str], classes: list[str]) -> list[float]:
    """``uniform`` over the dataset's label set, or ``CLASS=P,...`` (other classes get 0)."""
    if prior == "uniform":
        return [1.0 if c in label_set else 0.0 for c in classes]
    stated: dict[str, float] = {}
    for item in prior.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in classes:
            raise EvalDataError(
                f"--prior {prior!r}: {name.strip()!r} is not a model class ({', '.join(classes)})"
            )
        try:
            stated[name.strip()] = float(value)
        except ValueError:
            raise EvalDataError(f"--prior {prior!r}: {value!r} is not a number (CLASS=P,...)") from None
    return [stated.get(c, 0.0) for c in classes]


def score_dataset(
    predictor: Predictor, split: Split, meta: dict, prior: str | None = None, batch_size: int = 256
) -> dict[str, dict[str, Any]]:
    """Scores of each source dataset in ``split``, over the source's own label set."""
    classes = list(predictor.classes)
    out = {}
    names = split.datasets() or [Path(str(meta.get("source", "data"))).name]
    for name in names:
        part = split.of_dataset(name) if split.dataset is not None else split
        info = (meta.get("sources") or {}).get(name, {})
        logits = predictor.logits(to_model_input(part.pixels), batch_size)
        label_set = info.get("classes") or [classes[i] for i in sorted(set(part.label.astype(int).tolist()))]
        if prior:
            logits = adjust_logits(logits, _train_prior(predictor), _target_prior(prior, label_set, classes))
        result = subset_scores(logits, part.label.astype(int), classes, label_set)
        fmt = info.get("source_format", meta.get("source_format"))
        result["route"] = "face detection" if fmt == "folders" else "face crops"
        result["prior"] = prior or "as trained"
        out[name] = result
    return out


def evaluate_datasets(
    model: str | Path | None,
    datasets: Sequence[str | Path],
    *,
    split: str | None = None,
    prior: str | None = None,
    robustness: bool = False,
    tta: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score one model on every dataset (each source of a multi-source dataset apart) and,
    with ``robustness``, run the robustness suite on the first dataset's first source."""
    from ferflow import robustness as rb
    from ferflow.config import SPLIT_ORDER
    from ferflow.predict import FerClassifier

    resolved = resolve(model)
    predictor = FerClassifier(resolved.path, tta=tta)
    out: dict[str, Any] = {"model": resolved.uri or str(resolved.path), "version": resolved.version}
    out["tta"], out["datasets"] = predictor.tta.value, {}
    first: Split | None = None
    for path in datasets:
        splits, meta = load_eval_data(path, predictor.classes, progress, split)
        if list(meta["classes"]) != list(predictor.classes):
            raise EvalDataError(
                f"{path}: classes {meta['classes']} differ from the model's {predictor.classes}; "
                "ingest it with the model's class set"
            )
        chosen = split or [s for s in SPLIT_ORDER if s in splits][-1]
        if chosen not in splits:
            raise EvalDataError(f"{path}: no split {chosen!r}; it has {sorted(splits)}")
        for name, result in score_dataset(predictor, splits[chosen], meta, prior).items():
            key = name if name not in out["datasets"] else f"{path}:{name}"  # a source seen twice
            out["datasets"][key] = {
                **result,
                "path": str(path),
                "split": chosen,
                "no_face": meta.get("no_face", 0),
            }
        if first is None:
            first = splits[chosen].first_source()[1]
    if robustness and first is not None:

        def predict(faces: np.ndarray) -> np.ndarray:
            return predictor.logits(to_model_input(faces)).argmax(axis=1)

        out["robustness"] = rb.run_suite(
            predict, first.pixels, first.label.astype(int), seed=seed, progress=progress
        )
        out["robustness"]["dataset"] = next(iter(out["datasets"]))
    return out


def card_section(result: dict[str, Any]) -> str:
    """Markdown of a cross-dataset (and robustness) result, for model cards and reports."""
    from ferflow import robustness as rb

    lines = [
        "| dataset | route | n | accuracy (its classes) | accuracy (all classes) | macro-F1 | classes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result.get("datasets", {}).items():
        lines.append(
            f"| {name} | {r.get('route', '')} | {r['n']} | {r['accuracy']:.2%} "
            f"| {r['accuracy_all_classes']:.2%} | {r['macro_f1']:.3f} | {len(r['label_set'])} |"
        )
    if "robustness" in result:
        lines += [
            "",
            f"Robustness ({result['robustness'].get('dataset', 'test split')}):",
            "",
            rb.table(result["robustness"]),
        ]
    return "\n".join(lines)


def write_report(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``evaluation.json``, ``evaluation.md`` and, with a robustness suite, ``robustness.png``."""
    from ferflow import robustness as rb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "evaluation.json", out_dir / "evaluation.md"]
    files[0].write_text(json.dumps(result, indent=1, default=str))
    files[1].write_text(f"# Evaluation of {result['model']}\n\n{card_section(result)}\n")
    if "robustness" in result:
        title = f"Robustness of {Path(str(result['model'])).name} on {result['robustness']['dataset']}"
        files.append(rb.plot(result["robustness"], out_dir / "robustness.png", title=title))
    return files


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """MLflow metric names: ``eval.<dataset>.accuracy`` ..., ``robustness.<shift>.<severity>``."""
    metrics: dict[str, float] = {}
    for name, r in result.get("datasets", {}).items():
        key = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        for field_name in ("accuracy", "accuracy_all_classes", "macro_f1"):
            metrics[f"eval.{key}.{field_name}"] = float(r[field_name])
    suite = result.get("robustness")
    if suite:
        metrics["robustness.clean"] = suite["clean_accuracy"]
        metrics["robustness.mean"] = suite["mean_accuracy"]
        for row in suite["rows"]:
            metrics[f"robustness.{row['shift']}.{row['severity']}"] = row["accuracy"]
    return metrics


def track(result: dict[str, Any], files: Sequence[Path], run_id: str | None = None) -> str:
    """Log the result to MLflow: into ``run_id`` (a training run) or a new run
    ``evaluate-<model>-<UTC time>`` of the ``ferflow-evaluate`` experiment. Returns the run id."""
    import mlflow

    from ferflow.config import Paths
    from ferflow.tracking import run_name, use_experiment

    mlflow.set_tracking_uri(Paths().mlflow_uri)
    name = None
    if run_id is None:
        use_experiment("ferflow-evaluate")
        model = Path(str(result["model"]))  # models:/ferflow@champion, or a file (its folder names it)
        label = model.parent.name if model.stem == "model" else model.stem
        version = result.get("version")
        name = run_name("evaluate", label, f"v{version}" if version else None)
    with mlflow.start_run(run_id=run_id, run_name=name) as run:
        if run_id is None:
            mlflow.set_tags({"model": str(result["model"]), "model_version": str(result.get("version", ""))})
        mlflow.log_metrics(flat_metrics(result))
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        return run.info.run_id


CARD_BEGIN, CARD_END = "<!-- ferflow evaluate -->", "<!-- /ferflow evaluate -->"


def update_card(card: str | Path, result: dict[str, Any], command: str) -> Path:
    """Write the result into a model card: its ``ferflow evaluate`` section is replaced (or,
    the first time, appended), the rest of the card is kept."""
    card = Path(card)
    text = card.read_text() if card.is_file() else ""
    section = (
        f"{CARD_BEGIN}\n## Cross-dataset evaluation and robustness\n\n"
        f"`{command}`\n\n{card_section(result)}\n{CARD_END}"
    )
    if CARD_BEGIN in text and CARD_END in text.split(CARD_BEGIN, 1)[1]:
        head, rest = text.split(CARD_BEGIN, 1)
        text = head + section + rest.split(CARD_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = card.with_suffix(card.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(card)  # a reader never sees half a card
    return card
