"""Distributed training (ferflow.distribute + ferflow.train) on CPU with real TensorFlow.

The choice logic is tested as pure functions. The fits run in subprocesses (a strategy, logical
devices and TF_CONFIG are fixed for a process's life) on a synthetic 8-class dataset: a
two-worker MultiWorkerMirroredStrategy job on localhost, a MirroredStrategy over two logical CPU
devices, and a worker killed with SIGKILL after its first checkpoint and resumed. Each
distributed fit is compared with one process reading the same global batch with the same seed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ferflow.config import DistributeMode, OptimizerName, TrainConfig
from ferflow.distribute import (
    DistributeError,
    is_chief,
    parse_tf_config,
    replica_rows,
    resolve_mode,
    scaled_config,
    scaled_learning_rate,
)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # seconds a subprocess fit may take before the test fails (normal: 20-60 s)


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"localhost:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


# ----------------------------------------------------------------------------------------
# the choice logic (pure)


def test_auto_mode_follows_tf_config_then_gpus():
    cfg = _tf_config([1, 2], 0)
    assert resolve_mode("auto", cfg, gpus=0) is DistributeMode.MULTI_WORKER
    assert resolve_mode("auto", cfg, gpus=4) is DistributeMode.MULTI_WORKER
    assert resolve_mode("auto", None, gpus=2) is DistributeMode.MIRRORED
    assert resolve_mode("auto", None, gpus=1) is DistributeMode.NONE
    assert resolve_mode("auto", "", gpus=0) is DistributeMode.NONE
    assert resolve_mode("none", cfg, gpus=8) is DistributeMode.NONE
    assert resolve_mode("mirrored", None, gpus=0) is DistributeMode.MIRRORED
    with pytest.raises(DistributeError, match="multi-worker needs TF_CONFIG"):
        resolve_mode("multi-worker", None, gpus=2)


def test_chief_and_task_from_tf_config():
    assert is_chief(None) and parse_tf_config(None).workers == 1
    assert is_chief(_tf_config([1, 2], 0)) and not is_chief(_tf_config([1, 2], 1))
    with_chief = {
        "cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
        "task": {"type": "worker", "index": 0},
    }
    task = parse_tf_config(json.dumps(with_chief))
    assert (task.workers, task.index, task.chief) == (3, 0, False)
    with_chief["task"] = {"type": "chief", "index": 0}
    assert parse_tf_config(json.dumps(with_chief)).chief
    with pytest.raises(DistributeError, match="TF_CONFIG is not a cluster spec"):
        parse_tf_config("{not json")
    with pytest.raises(DistributeError, match="task worker:2 is not in its cluster"):
        parse_tf_config(_tf_config([1, 2], 2))


def test_scaling_rule_and_replica_slices():
    assert scaled_learning_rate(0.1, OptimizerName.SGD, 4) == pytest.approx(0.4)
    assert scaled_learning_rate(1e-3, OptimizerName.ADAMW, 4) == pytest.approx(2e-3)
    cfg = TrainConfig(batch_size=64, learning_rate=1e-3, warmup_epochs=2.0)
    two = scaled_config(cfg, 2)
    assert (two.batch_size, two.learning_rate, two.warmup_epochs) == (
        128,
        pytest.approx(1e-3 * math.sqrt(2)),
        2.0,
    )
    assert scaled_config(cfg, 1) is cfg
    # the replicas' slices tile the global batch, in order, without overlap
    assert [replica_rows(r, 4, 128) for r in range(4)] == [(0, 32), (32, 64), (64, 96), (96, 128)]
    with pytest.raises(DistributeError, match="does not split"):
        replica_rows(0, 3, 128)


def test_auto_precision_is_bf16_on_cpus_with_bf16_instructions():
    pytest.importorskip("tensorflow")
    from ferflow.train import bf16_cpu

    assert bf16_cpu({"avx512f", "avx512_vnni", "avx512_bf16"})  # AMD EPYC family 25 (Zen 4)
    assert bf16_cpu({"avx512f", "amx_tile", "amx_bf16"})  # Sapphire Rapids
    assert not bf16_cpu({"avx512f", "avx512_vnni", "avx2"})


def test_sharded_stream_is_the_global_batch(tmp_path):
    """Two replicas' elements, concatenated, are exactly one process's global batch."""
    pytest.importorskip("tensorflow")
    from ferflow.train import make_train_dataset

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (100, 48, 48), dtype=np.uint8)
    targets = np.eye(8, dtype=np.float32)[rng.integers(0, 8, 100)]
    weights = rng.random(100).astype(np.float32)
    cfg = TrainConfig(batch_size=32, seed=7)  # the global batch (scaled config)
    whole = list(make_train_dataset(pixels, targets, weights, cfg, steps_per_epoch=3).take(4))
    halves = [
        list(
            make_train_dataset(
                pixels, targets, weights, cfg, steps_per_epoch=3, replicas=2, shard=(r, 1)
            ).take(4)
        )
        for r in (0, 1)
    ]
    both = list(
        make_train_dataset(pixels, targets, weights, cfg, steps_per_epoch=3, replicas=2, shard=(0, 2)).take(8)
    )
    for step in range(4):
        for i in range(3):
            joined = np.concatenate([np.asarray(halves[0][step][i]), np.asarray(halves[1][step][i])])
            np.testing.assert_array_equal(joined, np.asarray(whole[step][i]))
            np.testing.assert_array_equal(np.asarray(both[2 * step][i]), np.asarray(halves[0][step][i]))
            np.testing.assert_array_equal(np.asarray(both[2 * step + 1][i]), np.asarray(halves[1][step][i]))


# ----------------------------------------------------------------------------------------
# real fits in subprocesses

WORKER = """
import json, os, sys
from dataclasses import replace
spec = json.loads(sys.argv[1])
if spec.get("logical_cpus"):
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    logical = [tf.config.LogicalDeviceConfiguration()] * spec["logical_cpus"]
    tf.config.set_logical_device_configuration(cpu, logical)
