"""``ferflow evaluate``: one model on several datasets, and the robustness suite (ferflow.evaluate)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ferflow.cli.common import (
    PATHS,
    USAGE,
    fail,
    require_model_ref,
    require_path,
    require_run_id,
    require_tracking_store,
)
from ferflow.config import TestTimeAugmentation

app = typer.Typer()


def _check_arguments(model: str | None, datasets: list[Path], run_id: str | None) -> None:
    """Cheap checks first: before TensorFlow/MLflow imports, and before MLflow could create an
    empty mlflow.db for a registry URI."""
    require_model_ref(model)
    for path in datasets:
        require_path(path, "--dataset", hint="a canonical dataset, a FERPlus folder, a CSV or photos")
    if run_id is not None:
        require_run_id(run_id)
        require_tracking_store()


@app.command("evaluate")
def evaluate_cmd(
    dataset: Annotated[
        list[Path] | None,
        typer.Option(
            help="repeatable: a canonical dataset (each source scored apart), a FERPlus folder, a FER2013 "
            "CSV or a folder tree of photos (through face detection). Default: artifacts/canonical."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="an ONNX file or a folder holding one, or an MLflow URI: runs:/RUN_ID/onnx, "
            "models:/NAME@ALIAS (models:/ferflow@champion) or models:/NAME/VERSION. "
            "Default: FERFLOW_MODEL, else the committed reference model."
        ),
    ] = None,
    split: Annotated[str | None, typer.Option(help="split to score (default: the most held-out).")] = None,
    prior: Annotated[
        str | None,
        typer.Option(
            help="logit adjustment to a target prior: 'uniform' (over each dataset's classes) or CLASS=P,..."
        ),
    ] = None,
    robustness: Annotated[
        bool, typer.Option("--robustness", help="the robustness suite on the first dataset's first source.")
    ] = False,
    tta: Annotated[
        TestTimeAugmentation | None,
        typer.Option(help="test-time augmentation; default: what the model's metadata says."),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the random shifts (noise).")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="folder for evaluation.json/.md and robustness.png.")
    ] = None,
    card: Annotated[
        Path | None, typer.Option(help="model card (MODEL_CARD.md) whose evaluation section to write.")
    ] = None,
    track: Annotated[bool, typer.Option("--track", help="log metrics and files to MLflow.")] = False,
    run_id: Annotated[
        str | None, typer.Option(help="with --track: log into this MLflow run (a training run).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON.")] = False,
) -> None:
    """Score a model on every dataset over each dataset's own classes (the all-classes figure
    beside it); optionally prior-corrected, with the robustness suite."""
    _check_arguments(model, dataset or [PATHS.canonical], run_id)
    from ferflow import evaluate as ev
    from ferflow.evaluate import (
        EvalDataError,
        card_section,
        evaluate_datasets,
        write_report,
    )
    from ferflow.model_uri import ModelNotFound

    try:
        result = evaluate_datasets(
            model, dataset or [PATHS.canonical], split=split, prior=prior, robustness=robustness,
            tta=tta, seed=seed, progress=not as_json,
        )  # fmt: skip
    except (EvalDataError, ModelNotFound, FileNotFoundError, ValueError) as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    files = write_report(result, out or PATHS.artifacts / "evaluate") if out or track else []
    if card is not None:
        files.append(ev.update_card(card, result, "ferflow " + " ".join(sys.argv[1:])))
    if track:
        result["mlflow_run_id"] = ev.track(result, files, run_id)
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    typer.echo(f"model {result['model']} ({result['version']}), TTA {result['tta']}")
    typer.echo(card_section(result))
    for path in files:
        typer.echo(f"wrote {path}")
    if "mlflow_run_id" in result:
        typer.echo(f"MLflow run {result['mlflow_run_id']}")
