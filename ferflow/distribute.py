"""How one ``ferflow train`` fit is spread over devices and processes (``--distribute``).

The decisions are pure functions of the environment (``TF_CONFIG``) and the device list, so they
are tested without a cluster; :func:`setup` turns them into a ``tf.distribute`` strategy.

- **Mode** (:func:`resolve_mode`): ``auto`` is ``multi-worker`` when ``TF_CONFIG`` is set,
  ``mirrored`` when the process sees several GPUs, else ``none`` (no strategy at all).
- **Scaling** (:func:`scaled_config`): the recipe's ``batch_size`` is per replica, so the
  global batch is ``batch_size × replicas``; the learning rate grows with the global batch,
  linearly for SGD (Goyal et al. 2017) and with its square root for AdamW (Malladi et al.
  2022: the square-root rule keeps Adam's update noise scale); warm-up stays in epochs.
- **Sharding** (:func:`replica_rows`): every replica computes the same global batch (a function
  of seed, epoch and step) and keeps its contiguous slice, so N replicas read exactly the batch
  one process with the global batch reads.
- **Chief** (:func:`is_chief`): TensorFlow's rule; only the chief writes runs, exports and cards.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ferflow.config import DistributeMode, OptimizerName, TrainConfig

TF_CONFIG = "TF_CONFIG"


class DistributeError(ValueError):
    """A ``--distribute`` choice this environment cannot run; the message says how to fix it."""


@dataclass(frozen=True)
class TaskInfo:
    """This process's place in the cluster ``TF_CONFIG`` describes (one worker without it)."""

    workers: int = 1  # processes that train: chief + workers
    task_type: str = "worker"
    index: int = 0
    chief: bool = True


