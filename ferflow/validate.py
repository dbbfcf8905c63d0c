"""The data-quality gate: a Great Expectations suite over the per-image ingest table.

Row-level problems that a documented policy may resolve (cross-split duplicates, vote rows of
the wrong size) are dropped first when the policy says so and listed in the report; every
remaining problem fails the gate and is named by file. The gate writes GX Data Docs (HTML)
and ``summary.json`` into its report folder and nothing else.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
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

    def human(self) -> str:
        lines = [f"data gate: {'PASSED' if self.passed else 'FAILED'}"]
        s = self.summary
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
    expectation: Any  # a gx.expectations.Expectation
    table: str = "images"  # "images" or "classes"


def build_checks(class_set: ClassSet, gate: GateConfig, fixed_size: bool) -> list[Check]:
    import great_expectations as gx

    e = gx.expectations
    checks = [
        Check(
            "readable",
            "file exists and decodes as an image",
            e.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
        ),
        Check(
            "not_blank",
            f"pixel std >= {gate.min_pixel_std} (not blank or constant)",
            e.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=gate.min_pixel_std),
        ),
        Check(
            "vote_sum",
            f"vote counts are integers summing to {FERPLUS_ANNOTATORS} annotators",
            e.ExpectColumnValuesToBeInSet(column="vote_sum", value_set=[FERPLUS_ANNOTATORS]),
        ),
        Check(
            "label_in_class_set",
            f"label is one of {list(class_set.classes)}",
            e.ExpectColumnValuesToBeInSet(column="label", value_set=list(class_set.classes)),
        ),
        Check(
            "no_leakage",
            "an image (by content hash) appears in one split only",
            e.ExpectColumnValuesToBeInSet(column="hash_splits", value_set=[1]),
        ),
        Check(
            "no_unknown_split",
            "split is one of train/valid/test",
            e.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "valid", "test"]),
        ),
        Check(
            "class_min_count",
            f"every class has >= {gate.min_class_count} training images",
            e.ExpectColumnValuesToBeBetween(column="count", min_value=gate.min_class_count),
            table="classes",
        ),
    ]
    if fixed_size:
        checks += [
            Check(
                "width",
                f"image is {IMAGE_SIZE} px wide",
                e.ExpectColumnValuesToBeInSet(column="width", value_set=[IMAGE_SIZE]),
            ),
            Check(
                "height",
                f"image is {IMAGE_SIZE} px high",
                e.ExpectColumnValuesToBeInSet(column="height", value_set=[IMAGE_SIZE]),
            ),
        ]
    return checks


def _run_gx(
    tables: dict[str, pd.DataFrame], checks: list[Check], docs_dir: Path | None
) -> dict[str, dict[str, Any]]:
    """Run the suite with GX; return per-check success and the offending row indices."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="ferflow",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    source = context.data_sources.add_pandas("ferflow")
    outcome: dict[str, dict[str, Any]] = {}
    for table_name, frame in tables.items():
        table_checks = [c for c in checks if c.table == table_name]
        asset = source.add_dataframe_asset(name=table_name)
        batch = asset.add_batch_definition_whole_dataframe(f"{table_name}_all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"ferflow_{table_name}"))
        for check in table_checks:
            check.expectation.meta = {"check": check.name, "description": check.description}
            suite.add_expectation(check.expectation)
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"ferflow_{table_name}", data=batch, suite=suite)
        )
        actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if docs_dir is not None else []
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"ferflow_{table_name}_gate",
                validation_definitions=[validation],
                actions=actions,
                result_format={"result_format": "COMPLETE"},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        for run in result.run_results.values():
            for r in run.results:
                name = r.expectation_config.meta["check"]
                outcome[name] = {
                    "success": bool(r.success),
                    "unexpected_index_list": list(r.result.get("unexpected_index_list") or []),
                }
    return outcome


# --------------------------------------------------------------------------------------------
# Entry point


def run_gate(
    table: IngestTable,
    class_set: ClassSet,
    gate: GateConfig,
    report_dir: str | Path | None = None,
) -> tuple[GateReport, np.ndarray]:
    """Check the table; return the report and the mask of rows to keep in the dataset.

    Kept rows passed every check and carry a label of the class set under the scheme.
    """
    started = time.perf_counter()
    frame = table.frame
    report_path = Path(report_dir) if report_dir is not None else None
    policy_drop, dropped = _policy_drops(frame, gate)

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

    checks = build_checks(class_set, gate, fixed_size=table.source_format in FIXED_SIZE_FORMATS)
    gx_images = checked.drop(columns=["error"]).reset_index(drop=True).astype({"label": "object"})
    docs_dir = report_path / "data_docs" if report_path is not None else None
    outcome = _run_gx({"images": gx_images, "classes": classes_frame}, checks, docs_dir)

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
    summary["seconds"] = round(time.perf_counter() - started, 2)
    report = GateReport(
        passed=not findings, findings=findings, dropped=dropped, summary=summary, report_dir=report_path
    )
    if report_path is not None:
        report_path.mkdir(parents=True, exist_ok=True)
        summary["passed"] = report.passed
        (report_path / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return report, keep


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
