"""Benchmark: ingest + validation gate of the full FERPlus pull (target <= 60 s on 2 cores).

    .venv/bin/python bench/ingest.py [--repeat 3]

Times the three phases separately (read/decode, table build, GX gate) and the canonical
write, on the DVC-pulled data/ferplus, with the main job's policies.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from ferflow.canonical import write_dataset
from ferflow.config import FERPLUS_DEFAULT_INGEST, get_class_set
from ferflow.data import build_table, read_source
from ferflow.validate import run_gate


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def once(src: Path, out: Path) -> dict[str, float]:
    cfg = FERPLUS_DEFAULT_INGEST
    class_set = get_class_set(cfg.class_set)
    t0 = time.perf_counter()
    records = read_source(src, cfg.source_format, progress=False)
    t1 = time.perf_counter()
    table = build_table(records, cfg.label_scheme, class_set, cfg.source_format, str(src))
    t2 = time.perf_counter()
    report, _ = run_gate(table, class_set, cfg.gate, out / "report")
    t3 = time.perf_counter()
    assert report.passed, report.human()
    from ferflow.data import ingest_to_memory  # the write path used by `ferflow data ingest`

    result = ingest_to_memory(src, cfg, progress=False)
    t4 = time.perf_counter()
    write_dataset(out / "canonical", result.splits, result.meta)
    t5 = time.perf_counter()
    return {
        "read": t1 - t0,
        "table": t2 - t1,
        "gate": t3 - t2,
        "write": t5 - t4,
        "total": (t3 - t0) + (t5 - t4),
        "images": len(records),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", type=Path, default=Path("data/ferplus"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            runs.append(once(args.src, Path(tmp)))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; date {date.today()}")
    print(f"images: {int(med['images'])}; median of {args.repeat} runs (s):")
    for k in ("read", "table", "gate", "write", "total"):
        print(f"  {k:<6} {med[k]:6.2f}")
    print(f"throughput: {med['images'] / med['total']:.0f} images/s; target total <= 60 s")


if __name__ == "__main__":
    main()
