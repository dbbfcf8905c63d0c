"""The ``ferflow`` command line: one module per stage, each owning its commands.

    ferflow data ...       ferflow/cli/data.py       (ferflow.data, ferflow.validate)
    ferflow train          ferflow/cli/train.py      (ferflow.train, ferflow.recipes)
    ferflow evaluate       ferflow/cli/evaluate.py   (ferflow.evaluate, ferflow.robustness)
    ferflow analyze        ferflow/cli/analyze.py    (ferflow.footage)
    ferflow tune           ferflow/cli/tune.py       (ferflow.tune)
    ferflow registry ...   ferflow/cli/registry.py   (ferflow.registry)
    ferflow serve          ferflow/cli/serve.py      (serving/service.py)
    ferflow pipeline ...   ferflow/cli/pipeline.py   (pipelines/driver.py)

Thin: parse options, check them (ferflow.cli.common's pre-flight checks), build a typed config,
call the stage. Heavy imports (TensorFlow, MLflow, Great Expectations) happen inside commands,
after the checks, so that ``ferflow --help`` and every usage mistake answer at once.

Errors are reported in one place, :meth:`_FerflowGroup.main`: every failure is one line
``error: <what> (<how to fix>)`` on stderr, exit 2 for a usage or input mistake and 1 for a
runtime failure; ``ferflow --debug`` (or ``FERFLOW_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os

# Before anything can import TensorFlow: its C++ INFO/WARNING lines (oneDNN, CPU features) are
# noise to a user; MLflow's INFO lines (store migrations) would precede our own one-line error.
# A value the user set wins; --debug turns MLflow's back on.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_MLFLOW_LEVEL_SET_BY_USER = "MLFLOW_LOGGING_LEVEL" in os.environ
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

import sys  # noqa: E402
import traceback  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from ferflow.cli import analyze, data, evaluate, pipeline, registry, serve, train, tune  # noqa: E402
from ferflow.cli.common import FAILED, USAGE, CliError, env_flag, one_line  # noqa: E402

_DEBUG_HINT = "rerun with `ferflow --debug ...` for the traceback"


class _State:
    debug = False  # set by --debug / FERFLOW_DEBUG for this invocation


def _describe(exc: BaseException) -> tuple[str, int]:
    """(one line, exit code) for an exception no command turned into a :class:`CliError`."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        # a path the user named is missing or of the wrong kind
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return one_line(f"error: {where}{exc.strerror or exc} (check the path)"), USAGE
    if isinstance(exc, ValueError) and type(exc).__module__.startswith("ferflow."):
        # ferflow's input errors (RecipeError, IngestError, ModelNotFound, ...) are ValueErrors
        # whose message is written for the user
        return one_line(f"error: {exc}"), USAGE
    if type(exc).__module__.startswith("ferflow."):
        return one_line(f"error: {exc} ({_DEBUG_HINT})"), FAILED
    text = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return one_line(f"error: {detail} ({_DEBUG_HINT})"), FAILED


def _usage_line(exc: typer.TyperException) -> str:
    """A Click usage error (bad option value, missing argument, unknown option) as one line."""
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path} --help" if ctx is not None else "ferflow --help"
    # Typer coerces values with Pydantic, whose messages start "Value error, "
    message = exc.format_message().replace(": Value error, ", ": ")
    return one_line(f"error: {message} (see `{where}`)")


def _report(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr (its traceback under --debug); return the exit code."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `ferflow data` alone: the help, as Typer does
        if exc.format_message().strip():  # type: ignore[attr-defined]  # Rich printed it already
            exc.show()  # type: ignore[attr-defined]
        return exc.exit_code  # type: ignore[attr-defined]
    if isinstance(exc, typer.TyperException):  # Click's usage errors (Typer vendors Click)
        code = getattr(exc, "exit_code", USAGE)
        line = _usage_line(exc) if code == USAGE else one_line(exc.format_message())
    elif isinstance(exc, typer.Abort):
        line, code = "error: aborted", FAILED
    elif isinstance(exc, CliError):
        line, code = exc.message, exc.exit_code
    else:
        line, code = _describe(exc)
    if _State.debug:  # the traceback instead of the line; the exit code stays what it says
        traceback.print_exception(exc, file=sys.stderr)
        return code
    typer.secho(line, fg=typer.colors.RED, err=True)
    return code


class _FerflowGroup(TyperGroup):
    """The top-level group: runs Click in non-standalone mode and reports what it raises."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        _State.debug = env_flag("FERFLOW_DEBUG")
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except Exception as exc:
            if not standalone_mode:  # the caller handles it
                raise
            sys.exit(_report(exc))
        if not standalone_mode:
            return rv
        # non-standalone Typer returns an explicit exit's code (typer.Exit(1), --help's 0)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_FerflowGroup,
    help="ferflow: facial emotion recognition, from versioned data to a served model.",
    no_args_is_help=True,
    # --debug's traceback is the plain Python one: copied into a bug report as it is
    pretty_exceptions_enable=False,
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
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="FERFLOW_DEBUG", help="on failure, show the traceback instead of one line."
        ),
    ] = False,
) -> None:
    """ferflow: facial emotion recognition, from versioned data to a served model."""
    if debug:
        _State.debug = True
        if not _MLFLOW_LEVEL_SET_BY_USER:
            os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"


def main() -> None:
    """``python -m ferflow`` (the console script calls ``app`` itself)."""
    app()
