"""Exported-model inference speed with OpenVINO and ONNX Runtime (targets: >= 1,500 crops/s at batch 64,
single-crop latency <= 2 ms on 2 cores).

Benchmarks each ONNX file given (default: the committed reference model and, if present,
its int8/fp32 siblings), or exports fresh float32 + int8 models of the named architectures
(random weights: speed does not depend on them). Usage::

    .venv/bin/python bench/inference.py --seconds 10
    .venv/bin/python bench/inference.py --models ran_fm cnn --seconds 10
    .venv/bin/python bench/inference.py --onnx models/reference/model.onnx
    .venv/bin/python bench/inference.py --fer-python /path/to/fer-venv/bin/python   # + the peer

Each model is timed on each runtime (``--runtime``; ``auto`` falls back to ONNX Runtime when
OpenVINO fails its agreement probe; ONNX Runtime runs the graph as written when its fused int8
kernels fail theirs; the row says so), with and without its hflip
test-time augmentation (``--tta``), and with
``--dataset`` (default: the canonical dataset when present) also scored on its ``valid`` split
(majority protocol). ``--fer-python`` runs ``bench/fer_peer.py`` in the venv holding the ``fer``
package in the same run, so both sides share the machine state; the ratio is ours / fer's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_onnx(
    path: Path, seconds: float, threads: int | None, tta: str, dataset: Path | None, runtime: str
) -> dict:
    from ferflow.predict import FerClassifier

    clf = FerClassifier(path, threads=threads, tta=tta, runtime=runtime)
    accuracy = None
    if dataset is not None:
        from ferflow.canonical import open_dataset
        from ferflow.preprocess import to_model_input

        valid = open_dataset(dataset).load("valid")
        pred = clf.logits(to_model_input(valid.pixels)).argmax(1)
        accuracy = round(float((pred == valid.label.astype(int)).mean()), 4)
    rng = np.random.default_rng(0)
    x64 = rng.random((64, 48, 48, 1), dtype=np.float32)
    x1 = x64[:1]
    for _ in range(20):
        clf.logits(x64)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        clf.logits(x64)
        n += 64
    cps = n / (time.perf_counter() - t0)
    lat = []
    t_end = time.perf_counter() + seconds / 2
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        clf.logits(x1)
        lat.append(time.perf_counter() - t)
    lat_ms = np.array(lat) * 1000
    return {
        "model": str(path),
        "precision": clf.metadata.get("quantization", "fp32"),
        "runtime": clf.runtime.value,
        "fallback_reason": clf.fallback_reason,
        "tta": clf.tta.value,
        "accuracy": accuracy,
        "size_mb": round(path.stat().st_size / 2**20, 2),
        "batch64_crops_s": round(cps, 1),
        "latency_ms_p50": round(float(np.median(lat_ms)), 3),
        "latency_ms_p95": round(float(np.percentile(lat_ms, 95)), 3),
    }


def export_fresh(name: str, out_dir: Path) -> list[Path]:
    """Export an untrained ``name`` (TrainConfig recipe) as fp32 + int8 ONNX in a subprocess."""
    code = f"""
import dataclasses, numpy as np
from ferflow.config import TrainConfig, Precision
from ferflow.train import configure_device, model_kwargs
configure_device(Precision.FLOAT32, verbose=False)
from ferflow.models import build_model
from ferflow.export import export_onnx, quantize_int8
cfg = dataclasses.replace(TrainConfig(), model={name!r})
m = build_model(cfg.model, 8, **model_kwargs(cfg))
classes = ["c%d" % i for i in range(8)]
p = export_onnx(m, {str(out_dir)!r} + "/{name}_fp32.onnx", classes)
calib = np.random.default_rng(0).integers(0, 256, (128, 48, 48), dtype=np.uint8)
quantize_int8(p, {str(out_dir)!r} + "/{name}_int8.onnx", calib)
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return [out_dir / f"{name}_fp32.onnx", out_dir / f"{name}_int8.onnx"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", nargs="*", default=None, help="ONNX files to benchmark")
    ap.add_argument("--models", nargs="*", default=None, help="export these architectures fresh")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None, help="default: usable cores")
    ap.add_argument("--tta", nargs="*", default=["none", "hflip"], help="test-time augmentations to time")
    ap.add_argument(
        "--runtime", nargs="*", default=["openvino", "onnxruntime"], help="auto | openvino | onnxruntime"
    )
    ap.add_argument("--dataset", type=Path, default=Path("artifacts/canonical"), help="scored on valid")
    ap.add_argument("--fer-python", default=None, help="python of a venv holding the `fer` package")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dataset = args.dataset if (args.dataset / "dataset.json").is_file() else None

    paths: list[Path] = [Path(p) for p in args.onnx or []]
    tmp = tempfile.TemporaryDirectory()
    for name in args.models or []:
        paths += export_fresh(name, Path(tmp.name))
    if not paths:
        ref = Path("models/reference/model.onnx")
        if not ref.is_file():
            sys.exit("no --onnx/--models given and no models/reference/model.onnx")
        paths = [ref]
    results = []
    for p in paths:
        for runtime in args.runtime:
            for tta in args.tta:
                fresh = p.is_relative_to(tmp.name)  # random weights: accuracy means nothing
                r = bench_onnx(p, args.seconds, args.threads, tta, None if fresh else dataset, runtime)
                r["model"] = p.name if fresh else str(p)
                results.append(r)
                acc = "" if r["accuracy"] is None else f"  accuracy {100 * r['accuracy']:.2f} %"
                print(
                    f"{r['model']:40s} {r['runtime']:11s} {r['precision']:5s} tta={r['tta']:5s} "
                    f"{r['size_mb']:6.2f} MB  batch64 {r['batch64_crops_s']:9.1f} crops/s  "
                    f"latency p50 {r['latency_ms_p50']:.3f} ms p95 {r['latency_ms_p95']:.3f} ms{acc}",
                    flush=True,
                )
                if r["fallback_reason"]:
                    print(f"  (fallback: {r['fallback_reason']})", flush=True)
    if args.fer_python:
        if dataset is None:
            sys.exit("--fer-python needs --dataset (a canonical dataset with a valid split)")
        script = Path(__file__).with_name("fer_peer.py")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        out = subprocess.run(
            [args.fer_python, str(script), "--dataset", str(dataset), "--seconds", str(args.seconds)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        fer = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{fer['model']:40s} int8  tta=none  batch64 {fer['batch64_crops_s']:9.1f} crops/s  "
            f"latency p50 {fer['latency_ms_p50']:.3f} ms p95 {fer['latency_ms_p95']:.3f} ms  "
            f"accuracy {100 * fer['accuracy']:.2f} %",
            flush=True,
        )
        for r in results:
            r["speed_vs_fer"] = round(r["batch64_crops_s"] / fer["batch64_crops_s"], 3)
            print(
                f"{r['model']} {r['runtime']} tta={r['tta']}: {r['speed_vs_fer']:.2f}x fer's crops/s",
                flush=True,
            )
        results.append({**fer, "peer": True})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
