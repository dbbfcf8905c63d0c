"""The ``head: xgboost`` classifier: gradient-boosted trees on the trained backbone's features.

The fp32 ONNX export of the network is cut at the tensor feeding its final dense layer (the
penultimate features); XGBoost (``hist``) is fit on those features of the fit split, with the
recipe's sample weights and early stopping on the tuning split; the trees are converted with
onnxmltools and joined to the backbone as one ONNX graph. That graph keeps the export's
contract (input ``image``, output ``logits`` ``(N, C)``, the same metadata): the trees give
probabilities, and their logarithm is returned as logits, so argmax and softmax agree with the
trees' own prediction. Serving needs neither TensorFlow nor XGBoost: the tree ensemble is the
standard ``ai.onnx.ml`` TreeEnsembleClassifier operator that ONNX Runtime runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ferflow.config import TrainConfig, XGBoostHeadConfig

if TYPE_CHECKING:
    import onnx

    from ferflow.train import TrainingData

PROB_FLOOR = 1e-7
"""Probabilities are clipped here before the log: a tree vote of exactly 0 stays finite."""

TREE_PREFIX = "xgb_head/"
"""Prefix of every node and tensor name the tree part adds to the graph."""

# Ops between the final dense layer and the graph output that carry one tensor through unchanged in
# meaning (quantisation pairs of an int8 export, identity/cast/softmax at the tail).
_PASS_THROUGH = {"QuantizeLinear", "DequantizeLinear", "Identity", "Cast", "Softmax", "Add"}
_DENSE = {"Gemm", "MatMul"}


def feature_tensor(graph: onnx.GraphProto) -> str:
    """The name of the tensor the graph's final dense layer reads (the penultimate features).

    Walks back from the first graph output through bias adds, casts and quantisation pairs to
    the first Gemm/MatMul. A graph with another tail raises ``ValueError``.
    """
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    name = graph.output[0].name
    seen: list[str] = []
    while (node := producers.get(name)) is not None:
        seen.append(node.op_type)
        if node.op_type in _DENSE:
            return node.input[0]
        if node.op_type not in _PASS_THROUGH:
            break
        # a bias Add carries the input that some node computes, not the constant
        computed = [i for i in node.input if i in producers and i not in initializers]
        if not computed:
            break
        name = computed[0]
    raise ValueError(
        f"cannot find the final dense layer before output {graph.output[0].name!r} "
        f"(walked back through {seen or 'nothing'}); the xgboost head needs a network whose "
        "logits come from a Dense layer"
    )


def _prune(graph: onnx.GraphProto, keep_outputs: Iterable[str], cut_at: str | None = None) -> None:
    """Drop the nodes and initializers no kept output depends on (in place); with ``cut_at``,
    that tensor becomes a given input: the nodes computing it are dropped too."""
    needed = set(keep_outputs)
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i and i != cut_at)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer tensors by name
                for sub in [attr.g, *attr.graphs]:
                    needed.update(i for n in sub.node for i in n.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def backbone_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """A copy of ``model`` whose only output is its penultimate feature tensor; that name."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    feats = feature_tensor(out.graph)
    del out.graph.output[:]
    out.graph.output.append(onnx.helper.make_tensor_value_info(feats, onnx.TensorProto.FLOAT, None))
    _prune(out.graph, [feats])
    return out, feats


def backbone_features(
    backbone: onnx.ModelProto, pixels: np.ndarray, threads: int | None = None, batch_size: int = 256
) -> np.ndarray:
    """Penultimate features ``(N, D)`` of uint8 faces ``(N, 48, 48)`` through ONNX Runtime."""
    import onnxruntime as ort

    from ferflow.preprocess import to_model_input

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    session = ort.InferenceSession(
        backbone.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    parts = [
        session.run(None, {name: to_model_input(pixels[i : i + batch_size])})[0]
        for i in range(0, len(pixels), batch_size)
    ]
    feats = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return feats.reshape(len(feats), -1).astype(np.float32)


def fit_trees(
    cfg: XGBoostHeadConfig,
    num_classes: int,
    fit: tuple[np.ndarray, np.ndarray, np.ndarray],
    tune: tuple[np.ndarray, np.ndarray],
    seed: int = 0,
    threads: int | None = None,
):
    """XGBoost ``multi:softprob`` on ``fit`` = (features, labels, sample weights), early stopping
    on ``tune`` = (features, labels) by multi-class log loss; the booster cut to its best round.

    The class count is fixed (not read from the labels), so a subset missing a rare class still
    gives a model over every class.
    """
    import xgboost as xgb

    x, y, w = fit
    dfit = xgb.DMatrix(x, label=y, weight=w, nthread=threads or -1)
    dtune = xgb.DMatrix(tune[0], label=tune[1], nthread=threads or -1)
    params = {
        "objective": "multi:softprob",
        "num_class": num_classes,
        "eval_metric": "mlogloss",
        "tree_method": cfg.tree_method,
        "max_depth": cfg.max_depth,
        "eta": cfg.learning_rate,
        "subsample": cfg.subsample,
        "colsample_bytree": cfg.colsample_bytree,
        "seed": seed,
        "nthread": threads or len(os.sched_getaffinity(0)),
    }
    booster = xgb.train(
        params,
        dfit,
        num_boost_round=cfg.n_estimators,
        evals=[(dtune, "tune")],
        early_stopping_rounds=cfg.early_stopping_rounds,
        verbose_eval=False,
    )
    best = getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1)
    return booster[: best + 1]


