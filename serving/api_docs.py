"""The service's public OpenAPI document: response models with examples, ferflow's own title,
version and description, and only the routes a client should call.

BentoML 1.4 builds ``/docs.json`` (``_bentoml_sdk.service.openapi.generate_spec``) from three
parts: its infrastructure endpoints (probes, ``/metrics``), one entry per ``@bentoml.api``
method, and the routes of mounted FastAPI apps, which it runs through its own OpenAPI 3.0
classes. That round trip drops every JSON-schema keyword those classes lack (``examples``,
``const``, ``additionalProperties`` of a typed dict survive only in part), the title is the
service name, the version "None", and the description BentoML's README boilerplate.

:func:`public_spec` keeps BentoML's infrastructure entries and replaces the rest with FastAPI's
own document of the mounted app (lossless, OpenAPI 3.1, which the bundled Swagger UI reads).
The ``@bentoml.api`` methods are left out: ``/classify_batch`` is an internal array endpoint.
It still answers, and it stays in ``/schema.json``, the document BentoML's Python client reads.
The service serves the result at ``/docs.json`` (BentoML's path for it) and ``/openapi.json``,
and Swagger UI at ``/`` and ``/docs`` from the assets BentoML bundles (:func:`swagger_assets`);
its routes come before BentoML's in the router, so they win.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TITLE = "ferflow"
DESCRIPTION = """Facial emotion recognition: every face in a photo with its per-class emotion
probabilities, one pre-cropped face, or a video analysed as a background task.

- Uploads are `multipart/form-data` (field `image`, or `video` for `/analyze_video`); images are
  decoded in memory and never stored.
- Errors are JSON: `{"error": "...", "status": 4xx, "type": "..."}`.
- When the server sets `FERFLOW_API_KEY`, the API routes need `Authorization: Bearer <key>`
  (probes, `/metrics`, these docs and the demo stay open).
