"""Tuning benchmarks (issue 5): what pruning saves, and how workers on one study scale.

``pruning``: the same seeded 20-trial study on a Train subset, once with a pruner and once
without; reports wall time, trials pruned, and the best tuning-split accuracy of each.
Target: pruned < half the unpruned time, best value within 1 point.

``replay``: Optuna's own pruner, built as ``ferflow tune`` builds it, applied to the recorded
per-epoch curves of an unpruned study (``per_trial`` in a ``pruning`` JSON). Same trials, same
order, no sampler reaction; cost = a fixed per-trial overhead + the epochs run × that trial's
seconds per epoch. It answers "which trials would this pruner have kept, and for how long".

``reaction``: what the seeded TPE sampler draws next for a categorical parameter, given a
recorded study's first n trials (pruned ones included): the share of 40 sampler seeds per choice.
It shows how pruning a choice's first trials steers the sampler away from it.

``simulate``: whole studies with the sampler in the loop, on a surrogate built from recorded
unpruned studies: each trial TPE draws is given the curve of the nearest recorded trial (same
label scheme; distance in the normalised space, the learning rate weighted most) plus seeded
noise. For each of ``--seeds`` sampler seeds it runs the study unpruned and with the pruner,
and reports how often both targets hold; it shows how far one pair of real runs is luck.

``horizon``: on an unpruned study's curves, the Spearman correlation of each epoch's accuracy with
the final value, raw and horizon-corrected as ``--horizon-correction`` does (each trial's slope
fitted on the other trials: leave one out).

``compare``: a pruned study against its unpruned reference recorded at another time, with the
host's speed difference taken from the trials both drew with identical parameters.

``retime``: the trials of an unpruned and a pruned study recorded earlier, trained again for their
recorded epochs, alternating between the two studies trial by trial, so that the host's drift
(±15 % within an hour here) falls on both alike; each curve is checked against the recorded one.

``paired``: the two studies of ``pruning`` (no pruner, and ``--pruner``) run in one process one
trial of each in turn (ABBA), so that drift falls on both alike; wall and CPU seconds per study,
each trial's path checked against recorded runs when their JSONs are given.

``firststep``: a trial's fixed cost, the seconds from the start of ``fit`` to the end of the
first training batch, against a later batch.

``scaling``: a fixed trial budget on a PostgreSQL study (a throwaway server from
``scripts/postgres.sh`` unless ``--storage`` is given), one worker pinned to one core vs two
workers each pinned to its own core; pruning off and a fixed architecture so every trial does
the same work. Target: two workers ≥ 1.7× faster.

Both use a small RAN (``--width``/``--depths``) and short trials so a run stays within about
ten minutes on two shared cores; ``valid`` (the test set) is never read. Usage::

    .venv/bin/python bench/tune.py pruning --subset 2000 --trials 20 --epochs 6 --pruner median
    .venv/bin/python bench/tune.py pruning --subset 2000 --trials 20 --epochs 6 --pruner none
    .venv/bin/python bench/tune.py replay bench/results/tune/none_s42.json --pruner asha --warmup 3
    .venv/bin/python bench/tune.py reaction bench/results/tune/asha_loss_s42.json
    .venv/bin/python bench/tune.py compare bench/results/tune/{none_s43,within_asha_s43}.json
    .venv/bin/python bench/tune.py simulate bench/results/tune/none_s4{2,3}.json --pruner asha
    .venv/bin/python bench/tune.py horizon bench/results/tune/none_s42.json
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


def _distributions(cfg) -> dict:
    """Optuna's distributions of the search space, as ``ferflow.tune.suggest`` declares them."""
    import optuna

    from ferflow.tune import suggest

    probe = optuna.create_study(direction="maximize")
    trial = probe.ask()
    suggest(trial, cfg)
    return trial.distributions


def _play(study, trial, curve: list[float], value: float) -> int:
    """Report ``curve`` epoch by epoch until the pruner stops the trial; tell the study how it
    ended (``value`` if it completed). Returns the epochs run. The last epoch is never judged:
    stopping after it saves nothing, as in ``ferflow tune``."""
    import optuna

    for epoch, reported in enumerate(curve[:-1], start=1):
        trial.report(reported, epoch)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, value)
    return len(curve)


