"""Model references → a local ONNX file: the one resolver that evaluation, serving and the
registry share.

A reference is one of:

- ``None``: ``FERFLOW_MODEL``, else the committed reference model;
- a file, or a folder holding ``model.onnx`` (or any ``*.onnx``);
- ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: the MLflow model registry;
- ``models:/m-<id>``: an MLflow logged model (what a run's ``onnx_model_uri`` tag holds);
- ``runs:/RUN_ID/PATH`` or any URI MLflow can download (``s3://``, ``gs://``, ...).

MLflow URIs are read from the tracking server given, else ``MLFLOW_TRACKING_URI``, else the
project's SQLite file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ferflow.config import Paths
from ferflow.predict import REFERENCE_MODEL, default_model_path

REGISTRY_SCHEME = "models:/"


class ModelNotFound(ValueError):
    """The reference names no usable model; the message says which and why."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # local ONNX file
    name: str
    version: str  # registry version number, or ``sha256:<12 hex>`` of a file
    uri: str  # the reference as given

    def public(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def parse_registry_uri(uri: str) -> tuple[str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` → ``(NAME, ALIAS or VERSION)``."""
    ref = uri[len(REGISTRY_SCHEME) :]
    name, sep, alias = ref.partition("@")
    if not sep:
        name, _, alias = ref.partition("/")
    if not name or not alias:
        raise ModelNotFound(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, alias


def registry_uri(name: str, ref: str) -> str:
    """The registry URI of version ``3`` or alias ``champion`` of ``name``."""
    ref = str(ref)
    return f"{REGISTRY_SCHEME}{name}/{ref}" if ref.isdigit() else f"{REGISTRY_SCHEME}{name}@{ref}"


def _onnx_in(local: Path, reference: str) -> Path:
    if local.is_dir():
        found = sorted(local.rglob("model.onnx")) or sorted(local.rglob("*.onnx"))
        if not found:
            raise ModelNotFound(f"{reference}: no .onnx file in the folder")
        return found[0]
    if not local.is_file():
        raise ModelNotFound(f"{reference}: no such model file")
    return local


def _download(uri: str, tracking_uri: str) -> Path:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(uri))
    except Exception as exc:  # MlflowException, OSError, botocore errors: all mean "not there"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(f"{uri}: cannot download from {tracking_uri} ({first})") from exc


def _registry_version(name: str, ref: str, tracking_uri: str) -> str:
    if ref.isdigit():
        return ref
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return str(client.get_model_version_by_alias(name, ref).version)


def resolve(reference: str | Path | None = None, tracking_uri: str | None = None) -> ResolvedModel:
    """The local ONNX file, name and version that ``reference`` names (see the module doc).

    Raises :class:`ModelNotFound` with a one-line reason.
    """
    if reference is None:
        path = default_model_path()
        if not path.is_file():
            raise ModelNotFound(f"no model at {path} (set FERFLOW_MODEL or pass a model)")
        name = "reference" if path.resolve() == REFERENCE_MODEL.resolve() else path.stem
        return ResolvedModel(path, name, f"sha256:{file_digest(path)}", str(path))
    text = str(reference)
    local = Path(text)
    if not local.exists() and (text.startswith((REGISTRY_SCHEME, "runs:/")) or "://" in text):
        uri = tracking_uri or Paths().mlflow_uri
        if text.startswith(REGISTRY_SCHEME) and any(c in text[len(REGISTRY_SCHEME) :] for c in "@/"):
            name, ref = parse_registry_uri(text)
            path = _onnx_in(_download(registry_uri(name, ref), uri), text)
            return ResolvedModel(path, name, _registry_version(name, ref, uri), text)
        local = _download(text, uri)
    path = _onnx_in(local, text)
    return ResolvedModel(path, path.stem, f"sha256:{file_digest(path)}", text)
