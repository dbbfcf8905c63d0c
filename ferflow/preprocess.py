"""The one definition of what a model input is, shared by training, export and inference.

Deliberately NumPy-only: :mod:`ferflow.predict` imports it and must not pull in TensorFlow.

A model input is a float32 batch ``(N, 48, 48, 1)`` of grayscale faces scaled to ``[0, 1]``.
Mean/std normalisation happens inside the model (its first layer), so every exported form
takes the same simple input and nothing downstream has to know the statistics.
"""

from __future__ import annotations

import numpy as np

from ferflow.config import IMAGE_SIZE

INPUT_SCALE = 1.0 / 255.0
"""uint8 pixel value → model input."""

INPUT_MEAN = 0.5
INPUT_STD = 0.25
"""Normalisation applied by the model's first layer: ``(x - mean) / std``."""

INPUT_NAME = "image"
INPUT_SHAPE: tuple[int, int, int] = (IMAGE_SIZE, IMAGE_SIZE, 1)


def to_model_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 (or float 0..255) faces ``(N, 48, 48)`` / ``(N, 48, 48, 1)`` → float32 model input.

    A single face ``(48, 48)`` is accepted and returned as a batch of one.
    """
    x = np.asarray(pixels)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != INPUT_SHAPE:
        raise ValueError(
            f"expected faces of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}[, 1]), got {np.shape(pixels)}"
        )
    return x.astype(np.float32) * np.float32(INPUT_SCALE)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
