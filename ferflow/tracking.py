"""MLflow conventions shared by training, tuning and evaluation: run names, experiment kind, inputs.

- **Run names** say what ran and when: ``train-<recipe>-<model>-<UTC time>``,
  ``tune-<study>-<UTC time>`` with nested ``tune-trial-<N>`` runs, ``evaluate-<model>-<UTC time>``.
- **Experiment kind**: MLflow 3 opens an experiment on its GenAI/Traces overview unless the
  experiment's ``mlflow.experimentKind`` tag says otherwise; ferflow's experiments are tagged
  ``custom_model_development`` (the model-training view: runs, metrics, models).
- **Dataset inputs**: a training run records its data with ``mlflow.log_input``; the dataset's
  digest is the data's DVC version (``source_version`` of the canonical ``dataset.json``).
"""

from __future__ import annotations

import re
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ferflow.canonical import Split

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
DIGEST_MAX = 36  # MLflow stores a dataset digest in 36 characters (a DVC ``<md5>.dir`` fits)


def utc_stamp(when: datetime | None = None) -> str:
    """``20261205T164210Z``: a run name's time part."""
    return f"{(when or datetime.now(UTC)).astimezone(UTC):%Y%m%dT%H%M%SZ}"


def run_name(kind: str, *parts: str | None, when: datetime | None = None) -> str:
    """``<kind>-<part>-...-<UTC time>``; empty parts are left out, others made name-safe."""
    safe = [re.sub(r"[^A-Za-z0-9._+]+", "_", str(p)).strip("_") for p in parts if p]
    return "-".join([kind, *[p for p in safe if p], utc_stamp(when)])


def mark_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as model development, unless someone already chose its kind."""
    experiment = client.get_experiment(experiment_id)
    if not experiment.tags.get(EXPERIMENT_KIND_TAG):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)


def use_experiment(name: str) -> str:
    """``mlflow.set_experiment(name)``, the experiment tagged as model development; its id."""
    import mlflow

    experiment = mlflow.set_experiment(name)
    if not experiment.tags.get(EXPERIMENT_KIND_TAG):
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT
        )
    return experiment.experiment_id


def dataset_label(meta: dict[str, Any], fallback: str) -> str:
    """A short name for a canonical dataset: its sources (``ferplus+photos``) or folder name."""
    source = str(meta.get("source") or fallback)
    return Path(source).name or source


def log_dataset_inputs(splits: dict[str, tuple[Split, str]], meta: dict[str, Any], source: str) -> None:
    """Record the run's data with ``mlflow.log_input``: one MLflow dataset per split
    (``{context: (split, split name)}``, e.g. ``{"training": (fit, "train")}``), named
    ``<dataset>/<split>``, its source the canonical folder and its digest the DVC version."""
    import mlflow
    import mlflow.data

    version = str(meta.get("source_version") or "")
    label = dataset_label(meta, source)
    for context, (split, split_name) in splits.items():
        with warnings.catch_warnings():  # MLflow registers its local-file source class twice
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_numpy(
                split.pixels,
                source=source,
                targets=np.asarray(split.label),
                name=f"{label}/{split_name}",
                digest=version[:DIGEST_MAX] or None,
            )
        tags = {"dvc_version": version or "unknown", "split": split_name, "rows": str(len(split))}
        mlflow.log_input(dataset, context=context, tags=tags)
