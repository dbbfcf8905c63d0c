"""The xgboost head against the softmax head, and stock against Intel-optimised scikit-learn.

Deep features come from the committed reference model (its backbone up to the final dense
layer, through ONNX Runtime), on the data it was trained on: FER2013Train from the canonical
dataset, cut into the same fit/tuning split (seed and fraction from its ``metrics.json``). Then:

- the XGBoost head (``ferflow.xgb_head``, hist) is fit on the fit split with early stopping on
  the tuning split and joined to the backbone as one ONNX graph; both graphs are scored on the
  canonical ``valid`` split (FER2013Valid and photos valid, each over its own classes, hflip TTA
  as the model's metadata says and without) and timed in the same run (ONNX Runtime, same batch,
  same threads, alternating rounds);
- StandardScaler + PCA, then XGBoost hist, and a LogisticRegression on the scaled features, each
  in a subprocess with stock scikit-learn and with ``sklearnex.patch_sklearn()`` (needs
  ``uv sync --frozen --group intel``), timed in the same run.

Usage (timed: hold the CPU lock)::

    flock -x /tmp/ferflow-cpu.lock .venv/bin/python bench/xgb_head.py --out bench/results/xgb_head.json
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

ROOT = Path(__file__).resolve().parents[1]


def training_data(dataset: Path, model_dir: Path):
    """The reference model's fit/tuning split of FER2013Train and the full canonical test split."""
    from dataclasses import fields

    from ferflow.canonical import open_dataset
    from ferflow.config import TrainConfig
    from ferflow.train import prepare_data

    ds = open_dataset(dataset)
    info = json.loads((model_dir / "metrics.json").read_text())
    recipe = info["config"]
    known = {f.name for f in fields(TrainConfig)}
    keys = ("label_scheme", "class_weight_power", "tune_fraction", "seed")
    cfg = TrainConfig(**{k: recipe[k] for k in keys if k in known and k in recipe})
    train = ds.load("train")
    sources = info.get("sources") or ["ferplus"]  # the sources it trained on (older cards: FERPlus)
    train = train.subset(np.flatnonzero(np.isin(train.dataset, sources)))
    return prepare_data(cfg, ({"train": train, "valid": ds.load("valid")}, ds.meta)), cfg


def score(path: Path, data, tta: str, threads: int) -> dict:
    """Accuracy on the tuning split and per test source (each over its own classes)."""
    from ferflow import evaluate as ev
    from ferflow.predict import FerClassifier

    clf = FerClassifier(path, threads=threads, tta=tta, runtime="onnxruntime")
    test = ev.evaluate_split(
        clf, data.test, data.classes, occlusion=False, label_sets=ev.source_label_sets(data.meta)
    )
    tune = ev.evaluate_split(clf, data.tune, data.classes, occlusion=False)
    out = {"tune": round(tune["accuracy"], 4), "test_all": round(test["accuracy"], 4)}
    for name, part in test.get("datasets", {}).items():
        out[name] = round(part["accuracy"], 4)
        out[f"{name}_macro_f1"] = round(part["macro_f1"], 4)
    return out


def crops_per_second(paths: dict[str, Path], threads: int, batch: int, seconds: float) -> dict:
    """ONNX Runtime crops/s of each model, no TTA; rounds alternate so both see the same machine."""
    from ferflow.predict import FerClassifier

    clfs = {k: FerClassifier(p, threads=threads, tta="none", runtime="onnxruntime") for k, p in paths.items()}
    x = np.random.default_rng(0).random((batch, 48, 48, 1), dtype=np.float32)
    rates: dict[str, list[float]] = {k: [] for k in clfs}
    for clf in clfs.values():
        for _ in range(10):
            clf.logits(x, batch)
    for _ in range(5):
        for key, clf in clfs.items():
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 5:
                clf.logits(x, batch)
                n += batch
            rates[key].append(n / (time.perf_counter() - t0))
    return {k: round(float(np.median(v)), 1) for k, v in rates.items()}


