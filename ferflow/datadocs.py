"""Data Docs of the data gate: self-contained HTML pages rendered from the GX validation results.

GX's own Data Docs load Bootstrap, jQuery and the table of runs from CDNs (the package ships
only its own stylesheet), so offline their index is empty and every page is unstyled. These
pages carry their style inline and no script, and link nothing outside the report folder:

- ``runs/<run name>.json``: the record of one gate run (run name, source, data version, each
  asset's expectations with their notes and results, the offending files);
- ``runs/<run name>.html``: that run's page;
- ``index.html``: every run recorded in the folder (newest first, linked to its page), then the
  newest run in full, so the index alone is a complete report.

:func:`bundle` writes one self-contained page over several report folders (one per source): the
single file a KFP ``HTML`` artifact shows.
"""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUNS = "runs"
MAX_SHOWN = 20  # offending files (or values) listed per expectation on a page

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;
background:#f6f8fa;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.3em;margin:28px 0 8px}h3{font-size:1.1em;margin:20px 0 6px}
.meta{color:#59636e;margin:0 0 16px}
table{border-collapse:collapse;width:100%;background:#fff;margin:8px 0 16px;font-size:.92em}
th,td{border:1px solid #d1d9e0;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}
td.status{white-space:nowrap}.ok{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:.85em;font-weight:600}
.badge.ok{background:#dafbe1}.badge.fail{background:#ffebe9}
.card{background:#fff;border:1px solid #d1d9e0;border-radius:6px;padding:12px 16px;margin:12px 0}
code{background:#eef1f4;padding:1px 4px;border-radius:4px;font-size:.9em}
ul.files{margin:4px 0;padding-left:20px;font-family:ui-monospace,monospace;font-size:.85em}
a{color:#0969da}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def safe_name(text: str) -> str:
    """``text`` as a file-name-safe run-name part (letters, digits, ``.``, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unnamed"


def run_name(source: str, version: str | None, when: datetime) -> str:
    """``ingest-<source>-<data version>-<UTC time>``, e.g.
    ``ingest-ferplus-c06a19cbee30-20261205T164210Z`` (a DVC md5 is cut to 12 characters)."""
    short = (version or "unversioned").removesuffix(".dir")
    short = short[:12] if re.fullmatch(r"[0-9a-f]{32}", short) else short
    return f"ingest-{safe_name(source)}-{safe_name(short)}-{when.astimezone(UTC):%Y%m%dT%H%M%SZ}"


# --------------------------------------------------------------------------------------------
# records


def write_run(docs_dir: str | Path, record: dict[str, Any]) -> Path:
    """Record one gate run in ``docs_dir``: its JSON and page, and the index over every run
    recorded there. Returns the index."""
    docs = Path(docs_dir)
    runs = docs / RUNS
    runs.mkdir(parents=True, exist_ok=True)
    name = record["run_name"]
    (runs / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
    (runs / f"{name}.html").write_text(render_run_page(record))
    index = docs / "index.html"
    index.write_text(render_index(read_runs(docs)))
    return index


def read_runs(docs_dir: str | Path) -> list[dict[str, Any]]:
    """The run records of a Data Docs folder, newest first (unreadable files are skipped)."""
    records = []
    for path in sorted((Path(docs_dir) / RUNS).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: (r.get("run_time", ""), r.get("run_name", "")), reverse=True)


def run_time(record: dict[str, Any]) -> str:
    """The run's UTC time as ``YYYY-MM-DD HH:MM:SS UTC``."""
    try:
        return f"{datetime.fromisoformat(record['run_time']).astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    except (KeyError, ValueError):
        return str(record.get("run_time", ""))


# --------------------------------------------------------------------------------------------
# pages


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _badge(passed: bool) -> str:
    return '<span class="badge ok">PASSED</span>' if passed else '<span class="badge fail">FAILED</span>'


def _runs_table(records: list[dict[str, Any]], link: str) -> str:
    """One row per run; ``link`` is ``"file"`` (runs/<name>.html) or ``"anchor"`` (#<name>)."""
    rows = []
    for r in records:
        name = r["run_name"]
        href = f"{RUNS}/{name}.html" if link == "file" else f"#{name}"
        checks = [x for v in r.get("validations", []) for x in v["expectations"]]
        passed = sum(x["success"] for x in checks)
        assets = ", ".join(v["asset"] for v in r.get("validations", []))
        rows.append(
            f'<tr><td><a href="{_e(href)}">{_e(name)}</a></td><td>{_badge(r.get("passed", False))}</td>'
            f"<td>{_e(r.get('source', ''))}</td><td><code>{_e(r.get('version') or '-')}</code></td>"
            f"<td>{_e(assets)}</td><td>{passed} / {len(checks)}</td><td>{_e(run_time(r))}</td></tr>"
        )
    head = "<tr><th>run</th><th>gate</th><th>source</th><th>data version</th><th>assets</th>"
    head += "<th>expectations met</th><th>time</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _expectation_rows(validation: dict[str, Any]) -> str:
    rows = []
    for x in validation["expectations"]:
        status = '<span class="ok">met</span>' if x["success"] else '<span class="fail">not met</span>'
        found = (
            f"{x['unexpected_count']} of {x['element_count']}" if x.get("element_count") is not None else ""
        )
        rows.append(
            f'<tr><td class="status">{status}</td><td><b>{_e(x["check"])}</b><br>{_e(x["note"])}</td>'
            f"<td><code>{_e(x['type'])}</code><br><code>{_e(x['rule'])}</code></td><td>{_e(found)}</td></tr>"
        )
    head = "<tr><th></th><th>expectation</th><th>GX rule</th><th>rows not meeting it</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _offenders(record: dict[str, Any]) -> str:
    parts = []
    for f in record.get("findings", []):
        shown = f.get("details") or f.get("sources") or []
        items = "".join(f"<li>{_e(s)}</li>" for s in shown[:MAX_SHOWN])
        more = (
            f"<li>… and {len(shown) - MAX_SHOWN} more (summary.json)</li>" if len(shown) > MAX_SHOWN else ""
        )
        parts.append(
            f"<h3>{_e(f['check'])}: {_e(f['count'])} offending</h3>"
            f'<p>{_e(f["description"])}</p><ul class="files">{items}{more}</ul>'
        )
    for reason, count in (record.get("dropped") or {}).items():
        parts.append(f"<p>Dropped by policy before the checks ({_e(reason)}): {_e(count)}</p>")
    return "".join(parts)


def _run_section(record: dict[str, Any]) -> str:
    """One run in full: what was checked, each expectation with its note, the offending files."""
    name = record["run_name"]
    facts = (
        f"source <b>{_e(record.get('source', ''))}</b> at <code>{_e(record.get('path', ''))}</code>; "
        f"data version <code>{_e(record.get('version') or 'unversioned')}</code>; {_e(run_time(record))}; "
        f"{_e(record.get('n_rows', '?'))} images read, {_e(record.get('n_kept', '?'))} kept; "
        f"Great Expectations {_e(record.get('gx_version', ''))}"
    )
    parts = [
        f'<section class="card" id="{_e(name)}"><h2>{_e(name)} {_badge(record.get("passed", False))}</h2>',
        f'<p class="meta">{facts}</p>',
    ]
    for v in record.get("validations", []):
        met = sum(x["success"] for x in v["expectations"])
        parts.append(
            f"<h3>Asset <code>{_e(v['asset'])}</code> {_badge(v['success'])}</h3>"
            f"<p>{_e(v['description'])} Suite <code>{_e(v['suite'])}</code>: "
            f"{met} of {len(v['expectations'])} expectations met over {_e(v.get('rows', '?'))} rows.</p>"
            + _expectation_rows(v)
        )
    offenders = _offenders(record)
    if offenders:
        parts.append(f"<h3>Findings</h3>{offenders}")
    parts.append("</section>")
    return "".join(parts)


def render_run_page(record: dict[str, Any]) -> str:
    title = f"Data gate run {record['run_name']}"
    back = '<p><a href="../index.html">All runs</a></p>'
    return _page(title, f"<h1>{_e(title)}</h1>{back}{_run_section(record)}")


def render_index(records: list[dict[str, Any]]) -> str:
    """Every run (linked to its page), then the newest run in full."""
    body = ["<h1>Data gate: Data Docs</h1>"]
    if not records:
        body.append("<p>No gate run recorded yet.</p>")
    else:
        body.append(f'<p class="meta">{len(records)} run(s) recorded in this folder, newest first.</p>')
        body.append(_runs_table(records, link="file"))
        body.append("<h2>Newest run</h2>" + _run_section(records[0]))
    return _page("Data gate: Data Docs", "".join(body))


def bundle(report_dir: str | Path, out_file: str | Path) -> Path:
    """One self-contained page with the newest run of every Data Docs folder under
    ``report_dir`` (one per source), e.g. the KFP ``HTML`` artifact of the ingest step."""
    report = Path(report_dir)
    folders = sorted({p.parent.parent for p in report.rglob(f"{RUNS}/*.json")})
    latest = [runs[0] for runs in (read_runs(f) for f in folders) if runs]
    body = ["<h1>Data gate report</h1>"]
    if not latest:
        body.append("<p>No gate run recorded.</p>")
    else:
        verdict = "every gate passed" if all(r.get("passed") for r in latest) else "a gate failed"
        body.append(f'<p class="meta">{len(latest)} source(s); {verdict}.</p>')
        body.append(_runs_table(latest, link="anchor"))
        body += [_run_section(r) for r in latest]
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page("Data gate report", "".join(body)))
    return out
