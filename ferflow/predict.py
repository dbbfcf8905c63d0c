"""Inference from an exported ONNX model with ONNX Runtime. Never imports TensorFlow.

    clf = FerClassifier()                         # the committed reference model
    probs = clf.predict_proba(faces)              # faces: uint8 (N, 48, 48) grayscale crops
    names = clf.predict(faces)                    # class names

The class names and the input contract travel inside the ONNX file (``metadata_props``), so
a model file is self-describing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ferflow.config import TestTimeAugmentation
from ferflow.preprocess import softmax, to_model_input

REFERENCE_MODEL = Path(__file__).resolve().parents[1] / "models" / "reference" / "model.onnx"
"""The committed reference model; ``FERFLOW_MODEL`` overrides it."""


def default_model_path() -> Path:
    return Path(os.environ.get("FERFLOW_MODEL", REFERENCE_MODEL))


class FerClassifier:
    """An ONNX facial-expression classifier; thread count defaults to the usable cores."""

    def __init__(
        self,
        path: str | Path | None = None,
        threads: int | None = None,
        tta: str | TestTimeAugmentation | None = None,
    ):
        """``tta``: test-time augmentation; ``None`` follows the model's ``tta`` metadata."""
        import onnxruntime as ort

        self.path = Path(path) if path is not None else default_model_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"model file {self.path} does not exist")
        opts = ort.SessionOptions()
        if threads is None:
            try:
                threads = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover
                threads = os.cpu_count() or 1
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as err:
            raise ValueError(f"{self.path} is not a loadable ONNX model: {err}") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if "classes" not in meta:
            raise ValueError(f"{self.path}: ONNX metadata has no 'classes' (not a ferflow export)")
        self.classes: list[str] = json.loads(meta["classes"])
        self.metadata = dict(meta)
        self.input_name = self.session.get_inputs()[0].name
        chosen = tta if tta is not None else meta.get("tta", TestTimeAugmentation.NONE.value)
        try:
            self.tta = TestTimeAugmentation(chosen)
        except ValueError:
            known = ", ".join(t.value for t in TestTimeAugmentation)
            source = "argument tta" if tta is not None else f"{self.path}: metadata 'tta'"
            raise ValueError(f"{source}={chosen!r} is not one of {known}") from None

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits for model inputs ``x`` (float32 ``(N, 48, 48, 1)`` in ``[0, 1]``).

        With ``tta == hflip`` each face and its mirror image go through the model in one batch
        and their logits are averaged.
        """
        out = []
        for i in range(0, len(x), batch_size):
            chunk = x[i : i + batch_size]
            if self.tta is TestTimeAugmentation.HFLIP:
                pair = np.concatenate([chunk, chunk[:, :, ::-1]])
                both = self.session.run(None, {self.input_name: pair})[0]
                out.append((both[: len(chunk)] + both[len(chunk) :]) / 2)
            else:
                out.append(self.session.run(None, {self.input_name: chunk})[0])
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def predict_proba(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, C)`` for uint8 grayscale faces ``(N, 48, 48)``."""
        return softmax(self.logits(to_model_input(faces), batch_size))

    def predict(self, faces: np.ndarray) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(faces).argmax(axis=1)]