def heads(args, data, work: Path) -> tuple[dict, Path]:
    """Fit the XGBoost head on the reference backbone's features; the joined graph and figures."""
    import onnx

    from ferflow import xgb_head as xh
    from ferflow.config import XGBoostHeadConfig
    from ferflow.export import _set_metadata

    reference = onnx.load(str(args.model))
    backbone, feats = xh.backbone_model(reference)
    t0 = time.perf_counter()
    fx = xh.backbone_features(backbone, data.fit.pixels, args.threads)
    tx = xh.backbone_features(backbone, data.tune.pixels, args.threads)
    vx = xh.backbone_features(backbone, data.test.pixels, args.threads)
    feature_seconds = time.perf_counter() - t0
    fy, ty = data.fit.label.astype(int), data.tune.label.astype(int)
    t0 = time.perf_counter()
    booster = xh.fit_trees(
        XGBoostHeadConfig(), data.num_classes, (fx, fy, data.weights), (tx, ty), 42, args.threads
    )
    fit_seconds = time.perf_counter() - t0
    joined = xh.compose(backbone, feats, xh.trees_onnx(booster, fx.shape[1]), data.num_classes)
    _set_metadata(joined, {p.key: p.value for p in reference.metadata_props} | {"head": "xgboost"})
    joined_path = work / "xgb_head.onnx"
    onnx.save(joined, str(joined_path))
    np.savez(work / "features.npz", fx=fx, fy=fy, fw=data.weights, tx=tx, ty=ty, vx=vx,
             vy=data.test.label.astype(int), vd=data.test.dataset)  # fmt: skip
    result = {
        "features": {
            "dim": int(fx.shape[1]),
            "rows": [len(fx), len(tx), len(vx)],
            "seconds": round(feature_seconds, 1),
        },
        "xgboost": {"fit_seconds": round(fit_seconds, 1), "rounds": booster.num_boosted_rounds()},
        "accuracy": {},
    }
    for tta in ("none", "hflip"):
        result["accuracy"][f"softmax/{tta}"] = score(args.model, data, tta, args.threads)
        result["accuracy"][f"xgboost/{tta}"] = score(joined_path, data, tta, args.threads)
    result["crops_per_s"] = crops_per_second(
        {"softmax": args.model, "xgboost": joined_path}, args.threads, args.batch, args.seconds
    )
    return result, joined_path


def sklearn_worker(
    features: Path, out: Path, intel: bool, pca_dim: int, threads: int, repeats: int = 3
) -> dict:
    """One pass of the scikit-learn pipelines (in its own process: patching is process-wide).

    Scaler, PCA and logistic-regression fits are timed ``repeats`` times (median: each takes
    well under a second to a few seconds, so one sample would be noise); the trees once."""
    import logging

    accelerated: list[str] = []
    if intel:
        from sklearnex import patch_sklearn

        patch_sklearn()

        class Record(logging.Handler):  # sklearnex logs, per call, whether oneDAL ran it
            def emit(self, record: logging.LogRecord) -> None:
                accelerated.append(record.getMessage())

        logging.getLogger("sklearnex").addHandler(Record())
        logging.getLogger("sklearnex").setLevel(logging.INFO)
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ferflow import xgb_head as xh
    from ferflow.config import XGBoostHeadConfig

    z = np.load(features)
    times: dict[str, float] = {}

    def timed(name, fn, n=repeats):
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            value = fn()
            samples.append(time.perf_counter() - t0)
        times[name] = round(float(np.median(samples)), 3)
        return value

    scaler = timed("scaler_fit", lambda: StandardScaler().fit(z["fx"]))
    fs, ts, vs = (scaler.transform(z[k]) for k in ("fx", "tx", "vx"))
    pca = timed("pca_fit", lambda: PCA(pca_dim, random_state=0).fit(fs))
    fp, tp, vp = timed("pca_transform", lambda: [pca.transform(a) for a in (fs, ts, vs)])
    # unweighted: given sample weights, sklearnex hands LogisticRegression back to stock code
    lr = LogisticRegression(max_iter=1000, C=1.0)
    timed("logreg_fit", lambda: lr.fit(fs, z["fy"]))
    lr_proba = timed("logreg_predict", lambda: lr.predict_proba(vs))
    booster = timed(
        "xgboost_on_pca_fit",
        lambda: xh.fit_trees(XGBoostHeadConfig(), 8, (fp, z["fy"], z["fw"]), (tp, z["ty"]), 42, threads),
        n=1,
    )
    probs = {"logreg": lr_proba, "pca_xgboost": xh.booster_proba(booster, vp)}
    classes = sorted(set(z["fy"].tolist()))
    if classes != list(range(8)):
        raise ValueError(f"{features}: the fit split lacks classes: has {classes}")
    np.savez(out, **probs)
    return {
        "intel": intel,
        "seconds": times,
        "logreg_iterations": int(np.max(lr.n_iter_)),
        "pca_xgboost_rounds": booster.num_boosted_rounds(),
        "pca_explained_variance": round(float(pca.explained_variance_ratio_.sum()), 4),
        "accelerated_calls": sorted(
            {m for m in accelerated if "accelerated" in m or "fallback" in m.lower()}
        ),
    }


