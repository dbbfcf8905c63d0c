"""Export stage: Keras model → self-describing ONNX (+ optional int8), reference model files.

The ONNX graph takes ``image`` float32 ``(N, 48, 48, 1)`` in ``[0, 1]`` and returns ``logits``
``(N, C)``; class names, the input contract and provenance go into ``metadata_props`` so
:class:`ferflow.predict.FerClassifier` needs nothing else.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ferflow.preprocess import INPUT_MEAN, INPUT_NAME, INPUT_SCALE, INPUT_SHAPE, INPUT_STD

ONNX_OPSET = 17


def export_onnx(
    model, path: str | Path, classes: Sequence[str], extra_meta: dict[str, str] | None = None
) -> Path:
    """Write ``model`` (a float32-policy Keras model) as ONNX with ferflow metadata."""
    import onnx
    import tensorflow as tf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = [tf.TensorSpec((None, *INPUT_SHAPE), tf.float32, name=INPUT_NAME)]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        model.export(str(raw), format="onnx", input_signature=spec, verbose=False, opset_version=ONNX_OPSET)
        proto = onnx.load(str(raw))
    graph = proto.graph
    old_out = graph.output[0].name
    for node in graph.node:  # rename the output tensor to "logits"
        node.output[:] = ["logits" if o == old_out else o for o in node.output]
    graph.output[0].name = "logits"
    meta = {
        "classes": json.dumps(list(classes)),
        "input": json.dumps(
            {
                "name": graph.input[0].name,
                "shape": [None, *INPUT_SHAPE],
                "dtype": "float32",
                "scale": INPUT_SCALE,
                "normalisation_inside": [INPUT_MEAN, INPUT_STD],
            }
        ),
        "output": "logits",
        "producer": "ferflow",
        "exported": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra_meta or {}),
    }
    _set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def set_metadata(path: str | Path, meta: dict[str, str]) -> None:
    """Add or replace ferflow metadata entries of an ONNX file in place (atomic rename)."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path))
    _set_metadata(proto, meta)
    tmp = path.with_suffix(".tmp.onnx")
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def _set_metadata(proto, meta: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in meta.items():
        if k in existing:
            existing[k].value = v
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v


FLOAT_SCOPES = ("region_attention",)
"""Node-name scopes int8 quantisation leaves in float. RAN's attention tail (μ, ν, the weighted
sums) is < 0.1 % of the FLOPs, so int8 buys nothing there. Quantising it cost the reference model
0.25 points on FER2013Valid, and OpenVINO 2026.4 mis-sums a quantised μ across a batch (argmax
agreement with ONNX Runtime fell to 40 % at batch 64)."""


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration_pixels: np.ndarray) -> Path:
    """Static int8 quantisation (QDQ, per-channel s8 weights, u8 activations) via ONNX Runtime.

    ``calibration_pixels`` are uint8 training faces ``(N, 48, 48)`` for activation ranges.
    Nodes under :data:`FLOAT_SCOPES` stay float.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ferflow.preprocess import to_model_input

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    x = to_model_input(calibration_pixels)
    input_name = onnx.load(str(fp32_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: x[i : i + 64]} for i in range(0, len(x), 64)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        keep_float = [
            n.name for n in onnx.load(str(pre)).graph.node if any(s in n.name for s in FLOAT_SCOPES)
        ]
        quantize_static(
            str(pre),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            nodes_to_exclude=keep_float,
        )
    src, dst = onnx.load(str(fp32_path)), onnx.load(str(out_path))
    _set_metadata(dst, {p.key: p.value for p in src.metadata_props} | {"quantization": "int8"})
    onnx.save(dst, str(out_path))
    return out_path


def check_agreement(model, onnx_path: str | Path, pixels: np.ndarray) -> dict[str, float]:
    """Keras vs ONNX on uint8 faces: argmax agreement and max |Δ logit|."""
    from ferflow.predict import FerClassifier
    from ferflow.preprocess import to_model_input

    x = to_model_input(pixels)
    ref = np.asarray(model.predict(x, batch_size=256, verbose=0), dtype=np.float32)
    got = FerClassifier(onnx_path, tta="none").logits(x)  # the bare graph against Keras
    return {
        "argmax_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
        "n": len(x),
    }


def _points(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:+.2f} points"


def write_reference(result, cfg, dataset_meta: dict[str, Any], out_dir: Path) -> Path:
    """Copy the chosen ONNX model to ``out_dir`` with metrics.json and MODEL_CARD.md."""
    from dataclasses import asdict

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.onnx_path, out_dir / "model.onnx")
    test = result.metrics.get("test", {})
    tune = result.metrics.get("tune", {})
    cfg_dict = json.loads(json.dumps(asdict(cfg), default=str))
    info = {
        "model": cfg.model,
        "onnx_precision": result.metrics.get("onnx_precision"),
        "train_seconds": round(result.train_seconds, 1),
        "epochs_run": len(result.history),
        "device": result.device.describe(),
        "dataset": {
            k: dataset_meta.get(k)
            for k in ("source", "source_version", "class_set", "label_scheme", "created")
        },
        "mlflow_run_id": result.mlflow_run_id,
        "config": cfg_dict,
        "test": test,
        "tune": tune,
        "export_agreement": result.extras.get("export_agreement"),
        "tta": result.extras.get("tta"),
        "tta_tune_accuracy_gain": result.extras.get("tta_tune_accuracy_gain"),
        "int8_tune_accuracy_cost": result.extras.get("int8_tune_accuracy_cost"),
        "robustness": result.metrics.get("robustness"),
        "sources": sorted(dataset_meta.get("sources") or {}),
    }
    (out_dir / "metrics.json").write_text(json.dumps(info, indent=2))
    (out_dir / "MODEL_CARD.md").write_text(model_card(result, cfg, info, test, out_dir))
    return out_dir


def model_card(result, cfg, info: dict[str, Any], test: dict[str, Any], out_dir: Path) -> str:
    """MODEL_CARD.md: what the model is, how it was trained, its scores and limits."""
    from ferflow.evaluate import card_section

    size_mb = (out_dir / "model.onnx").stat().st_size / 2**20
    sources = info["sources"] or ["ferplus"]
    cross = card_section(
        {"datasets": test.get("datasets", {})}
        | ({"robustness": info["robustness"]} if info["robustness"] else {})
    )
    rows = "\n".join(
        f"| {c} | {test['per_class'][c]['precision']:.3f} | {test['per_class'][c]['recall']:.3f} "
        f"| {test['per_class'][c]['f1']:.3f} | {test['per_class'][c]['support']} |"
        for c in test.get("classes", [])
    )
    return f"""# ferflow reference model — `{cfg.model}`