def replay(args) -> dict:
    """Optuna's pruner over recorded curves; time relative to running every trial to the end."""
    import optuna

    from ferflow.tune import make_pruner

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = _recorded(args.curves)["per_trial"]
    incomplete = [t["number"] for t in trials if t["state"] != "COMPLETE"]
    if incomplete:
        raise SystemExit(f"{args.curves}: trials {incomplete} stopped early; replay needs an unpruned study")
    args.epochs = len(trials[0]["curve"])  # Hyperband's maximum resource
    cfg = bench_config(args, Path("."), "", "replay", args.pruner, 1, fixed=False)
    distributions = _distributions(cfg)
    replayed = optuna.create_study(direction="maximize", pruner=make_pruner(cfg))
    spent = full = 0.0
    rows = []
    for t in trials:
        curve = t["curve"] if args.prune_on == "accuracy" else [-v for v in t["val_loss"] or []]
        epochs = len(t["curve"])
        if len(curve) != epochs:
            raise SystemExit(f"{args.curves}: trial {t['number']} has no per-epoch val_loss (older JSON)")
        per_epoch = (t["seconds"] - args.overhead) / epochs
        replayed.enqueue_trial(t["params"])
        trial = replayed.ask(distributions)  # the recorded params (a per-choice pruner reads them)
        ran = _play(replayed, trial, curve, t["value"])
        complete = ran == epochs
        spent += args.overhead + ran * per_epoch
        full += t["seconds"]
        rows.append({"number": t["number"], "epochs_run": ran, "value": t["value"] if complete else None})
    kept = [r["value"] for r in rows if r["value"] is not None]
    best_full = max(t["value"] for t in trials)
    return {
        "bench": "replay",
        "curves": str(args.curves),
        "pruner": args.pruner,
        "prune_on": args.prune_on,
        "first_decision_epoch": args.warmup + 1,
        "reduction_factor": args.reduction_factor,
        "prune_within": args.prune_within,
        "time_ratio": round(spent / full, 3),
        "complete": len(kept),
        "best_unpruned": best_full,
        "best_kept": max(kept) if kept else None,
        "points_lost": round(100 * (best_full - max(kept)), 2) if kept else None,
        "per_trial": rows,
    }


def reaction(args) -> dict:
    """The share of sampler seeds drawing each choice of ``--param`` after the first n trials."""
    import optuna

    from ferflow.tune import make_sampler, suggest

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = _recorded(args.curves)["per_trial"]
    cfg = bench_config(args, Path("."), "", "reaction", "none", 1, fixed=False)
    distributions = _distributions(cfg)
    rows = []
    for n in range(cfg.startup_trials, len(trials) + 1):
        study = optuna.create_study(direction="maximize")
        for t in trials[:n]:
            steps = {i + 1: v for i, v in enumerate(t["curve"])}
            complete = t["state"] == "COMPLETE"
            study.add_trial(
                optuna.trial.create_trial(
                    params=t["params"],
                    distributions=distributions,
                    value=t["value"] if complete else None,
                    state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED,
                    intermediate_values=steps,
                )
            )
        drawn: dict[str, int] = {}
        for seed in range(args.seeds):
            study.sampler = make_sampler(cfg, seed_offset=seed)
            trial = study.ask()
            choice = str(suggest(trial, cfg)[args.param])
            drawn[choice] = drawn.get(choice, 0) + 1
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        share = {k: round(v / args.seeds, 3) for k, v in sorted(drawn.items())}
        rows.append({"after_trials": n, "share": share})
        print(f"after {n:2d} trials: " + ", ".join(f"{k} {v}" for k, v in share.items()), flush=True)
    return {"bench": "reaction", "curves": str(args.curves), "param": args.param, "rows": rows}


# simulate: the surrogate's distance weights (numeric parameters, over their normalised range;
# a different width or batch size adds 0.5) and its noise, in accuracy (0-1): a per-trial
# offset and a per-epoch wobble, about the spread of nearby configurations' recorded curves
_SURROGATE_WEIGHTS = {
    "learning_rate": 1.0,
    "weight_decay": 0.3,
    "dropout": 0.3,
    "erase_prob": 0.1,
    "rotation_deg": 0.1,
    "rb_margin": 0.1,
}
_SURROGATE_NOISE = (0.004, 0.01)


