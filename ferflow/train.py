"""Training stage: canonical dataset → tracked, evaluated, exported model.

``train(cfg, dataset, run_dir)`` does, in order:

1. **device**: :func:`configure_device` picks GPU (mixed float16) or CPU (oneDNN, threads from
   the cores this process may use, mixed bfloat16 when the CPU has bf16 instructions
   (AMX-bf16 or AVX512-BF16, :func:`bf16_cpu`); the Intel
   Extension for TensorFlow plugin is loaded when installed) and prints its choice;
2. **data**: a stratified, seeded tuning split is carved out of ``train`` (the dataset's
   ``valid`` split is the *test* set and is only scored at the end); targets follow one of
   the four FERPlus label schemes; class-balanced sample weights; a ``tf.data`` pipeline with
   seeded per-batch augmentation (:mod:`ferflow.augment`), every batch a function of
   ``(seed, step)`` only (:func:`batch_rows`);
3. **fit**: ``model.fit`` with AdamW/SGD, cosine or one-cycle schedule, a checkpoint after
   every epoch (weights, optimizer, dropout RNG, early-stopping state; ``resume=True``
   continues a killed run from its last completed epoch as if it had never stopped),
   best-on-tuning-split selection and early stopping;
4. **evaluate + export**: ONNX export (int8 kept only if it costs ≤ 0.5 accuracy points on
   the tuning split), scored with :mod:`ferflow.evaluate` through the same ONNX predictor
   ``ferflow evaluate`` uses, so the recorded numbers are reproducible without TensorFlow;
5. **track**: an MLflow run named ``train-<recipe>-<model>-<UTC time>`` in an experiment
   tagged as model development (:mod:`ferflow.tracking`), with parameters, per-epoch metrics,
   the data as logged inputs (digest: the DVC version), dataset md5 and git commit tags,
   learning curves, normalised confusion matrix, per-class metrics, the model card, the Keras
   model and the ONNX model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferflow.canonical import CanonicalDataset, Split, open_dataset
from ferflow.config import (
    EXPORT_ONLY_FIELDS,
    DistributeMode,
    HeadName,
    LabelScheme,
    OptimizerName,
    Paths,
    Precision,
    ScheduleName,
    TestTimeAugmentation,
    TrainConfig,
    get_class_set,
)
from ferflow.distribute import (
    Distribution,
    broadcast_from_chief,
    distribute_dataset,
    scaled_config,
)
from ferflow.distribute import setup as setup_distribution
from ferflow.preprocess import INPUT_SCALE
from ferflow.versioning import git_commit

# ----------------------------------------------------------------------------------------
# device


@dataclass
class DeviceInfo:
    kind: str  # "gpu" | "cpu"
    name: str
    precision: str
    intra_threads: int
    inter_threads: int
    amx_bf16: bool
    onednn: bool
    itex: bool
    avx512_bf16: bool = False

    def describe(self) -> str:
        extras = [f"precision={self.precision}"]
        if self.kind == "cpu":
            extras += [
                f"threads intra={self.intra_threads} inter={self.inter_threads}",
                f"oneDNN={'on' if self.onednn else 'off'}",
                f"AMX-bf16={'yes' if self.amx_bf16 else 'no'}",
                f"AVX512-BF16={'yes' if self.avx512_bf16 else 'no'}",
            ]
        extras.append(f"ITEX={'loaded' if self.itex else 'not installed'}")
        return f"device: {self.kind.upper()} {self.name} ({', '.join(extras)})"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bf16_cpu(flags: set[str]) -> bool:
    """Whether ``auto`` trains in mixed bfloat16 on a CPU with these ``/proc/cpuinfo`` flags:
    AMX-bf16 tiles, or the AVX512-BF16 dot-product instructions. oneDNN has bf16 kernels for
    both; without AMX (AMD EPYC, AVX512-BF16) bf16 trained the reference backbone 1.27x as fast
    as float32 (median of 4 paired measurements, never slower) and lost no accuracy in a short
    fit (docs/training.md, "Precision")."""
    return "amx_bf16" in flags or "avx512_bf16" in flags


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


_DEVICE: DeviceInfo | None = None


def configure_device(precision: str | Precision = Precision.AUTO, verbose: bool = True) -> DeviceInfo:
    """Choose and configure the compute device once per process; print the choice.

    Must run before TensorFlow executes anything (thread pools are fixed at first use).
    """
    global _DEVICE
    precision = Precision(precision)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    itex = False
    try:  # optional Intel Extension for TensorFlow (registers an XPU/CPU plugin on import)
        import intel_extension_for_tensorflow  # noqa: F401

        itex = True
    except ImportError:
        pass
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    flags = cpu_flags()
    amx = "amx_bf16" in flags
    cores = available_cores()
    if _DEVICE is None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(cores)
            tf.config.threading.set_inter_op_parallelism_threads(max(2, min(cores, 4)))
        except RuntimeError:  # already initialised (e.g. in tests): keep the existing pools
            pass
        for gpu in gpus:
            with contextlib.suppress(RuntimeError):
                tf.config.experimental.set_memory_growth(gpu, True)
    if precision is Precision.AUTO:
        if gpus:
            precision = Precision.MIXED_FLOAT16
        elif bf16_cpu(flags):
            precision = Precision.MIXED_BFLOAT16
        else:
            precision = Precision.FLOAT32
    keras.mixed_precision.set_global_policy(precision.value)
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        name = details.get("device_name", gpus[0].name)
    else:
        name = f"{cpu_model()} x{cores}"
    _DEVICE = DeviceInfo(
        kind="gpu" if gpus else "cpu",
        name=name,
        precision=precision.value,
        intra_threads=tf.config.threading.get_intra_op_parallelism_threads() or cores,
        inter_threads=tf.config.threading.get_inter_op_parallelism_threads() or cores,
        amx_bf16=amx,
        avx512_bf16="avx512_bf16" in flags,
        onednn=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") not in ("0", "false", "False"),
        itex=itex,
    )
    if verbose:
        print(_DEVICE.describe(), flush=True)
    return _DEVICE


# ----------------------------------------------------------------------------------------
# data


def scheme_targets(
    split: Split, classes: Sequence[str], class_set_name: str | None, scheme: LabelScheme
) -> np.ndarray:
    """(N, C) float32 training targets of ``split`` under ``scheme``.

    FERPlus rows (``votes >= 0``) get the scheme's distribution computed from the votes
    (:mod:`ferflow.labels`), so one canonical dataset serves all four schemes; for
    ``multi_target`` the result is the 0/1 mask of acceptable classes. Rows without votes
    (hard-label sources) or that the scheme would drop keep the one-hot majority label.
    """
    from ferflow.labels import targets_for_votes

    n, c = len(split), len(classes)
    onehot = np.eye(c, dtype=np.float32)[split.label.astype(int)]
    scheme = LabelScheme(scheme)
    if scheme is LabelScheme.MAJORITY or class_set_name is None:
        return onehot
    has_votes = (split.votes >= 0).all(axis=1)
    out = onehot.copy()
    if has_votes.any():
        class_set = get_class_set(class_set_name)
        if tuple(class_set.classes) != tuple(classes):
            raise ValueError(f"dataset classes {list(classes)} do not match class set {class_set_name!r}")
        idx = np.flatnonzero(has_votes)
        targets, keep = targets_for_votes(split.votes[idx], scheme, class_set)
        out[idx[keep]] = targets
    if scheme is LabelScheme.MULTI_TARGET:
        out = (out > 0).astype(np.float32)
    assert out.shape == (n, c)
    return out


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split → (fit_index, tune_index); every class keeps ≥ 1 fit example."""
    if not 0 < fraction < 1:
        raise ValueError(f"tune_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    fit, tune = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(round(len(idx) * fraction), len(idx) - 1)
        tune.append(idx[:k])
        fit.append(idx[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(tune))


def class_weights(labels: np.ndarray, num_classes: int, power: float) -> np.ndarray:
    """Per-class weight ``(n_mean / n_c) ** power``, normalised to mean 1 over the examples."""
    counts = np.bincount(labels.astype(int), minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, (counts[counts > 0].mean() / np.maximum(counts, 1)) ** power, 0.0)
    w /= (w[labels.astype(int)]).mean()
    return w.astype(np.float32)


def source_row_weights(split: Split, meta: dict[str, Any], weights: dict[str, float]) -> np.ndarray:
    """Each row's source weight: the recipe's ``source_weights``, else the source's ingest weight."""
    sources = meta.get("sources") or {}
    unknown = sorted(n for n, w in weights.items() if w and n not in sources)  # 0 for an absent one: fine
    if unknown:
        raise ValueError(
            f"source_weights names {unknown}, which the dataset does not hold; its sources: {sorted(sources)}"
        )
    if split.dataset is None:
        return np.ones(len(split), np.float32)
    by_name = {n: float(weights.get(n, info.get("weight", 1.0))) for n, info in sources.items()}
    return np.array([by_name.get(str(d), 1.0) for d in split.dataset], np.float32)


def batch_rows(step, n: int, batch: int, steps_per_epoch: int, seed: int):
    """Row indices (int64 ``[batch]``) of training batch ``step`` (global, from 0): stateless.

    Epoch ``e = step // steps_per_epoch`` reads the rows in the order of a permutation of
    ``0..n-1`` seeded by ``(seed, e)`` (a longer epoch continues with further permutations, one
    per pass), so a batch depends on ``(seed, step)`` only, not on what was read before.
    """
    import tensorflow as tf

    step = tf.cast(step, tf.int64)
    epoch, pos = step // steps_per_epoch, step % steps_per_epoch
    k = pos * batch + tf.range(batch, dtype=tf.int64)  # positions in the epoch's row stream
    epoch_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0x5EED], tf.int64), epoch)
    per_pass = tf.stack([tf.fill([batch], epoch_seed[0]), tf.fill([batch], epoch_seed[1]), k // n], axis=1)
    # the raw op: tf.random.experimental.index_shuffle pads a batched [B, 2] seed on the wrong axis
    return tf.raw_ops.RandomIndexShuffle(
        index=k % n, seed=per_pass, max_index=tf.fill([batch], tf.constant(n - 1, tf.int64)), rounds=4
    )


def make_train_dataset(
    pixels: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    cfg: TrainConfig,
    augment: bool = True,
    *,
    steps_per_epoch: int | None = None,
    start_epoch: int = 0,
    replicas: int = 1,
    shard: tuple[int, int] = (0, 1),
):
    """Infinite, shuffled, batched, augmented ``(x, y, sample_weight)`` dataset from ``start_epoch``.

    Every batch is a function of ``(cfg.seed, global step)`` alone: the rows (:func:`batch_rows`,
    a fresh permutation per epoch), the augmentation and the drawn labels (stateless ops keyed on
    ``[seed, step]``). Starting at epoch ``k`` therefore yields exactly the batches an
    uninterrupted run reads from epoch ``k`` on, which is what makes ``resume`` exact.
    ``steps_per_epoch`` defaults to the full batches in one pass over ``pixels``.

    With ``replicas`` > 1, ``cfg.batch_size`` is the global batch and ``shard`` is
    ``(first replica, local replicas)`` of this input pipeline: each step yields one element per
    local replica, that replica's contiguous slice of the global batch (:mod:`ferflow.distribute`).
    """
    import tensorflow as tf

    from ferflow.augment import augment_batch

    n, b = len(pixels), cfg.batch_size
    spe = steps_per_epoch or max(1, n // b)
    pld = LabelScheme(cfg.label_scheme) is LabelScheme.PROBABILITY
    all_x, all_y = tf.constant(pixels[..., None]), tf.constant(targets, tf.float32)
    all_w = tf.constant(weights, tf.float32)

    def prepare(step):
        rows = batch_rows(step, n, b, spe, cfg.seed)
        x = tf.cast(tf.gather(all_x, rows), tf.float32) * INPUT_SCALE
        y, w = tf.gather(all_y, rows), tf.gather(all_w, rows)
        seed = tf.stack([tf.constant(cfg.seed, tf.int64), step])
        if pld:  # probabilistic label drawing: a fresh hard label from the vote distribution
            s = tf.random.experimental.stateless_fold_in(seed, 7)
            drawn = tf.random.stateless_categorical(tf.math.log(y + 1e-8), 1, s)[:, 0]
            y = tf.one_hot(drawn, tf.shape(y)[1], dtype=tf.float32)
        if augment:
            x, y = augment_batch(x, y, cfg.augment, seed)
        x = tf.ensure_shape(x, [b, *pixels.shape[1:], 1])
        return x, tf.ensure_shape(y, [b, targets.shape[1]]), tf.ensure_shape(w, [b])

    ds = tf.data.Dataset.counter(start=start_epoch * spe, dtype=tf.int64)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    if replicas > 1:
        ds = ds.map(_replica_slicer(b, replicas, shard)).unbatch()
    return ds.prefetch(tf.data.AUTOTUNE)


def _replica_slicer(global_batch: int, replicas: int, shard: tuple[int, int]):
    """Map a global batch to ``[local replicas, per-replica batch, ...]`` (then unbatched).

    The whole global batch is augmented on every worker before slicing (augmentation is ~1 % of
    a step), so mixup pairs and random draws are those of one process reading the global batch."""
    import tensorflow as tf

    from ferflow.distribute import replica_rows

    first, local = shard
    start, _ = replica_rows(first, replicas, global_batch)
    _, stop = replica_rows(first + local - 1, replicas, global_batch)
    per = global_batch // replicas

    def slice_(*tensors):
        return tuple(tf.reshape(t[start:stop], [local, per, *t.shape[1:]]) for t in tensors)

    return slice_


def make_eval_dataset(
    pixels: np.ndarray, labels: np.ndarray, num_classes: int, batch: int = 256, copies: int = 1
):
    """Batches of the tuning split; ``copies`` > 1 repeats each batch (one per local replica).

    Under a strategy every replica scores the whole split: metrics are sums over replicas, so
    each ratio (accuracy, mean loss) is that of one process, with equal steps on every worker."""
    import tensorflow as tf

    x = pixels[..., None]
    y = np.eye(num_classes, dtype=np.float32)[labels.astype(int)]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32) * INPUT_SCALE, b))
    if copies > 1:
        ds = ds.flat_map(lambda a, b: tf.data.Dataset.from_tensors((a, b)).repeat(copies))
    return ds.prefetch(2)


