"""Does the augmenting input pipeline keep up with training? (target: >= 95 % of compute-only)

Alternates short rounds of training steps of one compiled model (``model.train_function``) on:
- compute-only: one pre-made batch repeated (no decoding, no augmentation),
- full: ``ferflow.train.make_train_dataset`` (shuffle, uint8→float, label drawing,
  seeded affine warp, colour jitter, random erasing) on the real training split.
and reports steps/s of both and their ratio. Usage::

    .venv/bin/python bench/input_pipeline.py --dataset artifacts/canonical --seconds 40
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="artifacts/canonical")
    ap.add_argument("--model", default=None, help="default: TrainConfig().model")
    ap.add_argument("--seconds", type=float, default=80.0, help="timed seconds, both variants")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds per variant")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--mixup", type=float, default=0.2, help="mixup alpha for the full pipeline")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from ferflow.config import Precision, TrainConfig
    from ferflow.train import configure_device, make_train_dataset, model_kwargs, scheme_targets

    cfg = TrainConfig()
    cfg = dataclasses.replace(
        cfg,
        model=args.model or cfg.model,
        precision=Precision(args.precision),
        augment=dataclasses.replace(cfg.augment, mixup_alpha=args.mixup),
    )
    device = configure_device(cfg.precision)
    import keras
    import numpy as np
    import tensorflow as tf

    from ferflow.canonical import open_dataset
    from ferflow.models import build_model
    from ferflow.train import make_loss

    ds = open_dataset(args.dataset)
    split = ds.load("train")
    targets = scheme_targets(split, ds.classes, ds.meta.get("class_set"), cfg.label_scheme)
    weights = np.ones(len(split), np.float32)
    full = make_train_dataset(split.pixels, targets, weights, cfg)
    x, y, w = next(iter(full))
    compute_only = tf.data.Dataset.from_tensors((x, y, w)).repeat()

    # Cost of producing one augmented batch alone (no training running beside it)
    it = iter(full)
    next(it)
    t0 = time.perf_counter()
    for _ in range(50):
        next(it)
    pipe_ms = (time.perf_counter() - t0) / 50 * 1000

    # One model, two persistent iterators, alternated in short rounds: both variants see
    # the same background load, so other work on the shared cores cancels out of the ratio.
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, len(ds.classes), **model_kwargs(cfg))
    model.compile(keras.optimizers.AdamW(1e-3), make_loss(cfg))
    model.fit(compute_only, steps_per_epoch=3, epochs=1, verbose=0)  # trace + warm-up
    step = model.train_function
    iterators = {"compute": iter(compute_only), "pipeline": iter(full)}
    for it in iterators.values():
        step(it)
    t0 = time.perf_counter()
    for _ in range(3):
        step(iterators["compute"])
    per_step = (time.perf_counter() - t0) / 3
    steps = max(5, int(args.seconds / args.rounds / 2 / per_step))
    times: dict[str, list[float]] = {k: [] for k in iterators}
    for _ in range(args.rounds):
        for name, it in iterators.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = step(it)
            keras.ops.convert_to_numpy(loss["loss"] if isinstance(loss, dict) else loss)
            times[name].append((time.perf_counter() - t0) / steps)
    ratios = [c / p for c, p in zip(times["compute"], times["pipeline"], strict=True)]
    base = 1 / float(np.median(times["compute"]))
    piped = 1 / float(np.median(times["pipeline"]))
    res = {
        "model": cfg.model,
        "batch_size": cfg.batch_size,
        "precision": device.precision,
        "compute_only_steps_s": round(base, 3),
        "pipeline_steps_s": round(piped, 3),
        "ratio": round(float(np.median(ratios)), 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "steps_per_round": steps,
        "pipeline_alone_ms_per_batch": round(pipe_ms, 2),
        "compute_ms_per_step": round(1000 / base, 1),
        "compute_only_img_s": round(base * cfg.batch_size, 1),
        "pipeline_img_s": round(piped * cfg.batch_size, 1),
    }
    print(json.dumps(res, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
