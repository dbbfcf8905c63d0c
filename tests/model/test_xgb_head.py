"""The xgboost head: trees on the backbone's features, joined to the ONNX export as one graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ferflow import xgb_head as xh
from ferflow.canonical import open_dataset
from ferflow.config import XGBoostHeadConfig
from ferflow.export import _set_metadata
from ferflow.predict import FerClassifier
from ferflow.preprocess import to_model_input

pytestmark = pytest.mark.data

CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
HEAD = XGBoostHeadConfig(n_estimators=30, max_depth=3, early_stopping_rounds=5)


def _dense_net(path: Path, width: int = 16, seed: int = 0) -> Path:
    """A small ONNX network with the export's contract: image → features (ReLU) → Dense → logits."""
    rng = np.random.default_rng(seed)
    # pooled 8x8 grid of the face, so the features carry some of the face's structure
    inits = [
        helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 36]),
        helper.make_tensor("w1", TensorProto.FLOAT, [36, width], rng.normal(0, 0.5, 36 * width)),
        helper.make_tensor("w2", TensorProto.FLOAT, [width, 8], rng.normal(0, 0.5, width * 8)),
        helper.make_tensor("b2", TensorProto.FLOAT, [8], np.zeros(8)),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Reshape", ["pooled", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["features"]),
        helper.make_node("Gemm", ["features", "w2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dense_net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 48, 48, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"classes": json.dumps(CLASSES), "tta": "hflip", "train_prior": json.dumps([0.125] * 8)}
    _set_metadata(model, meta | {"output": "logits", "producer": "ferflow"})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def joined(small_dataset, tmp_path_factory):
    """The dense net's softmax head replaced by trees fit on the small dataset's train split."""
    ds = open_dataset(small_dataset)
    train, valid = ds.load("train"), ds.load("valid")
    path = _dense_net(tmp_path_factory.mktemp("xgb") / "net.onnx")
    backbone, feats = xh.backbone_model(onnx.load(str(path)))
    x, xv = xh.backbone_features(backbone, train.pixels), xh.backbone_features(backbone, valid.pixels)
    y, yv = train.label.astype(int), valid.label.astype(int)
    booster = xh.fit_trees(HEAD, 8, (x, y, np.ones(len(y), np.float32)), (xv, yv), seed=0, threads=2)
    model = xh.compose(backbone, feats, xh.trees_onnx(booster, x.shape[1]), 8)
    out = path.with_name("joined.onnx")
    onnx.save(model, str(out))
    return out, booster, xv, valid


def test_backbone_is_cut_at_the_features_feeding_the_final_dense_layer(tmp_path):
    model = onnx.load(str(_dense_net(tmp_path / "net.onnx")))
    backbone, feats = xh.backbone_model(model)
    assert feats == "features"
    assert [n.op_type for n in backbone.graph.node] == [
        "Transpose",
        "AveragePool",
        "Reshape",
        "MatMul",
        "Relu",
    ]
    assert {t.name for t in backbone.graph.initializer} == {"shape", "w1"}  # the head's weights are gone
    pixels = np.random.default_rng(1).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    assert xh.backbone_features(backbone, pixels).shape == (5, 16)


def test_a_graph_without_a_dense_tail_is_a_clear_error():
    node = helper.make_node("Relu", ["image"], ["logits"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 8])],
    )
    with pytest.raises(ValueError, match=r"final dense layer before output 'logits'.*Relu"):
        xh.feature_tensor(graph)


def test_joined_graph_matches_xgboost_and_keeps_the_contract(joined):
    path, booster, xv, valid = joined
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == [
        "logits"
    ]
    assert any(n.op_type == "TreeEnsembleClassifier" for n in model.graph.node)
    clf = FerClassifier(path, tta="none", runtime="onnxruntime")
    assert clf.classes == CLASSES and json.loads(clf.metadata["train_prior"]) == [0.125] * 8
    logits = clf.logits(to_model_input(valid.pixels))
    assert logits.shape == (len(valid), 8) and np.isfinite(logits).all()
    expected = xh.booster_proba(booster, xv)
    np.testing.assert_allclose(np.exp(logits), np.maximum(expected, xh.PROB_FLOOR), atol=1e-5)
    assert (logits.argmax(1) == expected.argmax(1)).all()
    # the trees learned something: better than always answering the commonest class
    labels = valid.label.astype(int)
    assert (logits.argmax(1) == labels).mean() > np.bincount(labels).max() / len(labels)