# ----------------------------------------------------------------------------------------
# losses, schedules, optimizers


def multi_target_loss(y_true, y_pred):
    """Barsoum's multi-target loss: ``-log Σ_{c ∈ targets} softmax(logits)_c`` (mask in y_true)."""
    from keras import ops

    logits = ops.cast(y_pred, "float32")
    masked = ops.where(y_true > 0, logits, ops.full_like(logits, -1e9))
    return ops.logsumexp(logits, axis=-1) - ops.logsumexp(masked, axis=-1)


def make_loss(cfg: TrainConfig):
    import keras

    if LabelScheme(cfg.label_scheme) is LabelScheme.MULTI_TARGET:
        return multi_target_loss
    return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing)


def _one_cycle_class():
    import keras

    @keras.saving.register_keras_serializable(package="ferflow")
    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        """One-cycle: cosine ramp from max/div to max over ``pct`` of the steps, cosine down."""

        def __init__(
            self, max_lr: float, total_steps: int, pct: float = 0.3, div: float = 25.0, final_div: float = 1e4
        ):
            self.max_lr, self.total_steps, self.pct = max_lr, total_steps, pct
            self.div, self.final_div = div, final_div

        def __call__(self, step):
            from keras import ops

            step = ops.cast(step, "float32")
            up = max(1.0, self.pct * self.total_steps)
            down = max(1.0, self.total_steps - up)
            lo, hi, end = self.max_lr / self.div, self.max_lr, self.max_lr / self.final_div
            t_up = ops.clip(step / up, 0.0, 1.0)
            t_down = ops.clip((step - up) / down, 0.0, 1.0)
            rising = lo + (hi - lo) * (1 - ops.cos(math.pi * t_up)) / 2
            falling = end + (hi - end) * (1 + ops.cos(math.pi * t_down)) / 2
            return ops.where(step < up, rising, falling)

        def get_config(self):
            return {
                "max_lr": self.max_lr,
                "total_steps": self.total_steps,
                "pct": self.pct,
                "div": self.div,
                "final_div": self.final_div,
            }

    return OneCycle


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int):
    import keras

    total = max(1, cfg.epochs * steps_per_epoch)
    if ScheduleName(cfg.schedule) is ScheduleName.ONECYCLE:
        lr = _one_cycle_class()(cfg.learning_rate, total)
    else:
        warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=cfg.learning_rate / 10 if warmup else cfg.learning_rate,
            decay_steps=total - warmup,
            warmup_target=cfg.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    if OptimizerName(cfg.optimizer) is OptimizerName.SGD:
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay or None)
    return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)


