"""``ferflow data``: pull, ingest, validate and describe datasets (ferflow.data, ferflow.validate)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ferflow.cli.common import (
    PATHS,
    USAGE,
    ClassSetName,
    fail,
    gate_failed,
    require_dataset,
    require_path,
    require_source,
)
from ferflow.config import (
    DEFAULT_SOURCES,
    PHOTO_GATE,
    DataSource,
    GateConfig,
    IngestConfig,
    LabelScheme,
    LeakagePolicy,
    SourceFormat,
)

app = typer.Typer(help="Pull, ingest, validate and describe datasets.", no_args_is_help=True)
FormatOpt = Annotated[SourceFormat, typer.Option("--format", "-f", help="Layout of SRC.")]
SrcArg = Annotated[
    Path,
    typer.Argument(help="Dataset in the given layout (for ferplus: a folder holding FER2013*/)."),
]
SchemeOpt = Annotated[LabelScheme, typer.Option("--scheme", help="FERPlus label scheme.")]
ClassSetOpt = Annotated[ClassSetName, typer.Option("--class-set", help="classes the labels are mapped to.")]
LeakageOpt = Annotated[
    LeakagePolicy,
    typer.Option("--leakage", help="fail on images shared across splits, or drop the less held-out copy."),
]
DropVotesOpt = Annotated[
    bool,
    typer.Option("--drop-bad-votes", help="drop vote rows not summing to the annotator count."),
]
MinCountOpt = Annotated[int, typer.Option("--min-class-count", help="fewest training images per class.")]
ReportOpt = Annotated[Path, typer.Option("--report", help="folder for GX Data Docs and summary.json.")]

_GATE = GateConfig()
_INGEST = IngestConfig()


def _ingest_config(
    source_format: SourceFormat,
    scheme: LabelScheme,
    class_set: ClassSetName,
    leakage: LeakagePolicy,
    drop_bad_votes: bool,
    min_class_count: int,
) -> IngestConfig:
    gate = GateConfig(min_class_count=min_class_count, leakage=leakage, drop_bad_votes=drop_bad_votes)
    return IngestConfig(source_format, scheme, class_set.value, gate)


@app.command("pull")
def data_pull(
    root: Annotated[Path, typer.Option(help="project root (holds .dvc/ and data.dvc).")] = PATHS.root,
) -> None:
    """Materialise data/ from the DVC remote (default remote `storage`)."""
    from ferflow.versioning import DataPullError, pull

    try:
        stats = pull(root)
    except DataPullError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"dvc pull: {stats.get('fetched', 0)} fetched, {len(stats.get('added', []))} added")


def _run_ingest(src: Path, out: Path | None, report: Path, config: IngestConfig) -> None:
    from ferflow.data import IngestError, ingest, ingest_to_memory
    from ferflow.validate import GateFailed

    try:
        if out is None:
            result = ingest_to_memory(src, config, report_dir=report)
        else:
            result = ingest(src, out, config, report_dir=report)
    except IngestError as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    except GateFailed as exc:
        raise gate_failed(exc.report, out) from exc
    typer.echo(result.report.human())
    for split, info in result.meta["splits"].items():
        typer.echo(f"  {split}: {info['n']} images  {info['class_counts']}")
    if out is not None:
        typer.secho(f"canonical dataset written to {out}", fg=typer.colors.GREEN)


def _parse_added(items: list[str]) -> list[DataSource]:
    """``NAME=PATH`` → a photo-tree source with the photo gate."""
    added = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name) or not path:
            raise fail(
                f"error: --add {item!r}: expected NAME=PATH with NAME of a-z, 0-9, - or _ "
                "(e.g. --add clinic=~/faces)",
                USAGE,
            )
        folder = require_path(Path(path).expanduser().resolve(), f"--add {name}", folder=True)
        added.append(DataSource(name, str(folder), SourceFormat.FOLDERS, PHOTO_GATE))
    return added


def _ingest_sources(
    sources: list[DataSource], out: Path, report: Path, scheme: LabelScheme, class_set: ClassSetName
) -> None:
    from ferflow.data import IngestError, ingest_sources
    from ferflow.validate import GateFailed

    try:
        result = ingest_sources(sources, scheme, class_set.value, report_dir=report, root=PATHS.root, out=out)
    except IngestError as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    except GateFailed as exc:
        raise gate_failed(exc.report, out) from exc
    for name, gate_report in result.reports.items():
        typer.echo(f"[{name}] {gate_report.human()}")
    for split, info in result.meta["splits"].items():
        by_source = {n: s["splits"].get(split, 0) for n, s in result.meta["sources"].items()}
        typer.echo(f"  {split}: {info['n']} images {by_source}")
    typer.secho(f"canonical dataset written to {out}", fg=typer.colors.GREEN)


@app.command("ingest")
def data_ingest(
    src: Annotated[
        Path | None,
        typer.Argument(
            help="one dataset in --format's layout; omitted: every source of data/ "
            "(FERPlus and the photos) into one dataset."
        ),
    ] = None,
    add: Annotated[
        list[str] | None,
        typer.Option(
            "--add", help="NAME=PATH: a labelled photo tree (class folders) added to data/'s sources."
        ),
    ] = None,
    source_format: Annotated[
        SourceFormat | None, typer.Option("--format", "-f", help="Layout of SRC.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="canonical dataset folder.")] = PATHS.canonical,
    scheme: SchemeOpt = _INGEST.label_scheme,
    class_set: ClassSetOpt = ClassSetName(_INGEST.class_set),
    leakage: Annotated[
        LeakagePolicy | None,
        typer.Option(
            "--leakage", help="fail on images shared across splits, or drop the less held-out copy."
        ),
    ] = None,
    drop_bad_votes: Annotated[
        bool | None,
        typer.Option(
            "--drop-bad-votes/--keep-bad-votes", help="drop vote rows not summing to the annotator count."
        ),
    ] = None,
    min_class_count: Annotated[
        int | None, typer.Option("--min-class-count", help="fewest training images per class.")
    ] = None,
    detect_faces: Annotated[
        bool,
        typer.Option(
            "--detect/--no-detect",
            help="folder trees: find each photo's face (or take images as framed crops).",
        ),
    ] = True,
    report: ReportOpt = PATHS.artifacts / "validation",
) -> None:
    """Ingest and run the validation gate (per source); write the canonical dataset only if it passes.

    Without SRC: data/'s sources (FERPlus and the photos, each through its own gate; photos
    through face detection), plus every --add NAME=PATH tree; --leakage, --drop-bad-votes and
    --min-class-count then set FERPlus's gate."""
    asked = {"leakage": leakage, "drop_bad_votes": drop_bad_votes, "min_class_count": min_class_count}
    asked = {k: v for k, v in asked.items() if v is not None}
    if src is None:
        if source_format is not None:
            raise fail(
                "error: --format describes SRC; without SRC the sources of data/ have their own layouts "
                "(give SRC, or leave --format out)",
                USAGE,
            )
        sources = [
            replace(s, gate=replace(s.gate, **asked)) if s.name == "ferplus" else s for s in DEFAULT_SOURCES
        ]
        _ingest_sources([*sources, *_parse_added(add or [])], out, report, scheme, class_set)
        return
    if add:
        raise fail("error: --add extends data/'s sources; leave SRC out to use it", USAGE)
    source_format = source_format or _INGEST.source_format
    require_source(src, source_format)
    config = IngestConfig(source_format, scheme, class_set.value, replace(_GATE, **asked), detect_faces)
    _run_ingest(src, out, report, config)


