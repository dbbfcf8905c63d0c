"""Tuning benchmarks: what pruning saves, and how workers on one study scale.

``pruning``: one seeded study on a Train subset with ``--pruner`` (``none`` for the unpruned
reference); reports wall time, trials pruned, the best tuning-split accuracy, and each trial's
per-epoch curve (``--out`` keeps them for ``paired``).

``paired``: the two studies of ``pruning`` (no pruner, and ``--pruner``) run in one process one
trial of each in turn (ABBA), so that the host's drift falls on both alike; wall and CPU seconds
per study, each trial's path checked against recorded runs when their JSONs are given.

``scaling``: a fixed trial budget on a PostgreSQL study (a throwaway server from
``scripts/postgres.sh`` unless ``--storage`` is given), one worker pinned to one core vs two
workers each pinned to its own core; pruning off and a fixed architecture so every trial does
the same work. Target: two workers >= 1.7x faster.

All use a small RAN (``--width``/``--depths``) and short trials; ``valid`` (the test set) is
never read. The commands behind docs/benchmarks.md ("Tuning") are written there.
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
        prune_within=args.prune_within,
        horizon_correction=args.horizon_correction,
        seed=args.seed,
        base=base,
        space=space,
        track=False,
    )


def _trial_row(t) -> dict:
    """A finished Optuna trial as the benches record it."""
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "epochs_run": t.user_attrs.get("epochs_run"),
        "seconds": t.user_attrs.get("seconds"),
        "cpu_seconds": t.user_attrs.get("cpu_seconds"),
        "curve": [round(v, 4) for _, v in sorted(t.intermediate_values.items())],
        "val_loss": t.user_attrs.get("val_loss"),
        "params": t.params,
    }


def run(cfg, dataset: Path, pin: bool) -> dict:
    import optuna

    from ferflow.tune import run_study

    t0 = time.perf_counter()
    result = run_study(cfg, dataset, pin=pin)
    seconds = time.perf_counter() - t0
    study = optuna.load_study(study_name=cfg.study, storage=cfg.storage)
    per_trial = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
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


def _recorded(path: Path) -> dict:
    """An earlier ``pruning --out`` JSON, checked to hold its per-trial curves."""
    study = json.loads(path.read_text())
    if not study.get("per_trial"):
        raise SystemExit(f"{path}: no per_trial curves (write one with `bench/tune.py pruning --out`)")
    return study


def paired(args) -> dict:
    """The ``pruning`` bench's two studies, the unpruned reference and ``--pruner``, run at once in
    one process, one trial of each in turn (ABBA), so that the host's drift falls on both alike.

    Each is a whole Optuna study as ``ferflow tune`` runs it with one worker: created by
    ``create_study`` (the untuned baseline first), loaded by ``load_worker_study`` (its seeded
    sampler and the pruner), trained by ``Objective``. A study's time is the sum of its
    ``optimize`` calls: sampler, pruner, storage and training, on the wall clock and in CPU
    seconds of this process. Curves and values can be checked against recorded runs
    (``curves``/``pruned``): a seeded study repeats its path on this CPU, except that the first
    training in a process differs from later ones (hence the untimed warm-up).
    """
    import optuna

    from ferflow.tune import Objective, baseline_params, create_study, load_tuning_data, load_worker_study

    if args.pruner == "none":
        raise SystemExit("paired compares a pruner with no pruning: pass --pruner asha, median or hyperband")
    paths = {"reference": args.curves, "pruned": args.pruned}
    recorded = {name: _recorded(path)["per_trial"] for name, path in paths.items() if path}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ferflow-bench-paired-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'optuna.db'}"
        cfgs = {
            "reference": bench_config(args, Path(tmp), url, "bench-none", "none", 1, fixed=False),
            "pruned": bench_config(args, Path(tmp), url, f"bench-{args.pruner}", args.pruner, 1, fixed=False),
        }
        data = load_tuning_data(args.dataset)
        # untimed: the process's first training pays one-off costs and ends differently
        warm = optuna.trial.FixedTrial(_first_choices(cfgs["reference"]) | baseline_params(cfgs["reference"]))
        Objective(cfgs["reference"], data, callbacks=[_stop_after(1)], verbose=False)(warm)
        studies, objectives = {}, {}
        for name, cfg in cfgs.items():
            create_study(cfg)
            studies[name] = load_worker_study(cfg)
            objectives[name] = Objective(cfg, data, verbose=False)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        clocks: dict[str, list[tuple[float, float]]] = {name: [] for name in cfgs}
        same_path: dict[str, list[bool]] = {name: [] for name in recorded}
        for i in range(args.trials):
            for name in ("reference", "pruned") if i % 2 == 0 else ("pruned", "reference"):
                wall, cpu = time.perf_counter(), time.process_time()
                studies[name].optimize(objectives[name], n_trials=1, catch=(Exception,), gc_after_trial=True)
                clocks[name].append((time.perf_counter() - wall, time.process_time() - cpu))
                t = studies[name].trials[-1]
                same = ""
                if name in recorded and i < len(recorded[name]):
                    same_path[name].append(_same_trial(_trial_row(t), recorded[name][i]))
                    same = " same path" if same_path[name][-1] else " NEW PATH"
                print(
                    f"{name:<9} trial {i:>2}: {t.state.name:<8} {len(t.intermediate_values):>2} epochs "
                    f"{clocks[name][-1][0]:7.1f} s wall {clocks[name][-1][1]:7.1f} s cpu "
                    f"{t.value if t.value is not None else float('nan'):.4f}{same}",
                    file=sys.stderr,
                    flush=True,
                )
        rows = {name: [_trial_row(t) for t in study.trials] for name, study in studies.items()}
    out: dict = {"bench": "paired", "pruner": args.pruner, "studies": {}}
    for name, trials in rows.items():
        for row, (wall, cpu) in zip(trials, clocks[name], strict=True):
            row["optimize_seconds"], row["optimize_cpu_seconds"] = round(wall, 2), round(cpu, 2)
        complete = [t["value"] for t in trials if t["state"] == "COMPLETE"]
        out["studies"][name] = {
            "seconds": round(sum(w for w, _ in clocks[name]), 1),
            "cpu_seconds": round(sum(c for _, c in clocks[name]), 1),
            "epochs": sum(len(t["curve"]) for t in trials),
            "states": {s: sum(t["state"] == s for t in trials) for s in {t["state"] for t in trials}},
            "best_value": max(complete) if complete else None,
            "same_path_as_recorded": sum(same_path[name]) if name in recorded else None,
            "per_trial": trials,
        }
    ref, pru = out["studies"]["reference"], out["studies"]["pruned"]
    out["time_ratio"] = round(pru["seconds"] / ref["seconds"], 3)
    out["cpu_ratio"] = round(pru["cpu_seconds"] / ref["cpu_seconds"], 3)
    out["epoch_ratio"] = round(pru["epochs"] / ref["epochs"], 3)
    if ref["best_value"] is not None and pru["best_value"] is not None:
        out["best_value_points"] = round(100 * (pru["best_value"] - ref["best_value"]), 2)
    out["total_seconds"] = round(time.perf_counter() - t_start, 1)
    return out


def _first_choices(cfg) -> dict:
    return {"width": cfg.space.width[0], "batch_size": cfg.space.batch_size[0]}


def _same_curve(new: list[float], recorded: list[float]) -> bool:
    """The same per-epoch tuning accuracies, to the 4 decimals a curve is recorded with."""
    return len(new) == len(recorded) and all(abs(a - b) < 6e-5 for a, b in zip(new, recorded, strict=True))


def _same_trial(new: dict, old: dict) -> bool:
    """The same parameters, and the same per-epoch curve."""
    return new["params"] == old["params"] and _same_curve(new["curve"], old["curve"])


def _stop_after(epochs: int):
    """A Keras callback that ends training after ``epochs`` epochs, keeping each epoch's tuning
    accuracy in ``.values``."""
    import keras

    class StopAfter(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.values: list[float] = []

        def on_epoch_end(self, epoch, logs=None):
            self.values.append(float((logs or {}).get("val_accuracy", float("nan"))))
            if epoch + 1 >= epochs:
                self.model.stop_training = True

    return StopAfter()


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


BENCHES = {
    "pruning": pruning,
    "paired": paired,
    "scaling": scaling,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", choices=list(BENCHES))
    ap.add_argument(
        "curves",
        nargs="?",
        type=Path,
        help="paired (optional): the unpruned reference's recorded JSON",
    )
    ap.add_argument(
        "pruned",
        nargs="?",
        type=Path,
        help="paired (optional): the pruned study's recorded JSON",
    )
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
        "--horizon-correction", action="store_true", help="judge accuracy plus the learning rate's later gain"
    )
    ap.add_argument("--prune-within", default="", help="prune against trials of the same choice of this")
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
    bench = BENCHES[args.bench]
    result = {**info, **bench(args)}
    result["load_after"] = [round(x, 1) for x in os.getloadavg()]
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
