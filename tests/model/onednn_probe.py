"""Subprocess side of ``test_onednn.py``: runs in a fresh interpreter so that a heap corruption
kills only this process and the test sees it as a non-zero exit code.

    python tests/model/onednn_probe.py fit MODEL:WIDTH:DEPTHS [...]
    python tests/model/onednn_probe.py grads MODEL:WIDTH:DEPTHS OUT.npz [IN.npz]

``fit`` trains each configuration for one epoch on random crops (the shapes at which
oneDNN's strided 1x1 weight-gradient kernel corrupted the heap on AVX-512 CPUs).
``grads`` writes the loss gradients of one fixed batch, starting from the weights in IN.npz
when given (else it writes its seeded initial weights too), so two processes with oneDNN on
and off can be compared.
"""

from __future__ import annotations

import sys

import numpy as np


def parse(spec: str) -> tuple[str, int, tuple[int, ...]]:
    name, width, depths = spec.split(":")
    return name, int(width), tuple(int(d) for d in depths.split(","))


def batch(n: int = 32, num_classes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((n, 48, 48, 1), dtype=np.float32)
    y = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, n)]
    return x, y


def fit(specs: list[str]) -> None:
    import keras

    from ferflow.models import build_model

    x, y = batch(64)
    for spec in specs:
        print(f"fitting {spec}", file=sys.stderr, flush=True)  # names the culprit if it dies
        name, width, depths = parse(spec)
        model = build_model(name, 8, width=width, depths=depths)
        model.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)


def grads(spec: str, out: str, weights_in: str | None) -> None:
    import keras
    import tensorflow as tf

    from ferflow.models import build_model

    keras.utils.set_random_seed(0)
    name, width, depths = parse(spec)
    model = build_model(name, 8, width=width, depths=depths, dropout=0.0)
    if weights_in:
        saved = np.load(weights_in)
        model.set_weights([saved[f"w{i}"] for i in range(len(model.weights))])
    x, y = batch()
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True)) + sum(model.losses)
    g = tape.gradient(loss, model.trainable_weights)
    arrays = {f"g{i}": np.asarray(t) for i, t in enumerate(g)}
    if not weights_in:
        arrays.update({f"w{i}": np.asarray(w) for i, w in enumerate(model.weights)})
    np.savez(out, loss=np.asarray(loss), **arrays)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "fit":
        fit(args)
    else:
        grads(args[0], args[1], args[2] if len(args) > 2 else None)
