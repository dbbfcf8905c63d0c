"""Where ``ferflow serve`` listens: loopback from a shell, every interface in the container."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferflow.cli import app

ROOT = Path(__file__).resolve().parents[2]


def bound_host(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> str:
    """The host ``ferflow serve ARGS`` checks and hands to BentoML (which is not started)."""
    import ferflow.cli.serve as serve

    checked: list[str] = []
    started: list[list[str]] = []
    monkeypatch.setattr(serve, "require_free_port", lambda host, port: checked.append(host))
    monkeypatch.setattr(os, "execve", lambda exe, cmd, env: started.append(cmd))
    res = CliRunner().invoke(app, ["serve", "--port", "3999", *args])
    assert res.exit_code == 0, res.output
    (cmd,) = started
    host = cmd[cmd.index("--host") + 1]
    assert checked == [host] and f"http://{host}:3999" in res.stdout
    return host


def test_serve_binds_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FERFLOW_HOST", "FERFLOW_MODEL", "FERFLOW_MODEL_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    assert bound_host(monkeypatch, []) == "127.0.0.1"
    assert bound_host(monkeypatch, ["--host", "0.0.0.0"]) == "0.0.0.0"
    monkeypatch.setenv("FERFLOW_HOST", "0.0.0.0")  # what the container image sets
    assert bound_host(monkeypatch, []) == "0.0.0.0"
    assert bound_host(monkeypatch, ["--host", "127.0.0.1"]) == "127.0.0.1"


def test_the_image_serves_on_every_interface() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    runtime_env = re.findall(r"^ENV (.*?)(?<!\\)$", dockerfile, re.M | re.S)[-1]  # the last stage's
    assert re.search(r"\bFERFLOW_HOST=0\.0\.0\.0\b", runtime_env), runtime_env
    (cmd,) = re.findall(r"^CMD \[.*\]$", dockerfile, re.M)
    assert "--host" not in cmd or '"0.0.0.0"' in cmd  # FERFLOW_HOST decides, or the same host
