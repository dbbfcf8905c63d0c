"""The data-quality gate: a Great Expectations suite over the per-image ingest table.

Row-level problems that a documented policy may resolve (cross-split duplicates, vote rows of
the wrong size) are dropped first when the policy says so and listed in the report; every
remaining problem fails the gate and is named by file. Each run has a name
(``ingest-<source>-<data version>-<UTC time>``), its GX assets are named after the source, and
every expectation carries a note saying what it checks. The gate writes Data Docs (self-contained
HTML rendered from the GX results, :mod:`ferflow.datadocs`) and ``summary.json`` into its report
folder and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferflow.config import (
    FERPLUS_ANNOTATORS,
    IMAGE_SIZE,
    ClassSet,
    GateConfig,
    LeakagePolicy,
    SourceFormat,
)
from ferflow.table import NO_FACE, IngestTable, describe_counts, split_rank

FIXED_SIZE_FORMATS = {SourceFormat.FERPLUS, SourceFormat.FER2013_CSV}
MAX_NAMED = 20  # offending files listed per check in the human summary (all are in the JSON)


@dataclass
class Finding:
    """One failed check: what it asserts and every source that violates it."""

    check: str
    expectation: str
    description: str
    sources: list[str]
    details: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.sources)


@dataclass
class GateReport:
    passed: bool
    findings: list[Finding]
    dropped: dict[str, list[str]]  # policy reason -> sources removed before the checks
    summary: dict[str, Any]
    report_dir: Path | None = None

    @property
    def data_docs(self) -> Path | None:
        return None if self.report_dir is None else self.report_dir / "data_docs" / "index.html"

    def one_line(self) -> str:
        """The first failed check, its count and one offender, for a one-line error."""
        if not self.findings:
            return self.human().splitlines()[0]
        f = self.findings[0]
        example = (f.details or f.sources)[0]
        more = f" and {len(self.findings) - 1} more failed check(s)" if len(self.findings) > 1 else ""
        return (
            f"data gate failed: {f.check} ({f.description}): {f.count} offending, e.g. {example!r}"
            f"{more}; fix or remove those images"
        )

    def human(self) -> str:
        s = self.summary
        lines = [f"data gate: {'PASSED' if self.passed else 'FAILED'} (run {s.get('run_name', '-')})"]
        lines.append(
            f"  {s['n_rows']} images read, {s['n_kept']} kept; "
            f"{s['duplicates']['within_split_copies']} within-split duplicate copies, "
            f"{s['duplicates']['cross_split_groups']} images shared across splits"
        )
        for reason, sources in self.dropped.items():
            lines.append(f"  dropped by policy ({reason}): {len(sources)}")
        for f in self.findings:
            lines.append(f"  FAIL {f.check}: {f.description} — {f.count} offending")
            shown = f.details or f.sources
            for item in shown[:MAX_NAMED]:
                lines.append(f"    {item}")
            if len(shown) > MAX_NAMED:
                lines.append(f"    … and {len(shown) - MAX_NAMED} more (see summary.json)")
        if self.data_docs is not None:
            lines.append(f"  report: {self.data_docs}")
        return "\n".join(lines)


class GateFailed(RuntimeError):
    def __init__(self, report: GateReport):
        super().__init__(report.human())
        self.report = report


# --------------------------------------------------------------------------------------------
# Policies applied before the checks


def _leak_drops(frame: pd.DataFrame) -> pd.Series:
    """Rows to drop so each shared image stays only in its most held-out split."""
    hashed = frame[frame["content_hash"].notna() & (frame["hash_splits"] > 1)]
    if hashed.empty:
        return pd.Series(False, index=frame.index)
    ranks = hashed["split"].map(split_rank)
    keep_rank = ranks.groupby(hashed["content_hash"]).transform("max")
    drop = pd.Series(False, index=frame.index)
    drop.loc[hashed.index] = ranks < keep_rank
    return drop


def _bad_vote_drops(frame: pd.DataFrame) -> pd.Series:
    """Well-formed vote rows that do not sum to the annotator count (malformed rows still fail)."""
    return frame["vote_sum"].notna() & (frame["vote_sum"] >= 0) & (frame["vote_sum"] != FERPLUS_ANNOTATORS)


def _leak_partner(frame: pd.DataFrame, index: list[int]) -> list[str]:
    by_hash = frame.groupby("content_hash")["source"].apply(list)
    out = []
    for i in index:
        others = [s for s in by_hash[frame.at[i, "content_hash"]] if s != frame.at[i, "source"]]
        out.append(f"{frame.at[i, 'source']} = {', '.join(others[:3])}")
    return out


# --------------------------------------------------------------------------------------------
# The suite


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    expectation: Any  # a gx.expectations.Expectation, its ``notes`` set to ``note``
    table: str = "images"  # "images" or "classes"
    note: str = ""  # what the expectation means, for a person reading the Data Docs


def _check(name: str, description: str, note: str, expectation: Any, table: str = "images") -> Check:
    """A check whose GX expectation carries its note and name (rendered in the Data Docs)."""
    expectation.notes = note
    expectation.meta = {"check": name, "description": description}
    return Check(name, description, expectation, table, note)


def build_checks(class_set: ClassSet, gate: GateConfig, fixed_size: bool) -> list[Check]:
    import great_expectations as gx

    e = gx.expectations
    n = FERPLUS_ANNOTATORS
    checks = [
        _check(
            "readable",
            "file exists and decodes as an image",
            "Every listed image file exists and decodes as an image (for a photo: a face was found "
            "in it). Truncated, corrupt, missing and non-image files fail.",
            e.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
        ),
        _check(
            "not_blank",
            f"pixel std >= {gate.min_pixel_std} (not blank or constant)",
            f"Every image varies: the standard deviation of its pixels is at least {gate.min_pixel_std}. "
            "A blank or constant image shows no face.",
            e.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=gate.min_pixel_std),
        ),
        _check(
            "vote_sum",
            f"vote counts are integers summing to {n} annotators",
            f"Every FERPlus row has integer votes from its {n} annotators, so they sum to {n}; "
            "a row that does not is malformed. Sources without votes have no value here.",
            e.ExpectColumnValuesToBeInSet(column="vote_sum", value_set=[n]),
        ),
        _check(
            "label_in_class_set",
            f"label is one of {list(class_set.classes)}",
            f"Every image's label is one of the {len(class_set.classes)} classes of the "
            f"{class_set.name} class set: {', '.join(class_set.classes)}.",
            e.ExpectColumnValuesToBeInSet(column="label", value_set=list(class_set.classes)),
        ),
        _check(
            "no_leakage",
            "an image (by content hash) appears in one split only",
            "No image appears in more than one split: images are compared by a hash of their pixels, "
            "and the number of splits holding each image must be 1. An image in both train and a "
            "held-out split would score the model on a picture it trained on.",
            e.ExpectColumnValuesToBeInSet(column="hash_splits", value_set=[1]),
        ),
        _check(
            "no_unknown_split",
            "split is one of train/valid/test",
            "Every image belongs to the train, valid or test split.",
            e.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "valid", "test"]),
        ),
        _check(
            "class_min_count",
            f"every class has >= {gate.min_class_count} training images",
            f"Every class has at least {gate.min_class_count} training images"
            + ("." if gate.require_every_class else " (among the classes this source has)."),
            e.ExpectColumnValuesToBeBetween(column="count", min_value=gate.min_class_count),
            table="classes",
        ),
    ]
    if fixed_size:
        for name, word in (("width", "wide"), ("height", "high")):
            checks.append(
                _check(
                    name,
                    f"image is {IMAGE_SIZE} px {word}",
                    f"Every image is {IMAGE_SIZE} pixels {word}, as this dataset layout requires.",
                    e.ExpectColumnValuesToBeInSet(column=name, value_set=[IMAGE_SIZE]),
                )
            )
    return checks


def _run_gx(
    tables: dict[str, pd.DataFrame], checks: list[Check], assets: dict[str, tuple[str, str]], run: GateRun
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Run the suite with GX under the run's name; return per-check success and the offending
    row indices, and one record per validated asset (``assets``: table -> (name, description))."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    source = context.data_sources.add_pandas(f"ferflow-{run.source}")
    run_id = RunIdentifier(run_name=run.name, run_time=run.time)
    outcome: dict[str, dict[str, Any]] = {}
    validations: list[dict[str, Any]] = []
    for table_name, frame in tables.items():
        asset_name, description = assets[table_name]
        table_checks = [c for c in checks if c.table == table_name]
        asset = source.add_dataframe_asset(name=asset_name)
        batch = asset.add_batch_definition_whole_dataframe(f"{asset_name}.whole")
        suite = context.suites.add(gx.ExpectationSuite(name=f"ferflow_{table_name}"))
        for check in table_checks:
            suite.add_expectation(check.expectation)
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"ferflow_{table_name}", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"ferflow_{table_name}_gate",
                validation_definitions=[validation],
                result_format={"result_format": "COMPLETE"},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
        for suite_result in result.run_results.values():
            record = _validation_record(suite_result, table_checks, asset_name, description)
            validations.append(record | {"rows": len(frame)})
            for r in suite_result.results:
                outcome[r.expectation_config.meta["check"]] = {
                    "success": bool(r.success),
                    "unexpected_index_list": list(r.result.get("unexpected_index_list") or []),
                }
    return outcome, validations


def _validation_record(
    suite_result: Any, checks: list[Check], asset: str, description: str
) -> dict[str, Any]:
    """One asset's validation as the Data Docs show it: each expectation with its note and result."""
    by_name = {c.name: c for c in checks}
    expectations = []
    for r in suite_result.results:
        config = r.expectation_config
        check = by_name[config.meta["check"]]
        found = r.result or {}
        rule = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
        expectations.append(
            {
                "check": check.name,
                "note": check.note,
                "type": config.type,
                "rule": ", ".join(f"{k}={v}" for k, v in rule.items()),
                "success": bool(r.success),
                "element_count": found.get("element_count"),
                "unexpected_count": found.get("unexpected_count"),
            }
        )
    return {
        "asset": asset,
        "description": description,
        "suite": suite_result.suite_name,
        "success": bool(suite_result.success),
        "expectations": expectations,
    }


