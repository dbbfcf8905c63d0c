"""Analysis of real footage: photos, folders and video files, one row per face.

    import ferflow
    frame = ferflow.analyze("session.mp4")            # pandas DataFrame, one row per face per frame
    for row in ferflow.iter_rows("session.mp4"): ...  # the same rows, streamed

Photos and folders give one row per face: ``source``, ``face``, the box ``x``, ``y``, ``w``,
``h``, ``detection_score``, ``label`` and one probability column per class. Videos add
``frame``, ``time_s`` (the frame's presentation time read from the container, not
``frame / fps``), ``track_id`` (the same person keeps an id across frames and across misses
of up to ``max_gap_s``; faces scoring below ``min_score`` are left out), the quality flags
``face_px`` (the box's short side) and ``sharpness``
(variance of the Laplacian of the face's grayscale pixels: low is blurred), and the
probabilities smoothed over time per track (``smooth_<class>``, ``smooth_label``; an
exponential moving average with time constant ``smooth_s``, 0 for none).

A photo or frame without a face still gets one row: ``face`` and ``track_id`` -1, an empty
``label`` and empty probabilities. Every face goes through the server's code
(:class:`ferflow.inference.EmotionRecognizer`): detector, FER framing and model.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}  # what the server decodes too
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg"}
OUTPUT_SUFFIXES = {".csv", ".parquet", ".jsonl"}


class FootageError(ValueError):
    """An input or output that cannot be analysed; the message names it and the fix."""


class UnreadableVideo(FootageError):
    """Not a video this FFmpeg decodes: corrupt, no video stream, or an unknown codec."""


class VideoTooLarge(FootageError):
    """Frames over ``max_pixels``, or longer than ``max_seconds``."""


class SkippedInput(UserWarning):
    """A file of a folder left out because it is not a photo or video (notes, sidecar files);
    the message names it."""


class FailedInput(SkippedInput):
    """A photo or video that could not be analysed, left out of a run over several inputs; the
    message names it and says why. The other files are analysed."""


@dataclass(frozen=True)
class AnalyzeConfig:
    """How footage is read. Video options apply to video files only."""

    fps: float = 0.0  # analysed frames per second of video time; 0: every frame
    start_s: float = 0.0  # first video time analysed
    end_s: float = 0.0  # last video time analysed; 0: to the end
    smooth_s: float = 0.5  # time constant of the per-track moving average; 0: no smoothing
    max_gap_s: float = 1.0  # a track survives this long without a matching face
    min_iou: float = 0.3  # a face continues a track when their boxes overlap this much
    # video faces below this detection score are dropped: on the sample clips real faces score
    # 0.95-0.97 and animated titles' false faces 0.50-0.73 (the detector's own floor is 0.5;
    # photos keep it, as the server does)
    min_score: float = 0.75
    # detection runs on every n-th frame (and after a frame without faces); the frames between
    # crop the last detection's boxes: a face that appears is found within n - 1 frames
    detect_every: int = 3
    batch_frames: int = 16  # frames whose crops are classified in one model call
    # video frames outside these bounds are refused before decoding (8K UHD, 33.2 MP, fits)
    min_side: int = 16
    max_pixels: int = 40_000_000
    max_seconds: float = 0.0  # longer videos are refused before decoding; 0: no limit
    annotate: str = ""  # a path: write the video with boxes, track ids and smoothed labels (one video only)
    progress: bool = True


# --- inputs ----------------------------------------------------------------------------------


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Photos and videos named, folders searched recursively. A named file of another kind is
    refused; other files inside a folder are skipped with a :class:`SkippedInput` warning each."""
    known = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.is_file()):
                if path.suffix.lower() in known:
                    found.append(path)
                else:
                    why = f"skipped, not a photo or video by its extension ({_known()})"
                    warnings.warn(f"{path}: {why}", SkippedInput, 2)
        elif not item.exists():
            raise FootageError(f"{item}: no such file or folder")
        elif item.suffix.lower() in known:
            found.append(item)
        else:
            raise FootageError(f"{item}: not a photo or video by its extension ({_known()})")
    return found


def _known() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))


def _recognizer(model: str | Path | None):
    """The recognizer of ``model`` (default: the reference model), loaded once per process and
    model file: repeated ``ferflow.analyze`` calls do not reload it."""
    from ferflow.model_uri import resolve

    return _load_recognizer(str(resolve(model).path))


