"""Robustness suite: accuracy on a test split under controlled shifts, each at three severities.

Every shift acts on the 48x48 grayscale face crops the model reads, seeded, so two models (or
two runs) see the very same perturbed images:

- framing: ``zoom_in`` (a tighter crop), ``zoom_out`` (a looser one, borders repeated),
  ``shift`` (the crop moved diagonally);
- ``rotation``; ``blur`` (Gaussian); ``jpeg`` (re-encoded at a low quality);
- ``brightness`` (darker), ``contrast`` (flatter), ``gamma`` (> 1, darker mid-tones);
- ``noise`` (Gaussian, in grey levels); ``downscale`` (a small face in video: down to a side of
  s pixels and back up);
- ``occlude_eyes`` and ``occlude_mouth``: a grey band over the eye or mouth rows of the FER
  framing, of growing height.

``ferflow evaluate --robustness`` prints the table; ``--out`` adds it to ``evaluation.json``
and draws ``robustness.png``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ferflow.config import IMAGE_SIZE

Shift = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
CENTRE = (IMAGE_SIZE - 1) / 2
EYE_ROW, MOUTH_ROW = 19, 37  # band centres in FER2013's framing (48x48 crops)


def _affine(faces: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    size = (IMAGE_SIZE, IMAGE_SIZE)
    return np.stack(
        [
            cv2.warpAffine(f, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            for f in faces
        ]
    )


def _zoom(faces: np.ndarray, scale: float, _rng=None) -> np.ndarray:
    return _affine(faces, cv2.getRotationMatrix2D((CENTRE, CENTRE), 0.0, scale))


def _shift(faces: np.ndarray, pixels: float, _rng=None) -> np.ndarray:
    return _affine(faces, np.float32([[1, 0, pixels], [0, 1, pixels]]))


def _rotate(faces: np.ndarray, degrees: float, _rng=None) -> np.ndarray:
    return _affine(faces, cv2.getRotationMatrix2D((CENTRE, CENTRE), degrees, 1.0))


def _blur(faces: np.ndarray, sigma: float, _rng=None) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in faces])


def _jpeg(faces: np.ndarray, quality: float, _rng=None) -> np.ndarray:
    def once(face: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="JPEG", quality=int(quality))
        return np.asarray(Image.open(buffer).convert("L"))

    return np.stack([once(f) for f in faces])


def _levels(faces: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.clip(fn(faces.astype(np.float32)), 0, 255).round().astype(np.uint8)


def _brightness(faces: np.ndarray, factor: float, _rng=None) -> np.ndarray:
    return _levels(faces, lambda x: x * factor)


def _contrast(faces: np.ndarray, factor: float, _rng=None) -> np.ndarray:
    return _levels(
        faces,
        lambda x: (x - x.mean(axis=(1, 2), keepdims=True)) * factor + x.mean(axis=(1, 2), keepdims=True),
    )


def _gamma(faces: np.ndarray, gamma: float, _rng=None) -> np.ndarray:
    return _levels(faces, lambda x: 255.0 * (x / 255.0) ** gamma)


def _noise(faces: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return _levels(faces, lambda x: x + rng.normal(0.0, sigma, x.shape))


def _downscale(faces: np.ndarray, side: float, _rng=None) -> np.ndarray:
    small = (int(side), int(side))
    size = (IMAGE_SIZE, IMAGE_SIZE)
    return np.stack(
        [
            cv2.resize(
                cv2.resize(f, small, interpolation=cv2.INTER_AREA), size, interpolation=cv2.INTER_LINEAR
            )
            for f in faces
        ]
    )


def _band(row: int) -> Shift:
    def occlude(faces: np.ndarray, height: float, _rng=None) -> np.ndarray:
        out = faces.copy()
        top = max(0, row - int(height) // 2)
        out[:, top : top + int(height), :] = 128
        return out

    return occlude


# name -> (function, parameter name, its value at severities 1, 2, 3)
SHIFTS: dict[str, tuple[Shift, str, tuple[float, float, float]]] = {
    "zoom_in": (_zoom, "scale", (1.1, 1.25, 1.4)),
    "zoom_out": (_zoom, "scale", (0.9, 0.8, 0.7)),
    "shift": (_shift, "pixels", (2, 4, 6)),
    "rotation": (_rotate, "degrees", (10, 20, 30)),
    "blur": (_blur, "sigma", (0.75, 1.25, 2.0)),
    "jpeg": (_jpeg, "quality", (30, 15, 5)),
    "brightness": (_brightness, "factor", (0.7, 0.5, 0.3)),
    "contrast": (_contrast, "factor", (0.6, 0.4, 0.2)),
    "gamma": (_gamma, "gamma", (1.5, 2.0, 3.0)),
    "noise": (_noise, "sigma", (8, 16, 32)),
    "downscale": (_downscale, "side", (24, 16, 12)),
    "occlude_eyes": (_band(EYE_ROW), "rows", (4, 8, 12)),
    "occlude_mouth": (_band(MOUTH_ROW), "rows", (4, 8, 12)),
}


def perturb(faces: np.ndarray, shift: str, severity: int, seed: int = 0) -> np.ndarray:
    """``faces`` (uint8 ``(N, 48, 48)``) under ``shift`` at ``severity`` 1-3."""
    fn, _, values = SHIFTS[shift]
    if severity not in (1, 2, 3):
        raise ValueError(f"severity {severity}: the suite has severities 1, 2 and 3")
    return fn(np.ascontiguousarray(faces), values[severity - 1], np.random.default_rng(seed))


def run_suite(
    predict: Callable[[np.ndarray], np.ndarray],
    faces: np.ndarray,
    labels: np.ndarray,
    shifts: Sequence[str] = tuple(SHIFTS),
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of ``predict`` (faces -> predicted class indices) clean and under every shift."""
    from tqdm import tqdm

    clean = float((predict(faces) == labels).mean())
    rows = []
    cells = [(s, level) for s in shifts for level in (1, 2, 3)]
    for shift, level in tqdm(cells, desc="robustness", unit="shift", disable=not progress):
        accuracy = float((predict(perturb(faces, shift, level, seed)) == labels).mean())
        _, param, values = SHIFTS[shift]
        rows.append(
            {
                "shift": shift,
                "severity": level,
                param: values[level - 1],
                "accuracy": accuracy,
                "drop": clean - accuracy,
            }
        )
    worst = min(rows, key=lambda r: r["accuracy"]) if rows else None
    mean = float(np.mean([r["accuracy"] for r in rows])) if rows else clean
    return {
        "n": len(labels),
        "seed": seed,
        "clean_accuracy": clean,
        "mean_accuracy": mean,
        "worst": worst,
        "rows": rows,
    }


