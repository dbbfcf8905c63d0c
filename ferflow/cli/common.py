"""What every command module shares: project paths, the one-line failure, cheap pre-flight
checks of arguments, loading a dataset.

Exit codes (every command): 0 done; 2 a usage or input mistake (an option value, a file named,
an environment variable), fixable by changing the command line or configuration; 1 the command
was valid but its work failed (a gate refused, a port is busy, a run crashed). Either way the
user sees ONE line, ``error: <what> (<how to fix>)``, on stderr; ``ferflow --debug`` shows the
traceback instead. The checks here use only the standard library, so that a mistake is
answered before TensorFlow, MLflow or BentoML are imported (seconds each).
"""

from __future__ import annotations

import errno
import os
import re
import socket
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlparse

import typer

from ferflow.config import (
    CLASS_SETS,
    GateConfig,
    IngestConfig,
    LabelScheme,
    LeakagePolicy,
    Paths,
    SourceFormat,
)

PATHS = Paths()

# --class-set as a choice: `--help` lists the names and a typo is a usage error, not a traceback
ClassSetName = StrEnum("ClassSetName", {name: name for name in CLASS_SETS})

USAGE = 2  # exit code of a usage or input mistake
FAILED = 1  # exit code of a runtime failure


class CliError(Exception):
    """A failure to report as one line on stderr, then exit ``exit_code``; raised through
    :func:`fail` and printed by the app's entry point (``ferflow.cli``), the one place that
    decides between that line and ``--debug``'s traceback."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(one_line(message))
        self.message = str(self.args[0])
        self.exit_code = code


def one_line(message: str) -> str:
    """``message`` as one ``error:``-prefixed line: the user reads one line, a log greps one."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    text = "; ".join(parts) or "failed"
    return text if text.startswith(("error:", "warning:")) else f"error: {text}"


def fail(message: str, code: int = FAILED) -> CliError:
    """The error to raise: ``message`` as one line on stderr, exit ``code`` (2: usage, 1: runtime)."""
    return CliError(message, code)


# --- pre-flight checks: standard library only -----------------------------------------------


def require_path(path: Path, what: str, *, folder: bool | None = None, hint: str = "") -> Path:
    """``path`` exists (and is a folder / a file when ``folder`` says so), else a usage error."""
    fix = f" ({hint})" if hint else ""
    if not path.exists():
        raise fail(f"error: {what} {path}: no such file or directory{fix}", USAGE)
    if folder is True and not path.is_dir():
        raise fail(f"error: {what} {path} is a file, not a folder{fix}", USAGE)
    if folder is False and not path.is_file():
        raise fail(f"error: {what} {path} is a folder, not a file{fix}", USAGE)
    return path


def require_source(src: Path, source_format: SourceFormat | None, what: str = "SRC") -> Path:
    """A raw dataset in ``source_format``'s layout: FERPlus and folder trees are folders; a
    FER2013 CSV is a file (or a folder holding one)."""
    if source_format in (SourceFormat.FERPLUS, SourceFormat.FOLDERS):
        layout = "FER2013*/ split folders" if source_format is SourceFormat.FERPLUS else "class folders"
        return require_path(
            src, what, folder=True,
            hint=f"--format {source_format.value} reads a folder of {layout}; "
            "for photos to label use `ferflow analyze`",
        )  # fmt: skip
    return require_path(src, what)


def require_dataset(dataset: Path, source_format: SourceFormat | None, what: str = "--dataset") -> Path:
    """A canonical dataset folder (its ``meta.json``), or a raw layout with ``--format``."""
    if source_format is not None:
        return require_source(dataset, source_format, what)
    from ferflow.canonical import META_FILE  # numpy only, no TensorFlow

    require_path(dataset, what, folder=True, hint="create one with `ferflow data ingest`")
    if not (dataset / META_FILE).is_file():
        raise fail(
            f"error: {what} {dataset} is not a canonical ferflow dataset (no {META_FILE}) "
            "(create one with `ferflow data ingest`, or pass --format for a raw layout)",
            USAGE,
        )
    return dataset


_RUN_ID = re.compile(r"[0-9a-f]{32}")


def require_run_id(run_id: str) -> str:
    """MLflow run ids are 32 hex digits (uuid4().hex): anything else is a typo, found without MLflow."""
    if not _RUN_ID.fullmatch(run_id):
        raise fail(
            f"error: {run_id!r} is not an MLflow run id (32 hex digits; "
            "`ferflow train` prints it: 'MLflow run <id>')",
            USAGE,
        )
    return run_id


