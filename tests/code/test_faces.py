"""Face detection and FER-style crops (ferflow.faces): fast, on the shared real photos."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ferflow.config import IMAGE_SIZE, DetectorName, FaceConfig
from ferflow.faces import (
    BLAZEFACE_MODEL,
    Face,
    crop_faces,
    detect_faces,
    get_detector,
    ssd_anchors,
    weighted_nms,
)

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT.parent / "shared/samples/photos"
FERPLUS_TEST = ROOT / "data/ferplus/FER2013Valid"
DEFAULT = FaceConfig()
HAAR = FaceConfig(detector=DetectorName.HAAR)
# portraits whose face fills at most ~90 % of the frame: every detector must find them
PORTRAITS = ("Colin_Powell_0007.jpg", "Tony_Blair_0026.jpg", "Jackie_Chan_0006.jpg")


def _photo_names() -> list[str]:
    labels = PHOTOS / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"sample photos not found at {PHOTOS} (expected ../shared/samples/photos)")
    with labels.open() as fh:
        return [row["image"] for row in csv.DictReader(fh)]


def _load(name: str) -> np.ndarray:
    return np.asarray(Image.open(PHOTOS / name).convert("RGB"))


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: _load(name) for name in _photo_names()}


def _scene(photos: dict[str, np.ndarray], names: list[str]) -> tuple[np.ndarray, list[tuple]]:
    """Paste the photos, 200 px wide, side by side into a 900x500 grey-gradient canvas."""
    canvas = np.tile(np.linspace(60, 190, 900, dtype=np.uint8)[None, :, None], (500, 1, 3))
    boxes = []
    for i, name in enumerate(names):
        face = cv2.resize(photos[name], (200, 200), interpolation=cv2.INTER_AREA)
        x, y = 60 + i * 280, 100 + 60 * (i % 2)
        canvas[y : y + 200, x : x + 200] = face
        boxes.append((x, y, 200, 200))
    return canvas, boxes


def _centre_inside(face: Face, box: tuple) -> bool:
    x, y, w, h = face.box
    cx, cy = x + w / 2, y + h / 2
    return box[0] <= cx <= box[0] + box[2] and box[1] <= cy <= box[1] + box[3]


def test_model_asset_is_committed() -> None:
    assert BLAZEFACE_MODEL.is_file(), "ferflow/assets/blazeface_short_range.onnx is missing"
    assert (BLAZEFACE_MODEL.parent / "PROVENANCE.md").is_file()


def test_default_detector_finds_exactly_one_face_in_every_photo(photos) -> None:
    for name, image in photos.items():
        faces = detect_faces(image, DEFAULT)
        assert len(faces) == 1, f"{name}: {len(faces)} faces"
        (face,) = faces
        h, w = image.shape[:2]
        x, y, bw, bh = face.box
        assert min(x, y) >= 0 and x + bw <= w and y + bh <= h, f"{name}: box {face.box}"
        # the photos are face crops: the face is central and large
        assert _centre_inside(face, (w * 0.2, h * 0.2, w * 0.6, h * 0.6)), f"{name}: {face.box}"
        assert max(bw, bh) >= 0.3 * max(w, h), f"{name}: {face.box} too small"
        assert 0.5 <= face.score <= 1.0
        assert len(face.keypoints) == 6


def test_haar_finds_nearly_every_photo(photos) -> None:
    found = {name for name, image in photos.items() if detect_faces(image, HAAR)}
    assert len(found) >= 0.9 * len(photos), f"Haar missed {sorted(set(photos) - found)}"


@pytest.mark.parametrize("detector", list(DetectorName))
def test_every_detector_finds_portraits(photos, detector) -> None:
    config = FaceConfig(detector=detector)
    for name in PORTRAITS:
        assert len(detect_faces(photos[name], config)) == 1, f"{detector}: {name}"


@pytest.mark.parametrize("detector", list(DetectorName))
def test_no_face_in_flat_or_noise_images(detector) -> None:
    config = FaceConfig(detector=detector)
    rng = np.random.default_rng(0)
    flat = np.full((300, 400, 3), (120, 160, 200), np.uint8)
    noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    landscape = np.zeros((360, 640, 3), np.uint8)  # sky gradient over noisy green ground
    landscape[:200] = np.linspace(250, 120, 200, dtype=np.uint8)[:, None, None] * [0.6, 0.8, 1]
    landscape[200:] = np.array([40, 110, 40]) + rng.integers(-30, 30, (160, 640, 3))
    for label, image in (("flat", flat), ("noise", noise), ("landscape", landscape)):
        assert detect_faces(image, config) == [], f"{detector} found a face in {label}"


@pytest.mark.parametrize("detector", list(DetectorName))
def test_composed_scene_with_three_faces(photos, detector) -> None:
    scene, boxes = _scene(photos, list(PORTRAITS))
    faces = detect_faces(scene, FaceConfig(detector=detector))
    assert len(faces) == 3, f"{detector}: {[f.box for f in faces]}"
    for box in boxes:
        assert sum(_centre_inside(f, box) for f in faces) == 1, f"{detector}: none in {box}"


def test_small_faces_found_through_tiles(photos) -> None:
    """Faces at ~10% of a 1200x900 image need BlazeFace's tiles; without them they are lost."""
    canvas = np.full((900, 1200, 3), 128, np.uint8)
    names = list(photos)[:12:4]
    for i, name in enumerate(names):
        canvas[300 : 300 + 110, 150 + 350 * i : 260 + 350 * i] = cv2.resize(
            photos[name], (110, 110), interpolation=cv2.INTER_AREA
        )
    assert len(detect_faces(canvas, DEFAULT)) == 3
    assert detect_faces(canvas, FaceConfig(blazeface_tiles=0)) == []


