"""A/B of server builds or settings on ``/classify`` (issue 4): one server per variant and round.

Each variant is ``NAME=CHECKOUT`` (a checkout of this repository, e.g. a ``git worktree`` of an
older commit; it needs ``.venv`` and ``data`` like this one) plus optional server environment
``--env NAME:KEY=VALUE``. Per variant and round: start the server, 2,000 warm-up ``/classify``
requests, 6,000 measured ones at concurrency 32 ("plain"); then 50 photos and 2,000 mixed
requests at concurrency 64 and 6,000 ``/classify`` again on the same server ("after mix", the
order ``bench/serving.py`` measures in). Variants alternate within each round, so a host that
drifts affects them alike; compare within one run only.

    git worktree add ../ferflow-old d04bee2 && ln -s "$PWD/.venv" "$PWD/data" ../ferflow-old/
    .venv/bin/python bench/serving_ab.py old=../ferflow-old new=. notta=. \\
        --env notta:FERFLOW_TTA=none --rounds 2

(A checkout beside this one also finds ``../shared``, where the sample photos are.)
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
from types import ModuleType

CLASSIFY = 6000
WARM_UP = 2000


def bench_module(checkout: Path) -> ModuleType:
    """``bench/serving.py`` of ``checkout``: its servers run that checkout's code."""
    name = f"bench_serving_{abs(hash(checkout))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, checkout / "bench" / "serving.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def batch_sizes(url: str) -> dict[str, float]:
    """The server's cumulative ``ferflow_classify_batch_size`` histogram (le → count)."""
    text = urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'ferflow_classify_batch_size_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)', text):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def classify_phase(sv: ModuleType, server, jobs) -> dict:
    before, cpu = batch_sizes(server.url), server.cpu_seconds()
    result = sv.wrk_load(server.url, "classify", jobs, CLASSIFY, 32, 90)
    summary = result.summary()
    summary["server_cpu_ms_per_req"] = round(1000 * (server.cpu_seconds() - cpu) / max(1, result.requests), 3)
    after = batch_sizes(server.url)
    summary["batches_le"] = {k: int(after[k] - before.get(k, 0)) for k in after}
    return summary


def run_variant(checkout: Path, env: dict[str, str]) -> dict:
    sv = bench_module(checkout)
    server = sv.start_server(env=env)
    try:
        out = {"ready_s": round(server.ready_s, 2)}
        crops = sv.crop_jobs(500)
        sv.wrk_load(server.url, "warm-up", crops, WARM_UP, 32, 60)
        out["plain"] = classify_phase(sv, server, crops)
        photos = [("/predict", sv.multipart(f.read_bytes(), f.name, "image/jpeg")) for f in sv.photo_files()]
        mix = [crops[i] if i % 10 else photos[i // 10 % len(photos)] for i in range(len(crops))]
        asyncio.run(sv.load(server.url, "warm-up", photos, 50, 4, 30))
        sv.wrk_load(server.url, "mix", mix, WARM_UP, 64, 60)
        out["after_mix"] = classify_phase(sv, server, crops)
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
