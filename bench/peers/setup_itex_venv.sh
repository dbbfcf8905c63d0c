#!/usr/bin/env bash
# A venv for the optional ITEX profile (Intel Extension for TensorFlow), outside ferflow's own.
#
#   bash bench/peers/setup_itex_venv.sh [VENV]            # default /work/itex-venv: TF 2.15 + ITEX
#   NO_ITEX=1 bash bench/peers/setup_itex_venv.sh VENV     # the same TF 2.15 without ITEX (baseline)
#
# ITEX's last CPU build is 2.15.0.0 and it pins TensorFlow 2.15, while ferflow's venv runs
# TF 2.21: hence a separate venv. `intel-extension-for-tensorflow[cpu]` 2.15.0.1 to 2.15.0.3 do not
# install: their [cpu] extra asks for intel-extension-for-tensorflow-lib==2.15.0.x.0 (the CPU
# build), and only the .2 (XPU) builds of those versions are published. ITEX pins absl-py==1.4.0.
# ferflow's model code is Keras 3: keras 3.15.1 goes in with --no-deps plus its own dependencies,
# because TF 2.15's metadata asks for keras<2.16 (Keras 3 still runs on TF 2.15's ops). ferflow
# itself is not installed: run its code with PYTHONPATH=<repo> (the model and bench paths need
# only NumPy, Keras and TensorFlow). TensorFlow loads ITEX's CPU plugin by itself, but ITEX's Python
# package does not import under Keras 3 (it reaches into Keras 2 internals), so ferflow's device
# line reads ITEX=not installed there while the plugin is loaded. Idempotent: reruns reuse the venv.
# Interpreter: $PYTHON (default python3.11); uv is used when on PATH or in .tools/, else pip.
set -euo pipefail

VENV="${1:-/work/itex-venv}"
PYTHON="${PYTHON:-python3.11}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
UV="$(command -v uv || true)"
[[ -z "$UV" && -x "$REPO/.tools/bin/uv" ]] && UV="$REPO/.tools/bin/uv"

DEPS=("tensorflow==2.15.1" "absl-py==1.4.0")
[[ -z "${NO_ITEX:-}" ]] && DEPS+=("intel-extension-for-tensorflow[cpu]==2.15.0.0")
KERAS=("keras==3.15.1")
KERAS_DEPS=("namex" "optree" "rich")  # keras 3's own; numpy, h5py, ml-dtypes come with TF 2.15

if [[ ! -x "$VENV/bin/python" ]]; then
  if [[ -n "$UV" ]]; then
    "$UV" venv --python "$PYTHON" "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi

if [[ -n "$UV" ]]; then
  "$UV" pip install --python "$VENV/bin/python" "${DEPS[@]}" "${KERAS_DEPS[@]}"
  "$UV" pip install --python "$VENV/bin/python" --no-deps "${KERAS[@]}"
else
  "$VENV/bin/python" -m pip install -q "${DEPS[@]}" "${KERAS_DEPS[@]}"
  "$VENV/bin/python" -m pip install -q --no-deps "${KERAS[@]}"
fi

PYTHONPATH="$REPO" TF_CPP_MIN_LOG_LEVEL=1 "$VENV/bin/python" - <<'EOF'
from importlib import metadata

import keras
import tensorflow as tf  # loads ITEX's C++ CPU plugin when installed ("... CPU backend is loaded")

from ferflow.models import build_model

try:
    itex = metadata.version("intel_extension_for_tensorflow")
except metadata.PackageNotFoundError:
    itex = "not installed"
else:
    try:  # its Python API reaches into Keras 2 internals: under Keras 3 only the plugin is usable
        import intel_extension_for_tensorflow  # noqa: F401
    except ImportError as err:
        itex += f" (plugin only: its Python package does not import under Keras 3: {err})"
model = build_model("ran_fm", 8, width=8, head_stages=1)
print(f"tensorflow {tf.__version__}, keras {keras.__version__}, ITEX {itex}, "
      f"ferflow ran_fm builds ({model.count_params()} params)")
EOF
