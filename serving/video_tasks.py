"""Video analysis as background tasks for the HTTP service.

``POST /analyze_video`` (also ``/analyze_video/submit``) takes a video upload, checks it and
answers 202 with a task id at once; ``GET /analyze_video/status``, ``GET /analyze_video/get``
(``format=json`` or ``csv``) and ``PUT /analyze_video/cancel`` take ``?task_id=``. These are the
routes of BentoML's task protocol (``@bentoml.task``), served here rather than by BentoML's own
task store because that store writes every request body (the whole upload) into SQLite and
keeps it for retries, reads it whole before any limit applies, and returns results only in the
method's own output type. Here:

- the upload is refused from its Content-Length over ``max_bytes``, and probed (container,
  codec, frame size, duration) before it is queued: a bad video is a 4xx at submission;
- each worker runs one analysis at a time on its own thread at a lower CPU priority, so the
  photo endpoints keep answering while a long video is analysed;
- the uploaded file is deleted when its task ends (completed, failed or cancelled);
- status and results are files in one folder that every worker reads (a poll may reach any
  worker), deleted ``ttl_s`` after the task ends.

The analysis is :func:`ferflow.footage.video_rows` with the service's recognizer: the code path
of ``ferflow analyze``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from ferflow.footage import (
    AnalyzeConfig,
    FootageError,
    UnreadableVideo,
    VideoInfo,
    VideoTooLarge,
    columns,
    probe_video,
    summarize,
    video_rows,
    write_rows,
)
from ferflow.inference import InferenceError, PayloadTooLarge, UnsupportedFormat, VideoTaskLimits

TASK_ID = re.compile(r"[0-9a-f]{32}")
FINISHED = ("completed", "failed", "canceled")
PROGRESS_EVERY_S = 0.5  # how often a running task's status file is rewritten
LOW_PRIORITY = 10  # the analysis thread's nice value: photo requests go first


class TaskNotFound(InferenceError):
    status_code = 404


class Busy(InferenceError):
    status_code = 503


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Atomically: a poll never reads a half-written file."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(value, default=_plain))
    tmp.replace(path)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # NumPy scalars
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN (a sharpness not measured) as null: JSON has no NaN."""
    return {k: _plain(v) for k, v in row.items()}


