"""Seeded batch augmentation: determinism, ranges and the geometry of the warp."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ferflow.augment import augment_batch  # noqa: E402
from ferflow.config import AugmentConfig  # noqa: E402

IDENTITY = AugmentConfig(
    max_shift=0.0,
    scale_range=(1.0, 1.0),
    rotation_deg=0.0,
    flip=False,
    brightness=0.0,
    contrast=0.0,
    erase_prob=0.0,
    mixup_alpha=0.0,
)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((16, 48, 48, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def targets():
    return np.eye(8, dtype=np.float32)[np.arange(16) % 8]


def run(images, targets, cfg, seed=(1, 2)):
    x, y = augment_batch(tf.constant(images), tf.constant(targets), cfg, tf.constant(seed))
    return x.numpy(), y.numpy()


def test_same_seed_same_output_different_seed_different(images, targets):
    cfg = AugmentConfig(mixup_alpha=0.2)
    a, ya = run(images, targets, cfg, (3, 4))
    b, yb = run(images, targets, cfg, (3, 4))
    c, _ = run(images, targets, cfg, (3, 5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert np.abs(a - c).mean() > 0.01
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
    np.testing.assert_allclose(ya.sum(1), 1.0, rtol=1e-6)


def test_identity_config_is_identity(images, targets):
    x, y = run(images, targets, IDENTITY)
    np.testing.assert_allclose(x, images, atol=1e-5)
    np.testing.assert_array_equal(y, targets)


def test_flip_mirrors_exactly(images, targets):
    # flip-only: every image is either unchanged or its exact left-right mirror, both occur
    x, _ = run(images, targets, dataclasses.replace(IDENTITY, flip=True))
    same = np.isclose(x, images, atol=1e-5).all(axis=(1, 2, 3))
    mirrored = np.isclose(x, images[:, :, ::-1], atol=1e-5).all(axis=(1, 2, 3))
    assert (same | mirrored).all()
    assert same.any() and mirrored.any()


def test_shift_moves_content(targets):
    img = np.zeros((16, 48, 48, 1), np.float32)
    img[:, 20:28, 20:28] = 1.0
    x, _ = run(img, targets, dataclasses.replace(IDENTITY, max_shift=0.1))
    centres = [np.argwhere(xi[..., 0] > 0.5).mean(0) for xi in x]
    offsets = np.array([c - 23.5 for c in centres])
    assert np.abs(offsets).max() <= 0.1 * 48 + 0.5
    assert np.abs(offsets).max() > 0.5


def test_random_erasing_changes_a_rectangle(images, targets):
    cfg = dataclasses.replace(IDENTITY, erase_prob=1.0, erase_area=(0.1, 0.1))
    x, _ = run(images, targets, cfg)
    changed = ~np.isclose(x, images, atol=1e-6)[..., 0]
    frac = changed.mean(axis=(1, 2))
    assert (frac > 0.05).all() and (frac < 0.15).all()


def _sharpness(x: np.ndarray) -> np.ndarray:
    """Mean absolute Laplacian per image: falls when detail is blurred away."""
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return np.abs(lap).mean(axis=(1, 2, 3))


def test_aspect_jitter_makes_boxes_wide_or_tall(targets):
    img = np.zeros((16, 48, 48, 1), np.float32)
    img[:, 14:34, 14:34] = 1.0  # a 20×20 square
    square = dataclasses.replace(IDENTITY, scale_range=(0.9, 1.1))
    jittered = dataclasses.replace(square, aspect_jitter=0.2)

    def ratios(cfg):
        x, _ = run(img, targets, cfg)
        boxes = [np.argwhere(xi[..., 0] > 0.5) for xi in x]
        return np.array([np.ptp(b[:, 1]) / np.ptp(b[:, 0]) for b in boxes])  # width / height

    assert np.allclose(ratios(square), 1.0, atol=0.06)
    r = ratios(jittered)
    assert (r > 1.1).any() and (r < 1 / 1.1).any()
    assert (r < np.exp(0.4) + 0.1).all() and (r > np.exp(-0.4) - 0.1).all()


@pytest.mark.parametrize(
    "field",
    [{"blur_prob": 1.0, "blur_sigma": 2.0}, {"downscale_prob": 1.0, "downscale_side": 12}],
)
def test_blur_and_downscale_remove_detail_keep_brightness(images, targets, field):
    x, y = run(images, targets, dataclasses.replace(IDENTITY, **field))
    assert (_sharpness(x) < 0.5 * _sharpness(images)).all()
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)), atol=0.03)
    np.testing.assert_array_equal(y, targets)


def test_degradations_hit_only_their_share_of_the_batch(targets):
    flat = np.full((256, 48, 48, 1), 0.5, np.float32)
    y = np.eye(8, dtype=np.float32)[np.arange(256) % 8]
    x, _ = run(flat, y, dataclasses.replace(IDENTITY, noise_prob=0.25, noise_sigma=0.1))
    noisy = x.std(axis=(1, 2, 3)) > 1e-3
    assert 0.12 < noisy.mean() < 0.40  # about a quarter (a per-image draw, 256 images)
    assert x[noisy].std(axis=(1, 2, 3)).max() <= 0.1 + 0.01
    np.testing.assert_array_equal(x[~noisy], flat[~noisy])


def test_gamma_keeps_order_and_range(targets):
    ramp = np.tile(np.linspace(0, 1, 48, dtype=np.float32)[None, None, :, None], (16, 48, 1, 1))
    x, _ = run(ramp, targets, dataclasses.replace(IDENTITY, gamma=0.5))
    assert (np.diff(x[:, 0, :, 0], axis=1) >= -1e-6).all()  # still monotone along the ramp
    assert x.min() >= 0 and x.max() <= 1
    assert np.abs(x - ramp).max() > 0.05


def test_all_augmentations_together_are_seeded(images, targets):
    cfg = AugmentConfig(aspect_jitter=0.1, gamma=0.3, blur_prob=0.3, downscale_prob=0.3, noise_prob=0.3)
    a, _ = run(images, targets, cfg, (5, 6))
    b, _ = run(images, targets, cfg, (5, 6))
    c, _ = run(images, targets, cfg, (5, 7))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
