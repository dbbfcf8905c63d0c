"""``ferflow registry``: register, gate-and-promote, roll back (ferflow.registry, MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferflow.cli.common import (
    FAILED,
    PATHS,
    USAGE,
    CliError,
    fail,
    load_splits,
    require_dataset,
    require_path,
    require_run_id,
    require_tracking_store,
)
from ferflow.config import RegistryConfig, SourceFormat

app = typer.Typer(help="MLflow model registry: register, gate-and-promote, roll back.", no_args_is_help=True)
ModelNameOpt = Annotated[str, typer.Option("--name", help="registered model name.")]


def _failed(exc: Exception) -> CliError:
    """A registry error as the one line: exit 2 for a wrong request (RegistryUsageError is a
    ValueError: an unknown model or version, a gate below no regression), else 1."""
    return fail(f"error: {exc}", USAGE if isinstance(exc, ValueError) else FAILED)


@app.command("register")
def registry_register(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a finished `ferflow train` run.")],
    name: ModelNameOpt = "ferflow",
) -> None:
    """Register a training run's ONNX model as a new version and alias it `challenger`."""
    require_run_id(run_id)
    require_tracking_store()
    from ferflow.registry import RegistryError, register

    try:
        version = register(run_id, RegistryConfig(model_name=name))
    except RegistryError as exc:
        raise _failed(exc) from exc
    typer.echo(f"registered {name} version {version.version} (alias challenger) from run {run_id}")


@app.command("promote")
def registry_promote(
    dataset: Annotated[Path, typer.Option(help="evaluation set: canonical folder or raw layout.")] = (
        PATHS.canonical
    ),
    source_format: Annotated[
        SourceFormat | None, typer.Option("--format", help="layout of a raw --dataset.")
    ] = (None),
    split: Annotated[str, typer.Option(help="split to evaluate on.")] = "valid",
    version: Annotated[str | None, typer.Option(help="version to gate (default: the challenger).")] = None,
    name: ModelNameOpt = "ferflow",
    margin: Annotated[
        float, typer.Option(help="required accuracy gain over the champion (< 0 needs --force).")
    ] = 0.0,
    f1_margin: Annotated[float, typer.Option(help="allowed macro-F1 regression (> 0 needs --force).")] = 0.0,
    dataset_tolerance: Annotated[
        float,
        typer.Option(
            help="allowed accuracy regression on each source dataset (photos, ...); "
            "above the default needs --force."
        ),
    ] = RegistryConfig.dataset_tolerance,
    probe_image: Annotated[Path | None, typer.Option(help="photo for the /predict infra check.")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="gate below no regression anyway (recorded on the version as gate.forced)."
        ),
    ] = False,
) -> None:
    """Gate the challenger: infra-validate, compare with the champion, promote or refuse (exit 1).

    Every decision is recorded on the version: gate.<n> (kept) and gate.* (the latest), with the
    margins, the dataset, its data version and the split."""
    cfg = RegistryConfig(
        name,
        margin,
        f1_margin,
        str(probe_image) if probe_image else None,
        dataset_tolerance=dataset_tolerance,
    )
    from ferflow.registry import EvalSet, RegistryError, check_gate, promote  # no MLflow import

    try:
        forced = check_gate(cfg, force)
    except RegistryError as exc:
        raise _failed(exc) from exc
    require_dataset(dataset, source_format)
    if probe_image is not None:
        require_path(probe_image, "--probe-image", folder=False)
    require_tracking_store()
    from ferflow.evaluate import source_label_sets

    splits, meta = load_splits(dataset, source_format, "ferplus8", quiet=True)
    if split not in splits:
        raise fail(f"error: {dataset} has no split {split!r} (pass --split, one of {sorted(splits)})", USAGE)
    if forced:
        typer.secho(f"warning: gate forced below no regression: {forced}", fg=typer.colors.YELLOW, err=True)
    try:
        decision = promote(
            splits[split],
            list(meta["classes"]),
            version,
            cfg,
            label_sets=source_label_sets(meta),
            evaluated_on=EvalSet.of(dataset, meta, split),
            force=force,
        )
    except RegistryError as exc:
        raise _failed(exc) from exc
    typer.echo(decision.human())
    if not decision.promoted:
        raise fail(f"error: {name} was not promoted (the gate's reasons are above)")


@app.command("rollback")
def registry_rollback(name: ModelNameOpt = "ferflow") -> None:
    """Move `champion` back to the previous champion."""
    require_tracking_store()
    from ferflow.registry import RegistryError, rollback

    try:
        current, previous = rollback(RegistryConfig(model_name=name))
    except RegistryError as exc:
        raise _failed(exc) from exc
    typer.echo(f"champion: version {current} -> {previous}")


@app.command("list")
def registry_list(name: ModelNameOpt = "ferflow") -> None:
    """Versions with aliases, gate decisions and metrics."""
    require_tracking_store()
    from ferflow.registry import RegistryError, list_versions

    try:
        rows = list_versions(RegistryConfig(model_name=name))
    except RegistryError as exc:
        raise _failed(exc) from exc
    if not rows:
        typer.echo(f"no versions of {name!r}")
    for row in rows:
        aliases = ",".join(row["aliases"]) or "-"
        gate = row.get("gate.promoted", "-")
        acc = row.get("test_accuracy", row.get("gate.accuracy", "-"))
        typer.echo(
            f"v{row['version']:<4} {aliases:<22} gate={gate:<6} accuracy={acc}  {row.get('gate.reason', '')}"
        )