class VideoTasks:
    """Submitted videos, their analysis thread, and their status and result files."""

    def __init__(self, recognizer: Any, limits: VideoTaskLimits) -> None:
        self.recognizer = recognizer
        self.limits = limits
        self.root = Path(limits.task_dir or Path(tempfile.gettempdir()) / "ferflow-tasks")
        self.root.mkdir(parents=True, exist_ok=True)
        self.waiting: queue.Queue[tuple[Path, AnalyzeConfig]] = queue.Queue(maxsize=limits.queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- submission (called on an anyio worker thread) ----------------------------------------

    def submit(self, data: bytes, filename: str, config: AnalyzeConfig) -> dict[str, Any]:
        """Store, probe and queue one upload; the task's first status."""
        self.expire()
        task_id = uuid.uuid4().hex
        folder = self.root / task_id
        folder.mkdir()
        video = folder / f"upload{Path(filename).suffix.lower()[:8]}"
        try:
            video.write_bytes(data)
            info = self._probe(video, filename, config)
            status = {
                "task_id": task_id,
                "status": "pending",
                "created_at": time.time(),
                "video": {
                    "filename": filename,
                    "width": info.width,
                    "height": info.height,
                    "seconds": info.seconds,
                },
                "frames_total": info.frames,
                "frames_done": 0,
                "pid": os.getpid(),
            }
            _write_json(folder / "status.json", status)
            self.waiting.put_nowait((video, config))
        except queue.Full:
            shutil.rmtree(folder, ignore_errors=True)
            full = f"{self.limits.queue} videos are waiting or running on this worker; retry later"
            raise Busy(full) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._start()
        return {k: v for k, v in status.items() if k != "pid"}

    def _probe(self, video: Path, filename: str, config: AnalyzeConfig) -> VideoInfo:
        label = f"video ({filename})"
        try:
            return probe_video(video, replace(config, max_seconds=self.limits.max_seconds))
        except UnreadableVideo as exc:
            raise UnsupportedFormat(str(exc).replace(str(video), label)) from None
        except VideoTooLarge as exc:
            raise PayloadTooLarge(str(exc).replace(str(video), label)) from None
        except FootageError as exc:
            raise InferenceError(str(exc).replace(str(video), label), 422) from None

    # --- status, results, cancel ------------------------------------------------------------

    def folder(self, task_id: str | None) -> Path:
        known = bool(task_id and TASK_ID.fullmatch(task_id))
        if not known or not (self.root / str(task_id) / "status.json").is_file():
            raise TaskNotFound(f"task_id {task_id!r} not found (unknown, or its result expired)")
        return self.root / task_id

    def status(self, task_id: str | None) -> dict[str, Any]:
        status = json.loads((self.folder(task_id) / "status.json").read_text())
        status.pop("pid", None)
        return status

    def result_path(self, task_id: str | None, fmt: str) -> Path:
        """The finished result file; a failed task raises its own error again."""
        if fmt not in ("json", "csv"):
            raise InferenceError(f"format={fmt!r}: use json or csv")
        status = self.status(task_id)
        if status["status"] == "failed":
            raise InferenceError(status["error"]["error"], status["error"]["status"])
        if status["status"] != "completed":
            raise InferenceError(
                f"task {task_id} is {status['status']}, not completed: poll /analyze_video/status", 409
            )
        return self.folder(task_id) / f"result.{fmt}"

    def cancel(self, task_id: str | None) -> dict[str, Any]:
        folder = self.folder(task_id)
        (folder / "cancel").touch()
        status = self.status(task_id)
        if status["status"] == "pending":  # the worker skips it when its turn comes
            self._finish(folder, status, "canceled")
        return self.status(task_id)

    def expire(self) -> None:
        """Delete finished tasks older than ``ttl_s``; fail the ones a dead worker left behind."""
        now = time.time()
        for status_file in self.root.glob("*/status.json"):
            with contextlib.suppress(OSError, ValueError):
                status = json.loads(status_file.read_text())
                if status["status"] in FINISHED and now - status.get("finished_at", now) > self.limits.ttl_s:
                    shutil.rmtree(status_file.parent, ignore_errors=True)
                elif status["status"] not in FINISHED and not _alive(status.get("pid", 0)):
                    lost = "the server stopped during the analysis: submit the video again"
                    error = {"error": lost, "status": 500}
                    self._finish(status_file.parent, status, "failed", error)

    def _finish(self, folder: Path, status: dict[str, Any], state: str, error: dict | None = None) -> None:
        for upload in folder.glob("upload*"):
            upload.unlink(missing_ok=True)
        status.update(status=state, finished_at=time.time())
        if error:
            status["error"] = error
        _write_json(folder / "status.json", status)

    # --- the analysis thread ----------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="ferflow-video", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        with contextlib.suppress(OSError):  # Linux: a thread's own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOW_PRIORITY)
        while True:
            video, config = self.waiting.get()
            folder = video.parent
            status = json.loads((folder / "status.json").read_text())
            if status["status"] != "pending":  # cancelled while it waited
                continue
            try:
                self._analyse(folder, video, config, status)
            except FootageError as exc:
                message = str(exc).replace(str(video), f"video ({status['video']['filename']})")
                self._finish(folder, status, "failed", {"error": message, "status": 422})
            except Exception as exc:  # the task fails; the worker keeps serving
                self._finish(folder, status, "failed", {"error": f"analysis failed: {exc}", "status": 500})

    def _analyse(self, folder: Path, video: Path, config: AnalyzeConfig, status: dict[str, Any]) -> None:
        import pandas as pd

        status.update(status="in_progress", started_at=time.time())
        _write_json(folder / "status.json", status)
        names = columns(self.recognizer.classes, video=True)
        rows: list[dict[str, Any]] = []
        shown = time.monotonic()
        source = status["video"]["filename"]
        for row in video_rows(video, self.recognizer, config):
            rows.append(_finite({c: row.get(c) for c in names} | {"source": source}))
            if time.monotonic() - shown > PROGRESS_EVERY_S:
                shown = time.monotonic()
                if (folder / "cancel").exists():
                    self._finish(folder, status, "canceled")
                    return
                status["frames_done"] = rows[-1]["frame"] + 1
                _write_json(folder / "status.json", status)
        table = pd.DataFrame(rows, columns=names)
        result = {
            "task_id": folder.name,
            "model": self.recognizer.model,
            "columns": names,
            "rows": rows,
            "summary": summarize(table) if rows else {},
        }
        _write_json(folder / "result.json", result)
        write_rows(rows, folder / "result.csv")
        status["frames_done"] = status["frames_total"] or (rows[-1]["frame"] + 1 if rows else 0)
        self._finish(folder, status, "completed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0
