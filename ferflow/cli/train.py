"""``ferflow train`` and ``ferflow evaluate`` (ferflow.train, ferflow.recipes, ferflow.evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferflow.cli.common import PATHS, USAGE, fail, load_splits, require_dataset, require_sqlite_file
from ferflow.config import DistributeMode, HeadName, SourceFormat

app = typer.Typer()


def _recipe_from_study(cfg, study: str, storage: str | None):
    """``cfg`` with the best trial's values of an Optuna study; says which values it took."""
    from ferflow.tune import TuneError, best_train_config

    try:
        cfg = best_train_config(study, storage, base=cfg)
    except TuneError as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    typer.echo(
        f"recipe from study {study!r}: lr {cfg.learning_rate:.3g}, weight decay "
        f"{cfg.weight_decay:.3g}, width {cfg.width}, dropout {cfg.dropout:.2f}, batch {cfg.batch_size}, "
        f"scheme {cfg.label_scheme.value}, rb margin {cfg.rb_margin:.3f}, erasing "
        f"{cfg.augment.erase_prob:.2f}, rotation {cfg.augment.rotation_deg:.1f}°"
    )
    return cfg


@app.command("train")
def train_cmd(
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", help="recipe: a .yaml/.toml file, or a name in configs/ (reference, smoke)."
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="override a recipe field, e.g. --set epochs=10 --set augment.erase_prob=0.3."
        ),
    ] = None,
    dataset: Annotated[
        Path, typer.Option(help="canonical dataset folder (or a raw layout with --format).")
    ] = PATHS.canonical,
    source_format: Annotated[
        SourceFormat | None, typer.Option("--format", help="ingest a raw layout in memory first.")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="checkpoint/output folder.")] = None,
    resume: Annotated[bool, typer.Option(help="continue the interrupted run in --run-dir.")] = False,
    export_dir: Annotated[
        Path | None, typer.Option(help="also write model.onnx, metrics.json, MODEL_CARD.md here.")
    ] = None,
    track: Annotated[bool, typer.Option(help="log to MLflow (MLFLOW_TRACKING_URI).")] = True,
    from_study: Annotated[
        str | None,
        typer.Option(help="Optuna study: its best trial's values replace the tuned fields."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="storage of --from-study (default: $FERFLOW_OPTUNA_STORAGE, else sqlite:///optuna.db)."
        ),
    ] = None,
    distribute: Annotated[
        DistributeMode | None,
        typer.Option(
            help="spread the fit: auto (TF_CONFIG set: multi-worker; several GPUs: mirrored; "
            "else none). Default: the recipe's `distribute`."
        ),
    ] = None,
    head: Annotated[
        HeadName | None,
        typer.Option(
            help="classifier on the backbone's features: softmax, or xgboost (trees, exported "
            "into the same ONNX graph). Default: the recipe's `head`."
        ),
    ] = None,
    print_recipe: Annotated[
        bool, typer.Option("--print-recipe", help="print the resolved recipe as YAML and exit.")
    ] = False,
) -> None:
    """Train a model on a dataset version; track, evaluate and export it.

    The hyper-parameters are a recipe (TrainConfig): the defaults, or --config, with --set on top.
    """
    from ferflow.recipes import RecipeError, dump_recipe, load_recipe

    try:
        flags = [f"{k}={v.value}" for k, v in (("distribute", distribute), ("head", head)) if v is not None]
        cfg = load_recipe(config, [*(overrides or ()), *flags])
    except RecipeError as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    if print_recipe:
        typer.echo(dump_recipe(cfg), nl=False)
        return
    # before TensorFlow's import (seconds): a wrong path is answered at once
    require_dataset(dataset, source_format)
    if from_study is not None:
        from ferflow.config import default_optuna_storage

        require_sqlite_file(
            storage or default_optuna_storage(),
            "Optuna storage",
            "pass --storage, or run `ferflow tune` first",
        )
        cfg = _recipe_from_study(cfg, from_study, storage)
    from ferflow.train import train

    data = (
        load_splits(dataset, source_format, "ferplus8", quiet=False) if source_format is not None else dataset
    )
    try:
        # the MLflow run name's recipe part: the study it came from, or the recipe's name
        recipe = f"study-{from_study}" if from_study else (Path(config).stem if config else None)
        result = train(cfg, data, run_dir, resume=resume, track=track, export_dir=export_dir, recipe=recipe)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    test = result.metrics.get("test") or result.metrics.get("tune") or {}
    typer.echo(
        f"trained {cfg.model} for {len(result.history)} epochs in {result.train_seconds / 60:.1f} min; "
        f"accuracy {100 * test.get('accuracy', float('nan')):.2f} %, "
        f"macro-F1 {test.get('macro_f1', float('nan')):.3f}  ({result.run_dir})"
    )
    if result.mlflow_run_id:
        typer.echo(f"MLflow run {result.mlflow_run_id}; ONNX model runs:/{result.mlflow_run_id}/onnx")
