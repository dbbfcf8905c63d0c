"""The ferflow inference service (BentoML 1.4): faces in, emotions out.

    bentoml serve serving.service:FERService --port 3000      # or: ferflow serve --port 3000

Endpoints (all JSON; every error, 404 and 500 included, is ``{"error": "...", "status": 4xx,
"type": "...", "request_id": "..."}``, and every response carries ``X-Request-ID``):

- ``POST /predict``        multipart field ``image`` (JPEG/PNG/WebP, any size) →
  ``{"faces": [{"box": [x, y, w, h], "scores": {class: p}, "label"}], "model": {"name", "version"}}``
- ``POST /predict_batch``  the field ``image`` repeated → ``{"results": [...], "model": ...}``
- ``POST /classify``       one pre-cropped face in ``image`` → ``{"scores", "label", "model"}``;
  concurrent requests are grouped into one model call in the worker (:mod:`serving.batching`)
- ``POST /classify_batch`` ``{"faces": [...]}``, 48x48 crops of integers 0..255 (at most
  ``FERFLOW_MAX_CLASSIFY_BATCH_FACES``) → ``(N, C)`` probabilities; checked first, then sent
  through BentoML's adaptive batching (``batchable=True``) in chunks of 64
  (:mod:`serving.classify_batch`)
- ``POST /analyze_video``  multipart field ``video`` (+ optional ``fps``, ``start``, ``end``,
  ``smooth``) → 202 ``{"task_id", "status", ...}``; then ``GET /analyze_video/status``,
  ``GET /analyze_video/get`` (``format=json|csv``), ``PUT /analyze_video/cancel``, each with
  ``?task_id=`` (:mod:`serving.video_tasks`)
- ``GET /model``           the served model: name, version, classes, limits
- ``GET /demo``            the web demo (``serving/static``), with ``GET /examples`` (example
  photos from ``FERFLOW_EXAMPLES_DIR``, :mod:`serving.examples`)
- ``/`` and ``/docs``: Swagger UI of ``/docs.json`` (also ``/openapi.json``), ferflow's own
  document (:mod:`serving.api_docs`); the internal ``/classify_batch`` is left out of it
- ``/livez``, ``/healthz``, ``/readyz`` (ready after model load + warm-up), ``/metrics``

A worker that cannot load the model stops the whole server with exit status 1 and the reason
in one log line, instead of being respawned forever (:mod:`serving.lifecycle`).

The model is ``FERFLOW_MODEL_URI`` (``models:/ferflow@champion`` through the MLflow registry
at ``MLFLOW_TRACKING_URI``) or the committed reference model. ``FERFLOW_API_KEY`` turns on
``Authorization: Bearer`` auth for everything except probes, metrics, docs and the demo page;
``FERFLOW_MAX_UPLOAD_BYTES`` / ``FERFLOW_MAX_PIXELS`` bound uploads. Request bodies are read in
full, within ``FERFLOW_BODY_TIMEOUT_S`` (408 after), before a request counts toward
``FERFLOW_MAX_CONCURRENCY`` (429 beyond; :mod:`serving.gate`); large images decode within a
pixel budget (``FERFLOW_PIXEL_BUDGET``, :mod:`serving.memory`). Logic lives in
:mod:`ferflow.inference`; this module is the HTTP adapter. TensorFlow is never imported.
"""

from __future__ import annotations

import gc
import hmac
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import bentoml
import numpy as np
from _bentoml_sdk.service import get_current_service
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from ferflow.footage import AnalyzeConfig
from ferflow.inference import EmotionRecognizer, InferenceError, ServingConfig, image_pixels, is_small_image
from serving import api_docs, bentoml_fixes, lifecycle
from serving import classify_batch as classify_batch_api
from serving.api_docs import errors, ok
from serving.batching import MicroBatcher, Overloaded
from serving.examples import MEDIA_TYPES, Examples
from serving.gate import GateConfig, RequestGate
from serving.memory import PixelBudget
from serving.uploads import MAX_EXTRA_PARTS, MULTIPART_OVERHEAD, Part, image_parts, parse_multipart, read_body
from serving.video_tasks import VideoTasks

