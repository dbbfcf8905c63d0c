"""RAN / baseline model structure, attention weights and the region-biased loss."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ferflow.models import (  # noqa: E402
    DEFAULT_REGIONS,
    RegionAttention,
    attention_weights,
    build_model,
    region_biased_loss,
)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).random((5, 48, 48, 1), dtype=np.float32)


@pytest.mark.parametrize("name", ["ran", "ran_fm"])
def test_ran_shapes_and_attention_in_unit_interval(name, batch):
    model = build_model(name, num_classes=8, width=8)
    logits = np.asarray(model(batch, training=False))
    assert logits.shape == (5, 8)
    assert np.isfinite(logits).all()
    mu, nu = (np.asarray(t) for t in attention_weights(model, batch))
    regions = 1 + len(DEFAULT_REGIONS)
    assert mu.shape == nu.shape == (5, regions)
    for w in (mu, nu):
        assert (w > 0).all() and (w < 1).all()
    # the region-biased loss is part of the model losses
    assert len(model.losses) == 1 and float(model.losses[0]) >= 0


def test_ran_fm_head_stages_zero_pools_the_final_map(batch):
    model = build_model("ran_fm", num_classes=7, width=8, head_stages=0)
    assert model(batch).shape == (5, 7)
    with pytest.raises(ValueError, match="head_stages"):
        build_model("ran_fm", num_classes=7, width=8, head_stages=9)


def test_cnn_baseline_structure(batch):
    model = build_model("cnn", num_classes=8)
    assert model(batch).shape == (5, 8)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [64, 128, 512, 512]
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [256, 512, 8]


def test_config_names_every_model():
    """Recipes are checked against config.MODEL_NAMES before Keras loads: it must match."""
    from ferflow.config import MODEL_NAMES
    from ferflow.models import MODELS

    assert set(MODEL_NAMES) == set(MODELS)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", 8)


def test_region_biased_loss_zero_when_margin_holds():
    # face attention 0.50; best crop 0.60: the gap 0.10 exceeds both 0.02 and 0.1 margins
    mu = np.array([[0.50, 0.60, 0.40, 0.30], [0.20, 0.10, 0.90, 0.10]], dtype=np.float32)
    assert float(region_biased_loss(mu, margin=0.02)) == pytest.approx(0.0, abs=1e-7)
    assert float(region_biased_loss(mu, margin=0.1)) == pytest.approx(0.0, abs=1e-6)


def test_region_biased_loss_positive_when_margin_violated():
    mu = np.array(
        [
            [0.50, 0.51, 0.20, 0.20],  # gap 0.01 < 0.02: loss 0.01
            [0.80, 0.30, 0.40, 0.50],  # crops below the face: gap -0.30, loss 0.32
        ],
        dtype=np.float32,
    )
    assert float(region_biased_loss(mu, margin=0.02)) == pytest.approx((0.01 + 0.32) / 2, abs=1e-6)


def test_region_attention_matches_the_paper_formulas():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(3, 4, 6)).astype(np.float32)
    layer = RegionAttention(margin=0.02, rb_weight=0.0)
    layer.build(feats.shape)
    q0 = rng.normal(size=(6, 1)).astype(np.float32)
    q1 = rng.normal(size=(12, 1)).astype(np.float32)
    layer.self_att.set_weights([q0, np.zeros(1, np.float32)])
    layer.rel_att.set_weights([q1, np.zeros(1, np.float32)])
    p, mu, nu = (np.asarray(t) for t in layer.attend(feats))

    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    mu_ref = sig(feats @ q0)[..., 0]
    fm = (mu_ref[..., None] * feats).sum(1) / mu_ref.sum(1, keepdims=True)
    joined = np.concatenate([feats, np.repeat(fm[:, None], 4, axis=1)], axis=-1)
    nu_ref = sig(joined @ q1)[..., 0]
    w = mu_ref * nu_ref
    p_ref = (w[..., None] * joined).sum(1) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-5)
    np.testing.assert_allclose(nu, nu_ref, rtol=1e-5)
    np.testing.assert_allclose(p, p_ref, rtol=1e-4, atol=1e-5)


def test_saved_model_round_trip(tmp_path, batch):
    model = build_model("ran_fm", num_classes=8, width=8)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(model(batch)), np.asarray(loaded(batch)), atol=1e-6)