def _nearest(pool: list[dict], params: dict, space) -> dict:
    """The recorded trial closest to ``params`` among those with its label scheme."""
    import math

    def spread(name: str) -> tuple[float, float, bool]:
        lo, hi = getattr(space, name)
        log = name in ("learning_rate", "weight_decay")
        return (math.log(lo), math.log(hi), True) if log else (lo, hi, False)

    def distance(t: dict) -> float:
        other = t["params"]
        d = 0.5 * (other["width"] != params["width"]) + 0.5 * (other["batch_size"] != params["batch_size"])
        for name, weight in _SURROGATE_WEIGHTS.items():
            lo, hi, log = spread(name)
            a, b = (math.log(params[name]), math.log(other[name])) if log else (params[name], other[name])
            d += weight * abs(a - b) / max(hi - lo, 1e-12)
        return d

    same = [t for t in pool if t["params"]["label_scheme"] == params["label_scheme"]]
    if not same:  # a scheme no recorded trial drew: the nearest of any scheme
        same = pool
    return min(same, key=distance)


def _simulated_study(cfg, pool: list[dict], overhead: float) -> tuple[float, float]:
    """One seeded study on the surrogate: (seconds, best value)."""
    import random

    import optuna

    from ferflow.tune import baseline_params, make_pruner, make_sampler, suggest

    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg), pruner=make_pruner(cfg))
    study.enqueue_trial(baseline_params(cfg))  # as create_study does for a new study
    spent = 0.0
    for number in range(cfg.trials):
        trial = study.ask()
        recorded = _nearest(pool, suggest(trial, cfg), cfg.space)
        rng = random.Random(cfg.seed * 1000 + number)
        offset = rng.gauss(0, _SURROGATE_NOISE[0])
        curve = [v + offset + rng.gauss(0, _SURROGATE_NOISE[1]) for v in recorded["curve"]]
        ran = _play(study, trial, curve, max(curve))
        spent += overhead + ran * (recorded["seconds"] - overhead) / len(curve)
    return spent, study.best_value


def simulate(args) -> dict:
    """Pruned vs unpruned studies on the recorded-curve surrogate, over many sampler seeds."""
    import statistics

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pool = [t for path in (args.curves, args.pruned) if path for t in _recorded(path)["per_trial"]]
    pool = [t for t in pool if t["state"] == "COMPLETE"]
    args.epochs = len(pool[0]["curve"])
    rows = []
    for seed in range(args.seeds):
        args.seed = seed
        ref = bench_config(args, Path("."), "", "simulate", "none", 1, fixed=False)
        pruned = bench_config(args, Path("."), "", "simulate", args.pruner, 1, fixed=False)
        (t0, b0), (t1, b1) = (
            _simulated_study(ref, pool, args.overhead),
            _simulated_study(pruned, pool, args.overhead),
        )
        rows.append(
            {
                "seed": seed,
                "best_unpruned": round(b0, 4),
                "best": round(b1, 4),
                "time_ratio": round(t1 / t0, 3),
                "points": round(100 * (b1 - b0), 2),
            }
        )
    ratios, points = [r["time_ratio"] for r in rows], [r["points"] for r in rows]
    summary = {
        "seeds": args.seeds,
        "both_targets": sum(r < 0.5 and p > -1 for r, p in zip(ratios, points, strict=True)),
        "time_target": sum(r < 0.5 for r in ratios),
        "points_target": sum(p > -1 for p in points),
        "time_ratio_median": round(statistics.median(ratios), 3),
        "points_median": round(statistics.median(points), 2),
        "points_mean": round(statistics.mean(points), 2),
        "best_unpruned_sd_points": round(100 * statistics.stdev(r["best_unpruned"] for r in rows), 2),
    }
    print(summary, file=sys.stderr)
    return {
        "bench": "simulate",
        "pool": [str(args.curves), str(args.pruned)],
        "pruner": args.pruner,
        "horizon_correction": args.horizon_correction,
        "first_decision_epoch": args.warmup + 1,
        "reduction_factor": args.reduction_factor,
        "prune_within": args.prune_within,
        "summary": summary,
        "per_seed": rows,
    }


def horizon(args) -> dict:
    """Rank correlation of the accuracy at each early epoch with the final value, raw and corrected."""
    import math
    from types import SimpleNamespace

    from scipy.stats import spearmanr

    from ferflow.tune import horizon_slope

    trials = [
        SimpleNamespace(
            params=t["params"], value=t["value"], intermediate_values=dict(enumerate(t["curve"], start=1))
        )
        for t in _recorded(args.curves)["per_trial"]
        if t["state"] == "COMPLETE"
    ]
    finals = [t.value for t in trials]
    rows = []
    for epoch in range(1, args.epochs + 1):
        raw = [t.intermediate_values[epoch] for t in trials]
        corrected = [
            t.intermediate_values[epoch]
            + horizon_slope([o for o in trials if o is not t], epoch) * math.log(t.params["learning_rate"])
            for t in trials
        ]
        rows.append(
            {
                "epoch": epoch,
                "raw": round(float(spearmanr(raw, finals)[0]), 2),
                "corrected": round(float(spearmanr(corrected, finals)[0]), 2),
            }
        )
        print(f"epoch {epoch}: {rows[-1]['raw']:+.2f} -> {rows[-1]['corrected']:+.2f}", file=sys.stderr)
    return {"bench": "horizon", "curves": str(args.curves), "trials": len(trials), "rows": rows}