def tracking_uri() -> str:
    """The MLflow tracking URI every command uses (ferflow.config.Paths)."""
    return Paths().mlflow_uri


def require_sqlite_file(url: str, what: str, fix: str) -> str:
    """A ``sqlite:///PATH`` URL must name an existing file: MLflow and Optuna would create an
    empty database (in the current folder, by default) and then report that nothing is in it."""
    if url.startswith("sqlite:///"):  # sqlite:///rel.db or sqlite:////abs.db; sqlite:// is in memory
        db = Path(unquote(urlparse(url).path.removeprefix("/")))
        if not db.is_file():
            raise fail(f"error: no {what} at {db} ({fix})", USAGE)
    return url


def require_tracking_store(uri: str | None = None) -> str:
    """The MLflow tracking store exists (see :func:`require_sqlite_file`)."""
    return require_sqlite_file(
        uri or tracking_uri(),
        "MLflow tracking store",
        "set MLFLOW_TRACKING_URI to your tracking server, or FERFLOW_HOME to the project folder "
        "that holds mlflow.db",
    )


def require_model_ref(model: str | None, what: str = "--model") -> str | None:
    """A model reference (ferflow.model_uri) whose form and store are checked without MLflow:
    a file/folder that exists, ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``, ``runs:/ID/PATH``
    or another ``scheme://`` URI."""
    if model is None or Path(model).exists():
        return model
    forms = "an .onnx file or folder, models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH"
    if model.startswith("models:/"):
        ref = model.removeprefix("models:/")
        if not re.fullmatch(r"[^@/]+(@[^@/]+|/\d+)|m-[0-9a-f]+", ref):
            raise fail(f"error: {what} {model!r} is not a registry URI (expected {forms})", USAGE)
    elif model.startswith("runs:/"):
        run_id, _, path = model.removeprefix("runs:/").partition("/")
        if not path:
            raise fail(f"error: {what} {model!r} names no artifact (expected runs:/RUN_ID/onnx)", USAGE)
        require_run_id(run_id)
    elif "://" not in model:
        raise fail(f"error: {what} {model}: no such file or directory (give {forms})", USAGE)
    if model.startswith(("models:/", "runs:/")):
        require_tracking_store()
    return model


def require_free_port(host: str, port: int) -> None:
    """Binding ``host:port`` works now (BentoML would fail later, with a long traceback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # the same option uvicorn sets: a port left in TIME_WAIT by a stopped server is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise fail(
                f"error: port {port} on {host} {reason} (stop the other server, or pass --port N)", FAILED
            ) from exc


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# --- loading data -----------------------------------------------------------------------------


def load_splits(dataset: Path, source_format: SourceFormat | None, class_set: str, quiet: bool):
    """(splits, meta) from a canonical dir, or from a raw layout ingested in memory."""
    from ferflow.canonical import open_dataset

    require_dataset(dataset, source_format)
    if source_format is None:
        try:
            ds = open_dataset(dataset)
        except (FileNotFoundError, ValueError) as exc:
            raise fail(f"error: {exc} (or pass --format for a raw layout)", USAGE) from exc
        return {s: ds.load(s) for s in ds.splits}, ds.meta
    from ferflow.data import IngestError, ingest_to_memory
    from ferflow.validate import GateFailed

    gate = GateConfig(min_class_count=0, leakage=LeakagePolicy.DROP, drop_bad_votes=True)
    config = IngestConfig(source_format, LabelScheme.MAJORITY, class_set, gate)
    try:
        result = ingest_to_memory(dataset, config, progress=not quiet)
    except IngestError as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    except GateFailed as exc:
        raise gate_failed(exc.report) from exc
    return result.splits, result.meta


def gate_failed(report, out: Path | None = None) -> CliError:
    """The gate's report in full on stdout (it names every offending file), then the one
    ``error:`` line saying what failed, that nothing was written, and how to clean FERPlus."""
    typer.echo(report.human())
    checks = [f.check for f in report.findings]
    hints = []
    if "no_leakage" in checks:
        hints.append("--leakage drop")
    if "vote_sum" in checks:
        hints.append("--drop-bad-votes")
    fix = (
        f"pass {' '.join(hints)} to drop those rows as documented for FERPlus"
        if hints
        else f"fix the files named above{'' if report.data_docs is None else f'; report: {report.data_docs}'}"
    )
    written = "" if out is None else f"; nothing written to {out}"
    return fail(f"error: data gate FAILED ({', '.join(checks) or 'policy'}){written} ({fix})", FAILED)
