"""``ferflow tune``: search the training recipe with Optuna (ferflow.tune).

The study's settings (pruner, epochs per trial, search space, the base recipe) are one
``TuneConfig``: its defaults, a YAML/TOML file (``--config``) and ``--set KEY=VALUE`` on top,
checked like a training recipe (:mod:`ferflow.recipes`). Flags cover only how this invocation
runs: which study, where it is stored, how many trials and workers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from ferflow.cli.common import PATHS, USAGE, fail, require_dataset

app = typer.Typer()


@app.command("tune")
def tune_cmd(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TuneConfig as a .yaml/.toml file.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="override a field, e.g. --set pruner=asha --set epochs=18 --set base.model=cnn "
            "--set space.width=[16,24].",
        ),
    ] = None,
    study: Annotated[str | None, typer.Option(help="study name; an existing study is resumed.")] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL (default: $FERFLOW_OPTUNA_STORAGE, else sqlite:///optuna.db)."),
    ] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", "-n", min=1, help="new trials (all workers together).")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="worker processes sharing the study.")] = None,
    timeout: Annotated[float | None, typer.Option(min=0, help="seconds per worker; 0 = no limit.")] = None,
    pin: Annotated[
        bool | None, typer.Option("--pin/--no-pin", help="one core per worker (default: when workers > 1).")
    ] = None,
    dataset: Annotated[
        Path, typer.Option(help="canonical dataset folder (Train only is read).")
    ] = PATHS.canonical,
    report: Annotated[
        Path | None, typer.Option(help="also write best_params.json, trials.csv and plots here.")
    ] = None,
) -> None:
    """Search the training recipe with Optuna (TPE + pruning); resumable, shared by many workers."""
    from ferflow.recipes import RecipeError, load_tune_config

    try:
        cfg = load_tune_config(config, overrides or ())
    except RecipeError as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    require_dataset(dataset, None)  # before Optuna/TensorFlow, and before a study is created
    run = {"study": study, "storage": storage, "trials": trials, "workers": workers, "timeout": timeout}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in run.items() if v is not None})
    from ferflow.canonical import open_dataset
    from ferflow.tune import TuneError, finalize_study, run_study

    try:
        result = run_study(cfg, open_dataset(dataset), pin=pin)
        if report is not None:
            finalize_study(dataclasses.replace(cfg, track=False), out_dir=report)
    except (FileNotFoundError, ValueError, TuneError) as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    if report is not None:
        typer.echo(f"study report: {report}")
    if result.best_trial is None:
        raise fail(
            "error: no trial of the study finished (see the trials above; raise --trials or --timeout)"
        )
