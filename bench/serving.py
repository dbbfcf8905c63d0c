"""Load test of the inference service on localhost (issue 4 targets), bounded in count and time.

Starts ``bentoml serve serving.service:FERService`` on a free localhost port (the model is
whatever the server would load: ``FERFLOW_MODEL`` / ``FERFLOW_MODEL_URI`` / the reference), then:

1. start-up: seconds from process start to ``/readyz`` = 200 (median of ``--starts`` runs);
2. ``/classify`` with real 48x48 FERPlus crops at concurrency 32 (targets >= 400 req/s,
   p99 <= 50 ms);
3. ``/predict`` with the 350x350 sample photos (face detection + classification), req/s, p99,
   next to the in-process time of ``EmotionRecognizer.analyze`` on the same photos;
4. soak: ``--soak`` requests (default 20,000; 9 of 10 ``/classify``, 1 of 10 ``/predict``) at
   concurrency 64: errors must be 0 and the server's RSS (all its processes) may grow < 5 %
   from the end of the warm-up to the end of the soak. ``--soak-rounds K`` repeats the soak on
   the same server and reports each round's growth: a leak grows every round, a high-water
   mark levels off. ``--soak-kind classify`` soaks with ``/classify`` crops only.

    .venv/bin/python bench/serving.py                     # everything, ~3 min on 2 cores
    .venv/bin/python bench/serving.py --soak 2000 --json out.json
    .venv/bin/python bench/serving.py --memory 16         # only: 16 concurrent 25 MP PNGs
    .venv/bin/python bench/serving.py --slow-clients 256  # only: trickling uploads vs. normal calls

``--memory N``: N concurrent ``/predict`` uploads of a 4999x4999 RGB PNG (~80 KB, under the 25 MP
limit), twice; the worker's RSS before, at its peak (sampled every 20 ms) and 2 s after.
``--slow-clients N``: N connections that each send a ``/classify`` header and then one body
byte every 4 s, for ``--slow-seconds``; meanwhile 4 clients send normal ``/classify`` requests.
Reports what the slow ones were answered, the normal ones' statuses and latencies, and
``/readyz`` during the run.

Every request has a timeout and every phase a request count and a time limit; only
127.0.0.1 is contacted. With ``--fer-python`` (a separate venv holding the ``fer`` package),
``fer``'s ``FER().detect_emotions`` (OpenCV Haar + its Keras CNN on TensorFlow; ``--fer-mtcnn``
adds its MTCNN detector, which needs torch) is timed on the same photos in a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "samples" / "photos"
CROPS = ROOT / "data" / "ferplus" / "FER2013Valid"
BOUNDARY = "ferflowbenchboundary7MA4YWxkTrZu0gW"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(data: bytes, filename: str, content_type: str) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    ready_s: float
    ready_cpu_s: float = 0.0  # CPU seconds its processes used until ready (contention-free cost)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        """Resident memory of the server and all its processes (arbiter + workers)."""
        root = psutil.Process(self.proc.pid)
        total = 0
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the server's processes."""
        root = psutil.Process(self.proc.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(timeout: float = 60.0, env: dict[str, str] | None = None, root: Path = ROOT) -> Server:
    """``bentoml serve`` of the checkout ``root`` on a free port; returns once /readyz answers 200."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "serving.service:FERService",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=root,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/readyz"
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                server = Server(port, proc, time.perf_counter() - started)
                server.ready_cpu_s = server.cpu_seconds()
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"server not ready within {timeout} s")


@dataclass
class LoadResult:
    name: str
    requests: int
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    errors: dict[str, int]

    percentiles: dict[str, float] | None = None  # given by wrk instead of raw latencies

    def summary(self) -> dict[str, float | int | str | dict[str, int]]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        pct = self.percentiles or {
            "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()),
        }
        return {
            "name": self.name,
            "client": "wrk" if self.percentiles is not None else "httpx",
            "requests": self.requests,
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 2),
            "req_per_s": round(self.requests / self.seconds, 1),
            **{k: round(v, 2) for k, v in pct.items()},
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
        }


async def load(
    base_url: str,
    name: str,
    jobs: list[tuple[str, bytes]],
    total: int,
    concurrency: int,
    max_seconds: float,
    on_progress=None,
) -> LoadResult:
    """``total`` POSTs cycling over ``jobs`` ((path, multipart body)) with ``concurrency``
    in flight; stops early at ``max_seconds``."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(total))
    deadline = time.perf_counter() + max_seconds
    done = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:

        async def worker() -> None:
            nonlocal done
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                path, body = jobs[i % len(jobs)]
                t = time.perf_counter()
                try:
                    r = await client.post(path, content=body, headers=HEADERS)
                    if r.status_code != 200:
                        key = f"{path} {r.status_code}"
                        errors[key] = errors.get(key, 0) + 1
                except httpx.HTTPError as exc:
                    key = f"{path} {type(exc).__name__}"
                    errors[key] = errors.get(key, 0) + 1
                latencies.append((time.perf_counter() - t) * 1000)
                done += 1
                if on_progress is not None and done % 1000 == 0:
                    on_progress(done)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return LoadResult(name, done, concurrency, seconds, latencies, errors)


WRK_SCRIPT = r"""
-- cycles over the request bodies in <dir>/<i>.body (paths in <dir>/paths); stops after N replies
-- (one wrk thread: the reply count is exact)
local dir, total = os.getenv("WRK_DIR"), tonumber(os.getenv("WRK_TOTAL"))
local paths, bodies, i, replies = {}, {}, 0, 0
for line in io.lines(dir .. "/paths") do
  paths[#paths + 1] = line
  local f = io.open(dir .. "/" .. #paths .. ".body", "rb")
  bodies[#bodies + 1] = f:read("*a")
  f:close()
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=BOUNDARY"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, paths[i], nil, bodies[i])
end
response = function(status, headers, body)
  replies = replies + 1
  if replies == total then
    -- wrk's main thread sleeps for -d; SIGINT ends that sleep, so the duration it reports is
    -- the time the N replies took (+ STOP_DELAY, subtracted in Python). The signal is sent a
    -- moment later from a background shell ($PPID: wrk), once this thread has left its loop,
    -- so that it reaches the sleeping main thread.
    wrk.thread:stop()
    os.execute("(sleep STOP_DELAY; kill -INT $PPID) &")
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.4f, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, '
    .. '"max_ms": %.3f, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


WRK_STOP_DELAY = 0.02


def wrk_load(
    base_url: str,
    name: str,
    jobs: list[tuple[str, bytes]],
    total: int,
    concurrency: int,
    max_seconds: float,
    on_progress=None,
) -> LoadResult:
    """The same load as :func:`load`, generated by wrk (C, one thread): the client then costs
    the 2 shared cores far less CPU than Python would. Latencies come as wrk's percentiles."""
    import tempfile
    import threading

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, (_, body) in enumerate(jobs, 1):
            (folder / f"{i}.body").write_bytes(body)
        (folder / "paths").write_text("".join(f"{path}\n" for path, _ in jobs))
        script = WRK_SCRIPT.replace("BOUNDARY", BOUNDARY).replace("STOP_DELAY", str(WRK_STOP_DELAY))
        (folder / "load.lua").write_text(script)
        env = {**os.environ, "WRK_DIR": tmp, "WRK_TOTAL": str(total)}
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{int(max_seconds)}s", "--timeout", "30s"]
        cmd += ["-s", str(folder / "load.lua"), base_url]
        stop = threading.Event()
        if on_progress is not None:  # wrk reports only at the end: sample on a clock instead
            t0 = time.monotonic()

            def sample() -> None:
                while not stop.wait(2.0):
                    on_progress(f"{time.monotonic() - t0:.0f}s")

            threading.Thread(target=sample, daemon=True).start()
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max_seconds + 60)
        finally:
            stop.set()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line.removeprefix("WRK_JSON "))
    errors = {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]}
    seconds = r["seconds"] - (WRK_STOP_DELAY if r["requests"] >= total else 0.0)
    result = LoadResult(name, r["requests"], concurrency, seconds, [], errors)
    result.percentiles = {k: r[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")}
    return result


async def _wrk(*args, **kwargs) -> LoadResult:  # `measured` runs a coroutine factory
    return await asyncio.to_thread(wrk_load, *args, **kwargs)


def measured(server: Server, coro_factory) -> dict:
    """Run one load phase; add server and client CPU milliseconds per request to its summary."""
    own = psutil.Process()
    server_cpu, client_cpu = server.cpu_seconds(), sum(own.cpu_times()[:2])
    result: LoadResult = asyncio.run(coro_factory())
    summary = result.summary()
    n = max(result.requests, 1)
    summary["server_cpu_ms_per_req"] = round(1000 * (server.cpu_seconds() - server_cpu) / n, 3)
    summary["client_cpu_ms_per_req"] = round(1000 * (sum(own.cpu_times()[:2]) - client_cpu) / n, 3)
    return summary


def crop_jobs(n: int) -> list[tuple[str, bytes]]:
    files = sorted(CROPS.glob("*.png"))[:n]
    if not files:
        raise SystemExit(f"no FERPlus crops in {CROPS}: run `ferflow data pull` first")
    return [("/classify", multipart(f.read_bytes(), f.name, "image/png")) for f in files]


def photo_jobs(files: list[Path]) -> list[tuple[str, bytes]]:
    return [("/predict", multipart(f.read_bytes(), f.name, "image/jpeg")) for f in files]


def mixed_jobs(crops: list[tuple[str, bytes]], photos: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The soak's traffic: 9 in 10 requests ``/classify`` crops, 1 in 10 ``/predict`` photos."""
    return [crops[i] if i % 10 else photos[i // 10 % len(photos)] for i in range(len(crops))]


def photo_files() -> list[Path]:
    from PIL import Image

    files = []
    for f in sorted(PHOTOS.glob("*.jpg")):
        with Image.open(f) as im:
            if im.size == (350, 350):
                files.append(f)
    if not files:
        raise SystemExit(f"no 350x350 sample photos in {PHOTOS}")
    return files


def offline_predict_ms(files: list[Path], rounds: int = 3) -> float:
    """Median per-image ms of EmotionRecognizer.analyze in this process (no HTTP)."""
    from ferflow.inference import EmotionRecognizer

    rec = EmotionRecognizer.from_config()
    rec.warm_up()
    data = [f.read_bytes() for f in files]
    times = []
    for _ in range(rounds):
        for d in data:
            t = time.perf_counter()
            rec.analyze(d)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


FER_SCRIPT = """
import json, sys, time, cv2
try:
    from fer import FER
except ImportError:  # fer >= 25 exports FER from fer.fer only
    from fer.fer import FER
detector = FER(mtcnn={mtcnn})
files = json.loads(sys.argv[1])
images = [cv2.imread(f) for f in files]
detector.detect_emotions(images[0])
times, found = [], 0
for _ in range({rounds}):
    for im in images:
        t = time.perf_counter()
        out = detector.detect_emotions(im)
        times.append((time.perf_counter() - t) * 1000)
        found += bool(out)
times.sort()
print(json.dumps({{"median_ms": times[len(times) // 2], "found_fraction": found / len(times)}}))
"""


def fer_predict_ms(
    python: str, files: list[Path], mtcnn: bool, rounds: int = 2, timeout: float = 300
) -> dict:
    code = FER_SCRIPT.format(mtcnn=mtcnn, rounds=rounds)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [python, "-c", code, json.dumps([str(f) for f in files])],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    return f"{cpu}, {cores} cores, {psutil.virtual_memory().total / 2**30:.0f} GB"


def worker_process(server: Server) -> psutil.Process:
    """The BentoML worker (the process that holds the model)."""
    for p in psutil.Process(server.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "_bentoml_impl.worker" in " ".join(p.cmdline()):
                return p
    raise RuntimeError("no BentoML worker process found")


def large_png() -> bytes:
    """A 4999x4999 RGB PNG: ~80 KB on the wire, 25 MP (just under the limit), 75 MB decoded."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4999, 4999), (90, 120, 150)).save(buf, "PNG")
    return buf.getvalue()


def memory_run(server: Server, concurrency: int, rounds: int = 2) -> dict:
    """``concurrency`` simultaneous /predict uploads of :func:`large_png`, ``rounds`` times."""
    worker = worker_process(server)
    body = multipart(large_png(), "large.png", "image/png")
    asyncio.run(load(server.url, "warm-up", crop_jobs(50), 100, 8, 30))
    time.sleep(1)
    baseline = worker.memory_info().rss
    peak, statuses, seconds = baseline, {}, []

    async def one_round() -> None:
        nonlocal peak
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            posts = [
                asyncio.ensure_future(client.post("/predict", content=body, headers=HEADERS))
                for _ in range(concurrency)
            ]
            while not all(p.done() for p in posts):
                peak = max(peak, worker.memory_info().rss)
                await asyncio.sleep(0.02)
            for p in posts:
                key = str(p.result().status_code) if p.exception() is None else type(p.exception()).__name__
                statuses[key] = statuses.get(key, 0) + 1

    for _ in range(rounds):
        started = time.perf_counter()
        asyncio.run(one_round())
        seconds.append(round(time.perf_counter() - started, 2))
    time.sleep(2)
    after = worker.memory_info().rss
    mb = 2**20
    return {
        "concurrency": concurrency,
        "rounds": rounds,
        "upload_bytes": len(body),
        "statuses": statuses,
        "seconds_per_round": seconds,
        "worker_rss_mb_baseline": round(baseline / mb, 1),
        "worker_rss_mb_peak": round(peak / mb, 1),
        "worker_rss_mb_after_2s": round(after / mb, 1),
        "after_vs_baseline_pct": round(100 * (after - baseline) / baseline, 2),
    }


async def _trickle(port: int, seconds: float, interval: float) -> str:
    """One slow upload: a /classify header, then a body byte per ``interval`` seconds; the status
    line the server answered ('' if none within ``seconds``, 'closed' if it hung up)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return f"connect failed: {type(exc).__name__}"
    writer.write(
        b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    line = asyncio.ensure_future(reader.readline())
    deadline = time.monotonic() + seconds
    try:
        while not line.done() and time.monotonic() < deadline:
            writer.write(b"x")
            await asyncio.wait([line], timeout=min(interval, max(0.0, deadline - time.monotonic())))
        return line.result().decode().strip() if line.done() else ""
    except OSError:
        return "closed"
    finally:
        line.cancel()
        writer.close()


def slow_client_run(server: Server, connections: int, seconds: float, interval: float = 4.0) -> dict:
    """``connections`` trickling uploads held open for ``seconds`` while 4 clients send normal
    /classify requests; /readyz sampled once a second."""
    normal = crop_jobs(50)

    async def main() -> dict:
        port = server.port
        slow = [asyncio.ensure_future(_trickle(port, seconds, interval)) for _ in range(connections)]
        await asyncio.sleep(1)
        ready: dict[str, int] = {}

        async def probe() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
                end = time.monotonic() + seconds - 2
                while time.monotonic() < end:
                    try:
                        key = str((await client.get("/readyz")).status_code)
                    except httpx.HTTPError as exc:
                        key = type(exc).__name__
                    ready[key] = ready.get(key, 0) + 1
                    await asyncio.sleep(1)

        probing = asyncio.ensure_future(probe())
        served = await load(server.url, "normal /classify", normal, 10**6, 4, seconds - 2)
        await probing
        lines = await asyncio.gather(*slow)
        answers: dict[str, int] = {}
        for line in lines:
            key = " ".join(line.split()[:2]) if line.startswith("HTTP/") else (line or "no answer")
            answers[key] = answers.get(key, 0) + 1
        return {"slow_answers": answers, "normal": served.summary(), "readyz": ready}

    result = asyncio.run(main())
    return {"connections": connections, "seconds": seconds, "byte_every_s": interval, **result}


def only_mode(args: argparse.Namespace, server_env: dict[str, str]) -> None:
    """``--memory`` / ``--slow-clients``: one server, that run only, its figures as JSON."""
    results: dict[str, object] = {
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": "bench/serving.py " + " ".join(sys.argv[1:]),
        "server_env": server_env,
        "root": str(args.root),
    }
    server = start_server(env=server_env, root=args.root)
    try:
        if args.memory:
            results["memory"] = memory_run(server, args.memory)
        if args.slow_clients:
            results["slow_clients"] = slow_client_run(server, args.slow_clients, args.slow_seconds)
    finally:
        server.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def soak(
    server: Server, heavy: Callable[..., Any], mix: list[tuple[str, bytes]], args: argparse.Namespace
) -> list[dict]:
    """``--soak-rounds`` soaks of ``--soak`` requests (``--soak-kind``) at concurrency 64, RSS sampled."""
    rounds = []
    rss_start = server.rss_bytes()
    for r in range(args.soak_rounds):
        rss_before = server.rss_bytes()
        samples: list[tuple[int, int]] = [(0, rss_before)]
        summary = measured(
            server,
            lambda samples=samples: heavy(
                server.url,
                "soak",
                mix,
                args.soak,
                64,
                args.soak_seconds,
                on_progress=lambda done, samples=samples: samples.append((done, server.rss_bytes())),
            ),
        )
        rss_after = server.rss_bytes()
        summary["round"] = r + 1
        summary["rss_mb_before"] = round(rss_before / 2**20, 1)
        summary["rss_mb_after"] = round(rss_after / 2**20, 1)
        summary["rss_growth_pct"] = round(100 * (rss_after - rss_before) / rss_before, 2)
        since_first = 100 * (rss_after - rss_start) / rss_start
        summary["rss_growth_since_first_round_pct"] = round(since_first, 2)
        summary["rss_mb_samples"] = [(n, round(b / 2**20, 1)) for n, b in samples]
        rounds.append(summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "rss_mb_samples"}), flush=True)
    return rounds


def parse_args() -> tuple[argparse.Namespace, dict[str, str]]:
    """The command line, and the server environment its ``--server-env`` items give."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--starts", type=int, default=3, help="server starts timed for the ready time")
    ap.add_argument("--classify", type=int, default=6000, help="/classify requests (concurrency 32)")
    ap.add_argument("--predict", type=int, default=600, help="/predict requests")
    ap.add_argument("--predict-concurrency", type=int, default=8)
    ap.add_argument("--soak", type=int, default=20000, help="soak requests at concurrency 64 (0: skip)")
    ap.add_argument("--warm-up", type=int, default=2000, help="mixed requests at concurrency 64 first")
    ap.add_argument("--max-seconds", type=float, default=120, help="time limit of each phase")
    ap.add_argument(
        "--soak-kind",
        choices=("mixed", "classify"),
        default="mixed",
        help="the soak's traffic: mixed (9 in 10 /classify, 1 in 10 /predict) or only /classify",
    )
    ap.add_argument("--soak-seconds", type=float, default=600, help="time limit of the soak")
    ap.add_argument(
        "--soak-rounds",
        type=int,
        default=1,
        help="soaks in a row on the same server: whether RSS keeps growing or levels off",
    )
    ap.add_argument("--fer-python", help="python of a venv with the `fer` package, for the comparison")
    ap.add_argument("--fer-mtcnn", action="store_true", help="also time fer with MTCNN (needs torch)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the server, repeatable (e.g. FERFLOW_TTA=none, FERFLOW_TRACING=1)",
    )
    ap.add_argument(
        "--client",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="load generator for /classify and the soak (auto: wrk when installed)",
    )
    ap.add_argument("--memory", type=int, metavar="N", help="only the memory run: N concurrent 25 MP PNGs")
    ap.add_argument("--slow-clients", type=int, metavar="N", help="only the slow-client run: N connections")
    ap.add_argument("--slow-seconds", type=float, default=45, help="length of the slow-client run")
    ap.add_argument(
        "--root", type=Path, default=ROOT, help="checkout to serve in the --memory / --slow-clients runs"
    )
    args = ap.parse_args()
    server_env = {}
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            ap.error(f"--server-env {item!r}: expected NAME=VALUE")
        server_env[name] = value
    return args, server_env


def main() -> None:
    args, server_env = parse_args()
    if args.memory or args.slow_clients:
        only_mode(args, server_env)
        return
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    heavy = _wrk if use_wrk else load

    results: dict[str, object] = {
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": "bench/serving.py " + " ".join(sys.argv[1:]),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "server_env": server_env,
    }
    ready, ready_cpu = [], []
    for _ in range(max(0, args.starts - 1)):
        s = start_server(env=server_env)
        ready.append(s.ready_s)
        ready_cpu.append(s.ready_cpu_s)
        s.stop()
    server = start_server(env=server_env)
    ready.append(server.ready_s)
    ready_cpu.append(server.ready_cpu_s)
    results["ready_s"] = {"median": round(statistics.median(ready), 2), "all": [round(r, 2) for r in ready]}
    results["ready_cpu_s"] = {
        "median": round(statistics.median(ready_cpu), 2),
        "all": [round(r, 2) for r in ready_cpu],
    }
    print(f"ready in {results['ready_s']} s, using {results['ready_cpu_s']} CPU s", flush=True)
    try:
        crops = crop_jobs(500)
        photos = photo_files()
        photo_reqs = photo_jobs(photos)

        # warm-up: every request kind at the soak's concurrency, so that first-touch allocations
        # (connection buffers, 64 requests in flight, the largest batches) are not counted as growth
        mix = mixed_jobs(crops, photo_reqs) if args.soak_kind == "mixed" else crops
        asyncio.run(load(server.url, "warm-up", crops, 300, 32, 30))
        asyncio.run(load(server.url, "warm-up", photo_reqs, 50, 4, 30))
        if args.warm_up:
            asyncio.run(heavy(server.url, "warm-up", mix, args.warm_up, 64, args.max_seconds))
        results["classify"] = measured(
            server, lambda: heavy(server.url, "/classify 48x48", crops, args.classify, 32, args.max_seconds)
        )
        print(json.dumps(results["classify"]), flush=True)
        results["predict"] = measured(
            server,
            lambda: load(
                server.url,
                "/predict 350x350",
                photo_reqs,
                args.predict,
                args.predict_concurrency,
                args.max_seconds,
            ),
        )
        print(json.dumps(results["predict"]), flush=True)
        results["predict_offline_ms_per_image"] = round(offline_predict_ms(photos), 2)
        print(f"offline analyze: {results['predict_offline_ms_per_image']} ms/image", flush=True)

        if args.soak:
            rounds = soak(server, heavy, mix, args)
            results["soak"] = rounds[0]
            if len(rounds) > 1:
                results["soak_rounds"] = rounds
    finally:
        server.stop()

    if args.fer_python:
        for mtcnn in (False, True) if args.fer_mtcnn else (False,):
            try:
                results[f"fer_mtcnn_{mtcnn}"] = fer_predict_ms(args.fer_python, photos, mtcnn)
            except (subprocess.SubprocessError, ValueError, OSError) as exc:
                results[f"fer_mtcnn_{mtcnn}"] = {"error": str(exc)[-500:]}
            print(f"fer (mtcnn={mtcnn}): {results[f'fer_mtcnn_{mtcnn}']}", flush=True)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k not in ("soak", "soak_rounds")}, indent=2))


if __name__ == "__main__":
    main()