def test_joined_graph_runs_without_tensorflow_or_xgboost(joined):
    path = joined[0]
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['xgboost'] = None; "
        "sys.modules['keras'] = None; import numpy as np; "
        "from ferflow.predict import FerClassifier; "
        f"c = FerClassifier({str(path)!r}); "
        "p = c.predict_proba(np.full((3, 48, 48), 128, np.uint8)); "
        "print(p.shape, round(float(p.sum()), 4), c.runtime.value)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "(3, 8) 3.0 onnxruntime"


def test_hflip_tta_and_runtime_auto_fall_back_to_onnxruntime(joined):
    path, _, _, valid = joined
    x = to_model_input(valid.pixels[:40])
    plain = FerClassifier(path, tta="none", runtime="onnxruntime")
    expected = (plain.logits(x) + plain.logits(x[:, :, ::-1].copy())) / 2
    auto = FerClassifier(path, runtime="auto")  # metadata asks for hflip
    assert auto.tta.value == "hflip"
    np.testing.assert_allclose(auto.logits(x), expected, atol=1e-5)
    # OpenVINO has no tree-ensemble operator: auto serves with ONNX Runtime and says why
    assert auto.runtime.value == "onnxruntime"
    assert "TreeEnsembleClassifier" in (auto.fallback_reason or "")
    with pytest.raises(ValueError, match="runtime openvino refused"):
        FerClassifier(path, runtime="openvino")


def test_int8_quantisation_leaves_the_trees_in_float(joined, small_dataset, tmp_path):
    from ferflow.export import quantize_int8

    path, _, _, valid = joined
    calib = open_dataset(small_dataset).load("train").pixels[:128]
    int8 = quantize_int8(path, tmp_path / "int8.onnx", calib)
    nodes = onnx.load(str(int8)).graph.node
    trees = [n for n in nodes if n.op_type == "TreeEnsembleClassifier"]
    assert len(trees) == 1 and any(n.op_type == "QuantizeLinear" for n in nodes)
    x = to_model_input(valid.pixels)
    fp32 = FerClassifier(path, tta="none", runtime="onnxruntime").logits(x)
    got = FerClassifier(int8, tta="none", runtime="onnxruntime").logits(x)
    assert (fp32.argmax(1) == got.argmax(1)).mean() > 0.8


def test_train_with_the_xgboost_head_exports_a_working_model(small_dataset, tmp_path):
    pytest.importorskip("tensorflow")
    from ferflow.config import AugmentConfig, HeadName, LabelScheme, Precision, TrainConfig
    from ferflow.train import train

    cfg = TrainConfig(
        model="ran_fm",
        width=8,
        depths=(1, 1, 1, 1),
        epochs=1,
        batch_size=32,
        warmup_epochs=0,
        label_scheme=LabelScheme.MAJORITY,
        precision=Precision.FLOAT32,
        augment=AugmentConfig(erase_prob=0.0, rotation_deg=0.0),
        head=HeadName.XGBOOST,
        xgboost=HEAD,
        quantize_int8=True,
        tta="hflip",
    )
    result = train(
        cfg, small_dataset, tmp_path / "run", track=False, steps_per_epoch=4, limit_train=256, verbose=0
    )
    assert result.extras["head"] == "xgboost" and result.extras["xgboost_trees"] >= 8
    assert 0 <= result.extras["xgboost_tune_accuracy"] <= 1
    fp32 = onnx.load(str(result.run_dir / "model_fp32.onnx"))
    assert any(n.op_type == "TreeEnsembleClassifier" for n in fp32.graph.node)
    meta = {p.key: p.value for p in fp32.metadata_props}
    assert meta["head"] == "xgboost" and json.loads(meta["classes"]) == open_dataset(small_dataset).classes
    served = onnx.load(str(result.onnx_path))  # int8 only if it was cheap on the tuning split
    assert {p.key: p.value for p in served.metadata_props}.get("quantization") == (
        "int8" if result.extras["onnx_precision"] == "int8" else None
    )
    assert sum(n.op_type == "TreeEnsembleClassifier" for n in served.graph.node) == 1
    clf = FerClassifier(result.onnx_path)
    assert clf.metadata["head"] == "xgboost" and clf.tta.value == result.extras["tta"]
    valid = open_dataset(small_dataset).load("valid")
    assert clf.predict_proba(valid.pixels[:10]).shape == (10, 8)
    assert result.metrics["test"]["n"] == len(valid) and "robustness" in result.metrics