def model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.model == "cnn":
        return {}
    kw: dict[str, Any] = {"width": cfg.width, "depths": tuple(cfg.depths), "dropout": cfg.dropout}
    if cfg.model.startswith("ran"):
        kw.update(margin=cfg.rb_margin, rb_weight=cfg.rb_weight)
    if cfg.model == "ran_fm":
        kw["head_stages"] = cfg.head_stages
    return kw


# ----------------------------------------------------------------------------------------
# callbacks


def _callbacks_module():
    import keras

    class EpochLog(keras.callbacks.Callback):
        """Append each epoch's metrics (+ lr, seconds) to ``history.json``; mirror to MLflow."""

        def __init__(self, path: Path, mlflow_run: str | None):
            super().__init__()
            self.path, self.mlflow_run = path, mlflow_run

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            row = {k: float(v) for k, v in (logs or {}).items()}
            opt = self.model.optimizer
            row["lr"] = float(keras.ops.convert_to_numpy(opt.learning_rate))
            row["epoch_seconds"] = time.perf_counter() - self.t0
            history = load_history(self.path)
            history = [h for h in history if h["epoch"] < epoch] + [{"epoch": epoch, **row}]
            self.path.write_text(json.dumps(history, indent=1))
            if self.mlflow_run:
                import mlflow

                mlflow.log_metrics(row, step=epoch, run_id=self.mlflow_run)

    class BestKeeper(keras.callbacks.Callback):
        """Track the best tuning-split value and stop after ``patience`` epochs without gain.

        Its state (best value, epoch, wait) goes to ``best.json`` every epoch and is committed
        with each checkpoint (:func:`_checkpoint_class`); a resumed run passes the committed
        ``state``, so early stopping decides exactly as in a run that was never killed.
        """

        def __init__(
            self,
            run_dir: Path,
            monitor: str = "val_accuracy",
            patience: int = 8,
            state: dict[str, Any] | None = None,
        ):
            super().__init__()
            self.state_path = run_dir / "best.json"
            self.monitor, self.patience = monitor, patience
            self.state: dict[str, Any] = dict(state or {"best": -math.inf, "epoch": -1, "wait": 0})

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(self.monitor)
            if value is None:
                return
            if value > self.state["best"]:
                self.state.update(best=float(value), epoch=epoch, wait=0)
            else:
                self.state["wait"] += 1
                if self.patience and self.state["wait"] >= self.patience:
                    print(f"early stopping: no {self.monitor} gain for {self.patience} epochs")
                    self.model.stop_training = True
            self.state_path.write_text(json.dumps(self.state))

    return EpochLog, BestKeeper


CHECKPOINT_META = "training_metadata.json"
"""The checkpoint's commit record (the name Keras' ``BackupAndRestore`` used, so older runs resume)."""


def _epoch_weights_name(epoch: int) -> str:
    return f"epoch-{epoch + 1:04d}.weights.h5"


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: a kill leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def seed_generators(model) -> list[Any]:
    """The model's ``keras.random.SeedGenerator`` objects (dropout masks), in a stable order."""
    seen: set[int] = set()
    out: list[Any] = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for gen in getattr(layer, "_seed_generators", ()):
            if id(gen) not in seen:
                seen.add(id(gen))
                out.append(gen)
    return out


def _checkpoint_class():
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        """Commit the training state after every epoch, in ``folder``.

        First ``epoch-NNNN.weights.h5`` (model weights and the optimizer's slots and step, so the
        learning-rate schedule's position), then :data:`CHECKPOINT_META`, atomically replaced:
        the epochs done, that file, the seed generators' states (dropout), the best keeper's
        state and the best epoch's file, which is kept for the final model. A kill at any point
        leaves the previous commit intact; files no commit names are removed after each commit.
        Place it after the callbacks whose state it records.
        """

        def __init__(self, folder: Path, keeper: Any):
            super().__init__()
            self.folder, self.keeper = folder, keeper

        def on_epoch_end(self, epoch, logs=None):
            self.folder.mkdir(parents=True, exist_ok=True)
            name = _epoch_weights_name(epoch)
            self.model.save_weights(self.folder / name, overwrite=True)
            best = dict(self.keeper.state)
            meta = {
                "epoch": epoch + 1,
                "batch": 0,
                "weights": name,
                "best": best,
                "best_weights": _epoch_weights_name(best["epoch"]) if best["epoch"] >= 0 else None,
                "seed_generators": [
                    keras.ops.convert_to_numpy(gen.state).tolist() for gen in seed_generators(self.model)
                ],
            }
            _write_atomic(self.folder / CHECKPOINT_META, json.dumps(meta, indent=1))
            for old in self.folder.glob("*.weights.h5"):
                if old.name not in (name, meta["best_weights"]):
                    old.unlink()

    return EpochCheckpoint


