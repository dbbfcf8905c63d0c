"""Face detection that runs offline, and crops framed like FER2013/FERPlus training images.

Detectors (selected by ``FaceConfig.detector``) share one interface, ``detect(image) ->
list[Face]``, with boxes ``[x, y, w, h]`` in the pixels of the image given:

- ``blazeface`` (default): MediaPipe's BlazeFace short-range model, converted from the
  mediapipe 0.10.21 wheel to ONNX (``ferflow/assets``, see PROVENANCE.md) and run with ONNX
  Runtime. Pre-processing (letterbox to 128x128, [-1, 1]), SSD anchors and the decoding +
  weighted NMS of MediaPipe's ``face_detection_short_range`` graph are re-implemented below in
  numpy, so neither mediapipe nor TensorFlow is needed at run time.
- ``haar`` / ``haar-alt2``: OpenCV's frontal-face Haar cascades shipped in opencv 4.x wheels.

``crop_faces`` turns detections into ``(N, 48, 48) uint8`` grayscale crops. Each detector
draws its box differently (BlazeFace: brows to chin; Haar: forehead to chin, wider), so each
has a *framing*, the square that a FER2013 image covers relative to that detector's box,
measured by running the detector on FERPlus test images (``bench/detectors.py calibrate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ferflow.config import IMAGE_SIZE, DetectorName, FaceConfig

ASSETS = Path(__file__).parent / "assets"
BLAZEFACE_MODEL = ASSETS / "blazeface_short_range.onnx"

KEYPOINT_NAMES: tuple[str, ...] = (
    "right_eye",  # the subject's right eye: left in the image
    "left_eye",
    "nose_tip",
    "mouth_center",
    "right_ear_tragion",
    "left_ear_tragion",
)
"""Order of BlazeFace's six keypoints (``Face.keypoints``)."""


@dataclass(frozen=True)
class Framing:
    """The FER2013 crop square of a face, relative to a detector's box.

    side = ``scale`` * max(box w, box h); centre = box centre + (``dx`` * w, ``dy`` * h).
    """

    scale: float
    dx: float = 0.0
    dy: float = 0.0


# Medians over the first 1,000 FERPlus test images (FER2013Valid, upscaled 4x and padded) of
# the square each 48x48 image covers relative to the box the detector finds on it (run-time
# default FaceConfig). FER2013
# frames faces almost exactly as OpenCV's Haar box; BlazeFace's box is tighter and lower
# (no forehead). Reproduce with `bench/detectors.py calibrate` (docs/benchmarks.md).
FRAMINGS: dict[DetectorName, Framing] = {
    DetectorName.BLAZEFACE: Framing(scale=1.173, dx=-0.002, dy=-0.075),
    DetectorName.HAAR: Framing(scale=1.032, dx=-0.003, dy=0.003),
    DetectorName.HAAR_ALT2: Framing(scale=1.043, dx=0.000, dy=0.008),
}


@dataclass(frozen=True)
class Face:
    """One detected face. ``box`` is ``(x, y, w, h)`` in pixels of the input image, clipped to it."""

    box: tuple[int, int, int, int]
    score: float
    detector: DetectorName
    keypoints: tuple[tuple[float, float], ...] = ()  # (x, y) pixels, KEYPOINT_NAMES order
    # un-clipped box in float pixels, which the crop square is derived from
    raw_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def crop_square(self, margin: float = 1.0) -> tuple[float, float, float]:
        """``(cx, cy, side)`` of the square this face's FER-style crop covers."""
        x, y, w, h = self.raw_box if self.raw_box[2] > 0 else map(float, self.box)
        framing = FRAMINGS[self.detector]
        side = framing.scale * margin * max(w, h)
        return x + w / 2 + framing.dx * w, y + h / 2 + framing.dy * h, side

    def to_dict(self) -> dict[str, object]:
        return {"box": list(self.box), "score": round(self.score, 4)}


class FaceDetector(Protocol):
    name: DetectorName

    def detect(self, image: np.ndarray) -> list[Face]: ...


