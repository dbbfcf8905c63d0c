"""Time one augmented batch per recipe (augmentation alone, no model).

flock -x /tmp/ferflow-cpu.lock .venv/bin/python bench/augment_cost.py reference robust
"""

from __future__ import annotations

import sys
import time

import numpy as np
import tensorflow as tf

from ferflow.augment import augment_batch
from ferflow.recipes import load_recipe

CALLS = 200


def main(recipes: list[str]) -> None:
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((64, 48, 48, 1), dtype=np.float32))
    y = tf.constant(np.eye(8, dtype=np.float32)[np.arange(64) % 8])
    for name in recipes:
        cfg = load_recipe(name).augment
        step = tf.function(lambda seed, cfg=cfg: augment_batch(x, y, cfg, seed)[0])
        for i in range(5):  # trace and warm up
            step(tf.constant([1, i]))
        start = time.perf_counter()
        for i in range(CALLS):
            step(tf.constant([1, i])).numpy()
        print(f"{name}: {1000 * (time.perf_counter() - start) / CALLS:.2f} ms per batch of 64")


if __name__ == "__main__":
    main(sys.argv[1:] or ["reference", "robust"])