def restore_checkpoint(model, folder: Path) -> dict[str, Any]:
    """Load the last committed epoch into ``model`` (built, compiled, optimizer built): weights,
    optimizer slots and step, the seed generators' states. Returns the commit record (its
    ``epoch`` is the number of epochs done), ``{}`` where nothing was committed."""
    meta_path = folder / CHECKPOINT_META
    if not meta_path.exists():
        return {}
    meta = json.loads(meta_path.read_text())
    model.load_weights(folder / meta.get("weights", "latest.weights.h5"))  # latest: BackupAndRestore's
    states = meta.get("seed_generators")
    if states is not None:
        gens = seed_generators(model)
        if len(gens) != len(states):
            raise ValueError(
                f"{folder}: the checkpoint has {len(states)} seed generators, the model {len(gens)}"
            )
        for gen, state in zip(gens, states, strict=True):
            gen.state.assign(np.asarray(state, dtype=gen.state.dtype))
    return meta


def load_history(path: Path) -> list[dict[str, float]]:
    return json.loads(path.read_text()) if path.exists() else []


# ----------------------------------------------------------------------------------------
# the stage


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    onnx_path: Path | None
    keras_path: Path | None  # None when trained with save=False
    mlflow_run_id: str | None
    train_seconds: float
    device: DeviceInfo
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingData:
    """What a fit reads: the fit/tuning/test splits, targets and weights under one recipe."""

    name: str  # where the data came from (canonical folder or source)
    meta: dict[str, Any]
    classes: list[str]
    fit: Split  # train minus the tuning split
    tune: Split  # stratified, seeded: early stopping and model selection
    test: Split | None  # the dataset's ``valid`` split, scored once at the end
    targets: np.ndarray  # (n_fit, C) under the recipe's label scheme
    weights: np.ndarray  # (n_fit,) class-balancing sample weights
    steps_per_epoch: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _fit_params(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat config without the export-only fields (which ``--resume`` may change)."""
    return {k: v for k, v in flat.items() if k not in EXPORT_ONLY_FIELDS}


def _flat_params(cfg: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in asdict(cfg).items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    out = {k: (v.value if hasattr(v, "value") else v) for k, v in out.items()}
    return json.loads(json.dumps(out))  # tuples → lists, as stored in state.json


def _open_splits(dataset) -> tuple[dict[str, Any], Any, str, set[str]]:
    """(meta, split loader, name, split names) of a canonical dir, opened dataset or (splits, meta)."""
    if isinstance(dataset, tuple):
        splits, meta = dataset
        return meta, splits.__getitem__, str(meta.get("source", "in-memory")), set(splits)
    ds = dataset if isinstance(dataset, CanonicalDataset) else open_dataset(dataset)
    return ds.meta, ds.load, str(ds.root), set(ds.splits)


def teacher_probabilities(path: Path, pixels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """A teacher model's class probabilities ``(N, C)`` for uint8 faces, in ``classes`` order."""
    from ferflow.predict import FerClassifier

    teacher = FerClassifier(path)
    if teacher.classes != list(classes):
        raise ValueError(
            f"teacher {path}: its classes {teacher.classes} are not the dataset's {list(classes)}; "
            "distil from a model trained on the same class set"
        )
    started = time.perf_counter()
    probs = teacher.predict_proba(pixels)
    print(
        f"teacher {path}: {len(pixels)} faces scored in {time.perf_counter() - started:.0f} s "
        f"({teacher.runtime.value}, tta={teacher.tta.value})",
        flush=True,
    )
    return probs


def prepare_data(
    cfg: TrainConfig,
    dataset: str | Path | CanonicalDataset | tuple[dict[str, Split], dict[str, Any]],
    steps_per_epoch: int | None = None,
    limit_train: int | None = None,
) -> TrainingData:
    """Carve the tuning split, compute the scheme's targets and weights (no TensorFlow)."""
    meta, load, name, split_names = _open_splits(dataset)
    classes = list(meta["classes"])
    if "train" not in split_names:
        raise ValueError(f"dataset {name} has no 'train' split")
    full = load("train")
    fit_idx, tune_idx = stratified_split(full.label, cfg.tune_fraction, cfg.seed)
    if limit_train:
        rng = np.random.default_rng(cfg.seed)
        fit_idx = np.sort(rng.permutation(fit_idx)[:limit_train])
        tune_idx = np.sort(rng.permutation(tune_idx)[: max(limit_train // 4, len(classes))])
    row_weight = source_row_weights(full, meta, cfg.source_weights)
    fit_idx, tune_idx = fit_idx[row_weight[fit_idx] > 0], tune_idx[row_weight[tune_idx] > 0]
    if fit_idx.size == 0:
        raise ValueError(f"source_weights {cfg.source_weights} leave no training rows in {name}")
    fit_split, tune_split = full.subset(fit_idx), full.subset(tune_idx)
    scheme = LabelScheme(cfg.label_scheme)
    if scheme is LabelScheme.MULTI_TARGET and cfg.augment.mixup_alpha > 0:
        raise ValueError("mixup needs soft targets; it cannot be combined with multi_target")
    targets = scheme_targets(fit_split, classes, meta.get("class_set"), scheme)
    if cfg.teacher:
        taught = teacher_probabilities(Path(cfg.teacher), fit_split.pixels, classes)
        targets = ((1 - cfg.teacher_weight) * targets + cfg.teacher_weight * taught).astype(np.float32)
    cw = class_weights(fit_split.label, len(classes), cfg.class_weight_power)
    weights = cw[fit_split.label.astype(int)] * row_weight[fit_idx]
    return TrainingData(
        name=name,
        meta=meta,
        classes=classes,
        fit=fit_split,
        tune=tune_split,
        test=load("valid") if "valid" in split_names else None,
        targets=targets,
        weights=(weights / weights.mean()).astype(np.float32),
        steps_per_epoch=steps_per_epoch or max(1, len(fit_split) // cfg.batch_size),
    )


def open_run(
    cfg: TrainConfig, run_dir: str | Path | None, resume: bool, replicas: int = 1
) -> tuple[Path, dict[str, Any]]:
    """The run folder and its state: a fresh folder, or the interrupted run's with ``resume``
    (same configuration and number of replicas: both fix the global batch and its data)."""
    run_dir = Path(run_dir) if run_dir else Paths().artifacts / "train" / cfg.model
    state_path = run_dir / "state.json"
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if resume and state and _fit_params(state.get("config", {})) != _fit_params(_flat_params(cfg)):
        raise ValueError(
            f"{run_dir}: --resume with a different configuration than the interrupted run; "
            "use the same options or start a new run without --resume"
        )
    if resume and state and int(state.get("replicas", 1)) != replicas:
        raise ValueError(
            f"{run_dir}: --resume with {replicas} replica(s), the interrupted run had "
            f"{state.get('replicas', 1)}; resume with as many workers/devices or start a new run"
        )
    return run_dir, state


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    (run_dir / "state.json").write_text(json.dumps(state, indent=1))


def fit_model(
    cfg: TrainConfig,
    data: TrainingData,
    run_dir: Path,
    *,
    callbacks: Sequence[Any] = (),
    verbose: int = 2,
    checkpoint: bool = True,
    mlflow_run: str | None = None,
    dist: Distribution | None = None,
):
    """Build, compile and fit ``cfg.model``; returns the model with its best tuning-split weights.

    Writes ``history.json`` and ``best.json`` to ``run_dir``; with ``checkpoint`` also a
    per-epoch checkpoint (``checkpoint/``) and, at the end, ``best.weights.h5``. A committed
    checkpoint in ``run_dir`` is continued from its next epoch, exactly: same weights, optimizer
    state, learning rate, dropout RNG, early-stopping state and the same batches as a run that
    was never interrupted (the data stream is keyed on (seed, epoch, step), not replayed).

    Under ``dist``'s strategy ``cfg`` is the scaled one (:func:`ferflow.distribute.scaled_config`):
    its ``batch_size`` is the global batch. The model lives in the strategy's scope (use
    :func:`as_float32` with ``rebuild`` for a plain copy); on several workers the chief's
    checkpoint is what every worker resumes from.
    """
    import keras

    from ferflow.distribute import synchronize_batch_norm

    dist = dist or Distribution(DistributeMode.NONE)
    keras.utils.set_random_seed(cfg.seed)
    with dist.scope():
        model = _compiled_model(cfg, data)
        if dist.replicas > 1:  # batch statistics of the global batch, as one process computes them
            synchronize_batch_norm(model)
        if dist.local_replicas > 1:
            _keep_each_replica_its_own_losses(model)
        if dist.task.workers > 1:
            _fit_multi_worker_with_keras(model, data, cfg.batch_size // dist.replicas)
    folder = run_dir / "checkpoint"
    # outside the scope: on several workers a variable Keras creates while loading would be
    # broadcast from the chief alone, a collective the other workers never join
    committed = restore_checkpoint(model, folder) if checkpoint and dist.chief else {}
    with dist.scope():
        committed = _sync_from_chief(model, dist, committed)
    initial_epoch = int(committed.get("epoch", 0))
    history_path = run_dir / "history.json"
    if committed:  # drop what an epoch that was never committed logged
        history_path.write_text(
            json.dumps([h for h in load_history(history_path) if h["epoch"] < initial_epoch])
        )
    EpochLog, BestKeeper = _callbacks_module()
    keeper = BestKeeper(
        run_dir, "val_accuracy", cfg.early_stopping_patience, _committed_best(committed, run_dir)
    )
    cbs = [EpochLog(history_path, mlflow_run), keeper, keras.callbacks.TerminateOnNaN()]
    if checkpoint:  # without: no per-epoch checkpoint or best-weights files (an HDF5 write an epoch)
        cbs.append(_checkpoint_class()(folder, keeper))  # after the callbacks whose state it commits
    model.fit(
        distribute_dataset(
            dist,
            lambda first, local: make_train_dataset(
                data.fit.pixels,
                data.targets,
                data.weights,
                cfg,
                steps_per_epoch=data.steps_per_epoch,
                start_epoch=initial_epoch,
                replicas=dist.replicas,
                shard=(first, local),
            ),
        ),
        initial_epoch=initial_epoch,
        epochs=cfg.epochs,
        steps_per_epoch=data.steps_per_epoch,
        validation_data=distribute_dataset(
            dist,
            lambda first, local: make_eval_dataset(
                data.tune.pixels, data.tune.label, data.num_classes, copies=local
            ),
        ),
        callbacks=[*cbs, *callbacks],
        verbose=verbose,
        shuffle=False,  # the training dataset shuffles itself (seeded); Keras would warn and ignore it
    )
    if checkpoint:
        _load_best_weights(model, run_dir)
    return model


def load_init_weights(model, path: Path) -> None:
    """Copy the weights of ``path`` (``.weights.h5``, or a saved ``.keras`` model) into ``model``.

    The architecture must match layer for layer; a mismatch stops with the file and the reason.
    """
    try:
        model.load_weights(path)  # Keras reads both formats
    except (ValueError, OSError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"init_weights {path}: does not fit model {model.name!r} ({first})") from exc


def _compiled_model(cfg: TrainConfig, data: TrainingData):
    """``cfg.model`` built and compiled, its optimizer built (in the caller's strategy scope)."""
    import keras

    from ferflow.models import build_model

    model = build_model(cfg.model, data.num_classes, **model_kwargs(cfg))
    if cfg.init_weights:
        load_init_weights(model, Path(cfg.init_weights))
    model.compile(
        optimizer=make_optimizer(cfg, data.steps_per_epoch),
        loss=make_loss(cfg),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    # Without a distribution strategy Keras creates the optimizer's slots inside the first
    # traced step, and tf.function then traces the whole step a second time (~5 s a fit)
    model.optimizer.build(model.trainable_variables)
    return model


def _fit_multi_worker_with_keras(model, data: TrainingData, per_replica: int) -> None:
    """Two steps of Keras 3.15's ``fit`` fail under MultiWorkerMirroredStrategy; go around them.

    1. Before the first step it reduces a distributed batch's whole ``(x, y, w)`` structure with
       ``strategy.reduce``, which this strategy refuses ("Attempt to convert a value
       (PerReplica...) to a Tensor"): build the compiled loss and metrics here from one replica's
       batch shapes and skip that step.
    2. It reduces each step's logged scalars with ``strategy.reduce("MEAN", v, axis=0)``, which
       fails on a scalar ("Invalid reduction dimension 0", tensorflow/tensorflow#72388): the
       steps return them as ``[1]`` tensors. The metrics' variables are summed over all replicas
       as they update, so each replica's value is already the global one and the mean keeps it.
    """
    from keras import ops, tree

    x = np.zeros((per_replica, *data.fit.pixels.shape[1:], 1), np.float32)
    y = np.zeros((per_replica, data.num_classes), np.float32)
    model._symbolic_build(data_batch=(x, y, np.ones(per_replica, np.float32)))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    def rank1(step):
        return lambda batch: tree.map_structure(lambda v: ops.reshape(v, [1]), step(batch))

    model.train_step, model.test_step = rank1(model.train_step), rank1(model.test_step)


def _keep_each_replica_its_own_losses(model) -> None:
    """Each replica of one process adds only its own ``add_loss`` terms (the region-biased loss).

    MirroredStrategy traces a process's replicas in turns, switching at every all-reduce (each
    synchronised batch normalisation), and a layer's list of added losses is shared: a later
    replica found the earlier replicas' terms too and counted them again. A replica now keeps
    the terms traced under its own name scope (``replica_<k>/``, none for replica 0)."""
    import tensorflow as tf

    def replica_scope(name: str) -> str:
        first = name.split("/")[0]
        return first if first.startswith("replica_") else ""

    for layer in model._flatten_layers(include_self=True, recursive=True):

        def own_losses(original=layer._get_own_losses):
            losses = original()
            if not tf.inside_function():
                return losses
            mine = replica_scope(tf.compat.v1.get_default_graph().get_name_scope())
            return [t for t in losses if replica_scope(getattr(t, "name", "") or "") == mine]

        layer._get_own_losses = own_losses


def _sync_from_chief(model, dist: Distribution, committed: dict[str, Any]) -> dict[str, Any]:
    """On several workers: the chief's restored state on every worker, and its commit record.

    Only the chief reads its checkpoint (a worker's disk need not hold one); one all-reduce then
    carries the weights, optimizer state, dropout generators' states and the commit's epoch and
    early-stopping state to the others. Every worker runs it, fresh or resumed (collectives must
    match), and afterwards all start the same epoch with the same state."""
    if dist.strategy is None or dist.task.workers == 1:
        return committed
    import keras

    variables = _unique(
        [*model.weights, *model.optimizer.variables, *(g.state for g in seed_generators(model))]
    )
    best = committed.get("best") or {"best": -math.inf, "epoch": -1, "wait": 0}
    record = np.array([committed.get("epoch", 0), best["best"], best["epoch"], best["wait"]], np.float64)
    values = [keras.ops.convert_to_numpy(v) for v in variables]
    synced = broadcast_from_chief(dist, [record, *values])
    for var, value in zip(variables, synced[1:], strict=True):
        var.assign(value)
    epoch, best_value, best_epoch, wait = synced[0].tolist()
    if int(epoch) == 0:
        return {}
    return {"epoch": int(epoch), "best": {"best": best_value, "epoch": int(best_epoch), "wait": int(wait)}}


def _unique(variables: Sequence[Any]) -> list[Any]:
    seen: set[int] = set()
    return [v for v in variables if not (id(v) in seen or seen.add(id(v)))]


def _committed_best(committed: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """The best keeper's state at the committed epoch (a BackupAndRestore-era run: best.json)."""
    if not committed:
        return None
    if "best" in committed:
        return committed["best"]
    path = run_dir / "best.json"
    return json.loads(path.read_text()) if path.exists() else None


def _load_best_weights(model, run_dir: Path) -> None:
    """Copy the committed best epoch's checkpoint to ``best.weights.h5`` and load it."""
    meta_path = run_dir / "checkpoint" / CHECKPOINT_META
    name = json.loads(meta_path.read_text()).get("best_weights") if meta_path.exists() else None
    best = run_dir / "best.weights.h5"
    if name and (run_dir / "checkpoint" / name).exists():
        shutil.copyfile(run_dir / "checkpoint" / name, best)
    if best.exists():
        model.load_weights(best)


def as_float32(model, cfg: TrainConfig, num_classes: int, rebuild: bool = False):
    """The same weights in a float32 graph: what is exported and served after mixed precision.

    ``rebuild``: a new model even in float32, outside any strategy (a model built in a strategy's
    scope would save and predict through its collectives, which only the chief runs)."""
    import keras

    from ferflow.models import build_model

    if keras.mixed_precision.global_policy().name == "float32" and not rebuild:
        return model
    keras.mixed_precision.set_global_policy("float32")
    fp32 = build_model(cfg.model, num_classes, **model_kwargs(cfg))
    fp32.set_weights(model.get_weights())
    return fp32


def train(
    cfg: TrainConfig,
    dataset: str | Path | CanonicalDataset | tuple[dict[str, Split], dict[str, Any]],
    run_dir: str | Path | None = None,
    resume: bool = False,
    *,
    track: bool = True,
    export: bool = True,
    export_dir: str | Path | None = None,
    steps_per_epoch: int | None = None,
    limit_train: int | None = None,
    callbacks: Sequence[Any] = (),
    verbose: int | None = None,
    checkpoint: bool = True,
    save: bool = True,
    recipe: str | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``dataset`` (canonical dir, opened dataset, or (splits, meta)).

    ``run_dir`` holds the checkpoint, history and outputs (default
    ``artifacts/train/<model>``). Without ``resume`` an existing run there is discarded;
    with it the run continues from its last completed epoch, in the same MLflow run, as if it
    had never stopped: same weights, optimizer state, learning rate, dropout RNG, early-stopping
    state and batches (:func:`fit_model`). ``steps_per_epoch`` / ``limit_train`` bound smoke runs.
    ``export_dir`` additionally receives model.onnx, metrics.json and MODEL_CARD.md.
    ``verbose``: Keras progress bar (1) on a terminal, one line per epoch (2) otherwise.
    ``checkpoint=False`` writes no per-epoch checkpoint and no best weights: the run cannot be
    resumed and ends with its last weights. ``save=False`` writes neither model.keras nor the
    learning-curve plot; it cannot be combined with ``export`` or ``track``, which need the model.
    ``recipe`` (the recipe's name, e.g. ``smoke``) goes into the MLflow run name
    ``train-<recipe>-<model>-<UTC time>``; a tracked, exported run logs its MODEL_CARD.md.
    """
    if resume and not checkpoint:
        raise ValueError("resume=True needs checkpoint=True: there is nothing to resume from")
    if not save and (export or track):
        raise ValueError("save=False keeps no model, so it cannot be exported or tracked")
    device = configure_device(cfg.precision)
    dist = setup_distribution(cfg.distribute)
    fit_cfg = scaled_config(cfg, dist.replicas)
    if not dist.chief:
        return _train_worker(
            fit_cfg, dataset, dist, device, steps_per_epoch, limit_train, callbacks, checkpoint
        )
    data = prepare_data(fit_cfg, dataset, steps_per_epoch, limit_train)
    run_dir, state = open_run(cfg, run_dir, resume, dist.replicas)
    spread = {"replicas": dist.replicas, "global_batch_size": fit_cfg.batch_size}
    spread["scaled_learning_rate"] = fit_cfg.learning_rate
    mlflow_run = (
        start_tracking(cfg, data, state.get("mlflow_run_id"), device, recipe, spread) if track else None
    )
    state.update(config=_flat_params(cfg), mlflow_run_id=mlflow_run, replicas=dist.replicas)
    _save_state(run_dir, state)
    try:
        model = fit_model(
            fit_cfg,
            data,
            run_dir,
            callbacks=callbacks,
            verbose=(1 if sys.stdout.isatty() else 2) if verbose is None else verbose,
            checkpoint=checkpoint,
            mlflow_run=mlflow_run,
            dist=dist,
        )
    except BaseException:
        if track:
            import mlflow

            mlflow.end_run(status="KILLED")
        raise
    history = load_history(run_dir / "history.json")
    model = as_float32(model, cfg, data.num_classes, rebuild=dist.strategy is not None)
    keras_path = run_dir / "model.keras" if save else None
    if keras_path:
        model.save(keras_path)
        plot_learning_curves(history, run_dir / "learning_curves.png", title=cfg.model)
    metrics, onnx_path, extras = export_and_score(cfg, model, data, run_dir) if export else ({}, None, {})
    train_seconds = sum(h.get("epoch_seconds", 0.0) for h in history)
    result = TrainResult(
        run_dir, history, metrics, onnx_path, keras_path, mlflow_run, train_seconds, device, extras
    )
    if onnx_path is not None and (export_dir or track):
        write_card(result, cfg, data.meta, Path(export_dir) if export_dir else None)
    if track:
        summary_extras = {**extras, "train_seconds": train_seconds}
        finish_tracking(
            cfg, run_dir, metrics, summary_extras, model, keras_path, onnx_path, data.tune.pixels[:8]
        )
    return result


def _train_worker(
    fit_cfg: TrainConfig,
    dataset,
    dist: Distribution,
    device: DeviceInfo,
    steps_per_epoch: int | None,
    limit_train: int | None,
    callbacks: Sequence[Any],
    checkpoint: bool,
) -> TrainResult:
    """A non-chief worker: the same fit in lockstep with the chief, writing no run, export or
    card. Saving a checkpoint is a step every worker takes together, so its copies go to a
    temporary folder, deleted when the fit ends; it resumes from the chief's state."""
    import tempfile

    data = prepare_data(fit_cfg, dataset, steps_per_epoch, limit_train)
    with tempfile.TemporaryDirectory(prefix="ferflow-worker-") as tmp:
        fit_model(fit_cfg, data, Path(tmp), callbacks=callbacks, verbose=0, checkpoint=checkpoint, dist=dist)
        history = load_history(Path(tmp) / "history.json")
    seconds = sum(h.get("epoch_seconds", 0.0) for h in history)
    return TrainResult(Path(tmp), history, {}, None, None, None, seconds, device, {"chief": False})


def write_card(result: TrainResult, cfg: TrainConfig, meta: dict[str, Any], export_dir: Path | None) -> Path:
    """MODEL_CARD.md in the run folder (what MLflow logs); with ``export_dir`` also the reference
    files there (model.onnx, metrics.json, MODEL_CARD.md)."""
    import tempfile

    from ferflow.export import write_reference

    card = result.run_dir / "MODEL_CARD.md"
    if export_dir is not None:
        write_reference(result, cfg, meta, export_dir)
        shutil.copyfile(export_dir / "MODEL_CARD.md", card)
        return card
    with tempfile.TemporaryDirectory(prefix="ferflow-card-") as tmp:
        write_reference(result, cfg, meta, Path(tmp))
        shutil.copyfile(Path(tmp) / "MODEL_CARD.md", card)
    return card


# ----------------------------------------------------------------------------------------
# export and scoring


def export_and_score(
    cfg: TrainConfig, model, data: TrainingData, run_dir: Path
) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """Export ONNX (int8 and TTA kept only where they pay on the tuning split) and score it.

    Returns the metrics (tuning split, test split), the exported model and the decisions taken
    (``extras``). Scores go through the same ONNX predictor ``ferflow evaluate`` uses.
    """
    from ferflow import evaluate as ev
    from ferflow import export as ex
    from ferflow.predict import FerClassifier

    extras: dict[str, Any] = {"tta": TestTimeAugmentation(cfg.tta).value}
    meta = {"tta": extras["tta"], "train_prior": json.dumps(train_prior(data))}
    fp32_path = ex.export_onnx(model, run_dir / "model_fp32.onnx", data.classes, meta)
    extras["export_agreement"] = ex.check_agreement(model, fp32_path, data.tune.pixels[:512])
    if HeadName(cfg.head) is HeadName.XGBOOST:
        from ferflow.xgb_head import attach_xgboost_head

        # rewrites fp32_path as one graph (backbone features, then the trees): serving stays ONNX-only
        extras |= attach_xgboost_head(fp32_path, data, cfg)
    onnx_path = run_dir / "model.onnx"
    shutil.copyfile(fp32_path, onnx_path)
    extras["onnx_precision"] = "fp32"
    tune_score = ev.evaluate_split(FerClassifier(fp32_path), data.tune, data.classes, occlusion=False)
    if cfg.quantize_int8:
        tune_score = _keep_int8_if_cheap(cfg, data, fp32_path, onnx_path, tune_score, extras)
    if extras["tta"] != TestTimeAugmentation.NONE.value:
        tune_score = _keep_tta_if_it_pays(cfg, data, onnx_path, tune_score, extras)
    metrics: dict[str, Any] = {"tune": tune_score}
    if data.test is not None:
        # occlusion seed 0, per-source label sets from the dataset: the registry gate's protocol
        metrics["test"] = ev.evaluate_split(
            FerClassifier(onnx_path),
            data.test,
            data.classes,
            seed=0,
            label_sets=ev.source_label_sets(data.meta),
        )
        if cfg.robustness:
            metrics["robustness"] = _robustness(FerClassifier(onnx_path), data.test)
    metrics["onnx_precision"] = extras["onnx_precision"]
    _write_scores(cfg, metrics, data.classes, run_dir)
    return metrics, onnx_path, extras


def train_prior(data: TrainingData) -> list[float]:
    """The class distribution the loss saw: training labels weighted as in the loss (class and
    source weights); ``ferflow evaluate --prior`` adjusts logits away from it."""
    mass = (_soft_targets(data) * data.weights[:, None]).sum(axis=0)
    return [round(float(m), 6) for m in mass / max(float(mass.sum()), 1e-12)]


def _soft_targets(data: TrainingData) -> np.ndarray:
    """(N, C) class mass per training row: the scheme's targets (one-hot rows for majority)."""
    targets = np.asarray(data.targets, np.float64)
    if targets.ndim == 2 and targets.shape == (len(data.fit), len(data.classes)):
        return targets / np.clip(targets.sum(axis=1, keepdims=True), 1e-12, None)
    return np.eye(len(data.classes))[data.fit.label.astype(int)]


def _robustness(predictor, test: Split) -> dict[str, Any]:
    """The robustness suite on the test split's first source (FER2013Valid for data/)."""
    from ferflow import robustness as rb
    from ferflow.preprocess import to_model_input

    name, part = test.first_source()
    suite = rb.run_suite(
        lambda faces: predictor.logits(to_model_input(faces)).argmax(axis=1),
        part.pixels,
        part.label.astype(int),
    )
    suite["dataset"] = name or "test"
    return suite


def _keep_int8_if_cheap(cfg, data: TrainingData, fp32_path, onnx_path, fp32_score, extras) -> dict:
    from ferflow import evaluate as ev
    from ferflow import export as ex
    from ferflow.predict import FerClassifier

    calib = data.fit.pixels[np.random.default_rng(cfg.seed).permutation(len(data.fit))[:512]]
    int8_path = ex.quantize_int8(fp32_path, onnx_path.parent / "model_int8.onnx", calib)
    int8_score = ev.evaluate_split(FerClassifier(int8_path), data.tune, data.classes, occlusion=False)
    cost = fp32_score["accuracy"] - int8_score["accuracy"]
    extras["int8_tune_accuracy_cost"] = cost
    if cost > 0.005:
        return fp32_score
    shutil.copyfile(int8_path, onnx_path)
    extras["onnx_precision"] = "int8"
    return int8_score


def _keep_tta_if_it_pays(cfg, data: TrainingData, onnx_path, tta_score, extras) -> dict:
    """TTA doubles the inference cost: keep it only for a clear gain on the tuning split."""
    from ferflow import evaluate as ev
    from ferflow import export as ex
    from ferflow.predict import FerClassifier

    plain = ev.evaluate_split(FerClassifier(onnx_path, tta="none"), data.tune, data.classes, occlusion=False)
    gain = tta_score["accuracy"] - plain["accuracy"]
    extras["tta_tune_accuracy_gain"] = gain
    if gain >= cfg.tta_min_gain:
        return tta_score
    extras["tta"] = TestTimeAugmentation.NONE.value
    ex.set_metadata(onnx_path, {"tta": extras["tta"]})
    return plain


def _write_scores(cfg: TrainConfig, metrics: dict[str, Any], classes: list[str], run_dir: Path) -> None:
    from ferflow import evaluate as ev

    report_split = "test" if "test" in metrics else "tune"
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    ev.plot_confusion(
        np.array(metrics[report_split]["confusion_matrix"]),
        classes,
        run_dir / "confusion_matrix.png",
        title=f"{cfg.model} — {report_split} (normalised)",
    )
    (run_dir / "per_class_metrics.json").write_text(json.dumps(metrics[report_split]["per_class"], indent=2))
    if "robustness" in metrics:
        from ferflow import robustness as rb

        rb.plot(metrics["robustness"], run_dir / "robustness.png", title=f"{cfg.model} — robustness")


# ----------------------------------------------------------------------------------------
# tracking (MLflow)


def start_tracking(
    cfg: TrainConfig,
    data: TrainingData,
    run_id: str | None,
    device: DeviceInfo,
    recipe: str | None = None,
    spread: dict[str, Any] | None = None,
) -> str:
    """Start (or, with the run id of an interrupted run, reopen) the run's MLflow run: named
    ``train-<recipe>-<model>-<UTC time>``, in an experiment tagged as model development, with
    the recipe as parameters and the data as logged inputs (digest: the DVC version)."""
    import mlflow

    from ferflow.tracking import log_dataset_inputs, run_name, use_experiment

    mlflow.set_tracking_uri(Paths().mlflow_uri)
    use_experiment(cfg.experiment)
    name = None if run_id else run_name("train", recipe, cfg.model)
    run = mlflow.start_run(run_id=run_id, run_name=name, log_system_metrics=False)
    if run_id:
        return run.info.run_id
    mlflow.log_params(
        {
            **_flat_params(cfg),
            "dataset": data.name,
            "steps_per_epoch": data.steps_per_epoch,
            "n_fit": len(data.fit),
            "n_tune": len(data.tune),
            "n_test": len(data.test) if data.test is not None else 0,
            **(spread or {}),  # replicas, global batch and scaled learning rate
        }
    )
    mlflow.set_tags(
        {
            "dataset_md5": str(data.meta.get("source_version") or "unknown"),
            "dataset_created": str(data.meta.get("created", "")),
            "git_commit": git_commit(Path(__file__).resolve().parent) or "unknown",
            "device": device.describe(),
            "model": cfg.model,
            "label_scheme": LabelScheme(cfg.label_scheme).value,
            **({"recipe": recipe} if recipe else {}),
        }
    )
    inputs = {"training": (data.fit, "train"), "validation": (data.tune, "train-tuning-split")}
    if data.test is not None:
        inputs["testing"] = (data.test, "valid")
    log_dataset_inputs(inputs, data.meta, data.name)
    return run.info.run_id


def finish_tracking(
    cfg: TrainConfig,
    run_dir: Path,
    metrics: dict[str, Any],
    extras: dict[str, Any],
    model,
    keras_path: Path,
    onnx_path: Path | None,
    sample_pixels: np.ndarray,
) -> None:
    """Log the scores, decisions, plots and models to the active MLflow run, and end it."""
    import mlflow

    from ferflow.evaluate import flat_metrics

    summary = {
        f"{split}_{key}": m[key]
        for split, m in metrics.items()
        if isinstance(m, dict)
        for key in ("accuracy", "macro_f1", "occluded_accuracy")
        if key in m
    }
    for key in ("train_seconds", "int8_tune_accuracy_cost", "tta_tune_accuracy_gain"):
        if extras.get(key) is not None:
            summary[key] = extras[key]
    summary |= flat_metrics({"datasets": metrics.get("test", {}).get("datasets", {})})
    summary |= flat_metrics({"robustness": metrics["robustness"]}) if "robustness" in metrics else {}
    mlflow.log_metrics(summary)
    mlflow.set_tag("onnx_precision", extras.get("onnx_precision", "none"))
    mlflow.set_tag("tta", extras.get("tta", TestTimeAugmentation(cfg.tta).value))
    for name in (
        "MODEL_CARD.md",
        "learning_curves.png",
        "confusion_matrix.png",
        "robustness.png",
        "per_class_metrics.json",
        "metrics.json",
        "history.json",
    ):
        if (run_dir / name).exists():
            mlflow.log_artifact(str(run_dir / name))
    _log_models(model, keras_path, onnx_path, sample_pixels)
    mlflow.end_run()


def _log_models(model, keras_path: Path, onnx_path: Path | None, sample_pixels: np.ndarray) -> None:
    """The Keras model (with an input signature) and the ONNX inference model, to MLflow.

    Plain files go to the run's artifacts (``keras/model.keras``, ``onnx/model.onnx``, so
    ``runs:/<id>/onnx`` resolves); the flavoured models are MLflow logged models whose URIs
    are recorded as the tags ``keras_model_uri`` / ``onnx_model_uri`` (for the registry).
    """
    import mlflow
    from mlflow.models import infer_signature

    from ferflow.preprocess import to_model_input

    x = to_model_input(sample_pixels)
    logits = np.asarray(model.predict(x, verbose=0))
    signature = infer_signature(x, logits)
    mlflow.log_artifact(str(keras_path), artifact_path="keras")
    try:
        info = mlflow.tensorflow.log_model(model, name="keras_model", signature=signature)
        mlflow.set_tag("keras_model_uri", info.model_uri)
    except Exception as err:  # the flavour is optional; the .keras file above is the truth
        print(f"note: mlflow.tensorflow.log_model failed ({err}); logged the .keras file only")
    if onnx_path is not None:
        import onnx

        mlflow.log_artifact(str(onnx_path), artifact_path="onnx")
        info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", signature=signature)
        mlflow.set_tag("onnx_model_uri", info.model_uri)


def plot_learning_curves(history: list[dict[str, float]], path: Path, title: str = "") -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] + 1 for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key in zip(axes, ("loss", "accuracy", "lr"), strict=True):
        # markers: a one-epoch run is a single point, which a line alone does not draw
        ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=f"train {key}")
        if f"val_{key}" in history[0]:
            values = [h.get(f"val_{key}", np.nan) for h in history]
            ax.plot(epochs, values, marker="s", label=f"tune {key}")
        ax.set_xlabel("epoch")
        if len(epochs) <= 12:
            ax.set_xticks(epochs)  # whole epochs; one epoch gets its own tick, not a float scale
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
