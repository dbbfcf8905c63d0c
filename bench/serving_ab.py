"""A/B of server builds or settings on ``/classify`` (issue 4): one server per variant and round.

Each variant is ``NAME=CHECKOUT`` (a checkout of this repository, e.g. a ``git worktree`` of an
older commit, whose server runs with this venv's Python in that directory; the load, crops and
photos are this checkout's) plus optional server environment ``--env NAME:KEY=VALUE``. Per
variant and round: start the server, 2,000 warm-up ``/classify`` requests, 6,000 measured ones
at concurrency 32 ("plain"); then 50 photos and 2,000 mixed requests at concurrency 64 and
6,000 ``/classify`` again on the same server ("after mix", the order ``bench/serving.py``
measures in). Variants alternate within each round, so a host that
drifts affects them alike; compare within one run only.

    git worktree add ../ferflow-old d04bee2
    .venv/bin/python bench/serving_ab.py old=../ferflow-old new=. notta=. \\
        --env notta:FERFLOW_TTA=none --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import re
import sys
import urllib.request
from pathlib import Path

CLASSIFY = 6000
WARM_UP = 2000

# This checkout's bench/serving.py by path: `import serving` would find the service package.
_spec = importlib.util.spec_from_file_location("bench_serving", Path(__file__).with_name("serving.py"))
sv = importlib.util.module_from_spec(_spec)
sys.modules["bench_serving"] = sv
_spec.loader.exec_module(sv)


def batch_sizes(url: str) -> dict[str, float]:
    """The server's cumulative ``ferflow_classify_batch_size`` histogram (le → count)."""
    text = urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'ferflow_classify_batch_size_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)', text):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def classify_phase(server, jobs) -> dict:
    before = batch_sizes(server.url)
    summary = sv.measured(server, lambda: sv._wrk(server.url, "classify", jobs, CLASSIFY, 32, 90))
    after = batch_sizes(server.url)
    summary["batches_le"] = {k: int(after[k] - before.get(k, 0)) for k in after}
    return summary


def run_variant(checkout: Path, env: dict[str, str]) -> dict:
    """One server of ``checkout``'s code; the load, crops and photos are this checkout's."""
    server = sv.start_server(env=env, root=checkout)
    try:
        out = {"ready_s": round(server.ready_s, 2)}
        crops = sv.crop_jobs(500)
        sv.wrk_load(server.url, "warm-up", crops, WARM_UP, 32, 60)
        out["plain"] = classify_phase(server, crops)
        photos = sv.photo_jobs(sv.photo_files())
        asyncio.run(sv.load(server.url, "warm-up", photos, 50, 4, 30))
        sv.wrk_load(server.url, "mix", sv.mixed_jobs(crops, photos), WARM_UP, 64, 60)
        out["after_mix"] = classify_phase(server, crops)
        out["rss_mb"] = round(server.rss_bytes() / 2**20, 1)
        return out
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", metavar="NAME=CHECKOUT")
    ap.add_argument("--env", action="append", default=[], metavar="NAME:KEY=VALUE")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    variants: dict[str, tuple[Path, dict[str, str]]] = {}
    for item in args.variants:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "serving" / "service.py").exists():
            ap.error(f"{item!r}: expected NAME=CHECKOUT of this repository")
        variants[name] = (Path(path).resolve(), {})
    for item in args.env:
        name, _, assignment = item.partition(":")
        key, sep, value = assignment.partition("=")
        if name not in variants or not sep:
            ap.error(f"--env {item!r}: expected NAME:KEY=VALUE for a listed variant")
        variants[name][1][key] = value
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (checkout, env) in variants.items():
            r = run_variant(checkout, env)
            results[name].append(r)
            for phase in ("plain", "after_mix"):
                s = r[phase]
                print(
                    f"{name:14s} {phase:9s} {s['req_per_s']:7.1f} req/s  p50 {s['p50_ms']:6.1f}  "
                    f"p99 {s['p99_ms']:6.1f} ms  errors {s['errors']}  "
                    f"cpu {s['server_cpu_ms_per_req']:.2f} ms/req  ready {r['ready_s']} s",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