@functools.lru_cache(maxsize=4)
def _load_recognizer(path: str):
    from ferflow.inference import EmotionRecognizer

    return EmotionRecognizer.from_model(Path(path))


# --- photos ----------------------------------------------------------------------------------


def _empty(classes: list[str]) -> dict[str, Any]:
    return {"x": None, "y": None, "w": None, "h": None, "detection_score": None, "label": ""} | {
        c: None for c in classes
    }


def _face_row(face: dict[str, Any]) -> dict[str, Any]:
    x, y, w, h = face["box"]
    return {
        "x": x,
        "y": y,
        "w": w,
        "h": h,
        "detection_score": face["detection_score"],
        "label": face["label"],
    } | {c: p for c, p in face["scores"].items()}


def photo_rows(path: Path, recognizer) -> list[dict[str, Any]]:
    """One row per face of a photo (one empty row when it has none)."""
    from ferflow.inference import InferenceError

    try:
        faces = recognizer.analyze(path.read_bytes(), name=str(path))["faces"]
    except InferenceError as exc:
        raise FootageError(exc.message) from None
    if not faces:
        return [{"source": str(path), "face": -1} | _empty(recognizer.classes)]
    return [{"source": str(path), "face": i} | _face_row(f) for i, f in enumerate(faces)]


# --- video -----------------------------------------------------------------------------------


@dataclass
class _Track:
    box: tuple[float, ...]
    last_s: float
    smooth: np.ndarray | None = None
    smooth_s: float = 0.0  # time of the last smoothed value


@dataclass
class Tracker:
    """Greedy IoU matching of this frame's faces to the live tracks, best overlap first; a face
    that matches none starts a track, a track unmatched for ``max_gap_s`` ends."""

    min_iou: float = 0.3
    max_gap_s: float = 1.0
    tracks: dict[int, _Track] = field(default_factory=dict)
    next_id: int = 0

    def update(self, boxes: list[tuple[float, ...]], time_s: float) -> list[int]:
        from ferflow.faces import box_overlaps

        self.tracks = {k: t for k, t in self.tracks.items() if time_s - t.last_s <= self.max_gap_s}
        pairs = sorted(
            ((box_overlaps(b, t.box)[0], i, k) for i, b in enumerate(boxes) for k, t in self.tracks.items()),
            reverse=True,
        )
        ids: list[int | None] = [None] * len(boxes)
        taken: set[int] = set()
        for overlap, i, k in pairs:
            if overlap < self.min_iou:
                break
            if ids[i] is None and k not in taken:
                ids[i] = k
                taken.add(k)
        for i, box in enumerate(boxes):
            if ids[i] is None:
                ids[i], self.next_id = self.next_id, self.next_id + 1
                self.tracks[ids[i]] = _Track(box, time_s)
            self.tracks[ids[i]].box, self.tracks[ids[i]].last_s = box, time_s
        return [int(i) for i in ids]

    def smooth(self, track_id: int, probs: np.ndarray, time_s: float, tau_s: float) -> np.ndarray:
        """Exponential moving average over time (weight of the new frame ``1 - exp(-dt/tau)``)."""
        track = self.tracks[track_id]
        if tau_s <= 0 or track.smooth is None:
            track.smooth = probs.astype(np.float64)
        else:
            weight = 1.0 - math.exp(-max(time_s - track.smooth_s, 0.0) / tau_s)
            track.smooth = (1 - weight) * track.smooth + weight * probs
        track.smooth_s = time_s
        return track.smooth


def _open_video(path: Path):
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FootageError(f"{path}: no decodable video stream (corrupt, audio only, or not a video)")
    return capture


def _frames(path: Path, config: AnalyzeConfig) -> Iterator[tuple[int, float, np.ndarray, np.ndarray]]:
    """(frame index, presentation time in s, BGR frame, its grayscale) of the frames to analyse, decoded one
    at a time: the video is never held in memory."""
    import cv2

    capture = _open_video(path)
    step = 1.0 / config.fps if config.fps > 0 else 0.0
    due, index, decoded = config.start_s, -1, 0
    if config.start_s > 0:
        capture.set(cv2.CAP_PROP_POS_MSEC, config.start_s * 1000.0)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            decoded += 1
            index = int(capture.get(cv2.CAP_PROP_POS_FRAMES)) - 1
            time_s = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if config.end_s and time_s > config.end_s:
                break
            if time_s + 1e-6 < due:
                continue
            due = time_s + step if step else time_s
            # grayscale here, on the decoding thread: the crops and the sharpness read it
            yield index, time_s, frame, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    finally:
        capture.release()
    if decoded == 0:
        raise FootageError(f"{path}: no frame could be decoded (corrupt, truncated or empty video)")


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    frames: int | None  # from the container's index; None when it does not say
    seconds: float  # the container's duration; 0 when it does not say


