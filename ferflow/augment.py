"""Seeded, on-the-fly augmentation of whole batches inside ``tf.data``.

Everything is vectorised over the batch (one affine-warp op, broadcast arithmetic, one mask)
and driven by *stateless* random ops keyed on ``(seed, batch_index)``: the same seed and batch
index always give the same augmentation, whatever the thread scheduling.

Per image: a random affine transform (shift, scale, small rotation, horizontal flip) applied
by a single bilinear warp with reflected borders, optionally anisotropic (aspect jitter);
brightness and contrast jitter; optional gamma, blur, downscaling and noise; random
erasing (a noise-filled rectangle, for occlusion robustness). Per batch, optionally, mixup.
Inputs are model inputs (float32 ``(B, 48, 48, 1)`` in ``[0, 1]``, see
:mod:`ferflow.preprocess`); outputs stay in ``[0, 1]``.
"""

from __future__ import annotations

import math

import tensorflow as tf

from ferflow.config import AugmentConfig


def _seeds(seed, n: int) -> list[tf.Tensor]:
    return list(tf.unstack(tf.random.experimental.stateless_split(seed, num=n)))


def affine_matrices(batch: tf.Tensor, cfg: AugmentConfig, size: int, seed) -> tf.Tensor:
    """(B, 8) output→input projective transforms for ``ImageProjectiveTransformV3``."""
    s_rot, s_scale, s_tx, s_ty, s_flip, s_aspect = _seeds(seed, 6)
    shape = tf.stack([batch])
    theta = tf.random.stateless_uniform(shape, s_rot, -1.0, 1.0) * (cfg.rotation_deg * math.pi / 180)
    scale = tf.exp(
        tf.random.stateless_uniform(
            shape, s_scale, math.log(cfg.scale_range[0]), math.log(cfg.scale_range[1])
        )
    )
    tx = tf.random.stateless_uniform(shape, s_tx, -1.0, 1.0) * (cfg.max_shift * size)
    ty = tf.random.stateless_uniform(shape, s_ty, -1.0, 1.0) * (cfg.max_shift * size)
    if cfg.flip:
        flip = tf.where(tf.random.stateless_uniform(shape, s_flip) < 0.5, -1.0, 1.0)
    else:
        flip = tf.ones(shape)
    aspect = tf.exp(tf.random.stateless_uniform(shape, s_aspect, -1.0, 1.0) * cfg.aspect_jitter)
    sx, sy = scale * aspect, scale / aspect
    cos, sin = tf.cos(theta), tf.sin(theta)
    # forward: p_out = c + S·R(θ)·F·(p_in − c) + t with S = diag(sx, sy);
    # we need the inverse p_in = F·R(−θ)·S⁻¹·(p_out − c − t) + c = M·p_out + off
    a0, a1 = flip * cos / sx, flip * sin / sy
    b0, b1 = -sin / sx, cos / sy
    c = (size - 1) / 2.0
    a2 = c - (a0 * (c + tx) + a1 * (c + ty))
    b2 = c - (b0 * (c + tx) + b1 * (c + ty))
    zeros = tf.zeros(shape)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def random_erase(images: tf.Tensor, cfg: AugmentConfig, seed) -> tf.Tensor:
    """Replace one random rectangle per selected image with uniform noise."""
    s_apply, s_area, s_ratio, s_top, s_left, s_noise = _seeds(seed, 6)
    b = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    shape = tf.stack([b])
    apply = tf.random.stateless_uniform(shape, s_apply) < cfg.erase_prob
    area = tf.random.stateless_uniform(shape, s_area, cfg.erase_area[0], cfg.erase_area[1])
    log_r = tf.random.stateless_uniform(shape, s_ratio, math.log(0.3), math.log(3.3))
    eh = tf.minimum(tf.sqrt(area * tf.exp(log_r)) * h, float(h))
    ew = tf.minimum(tf.sqrt(area / tf.exp(log_r)) * w, float(w))
    top = tf.random.stateless_uniform(shape, s_top) * (h - eh)
    left = tf.random.stateless_uniform(shape, s_left) * (w - ew)
    yy = tf.range(h, dtype=tf.float32)[None, :, None]
    xx = tf.range(w, dtype=tf.float32)[None, None, :]
    inside = (
        (yy >= top[:, None, None])
        & (yy < (top + eh)[:, None, None])
        & (xx >= left[:, None, None])
        & (xx < (left + ew)[:, None, None])
        & apply[:, None, None]
    )[..., None]
    noise = tf.random.stateless_uniform(tf.shape(images), s_noise)
    return tf.where(inside, noise, images)


