"""``ferflow analyze``: emotions per face for photos, folders and videos (ferflow.footage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferflow.cli.common import fail
from ferflow.footage import AnalyzeConfig

app = typer.Typer()
_DEFAULT = AnalyzeConfig()


def _smooth_seconds(text: str) -> float:
    if text.strip().lower() in ("none", "0", "off"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise fail(f"error: --smooth {text!r}: give seconds (e.g. 0.5) or 'none'", 2) from None
    if value < 0:
        raise fail(f"error: --smooth {text!r}: seconds must be >= 0", 2)
    return value


@app.command("analyze")
def analyze_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="photos, folders (searched recursively) and videos.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="table to write: .csv, .parquet or .jsonl.")],
    model: Annotated[
        str | None, typer.Option(help="ONNX file/folder or MLflow URI; default: the reference model.")
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
) -> None:
    """One row per face (per analysed frame for video), with its box, label and class
    probabilities; videos add time, track id, quality flags and smoothed probabilities."""
    from ferflow.footage import FootageError, iter_rows, write_rows
    from ferflow.model_uri import ModelNotFound

    if fps < 0 or start < 0 or end < 0 or (end and end <= start):
        raise fail("error: --fps, --start and --end must be >= 0, and --end after --start", 2)
    config = AnalyzeConfig(fps=fps, start_s=start, end_s=end, smooth_s=_smooth_seconds(smooth))
    try:
        path = write_rows(iter_rows(inputs, model, config), out)
    except (FootageError, ModelNotFound) as exc:
        raise fail(f"error: {exc}", 2) from exc
    typer.secho(f"wrote {path}", fg=typer.colors.GREEN)