def parse_tf_config(text: str | None) -> TaskInfo:
    """The cluster size and this task from ``TF_CONFIG`` (JSON); a one-line error when malformed."""
    if not text:
        return TaskInfo()
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = str(task["type"]), int(task["index"])
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DistributeError(
            f"{TF_CONFIG} is not a cluster spec ({exc}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from exc
    if task_type not in ("chief", "worker") or index >= len(cluster.get(task_type, [])) or index < 0:
        raise DistributeError(
            f"{TF_CONFIG}: task {task_type}:{index} is not in its cluster {sorted(cluster)}; "
            "fix task.type / task.index"
        )
    return TaskInfo(workers, task_type, index, is_chief(text))


def is_chief(tf_config: str | None) -> bool:
    """TensorFlow's rule: the ``chief`` task, or worker 0 when the cluster has no chief; a
    process without ``TF_CONFIG`` is alone and so the chief."""
    if not tf_config:
        return True
    config = json.loads(tf_config)
    task = config.get("task", {})
    if task.get("type") == "chief":
        return True
    no_chief = "chief" not in config.get("cluster", {})
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and no_chief


def resolve_mode(requested: DistributeMode | str, tf_config: str | None, gpus: int) -> DistributeMode:
    """The mode to run: ``auto`` → multi-worker with ``TF_CONFIG``, mirrored on several GPUs,
    else none. An explicit ``multi-worker`` without ``TF_CONFIG`` is refused."""
    mode = DistributeMode(requested)
    if mode is DistributeMode.AUTO:
        if tf_config:
            return DistributeMode.MULTI_WORKER
        return DistributeMode.MIRRORED if gpus > 1 else DistributeMode.NONE
    if mode is DistributeMode.MULTI_WORKER and not tf_config:
        raise DistributeError(
            f"--distribute multi-worker needs {TF_CONFIG} (the cluster and this worker's task); "
            "set it, or use --distribute auto / none"
        )
    return mode


def scaled_learning_rate(learning_rate: float, optimizer: OptimizerName | str, replicas: int) -> float:
    """The recipe's learning rate (tuned for one replica's batch) for ``replicas`` replicas:
    × replicas for SGD (linear rule), × √replicas for AdamW (square-root rule)."""
    if replicas < 1:
        raise DistributeError(f"replicas must be >= 1, got {replicas}")
    if OptimizerName(optimizer) is OptimizerName.SGD:
        return learning_rate * replicas
    return learning_rate * math.sqrt(replicas)


def scaled_config(cfg: TrainConfig, replicas: int) -> TrainConfig:
    """The configuration one fit over ``replicas`` replicas runs: ``batch_size`` is the global
    batch, ``learning_rate`` the scaled one. One replica returns ``cfg`` itself."""
    if replicas == 1:
        return cfg
    lr = scaled_learning_rate(cfg.learning_rate, cfg.optimizer, replicas)
    return replace(cfg, batch_size=cfg.batch_size * replicas, learning_rate=lr)


def replica_rows(replica: int, replicas: int, global_batch: int) -> tuple[int, int]:
    """``[start, stop)`` of replica ``replica``'s slice of a global batch (contiguous, equal)."""
    if global_batch % replicas:
        raise DistributeError(f"global batch {global_batch} does not split over {replicas} replicas")
    per = global_batch // replicas
    return replica * per, (replica + 1) * per


@dataclass
class Distribution:
    """The strategy of one fit, and this process's role in it."""

    mode: DistributeMode
    strategy: Any = None  # tf.distribute.Strategy, None for mode none
    replicas: int = 1  # in sync, over all workers
    task: TaskInfo = TaskInfo()

    @property
    def chief(self) -> bool:
        return self.task.chief

    @property
    def local_replicas(self) -> int:
        return self.replicas // max(1, self.task.workers)

    def scope(self) -> AbstractContextManager:
        return self.strategy.scope() if self.strategy is not None else nullcontext()

    def describe(self) -> str:
        where = f"worker {self.task.index} of {self.task.workers}" if self.task.workers > 1 else "one process"
        role = "chief" if self.chief else "non-chief"
        return f"distribute: {self.mode.value}, {self.replicas} replica(s), {where} ({role})"


def setup(requested: DistributeMode | str, verbose: bool = True) -> Distribution:
    """Create the strategy ``requested`` resolves to here. Call after :func:`ferflow.train.configure_device`
    and before TensorFlow runs anything (a multi-worker strategy starts this process's server)."""
    import tensorflow as tf

    tf_config = os.environ.get(TF_CONFIG) or None
    mode = resolve_mode(requested, tf_config, len(tf.config.list_physical_devices("GPU")))
    if mode is DistributeMode.NONE:
        dist = Distribution(mode)
    elif mode is DistributeMode.MIRRORED:
        strategy = tf.distribute.MirroredStrategy()
        dist = Distribution(mode, strategy, strategy.num_replicas_in_sync)
    else:
        task = parse_tf_config(tf_config)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        dist = Distribution(mode, strategy, strategy.num_replicas_in_sync, task)
    if verbose and mode is not DistributeMode.NONE:
        print(dist.describe(), flush=True)
    return dist


def distribute_dataset(dist: Distribution, make: Callable[[int, int], Any]):
    """``make(first_replica, local_replicas)`` → this worker's dataset, one element per local
    replica and step (in replica order); wrapped for the strategy. Without one: ``make(0, 1)``."""
    if dist.strategy is None:
        return make(0, 1)
    import tensorflow as tf

    def per_worker(ctx: tf.distribute.InputContext):
        local = dist.replicas // ctx.num_input_pipelines
        return make(ctx.input_pipeline_id * local, local)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return dist.strategy.distribute_datasets_from_function(per_worker, options)


def synchronize_batch_norm(model, on: bool = True) -> int:
    """Make every BatchNormalization layer of ``model`` compute its batch statistics over all
    replicas (``on``) or over its own batch; returns the number of layers changed.

    With per-replica statistics N replicas of batch b normalise differently from one batch of
    N·b, and a distributed fit would not be the fit of the global batch it claims to be."""
    import keras

    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = on
            count += 1
    return count


def broadcast_from_chief(dist: Distribution, values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The chief's ``values`` on every worker (an all-reduce in which only global replica 0
    contributes). Without a multi-worker strategy ``values`` come back unchanged."""
    if dist.strategy is None or dist.task.workers == 1:
        return [np.asarray(v) for v in values]
    import tensorflow as tf

    # float64 carries every float32 weight and every integer below 2**53 exactly
    tensors = [tf.constant(np.asarray(v, np.float64)) for v in values]

    def keep_replica_0():
        ctx = tf.distribute.get_replica_context()
        first = tf.equal(ctx.replica_id_in_sync_group, 0)
        mine = [tf.where(first, t, tf.zeros_like(t)) for t in tensors]
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, mine)

    out = dist.strategy.run(keep_replica_0)
    return [
        np.asarray(dist.strategy.experimental_local_results(o)[0]).astype(np.asarray(v).dtype)
        for o, v in zip(out, values, strict=True)
    ]
