"""Guards against oneDNN's heap corruption on AVX-512 CPUs (docs/training.md, "oneDNN kernels").

TensorFlow 2.21's oneDNN kernel for the weight gradient of a strided 1x1 convolution
(``jit_1x1:avx512_core`` backward-weights) corrupts the heap when the input has fewer than 16
channels, on AVX-512 CPUs without AMX (AMD EPYC here). The backbone's projection shortcut is
such a convolution, so narrow models crashed in ``fit``. The tests below run those shapes in a
subprocess (a crash must not take pytest down with it) and check the models never build the
kernel, on every CPU, including those where it happens not to crash.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ferflow.models import MODELS, SAFE_STRIDED_1X1_CHANNELS, ResidualBlock, build_model  # noqa: E402

PROBE = Path(__file__).with_name("onednn_probe.py")
ROOT = Path(__file__).resolve().parents[2]

# every configuration that aborted, segfaulted or failed a malloc assertion in fit() on an
# AMD EPYC (AVX-512 with VNNI and BF16, no AMX) before the shortcut was split
CRASHED_BEFORE = [
    f"{name}:{width}:1,1,1,1"
    for name, width in [("ran_fm", 4), ("ran_fm", 8), ("ran_fm", 12), ("resnet", 8), ("ran", 8)]
]


def run_probe(*args: str, onednn: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0"}
    return subprocess.run(
        [sys.executable, str(PROBE), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_previously_crashing_shapes_train_in_a_subprocess_with_onednn_on():
    proc = run_probe("fit", *CRASHED_BEFORE)
    assert proc.returncode == 0, f"exit {proc.returncode} (negative: killed by signal)\n{proc.stderr[-3000:]}"


def _convolutions(model: keras.Model) -> list[keras.layers.Conv2D]:
    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("width", [4, 8, 16, 40])
def test_no_model_builds_a_strided_1x1_convolution_on_few_channels(name, width):
    model = build_model(name, 8, width=width)
    convs = _convolutions(model)
    assert convs, "no convolution found: the walk over nested layers is broken"
    unsafe = [
        c.name
        for c in convs
        if tuple(c.kernel_size) == (1, 1)
        and tuple(c.strides) != (1, 1)
        and c.kernel.shape[2] < SAFE_STRIDED_1X1_CHANNELS
    ]
    assert unsafe == []


def test_wide_blocks_keep_the_strided_convolution():
    """The split is only where it is needed: the reference width runs the same graph as before."""
    model = build_model("ran_fm", 8, width=40)
    strided = [c for c in _convolutions(model) if tuple(c.kernel_size) == (1, 1) and c.strides == (2, 2)]
    assert len(strided) == 4  # one projection per stage


@pytest.mark.parametrize("side", [48, 47])
def test_subsampled_shortcut_equals_the_strided_1x1_convolution(side):
    """Same function, same weights: models trained before the split load and agree."""
    block = ResidualBlock(16, stride=2)
    x = np.random.default_rng(1).normal(size=(2, side, side, 8)).astype("float32")
    block(x)  # builds
    strided = keras.layers.Conv2D(16, 1, strides=2, use_bias=False)
    strided.build(x.shape)
    strided.set_weights(block.proj.get_weights())
    want = block.proj_bn(strided(x), training=False)
    got = block._shortcut(x, training=False)
    assert got.shape == want.shape == (2, (side + 1) // 2, (side + 1) // 2, 16)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", ["ran_fm:8:1,1,1,1", "ran_fm:40:2,2,2,2"])
def test_onednn_gradients_agree_with_the_reference_kernels(spec, tmp_path):
    """Silent corruption check: one batch's gradients with oneDNN on and off, same weights."""
    on, off = tmp_path / "on.npz", tmp_path / "off.npz"
    first = run_probe("grads", spec, str(on))  # also writes its seeded initial weights
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_probe("grads", spec, str(off), str(on), onednn=False)
    assert second.returncode == 0, second.stderr[-3000:]
    a, b = np.load(on), np.load(off)
    assert abs(float(a["loss"]) - float(b["loss"])) < 1e-4 * max(1.0, abs(float(a["loss"])))
    names = sorted(k for k in a.files if k.startswith("g"))
    assert names
    for k in names:
        scale = max(float(np.abs(b[k]).max()), 1e-6)
        assert float(np.abs(a[k] - b[k]).max()) <= 1e-3 * scale, k
