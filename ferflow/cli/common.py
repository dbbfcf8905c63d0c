"""What every command module shares: project paths, the one-line failure, loading a dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from ferflow.config import GateConfig, IngestConfig, LabelScheme, LeakagePolicy, Paths, SourceFormat

PATHS = Paths()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` (one line, red, on stderr) and return the exit to raise."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def load_splits(dataset: Path, source_format: SourceFormat | None, class_set: str, quiet: bool):
    """(splits, meta) from a canonical dir, or from a raw layout ingested in memory."""
    from ferflow.canonical import open_dataset

    if source_format is None:
        try:
            ds = open_dataset(dataset)
        except (FileNotFoundError, ValueError) as exc:
            raise fail(f"error: {exc} (or pass --format for a raw layout)", 2) from exc
        return {s: ds.load(s) for s in ds.splits}, ds.meta
    from ferflow.data import IngestError, ingest_to_memory
    from ferflow.validate import GateFailed

    gate = GateConfig(min_class_count=0, leakage=LeakagePolicy.DROP, drop_bad_votes=True)
    config = IngestConfig(source_format, LabelScheme.MAJORITY, class_set, gate)
    try:
        result = ingest_to_memory(dataset, config, progress=not quiet)
    except IngestError as exc:
        raise fail(f"error: {exc}", 2) from exc
    except GateFailed as exc:
        raise fail(exc.report.human()) from exc
    return result.splits, result.meta
