"""Video analysis speed: every frame of a clip through ``ferflow.iter_rows`` (decode, detection,
tracking, classification, smoothing all counted); frames per second and peak RSS.

    .venv/bin/python bench/footage.py ../shared/samples/video/WolfgangLanger_Pexels.mp4

Prints one JSON line.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", type=Path)
    args = ap.parse_args()
    import ferflow
    from ferflow.footage import AnalyzeConfig

    started = time.perf_counter()
    rows = list(ferflow.iter_rows(args.video, config=AnalyzeConfig(progress=False)))
    seconds = time.perf_counter() - started
    frames = len({r["frame"] for r in rows})
    out = {
        "machine": machine(),
        "video": str(args.video),
        "frames": frames,
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 1),
        "face_rows": sum(r["face"] >= 0 for r in rows),
        "tracks": len({r["track_id"] for r in rows if r["track_id"] >= 0}),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