# --- input handling ---------------------------------------------------------------------------


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Validate an image array and return it as contiguous ``(H, W, 3) uint8`` RGB.

    Accepts gray ``(H, W)`` or ``(H, W, 1)``, RGB ``(H, W, 3)`` and RGBA ``(H, W, 4)``
    (alpha is dropped), all ``uint8``.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {image.shape}")


def to_gray(image: np.ndarray) -> np.ndarray:
    """``(H, W) uint8`` luma (ITU-R 601, as FER2013's grayscale) of any accepted image."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        if image.ndim == 2:
            return image
        if image.ndim == 3 and image.shape[2] == 1:
            return image[:, :, 0]
    rgb = to_rgb(image)
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _too_small(image: np.ndarray) -> bool:
    return image.shape[0] < 8 or image.shape[1] < 8  # no face is findable below 8 px


def _make_face(
    name: DetectorName,
    box: np.ndarray,
    score: float,
    shape: tuple[int, ...],
    keypoints: np.ndarray | None = None,
) -> Face:
    height, width = shape[:2]
    x, y, w, h = (float(v) for v in box)
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(width, round(x + w)), min(height, round(y + h))
    kps = () if keypoints is None else tuple((float(a), float(b)) for a, b in keypoints)
    return Face(
        box=(x0, y0, max(0, x1 - x0), max(0, y1 - y0)),
        score=float(score),
        detector=name,
        keypoints=kps,
        raw_box=(x, y, w, h),
    )


def _finish(faces: list[Face], image_shape: tuple[int, ...], config: FaceConfig) -> list[Face]:
    min_side = config.min_face_fraction * max(image_shape[:2])
    kept = [f for f in faces if f.box[2] > 1 and f.box[3] > 1 and max(f.raw_box[2:]) >= min_side]
    kept.sort(key=lambda f: f.score, reverse=True)
    return kept[: config.max_faces]


# --- BlazeFace --------------------------------------------------------------------------------


def ssd_anchors(
    input_size: int = 128,
    strides: tuple[int, ...] = (8, 16, 16, 16),
    anchor_offset: float = 0.5,
    aspect_ratios: tuple[float, ...] = (1.0,),
    interpolated_scale_aspect_ratio: float = 1.0,
) -> np.ndarray:
    """Anchor centres ``(N, 2)`` (x, y, normalised), as MediaPipe's SsdAnchorsCalculator.

    Defaults are ``face_detection_short_range.pbtxt``: layers with equal stride share one
    feature map, each layer adds ``len(aspect_ratios)`` anchors per cell plus one for the
    interpolated scale; ``fixed_anchor_size: true`` makes every anchor 1x1, so only centres
    matter. 16x16 cells x 2 + 8x8 cells x 6 = 896 anchors.
    """
    per_layer = len(aspect_ratios) + (1 if interpolated_scale_aspect_ratio > 0 else 0)
    centres: list[np.ndarray] = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        same = 0
        while layer < len(strides) and strides[layer] == stride:
            same += per_layer
            layer += 1
        cells = math.ceil(input_size / stride)
        grid = (np.arange(cells, dtype=np.float32) + anchor_offset) / cells
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        xy = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(xy, same, axis=0))
    return np.concatenate(centres).astype(np.float32)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED non-max suppression.

    The best remaining detection absorbs every detection overlapping it by IoU above the
    threshold; the merged box and keypoints are the score-weighted mean of the cluster, the
    merged score is the best one's. ``boxes`` are ``(N, 4)`` x0, y0, x1, y1.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    remaining = np.arange(len(scores))
    out_b, out_s, out_k = [], [], []
    while remaining.size:
        top = remaining[0]
        b = boxes[remaining]
        iw = (np.minimum(b[:, 2], boxes[top, 2]) - np.maximum(b[:, 0], boxes[top, 0])).clip(0)
        ih = (np.minimum(b[:, 3], boxes[top, 3]) - np.maximum(b[:, 1], boxes[top, 1])).clip(0)
        inter = iw * ih
        iou = inter / np.maximum(areas[remaining] + areas[top] - inter, 1e-12)
        cluster = remaining[iou > iou_threshold]
        if cluster.size == 0:  # degenerate (zero-area) box: keep it alone
            cluster = remaining[:1]
        w = scores[cluster][:, None]
        out_b.append((boxes[cluster] * w).sum(0) / w.sum())
        out_k.append((keypoints[cluster] * w[:, :, None]).sum(0) / w.sum())
        out_s.append(scores[top])
        remaining = np.setdiff1d(remaining, cluster, assume_unique=True)
        remaining = remaining[np.argsort(-scores[remaining], kind="stable")]
    if not out_s:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2))
    return np.stack(out_b), np.array(out_s), np.stack(out_k)


class BlazeFaceDetector:
    """BlazeFace short-range through ONNX Runtime, on the whole image and on tiles."""

    name = DetectorName.BLAZEFACE
    input_size = 128
    num_keypoints = 6

    def __init__(self, config: FaceConfig, model_path: Path = BLAZEFACE_MODEL) -> None:
        import onnxruntime as ort

        if not model_path.is_file():
            raise FileNotFoundError(
                f"BlazeFace model {model_path} is missing; re-create it with scripts/convert_blazeface.py"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.num_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.config = config
        self.anchors = ssd_anchors(self.input_size)

    def _raw(self, rgb: np.ndarray, pad: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detections above ``min_score`` before NMS: boxes (x0, y0, x1, y1), scores, keypoints,
        in pixels of ``rgb``, which is letterboxed (plus ``pad``) into the 128x128 input."""
        h, w = rgb.shape[:2]
        size = self.input_size
        fit = size / (max(h, w) * (1 + 2 * pad))
        rw, rh = max(1, round(w * fit)), max(1, round(h * fit))
        interp = cv2.INTER_AREA if fit < 1 else cv2.INTER_LINEAR
        ox, oy = (size - rw) // 2, (size - rh) // 2
        canvas = np.zeros((size, size, 3), np.uint8)  # MediaPipe's BORDER_ZERO letterbox
        canvas[oy : oy + rh, ox : ox + rw] = cv2.resize(rgb, (rw, rh), interpolation=interp)
        tensor = (canvas.astype(np.float32) * (2.0 / 255.0) - 1.0)[None]
        raw, logits = self.session.run(None, {"input": tensor})
        logit = np.clip(logits[0, :, 0].astype(np.float64), -100.0, 100.0)  # score clipping
        scores = 1.0 / (1.0 + np.exp(-logit))
        keep = scores >= self.config.min_score
        raw, scores, anchors = raw[0, keep], scores[keep], self.anchors[keep]
        # decode: offsets in input pixels from the anchor centre; anchors are 1x1 (fixed size)
        centre = raw[:, 0:2] + anchors * size
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        kps = raw[:, 4 : 4 + 2 * self.num_keypoints].reshape(-1, self.num_keypoints, 2)
        kps = kps + anchors[:, None, :] * size
        # undo the letterbox: input pixel u -> image pixel (u - offset) / scale
        scale = np.array([rw / w, rh / h], np.float32)
        offset = np.array([ox, oy], np.float32)
        boxes = (boxes.reshape(-1, 2, 2) - offset) / scale
        return boxes.reshape(-1, 4), scores, (kps - offset) / scale

    def tiles(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """``(x0, y0, side)`` of the square tiles: an n x n grid over the short side with half
        overlap (so a face up to half a tile lies whole in one), stepped along the long side."""
        n = self.config.blazeface_tiles
        if n <= 0:
            return []
        side = round(2 * min(height, width) / (n + 1))
        if side < self.config.blazeface_tile_min_px:
            return []
        stride = side // 2

        def starts(length: int) -> list[int]:
            count = max(1, math.ceil((length - side) / stride) + 1)
            return sorted({min(i * stride, length - side) for i in range(count)})

        return [(x, y, side) for y in starts(height) for x in starts(width)]

    def detect(self, image: np.ndarray) -> list[Face]:
        rgb = to_rgb(image)
        if _too_small(rgb):
            return []
        height, width = rgb.shape[:2]
        parts = [self._raw(rgb, self.config.blazeface_pad)]
        for x0, y0, side in self.tiles(height, width):
            boxes, scores, kps = self._raw(rgb[y0 : y0 + side, x0 : x0 + side], 0.0)
            # a face cut by a tile edge inside the image lies whole in a neighbouring tile
            edge = 0.02 * side
            inner = np.ones(len(scores), bool)
            if x0 > 0:
                inner &= boxes[:, 0] > edge
            if y0 > 0:
                inner &= boxes[:, 1] > edge
            if x0 + side < width:
                inner &= boxes[:, 2] < side - edge
            if y0 + side < height:
                inner &= boxes[:, 3] < side - edge
            shift = np.array([x0, y0], np.float32)
            parts.append((boxes[inner] + np.tile(shift, 2), scores[inner], kps[inner] + shift))
        boxes = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        kps = np.concatenate([p[2] for p in parts])
        if not len(scores):
            return []
        boxes, scores, kps = weighted_nms(boxes, scores, kps, self.config.nms_iou)
        faces = [
            _make_face(self.name, np.concatenate([b[:2], b[2:] - b[:2]]), s, rgb.shape, k)
            for b, s, k in zip(boxes, scores, kps, strict=True)
        ]
        # a face seen at two anchor scales (a coarse box around a fine one) overlaps by IoU
        # too little for NMS: drop the lower-scored box lying mostly inside the other
        return _finish(_suppress(faces, self.config.nms_iou), rgb.shape, self.config)


# --- Haar cascades ----------------------------------------------------------------------------

HAAR_FILES: dict[DetectorName, str] = {
    DetectorName.HAAR: "haarcascade_frontalface_default.xml",
    DetectorName.HAAR_ALT2: "haarcascade_frontalface_alt2.xml",
}


class HaarDetector:
    """OpenCV Viola-Jones cascade on equalised gray; score = cascade stage-level weight."""

    def __init__(self, config: FaceConfig, name: DetectorName = DetectorName.HAAR) -> None:
        path = Path(cv2.data.haarcascades) / HAAR_FILES[name]
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise FileNotFoundError(f"OpenCV could not load Haar cascade {path}")
        self.name = name
        self.config = config

    def detect(self, image: np.ndarray) -> list[Face]:
        gray = to_gray(image)
        if _too_small(gray):
            return []
        h, w = gray.shape
        up = max(1.0, self.config.haar_min_side / min(h, w))
        if up > 1:
            gray = cv2.resize(gray, (round(w * up), round(h * up)), interpolation=cv2.INTER_LINEAR)
        pad = round(self.config.haar_pad * max(gray.shape))
        if pad:
            gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        gray = cv2.equalizeHist(gray)
        min_side = max(24, round(self.config.min_face_fraction * up * max(h, w)))
        rects, _, weights = self.cascade.detectMultiScale3(
            gray,
            scaleFactor=self.config.haar_scale_factor,
            minNeighbors=self.config.haar_min_neighbors,
            minSize=(min_side, min_side),
            outputRejectLevels=True,
        )
        faces = []
        for rect, weight in zip(rects, np.ravel(weights), strict=True):
            x, y, bw, bh = (float(v) for v in rect)
            box = np.array([(x - pad) / up, (y - pad) / up, bw / up, bh / up])
            faces.append(_make_face(self.name, box, float(weight), (h, w)))
        return _finish(_suppress(faces, self.config.nms_iou), (h, w), self.config)


def box_overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float]:
    """IoU and intersection over the smaller box, for ``(x, y, w, h)`` boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    smaller = min(aw * ah, bw * bh)
    return (inter / union if union > 0 else 0.0), (inter / smaller if smaller > 0 else 0.0)


def _suppress(faces: list[Face], iou_threshold: float, contained: float = 0.7) -> list[Face]:
    """Plain NMS: drop a face overlapping a higher-scored one by IoU, or lying mostly inside
    it (cascades also fire on a face's eyes-and-nose region inside the face box)."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(
            iou <= iou_threshold and inside <= contained
            for iou, inside in (box_overlaps(face.raw_box, k.raw_box) for k in kept)
        ):
            kept.append(face)
    return kept