def probe_video(path: Path, config: AnalyzeConfig) -> VideoInfo:
    """The container's first video stream, read without decoding a frame. Raises
    :class:`UnreadableVideo` (not a container FFmpeg reads, no video stream, a codec without a
    decoder), :class:`VideoTooLarge` (over ``max_pixels`` per frame or ``max_seconds``) or
    :class:`FootageError` (no frames, frames too small), each naming the file."""
    import av

    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UnreadableVideo(
            f"{path}: not a readable video ({reason}): corrupt, truncated or not a video"
        ) from None
    with container:
        if not container.streams.video:
            other = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise UnreadableVideo(f"{path}: no video stream (the file holds {other})")
        stream = container.streams.video[0]
        codec = stream.codec_context
        if codec is None or codec.width <= 0 or codec.height <= 0:
            raise UnreadableVideo(
                f"{path}: the video codec is not supported by this FFmpeg; "
                "re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4"
            )
        info = VideoInfo(codec.width, codec.height, stream.frames or None, (container.duration or 0) / 1e6)
    _check_size(path, info, config)
    return info


def _check_size(path: Path, info: VideoInfo, config: AnalyzeConfig) -> None:
    width, height = info.width, info.height
    if not info.frames and info.seconds <= 0:
        raise FootageError(f"{path}: the video holds no frames")
    if min(width, height) < config.min_side:
        raise FootageError(
            f"{path}: frames of {width}x{height} are too small to hold a face (sides >= {config.min_side} px)"
        )
    if width * height > config.max_pixels:
        raise VideoTooLarge(
            f"{path}: frames of {width}x{height} are over the limit of {config.max_pixels:,} pixels; "
            "rescale it, e.g. ffmpeg -i IN -vf scale=1920:-2 OUT.mp4"
        )
    if config.max_seconds and info.seconds > config.max_seconds:
        raise VideoTooLarge(
            f"{path}: {info.seconds:.1f} s of video is over the limit of {config.max_seconds:g} s; "
            "cut it, e.g. ffmpeg -i IN -t 60 -c copy OUT.mp4"
        )


def _sharpness(gray: np.ndarray, box: tuple[int, ...]) -> float:
    import cv2

    x, y, w, h = (max(0, int(v)) for v in box)
    patch = gray[y : y + h, x : x + w]
    return float(cv2.Laplacian(patch, cv2.CV_64F).var()) if patch.size else float("nan")


@dataclass
class _Frame:
    index: int
    time_s: float
    bgr: np.ndarray
    gray: np.ndarray
    faces: list = field(default_factory=list)  # ferflow.faces.Face, this frame's boxes
    detected: bool = False  # the boxes come from a detection on this very frame
    crops: np.ndarray | None = None  # (faces, 48, 48) until the chunk is classified
    probs: np.ndarray | None = None  # (faces, classes)


def _prefetch(frames: Iterator[Any], depth: int = 32) -> Iterator[Any]:
    """Decode ahead on a thread (OpenCV releases the GIL while decoding), at most ``depth``
    frames in memory, so that decoding and inference overlap. Closing the consumer early (a
    cancelled task) stops the thread and closes ``frames`` (the decoder is released)."""
    import queue
    import threading

    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in frames:
                if not put(item):
                    break
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            if hasattr(frames, "close"):
                frames.close()
        put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _analysed_chunks(
    frames: Iterator[tuple[int, float, np.ndarray, np.ndarray]], recognizer, config: AnalyzeConfig, batch: int
) -> Iterator[list[_Frame]]:
    """Frames in chunks, each frame with its faces and probabilities. Faces are detected every
    ``detect_every`` frames (and on any frame after one without faces); in between, the last
    detection's boxes are cropped from the new frame. Each chunk's crops are classified in one
    batch."""
    import cv2

    last: list = []
    chunk: list[_Frame] = []
    for n, (index, time_s, bgr, gray) in enumerate(frames):
        frame = _Frame(index, time_s, bgr, gray)
        if n % config.detect_every == 0 or not last:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            last = [f for f in recognizer.detector.detect(rgb) if f.score >= config.min_score]
            frame.detected = True
        frame.faces = last
        frame.crops = recognizer.crops(gray, last) if last else None  # FER crops are gray
        chunk.append(frame)
        if len(chunk) == batch:
            yield _classify(chunk, recognizer)
            chunk = []
    if chunk:
        yield _classify(chunk, recognizer)


