"""The `fer` package's emotion model, timed and scored the way bench/inference.py times ours.

Runs in a separate venv that holds `fer` (it needs TensorFlow and torch, which ferflow's
serving path must not import; fer 25.10 also needs ``setuptools<81`` for ``pkg_resources``)::

    /path/to/fer-venv/bin/python bench/fer_peer.py --dataset artifacts/canonical --seconds 8

Prints one JSON line: crops/s through fer's own classifier call (``FER._classify_emotions``,
its default quantised TFLite model, 64x64 input) on batches of 64, single-crop latency, and
accuracy on the dataset's ``valid`` split under the majority protocol. fer's 7 FER2013 classes
map onto the FERPlus names; it never predicts ``contempt``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

FER_TO_FERPLUS = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "sad": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True, help="ferflow canonical dataset folder")
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()

    import cv2
    from fer.fer import FER

    meta = json.loads((args.dataset / "dataset.json").read_text())
    classes: list[str] = list(meta["classes"])
    with np.load(args.dataset / "valid.npz", allow_pickle=False) as z:
        pixels, labels = z["pixels"], z["label"].astype(int)

    fer = FER()  # default: the quantised TFLite model shipped in the wheel
    labels_fer = FER._get_labels()
    to_ours = np.array([classes.index(FER_TO_FERPLUS[labels_fer[i]]) for i in range(len(labels_fer))])

    def prepare(faces: np.ndarray) -> np.ndarray:  # what detect_emotions does to each face crop
        resized = np.stack([cv2.resize(f, (64, 64)) for f in faces]).astype(np.float32)
        return (resized / 255.0 - 0.5) * 2.0

    probs = np.concatenate(
        [fer._classify_emotions(prepare(pixels[i : i + 256])) for i in range(0, len(pixels), 256)]
    )
    accuracy = float((to_ours[probs.argmax(1)] == labels).mean())

    x64 = prepare(pixels[:64])
    for _ in range(3):
        fer._classify_emotions(x64)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        fer._classify_emotions(x64)
        n += 64
    cps = n / (time.perf_counter() - t0)
    lat = []
    t_end = time.perf_counter() + args.seconds / 2
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        fer._classify_emotions(x64[:1])
        lat.append(time.perf_counter() - t)
    lat_ms = np.array(lat) * 1000
    print(
        json.dumps(
            {
                "model": "fer (mini-Xception, quantised TFLite)",
                "n": len(labels),
                "accuracy": round(accuracy, 4),
                "batch64_crops_s": round(cps, 1),
                "latency_ms_p50": round(float(np.median(lat_ms)), 3),
                "latency_ms_p95": round(float(np.percentile(lat_ms, 95)), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
