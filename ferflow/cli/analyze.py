"""``ferflow analyze``: emotions per face for photos, folders and videos (ferflow.footage)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ferflow.cli.common import USAGE, fail, require_model_ref
from ferflow.footage import AnalyzeConfig

app = typer.Typer()
_DEFAULT = AnalyzeConfig()


def _smooth_seconds(text: str) -> float:
    if text.strip().lower() in ("none", "0", "off"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise fail(f"error: --smooth {text!r}: give seconds (e.g. 0.5) or 'none'", USAGE) from None
    if value < 0:
        raise fail(f"error: --smooth {text!r}: seconds must be >= 0", USAGE)
    return value


@app.command("analyze")
def analyze_cmd(
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="photos, folders (searched recursively) and videos.")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="table to write: .csv, .parquet or .jsonl.")
    ] = Path("emotions.csv"),
    webcam: Annotated[
        int | None, typer.Option(help="camera index: analyse it live until Ctrl-C (instead of INPUTS).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="an ONNX file or a folder holding one, or an MLflow URI (runs:/RUN_ID/onnx, "
            "models:/NAME@ALIAS, models:/NAME/VERSION); default: the reference model."
        ),
    ] = None,
    fps: Annotated[
        float, typer.Option(help="video frames analysed per second; 0: every frame.")
    ] = _DEFAULT.fps,
    start: Annotated[float, typer.Option(help="first second of video analysed.")] = _DEFAULT.start_s,
    end: Annotated[
        float, typer.Option(help="last second of video analysed; 0: to the end.")
    ] = _DEFAULT.end_s,
    smooth: Annotated[
        str, typer.Option(help="time constant in seconds of the per-track smoothing, or 'none'.")
    ] = str(_DEFAULT.smooth_s),
    summary: Annotated[
        Path | None,
        typer.Option(help="JSON per video track: share of time per emotion, dominant per window, onsets."),
    ] = None,
    window: Annotated[float, typer.Option(help="--summary's window in seconds.")] = 10.0,
    plot: Annotated[Path | None, typer.Option(help="folder for one timeline PNG per video track.")] = None,
    annotate: Annotated[
        Path | None, typer.Option(help="OUT.mp4: the video with boxes, track ids and smoothed labels drawn.")
    ] = None,
) -> None:
    """One row per face (per analysed frame for video), with its box, label and class
    probabilities; videos add time, track id, quality flags and smoothed probabilities."""
    require_model_ref(model)  # before OpenCV/ONNX Runtime/MLflow imports
    from ferflow.footage import FootageError, iter_rows, webcam_rows, write_rows
    from ferflow.model_uri import ModelNotFound

    if fps < 0 or start < 0 or end < 0 or (end and end <= start):
        raise fail("error: --fps, --start and --end must be >= 0, and --end after --start", USAGE)
    if window <= 0:
        raise fail("error: --window must be > 0 seconds", USAGE)
    config = AnalyzeConfig(
        fps=fps, start_s=start, end_s=end, smooth_s=_smooth_seconds(smooth), annotate=str(annotate or "")
    )
    if (webcam is None) == (not inputs):
        raise fail("error: give INPUTS (photos, folders, videos) or --webcam N, not both or neither", USAGE)
    with _warnings_per_file() as failed:
        try:
            if webcam is not None:
                rows = webcam_rows(webcam, model, config)
            else:
                rows = iter_rows(inputs, model, config)
            if summary is not None or plot is not None:
                rows = list(rows)  # the timelines need every row
            path = write_rows(rows, out)
        except (FootageError, ModelNotFound) as exc:
            raise fail(f"error: {exc}", USAGE) from exc
    typer.secho(f"wrote {path}", fg=typer.colors.GREEN)
    if summary is not None or plot is not None:
        _timelines(rows, summary, window, plot)
    if failed:  # the table holds the rest; the exit code says something failed
        raise fail(
            f"warning: {len(failed)} photo(s) or video(s) failed, listed above; the table holds the rest", 1
        )


@contextmanager
def _warnings_per_file() -> Iterator[list[str]]:
    """Each skipped file as one ``warning:`` line on stderr when it happens (above the
    progress bars); yields the list of the photos and videos that failed."""
    from tqdm import tqdm

    from ferflow.footage import FailedInput, SkippedInput

    failed: list[str] = []
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
        if not issubclass(category, SkippedInput):
            shown(message, category, *args, **kwargs)
            return
        if issubclass(category, FailedInput):
            failed.append(str(message))
        with tqdm.external_write_mode(file=sys.stderr):  # above the progress bar, not through it
            typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", SkippedInput)
        warnings.showwarning = show
        yield failed


def _timelines(rows: list[dict], summary: Path | None, window: float, plot: Path | None) -> None:
    import json

    import pandas as pd

    from ferflow.footage import plot_tracks, summarize

    table = pd.DataFrame(rows)
    if summary is not None:
        tmp = summary.with_name(f".{summary.name}.tmp")
        tmp.write_text(json.dumps(summarize(table, window), indent=1))
        tmp.replace(summary)
        typer.echo(f"wrote {summary}")
    if plot is not None:
        classes = [
            c.removeprefix("smooth_")
            for c in table.columns
            if c.startswith("smooth_") and c != "smooth_label"
        ]
        for path in plot_tracks(table, plot, classes):
            typer.echo(f"wrote {path}")