Facial-expression classifier over {len(test.get("classes", []))} FERPlus classes
({", ".join(test.get("classes", []))}), exported to ONNX ({info["onnx_precision"]},
{size_mb:.1f} MB). Input: `image` float32 `(N, 48, 48, 1)`, grayscale face crop scaled to
[0, 1]; output: `logits` `(N, C)`. Run it with `ferflow.predict.FerClassifier` (no TensorFlow).
Test-time augmentation: `{result.extras.get("tta", cfg.tta)}` (metadata `tta`; every number below
uses it; the recipe asks for `{cfg.tta}` and keeps it only if it gains ≥ {100 * cfg.tta_min_gain:.1f}
points on the tuning split: measured {_points(result.extras.get("tta_tune_accuracy_gain"))}).

## Training
- Data: the train splits of {", ".join(sources)} (`{cfg.label_scheme}` targets; source weights
  {cfg.source_weights or "1 each"}), dataset md5
  `{info["dataset"]["source_version"]}`; model selection and early stopping on a stratified
  {cfg.tune_fraction:.0%} tuning split of Train (seed {cfg.seed}). No held-out split (FER2013Valid,
  photos valid) was used for any decision.
- Recipe: {cfg.model}, width {cfg.width}, depths {list(cfg.depths)}, {cfg.optimizer}
  lr {cfg.learning_rate} wd {cfg.weight_decay}, {cfg.schedule} schedule, batch {cfg.batch_size},
  {info["epochs_run"]} epochs run of {cfg.epochs}; full config in `metrics.json`.
- Time: {info["train_seconds"] / 3600:.2f} h on {info["device"]}.
- MLflow run: `{info["mlflow_run_id"]}`.

## Results on the test split (every source's valid split, majority protocol, n = {test.get("n")})
- Accuracy **{100 * test.get("accuracy", float("nan")):.2f} %**, macro-F1
  {test.get("macro_f1", float("nan")):.3f}, accuracy with a random 16×16 occluding patch
  {100 * test.get("occluded_accuracy", float("nan")):.2f} %.

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

## Per source dataset, and under controlled shifts
Each source is scored over its own classes, the all-classes figure beside it
(docs/training.md, "Cross-dataset evaluation"); photos were cropped by face detection.

{cross}

## Limitations
Trained on FER2013/FERPlus web images (48×48 grayscale, mostly frontal, skewed towards
neutral/happiness; contempt and disgust are rare and least reliable). Expressions are not
emotions; do not use for decisions about individuals.

Generated {datetime.now(UTC).isoformat(timespec="seconds")} by `ferflow train`.
"""
