"""Tuning benchmarks (issue 5): what pruning saves, and how workers on one study scale.

``pruning``: the same seeded 20-trial study on a Train subset, once with a pruner and once
without; reports wall time, trials pruned, and the best tuning-split accuracy of each.
Target: pruned < half the unpruned time, best value within 1 point.

``scaling``: a fixed trial budget on a PostgreSQL study (a throwaway server from
``scripts/postgres.sh`` unless ``--storage`` is given), one worker pinned to one core vs two
workers each pinned to its own core; pruning off and a fixed architecture so every trial does
the same work. Target: two workers ≥ 1.7× faster.

Both use a small RAN (``--width``/``--depths``) and short trials so a run stays within about
ten minutes on two shared cores; ``valid`` (the test set) is never read. Usage::

    .venv/bin/python bench/tune.py pruning --subset 2000 --trials 20 --epochs 6 --pruner median
    .venv/bin/python bench/tune.py pruning --subset 2000 --trials 20 --epochs 6 --pruner none
    .venv/bin/python bench/tune.py scaling --trials 8 --workers 1
    .venv/bin/python bench/tune.py scaling --trials 8 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    from ferflow.train import cpu_model

    load = os.getloadavg()
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at start"
    )


def bench_config(args, tmp: Path, storage: str, study: str, pruner: str, workers: int, fixed: bool):
    from ferflow.config import Precision, TrainConfig, TuneConfig, TuneSpace

    base = TrainConfig(
        model=args.model,
        depths=tuple(int(d) for d in args.depths.split(",")),
        warmup_epochs=args.lr_warmup,
        precision=Precision(args.precision),
        early_stopping_patience=0,
        quantize_int8=False,
    )
    widths = tuple(int(w) for w in args.width.split(","))
    batches = tuple(int(b) for b in args.batch.split(","))
    space = TuneSpace(width=widths[:1] if fixed else widths, batch_size=batches[:1] if fixed else batches)
    return TuneConfig(
        study=study,
        storage=storage,
        trials=args.trials,
        workers=workers,
        subset=args.subset,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        pruner=pruner,
        prune_on=args.prune_on,
        startup_trials=args.startup,
        warmup_epochs=args.warmup,
        reduction_factor=args.reduction_factor,
        seed=args.seed,
        base=base,
        space=space,
        track=False,
    )


def run(cfg, dataset: Path, pin: bool) -> dict:
    import optuna

    from ferflow.tune import run_study

    t0 = time.perf_counter()
    result = run_study(cfg, dataset, pin=pin)
    seconds = time.perf_counter() - t0
    study = optuna.load_study(study_name=cfg.study, storage=cfg.storage)
    per_trial = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "epochs_run": t.user_attrs.get("epochs_run"),
            "seconds": t.user_attrs.get("seconds"),
            "curve": [round(v, 4) for _, v in sorted(t.intermediate_values.items())],
            "val_loss": t.user_attrs.get("val_loss"),
            "params": t.params,
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return {
        "seconds": round(seconds, 1),
        "trials": result.n_trials,
        "states": result.states,
        "best_value": result.best_value,
        "best_params": result.best_params,
        "per_trial": per_trial,
    }


def pruning(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="ferflow-bench-tune-") as tmp:
        storage = f"sqlite:///{Path(tmp) / 'optuna.db'}"
        cfg = bench_config(args, Path(tmp), storage, f"bench-{args.pruner}", args.pruner, 1, fixed=False)
        out = run(cfg, args.dataset, pin=False)
    return {"bench": "pruning", "pruner": args.pruner, **out}


def scaling(args) -> dict:
    script = ROOT / "scripts" / "postgres.sh"
    started = None
    storage = args.storage
    if not storage:
        proc = subprocess.run([str(script), "start"], capture_output=True, text=True, check=True)
        started, url = proc.stdout.split()[-2:]
        storage = f"{url}/optuna"
    try:
        with tempfile.TemporaryDirectory(prefix="ferflow-bench-tune-") as tmp:
            study = f"bench-scaling-{args.workers}w-{int(time.time())}"
            cfg = bench_config(args, Path(tmp), storage, study, "none", args.workers, fixed=True)
            out = run(cfg, args.dataset, pin=True)
    finally:
        if started:
            subprocess.run([str(script), "stop", started], capture_output=True)
    out["seconds_per_trial"] = round(out["seconds"] / max(1, out["trials"]), 2)
    return {"bench": "scaling", "workers": args.workers, "storage": "postgresql", **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", choices=["pruning", "scaling"])
    ap.add_argument("--dataset", type=Path, default=ROOT / "artifacts" / "canonical")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--subset", type=int, default=2000, help="training images per trial")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="steps per epoch")
    ap.add_argument("--width", default="8,16", help="backbone widths searched (scaling: the first)")
    ap.add_argument("--batch", default="32,64", help="batch sizes searched (scaling: the first)")
    ap.add_argument("--depths", default="1,1,1,1")
    ap.add_argument("--model", default="ran_fm", help="ran_fm, ran, resnet or cnn")
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--pruner", default="median", choices=["median", "hyperband", "asha", "none"])
    ap.add_argument("--prune-on", default="accuracy", choices=["accuracy", "loss"])
    ap.add_argument("--startup", type=int, default=4, help="random trials before TPE and pruning")
    ap.add_argument("--warmup", type=int, default=1, help="epochs no pruner judges (first decision: +1)")
    ap.add_argument("--reduction-factor", type=int, default=3, help="asha/hyperband: 1 in f goes on")
    ap.add_argument(
        "--lr-warmup", type=float, default=1.0, help="learning-rate warm-up epochs (the recipe's: 1)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--storage", default="", help="scaling: an existing RDB URL instead of a fresh server")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    info = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    info["args"] = {k: str(v) for k, v in vars(args).items()}
    result = {**info, **(pruning(args) if args.bench == "pruning" else scaling(args))}
    result["load_after"] = [round(x, 1) for x in os.getloadavg()]
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