def compare(args) -> dict:
    """A pruned study against its unpruned reference recorded at another time.

    The trials both studies drew with identical parameters did the same work, so their times
    give the host's speed difference; the reference's wall time is scaled by it. Epochs trained
    give the same ratio without any clock.
    """
    ref_study, pruned_study = _recorded(args.curves), _recorded(args.pruned)
    reference, pruned = ref_study["per_trial"], pruned_study["per_trial"]
    by_params = {json.dumps(t["params"], sort_keys=True): t for t in reference}
    spent = same_work = 0.0
    shared = []
    for t in pruned:
        ref = by_params.get(json.dumps(t["params"], sort_keys=True))
        if ref is None or not t.get("seconds"):
            continue
        per_epoch = (ref["seconds"] - args.overhead) / ref["epochs_run"]
        spent += t["seconds"] - args.overhead
        same_work += t["epochs_run"] * per_epoch
        shared.append(t["number"])
    if not shared:
        raise SystemExit(f"{args.pruned}: no trial shares its parameters with {args.curves}")
    speed = spent / same_work
    epochs = sum(t["epochs_run"] or 0 for t in pruned)
    full = sum(t["epochs_run"] or 0 for t in reference)
    best_ref, best = ref_study["best_value"], pruned_study["best_value"]
    out = {
        "bench": "compare",
        "reference": str(args.curves),
        "pruned": str(args.pruned),
        "shared_trials": shared,
        "host_speed_factor": round(speed, 3),
        "time_ratio_raw": round(pruned_study["seconds"] / ref_study["seconds"], 3),
        "time_ratio": round(pruned_study["seconds"] / (ref_study["seconds"] * speed), 3),
        "epochs_ratio": round(epochs / full, 3),
        "best_reference": best_ref,
        "best": best,
        "points": round(100 * (best - best_ref), 2),
    }
    print({k: v for k, v in out.items() if k not in ("reference", "pruned")}, file=sys.stderr)
    return out


def retime(args) -> dict:
    """Time two recorded studies' trials again, interleaved, so host drift hits both alike.

    A seeded study is deterministic here (the repeated seed-44 study reached the same 20 values),
    so its work is fixed: each trial's parameters and the epochs it ran. This trains every trial
    of both studies for exactly its recorded epochs, as ``ferflow tune`` would, alternating
    between the studies trial by trial (and which goes first in each pair). It checks each
    trial's per-epoch tuning accuracy against the recorded curve; a study's trial 0, the first
    training of its process, does not repeat after the warm-up (the later trials do). Optuna's own
    bookkeeping (sampler, storage) is not in these times; `pruning` measures whole studies.
    """
    import optuna

    from ferflow.tune import Objective, load_tuning_data

    studies = {"reference": _recorded(args.curves), "pruned": _recorded(args.pruned)}
    for name, study in studies.items():
        recorded = study.get("args", {})
        for key in (
            "subset",
            "epochs",
            "steps",
            "width",
            "batch",
            "depths",
            "model",
            "lr_warmup",
            "precision",
        ):
            if key in recorded and recorded[key] != str(getattr(args, key)):
                raise SystemExit(
                    f"{name} study was recorded with --{key.replace('_', '-')} {recorded[key]}, "
                    f"not {getattr(args, key)}: pass the options it was run with"
                )
    with tempfile.TemporaryDirectory(prefix="ferflow-bench-retime-") as tmp:  # the config's storage only
        cfg = bench_config(args, Path(tmp), f"sqlite:///{tmp}/unused.db", "retime", "none", 1, fixed=False)
        data = load_tuning_data(args.dataset)

        def timed(trial: dict) -> dict:
            """The trial as `ferflow tune` runs it (same objective, same clock), never pruned."""
            stop = _stop_after(trial["epochs_run"])
            fixed = optuna.trial.FixedTrial(trial["params"], number=trial["number"])
            value = Objective(cfg, data, callbacks=[stop], verbose=False)(fixed)
            return {
                "number": trial["number"],
                "epochs": len(stop.values),
                "seconds": fixed.user_attrs["seconds"],
                "value": value,
                "same_curve": _same_curve(stop.values, trial["curve"][: len(stop.values)]),
            }

        n = max(len(s["per_trial"]) for s in studies.values())
        n = min(n, args.trials) if args.trials else n
        # untimed: the process's first training pays one-off costs (TF start-up, first kernels)
        timed({**studies["reference"]["per_trial"][0], "epochs_run": 1})
        timings: dict[str, list[dict]] = {"reference": [], "pruned": []}
        for i in range(n):
            order = ["reference", "pruned"] if i % 2 == 0 else ["pruned", "reference"]
            for name in order:
                trials = studies[name]["per_trial"]
                if i < len(trials):
                    timings[name].append(timed(trials[i]))
                    t = timings[name][-1]
                    print(
                        f"{name:<9} trial {t['number']:>2}: {t['epochs']:>2} epochs, {t['seconds']:7.1f} s, "
                        f"{t['value']:.4f}{'' if t['same_curve'] else ' (its recorded curve differs)'}",
                        file=sys.stderr,
                        flush=True,
                    )
    total = {name: round(sum(t["seconds"] for t in ts), 1) for name, ts in timings.items()}
    return {
        "bench": "retime",
        "reference": str(args.curves),
        "pruned": str(args.pruned),
        "pairs": n,
        "seconds": total,
        "time_ratio": round(total["pruned"] / total["reference"], 3),
        "curves_reproduced": {name: sum(t["same_curve"] for t in ts) for name, ts in timings.items()},
        "per_trial": timings,
    }


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