def _classify(chunk: list[_Frame], recognizer) -> list[_Frame]:
    """One model call for every crop of the chunk."""
    crops = [f.crops for f in chunk if f.crops is not None]
    if crops:
        probs = recognizer.classify_batch(np.concatenate(crops))
        start = 0
        for frame in chunk:
            if frame.crops is not None:
                frame.probs, start = probs[start : start + len(frame.faces)], start + len(frame.faces)
                frame.crops = None
    return chunk


def _frame_rows(path: Path, frame: _Frame, tracker: Tracker, recognizer, config) -> Iterator[dict[str, Any]]:
    """The rows of one analysed frame: its faces tracked and smoothed, or one empty row."""

    classes = recognizer.classes
    base = {"source": str(path), "frame": frame.index, "time_s": round(frame.time_s, 4)}
    if not frame.faces:
        empty = {"track_id": -1, "face": -1, "detected": frame.detected, "face_px": None, "sharpness": None}
        yield base | empty | _empty(classes) | {f"smooth_{c}": None for c in classes} | {"smooth_label": ""}
        return
    ids = tracker.update([tuple(map(float, f.box)) for f in frame.faces], frame.time_s)
    for i, (face, track_id, probs) in enumerate(zip(frame.faces, ids, frame.probs, strict=True)):
        smooth = tracker.smooth(track_id, probs, frame.time_s, config.smooth_s)
        quality = {
            "detected": frame.detected,
            "face_px": int(min(face.box[2:])),
            "sharpness": round(_sharpness(frame.gray, face.box), 1),
        }
        scores = {"box": face.box, "detection_score": round(face.score, 4)} | recognizer.result(probs)
        yield (
            base
            | {"track_id": track_id, "face": i}
            | quality
            | _face_row(scores)
            | {f"smooth_{c}": round(float(p), 4) for c, p in zip(classes, smooth, strict=True)}
            | {"smooth_label": classes[int(np.argmax(smooth))]}
        )


def video_rows(path: Path, recognizer, config: AnalyzeConfig) -> Iterator[dict[str, Any]]:
    """One row per face per analysed frame, tracked and smoothed (an empty row for a frame
    without faces)."""
    from tqdm import tqdm

    info = probe_video(path, config)
    tracker = Tracker(config.min_iou, config.max_gap_s)
    bar = tqdm(total=info.frames, desc=path.name, unit="frame", disable=not config.progress)
    frames = _prefetch(_frames(path, config))
    with _Annotator(path, Path(config.annotate) if config.annotate else None) as annotator:
        for chunk in _analysed_chunks(frames, recognizer, config, config.batch_frames):
            for frame in chunk:
                rows = list(_frame_rows(path, frame, tracker, recognizer, config))
                annotator.write(frame.bgr, rows)
                yield from rows
            bar.update(chunk[-1].index + 1 - bar.n)
    bar.close()


def live_frames(source, limit_s: float = 0.0) -> Iterator[tuple[int, float, np.ndarray, np.ndarray]]:
    """Frames of a live source (anything with OpenCV's ``read()``: a camera, or a synthetic
    source in tests and benchmarks), timed by the wall clock from the first frame, until the
    source ends, ``limit_s`` passes, or Ctrl-C."""
    import time

    import cv2

    started, index = time.perf_counter(), 0
    try:
        while True:
            ok, frame = source.read()
            now = time.perf_counter() - started
            if not ok or (limit_s and now > limit_s):
                return
            yield index, now, frame, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            index += 1
    except KeyboardInterrupt:  # the normal end of a live session: the rows so far are kept
        return


