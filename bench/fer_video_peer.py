"""The `fer` package's video analysis, timed the way bench/footage.py times ferflow's.

Runs in the fer venv (``bash bench/peers/setup_fer_venv.sh`` builds it)::

    /work/fer-venv/bin/python bench/fer_video_peer.py ../shared/samples/video/WolfgangLanger_Pexels.mp4

The call: ``fer.classes.Video(clip).analyze(FER(mtcnn=False), frequency=1, ...)``: fer's Haar
cascade and its default quantised TFLite classifier on every frame, nothing displayed, saved,
annotated or zipped, results returned as a pandas frame (fer's default ``output="csv"`` writes
``data.csv`` into the working directory). ``Video`` still creates its ``outdir`` however it is
called: that is a temporary folder, removed at the end, and nothing is written into it.

Timing: wall clock of one whole ``analyze`` call: decode, detection, classification, fer's per-frame
bookkeeping and its result conversion. Outside it: imports, model load (``FER()``) and one warm-up
``analyze`` on the first 5 frames. fer's tqdm progress bar is off (``TQDM_DISABLE=1``), like
ferflow's ``progress=False`` in bench/footage.py. Faces are counted by wrapping
``FER.detect_emotions`` (``analyze`` returns only frames with a face, first face only).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WARMUP_FRAMES = 5


def counting_detector() -> Any:
    """``FER(mtcnn=False)`` that counts the frames it is given and the faces it returns."""
    from fer.fer import FER

    class CountingFER(FER):
        frames = 0
        faces = 0

        def detect_emotions(self, img: Any, face_rectangles: Any = None) -> list:
            found = super().detect_emotions(img, face_rectangles)
            self.frames += 1
            self.faces += len(found)
            return found

    return CountingFER(mtcnn=False)


def analyze(clip: Path, detector: Any, outdir: str, max_results: int | None = None) -> Any:
    """One ``Video.analyze`` pass: every frame, nothing shown or written."""
    from fer.classes import Video

    return Video(str(clip), outdir=outdir).analyze(
        detector,
        display=False,
        output="pandas",
        frequency=1,
        max_results=max_results,
        save_fps=None,
        save_frames=False,
        save_video=False,
        annotate_frames=False,
        zip_images=False,
        include_audio=False,
    )


def timed_run(clip: Path) -> dict:
    detector = counting_detector()
    logging.getLogger("fer").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ferflow-bench-fer-video-") as outdir:
        analyze(clip, detector, outdir, max_results=WARMUP_FRAMES)
        detector.frames = detector.faces = 0
        started = time.perf_counter()
        result = analyze(clip, detector, outdir)
        seconds = time.perf_counter() - started
        left_behind = sorted(p.name for p in Path(outdir).iterdir())
    return {
        "frames": detector.frames,
        "seconds": round(seconds, 2),
        "frames_per_s": round(detector.frames / seconds, 1),
        "faces": detector.faces,
        "frames_with_face": len(result),
        "files_written": left_behind,
    }


def versions() -> dict:
    import cv2
    import fer
    import tensorflow as tf

    return {"fer": fer.__version__, "tensorflow": tf.__version__, "opencv": cv2.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", type=Path)
    args = ap.parse_args()
    out = {"peer": "fer Video.analyze (Haar, TFLite)", "video": str(args.video), **timed_run(args.video)}
    print(json.dumps({**out, **versions()}))


if __name__ == "__main__":
    main()