from ferflow.config import AugmentConfig, DistributeMode, LabelScheme, Precision, TrainConfig
from ferflow.train import train
cfg = TrainConfig(
    model="ran_fm", width=8, depths=(1, 1, 1, 1), epochs=spec["epochs"], batch_size=spec["batch"],
    learning_rate=spec["lr"], warmup_epochs=0, class_weight_power=0.0, dropout=spec.get("dropout", 0.0),
    label_scheme=LabelScheme.MAJORITY, precision=Precision.FLOAT32, early_stopping_patience=0,
    augment=AugmentConfig(erase_prob=0.3, rotation_deg=5.0, max_shift=0.05), quantize_int8=False,
    distribute=DistributeMode(spec["distribute"]),
)
result = train(cfg, spec["data"], spec["run_dir"], resume=spec.get("resume", False), track=False,
               export=False, steps_per_epoch=spec["spe"], verbose=0, save=spec.get("save", False))
if spec.get("out"):
    with open(spec["out"], "w") as f:
        json.dump({"history": result.history, "chief": result.extras.get("chief", True)}, f)
"""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A learnable 8-class canonical dataset: each class a bright block at its own place."""
    from ferflow.canonical import Split, write_dataset
    from ferflow.config import get_class_set

    rng = np.random.default_rng(3)

    def split(n: int) -> Split:
        label = rng.integers(0, 8, n)
        pixels = rng.integers(0, 90, (n, 48, 48)).astype(np.uint8)
        for i, c in enumerate(label):
            r, col = 4 + (c // 4) * 22, 4 + (c % 4) * 11
            pixels[i, r : r + 16, col : col + 9] += 120
        votes = np.zeros((n, 10), np.int16)
        votes[np.arange(n), label] = 10
        return Split(
            pixels=pixels,
            votes=votes,
            target=np.eye(8, dtype=np.float32)[label],
            label=label.astype(np.int16),
            source=np.array([f"s{i}.png" for i in range(n)]),
            content_hash=np.array([f"{i:016x}" for i in range(n)]),
        )

    splits = {"train": split(720), "valid": split(64)}
    meta = {
        "splits": {k: {"n": len(v)} for k, v in splits.items()},
        "classes": list(get_class_set("ferplus8").classes),
        "class_set": "ferplus8",
        "label_scheme": "majority",
        "source": "synthetic",
        "source_version": "synthetic",
    }
    return write_dataset(tmp_path_factory.mktemp("dist") / "data", splits, meta)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(spec: dict, tf_config: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(spec)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0, f"worker exited {p.returncode}:\n{out[-4000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _losses(path: Path) -> np.ndarray:
    return np.array([h["loss"] for h in json.loads(path.read_text())["history"]])


BASE = {"epochs": 3, "spe": 5, "batch": 16, "lr": 3e-3}
# one process with the global batch of two replicas and the AdamW square-root-scaled rate
SINGLE = {**BASE, "batch": 32, "lr": 3e-3 * math.sqrt(2), "distribute": "none"}
# Tolerance on the per-epoch training loss (3 epochs of 5 AdamW steps): batch statistics are
# all-reduced as sums (E[x²] − E[x]²) and gradients summed across replicas, another float order
# than one process. Measured on a 2-core AMD EPYC: two workers and MirroredStrategy on two
# logical CPUs both 1.2e-5 relative from one process. Counting the region-biased loss of the
# other replica too (Keras' shared add_loss list under MirroredStrategy) moved them 1.7e-3.
RTOL = 2e-4


@pytest.mark.slow
def test_two_workers_agree_with_one_process(synthetic, tmp_path):
    ports = _free_ports(2)
    spec = {**BASE, "data": str(synthetic), "distribute": "multi-worker", "run_dir": str(tmp_path / "run")}
    t0 = time.perf_counter()
    workers = [_start({**spec, "out": str(tmp_path / f"w{i}.json")}, _tf_config(ports, i)) for i in range(2)]
    single = _start(
        {
            **SINGLE,
            "data": str(synthetic),
            "run_dir": str(tmp_path / "single"),
            "out": str(tmp_path / "one.json"),
        }
    )
    _finish([*workers, single])
    print(f"two workers + one process: {time.perf_counter() - t0:.1f} s")
    w0, w1, one = (_losses(tmp_path / f"{n}.json") for n in ("w0", "w1", "one"))
    assert json.loads((tmp_path / "w0.json").read_text())["chief"] is True
    assert json.loads((tmp_path / "w1.json").read_text())["chief"] is False
    np.testing.assert_array_equal(w0, w1)  # the workers log the same all-reduced metrics
    print(f"two workers vs one process: loss {w0} vs {one}, max rel diff {_rel(w0, one):.1e}")
    np.testing.assert_allclose(w0, one, rtol=RTOL)
    assert w0[-1] < w0[0]
    # only the chief wrote the run folder; the worker's checkpoint copies are gone
    run = tmp_path / "run"
    assert (run / "checkpoint" / "training_metadata.json").is_file()
    assert json.loads((run / "state.json").read_text())["replicas"] == 2


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_agrees_with_one_process(synthetic, tmp_path):
    spec = {**BASE, "data": str(synthetic), "distribute": "mirrored", "logical_cpus": 2}
    mirrored = _start({**spec, "run_dir": str(tmp_path / "m"), "out": str(tmp_path / "m.json")})
    single = _start(
        {**SINGLE, "data": str(synthetic), "run_dir": str(tmp_path / "s"), "out": str(tmp_path / "s.json")}
    )
    _finish([mirrored, single])
    m, s = _losses(tmp_path / "m.json"), _losses(tmp_path / "s.json")
    print(f"mirrored vs one process: loss {m} vs {s}, max rel diff {_rel(m, s):.1e}")
    np.testing.assert_allclose(m, s, rtol=RTOL)
    assert m[-1] < m[0]


def _wait_for_commit(folder: Path, epochs: int, procs: list[subprocess.Popen]) -> None:
    meta = folder / "training_metadata.json"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if meta.exists() and json.loads(meta.read_text() or "{}").get("epoch", 0) >= epochs:
            return
        assert all(p.poll() is None for p in procs), "a worker ended before its first checkpoint"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of epoch {epochs} in {TIMEOUT} s")


@pytest.mark.slow
def test_killed_worker_resumes_to_the_uninterrupted_result(synthetic, tmp_path):
    """SIGKILL worker 1 once the chief commits epoch 1; the job restarted with resume ends
    where an uninterrupted two-worker job ends (dropout on: its generators are restored too)."""
    spec = {**BASE, "epochs": 4, "dropout": 0.2, "data": str(synthetic), "distribute": "multi-worker"}
    ports = _free_ports(2)
    ref = [
        _start(
            {**spec, "run_dir": str(tmp_path / "ref"), "out": str(tmp_path / f"ref{i}.json")},
            _tf_config(ports, i),
        )
        for i in range(2)
    ]
    _finish(ref)
    run = {**spec, "run_dir": str(tmp_path / "run")}
    ports = _free_ports(2)
    job = [_start(run, _tf_config(ports, i)) for i in range(2)]
    try:
        _wait_for_commit(tmp_path / "run" / "checkpoint", 1, job)
        job[1].send_signal(signal.SIGKILL)
        job[1].wait(timeout=30)
    finally:
        for p in job:  # the chief loses its peer: the job is down, as a pod restart would find it
            if p.poll() is None:
                p.kill()
            p.wait()
    done = json.loads((tmp_path / "run" / "checkpoint" / "training_metadata.json").read_text())["epoch"]
    assert 1 <= done < 4
    ports = _free_ports(2)
    again = [
        _start({**run, "resume": True, "out": str(tmp_path / f"again{i}.json")}, _tf_config(ports, i))
        for i in range(2)
    ]
    _finish(again)
    history = json.loads((tmp_path / "again0.json").read_text())["history"]
    again, ref = _losses(tmp_path / "again0.json"), _losses(tmp_path / "ref0.json")
    print(f"killed after epoch {done} and resumed vs uninterrupted: max rel diff {_rel(again, ref):.1e}")
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    np.testing.assert_allclose(again, ref, rtol=1e-4)
    np.testing.assert_array_equal(
        _losses(tmp_path / "again1.json")[-1], _losses(tmp_path / "again0.json")[-1]
    )