# --- selection, cropping ----------------------------------------------------------------------


@cache
def get_detector(config: FaceConfig | None = None) -> FaceDetector:
    """The detector named by ``config.detector`` (cached per config: sessions load once)."""
    config = config or FaceConfig()
    choices = [d.value for d in DetectorName]
    try:
        name = DetectorName(config.detector)
    except ValueError:
        raise ValueError(
            f"unknown face detector {config.detector!r} in FaceConfig.detector; choose one of {choices}"
        ) from None
    if name is DetectorName.BLAZEFACE:
        return BlazeFaceDetector(config)
    return HaarDetector(config, name)


def detect_faces(image: np.ndarray, config: FaceConfig | None = None) -> list[Face]:
    """Faces in ``image`` (RGB/RGBA/gray uint8), best first."""
    return get_detector(config or FaceConfig()).detect(image)


def crop_faces(
    image: np.ndarray,
    faces: list[Face],
    *,
    margin: float = 1.0,
    align: bool = False,
    size: int = IMAGE_SIZE,
) -> np.ndarray:
    """Grayscale ``(N, size, size) uint8`` crops framed like FER2013 images.

    Each crop is the face's calibrated FER2013 square (``Face.crop_square``) scaled by
    ``margin``; parts outside the image repeat the border pixels. With ``align`` and eye
    keypoints, the square is rotated so the eyes are level.
    """
    gray = to_gray(image)
    out = np.zeros((len(faces), size, size), np.uint8)
    for i, face in enumerate(faces):
        cx, cy, side = face.crop_square(margin)
        side = max(side, 1.0)
        angle = 0.0
        if align and len(face.keypoints) >= 2:
            (rx, ry), (lx, ly) = face.keypoints[0], face.keypoints[1]
            angle = math.degrees(math.atan2(ly - ry, lx - rx))
        # the region the (possibly rotated) square can touch, border pixels repeated outside
        half = side / 2 * (math.sqrt(2) if angle else 1.0) + 2
        x0, y0 = math.floor(cx - half), math.floor(cy - half)
        x1, y1 = math.ceil(cx + half), math.ceil(cy + half)
        roi = _region(gray, x0, y0, x1, y1)
        # shrink large faces with INTER_AREA first (no aliasing), then rotate and crop
        work = max(size, min(round(side), 2 * size))
        fx = fy = 1.0
        if side > work:
            rh, rw = roi.shape
            nw, nh = max(1, round(rw * work / side)), max(1, round(rh * work / side))
            roi = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
            fx, fy = nw / rw, nh / rh
        rcx, rcy, rside = (cx - x0) * fx, (cy - y0) * fy, side * (fx + fy) / 2
        matrix = cv2.getRotationMatrix2D((rcx, rcy), angle, work / rside)
        matrix[:, 2] += (work / 2 - rcx, work / 2 - rcy)
        patch = cv2.warpAffine(
            roi, matrix, (work, work), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        if work != size:
            patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
        out[i] = patch
    return out


def _region(gray: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``gray[y0:y1, x0:x1]`` where out-of-image pixels repeat the nearest border pixel."""
    h, w = gray.shape
    cx0, cy0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    cx1, cy1 = max(min(x1, w), cx0 + 1), max(min(y1, h), cy0 + 1)
    inner = gray[cy0:cy1, cx0:cx1]
    return cv2.copyMakeBorder(
        inner,
        max(0, cy0 - y0),
        max(0, y1 - cy1),
        max(0, cx0 - x0),
        max(0, x1 - cx1),
        cv2.BORDER_REPLICATE,
    )


def main_face_crop(image: np.ndarray, config: FaceConfig | None = None) -> np.ndarray | None:
    """The ``(48, 48) uint8`` crop of the largest face in ``image``, framed exactly as the server
    frames it (``config``'s detector, margin and alignment); ``None`` when no face is found.

    A labelled photo shows one subject; other faces in it are smaller bystanders."""
    config = config or FaceConfig()
    faces = get_detector(config).detect(image)
    if not faces:
        return None
    largest = max(faces, key=lambda f: f.box[2] * f.box[3])
    return crop_faces(image, [largest], margin=config.crop_margin, align=config.align)[0]
