"""``ferflow serve``: the BentoML service (serving/service.py; logic in ferflow.inference)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferflow.cli.common import fail

app = typer.Typer()


SERVICE_TARGET = "serving.service:FERService"


@app.command("serve")
def serve_cmd(
    port: Annotated[int, typer.Option("--port", "-p", help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option("--host", help="interface to bind.")] = "0.0.0.0",
    workers: Annotated[
        int | None, typer.Option(help="worker processes (default FERFLOW_WORKERS or 1).")
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
        if config.model_uri is None:  # fail fast on a missing local model; registry URIs load in the server
            resolve_model(config)
    except (ValueError, ModelLoadError) as exc:
        raise fail(f"error: {exc}", 2) from exc
    env = dict(os.environ)
    if workers is not None:
        env["FERFLOW_WORKERS"] = str(workers)
    # BentoML keeps its Prometheus multiprocess files under BENTOML_HOME and wipes them at start:
    # two servers sharing one home (two ports on one host) would erase each other's /metrics.
    if "BENTOML_HOME" not in env:
        import tempfile

        env["BENTOML_HOME"] = str(Path(tempfile.gettempdir()) / f"ferflow-bentoml-{port}")
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET, "--host", host, "--port", str(port)]
    typer.echo(f"serving {SERVICE_TARGET} on http://{host}:{port} (demo: /demo, API docs: /)")
    os.execve(sys.executable, cmd, env)  # bentoml replaces this process: signals reach it directly