def trees_onnx(booster, num_features: int) -> onnx.ModelProto:
    """The booster as an ONNX model: input ``features`` (N, D), outputs label and probabilities."""
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    return convert_xgboost(booster, initial_types=[("features", FloatTensorType([None, num_features]))])


def compose(
    backbone: onnx.ModelProto, feats: str, trees: onnx.ModelProto, num_classes: int
) -> onnx.ModelProto:
    """One graph: ``backbone`` up to ``feats``, then the trees, then log-probabilities as ``logits``.

    The backbone keeps its input, metadata and node names; every name from the tree model gets
    :data:`TREE_PREFIX`. Opset imports are the union (highest version per domain).
    """
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(backbone)
    g, t = out.graph, trees.graph
    tree_input = t.input[0].name

    def rename(name: str) -> str:
        return feats if name == tree_input else (TREE_PREFIX + name if name else name)

    probs = rename(t.output[1].name)  # output 0 is the label, 1 the (N, C) probabilities
    for node in t.node:
        new = g.node.add()
        new.CopyFrom(node)
        new.name = TREE_PREFIX + (node.name or node.op_type)
        new.input[:] = [rename(i) for i in node.input]
        new.output[:] = [rename(o) for o in node.output]
    for init in t.initializer:
        g.initializer.add().CopyFrom(init)
        g.initializer[-1].name = rename(init.name)
    floor = TREE_PREFIX + "prob_floor"
    g.initializer.append(helper.make_tensor(floor, TensorProto.FLOAT, [], [PROB_FLOOR]))
    g.node.extend(
        [
            helper.make_node(
                "Max", [probs, floor], [TREE_PREFIX + "probs_floored"], name=TREE_PREFIX + "floor"
            ),
            helper.make_node("Log", [TREE_PREFIX + "probs_floored"], ["logits"], name=TREE_PREFIX + "log"),
        ]
    )
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, num_classes]))
    versions = {o.domain: o.version for o in backbone.opset_import}
    for o in trees.opset_import:
        versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    del out.opset_import[:]
    out.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())
    out.ir_version = max(backbone.ir_version, trees.ir_version)
    onnx.checker.check_model(out)
    return out


def attach_xgboost_head(fp32_path: Path, data: TrainingData, cfg: TrainConfig) -> dict[str, Any]:
    """Replace the softmax head of the ONNX model at ``fp32_path`` by XGBoost trees (in place).

    Same input, output and metadata; ``head`` metadata says ``xgboost``. Returns the extras
    recorded with the run: fit seconds, rounds and trees kept, feature width, and the head's
    accuracy on the tuning split next to the softmax head's (both on the same fp32 features).
    """
    import onnx

    from ferflow.export import _set_metadata

    model = onnx.load(str(fp32_path))
    backbone, feats = backbone_model(model)
    threads = len(os.sched_getaffinity(0))
    fit_x = backbone_features(backbone, data.fit.pixels, threads)
    tune_x = backbone_features(backbone, data.tune.pixels, threads)
    if fit_x.ndim != 2 or fit_x.shape[1] == 0:
        raise ValueError(f"{fp32_path}: the features before the final dense layer are not (N, D)")
    # majority labels, whatever the label scheme: the soft targets enter only through the network;
    # data.weights carries the class balancing and source weights the network's loss used
    fit_y, tune_y = data.fit.label.astype(int), data.tune.label.astype(int)
    start = time.perf_counter()
    booster = fit_trees(
        cfg.xgboost, data.num_classes, (fit_x, fit_y, data.weights), (tune_x, tune_y), cfg.seed, threads
    )
    fit_seconds = time.perf_counter() - start
    combined = compose(backbone, feats, trees_onnx(booster, fit_x.shape[1]), data.num_classes)
    _set_metadata(combined, {"head": "xgboost"})
    tmp = fp32_path.with_suffix(".tmp.onnx")
    onnx.save(combined, str(tmp))
    tmp.replace(fp32_path)
    softmax_tune = _softmax_head_accuracy(model, tune_x, feats, tune_y)
    tree_tune = float((booster_proba(booster, tune_x).argmax(1) == tune_y).mean())
    return {
        "head": "xgboost",
        "xgboost_fit_seconds": round(fit_seconds, 2),
        "xgboost_rounds": booster.num_boosted_rounds(),
        "xgboost_trees": booster.num_boosted_rounds() * data.num_classes,
        "xgboost_features": int(fit_x.shape[1]),
        "xgboost_tune_accuracy": tree_tune,
        "softmax_tune_accuracy": softmax_tune,
    }


def booster_proba(booster, x: np.ndarray) -> np.ndarray:
    """XGBoost's own class probabilities ``(N, C)`` for features ``x``."""
    import xgboost as xgb

    return booster.predict(xgb.DMatrix(x)).reshape(len(x), -1)


def _softmax_head_accuracy(model: onnx.ModelProto, x: np.ndarray, feats: str, y: np.ndarray) -> float:
    """The original head's tuning accuracy on the same features: the graph from ``feats`` on."""
    import onnx
    import onnxruntime as ort

    head = onnx.ModelProto()
    head.CopyFrom(model)
    _prune(head.graph, [o.name for o in head.graph.output], cut_at=feats)
    del head.graph.input[:]
    head.graph.input.append(onnx.helper.make_tensor_value_info(feats, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {feats: x})[0]
    return float((logits.argmax(1) == y).mean())