- `GET /model` gives the served model, its classes and the request limits.
- A web demo runs at [/demo](/demo).
"""
INFRA_TAG = "Infrastructure"  # BentoML's tag for its probes and /metrics
TAGS = [
    {"name": "Inference", "description": "Photos and face crops in, emotion scores out."},
    {"name": "Video", "description": "Videos analysed as background tasks (submit, status, get, cancel)."},
    {"name": INFRA_TAG, "description": "Probes and Prometheus metrics (BentoML)."},
]

# Real answers of the reference model on a 350x350 sample photo (docs/serving.md shows more).
SCORES_EXAMPLE = {
    "neutral": 0.85854,
    "happiness": 0.074524,
    "surprise": 0.00096,
    "sadness": 0.020078,
    "anger": 0.006866,
    "disgust": 0.00023,
    "fear": 0.000119,
    "contempt": 0.038682,
}
MODEL_EXAMPLE = {"name": "reference", "version": "sha256:952c357c949c"}
FACE_EXAMPLE = {
    "box": [29, 50, 319, 300],
    "detection_score": 0.8066,
    "scores": SCORES_EXAMPLE,
    "label": "neutral",
}
PREDICT_EXAMPLE = {"faces": [FACE_EXAMPLE], "model": MODEL_EXAMPLE}
PREDICT_BATCH_EXAMPLE = {"results": [{"faces": [FACE_EXAMPLE]}, {"faces": []}], "model": MODEL_EXAMPLE}
CLASSIFY_EXAMPLE = {"scores": SCORES_EXAMPLE, "label": "neutral", "model": MODEL_EXAMPLE}
MODEL_INFO_EXAMPLE = {
    **MODEL_EXAMPLE,
    "classes": list(SCORES_EXAMPLE),
    "detector": "blazeface",
    "limits": {
        "max_upload_bytes": 10485760,
        "max_pixels": 25000000,
        "min_side": 16,
        "max_batch_images": 32,
        "max_video_bytes": 209715200,
        "max_video_seconds": 600,
        "max_classify_batch_faces": 1024,
        "body_timeout_s": 30.0,
    },
    "auth": False,
}
TASK_ID_EXAMPLE = "8f14e45fceea167a5a36dedd4bea2543"
TASK_EXAMPLE = {
    "task_id": TASK_ID_EXAMPLE,
    "status": "pending",
    "created_at": 1764952812.41,
    "video": {"filename": "single_face.mp4", "width": 640, "height": 360, "seconds": 2.419002},
    "frames_total": 72,
    "frames_done": 0,
}
TASK_ACCEPTED_EXAMPLE = {
    **TASK_EXAMPLE,
    **{f"{op}_url": f"/analyze_video/{op}?task_id={TASK_ID_EXAMPLE}" for op in ("status", "get", "cancel")},
}
# The first row of single_face.mp4 analysed at fps=1 (one row per face per analysed frame).
VIDEO_ROW_EXAMPLE = {
    "source": "single_face.mp4",
    "frame": 0,
    "time_s": 0.0,
    "track_id": 0,
    "face": 0,
    "detected": True,
    "face_px": 176,
    "sharpness": 189.3,
    **{"x": 208, "y": 122, "w": 176, "h": 177, "detection_score": 0.9613, "label": "neutral"},
    **{"neutral": 0.995424, "happiness": 0.000691, "surprise": 0.001592, "sadness": 0.001904},
    **{"anger": 0.000109, "disgust": 2e-06, "fear": 1.2e-05, "contempt": 0.000266},
    **{"smooth_neutral": 0.9954, "smooth_happiness": 0.0007, "smooth_surprise": 0.0016},
    **{"smooth_sadness": 0.0019, "smooth_anger": 0.0001, "smooth_disgust": 0.0, "smooth_fear": 0.0},
    **{"smooth_contempt": 0.0003, "smooth_label": "neutral"},
}
VIDEO_RESULT_EXAMPLE = {
    "task_id": TASK_ID_EXAMPLE,
    "model": MODEL_EXAMPLE,
    "columns": list(VIDEO_ROW_EXAMPLE),
    "rows": [VIDEO_ROW_EXAMPLE],
    "summary": {
        "single_face.mp4#0": {
            "seconds": 3.0,
            "share": {"neutral": 0.3333, "happiness": 0.6667},
            "windows": [{"start_s": 0.0, "dominant": "happiness"}],
            "onsets": [{"time_s": 0.0, "emotion": "neutral"}, {"time_s": 1.0, "emotion": "happiness"}],
        }
    },
}
TASK_DONE_EXAMPLE = {
    **TASK_EXAMPLE,
    "status": "completed",
    "frames_done": 72,
    "started_at": 1764952812.47,
    "finished_at": 1764952813.9,
}


def swagger_assets() -> Path | None:
    """The Swagger UI files BentoML ships (``bentoml/_internal/server/static_content``), or None
    where this BentoML keeps them elsewhere."""
    try:
        from bentoml._internal import server
    except ImportError:
        return None
    folder = Path(server.__file__).parent / "static_content"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def package_version() -> str:
    """The installed ferflow version; a source tree that was never installed has none."""
    try:
        return importlib.metadata.version("ferflow")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


# --- response models (documentation only: the handlers build their JSON themselves) ----------


class ModelRef(BaseModel):
    """The model that answered."""

    name: str = Field(description="registered model name, or the ONNX file's stem")
    version: str = Field(description="registry version, or `sha256:<12 hex>` of the ONNX file")
    model_config = ConfigDict(json_schema_extra={"examples": [MODEL_EXAMPLE]})


class Face(BaseModel):
    box: list[int] = Field(
        min_length=4,
        max_length=4,
        description="`[x, y, w, h]` in pixels of the uploaded image: left, top, width, height",
        examples=[FACE_EXAMPLE["box"]],
    )
    detection_score: float = Field(ge=0, le=1, description="face detector confidence")
    scores: dict[str, float] = Field(
        description="probability per class, in the model's class order; they sum to 1",
        examples=[SCORES_EXAMPLE],
    )
    label: str = Field(description="the class with the highest score", examples=["neutral"])
    model_config = ConfigDict(json_schema_extra={"examples": [FACE_EXAMPLE]})


class PredictResponse(BaseModel):
    faces: list[Face] = Field(description="one entry per face found; empty when there is none")
    model: ModelRef


class ImageFaces(BaseModel):
    faces: list[Face]


class PredictBatchResponse(BaseModel):
    results: list[ImageFaces] = Field(description="one entry per uploaded image, in upload order")
    model: ModelRef


class ClassifyResponse(BaseModel):
    scores: dict[str, float] = Field(description="probability per class", examples=[SCORES_EXAMPLE])
    label: str = Field(examples=["neutral"])
    model: ModelRef


class Limits(BaseModel):
    max_upload_bytes: int = Field(description="per image (FERFLOW_MAX_UPLOAD_BYTES)")
    max_pixels: int = Field(description="width x height per image (FERFLOW_MAX_PIXELS)")
    min_side: int = Field(description="shortest image side accepted")
    max_batch_images: int = Field(description="images per /predict_batch (FERFLOW_MAX_BATCH_IMAGES)")
    max_video_bytes: int = Field(description="per video upload (FERFLOW_MAX_VIDEO_BYTES)")
    max_video_seconds: int = Field(description="video duration (FERFLOW_MAX_VIDEO_SECONDS)")
    max_classify_batch_faces: int = Field(
        description="crops per /classify_batch (FERFLOW_MAX_CLASSIFY_BATCH_FACES)"
    )
    body_timeout_s: float = Field(description="seconds to send a request body (FERFLOW_BODY_TIMEOUT_S)")


class ModelResponse(BaseModel):
    name: str
    version: str
    classes: list[str] = Field(description="the model's classes, in score order")
    detector: str = Field(description="the face detector")
    limits: Limits
    auth: bool = Field(description="whether the API routes need the API key")


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong, naming the field or image at fault")
    status: int = Field(description="the HTTP status, repeated")
    type: str = Field(description="the error class", examples=["UnsupportedFormat"])
    request_id: str = Field(description="the request's id, as in the X-Request-ID header and the server log")


class VideoInfo(BaseModel):
    filename: str
    width: int
    height: int
    seconds: float | None = Field(description="duration from the container")


class TaskError(BaseModel):
    error: str
    status: int = Field(description="the HTTP status a failed task's /analyze_video/get answers")


TaskState = Literal["pending", "in_progress", "completed", "failed", "canceled"]


class VideoTaskStatus(BaseModel):
    task_id: str = Field(pattern="^[0-9a-f]{32}$")
    status: TaskState
    created_at: float = Field(description="Unix time of the submission")
    video: VideoInfo
    frames_total: int | None = Field(description="frames in the video (from the container)")
    frames_done: int = Field(description="frames analysed so far")
    started_at: float | None = Field(default=None, description="Unix time the analysis started")
    finished_at: float | None = Field(default=None, description="Unix time the task ended")
    error: TaskError | None = Field(default=None, description="why a failed task failed")


class VideoTaskAccepted(VideoTaskStatus):
    status_url: str = Field(examples=["/analyze_video/status?task_id=8f14e45fceea167a5a36dedd4bea2543"])
    get_url: str = Field(examples=["/analyze_video/get?task_id=8f14e45fceea167a5a36dedd4bea2543"])
    cancel_url: str = Field(examples=["/analyze_video/cancel?task_id=8f14e45fceea167a5a36dedd4bea2543"])


class VideoResult(BaseModel):
    task_id: str
    model: ModelRef
    columns: list[str] = Field(description="the row keys, in order (as `ferflow analyze` writes them)")
    rows: list[dict[str, Any]] = Field(
        description="one per face per analysed frame: frame, time_s, track_id, box (x, y, w, h), "
        "label and one probability per class, and the smoothed ones (smooth_<class>, smooth_label)"
    )
    summary: dict[str, Any] = Field(
        description="per track (`<file>#<track>`): seconds seen, share of time per smoothed "
        "emotion, the dominant emotion per 10 s window, and the onsets of each emotion"
    )


def ok(model: type[BaseModel], description: str, example: Any = None, code: int = 200) -> dict[int, Any]:
    """A route's success response (for FastAPI's ``responses=``), with a media-type example that
    Swagger UI shows instead of one it makes up from the schema ("string")."""
    response: dict[str, Any] = {"model": model, "description": description}
    if example is not None:
        response["content"] = {"application/json": {"example": example}}
    return {code: response}


def errors(codes: dict[int, str]) -> dict[int, Any]:
    """4xx/5xx responses, each with the JSON error body."""
    return {code: {"model": ErrorResponse, "description": text} for code, text in codes.items()}


# --- the document ------------------------------------------------------------------------------


def public_spec(service: Any, app: Any) -> dict[str, Any]:
    """BentoML's infrastructure endpoints + the FastAPI app's own document, with ferflow's info.

    ``service`` is the ``bentoml.Service`` (for its probes' entries), ``app`` the FastAPI app
    mounted at ``/``.
    """
    from fastapi.openapi.utils import get_openapi

    spec = get_openapi(
        title=TITLE,
        version=package_version(),
        description=DESCRIPTION,
        routes=app.routes,
        tags=TAGS,
    )
    bento = service.openapi_spec.asdict()
    infra = {
        path: item
        for path, item in bento["paths"].items()
        if all(INFRA_TAG in op.get("tags", ()) for op in item.values() if isinstance(op, dict))
    }
    spec["paths"] = {**infra, **spec["paths"]}
    spec["servers"] = [{"url": "."}]  # relative: right behind any proxy or path prefix
    _drop_validation_errors(spec)
    return spec


def _drop_validation_errors(spec: dict[str, Any]) -> None:
    """FastAPI documents a 422 with its own validation-error body for every route with query
    parameters. The query parameters here are plain strings that never fail validation, and the
    service answers its errors as :class:`ErrorResponse`: the entries would mislead."""
    ref = "#/components/schemas/HTTPValidationError"
    for item in spec["paths"].values():
        for op in item.values():
            response = op.get("responses", {}).get("422", {}) if isinstance(op, dict) else {}
            if response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref") == ref:
                del op["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        spec.get("components", {}).get("schemas", {}).pop(name, None)
