#!/usr/bin/env bash
# A venv for the `fer` peer (bench/fer_peer.py, bench/fer_video_peer.py), outside ferflow's own.
#
#   bash bench/peers/setup_fer_venv.sh [VENV]        # default /work/fer-venv
#
# fer 25.10.3 with only what its Haar + TFLite paths import (FER(mtcnn=False), Video.analyze):
# TensorFlow (CPU build), the GUI OpenCV build fer asks for (Video.analyze calls cv2.waitKey every
# frame, which the headless build refuses), moviepy 1.x (classes.py imports moviepy.editor, gone in
# moviepy 2), and setuptools<81 for pkg_resources. torch / facenet-pytorch (only for mtcnn=True)
# and matplotlib are left out, hence --no-deps for fer. Idempotent: reruns reuse the venv.
# Interpreter: $PYTHON (default python3.11); uv is used when on PATH or in .tools/, else pip.
set -euo pipefail

VENV="${1:-/work/fer-venv}"
PYTHON="${PYTHON:-python3.11}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
UV="$(command -v uv || true)"
[[ -z "$UV" && -x "$REPO/.tools/bin/uv" ]] && UV="$REPO/.tools/bin/uv"

FER="fer==25.10.3"
DEPS=(
  "tensorflow-cpu==2.21.0"
  "opencv-contrib-python==4.14.0.94"  # the OpenCV of ferflow's own venv (headless there)
  "numpy"
  "pandas"
  "tqdm>=4.62.1"
  "requests"
  "Pillow"
  "moviepy>=1.0.3,<2.0"
  "ffmpeg-python>=0.2.0"
  "setuptools<81"
)

if [[ ! -x "$VENV/bin/python" ]]; then
  if [[ -n "$UV" ]]; then
    "$UV" venv --python "$PYTHON" "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi

if [[ -n "$UV" ]]; then
  "$UV" pip install --python "$VENV/bin/python" "${DEPS[@]}"
  "$UV" pip install --python "$VENV/bin/python" --no-deps "$FER"
else
  "$VENV/bin/python" -m pip install -q "${DEPS[@]}"
  "$VENV/bin/python" -m pip install -q --no-deps "$FER"
fi

"$VENV/bin/python" - <<'EOF'
import fer, tensorflow as tf, cv2, moviepy
from fer.classes import Video  # noqa: F401  (imports moviepy.editor, pandas, tqdm)
from fer.fer import FER  # noqa: F401  (imports pkg_resources, tensorflow)
print(f"fer {fer.__version__}, tensorflow {tf.__version__}, opencv {cv2.__version__}, moviepy {moviepy.__version__}")
EOF