def table(suite: dict[str, Any]) -> str:
    """The suite as a Markdown table: one row per shift, accuracy at severities 1, 2, 3."""
    lines = [
        f"clean accuracy {suite['clean_accuracy']:.2%} on {suite['n']} faces; "
        f"mean under shift {suite['mean_accuracy']:.2%}",
        "",
        "| shift | parameter | severity 1 | severity 2 | severity 3 |",
        "|---|---|---|---|---|",
    ]
    for shift in dict.fromkeys(r["shift"] for r in suite["rows"]):
        rows = [r for r in suite["rows"] if r["shift"] == shift]
        _, param, values = SHIFTS[shift]
        cells = " | ".join(f"{r['accuracy']:.1%}" for r in rows)
        lines.append(f"| {shift} | {param} {', '.join(f'{v:g}' for v in values)} | {cells} |")
    return "\n".join(lines)


def plot(suite: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Accuracy against severity, one line per shift, the clean accuracy dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    shifts = list(dict.fromkeys(r["shift"] for r in suite["rows"]))
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(shifts), 1)))  # 13 lines: no repeated colour
    for k, shift in enumerate(shifts):
        rows = [r for r in suite["rows"] if r["shift"] == shift]
        severities = [0, *(r["severity"] for r in rows)]
        accuracies = [suite["clean_accuracy"], *(r["accuracy"] for r in rows)]
        style = "-" if k % 2 == 0 else "--"
        ax.plot(severities, accuracies, style, marker="os^D"[k % 4], color=colours[k], label=shift)
    ax.axhline(suite["clean_accuracy"], color="black", linestyle="--", linewidth=1)
    ax.set_xticks([0, 1, 2, 3], ["clean", "1", "2", "3"])
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Accuracy under controlled shifts")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