def test_gray_and_rgba_inputs_give_the_same_face(photos) -> None:
    rgb = photos["Colin_Powell_0007.jpg"]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    for detector in DetectorName:
        config = FaceConfig(detector=detector)
        reference = detect_faces(np.dstack([gray] * 3), config)
        for label, image in (("gray", gray), ("gray1", gray[:, :, None]), ("rgba", rgba)):
            faces = detect_faces(image, config)
            assert len(faces) == 1 == len(reference), f"{detector} {label}"
            assert np.abs(np.subtract(faces[0].box, reference[0].box)).max() <= 4
        assert crop_faces(rgba, reference).shape == (1, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("detector", list(DetectorName))
@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 3), (1, 1, 4), (0, 0, 3), (5, 300, 3), (2, 2)])
def test_tiny_or_empty_images_give_no_faces(detector, shape) -> None:
    assert detect_faces(np.zeros(shape, np.uint8), FaceConfig(detector=detector)) == []


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(TypeError, match="uint8"):
        detect_faces(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detect_faces(np.zeros((64, 64, 2), np.uint8))
    with pytest.raises(TypeError, match="numpy array"):
        detect_faces([[0, 0], [0, 0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blazeface"):
        get_detector(FaceConfig(detector="yunet"))  # type: ignore[arg-type]


def test_crops_are_48x48_uint8(photos) -> None:
    image = photos["Tony_Blair_0026.jpg"]
    faces = detect_faces(image)
    crops = crop_faces(image, faces)
    assert crops.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and crops.dtype == np.uint8
    assert crops.std() > 20  # a face, not a flat patch
    assert crop_faces(image, []).shape == (0, IMAGE_SIZE, IMAGE_SIZE)
    # a face box partly outside the image still gives a full crop (border pixels repeated)
    edge = Face(box=(0, 0, 60, 60), score=1.0, detector=DetectorName.HAAR, raw_box=(-30, -30, 90, 90))
    assert crop_faces(image, [edge]).shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    aligned = crop_faces(image, faces, align=True)
    assert aligned.shape == (1, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.data
@pytest.mark.parametrize("detector", list(DetectorName))
def test_crops_reproduce_ferplus_framing(detector) -> None:
    """A FERPlus test image placed in a larger photo is cropped back to (nearly) its frame."""
    files = sorted(FERPLUS_TEST.glob("*.png"))[1000:1040]  # calibration used the first 1000
    if not files:
        pytest.skip(f"FERPlus data not pulled ({FERPLUS_TEST})")
    config = FaceConfig(detector=detector)
    left, top, side = 150, 120, 192  # where the upscaled 48x48 image lies in the scene
    errors = []
    for file in files:
        original = np.asarray(Image.open(file).convert("L"))
        big = cv2.resize(original, (side, side), interpolation=cv2.INTER_CUBIC)
        scene = cv2.copyMakeBorder(big, top, 90, left, 60, cv2.BORDER_REPLICATE)
        faces = detect_faces(scene, config)
        if faces:
            cx, cy, crop_side = faces[0].crop_square()
            errors.append(
                (
                    abs(cx - left - side / 2) / side,
                    abs(cy - top - side / 2) / side,
                    abs(np.log(crop_side / side)),
                )
            )
            assert crop_faces(scene, faces[:1]).shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert len(errors) >= 0.6 * len(files), f"{detector} found {len(errors)}/{len(files)}"
    dx, dy, dscale = np.median(errors, axis=0)
    # FER2013's own framing varies by ~±10 % in scale around a face measure (BlazeFace's box,
    # eye distance or eye-mouth distance alike); an uncalibrated framing (scale 1, no shift)
    # gives dscale ~0.16 and dy ~0.08 for BlazeFace
    assert dx < 0.05 and dy < 0.06 and dscale < 0.13, f"{detector}: {dx=:.3f} {dy=:.3f} {dscale=:.3f}"


def test_ssd_anchors_match_mediapipe_short_range() -> None:
    anchors = ssd_anchors()
    assert anchors.shape == (896, 2)
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[1], anchors[0])  # 2 anchors per 16x16 cell
    np.testing.assert_allclose(anchors[512], [0.5 / 8, 0.5 / 8])  # then 6 per 8x8 cell
    np.testing.assert_allclose(anchors[517], anchors[512])
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_weighted_nms_merges_overlaps_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.3, 0.6])
    kps = np.zeros((3, 6, 2), np.float32)
    merged, merged_scores, _ = weighted_nms(boxes, scores, kps, 0.3)
    assert merged_scores.tolist() == [0.9, 0.6]
    np.testing.assert_allclose(merged[0], [0.25, 0, 10.25, 10])  # (0*0.9 + 1*0.3) / 1.2
    np.testing.assert_allclose(merged[1], boxes[2])