@app.command("validate")
def data_validate(
    src: SrcArg = PATHS.ferplus_raw,
    source_format: FormatOpt = _INGEST.source_format,
    scheme: SchemeOpt = _INGEST.label_scheme,
    class_set: ClassSetOpt = ClassSetName(_INGEST.class_set),
    leakage: LeakageOpt = _GATE.leakage,
    drop_bad_votes: DropVotesOpt = _GATE.drop_bad_votes,
    min_class_count: MinCountOpt = _GATE.min_class_count,
    report: ReportOpt = PATHS.artifacts / "validation",
) -> None:
    """Run the validation gate alone; writes nothing but its report. Exit 1 when it fails."""
    require_source(src, source_format)
    config = _ingest_config(source_format, scheme, class_set, leakage, drop_bad_votes, min_class_count)
    _run_ingest(src, None, report, config)


@app.command("stats")
def data_stats(
    dataset: Annotated[Path, typer.Argument(help="canonical dataset folder.")] = PATHS.canonical,
    plot: Annotated[
        Path | None, typer.Option(help="class-balance PNG (default: DATASET/class_balance.png).")
    ] = None,
) -> None:
    """Counts per split and class, duplicates, and a class-balance plot."""
    require_dataset(dataset, None, "DATASET")
    from ferflow.canonical import open_dataset
    from ferflow.plots import class_balance

    try:
        ds = open_dataset(dataset)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(f"error: {exc}", USAGE) from exc
    counts = {s: {c: ds.meta["splits"][s]["class_counts"][c] for c in ds.classes} for s in ds.splits}
    width = max(len(c) for c in ds.classes)
    typer.echo(
        f"{dataset}: {ds.meta['source_format']} {ds.meta['source']} "
        f"(version {ds.meta.get('source_version') or 'unversioned'}), scheme {ds.meta['label_scheme']}"
    )
    typer.echo(" " * (width + 2) + "".join(f"{s:>10}" for s in ds.splits))
    for c in ds.classes:
        typer.echo(f"  {c:<{width}}" + "".join(f"{counts[s][c]:>10}" for s in ds.splits))
    typer.echo(f"  {'total':<{width}}" + "".join(f"{ds.meta['splits'][s]['n']:>10}" for s in ds.splits))
    for name, info in (ds.meta.get("sources") or {}).items():
        typer.echo(
            f"source {name}: {info['splits']} from {info['path']}; gate dropped {info['gate']['dropped']}"
        )
    gate = ds.meta.get("gate", {})
    if gate:
        typer.echo(f"duplicates: {gate['duplicates']}; dropped by policy: {gate['dropped']}")
    png = class_balance(
        counts, plot or dataset / "class_balance.png", title=f"Class balance — {dataset.name}"
    )
    typer.echo(f"class-balance plot: {png}")
