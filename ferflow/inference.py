"""Faces in, emotions out: the logic behind the HTTP service and the registry's infra-validation.

    rec = EmotionRecognizer.from_config()          # FERFLOW_MODEL_URI / registry / reference model
    rec.analyze(photo_bytes)                       # {"faces": [{"box", "scores", "label"}], "model"}
    rec.classify(face_bytes)                       # one pre-cropped face: {"scores", "label"}
    rec.classify_batch(crops)                      # uint8 (N, 48, 48) -> probabilities (N, C)

Input bytes are decoded strictly and in memory only (never written to disk, never logged):
JPEG, PNG or WebP, checked against the upload-size and pixel limits from the image header
*before* any pixel is decoded (decompression bombs), truncated files and tiny images refused.
Every refusal is an :class:`InferenceError` carrying the HTTP status the service answers with.

Runs on ONNX Runtime (:class:`ferflow.predict.FerClassifier`, :mod:`ferflow.faces`); importing
this module never imports TensorFlow.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferflow.config import IMAGE_SIZE, RUNTIME_ENV, FaceConfig, RegistryConfig
from ferflow.model_uri import REGISTRY_SCHEME, ModelNotFound, ResolvedModel, file_digest, resolve

# --- configuration --------------------------------------------------------------------------

ENV_MODEL_URI = "FERFLOW_MODEL_URI"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_API_KEY = "FERFLOW_API_KEY"
ENV_MAX_UPLOAD_BYTES = "FERFLOW_MAX_UPLOAD_BYTES"
ENV_MAX_PIXELS = "FERFLOW_MAX_PIXELS"
ENV_MAX_BATCH_IMAGES = "FERFLOW_MAX_BATCH_IMAGES"
ENV_THREADS = "FERFLOW_THREADS"
ENV_TTA = "FERFLOW_TTA"
ENV_CPU_SLOTS = "FERFLOW_CPU_SLOTS"
ENV_TRACING = "FERFLOW_TRACING"
ENV_MAX_VIDEO_BYTES = "FERFLOW_MAX_VIDEO_BYTES"
ENV_MAX_VIDEO_SECONDS = "FERFLOW_MAX_VIDEO_SECONDS"
ENV_VIDEO_QUEUE = "FERFLOW_VIDEO_QUEUE"
ENV_TASK_DIR = "FERFLOW_TASK_DIR"
ENV_TASK_TTL_S = "FERFLOW_TASK_TTL_S"
ENV_MAX_CLASSIFY_BATCH_FACES = "FERFLOW_MAX_CLASSIFY_BATCH_FACES"
ENV_BODY_TIMEOUT_S = "FERFLOW_BODY_TIMEOUT_S"
ENV_MAX_CONCURRENCY = "FERFLOW_MAX_CONCURRENCY"
ENV_PIXEL_BUDGET = "FERFLOW_PIXEL_BUDGET"

CLASSIFY_JSON_BYTES_PER_FACE = 16 * 1024  # 2,304 values of up to "255, " plus brackets, with room

FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
}
"""Pillow format names accepted (MPO: multi-picture JPEG from phones) → their media type."""


@dataclass(frozen=True)
class ImageLimits:
    """What an uploaded image may be. Checked before decoding (size, header) and after."""

    max_upload_bytes: int = 10 * 2**20  # 10 MiB per image
    max_pixels: int = 25_000_000  # width x height from the header; ~75 MB as decoded RGB
    min_side: int = 16  # a photo smaller than this holds no findable face
    min_face_side: int = 16  # a pre-cropped face for /classify
    detect_max_side: int = 2048  # JPEGs larger than this are decoded at a reduced DCT scale


@dataclass(frozen=True)
class VideoTaskLimits:
    """What ``POST /analyze_video`` accepts, and how long its results are kept."""

    max_bytes: int = 200 * 2**20  # per upload, refused from Content-Length before reading
    max_seconds: int = 600  # video duration from the container, checked before decoding
    queue: int = 4  # tasks waiting or running per worker; more are answered 503
    ttl_s: int = 3600  # a finished task's status and result are deleted after this
    task_dir: str = ""  # shared by the workers; empty: <system temp>/ferflow-tasks


@dataclass(frozen=True)
class ServingConfig:
    """Everything the inference service reads from its environment (see the Helm chart)."""

    model_uri: str | None = None  # FERFLOW_MODEL_URI, e.g. models:/ferflow@champion
    tracking_uri: str | None = None  # MLFLOW_TRACKING_URI
    api_key: str | None = field(default=None, repr=False)  # FERFLOW_API_KEY; None = no auth
    limits: ImageLimits = field(default_factory=ImageLimits)
    max_batch_images: int = 32  # images per /predict_batch request
    max_batch_bytes: int = 32 * 2**20  # bytes of all images of one /predict_batch request
    max_classify_batch: int = 64  # faces per model call when /classify requests are grouped
    max_classify_batch_faces: int = 1024  # 48x48 crops per /classify_batch request
    # Seconds a client has to send a whole request body; a slower one is answered 408, so that
    # a trickling upload holds neither a concurrency slot nor a CPU slot.
    body_timeout_s: float = 30.0
    max_concurrency: int = 256  # requests handled at once by the server (bodies received); 429 beyond
    # Decoded pixels of large images (over LARGE_IMAGE_PIXELS) in flight at once per worker; 0:
    # max_pixels, so that one worst-case image decodes at a time and the rest wait their turn.
    pixel_budget: int = 0
    # Inference threads (OpenVINO: one single-threaded stream each, a batch split across them;
    # ONNX Runtime: intra-op threads). 2: a grouped /classify batch uses both cores of a 2-core
    # pod (docs/benchmarks.md); set FERFLOW_THREADS to the pod's cores.
    threads: int = 2
    tta: str | None = None  # FERFLOW_TTA: none | hflip; None = what the model's metadata says
    runtime: str | None = None  # FERFLOW_RUNTIME: auto | openvino | onnxruntime (ferflow.predict)
    # Requests decoded / analysed at once per worker (the rest wait their turn). On 2 cores more
    # only adds peak memory: each of 64 concurrent /predict decodes held its own buffers.
    cpu_slots: int = 4
    # OpenTelemetry spans for the API routes (FERFLOW_TRACING=1; the exporter and sample rate are
    # BentoML's `tracing` settings). Off, no span is built per request: BentoML samples none by
    # default, and building them took ~18 % of the event loop's time under /classify load.
    tracing: bool = False
    video: VideoTaskLimits = field(default_factory=VideoTaskLimits)
    face: FaceConfig = field(default_factory=FaceConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    @property
    def max_classify_batch_bytes(self) -> int:
        """Bytes of one /classify_batch JSON body: a crop in compact JSON is under 12 KB."""
        return self.max_classify_batch_faces * CLASSIFY_JSON_BYTES_PER_FACE + 64 * 1024

    @property
    def decode_pixel_budget(self) -> int:
        return self.pixel_budget or self.limits.max_pixels

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServingConfig:
        """Read the ``FERFLOW_*`` / ``MLFLOW_TRACKING_URI`` variables; a malformed one is an error."""
        env = dict(os.environ if env is None else env)
        base = ImageLimits()

        def integer(name: str, default: int, minimum: int = 1) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not an integer") from None
            if value < minimum:
                raise ValueError(f"{name}={value} must be >= {minimum}")
            return value

        def seconds(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            try:
                value = float(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
            if not value > 0:  # also NaN
                raise ValueError(f"{name}={raw} must be > 0")
            return value

        def boolean(name: str, default: bool) -> bool:
            raw = env.get(name, "").strip().lower()
            if not raw:
                return default
            if raw in ("1", "true", "yes", "on"):
                return True
            if raw in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name}={raw!r} is not a boolean (1/0, true/false, on/off)")

        limits = ImageLimits(
            max_upload_bytes=integer(ENV_MAX_UPLOAD_BYTES, base.max_upload_bytes, 1024),
            max_pixels=integer(ENV_MAX_PIXELS, base.max_pixels, base.min_side**2),
        )
        video = VideoTaskLimits(
            max_bytes=integer(ENV_MAX_VIDEO_BYTES, VideoTaskLimits.max_bytes, 1024),
            max_seconds=integer(ENV_MAX_VIDEO_SECONDS, VideoTaskLimits.max_seconds),
            queue=integer(ENV_VIDEO_QUEUE, VideoTaskLimits.queue),
            ttl_s=integer(ENV_TASK_TTL_S, VideoTaskLimits.ttl_s),
            task_dir=env.get(ENV_TASK_DIR, "").strip(),
        )
        return cls(
            model_uri=env.get(ENV_MODEL_URI, "").strip() or None,
            tracking_uri=env.get(ENV_TRACKING_URI, "").strip() or None,
            api_key=env.get(ENV_API_KEY) or None,
            limits=limits,
            max_batch_images=integer(ENV_MAX_BATCH_IMAGES, cls.max_batch_images),
            threads=integer(ENV_THREADS, cls.threads),
            tta=env.get(ENV_TTA, "").strip() or None,
            runtime=env.get(RUNTIME_ENV, "").strip() or None,
            cpu_slots=integer(ENV_CPU_SLOTS, cls.cpu_slots),
            max_classify_batch_faces=integer(ENV_MAX_CLASSIFY_BATCH_FACES, cls.max_classify_batch_faces),
            body_timeout_s=seconds(ENV_BODY_TIMEOUT_S, cls.body_timeout_s),
            max_concurrency=integer(ENV_MAX_CONCURRENCY, cls.max_concurrency),
            pixel_budget=integer(ENV_PIXEL_BUDGET, cls.pixel_budget, 0),
            tracing=boolean(ENV_TRACING, cls.tracing),
            video=video,
        )


# --- errors ---------------------------------------------------------------------------------


class InferenceError(Exception):
    """A request the service refuses; ``status_code`` is the HTTP status to answer with."""

    status_code = 400

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status_code, "type": type(self).__name__}


class EmptyInput(InferenceError):
    status_code = 400


class InvalidImage(InferenceError):
    """Bytes that claim to be an image but cannot be decoded (corrupt, truncated)."""

    status_code = 400


class UnsupportedFormat(InferenceError):
    status_code = 415


class PayloadTooLarge(InferenceError):
    """Too many bytes, or too many pixels in the header (decompression bombs)."""

    status_code = 413


class ImageTooSmall(InferenceError):
    status_code = 422


class ModelLoadError(RuntimeError):
    """The configured model cannot be resolved or loaded (a server start-up failure, not a 4xx)."""


# --- decoding -------------------------------------------------------------------------------


def _sniff(data: bytes) -> str | None:
    """The format the leading bytes announce, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe(data: bytes) -> str:
    head = data[:16]
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if head.startswith(b"BM"):
        return "a BMP image"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF image"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unrecognised binary data"