def stock_vs_intel(args, data, work: Path) -> dict:
    """Both scikit-learn passes, one process each, back to back; their times and accuracies."""
    from ferflow import evaluate as ev

    label_sets = ev.source_label_sets(data.meta)
    out: dict[str, dict] = {}
    for intel in (False, True):
        name = "intel" if intel else "stock"
        python = args.intel_python if intel else sys.executable
        cmd = [python, __file__, "--sklearn-worker", str(work / "features.npz")]
        cmd += [
            "--worker-out",
            str(work / f"{name}.npz"),
            "--threads",
            str(args.threads),
            "--pca",
            str(args.pca),
            "--repeats",
            str(args.repeats),
        ]
        run = subprocess.run(cmd + (["--intel"] if intel else []), capture_output=True, text=True)
        if run.returncode != 0:
            why = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed"
            hint = " (uv sync --frozen --group intel)" if intel and "sklearnex" in why else ""
            out[name] = {"error": why + hint}
            continue
        out[name] = json.loads(run.stdout.strip().splitlines()[-1])
        probs = np.load(work / f"{name}.npz")
        y = data.test.label.astype(int)
        for model in probs.files:
            logits = np.log(np.clip(probs[model], 1e-7, None))
            out[name][f"{model}_accuracy"] = {
                source: round(
                    ev.subset_scores(
                        logits[data.test.dataset == source],
                        y[data.test.dataset == source],
                        data.classes,
                        label_sets.get(source),
                    )["accuracy"],
                    4,
                )
                for source in data.test.datasets()
            }
    return out


def machine() -> str:
    """CPU model and usable cores (no TensorFlow needed)."""
    import platform

    name = platform.processor() or "cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return f"{name}, {len(os.sched_getaffinity(0))} usable cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "reference" / "model.onnx")
    ap.add_argument("--dataset", type=Path, default=ROOT / "artifacts" / "canonical")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0, help="timing per model (crops/s)")
    ap.add_argument("--pca", type=int, default=128, help="PCA components before the PCA→XGBoost pipeline")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of each sklearn fit (median)")
    ap.add_argument(
        "--intel-python", default=sys.executable, help="python with scikit-learn-intelex (default: this one)"
    )
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sklearn-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--intel", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sklearn_worker:
        print(
            json.dumps(
                sklearn_worker(
                    args.sklearn_worker, args.worker_out, args.intel, args.pca, args.threads, args.repeats
                )
            )
        )
        return
    data, _ = training_data(args.dataset, args.model.parent)
    with tempfile.TemporaryDirectory(prefix="ferflow-xgb-") as tmp:
        result, _ = heads(args, data, Path(tmp))
        if not args.skip_sklearn:
            result["sklearn"] = stock_vs_intel(args, data, Path(tmp))
    result["config"] = {k: str(v) for k, v in vars(args).items() if not k.startswith(("sklearn", "worker"))}
    result["machine"] = machine()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