STARTED = time.monotonic()
bentoml_fixes.apply()  # per-request timers that outlived their requests (see the module)
logger = logging.getLogger("bentoml.ferflow")  # a child of BentoML's configured logger

CONFIG = ServingConfig.from_env()
lifecycle.install()  # in `bentoml serve`'s own process: a worker's failed start stops the server
EXAMPLES = Examples.from_env()
STATIC = Path(__file__).parent / "static"
IMAGE_FIELD = "image"
VIDEO_FIELD = "video"
# /analyze_video's optional form fields → AnalyzeConfig's fields
VIDEO_OPTIONS = {"fps": "fps", "start": "start_s", "end": "end_s", "smooth": "smooth_s"}
WORKERS = int(os.environ.get("FERFLOW_WORKERS", "1"))
CLASSIFY_MAX_QUEUE = 1024  # faces waiting per worker before /classify answers 503
CLASSIFY_BATCH_CHUNK = 64  # BentoML's max_batch_size for classify_batch: crops per job
LARGE_IMAGE_PIXELS = 2_000_000  # images from this size on decode within the pixel budget
PIXELS = PixelBudget(CONFIG.decode_pixel_budget, LARGE_IMAGE_PIXELS)

# Paths reachable without the API key: probes, metrics, API docs, the demo page and its assets.
OPEN_PATHS = frozenset(
    {"/livez", "/healthz", "/readyz", "/metrics", "/", "/docs.json", "/schema.json", "/demo"}
    | {"/docs", "/openapi.json", "/examples"}
)
OPEN_PREFIXES = ("/static/", "/static_content/", "/assets/", "/examples/", "/swagger-ui/")
API_PATHS = frozenset(
    {"/predict", "/predict_batch", "/classify", "/classify_batch", "/model"}
    | {f"/analyze_video{op}" for op in ("", "/submit", "/status", "/get", "/cancel")}
)
PROBE_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
# URLs (regular expressions) BentoML's OpenTelemetry middleware skips: probes and metrics always,
# everything unless tracing is on (see ServingConfig.tracing)
UNTRACED_URLS = ["/livez", "/readyz", "/healthz", "/metrics"] if CONFIG.tracing else [".*"]

