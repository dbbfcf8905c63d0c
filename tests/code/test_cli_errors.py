"""Every usage or input mistake through the real ``ferflow`` command: one ``error:`` line on
stderr, exit 2 (usage/input) or 1 (runtime failure), nothing written to the current folder,
and no heavy import before the answer.

Each case runs the console script in a subprocess, in an empty folder, with TensorFlow, MLflow
and BentoML poisoned on PYTHONPATH: a command that imported one of them before checking its
arguments fails the case with that import's message instead of its own one line.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

FERFLOW = Path(sys.executable).with_name("ferflow")
HEAVY = ("tensorflow", "mlflow", "bentoml")
RUN_ID = "0123456789abcdef0123456789abcdef"  # well formed, in no store


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files the commands are pointed at (outside the folder they run in), and the poison."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)  # a file, not a folder
    (root / "faces" / "happy").mkdir(parents=True)
    poison = root / "poison"
    for name in HEAVY:
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(
            f"raise ImportError('{name} imported before the arguments were checked')\n"
        )
    return root


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, poison: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FERFLOW_", "MLFLOW_", "TF_CPP"))}
    if poison is not None:
        base["PYTHONPATH"] = os.pathsep.join([str(poison), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    base.update(env or {})
    return subprocess.run(
        [str(FERFLOW), *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=60
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# (id, arguments, extra environment, exit code); {in} is the inputs folder
CASES = [
    ("ingest-photo-as-folder", "data ingest --format folders {in}/photo.jpg", {}, 2),
    ("ingest-missing-src", "data ingest --format ferplus {in}/nowhere", {}, 2),
    ("ingest-class-set-typo", "data ingest --format folders --class-set ferplus7 {in}/faces", {}, 2),
    ("ingest-format-typo", "data ingest --format folder {in}/faces", {}, 2),
    ("ingest-add-bad-name", "data ingest --add 'Bad Name=x'", {}, 2),
    ("ingest-add-missing", "data ingest --add clinic={in}/nowhere", {}, 2),
    ("validate-class-set-typo", "data validate --class-set ferplus7", {}, 2),
    ("validate-missing-default", "data validate", {}, 2),
    ("stats-missing", "data stats {in}/nowhere", {}, 2),
    ("stats-not-canonical", "data stats {in}/faces", {}, 2),
    ("evaluate-run-uri-typo", "evaluate --model runs:/deadbeef/onnx", {}, 2),
    ("evaluate-alias-no-store", "evaluate --model models:/ferflow@champio", {}, 2),
    ("evaluate-registry-uri-malformed", "evaluate --model models:/ferflow", {}, 2),
    ("evaluate-missing-file", "evaluate --model {in}/nope.onnx", {}, 2),
    ("evaluate-missing-dataset", "evaluate --dataset {in}/nowhere", {}, 2),
    ("evaluate-bad-run-id", "evaluate --track --run-id xyz", {}, 2),
    ("analyze-bad-model-uri", "analyze --model runs:/deadbeef/onnx {in}/photo.jpg", {}, 2),
    ("analyze-bad-smooth", "analyze --smooth soon {in}/photo.jpg", {}, 2),
    ("train-missing-dataset", "train --dataset {in}/nowhere", {}, 2),
    ("train-set-not-a-number", "train --config smoke --set epochs=abc", {}, 2),
    ("train-set-unknown-key", "train --config smoke --set epoch=4", {}, 2),
    ("train-set-no-equals", "train --config smoke --set epochs", {}, 2),
    ("train-unknown-recipe", "train --config nosuchrecipe", {}, 2),
    ("train-study-no-storage", "train --from-study s --dataset {in}/faces --format folders", {}, 2),
    ("tune-zero-trials", "tune --trials 0", {}, 2),
    ("tune-missing-dataset", "tune --dataset {in}/nowhere", {}, 2),
    ("registry-register-bad-id", "registry register deadbeef", {}, 2),
    ("registry-register-no-store", f"registry register {RUN_ID}", {}, 2),
    ("registry-list-no-store", "registry list", {}, 2),
    ("registry-promote-missing-dataset", "registry promote --dataset {in}/nowhere", {}, 2),
    ("registry-promote-negative-margin", "registry promote --margin -1", {}, 2),
    ("serve-port-too-high", "serve --port 70000", {}, 2),
    ("serve-port-zero", "serve --port 0", {}, 2),
    ("serve-workers-zero", "serve --workers 0", {}, 2),
    ("serve-bad-env-number", "serve", {"FERFLOW_THREADS": "many"}, 2),
    ("serve-default-model-missing", "serve", {"FERFLOW_MODEL": "/nonexistent/model.onnx"}, 2),
    ("serve-model-uri-missing-file", "serve", {"FERFLOW_MODEL_URI": "/nonexistent/model.onnx"}, 2),
    ("serve-registry-uri-no-tracking", "serve", {"FERFLOW_MODEL_URI": "models:/ferflow@champion"}, 2),
    (
        "serve-registry-uri-no-store",
        "serve",
        {"FERFLOW_MODEL_URI": "models:/ferflow@champion", "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"},
        2,
    ),
    ("pipeline-model-typo", "pipeline run --model rann", {}, 2),
    ("pipeline-profile-typo", "pipeline run --profile nightly", {}, 2),
    ("pipeline-missing-source", "pipeline run --source {in}/nowhere", {}, 2),
    ("pipeline-epochs-zero", "pipeline run --epochs 0", {}, 2),
    ("pipeline-cron-5-fields", "pipeline schedule --host http://kfp.invalid --cron '30 2 * * *'", {}, 2),
    ("pipeline-bad-node-selector", "pipeline compile --node-selector gpu", {}, 2),
    ("unknown-command", "trian", {}, 2),
    ("unknown-option", "--verbose", {}, 2),
    ("missing-argument", "registry register", {}, 2),
]


@pytest.mark.parametrize(("args", "env", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_is_one_line_with_its_exit_code(
    args: str, env: dict[str, str], code: int, inputs: Path, tmp_path: Path
) -> None:
    import shlex

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    res = run_cli(shlex.split(args.replace("{in}", str(inputs))), cwd, env, poison=inputs / "poison")
    shown = lines(res.stdout) + lines(res.stderr)
    assert res.returncode == code, shown
    assert len(shown) == 1 and lines(res.stderr) == shown, shown
    assert shown[0].startswith("error: "), shown
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in cwd.iterdir()) == []  # no mlflow.db, optuna.db, artifacts/


def test_busy_port_is_a_runtime_failure(inputs: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_cli(
            ["serve", "--host", "127.0.0.1", "--port", str(port)], tmp_path, poison=inputs / "poison"
        )
    assert res.returncode == 1, res.stderr
    assert lines(res.stderr) == [
        f"error: port {port} on 127.0.0.1 is in use (stop the other server, or pass --port N)"
    ]
    assert lines(res.stdout) == [] and list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(inputs: Path, tmp_path: Path) -> None:
    args = ["--debug", "data", "ingest", "--format", "folders", str(inputs / "photo.jpg")]
    res = run_cli(args, tmp_path, poison=inputs / "poison")
    assert res.returncode == 2  # the same exit code as without --debug
    assert res.stderr.startswith("Traceback (most recent call last):")
    assert "is a file, not a folder" in res.stderr.splitlines()[-1]
    same = run_cli(args[1:], tmp_path, {"FERFLOW_DEBUG": "1"}, poison=inputs / "poison")
    assert "Traceback" in same.stderr


def test_unknown_run_in_a_real_store_is_one_line_without_mlflow_logs(tmp_path: Path) -> None:
    """The one case that imports MLflow: its INFO lines (store migrations) must not show."""
    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    uri = f"sqlite:///{store}"
    code = f"from mlflow import MlflowClient; MlflowClient({uri!r}).search_experiments()"
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0 and store.is_file(), made.stderr
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    res = run_cli(["registry", "register", RUN_ID], cwd, {"MLFLOW_TRACKING_URI": uri})
    assert res.returncode == 1, res.stderr
    assert lines(res.stdout) == [] and len(lines(res.stderr)) == 1, res.stderr
    assert res.stderr.startswith(f"error: no MLflow run '{RUN_ID}'")
    assert list(cwd.iterdir()) == []


def test_tensorflow_logs_are_quiet_by_default(tmp_path: Path) -> None:
    code = "import os, ferflow.cli; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "2"
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # a user's own setting wins
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "0"


def test_version_and_python_m(tmp_path: Path) -> None:
    from importlib.metadata import version

    res = run_cli(["--version"], tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == f"ferflow {version('ferflow')}"
    res = subprocess.run(
        [sys.executable, "-m", "ferflow", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "--debug" in res.stdout and "pipeline" in res.stdout
    assert list(tmp_path.iterdir()) == []


def test_choices_are_listed_in_help(tmp_path: Path) -> None:
    res = run_cli(["data", "ingest", "--help"], tmp_path, {"COLUMNS": "200"})
    assert res.returncode == 0
    assert "ferplus8|fer2013|clinical4|valence3" in res.stdout
    res = run_cli(["evaluate", "--help"], tmp_path, {"COLUMNS": "200"})
    assert "models:/NAME@ALIAS" in res.stdout and "runs:/RUN_ID/onnx" in res.stdout


# --- in process: the gate's line, the pipeline summary and its progress -------------------------


def test_gate_failure_line_hints_at_the_ferplus_cleaning(capsys: pytest.CaptureFixture[str]) -> None:
    from ferflow.cli.common import gate_failed

    finding = SimpleNamespace(check="no_leakage")
    report = SimpleNamespace(
        findings=[finding, SimpleNamespace(check="vote_sum")],
        data_docs=None,
        human=lambda: "data gate: FAILED",
    )
    err = gate_failed(report, Path("artifacts/canonical"))
    assert capsys.readouterr().out == "data gate: FAILED\n"  # the full report, on stdout
    assert err.exit_code == 1 and "\n" not in err.message
    assert err.message.startswith("error: data gate FAILED (no_leakage, vote_sum)")
    assert "--leakage drop --drop-bad-votes" in err.message and "nothing written" in err.message
    report.findings = [SimpleNamespace(check="readable")]
    assert "--leakage" not in gate_failed(report).message


def test_summary_table_fits_long_step_names(tmp_path: Path) -> None:
    from pipelines.driver import LocalRun, StepRecord

    run = LocalRun({}, None, tmp_path / "log", 1.0)
    run.steps = {"register-and-promote": StepRecord("register-and-promote", "SUCCESS", 2.0)}
    row = run.render().splitlines()[2]
    assert row.split() == ["register-and-promote", "success", "2.0"]


def test_pipeline_progress_shows_the_running_step_and_its_time(tmp_path: Path) -> None:
    from pipelines.driver import _Progress

    echo, steps = io.StringIO(), {}
    progress = _Progress(io.StringIO(), echo, False, steps, interactive=False, report_every=60)
    progress.write("Executing task 'train-model'\n")
    started = steps["train-model"]._started
    progress.tick(started + 30.5)  # not yet: one line a minute off a terminal
    progress.tick(started + 61.5)
    progress.tick(started + 62.5)
    progress.tick(started + 125.5)
    assert echo.getvalue().splitlines() == [
        "▶ train-model",
        "  train-model: running 1:01",
        "  train-model: running 2:05",
    ]
    tty = io.StringIO()
    live = _Progress(io.StringIO(), tty, False, {}, interactive=True)
    live.write("Executing task 'train-model'\n")
    live.tick(live.steps["train-model"]._started + 3725.5)
    live.write("Task 'train-model' finished with status SUCCESS\n")
    shown = tty.getvalue()
    assert "\r\x1b[K  train-model: running 1:02:05\r\x1b[K  train-model: success (" in shown
    assert shown.endswith(" s)\n")


def test_evaluate_on_a_tree_with_an_unknown_class_names_the_check_and_an_image(tmp_path: Path) -> None:
    from tests.conftest import PHOTOS, ROOT

    tree = tmp_path / "tree"
    photo = sorted(PHOTOS.glob("*.jpg"))[0].read_bytes()
    for folder in ("happiness", "bored"):
        (tree / folder).mkdir(parents=True)
        (tree / folder / f"{folder}.jpg").write_bytes(photo)
    work = tmp_path / "work"
    work.mkdir()
    res = run_cli(["evaluate", "--model", str(ROOT / "models" / "reference"), "--dataset", str(tree)], work)
    assert res.returncode == 2, res.stderr
    (line,) = [x for x in lines(res.stderr) if "reading tree" not in x]  # the rest is a progress bar
    assert line.startswith(f"error: {tree}: data gate failed: label_in_class_set")
    assert "bored/bored.jpg: label 'bored'" in line and "1 offending" in line
    assert list(work.iterdir()) == []