@dataclass(frozen=True)
class GateRun:
    """The name a gate run goes by in GX, the Data Docs and summary.json."""

    name: str
    time: datetime
    source: str
    version: str | None


def _gate_run(table: IngestTable, source_name: str | None, version: str | None, docs: Path | None) -> GateRun:
    """``ingest-<source>-<data version>-<UTC time>``; without a DVC version, a digest of the images'
    content hashes stands for it. A name already recorded in ``docs`` gets a counter."""
    from ferflow.datadocs import RUNS, run_name

    when = datetime.now(UTC)
    source = source_name or Path(table.source_path).stem or "source"
    if not version:
        hashes = sorted(str(h) for h in table.frame["content_hash"].dropna())
        version = "content-" + hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:12]
    name = base = run_name(source, version, when)
    k = 1
    while docs is not None and (docs / RUNS / f"{name}.json").exists():
        k += 1
        name = f"{base}-{k}"
    return GateRun(name, when, source, version)


# --------------------------------------------------------------------------------------------
# Entry point


def run_gate(
    table: IngestTable,
    class_set: ClassSet,
    gate: GateConfig,
    report_dir: str | Path | None = None,
    *,
    source_name: str | None = None,
    version: str | None = None,
) -> tuple[GateReport, np.ndarray]:
    """Check the table; return the report and the mask of rows to keep in the dataset.

    Kept rows passed every check and carry a label of the class set under the scheme. The run
    is named ``ingest-<source_name>-<version>-<UTC time>`` (``version``: the data's DVC md5);
    with ``report_dir`` it is recorded in the Data Docs there (:mod:`ferflow.datadocs`).
    """
    started = time.perf_counter()
    frame = table.frame
    report_path = Path(report_dir) if report_dir is not None else None
    docs_dir = report_path / "data_docs" if report_path is not None else None
    run = _gate_run(table, source_name, version, docs_dir)
    policy_drop, dropped = _policy_drops(frame, gate)
    checked, classes_frame = _gate_tables(frame, policy_drop, class_set, gate)

    checks = build_checks(class_set, gate, fixed_size=table.source_format in FIXED_SIZE_FORMATS)
    gx_images = checked.drop(columns=["error"]).reset_index(drop=True).astype({"label": "object"})
    assets = {
        "images": (
            f"{run.source}.images",
            f"One row per image read from {table.source_path}: split, file, size, pixel statistics, "
            "votes, label and content hash.",
        ),
        "classes": (f"{run.source}.classes", f"One row per class of {class_set.name}: its training images."),
    }
    outcome, validations = _run_gx({"images": gx_images, "classes": classes_frame}, checks, assets, run)

    original_index = checked.index.to_numpy()
    findings = _findings(checks, outcome, frame, original_index, classes_frame)
    n_dropped = int(policy_drop.sum())
    if n_dropped > gate.max_dropped_fraction * len(frame):
        message = (
            f"policies dropped {n_dropped} of {len(frame)} images, over the "
            f"{gate.max_dropped_fraction:.0%} limit"
        )
        findings.append(Finding("max_dropped_fraction", "policy", message, []))

    failed_rows = {
        int(original_index[p])
        for c in checks
        if c.table == "images"
        for p in outcome[c.name]["unexpected_index_list"]
    }
    keep = (~policy_drop & frame["label"].isin(class_set.classes)).to_numpy().copy()
    if failed_rows:
        keep[list(failed_rows)] = False

    summary = _summary(table, class_set, gate, keep, n_dropped, checks, outcome, findings, dropped)
    summary |= {"run_name": run.name, "data_version": run.version}
    summary["seconds"] = round(time.perf_counter() - started, 2)
    report = GateReport(
        passed=not findings, findings=findings, dropped=dropped, summary=summary, report_dir=report_path
    )
    if report_path is not None and docs_dir is not None:
        report_path.mkdir(parents=True, exist_ok=True)
        summary["passed"] = report.passed
        (report_path / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        _write_docs(docs_dir, run, report, validations)
    return report, keep


def _gate_tables(
    frame: pd.DataFrame, policy_drop: pd.Series, class_set: ClassSet, gate: GateConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows the checks see (after the policies) and the per-class training counts."""
    checked = frame[~policy_drop].copy()
    hashed = checked["content_hash"].notna()
    checked.loc[hashed, "hash_splits"] = checked[hashed].groupby("content_hash")["split"].transform("nunique")
    usable = checked["label"].isin(class_set.classes)
    class_counts = describe_counts(checked[usable], list(class_set.classes))
    train_counts = class_counts.get("train") or next(iter(class_counts.values()), {})
    classes_frame = pd.DataFrame(
        {"class": list(class_set.classes), "count": [train_counts.get(c, 0) for c in class_set.classes]}
    )
    if not gate.require_every_class:  # a source may lack classes; those it has need enough images
        classes_frame = classes_frame[classes_frame["count"] > 0].reset_index(drop=True)
    return checked, classes_frame


def _write_docs(docs_dir: Path, run: GateRun, report: GateReport, validations: list[dict[str, Any]]) -> None:
    """Record the run in the Data Docs (self-contained HTML, see :mod:`ferflow.datadocs`)."""
    import great_expectations as gx

    from ferflow.datadocs import MAX_SHOWN, write_run

    s = report.summary
    findings = [
        {
            "check": f.check,
            "description": f.description,
            "count": f.count,
            "sources": f.sources[:MAX_SHOWN],
            "details": f.details[:MAX_SHOWN],
        }
        for f in report.findings
    ]
    record = {
        "run_name": run.name,
        "run_time": run.time.isoformat(),
        "source": run.source,
        "path": s["source"],
        "source_format": s["source_format"],
        "version": run.version,
        "passed": report.passed,
        "n_rows": s["n_rows"],
        "n_kept": s["n_kept"],
        "gx_version": gx.__version__,
        "validations": validations,
        "findings": findings,
        "dropped": {reason: len(items) for reason, items in report.dropped.items()},
    }
    write_run(docs_dir, record)


def _policy_drops(frame: pd.DataFrame, gate: GateConfig) -> tuple[pd.Series, dict[str, list[str]]]:
    """Rows the gate's policies drop (leaked copies, bad vote rows) and why, per reason."""
    dropped: dict[str, list[str]] = {}
    policy_drop = pd.Series(False, index=frame.index)
    if gate.leakage is LeakagePolicy.DROP:
        leaks = _leak_drops(frame)
        if leaks.any():
            dropped["leakage: copy of a more held-out split's image"] = _leak_partner(
                frame, list(frame.index[leaks])
            )
        policy_drop |= leaks
    if gate.drop_no_face:
        faceless = (frame["error"] == NO_FACE) & ~policy_drop
        if faceless.any():
            dropped[f"{NO_FACE} (photo not used)"] = [str(s) for s in frame.loc[faceless, "source"]]
        policy_drop |= faceless
    if gate.drop_bad_votes:
        bad = _bad_vote_drops(frame) & ~policy_drop
        if bad.any():
            dropped[f"vote row not summing to {FERPLUS_ANNOTATORS}"] = [
                f"{frame.at[i, 'source']} (sum {int(frame.at[i, 'vote_sum'])})" for i in frame.index[bad]
            ]
        policy_drop |= bad
    return policy_drop, dropped


def _findings(checks, outcome, frame: pd.DataFrame, original_index, classes_frame) -> list[Finding]:
    """One finding per failed check, naming every offending file (or class)."""
    findings: list[Finding] = []
    for check in checks:
        result = outcome[check.name]
        if result["success"]:
            continue
        positions = result["unexpected_index_list"]
        kind = type(check.expectation).__name__
        if check.table == "classes":
            bad = classes_frame.iloc[positions]
            sources = [f"class {c}: {n} images" for c, n in zip(bad["class"], bad["count"], strict=True)]
            findings.append(Finding(check.name, kind, check.description, sources))
            continue
        rows = [int(original_index[p]) for p in positions]
        sources = [str(frame.at[i, "source"]) for i in rows]
        if check.name == "no_leakage":
            details = _leak_partner(frame, rows)
        else:
            details = [_describe_row(frame, i, check.name) for i in rows]
        findings.append(Finding(check.name, kind, check.description, sources, details))
    return findings


def _summary(table, class_set, gate, keep, n_dropped, checks, outcome, findings, dropped) -> dict[str, Any]:
    """The machine-readable gate report (``summary.json``)."""
    frame = table.frame
    hashed_all = frame["content_hash"].notna()
    return {
        "source": table.source_path,
        "source_format": table.source_format.value,
        "class_set": class_set.name,
        "classes": list(class_set.classes),
        "n_rows": len(frame),
        "n_kept": int(keep.sum()),
        "n_policy_dropped": n_dropped,
        "n_scheme_dropped": int(frame["scheme_drop"].notna().sum()),
        "per_split_rows": {str(k): int(v) for k, v in frame["split"].value_counts().items()},
        "class_counts": describe_counts(frame[keep], list(class_set.classes)),
        "duplicates": {
            "within_split_copies": int(
                (frame[hashed_all].groupby(["split", "content_hash"]).size() - 1).clip(lower=0).sum()
            ),
            "cross_split_groups": int(
                frame[hashed_all & (frame["hash_splits"] > 1)]["content_hash"].nunique()
            ),
        },
        "checks": {
            c.name: {"description": c.description, "passed": outcome[c.name]["success"]} for c in checks
        },
        "findings": [asdict(f) | {"count": f.count} for f in findings],
        "dropped": dropped,
        "gate": {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(gate).items()},
    }


def _describe_row(frame: pd.DataFrame, i: int, check: str) -> str:
    row = frame.loc[i]
    if check == "readable":
        return f"{row['source']}: {row['error']}"
    if check in ("width", "height"):
        return f"{row['source']}: {row['width']}x{row['height']}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
    if check == "vote_sum":
        reason = row["error"] if isinstance(row["error"], str) else f"votes sum to {int(row['vote_sum'])}"
        return f"{row['source']}: {reason}"
    if check == "not_blank":
        return f"{row['source']}: pixel std {row['pixel_std']:.2f}"
    if check == "label_in_class_set":
        return f"{row['source']}: label {row['label']!r}"
    if check == "no_unknown_split":
        return f"{row['source']}: split {row['split']!r}"
    return str(row["source"])