REQUEST_ERRORS = bentoml.metrics.Counter(
    name="ferflow_rejected_requests",
    documentation="Requests refused with a 4xx, by endpoint and reason",
    labelnames=["endpoint", "status", "reason"],
)
CLASSIFY_BATCH = bentoml.metrics.Histogram(
    name="ferflow_classify_batch_size",
    documentation="Faces per model call on /classify (in-worker adaptive micro-batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
FACES = bentoml.metrics.Histogram(
    name="ferflow_faces_per_image",
    documentation="Faces found per analysed image",
    buckets=(0, 1, 2, 4, 8, 16, 32, 64),
)


def error_response(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": message, "status": status, "type": kind}, status_code=status, headers=headers
    )


def auth_fault(scope: dict[str, Any], key: bytes) -> str | None:
    """Why the request's ``Authorization`` header does not carry ``key``; None when it does."""
    auth = dict(scope.get("headers") or []).get(b"authorization", b"")
    scheme, _, token = auth.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return "missing API key: send the header 'Authorization: Bearer <key>'"
    if not hmac.compare_digest(token.strip(), key):
        return "wrong API key in the Authorization header"
    return None


class ApiKeyMiddleware:
    """``Authorization: Bearer <FERFLOW_API_KEY>`` on every path but the open ones (pure ASGI)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        message = auth_fault(scope, self.key)
        if message is None:
            await self.app(scope, receive, send)
            return
        endpoint = path if path in API_PATHS else "other"  # bounded label values
        REQUEST_ERRORS.labels(endpoint=endpoint, status="401", reason="Unauthorized").inc()
        response = error_response(
            401, message, "Unauthorized", {"WWW-Authenticate": 'Bearer realm="ferflow"'}
        )
        await response(scope, receive, send)


http = FastAPI(
    title="ferflow",
    description="Facial emotion recognition: per-face emotion scores for uploaded photos.",
    docs_url=None,  # BentoML serves the OpenAPI UI at / and the spec at /docs.json
    redoc_url=None,
    openapi_url=None,
)
http.mount("/static", StaticFiles(directory=STATIC), name="static")
SWAGGER_ASSETS = api_docs.swagger_assets()
if SWAGGER_ASSETS is not None:
    http.mount("/swagger-ui", StaticFiles(directory=SWAGGER_ASSETS), name="swagger-ui")


@http.exception_handler(InferenceError)
async def _inference_error(request: Request, exc: InferenceError) -> JSONResponse:
    REQUEST_ERRORS.labels(
        endpoint=request.url.path, status=str(exc.status_code), reason=type(exc).__name__
    ).inc()
    return error_response(exc.status_code, exc.message, type(exc).__name__)


@http.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), "HTTPException", getattr(exc, "headers", None))


@http.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, f"invalid request: {exc.errors()}", "RequestValidationError")


def _multipart_body(required: str, properties: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI description of a multipart body the handlers parse themselves."""
    schema = {"type": "object", "required": [required], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _upload_body(max_images: int) -> dict[str, Any]:
    image = {"type": "string", "format": "binary", "description": "JPEG, PNG or WebP"}
    schema = image if max_images == 1 else {"type": "array", "items": image, "maxItems": max_images}
    return _multipart_body(IMAGE_FIELD, {IMAGE_FIELD: schema})


AUTH_ERROR = {401: "missing or wrong API key (when FERFLOW_API_KEY is set)"}
UPLOAD_ERRORS = errors(
    {
        400: "malformed request (multipart, corrupt or truncated image, missing field)",
        **AUTH_ERROR,
        408: "the request body did not all arrive within FERFLOW_BODY_TIMEOUT_S",
        413: "upload or image (pixels, checked before decoding) over the limit",
        415: "not multipart/form-data, or not a JPEG/PNG/WebP image",
        422: "image too small",
        429: "FERFLOW_MAX_CONCURRENCY requests already in progress: retry later",
    }
)
VIDEO_ERRORS = errors(
    {
        400: "malformed request or form field",
        **AUTH_ERROR,
        413: "upload, frame size or duration over the limit",
        415: "not a video FFmpeg decodes (corrupt, no video stream, unknown codec)",
        422: "a video with no frames, or frames too small to hold a face",
        503: "this worker's video queue is full: retry later",
    }
)
TASK_ERRORS = errors({**AUTH_ERROR, 404: "unknown task_id, or its result expired"})


def _video_body() -> dict[str, Any]:
    seconds = {"type": "number", "minimum": 0}
    limits = CONFIG.video
    video = {
        "type": "string",
        "format": "binary",
        "description": f"any video FFmpeg decodes (mp4, mov, mkv, webm), at most "
        f"{limits.max_bytes:,} bytes and {limits.max_seconds} s",
    }
    return _multipart_body(
        VIDEO_FIELD,
        {
            VIDEO_FIELD: video,
            "fps": seconds | {"description": "frames analysed per second; 0: every frame"},
            "start": seconds | {"description": "first second analysed"},
            "end": seconds | {"description": "last second analysed; 0: to the end"},
            "smooth": {"type": "string", "description": "smoothing time constant, s, or none"},
        },
    )


async def _images(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    per_image = CONFIG.limits.max_upload_bytes
    limit = (
        per_image if max_images == 1 else min(per_image * max_images, CONFIG.max_batch_bytes)
    ) + MULTIPART_OVERHEAD
    body = await read_body(request.stream(), request.headers.get("content-length"), limit)
    parts = parse_multipart(body, request.headers.get("content-type"), max_images + MAX_EXTRA_PARTS)
    if max_images == 1 and sum(p.name == IMAGE_FIELD for p in parts) > 1:
        raise InferenceError("send one image per /predict or /classify request; several go to /predict_batch")
    return [(p.label, p.data) for p in image_parts(parts, IMAGE_FIELD, max_images)]


@bentoml.service(
    name="ferflow",
    workers=WORKERS,
    # No max_concurrency here: BentoML would count a request from its first byte, so slow
    # uploads could fill it; serving.gate applies CONFIG.max_concurrency once bodies are in.
    traffic={"timeout": 60},
    tracing={"excluded_urls": UNTRACED_URLS},  # a default: a BentoML config file overrides it
    endpoints={"livez": "/livez", "readyz": "/readyz"},
)
@bentoml.asgi_app(http, path="/")
class FERService:
    """Facial emotion recognition with the ferflow champion (or reference) model."""

    def __init__(self) -> None:
        started = time.perf_counter()
        try:
            self.recognizer = EmotionRecognizer.from_config(CONFIG)
            self.recognizer.warm_up()
        except Exception as exc:  # a model that does not load fails the same way on every respawn
            lifecycle.stop_server(exc)  # exits, under `bentoml serve`
            raise
        self.batcher = MicroBatcher(
            self.recognizer.classify_batch,
            max_batch_size=CONFIG.max_classify_batch,
            max_queue=CLASSIFY_MAX_QUEUE,
            on_batch=CLASSIFY_BATCH.observe,
        )
        self.videos = VideoTasks(self.recognizer, CONFIG.video)
        # Everything allocated so far (modules, model, BentoML) lives as long as the process:
        # move it out of the collector's reach, so that a full collection under load scans only
        # request garbage instead of the whole heap (p99 at concurrency 32: 137 → 67 ms).
        gc.collect()
        gc.freeze()
        self.ready = True
        logger.info(
            "ferflow: serving %s %s (%s, classes %s) in %.2f s; warm-up done %.2f s after process start; "
            "tensorflow imported: %s; auth %s",
            self.recognizer.info.name,
            self.recognizer.info.version,
            self.recognizer.info.uri,
            ",".join(self.recognizer.classes),
            time.perf_counter() - started,
            time.monotonic() - STARTED,
            "tensorflow" in sys.modules,
            "on" if CONFIG.api_key else "off",
        )

    def __is_ready__(self) -> bool:
        return getattr(self, "ready", False)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=CLASSIFY_BATCH_CHUNK, max_latency_ms=5000)
    def classify_batch(self, faces: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)`` for uint8 grayscale 48x48 crops ``(N, 48, 48)``.

        Behind ``POST /classify_batch``, whose requests :mod:`serving.classify_batch` checks and
        splits first; BentoML groups concurrent chunks into one call.
        """
        try:
            return self.recognizer.classify_batch(np.asarray(faces, dtype=np.uint8))
        except InferenceError as exc:
            raise bentoml.exceptions.InvalidArgument(exc.message) from None


# --- HTTP routes (FastAPI, mounted on the BentoML app) ---------------------------------------
# Plain functions, not methods of FERService: BentoML hands a method its `self` through a
# synchronous FastAPI dependency (get_current_service), which FastAPI runs on a worker thread,
# one thread round trip per request before the handler starts. Called directly, the same
# function is a global read.


def _service() -> FERService:
    """The worker's service instance, as BentoML registered it before serving requests."""
    return get_current_service()


@http.post(
    "/predict",
    openapi_extra=_upload_body(1),
    tags=["Inference"],
    responses={**ok(api_docs.PredictResponse, "the faces found", api_docs.PREDICT_EXAMPLE), **UPLOAD_ERRORS},
)
async def predict(request: Request) -> JSONResponse:
    """Every face in one photo with its per-class emotion scores."""
    ((name, data),) = await _images(request, 1)
    out = await _decode_run([data], _service().recognizer.analyze, data, name)
    FACES.observe(len(out["faces"]))
    return JSONResponse(out)


@http.post(
    "/predict_batch",
    openapi_extra=_upload_body(CONFIG.max_batch_images),
    tags=["Inference"],
    responses={
        **ok(api_docs.PredictBatchResponse, "the faces of each image", api_docs.PREDICT_BATCH_EXAMPLE),
        **UPLOAD_ERRORS,
    },
)
async def predict_batch(request: Request) -> JSONResponse:
    """Several photos at once (the field ``image`` repeated); results in upload order."""
    rec = _service().recognizer
    images = await _images(request, CONFIG.max_batch_images)

    def analyze_all() -> list[dict[str, Any]]:
        results = []
        for i, (name, data) in enumerate(images):
            try:
                out = rec.analyze(data, name=f"image[{i}] {name}")
            except InferenceError as exc:  # the whole request fails, naming the image at fault
                raise type(exc)(exc.message, exc.status_code) from None
            results.append({"faces": out["faces"]})
        return results

    results = await _decode_run([data for _, data in images], analyze_all)
    for r in results:
        FACES.observe(len(r["faces"]))
    return JSONResponse({"results": results, "model": rec.model})


@http.post(
    "/classify",
    openapi_extra=_upload_body(1),
    tags=["Inference"],
    responses={
        **ok(api_docs.ClassifyResponse, "the face's scores", api_docs.CLASSIFY_EXAMPLE),
        **UPLOAD_ERRORS,
        **errors({503: "too many faces waiting: retry later"}),
    },
)
async def classify(request: Request) -> JSONResponse:
    """One pre-cropped face (any size; converted to 48x48 gray) → scores and label."""
    svc = _service()
    ((name, data),) = await _images(request, 1)
    if is_small_image(data):  # decoding it costs the event loop less than a thread hop
        face = svc.recognizer.face_crop(data, name)
    else:  # a large upload (or a bomb or malformed data: the decoder names the fault) off the loop
        face = await _decode_run([data], svc.recognizer.face_crop, data, name)
    try:
        probs = await svc.batcher.submit(face)
    except Overloaded:
        return error_response(503, "server overloaded: retry the request later", "ServiceUnavailable")
    return JSONResponse({**svc.recognizer.result(probs), "model": svc.recognizer.model})


def _video_options(parts: list[Part]) -> AnalyzeConfig:
    """``fps``, ``start``, ``end`` (seconds) and ``smooth`` (seconds, or ``none``) form fields."""
    values: dict[str, float] = {}
    for part in parts:
        if part.name not in VIDEO_OPTIONS:
            continue
        text = part.data.decode("utf-8", "replace").strip()
        try:
            value = 0.0 if part.name == "smooth" and text.lower() == "none" else float(text)
        except ValueError:
            value = -1.0
        if not value >= 0:  # also NaN
            raise InferenceError(f"form field '{part.name}': {text[:40]!r} is not a number of seconds >= 0")
        values[VIDEO_OPTIONS[part.name]] = value
    if values.get("end_s") and values["end_s"] <= values.get("start_s", 0.0):
        raise InferenceError("form fields 'start' and 'end': 'end' must come after 'start'")
    return AnalyzeConfig(progress=False, **values)


VIDEO_ACCEPTED = ok(
    api_docs.VideoTaskAccepted, "accepted: the task, and its URLs", api_docs.TASK_ACCEPTED_EXAMPLE, code=202
)


VIDEO_SUBMIT = {
    "openapi_extra": _video_body(),
    "tags": ["Video"],
    "status_code": 202,
    "responses": {**VIDEO_ACCEPTED, **VIDEO_ERRORS},
}


@http.post("/analyze_video", **VIDEO_SUBMIT)
@http.post("/analyze_video/submit", **VIDEO_SUBMIT)  # BentoML's task route name
async def analyze_video(request: Request) -> JSONResponse:
    """Submit a video (multipart field ``video``; optional fields ``fps``, ``start``, ``end``,
    ``smooth``): checked at once, analysed in the background. Answers 202 with the task id."""
    limit = CONFIG.video.max_bytes + MULTIPART_OVERHEAD
    body = await read_body(request.stream(), request.headers.get("content-length"), limit)
    parts = parse_multipart(body, request.headers.get("content-type"), 1 + MAX_EXTRA_PARTS)
    (video,) = image_parts(parts, VIDEO_FIELD, 1)
    config = _video_options(parts)
    del body  # the upload's bytes live in `video` only, until written to the task's folder
    status = await _run(_service().videos.submit, video.data, video.filename or VIDEO_FIELD, config)
    task = status["task_id"]
    links = {f"{op}_url": f"/analyze_video/{op}?task_id={task}" for op in ("status", "get", "cancel")}
    return JSONResponse({**status, **links}, status_code=202)


@http.get(
    "/analyze_video/status",
    tags=["Video"],
    responses={
        **ok(api_docs.VideoTaskStatus, "the task's state and progress", api_docs.TASK_DONE_EXAMPLE),
        **TASK_ERRORS,
    },
)
async def analyze_video_status(task_id: str | None = None) -> JSONResponse:
    """A task's state (``pending``, ``in_progress``, ``completed``, ``failed``, ``canceled``)
    and progress (``frames_done`` of ``frames_total``)."""
    return JSONResponse(_service().videos.status(task_id))


@http.get(
    "/analyze_video/get",
    tags=["Video"],
    responses={
        200: {
            "model": api_docs.VideoResult,
            "description": "the rows and per-track summary (JSON), or the rows as CSV (format=csv)",
            "content": {
                "application/json": {"example": api_docs.VIDEO_RESULT_EXAMPLE},
                "text/csv": {"schema": {"type": "string"}},
            },
        },
        **TASK_ERRORS,
        **errors({400: "format is not json or csv", 409: "the task is not completed yet, or was canceled"}),
        **errors({422: "the task failed: its error", 500: "the analysis failed"}),
    },
)
async def analyze_video_get(task_id: str | None = None, format: str = "json") -> FileResponse:
    """A completed task's rows (one per face per analysed frame, as ``ferflow analyze`` writes
    them) as JSON with a per-track summary, or ``format=csv``; a failed task answers its error."""
    path = _service().videos.result_path(task_id, format)
    if format == "csv":
        return FileResponse(path, media_type="text/csv", filename=f"{task_id}.csv")
    return FileResponse(path, media_type="application/json")


@http.put(
    "/analyze_video/cancel",
    tags=["Video"],
    responses={**ok(api_docs.VideoTaskStatus, "the task's status after the cancel"), **TASK_ERRORS},
)
async def analyze_video_cancel(task_id: str | None = None) -> JSONResponse:
    """Stop a pending or running task; its upload is deleted."""
    return JSONResponse(_service().videos.cancel(task_id))


@http.get(
    "/model",
    tags=["Inference"],
    responses={
        **ok(api_docs.ModelResponse, "the model and the limits", api_docs.MODEL_INFO_EXAMPLE),
        **errors(AUTH_ERROR),
    },
)
async def model() -> JSONResponse:
    """The served model and the request limits."""
    rec = _service().recognizer
    limits = CONFIG.limits
    return JSONResponse(
        {
            **rec.model,
            "classes": rec.classes,
            "detector": str(CONFIG.face.detector),
            "limits": {
                "max_upload_bytes": limits.max_upload_bytes,
                "max_pixels": limits.max_pixels,
                "min_side": limits.min_side,
                "max_batch_images": CONFIG.max_batch_images,
                "max_video_bytes": CONFIG.video.max_bytes,
                "max_video_seconds": CONFIG.video.max_seconds,
                "max_classify_batch_faces": CONFIG.max_classify_batch_faces,
                "body_timeout_s": CONFIG.body_timeout_s,
            },
            "auth": bool(CONFIG.api_key),
        }
    )


@http.get("/demo", include_in_schema=False)
async def demo() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@http.get("/examples", include_in_schema=False)
async def examples() -> JSONResponse:
    """The demo's example photos (an empty list where FERFLOW_EXAMPLES_DIR is absent)."""
    return JSONResponse(EXAMPLES.listing())


@http.get("/examples/{name}", include_in_schema=False)
async def example(name: str) -> FileResponse:
    path = EXAMPLES.path(name)
    if path is None:
        raise StarletteHTTPException(404, f"no example photo {name!r}: GET /examples lists them")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix.lower()])


