"""Reproduce ``ferflow/assets/blazeface_short_range.onnx`` from the mediapipe 0.10.21 wheel.

MediaPipe 0.10.21 is the last mediapipe release whose wheel ships the BlazeFace short-range
face detector (``face_detection_short_range.tflite``, Apache-2.0), but it pins numpy < 2 and
protobuf < 5, which clash with kfp 2.17. So ferflow never installs mediapipe: this script
downloads the wheel (``pip download --no-deps``, PyPI only), checks its sha256, extracts the
.tflite, converts it to ONNX with tf2onnx, checks the ONNX graph against the TFLite
interpreter on random input, and writes the model that ``ferflow.faces`` runs with ONNX
Runtime. Run it only to re-create the committed asset:

    .venv/bin/python scripts/convert_blazeface.py [--wheel PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

MEDIAPIPE_VERSION = "0.10.21"
WHEEL_NAME = f"mediapipe-{MEDIAPIPE_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
WHEEL_SHA256 = "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3"
TFLITE_MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
TFLITE_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
OPSET = 13
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "ferflow/assets/blazeface_short_range.onnx"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_wheel(workdir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
         f"mediapipe=={MEDIAPIPE_VERSION}", "-d", str(workdir)],
        check=True,
    )  # fmt: skip
    return workdir / WHEEL_NAME


def check_against_tflite(tflite: Path, onnx_path: Path) -> float:
    """Largest absolute difference between TFLite and ONNX Runtime outputs on random input."""
    import onnxruntime as ort
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(tflite))
    interp.allocate_tensors()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    expected = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"input": x}), strict=True))
    if set(got) != {"regressors", "classificators"} or set(got) != set(expected):
        raise SystemExit(f"unexpected outputs: onnx {sorted(got)}, tflite {sorted(expected)}")
    return max(float(np.abs(got[n] - expected[n]).max()) for n in got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="an already downloaded mediapipe wheel")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wheel = args.wheel or fetch_wheel(work)
        if sha256(wheel) != WHEEL_SHA256:
            raise SystemExit(f"{wheel}: sha256 differs from the audited {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(TFLITE_MEMBER, work)
        tflite = work / TFLITE_MEMBER
        if sha256(tflite) != TFLITE_SHA256:
            raise SystemExit(f"{TFLITE_MEMBER}: sha256 differs from {TFLITE_SHA256}")
        onnx_tmp = work / "blazeface_short_range.onnx"
        subprocess.run(
            [sys.executable, "-m", "tf2onnx.convert", "--tflite", str(tflite),
             "--output", str(onnx_tmp), "--opset", str(OPSET)],
            check=True,
        )  # fmt: skip
        diff = check_against_tflite(tflite, onnx_tmp)
        if diff > 1e-3:
            raise SystemExit(f"ONNX and TFLite outputs differ by {diff:.2e}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(onnx_tmp.read_bytes())
    print(f"wrote {args.out} sha256={sha256(args.out)} (max |onnx - tflite| = {diff:.1e})")


if __name__ == "__main__":
    main()
