"""Video analysis: speed and memory.

Speed: every frame of a clip through ``ferflow.iter_rows`` (decode, detection, tracking,
classification, smoothing all counted); frames per second and peak RSS. The model is loaded
(and its first calls made) by a warm-up call on the clip's first 0.25 s before the clock starts,
as the peer's is; ``warm_up_seconds`` reports that call.

    .venv/bin/python bench/footage.py ../shared/samples/video/WolfgangLanger_Pexels.mp4

Memory (``--loop-minutes 1 30``): the clip looped to each length (re-encoded, mp4v, in a
temporary folder), then ``ferflow analyze CLIP --out rows.csv`` in a child process, its peak RSS
taken by ``/usr/bin/time``.

Live (``--live-seconds S``): the clip's frames resized to 640x480 and served as a camera
(looping, as fast as they are read) through ``ferflow.footage.live_rows``, the code path of
``ferflow analyze --webcam``; frames per second end to end. Prints one JSON line.

Peer (``--fer-python PY``, with the speed run): after ferflow's timing, and never alongside it,
``bench/fer_video_peer.py`` runs in that interpreter (a venv with `fer`, built by
``bash bench/peers/setup_fer_venv.sh``): ``fer``'s ``Video.analyze`` on every frame of the same clip
(Haar + TFLite, nothing saved). Adds its result under ``fer`` and ``ratio_vs_fer`` (ferflow's
frames/s over fer's). Both clocks exclude model load and warm-up::

    .venv/bin/python bench/footage.py ../shared/samples/video/WolfgangLanger_Pexels.mp4 \
        --fer-python /work/fer-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path


def machine() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    return f"{model}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"


def looped(src: Path, minutes: float, dst: Path) -> int:
    """``src`` repeated for ``minutes`` of video at its own frame rate; returns the frames written."""
    import cv2

    probe = cv2.VideoCapture(str(src))
    fps, size = probe.get(cv2.CAP_PROP_FPS), (int(probe.get(3)), int(probe.get(4)))
    probe.release()
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    total, written = round(minutes * 60 * fps), 0
    while written < total:
        capture = cv2.VideoCapture(str(src))
        while written < total and (frame := capture.read()[1]) is not None:
            writer.write(frame)
            written += 1
        capture.release()
    writer.release()
    return written


def memory(src: Path, lengths: list[float]) -> dict:
    import subprocess
    import sys
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory(prefix="ferflow-bench-footage-") as tmp:
        for minutes in lengths:
            clip = Path(tmp) / f"loop_{minutes:g}min.mp4"
            frames = looped(src, minutes, clip)
            cmd = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "ferflow", "analyze", str(clip)]
            done = subprocess.run(
                [*cmd, "--out", f"{tmp}/rows.csv"], capture_output=True, text=True, check=True
            )
            rss_kb, seconds = done.stderr.strip().splitlines()[-1].split()
            out[f"{minutes:g}min"] = {
                "frames": frames,
                "peak_rss_mb": round(int(rss_kb) / 1024, 1),
                "seconds": float(seconds),
            }
            clip.unlink()
    return out


class LoopingCamera:
    """A 640x480 camera made of a clip's frames, looping."""

    def __init__(self, clip: Path) -> None:
        self.clip, self.capture = clip, None

    def read(self):
        import cv2

        ok, frame = (False, None) if self.capture is None else self.capture.read()
        if not ok:
            self.capture = cv2.VideoCapture(str(self.clip))
            ok, frame = self.capture.read()
        return ok, cv2.resize(frame, (640, 480))


def live(src: Path, seconds: float) -> dict:
    from ferflow.footage import AnalyzeConfig, _recognizer, live_rows

    rows = list(
        live_rows("camera:synthetic", LoopingCamera(src), _recognizer(None), AnalyzeConfig(), seconds)
    )
    frames = len({r["frame"] for r in rows})
    return {
        "live_640x480": {"frames": frames, "seconds": seconds, "frames_per_s": round(frames / seconds, 1)}
    }


def fer_peer(python: Path, src: Path) -> dict:
    """``bench/fer_video_peer.py`` on ``src`` in ``python`` (the fer venv); its JSON line."""
    import subprocess

    script = Path(__file__).with_name("fer_video_peer.py")
    done = subprocess.run([str(python), str(script), str(src)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"fer peer failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", type=Path)
    ap.add_argument("--loop-minutes", type=float, nargs="*", default=[], help="memory: clip lengths to build")
    ap.add_argument("--live-seconds", type=float, default=0.0, help="live: seconds of synthetic camera")
    ap.add_argument("--fer-python", type=Path, help="speed: also time fer's Video.analyze in this Python")
    args = ap.parse_args()
    if args.live_seconds:
        print(
            json.dumps(
                {"machine": machine(), "video": str(args.video), **live(args.video, args.live_seconds)}
            )
        )
        return
    if args.loop_minutes:
        print(
            json.dumps(
                {"machine": machine(), "video": str(args.video), **memory(args.video, args.loop_minutes)}
            )
        )
        return
    import ferflow
    from ferflow.footage import AnalyzeConfig

    started = time.perf_counter()  # model load and first calls, as fer's warm-up before its clock
    list(ferflow.iter_rows(args.video, config=AnalyzeConfig(progress=False, end_s=0.25)))
    warm_up = time.perf_counter() - started
    started = time.perf_counter()
    rows = list(ferflow.iter_rows(args.video, config=AnalyzeConfig(progress=False)))
    seconds = time.perf_counter() - started
    frames = len({r["frame"] for r in rows})
    out = {
        "machine": machine(),
        "video": str(args.video),
        "frames": frames,
        "warm_up_seconds": round(warm_up, 2),
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 1),
        "face_rows": sum(r["face"] >= 0 for r in rows),
        "tracks": len({r["track_id"] for r in rows if r["track_id"] >= 0}),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.fer_python:
        peer = fer_peer(args.fer_python, args.video)
        out["fer"] = peer
        out["ratio_vs_fer"] = round(out["frames_per_s"] / peer["frames_per_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