# --- API docs: ferflow's OpenAPI document at BentoML's /docs.json and the usual paths ---------
# BentoML matches a mounted app's routes before its own /docs.json and /, so these answer.

_spec: dict[str, Any] | None = None


@http.get("/docs.json", include_in_schema=False)
@http.get("/openapi.json", include_in_schema=False)
async def openapi_document() -> JSONResponse:
    global _spec
    if _spec is None:  # built once: the routes do not change while the server runs
        _spec = api_docs.public_spec(FERService, http)
    return JSONResponse(_spec)


@http.get("/docs", include_in_schema=False)
async def docs_page() -> Response:
    """Swagger UI of /docs.json, from the assets BentoML ships; also at / in place of BentoML's
    page, which loads Google Tag Manager (not offline) and hides the document's title. Without
    those assets (another BentoML layout), / stays BentoML's page and /docs leads there."""
    if SWAGGER_ASSETS is None:
        return RedirectResponse("./")
    return FileResponse(STATIC / "docs.html", media_type="text/html")


if SWAGGER_ASSETS is not None:
    http.add_api_route("/", docs_page, methods=["GET"], include_in_schema=False)


_cpu_slots: anyio.CapacityLimiter | None = None


async def _run(func: Any, *args: Any) -> Any:
    """CPU work off the event loop (the model runtimes release the GIL), at most
    ``CONFIG.cpu_slots`` at a time per worker."""
    global _cpu_slots
    if _cpu_slots is None:  # created inside the running loop, as anyio requires
        _cpu_slots = anyio.CapacityLimiter(CONFIG.cpu_slots)
    return await anyio.to_thread.run_sync(func, *args, limiter=_cpu_slots)