def _gaussian_blur(images: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """Separable 7-tap Gaussian blur with reflected borders, one σ for the whole batch."""
    taps = tf.range(-3.0, 4.0)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    kernel /= tf.reduce_sum(kernel)
    padded = tf.pad(images, [[0, 0], [3, 3], [3, 3], [0, 0]], mode="REFLECT")
    rows = tf.nn.conv2d(padded, tf.reshape(kernel, [7, 1, 1, 1]), 1, "VALID")
    return tf.nn.conv2d(rows, tf.reshape(kernel, [1, 7, 1, 1]), 1, "VALID")


def _downscale(images: tf.Tensor, side: tf.Tensor) -> tf.Tensor:
    """Area-downsample to ``side`` pixels, then bilinear back: a small face seen up close."""
    size = images.shape[1]
    small = tf.image.resize(images, tf.stack([side, side]), method="area")
    return tf.image.resize(small, [size, size], method="bilinear")


def degrade(images: tf.Tensor, cfg: AugmentConfig, seed) -> tf.Tensor:
    """Exposure (gamma) and camera degradations (blur, downscale, noise), each on a random
    share of the batch; the ones a config leaves at 0 add nothing to the graph."""
    s_gamma, s_blur, s_sigma, s_down, s_side, s_noise, s_nsig, s_nval = _seeds(seed, 8)
    b = tf.shape(images)[0]
    mask_shape = tf.stack([b, 1, 1, 1])
    if cfg.gamma > 0:
        g = tf.exp(tf.random.stateless_uniform(mask_shape, s_gamma, -cfg.gamma, cfg.gamma))
        images = tf.pow(tf.maximum(images, 1e-6), g)
    if cfg.blur_prob > 0:
        sigma = tf.random.stateless_uniform([], s_sigma, 0.3, cfg.blur_sigma)
        chosen = tf.random.stateless_uniform(mask_shape, s_blur) < cfg.blur_prob
        images = tf.where(chosen, _gaussian_blur(images, sigma), images)
    if cfg.downscale_prob > 0:
        side = tf.random.stateless_uniform([], s_side, cfg.downscale_side, 41, dtype=tf.int32)
        chosen = tf.random.stateless_uniform(mask_shape, s_down) < cfg.downscale_prob
        images = tf.where(chosen, _downscale(images, side), images)
    if cfg.noise_prob > 0:
        sigma = tf.random.stateless_uniform(mask_shape, s_nsig, 0.0, cfg.noise_sigma)
        chosen = tf.random.stateless_uniform(mask_shape, s_noise) < cfg.noise_prob
        noisy = images + sigma * tf.random.stateless_normal(tf.shape(images), s_nval)
        images = tf.where(chosen, noisy, images)
    return tf.clip_by_value(images, 0.0, 1.0)


def mixup(images: tf.Tensor, targets: tf.Tensor, alpha: float, seed):
    """Blend each example with its mirror in the batch, λ ~ Beta(α, α) per example."""
    s_a, s_b = _seeds(seed, 2)
    shape = tf.stack([tf.shape(images)[0]])
    ga = tf.random.stateless_gamma(shape, s_a, alpha=alpha)
    gb = tf.random.stateless_gamma(shape, s_b, alpha=alpha)
    lam = ga / (ga + gb)
    lam = tf.maximum(lam, 1.0 - lam)  # the original stays dominant
    mixed = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[::-1]
    return mixed, lam[:, None] * targets + (1 - lam[:, None]) * targets[::-1]


def augment_batch(images: tf.Tensor, targets: tf.Tensor, cfg: AugmentConfig, seed):
    """Augment a batch; ``seed`` is an int32/int64 ``[2]`` tensor (e.g. ``[run_seed, step]``)."""
    s_affine, s_bright, s_contrast, s_erase, s_mix = _seeds(tf.cast(seed, tf.int64), 5)
    # keyed apart from the five above, so recipes without degradations keep their batches
    s_degrade = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 7)
    static_shape = images.shape  # keep it static: unknown H/W slow down oneDNN convolutions
    size = images.shape[1]
    b = tf.shape(images)[0]
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=affine_matrices(b, cfg, size, s_affine),
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    images = tf.ensure_shape(images, static_shape)
    shape = tf.stack([b, 1, 1, 1])
    brightness = tf.random.stateless_uniform(shape, s_bright, -cfg.brightness, cfg.brightness)
    contrast = tf.random.stateless_uniform(shape, s_contrast, 1 - cfg.contrast, 1 + cfg.contrast)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = tf.clip_by_value((images - mean) * contrast + mean + brightness, 0.0, 1.0)
    images = tf.ensure_shape(degrade(images, cfg, s_degrade), static_shape)
    if cfg.erase_prob > 0:
        images = random_erase(images, cfg, s_erase)
    if cfg.mixup_alpha > 0:
        images, targets = mixup(images, targets, cfg.mixup_alpha, s_mix)
    return tf.ensure_shape(images, static_shape), targets