# A face crop at most this large decodes faster than a hop to a worker thread and back costs
# the event loop, so a server may decode it inline.
SMALL_IMAGE_PIXELS = 128 * 128
SMALL_IMAGE_BYTES = 64 * 2**10


def image_pixels(data: bytes) -> int:
    """Width x height from a JPEG, PNG or WebP header (about 10 µs), or 0 when the data is not
    one: the decoder then refuses it without decoding any pixel."""
    from PIL import Image

    if _sniff(data) is None:
        return 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=("JPEG", "PNG", "WEBP")) as img:
                width, height = img.size
    except Exception:
        return 0
    return width * height


def is_small_image(
    data: bytes, max_pixels: int = SMALL_IMAGE_PIXELS, max_bytes: int = SMALL_IMAGE_BYTES
) -> bool:
    """Whether ``data`` is a JPEG, PNG or WebP of at most ``max_bytes`` bytes whose header
    declares at most ``max_pixels`` pixels (the header only: about 10 µs). Anything else,
    malformed data included, is not small: the full decoder reports what is wrong with it."""
    if len(data) > max_bytes:
        return False
    pixels = image_pixels(data)
    return 0 < pixels <= max_pixels


def decode_image(
    data: bytes,
    limits: ImageLimits | None = None,
    *,
    name: str = "image",
    min_side: int | None = None,
    max_side: int | None = None,
) -> tuple[np.ndarray, float]:
    """Strictly decode ``data`` to ``(H, W, 3) uint8`` RGB, in memory.

    ``name`` (the form field or file name) appears in every error message. With ``max_side``
    an image over twice that on its long side comes back reduced to at least ``max_side``: a
    JPEG decoded at a reduced DCT scale, a PNG or WebP shrunk by a whole factor before its RGB
    copy is made. Returns the image and the factor from its pixels to the original's pixels.
    """
    from PIL import Image, ImageOps

    limits = limits or ImageLimits()
    min_side = limits.min_side if min_side is None else min_side
    if not data:
        raise EmptyInput(f"{name}: empty upload (0 bytes); send a JPEG, PNG or WebP image")
    if len(data) > limits.max_upload_bytes:
        raise PayloadTooLarge(
            f"{name}: {len(data):,} bytes exceeds the upload limit of {limits.max_upload_bytes:,} bytes"
        )
    sniffed = _sniff(data)
    if sniffed is None:
        raise UnsupportedFormat(
            f"{name}: not a JPEG, PNG or WebP image (the content looks like {_describe(data)})"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=("JPEG", "PNG", "WEBP"))  # header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"{name}: too many pixels ({exc}); limit {limits.max_pixels:,}") from None
    except Exception as exc:  # Pillow raises many types on a corrupt header
        raise InvalidImage(f"{name}: corrupt {sniffed} header ({exc})") from None
    with img:
        fmt = img.format or sniffed
        if fmt not in FORMATS:
            raise UnsupportedFormat(f"{name}: {fmt} images are not accepted; send JPEG, PNG or WebP")
        width, height = img.size
        if width * height > limits.max_pixels:
            raise PayloadTooLarge(
                f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                f"{limits.max_pixels:,} pixels (checked before decoding)"
            )
        if min(width, height) < min_side:
            raise ImageTooSmall(
                f"{name}: {width}x{height} pixels is too small; at least {min_side}x{min_side}"
            )
        if max_side and fmt in ("JPEG", "MPO") and max(width, height) > 2 * max_side:
            img.draft("RGB", (max_side, max_side))  # DCT scaling: 1/2, 1/4 or 1/8 of the pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # EXIF quirks are not errors
                img.load()
        except Exception as exc:  # truncated or corrupt pixel data
            raise InvalidImage(f"{name}: truncated or corrupt {fmt} data ({exc})") from None
        reduced = _reduce(img, max_side)
        if reduced is not img:
            img.close()  # frees the full-size pixels now, not when the whole decode returns
        scale = width / reduced.size[0]
        oriented = ImageOps.exif_transpose(reduced)
        if oriented is not reduced:
            scale = max(width, height) / max(oriented.size)
        if oriented.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit gray PNG
            gray = np.asarray(oriented, dtype=np.uint32)
            rgb = np.repeat((gray >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
        else:
            rgb = np.asarray(oriented.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb), scale


REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "I", "F"})


