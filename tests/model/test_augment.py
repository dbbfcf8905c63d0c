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
