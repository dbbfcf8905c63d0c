"""Training and inference throughput of candidate models/backbones on this machine.

Measures, per candidate and precision (float32 vs mixed_bfloat16):
- training img/s: ``model.fit`` on a synthetic in-memory batch (compute only, no input work),
- Keras inference crops/s at batch 256.

Each measurement runs in a fresh subprocess (the Keras dtype policy is global) and is bounded
by ``--seconds``. Usage::

    .venv/bin/python bench/backbones.py --seconds 15 --out /tmp/backbones.json
    .venv/bin/python bench/backbones.py --only ran_fm:w32 --precisions float32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CANDIDATES: dict[str, tuple[str, dict]] = {
    "cnn": ("cnn", {}),
    "resnet:w32": ("resnet", {"width": 32}),
    "ran:w32": ("ran", {"width": 32}),
    "ran_fm:w32": ("ran_fm", {"width": 32, "head_stages": 1}),
    "ran_fm:w32:h0": ("ran_fm", {"width": 32, "head_stages": 0}),
    "ran_fm:w40": ("ran_fm", {"width": 40, "head_stages": 1}),  # the reference recipe's backbone
    "ran_fm:w8": ("ran_fm", {"width": 8, "head_stages": 1}),  # narrow: its stage-1 shortcut is split
    "ran_fm:w48": ("ran_fm", {"width": 48, "head_stages": 1}),
    "ran_fm:w64": ("ran_fm", {"width": 64, "head_stages": 1}),
    "ran_fm:w24": ("ran_fm", {"width": 24, "head_stages": 1}),
}


def measure(key: str, precision: str, seconds: float, batch: int) -> dict:
    import numpy as np

    from ferflow.train import configure_device

    device = configure_device(precision, verbose=False)
    import keras
    import tensorflow as tf

    from ferflow.models import build_model

    name, cfg = CANDIDATES[key]
    model = build_model(name, 8, **cfg)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.random((batch, 48, 48, 1), dtype=np.float32)
    y = np.eye(8, dtype=np.float32)[rng.integers(0, 8, batch)]
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.t = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.t.append(time.perf_counter() - self.t0)

    # calibrate steps so one timed epoch lasts about `seconds`
    timer = Timer()
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0, callbacks=[timer])  # trace + warm-up
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0, callbacks=[timer])
    per_step = timer.t[-1] / 3
    steps = max(3, int(seconds / per_step))
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
    train_ips = steps * batch / timer.t[-1]

    infer = tf.function(lambda t: model(t, training=False), jit_compile=False)
    xb = tf.constant(rng.random((256, 48, 48, 1), dtype=np.float32))
    infer(xb)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 3:
        infer(xb).numpy()
        n += 256
    infer_cps = n / (time.perf_counter() - t0)
    return {
        "candidate": key,
        "precision": precision,
        "params": int(model.count_params()),
        "batch": batch,
        "train_img_s": round(train_ips, 1),
        "infer_crops_s": round(infer_cps, 1),
        "threads": device.intra_threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="timed training per measurement")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--only", nargs="*", default=None, help=f"subset of {list(CANDIDATES)}")
    ap.add_argument("--precisions", nargs="*", default=["float32", "mixed_bfloat16"])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--worker", nargs=2, metavar=("CANDIDATE", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = measure(args.worker[0], args.worker[1], args.seconds, args.batch)
        print("RESULT " + json.dumps(res), flush=True)
        return
    results = []
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for key in args.only or list(CANDIDATES):
        for precision in args.precisions:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                key,
                precision,
                "--seconds",
                str(args.seconds),
                "--batch",
                str(args.batch),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                print(f"{key} {precision}: FAILED\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            res = json.loads(line[-1][7:])
            results.append(res)
            print(
                f"{key:16s} {precision:15s} params={res['params']:>9,d} "
                f"train={res['train_img_s']:8.1f} img/s  infer={res['infer_crops_s']:8.1f} crops/s",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
