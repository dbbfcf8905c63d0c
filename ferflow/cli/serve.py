"""``ferflow serve``: the BentoML service (serving/service.py; logic in ferflow.inference)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferflow.cli.common import USAGE, fail, require_free_port, require_tracking_store

app = typer.Typer()


SERVICE_TARGET = "serving.service:FERService"
# Loopback by default: a server started from a shell is reachable from this machine only. The
# container image sets FERFLOW_HOST=0.0.0.0 (Dockerfile) and the Helm chart passes --host 0.0.0.0:
# there the port is published by Docker or the Service, and only all interfaces reach it.
DEFAULT_HOST = "127.0.0.1"
HOST_ENV = "FERFLOW_HOST"


@app.command("serve")
def serve_cmd(
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="HTTP port.")] = 3000,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            envvar=HOST_ENV,
            help="interface to bind: 127.0.0.1 serves this machine only; 0.0.0.0 every interface "
            "(the container image's default, through FERFLOW_HOST).",
        ),
    ] = DEFAULT_HOST,
    workers: Annotated[
        int | None, typer.Option(min=1, help="worker processes (default FERFLOW_WORKERS or 1).")
    ] = None,
) -> None:
    """Serve the model over HTTP: /predict, /predict_batch, /classify, /demo, probes, /metrics.

    Loads FERFLOW_MODEL_URI (e.g. models:/ferflow@champion) when MLFLOW_TRACKING_URI is set,
    else the committed reference model. FERFLOW_API_KEY turns on bearer auth.
    """
    import os
    import sys

    from ferflow.inference import ModelLoadError, ServingConfig, resolve_model

    try:
        config = ServingConfig.from_env()
    except ValueError as exc:
        raise fail(f"error: {exc} (fix the environment variable)", USAGE) from exc
    # Pre-flight, before BentoML starts: a model that cannot load would make its worker restart
    # forever, and a busy port fail with a traceback. The registry model is downloaded here once
    # more than the worker does: seconds, against a server that never comes up.
    uri = config.model_uri or ""
    if uri.startswith("runs:/") or (uri.startswith("models:/") and config.tracking_uri):
        require_tracking_store(config.tracking_uri)  # else MLflow creates an empty mlflow.db
    try:
        model = resolve_model(config)
    except ModelLoadError as exc:  # the configuration names no loadable model: an input mistake
        raise fail(f"error: {exc} (check FERFLOW_MODEL_URI and MLFLOW_TRACKING_URI)", USAGE) from exc
    require_free_port(host, port)
    env = dict(os.environ)
    if workers is not None:
        env["FERFLOW_WORKERS"] = str(workers)
    # BentoML keeps its Prometheus multiprocess files under BENTOML_HOME and wipes them at start:
    # two servers sharing one home (two ports on one host) would erase each other's /metrics.
    if "BENTOML_HOME" not in env:
        import tempfile

        env["BENTOML_HOME"] = str(Path(tempfile.gettempdir()) / f"ferflow-bentoml-{port}")
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET, "--host", host, "--port", str(port)]
    typer.echo(
        f"serving {SERVICE_TARGET} with model {model.name} ({model.version}) on http://{host}:{port} "
        "(demo: /demo, API docs: /)"
    )
    os.execve(sys.executable, cmd, env)  # bentoml replaces this process: signals reach it directly
