"""The ``ferflow`` command line: one module per stage, each owning its commands.

    ferflow data ...       ferflow/cli/data.py       (ferflow.data, ferflow.validate)
    ferflow train          ferflow/cli/train.py      (ferflow.train, ferflow.recipes)
    ferflow evaluate       ferflow/cli/evaluate.py   (ferflow.evaluate, ferflow.robustness)
    ferflow analyze        ferflow/cli/analyze.py    (ferflow.footage)
    ferflow tune           ferflow/cli/tune.py       (ferflow.tune)
    ferflow registry ...   ferflow/cli/registry.py   (ferflow.registry)
    ferflow serve          ferflow/cli/serve.py      (serving/service.py)
    ferflow pipeline ...   ferflow/cli/pipeline.py   (pipelines/driver.py)

Thin: parse options, build a typed config, call the stage. Heavy imports (TensorFlow, MLflow,
Great Expectations) happen inside commands so that ``ferflow --help`` stays instant.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from ferflow.cli import analyze, data, evaluate, pipeline, registry, serve, train, tune

app = typer.Typer(
    help="ferflow: facial emotion recognition, from versioned data to a served model.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data")
app.add_typer(train.app)
app.add_typer(evaluate.app)
app.add_typer(analyze.app)
app.add_typer(tune.app)
app.add_typer(registry.app, name="registry")
app.add_typer(serve.app)
app.add_typer(pipeline.app, name="pipeline")


def _version(show: bool) -> None:
    if show:
        try:
            typer.echo(f"ferflow {version('ferflow')}")
        except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
            typer.echo("ferflow (not installed)")
        raise typer.Exit()


@app.callback()
def main_options(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit.")
    ] = False,
) -> None:
    """ferflow: facial emotion recognition, from versioned data to a served model."""


def main() -> None:
    app()