def live_rows(
    name: str, source, recognizer, config: AnalyzeConfig, limit_s: float = 0.0
) -> Iterator[dict[str, Any]]:
    """Rows of a live source, frame by frame (no batching across frames: each row as soon as
    its frame is analysed), tracked and smoothed as for a video file."""
    tracker = Tracker(config.min_iou, config.max_gap_s)
    for chunk in _analysed_chunks(live_frames(source, limit_s), recognizer, config, batch=1):
        yield from _frame_rows(Path(name), chunk[0], tracker, recognizer, config)


def webcam_rows(camera: int, model: str | Path | None = None, config: AnalyzeConfig | None = None):
    """``ferflow analyze --webcam N``: camera N until Ctrl-C."""
    import cv2

    config = config or AnalyzeConfig()
    capture = cv2.VideoCapture(camera)
    if not capture.isOpened():
        raise FootageError(f"camera {camera}: not available (no such device, or in use)")
    recognizer = _recognizer(model)
    names = columns(recognizer.classes, video=True)
    try:
        for row in live_rows(f"camera:{camera}", capture, recognizer, config):
            yield {c: row.get(c) for c in names}
    finally:
        capture.release()


class _Annotator:
    """``--annotate``: the analysed frames with each face's box, track id and smoothed label,
    written to a temporary file renamed when the video ends (deleted if the run fails)."""

    def __init__(self, source: Path, out: Path | None) -> None:
        self.source, self.out, self.writer, self.tmp = source, out, None, None

    def __enter__(self) -> _Annotator:
        return self

    def write(self, bgr: np.ndarray, rows: list[dict[str, Any]]) -> None:
        import cv2

        if self.out is None:
            return
        if self.writer is None:
            self.tmp = self.out.with_name(f".{self.out.stem}.tmp{self.out.suffix}")
            capture = _open_video(self.source)
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            capture.release()
            height, width = bgr.shape[:2]
            self.writer = cv2.VideoWriter(
                str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
            )
        canvas = bgr.copy()
        for row in rows:
            if row["face"] >= 0:
                x, y, w, h = (int(row[k]) for k in ("x", "y", "w", "h"))
                cv2.rectangle(canvas, (x, y), (x + w, y + h), (0, 220, 0), 2)
                text = f"#{row['track_id']} {row['smooth_label']}"
                cv2.putText(canvas, text, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 220, 0), 2)
        self.writer.write(canvas)

    def __exit__(self, kind, error, trace) -> None:
        if self.writer is not None:
            self.writer.release()
            if kind is None:
                self.tmp.replace(self.out)
            else:
                self.tmp.unlink(missing_ok=True)


# --- entry points ----------------------------------------------------------------------------