def _reduce(img: Any, max_side: int | None) -> Any:
    """``img`` shrunk by a whole factor (a box filter) to at least ``max_side`` on its long
    side, before any RGB copy is made: PNG and WebP have no reduced decoding like JPEG's DCT
    scaling, and a 25 MP image would otherwise take ~75 MB per RGB copy."""
    if not max_side or max(img.size) <= 2 * max_side:
        return img
    factor = max(img.size) // max_side
    if img.mode not in REDUCIBLE_MODES:
        img = img.convert({"1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I"}.get(img.mode, "RGB"))
    return img.reduce(factor)


def face_from_bytes(data: bytes, limits: ImageLimits | None = None, *, name: str = "image") -> np.ndarray:
    """A pre-cropped face image → ``(48, 48) uint8`` grayscale model crop (FER2013 luma)."""
    import cv2

    limits = limits or ImageLimits()
    rgb, _ = decode_image(
        data, limits, name=name, min_side=limits.min_face_side, max_side=FACE_DECODE_MAX_SIDE
    )
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if gray.shape != (IMAGE_SIZE, IMAGE_SIZE):
        shrink = min(gray.shape) > IMAGE_SIZE
        gray = cv2.resize(
            gray, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    return gray


# A pre-cropped face larger than twice this is decoded reduced (to at least this long side):
# it ends up 48x48, and a full-size RGB copy of a 25 MP upload costs ~75 MB.
FACE_DECODE_MAX_SIDE = 8 * IMAGE_SIZE

# --- model resolution -----------------------------------------------------------------------

ModelInfo = ResolvedModel
"""The served model: name, version, local ONNX path and the reference it came from."""


def resolve_model(config: ServingConfig | None = None) -> ModelInfo:
    """Which model to serve: ``FERFLOW_MODEL_URI`` (a registry or run URI through MLflow, or a
    path) when set, else ``FERFLOW_MODEL`` / the reference model (:mod:`ferflow.model_uri`)."""
    cfg = config or ServingConfig.from_env()
    uri = cfg.model_uri
    if uri is not None and uri.startswith(REGISTRY_SCHEME) and not cfg.tracking_uri:
        raise ModelLoadError(f"{ENV_MODEL_URI}={uri} needs {ENV_TRACKING_URI} (the MLflow registry)")
    try:
        return resolve(uri, cfg.tracking_uri)
    except ModelNotFound as exc:
        if uri is None:
            champion = f"models:/{cfg.registry.model_name}@champion"
            raise ModelLoadError(
                f"no model to serve: {exc}; or set {ENV_MODEL_URI}={champion} with {ENV_TRACKING_URI}"
            ) from exc
        raise ModelLoadError(f"cannot load {ENV_MODEL_URI}={uri}: {exc}") from exc


# --- the recognizer -------------------------------------------------------------------------


class EmotionRecognizer:
    """Face detection + FER-style crops + the ONNX classifier, behind byte-level entry points."""

    def __init__(self, model: ModelInfo, config: ServingConfig | None = None) -> None:
        from ferflow.faces import get_detector
        from ferflow.predict import FerClassifier

        self.config = config or ServingConfig()
        self.limits = self.config.limits
        self.info = model
        try:
            self.classifier = FerClassifier(
                model.path, threads=self.config.threads, tta=self.config.tta, runtime=self.config.runtime
            )
        except (FileNotFoundError, ValueError) as exc:
            raise ModelLoadError(str(exc)) from exc
        self.classes: list[str] = list(self.classifier.classes)
        self.detector = get_detector(self.config.face)

    @classmethod
    def from_model(cls, path: str | Path, config: ServingConfig | None = None) -> EmotionRecognizer:
        """Serve the ONNX file at ``path`` (used by the registry's infra-validation)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        info = ModelInfo(path=path, name=path.stem, version=f"sha256:{file_digest(path)}", uri=str(path))
        return cls(info, config)

    @classmethod
    def from_config(cls, config: ServingConfig | None = None) -> EmotionRecognizer:
        """The model the environment names (see :func:`resolve_model`)."""
        config = config or ServingConfig.from_env()
        return cls(resolve_model(config), config)

    @property
    def model(self) -> dict[str, str]:
        return self.info.public()

    # --- numbers -> JSON ---

    def result(self, probs: np.ndarray) -> dict[str, Any]:
        """``{"scores": {class: p}, "label": best}`` for one probability row."""
        scores = {c: round(float(p), 6) for c, p in zip(self.classes, probs, strict=True)}
        return {"scores": scores, "label": self.classes[int(np.argmax(probs))]}

    # --- entry points ---

    def classify_batch(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, C)`` float32 for uint8 grayscale crops ``(N, 48, 48)``."""
        faces = np.asarray(faces)
        if faces.ndim == 2:
            faces = faces[None]
        if faces.dtype != np.uint8 or faces.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise InferenceError(
                f"faces must be uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}); got {faces.dtype} {faces.shape}"
            )
        if len(faces) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return self.classifier.predict_proba(faces).astype(np.float32)

    def face_crop(self, image_bytes: bytes, name: str = "image") -> np.ndarray:
        """Decode one pre-cropped face to the ``(48, 48) uint8`` model input."""
        return face_from_bytes(image_bytes, self.limits, name=name)

    def classify(self, image_bytes: bytes, name: str = "image") -> dict[str, Any]:
        """One pre-cropped face image (any size, resized to 48x48 gray) → scores and label."""
        return self.result(self.classify_batch(self.face_crop(image_bytes, name))[0])

    def crops(self, rgb: np.ndarray, faces: list) -> np.ndarray:
        """The model inputs of ``faces`` found in ``rgb``: the configured FER framing."""
        from ferflow.faces import crop_faces

        return crop_faces(rgb, faces, margin=self.config.face.crop_margin, align=self.config.face.align)

    def analyze_array(self, rgb: np.ndarray, scale: float = 1.0) -> dict[str, Any]:
        """Every face in an ``(H, W, 3) uint8`` image; boxes multiplied by ``scale``."""
        faces = self.detector.detect(rgb)
        out: list[dict[str, Any]] = []
        if faces:
            probs = self.classify_batch(self.crops(rgb, faces))
            for face, p in zip(faces, probs, strict=True):
                box = [round(v * scale) for v in face.box]
                out.append({"box": box, "detection_score": round(face.score, 4), **self.result(p)})
        return {"faces": out, "model": self.model}

    def analyze(self, image_bytes: bytes, name: str = "image") -> dict[str, Any]:
        """A photo (JPEG/PNG/WebP bytes) → ``{"faces": [{"box": [x, y, w, h], "scores", "label"}],
        "model": {"name", "version"}}``; ``faces`` is empty when no face is found."""
        rgb, scale = decode_image(image_bytes, self.limits, name=name, max_side=self.limits.detect_max_side)
        return self.analyze_array(rgb, scale)

    def warm_up(self) -> None:
        """One inference through the detector, and the classifier at every batch size it will
        run (``max_classify_batch``), so first-run kernels and buffers are allocated before the
        service reports ready rather than under the first load."""
        import cv2

        canvas = np.full((256, 256, 3), 128, np.uint8)
        cv2.circle(canvas, (128, 128), 60, (200, 170, 150), -1)
        self.analyze_array(canvas)
        self.classifier.warm_up(self.config.max_classify_batch)