async def _decode_run(images: list[bytes], func: Any, *args: Any) -> Any:
    """:func:`_run` for work that decodes ``images`` (one at a time): it starts once the largest
    image's pixels fit in the worker's pixel budget, waiting on the event loop until then."""
    async with PIXELS.hold(max((image_pixels(d) for d in images), default=0)):
        return await _run(func, *args)


def _body_limits() -> dict[str, int]:
    """Bytes each route's body may have; the gate reads bodies of these paths up front."""
    per_image = CONFIG.limits.max_upload_bytes
    batch = min(per_image * CONFIG.max_batch_images, CONFIG.max_batch_bytes)
    video = CONFIG.video.max_bytes + MULTIPART_OVERHEAD
    return {
        "/predict": per_image + MULTIPART_OVERHEAD,
        "/classify": per_image + MULTIPART_OVERHEAD,
        "/predict_batch": batch + MULTIPART_OVERHEAD,
        "/analyze_video": video,
        "/analyze_video/submit": video,
        "/classify_batch": CONFIG.max_classify_batch_bytes,
    }


def _may_read(scope: dict[str, Any]) -> bool:
    """The gate reads no body of a request the API key check will refuse."""
    return not CONFIG.api_key or auth_fault(scope, CONFIG.api_key.encode()) is None


# Added first, so outermost of ferflow's middlewares: every response passes its error shaping.
FERService.add_asgi_middleware(
    RequestGate,
    config=GateConfig(
        body_limits=_body_limits(),
        body_timeout_s=CONFIG.body_timeout_s,
        max_concurrency=-(-CONFIG.max_concurrency // WORKERS),  # per worker, as BentoML divided it
        unlimited_paths=PROBE_PATHS,
        handlers={
            "/classify_batch": classify_batch_api.handler(
                CONFIG.max_classify_batch_faces, CLASSIFY_BATCH_CHUNK
            )
        },
        may_read=_may_read,
    ),
)
if CONFIG.api_key:
    FERService.add_asgi_middleware(ApiKeyMiddleware, api_key=CONFIG.api_key)

__all__ = ["FERService"]