def firststep(args) -> dict:
    """A trial's fixed cost: seconds from the start of ``fit`` to the end of the first training
    batch (graph tracing and set-up) against a later batch, for the untuned trial of the bench's
    space trained ``--epochs`` epochs as ``ferflow tune`` does, ``--trials`` times in one process."""
    import keras
    import optuna

    from ferflow.tune import Objective, baseline_params, load_tuning_data

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.marks = {"begin": time.perf_counter()}

        def on_train_batch_end(self, batch, logs=None):
            if batch in (0, 1, 11):
                self.marks[f"batch{batch}"] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="ferflow-bench-firststep-") as tmp:  # the config's storage only
        cfg = bench_config(args, Path(tmp), f"sqlite:///{tmp}/unused.db", "firststep", "none", 1, fixed=True)
        data = load_tuning_data(args.dataset)
        rows = []
        for run in range(args.trials):
            clock = Clock()
            trial = optuna.trial.FixedTrial({**_first_choices(cfg), **baseline_params(cfg)})
            Objective(cfg, data, callbacks=[clock], verbose=False)(trial)
            m = clock.marks
            rows.append(
                {
                    "run": run,
                    "first_batch_s": round(m["batch0"] - m["begin"], 2),
                    "later_batch_s": round((m["batch11"] - m["batch1"]) / 10, 3),
                    "trial_s": trial.user_attrs["seconds"],
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)
    return {"bench": "firststep", "width": cfg.space.width[0], "batch": cfg.space.batch_size[0], "rows": rows}


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
    "replay": replay,
    "reaction": reaction,
    "compare": compare,
    "simulate": simulate,
    "horizon": horizon,
    "retime": retime,
    "paired": paired,
    "firststep": firststep,
    "scaling": scaling,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", choices=list(BENCHES))
    ap.add_argument(
        "curves",
        nargs="?",
        type=Path,
        help="replay, reaction, compare, simulate, horizon, retime: a study's JSON; paired: optional",
    )
    ap.add_argument(
        "pruned",
        nargs="?",
        type=Path,
        help="compare, retime, paired (optional): the pruned study's JSON; simulate: a second study",
    )
    ap.add_argument("--overhead", type=float, default=8.0, help="replay: seconds per trial besides epochs")
    ap.add_argument("--param", default="label_scheme", help="reaction: the categorical parameter")
    ap.add_argument("--seeds", type=int, default=40, help="reaction: seeds per step; simulate: studies")
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
    if (
        args.bench in ("replay", "reaction", "compare", "simulate", "horizon", "retime")
        and args.curves is None
    ):
        ap.error(f"{args.bench} needs the JSON of an earlier `pruning --out` run")
    if args.bench in ("compare", "retime") and args.pruned is None:
        ap.error(f"{args.bench} needs the unpruned reference's JSON and the pruned study's JSON")
    bench = BENCHES[args.bench]
    result = {**info, **bench(args)}
    result["load_after"] = [round(x, 1) for x in os.getloadavg()]
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
