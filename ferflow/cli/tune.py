"""``ferflow tune``: search the training recipe with Optuna (ferflow.tune)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferflow.cli.common import PATHS, fail
from ferflow.config import (
    PrunerName,
    PruneSignal,
)

app = typer.Typer()


@app.command("tune")
def tune_cmd(
    trials: Annotated[int, typer.Option("--trials", "-n", help="new trials (all workers together).")] = 20,
    timeout: Annotated[float, typer.Option(help="seconds per worker; 0 = no limit.")] = 0.0,
    storage: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL (default: $FERFLOW_OPTUNA_STORAGE, else sqlite:///optuna.db)."),
    ] = None,
    study: Annotated[str, typer.Option(help="study name; an existing study is resumed.")] = "ferflow",
    workers: Annotated[int, typer.Option(help="worker processes sharing the study.")] = 1,
    pin: Annotated[
        bool | None, typer.Option("--pin/--no-pin", help="one core per worker (default: when workers > 1).")
    ] = None,
    subset: Annotated[int, typer.Option(help="cap on training images per trial; 0 = all.")] = 0,
    pruner: Annotated[PrunerName, typer.Option(help="cuts unpromising trials after an epoch.")] = (
        PrunerName.MEDIAN
    ),
    prune_on: Annotated[
        PruneSignal, typer.Option(help="what the pruner compares after each epoch: tuning accuracy or loss.")
    ] = PruneSignal.ACCURACY,
    seed: Annotated[int, typer.Option(help="TPE sampler seed.")] = 42,
    epochs: Annotated[int, typer.Option(help="epochs per trial (the pruner's steps).")] = 10,
    steps_per_epoch: Annotated[int, typer.Option(help="0 = one pass over the training images.")] = 0,
    startup_trials: Annotated[int, typer.Option(help="random trials before TPE and pruning.")] = 5,
    warmup_epochs: Annotated[
        int,
        typer.Option(help="epochs no pruner judges; the first decision follows epoch warmup + 1."),
    ] = 1,
    reduction_factor: Annotated[
        int, typer.Option(help="asha/hyperband: 1 trial in this many goes on past each rung.")
    ] = 3,
    prune_within: Annotated[
        str,
        typer.Option(help="label_scheme, width or batch_size: prune against trials of the same choice."),
    ] = "",
    horizon_correction: Annotated[
        bool,
        typer.Option(help="judge trials by accuracy plus the later gain their learning rate predicts."),
    ] = False,
    model: Annotated[str, typer.Option(help="ran, ran_fm, resnet or cnn.")] = "ran_fm",
    dataset: Annotated[
        Path, typer.Option(help="canonical dataset folder (Train only is read).")
    ] = PATHS.canonical,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the study.")] = "ferflow-tune",
    track: Annotated[bool, typer.Option(help="study and trials as MLflow runs.")] = True,
    baseline: Annotated[
        bool,
        typer.Option(help="a new study's first trial is the untuned recipe; the summary reports the gain."),
    ] = True,
    report: Annotated[
        Path | None, typer.Option(help="also write best_params.json, trials.csv and plots here.")
    ] = None,
) -> None:
    """Search the training recipe with Optuna (TPE + pruning); resumable, shared by many workers."""
    import dataclasses

    from ferflow.config import TuneConfig

    base = TuneConfig().base
    cfg = TuneConfig(
        study=study,
        storage=storage or "",
        trials=trials,
        timeout=timeout,
        workers=workers,
        subset=subset,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        pruner=pruner,
        prune_on=prune_on,
        startup_trials=startup_trials,
        warmup_epochs=warmup_epochs,
        reduction_factor=reduction_factor,
        prune_within=prune_within,
        horizon_correction=horizon_correction,
        seed=seed,
        base=dataclasses.replace(base, model=model),
        experiment=experiment,
        track=track,
        baseline=baseline,
    )
    from ferflow.canonical import open_dataset
    from ferflow.tune import TuneError, finalize_study, run_study

    try:
        data = open_dataset(dataset)
        result = run_study(cfg, data, pin=pin)
        if report is not None:
            finalize_study(dataclasses.replace(cfg, track=False), out_dir=report)
    except (FileNotFoundError, ValueError, TuneError) as exc:
        raise fail(f"error: {exc}", 2) from exc
    if report is not None:
        typer.echo(f"study report: {report}")
    if result.best_trial is None:
        raise typer.Exit(1)
