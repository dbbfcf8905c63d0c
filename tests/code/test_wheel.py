"""The built wheel works outside the checkout: it compiles the pipeline and serves the model.

The wheel goes into a fresh venv in a temporary folder. Its third-party dependencies come from
the project venv's site-packages, added as a plain path: that folder's ``.pth`` files (among
them the editable install of this checkout) are not processed, so ``ferflow``, ``components``,
``pipelines`` and ``serving`` can only be imported from the wheel.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ferflow", "components", "pipelines", "serving")


def _uv() -> str:
    uv = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    assert Path(uv).is_file(), "no uv on PATH or in .tools/bin (make setup installs it)"
    return uv


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "UV_PYTHON": sys.executable}
    subprocess.run([_uv(), "build", "--wheel", "-o", str(tmp / "dist"), str(ROOT)], check=True, env=env)
    (wheel,) = (tmp / "dist").glob("ferflow-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    subprocess.run([_uv(), "pip", "install", "--python", str(python), "--no-deps", str(wheel)], check=True)
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return tmp / "venv"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERFLOW_", "MLFLOW_", "PYTHONPATH"))}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _ferflow(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The wheel's ``ferflow`` command, run outside the checkout."""
    cmd = [str(venv / "bin" / "ferflow"), *args]
    return subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=300)


def test_packages_import_from_the_wheel_not_the_checkout(venv, tmp_path):
    code = f"import importlib; print(*(importlib.import_module(p).__file__ for p in {PACKAGES!r}))"
    out = subprocess.check_output(
        [str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=_clean_env(), text=True
    )
    files = out.split()
    assert len(files) == len(PACKAGES)
    assert all(Path(f).is_relative_to(venv) for f in files), files


def test_pipeline_compiles_from_the_wheel(venv, tmp_path):
    out = tmp_path / "pipeline.yaml"
    proc = _ferflow(venv, tmp_path, "pipeline", "compile", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pipeline 'ferflow-training'" in proc.stdout
    assert "pull-and-ingest" in out.read_text()


def test_named_recipes_ship_in_the_wheel(venv, tmp_path):
    proc = _ferflow(venv, tmp_path, "train", "--config", "reference", "--print-recipe")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "width: 40\n" in proc.stdout and "experiment: ferflow-reference\n" in proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_from_the_wheel_answers_with_the_packaged_reference_model(venv, tmp_path):
    port = _free_port()
    cmd = [str(venv / "bin" / "ferflow"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "server.log"
    env = _clean_env(BENTOML_HOME=str(tmp_path / "bentoml"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"server not ready in 120 s:\n{log.read_text()[-3000:]}")
        model = httpx.get(url + "/model", timeout=30).json()
        assert model["name"] == "reference"
        photo = sorted((ROOT.parent / "shared" / "samples" / "photos").glob("*.jpg"))[0]
        answer = httpx.post(url + "/predict", files={"image": photo.read_bytes()}, timeout=60)
        assert answer.status_code == 200, answer.text
        faces = answer.json()["faces"]
        assert faces and abs(sum(faces[0]["scores"].values()) - 1.0) < 1e-3
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
