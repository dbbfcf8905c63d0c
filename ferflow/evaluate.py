"""Evaluation stage: score a model on a dataset under the FERPlus majority protocol.

Works from the exported ONNX model (:class:`ferflow.predict.FerClassifier`), so it needs
no TensorFlow and scores exactly what is served. Reports accuracy, macro-F1, per-class
precision/recall/F1, the confusion matrix and the accuracy under synthetic occlusion (one
random 16×16 patch of uniform noise per face, seeded) to compare with RAN's occlusion study.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ferflow.canonical import Split
from ferflow.model_uri import resolve
from ferflow.preprocess import to_model_input

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


def evaluate_split(
    predictor: Predictor,
    split: Split,
    classes: Sequence[str],
    *,
    occlusion: bool = True,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Metrics of ``predictor`` on ``split`` (majority labels); JSON-serialisable dict."""
    classes = list(classes)
    if list(predictor.classes) != classes:
        raise ValueError(
            f"model classes {predictor.classes} differ from dataset classes {classes}; "
            "ingest the dataset with the model's class set"
        )
    y_true = split.label.astype(int)
    pred = predictor.logits(to_model_input(split.pixels), batch_size).argmax(axis=1)
    out = scores(y_true, pred, classes)
    out["classes"] = classes
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