def iter_rows(
    inputs: str | Path | Iterable[str | Path],
    model: str | Path | None = None,
    config: AnalyzeConfig | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows of every photo, folder and video in ``inputs``, streamed (videos frame by frame)."""
    config = config or AnalyzeConfig()
    paths = expand_inputs([inputs] if isinstance(inputs, str | Path) else inputs)
    if not paths:
        raise FootageError(f"{inputs}: no photo or video found")
    videos = [p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES]
    if config.annotate and len(videos) != 1:
        raise FootageError(
            f"--annotate {config.annotate}: draws one video, and the inputs hold {len(videos)}"
        )
    recognizer = _recognizer(model)
    names = columns(recognizer.classes, video=bool(videos))
    failed = 0
    for path in paths:
        try:
            rows = video_rows(path, recognizer, config) if path.suffix.lower() in VIDEO_SUFFIXES else None
            for row in rows if rows is not None else photo_rows(path, recognizer):
                yield {c: row.get(c) for c in names}  # one column set for photos and videos alike
        except FootageError as exc:
            if len(paths) == 1:
                raise
            failed += 1
            warnings.warn(f"{exc} (skipped)", FailedInput, 2)
    if failed == len(paths):
        raise FootageError(f"none of the {failed} photos and videos could be analysed (see the warnings)")


def columns(classes: list[str], video: bool) -> list[str]:
    """The table's columns, in order: photo columns, and the video ones when there is a video."""
    box = ["x", "y", "w", "h", "detection_score", "label", *classes]
    if not video:
        return ["source", "face", *box]
    quality = ["detected", "face_px", "sharpness"]
    smooth = [*(f"smooth_{c}" for c in classes), "smooth_label"]
    return ["source", "frame", "time_s", "track_id", "face", *quality, *box, *smooth]


def analyze(
    inputs: str | Path | Iterable[str | Path],
    model: str | Path | None = None,
    config: AnalyzeConfig | None = None,
):
    """The rows of :func:`iter_rows` as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(list(iter_rows(inputs, model, config)))


def write_rows(rows: Iterable[dict[str, Any]], out: str | Path) -> Path:
    """Write rows to ``out`` (CSV, or Parquet / JSON Lines by its extension) through a temporary
    file renamed at the end: an interrupted or failed run leaves no file that looks complete.
    CSV and JSON Lines are written row by row as they come (memory stays flat on long videos);
    Parquet is written from all rows at the end."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise FootageError(f"{out}: unknown output format; use .csv, .parquet or .jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        if suffix == ".parquet":
            import pandas as pd

            pd.DataFrame(list(rows)).to_parquet(tmp, index=False)
        else:
            _stream(rows, Path(tmp), suffix)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _stream(rows: Iterable[dict[str, Any]], path: Path, suffix: str) -> None:
    import csv
    import json

    with path.open("w", newline="") as fh:
        writer = None
        for row in rows:
            if suffix == ".jsonl":
                fh.write(json.dumps(row, default=_plain) + "\n")
                continue
            if writer is None:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                writer.writeheader()
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _plain(value: Any) -> Any:
    """NumPy scalars as Python numbers for JSON."""
    return value.item() if hasattr(value, "item") else str(value)


# --- timelines: per-track summary and plots --------------------------------------------------


def _track_rows(table) -> Iterator[tuple[str, int, Any]]:
    """(source, track id, its rows in time order) for every video track of ``table``."""
    if "track_id" not in table.columns:
        return
    tracked = table[table["track_id"] >= 0]
    for (source, track_id), rows in tracked.groupby(["source", "track_id"], sort=True):
        yield str(source), int(track_id), rows.sort_values("time_s")


def _durations(times: np.ndarray) -> np.ndarray:
    """How long each row stands for: until the track's next row (the last: the median step)."""
    steps = np.diff(times)
    last = float(np.median(steps)) if steps.size else 0.0
    return np.append(steps, last)


def summarize(table, window_s: float = 10.0) -> dict[str, dict[str, Any]]:
    """Per video track (``"<source>#<track>"``): seconds seen, the share of that time per
    smoothed emotion, the dominant emotion of each ``window_s`` window, and the onsets (the times
    the smoothed label changes, the first one included)."""
    out: dict[str, dict[str, Any]] = {}
    for source, track_id, rows in _track_rows(table):
        times, labels = rows["time_s"].to_numpy(float), rows["smooth_label"].to_numpy(str)
        weight = _durations(times)
        total = float(weight.sum()) or 1.0
        share = {str(c): round(float(weight[labels == c].sum()) / total, 4) for c in dict.fromkeys(labels)}
        windows = []
        for start in np.arange(times[0], times[-1] + 1e-9, window_s):
            inside = (times >= start) & (times < start + window_s)
            counts = {c: float(weight[inside & (labels == c)].sum()) for c in set(labels[inside])}
            windows.append({"start_s": round(float(start), 3), "dominant": max(counts, key=counts.get)})
        changes = [0, *np.flatnonzero(labels[1:] != labels[:-1]) + 1]
        onsets = [{"time_s": round(float(times[i]), 3), "emotion": str(labels[i])} for i in changes]
        out[f"{source}#{track_id}"] = {
            "seconds": round(float(times[-1] - times[0] + weight[-1]), 3),
            "share": share,
            "windows": windows,
            "onsets": onsets,
        }
    return out


def plot_tracks(table, out_dir: str | Path, classes: list[str]) -> list[Path]:
    """One PNG per video track: each class's probability over time, raw faint, smoothed bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    for source, track_id, rows in _track_rows(table):
        fig, ax = plt.subplots(figsize=(10, 4))
        for k, c in enumerate(classes):
            ax.plot(rows["time_s"], rows[c], color=colours[k % 10], alpha=0.25, linewidth=1)
            ax.plot(rows["time_s"], rows[f"smooth_{c}"], color=colours[k % 10], linewidth=2.2, label=c)
        ax.set(
            xlabel="time (s)",
            ylabel="probability",
            ylim=(0, 1),
            title=f"{Path(source).name}, track {track_id}",
        )
        ax.legend(fontsize=8, ncol=4, loc="upper right")
        fig.tight_layout()
        path = out_dir / f"{Path(source).stem}_track{track_id}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
