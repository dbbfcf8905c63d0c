"""Drive the training pipeline: compile it to IR YAML, run it on this machine with
``kfp.local``, or submit and schedule it on a Kubeflow Pipelines cluster.

The pipeline is :mod:`pipelines.training`; its steps are :mod:`components`, whose logic is in
:mod:`ferflow.pipeline`. The CLI (``ferflow pipeline ...``) calls the functions here.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferflow.config import PIPELINE_NAME, ClusterConfig, Paths
from ferflow.pipeline import PipelineError, project_root, tuning_line
from pipelines.training import build_pipeline

# --------------------------------------------------------------------------------------------
# Building and compiling


def load_pipeline(cluster: ClusterConfig | None = None):
    """The training pipeline function of ``pipelines.training``, built for ``cluster``."""
    return build_pipeline(cluster or ClusterConfig())


def compile_pipeline(path: str | Path, cluster: ClusterConfig | None = None) -> Path:
    """Write the IR YAML of the training pipeline to ``path``."""
    from kfp import compiler

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(load_pipeline(cluster), package_path=str(path))
    return path


def read_pipeline_spec(path: str | Path):
    """Parse a compiled IR YAML back into ``PipelineSpec`` (and the platform spec, if any)."""
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    if not docs:
        raise PipelineError(f"{path}: empty pipeline file")
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = None
    if len(docs) > 1:
        platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    return spec, platform


# --------------------------------------------------------------------------------------------
# Local runs (kfp.local)

_TASK_START = re.compile(r"Executing task '([^']+)'")
_TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_CACHE_HIT = re.compile(r"Task (\S+) cache hit")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class StepRecord:
    name: str
    status: str = "running"
    seconds: float = 0.0
    cached: bool = False
    _started: float = 0.0
    _reported: float = 0.0  # elapsed seconds last printed by the progress ticker


@dataclass
class LocalRun:
    """What :func:`run_local` saw: per-step status and time, the summary, the failure."""

    arguments: dict[str, Any]
    run_dir: Path | None
    log_path: Path
    seconds: float
    steps: dict[str, StepRecord] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    error: str | None = None
    failed_step: str | None = None
    gate_report: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None  # the registry gate's decision, when it ran

    @property
    def succeeded(self) -> bool:
        return self.error is None

    def render(self) -> str:
        lines = [f"pipeline {'SUCCEEDED' if self.succeeded else 'FAILED'} in {self.seconds:.1f} s"]
        # as wide as the longest step name and a gap: names are the pipeline's, not fixed here
        width = max([len("step"), *(len(s.name) for s in self.steps.values())]) + 2
        lines.append(f"  {'step':<{width}}{'status':<10}{'seconds':>9}")
        for s in self.steps.values():
            status = "cached" if s.cached else s.status.lower()
            lines.append(f"  {s.name:<{width}}{status:<10}{s.seconds:>9.1f}")
        if self.summary:
            sm = self.summary
            d, m, e = sm["data"], sm["model"], sm["evaluation"]
            nan = float("nan")
            lines += [
                f"data version:  {sm['data_version']} (gate {d.get('gate')}, {d.get('images_kept')} of "
                f"{d.get('images_read')} images kept, splits {d.get('splits')})",
                f"tuning:        {tuning_line(sm.get('tuning') or {})}",
                f"model:         {m.get('model')}, {m.get('epochs_run')} epochs, {m.get('train_seconds')} s "
                f"training on {m.get('device')}",
                f"mlflow run:    {m.get('mlflow_run_id')}",
                f"test accuracy: {e.get('accuracy', nan):.4f}   macro-F1: {e.get('macro_f1', nan):.4f}   "
                f"occluded: {e.get('occluded_accuracy', nan):.4f}   (n = {e.get('n')})",
                f"quality floor: {'passed' if sm['blessed'] else 'NOT passed'} — {sm['reason']}",
            ]
        if self.promotion:
            p = self.promotion
            verdict = "PROMOTED to champion" if p["promoted"] else "not promoted"
            lines.append(f"registry:      {p['registered_model']} v{p['version']} {verdict} — {p['reason']}")
        elif self.summary:
            lines.append("registry:      not registered (below the quality floor)")
        if self.error:
            lines.append(f"failed step:   {self.failed_step or 'unknown'}")
            if self.gate_report:
                lines.append("data gate:     FAILED")
                for f in self.gate_report.get("findings", []):
                    named = ", ".join((f.get("details") or f.get("sources") or [])[:5])
                    lines.append(f"  {f['check']}: {f['description']} — {f['count']} offending: {named}")
            lines.append(f"error:         {self.error}")
        if self.run_dir is not None:
            lines.append(f"outputs:       {self.run_dir}")
        lines.append(f"log:           {self.log_path}")
        return "\n".join(lines)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


class _Progress(io.TextIOBase):
    """Tee for kfp.local's output: everything to the log file, step lines to ``echo``.

    Without ``verbose`` the user sees one line per step start and end, and, from :meth:`tick`,
    the running step's elapsed time: on a terminal one line updated in place, elsewhere (CI
    logs) a line every ``report_every`` seconds, so a long training step is never silent.
    """

    def __init__(
        self,
        log,
        echo,
        verbose: bool,
        steps: dict[str, StepRecord],
        interactive: bool | None = None,
        report_every: float = 60.0,
    ):
        self.log, self.echo, self.verbose, self.steps = log, echo, verbose, steps
        self._buf = ""
        self.interactive = _isatty(echo) if interactive is None else interactive
        self.report_every = report_every
        self._lock = threading.Lock()  # the ticker thread and kfp.local's output share ``echo``
        self._status_shown = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.verbose:
            self.echo.write(text)
            self.echo.flush()
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def _line(self, line: str) -> None:
        now = time.perf_counter()
        if m := _TASK_START.search(line):
            self.steps[m[1]] = StepRecord(m[1], _started=now)
            self._say(f"▶ {m[1]}")
        elif m := _CACHE_HIT.search(line):  # cached steps are never "executed"
            self.steps[m[1]] = StepRecord(m[1], status="SUCCESS", cached=True)
            self._say(f"  {m[1]}: cached")
        elif m := _TASK_END.search(line):
            step = self.steps.setdefault(m[1], StepRecord(m[1], _started=now))
            step.status, step.seconds = m[2], now - step._started
            tag = "cached" if step.cached else m[2].lower()
            self._say(f"  {m[1]}: {tag} ({step.seconds:.1f} s)")

    def _say(self, text: str) -> None:
        if not self.verbose:
            with self._lock:
                self._clear_status()
                self.echo.write(text + "\n")
                self.echo.flush()

    def _clear_status(self) -> None:
        if self._status_shown:
            self.echo.write("\r\x1b[K")
            self._status_shown = False

    def tick(self, now: float | None = None) -> None:
        """Show the running step's elapsed time (called every second by :func:`_ticking`)."""
        # list(): one C-level copy under the GIL, safe while kfp.local's thread adds steps
        running = [s for s in list(self.steps.values()) if s.status == "running" and not s.cached]
        if self.verbose or not running:
            return
        step = running[-1]
        elapsed = (time.perf_counter() if now is None else now) - step._started
        with self._lock:
            if self.interactive:
                self.echo.write(f"\r\x1b[K  {step.name}: running {_clock(elapsed)}")
                self._status_shown = True
            elif elapsed - step._reported >= self.report_every:
                step._reported = elapsed
                self.echo.write(f"  {step.name}: running {_clock(elapsed)}\n")
            else:
                return
            self.echo.flush()

    def close_status(self) -> None:
        with self._lock:
            self._clear_status()
            self.echo.flush()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


@contextlib.contextmanager
def _ticking(progress: _Progress, period: float = 1.0) -> Iterator[None]:
    """A daemon thread calling ``progress.tick()`` every ``period`` seconds while the body runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period):
            progress.tick()

    thread = threading.Thread(target=loop, name="ferflow-pipeline-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        progress.close_status()


class _LogHandler(logging.Handler):
    def __init__(self, stream: _Progress):
        super().__init__(logging.INFO)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write(self.format(record) + "\n")


@contextlib.contextmanager
def _capture(progress: _Progress) -> Iterator[None]:
    """kfp.local logs through the root logger (handlers it installs on sys.stdout) and
    ``print``; route both through ``progress``. Cache hits are logged outside its context."""
    root = logging.getLogger()
    handler = _LogHandler(progress)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(progress):
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def run_local(
    arguments: dict[str, Any],
    pipeline_root: str | Path | None = None,
    cache: bool = True,
    verbose: bool = False,
    echo=None,
) -> LocalRun:
    """Run the training pipeline on this machine with ``kfp.local.SubprocessRunner``.

    Steps run as subprocesses of this interpreter (the ferflow venv, ``use_venv=False``); with
    ``cache`` an unchanged step is served from ``pipeline_root/.kfp_cache``. Never raises for a
    failed step: the returned :class:`LocalRun` says which step failed and why.
    """
    from kfp import local

    echo = echo or sys.stdout
    root = project_root()
    os.environ.setdefault("FERFLOW_HOME", str(root))  # the step subprocesses inherit it
    pipeline_root = Path(pipeline_root or Paths(root).artifacts / "pipeline").resolve()
    (pipeline_root / "logs").mkdir(parents=True, exist_ok=True)
    log_path = pipeline_root / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}.log"
    pipeline = load_pipeline(ClusterConfig(retries=0))  # local failures are not transient
    local.init(
        local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        enable_caching=cache,
        raise_on_error=True,
    )
    steps: dict[str, StepRecord] = {}
    error = None
    started = time.perf_counter()
    wall_start = time.time()
    with log_path.open("w") as log, warnings.catch_warnings():
        # kfp.local warns that the ferflow image is not used and cluster settings are ignored:
        # both expected with SubprocessRunner(use_venv=False)
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="kfp.local")
        warnings.filterwarnings("ignore", category=UserWarning, module="kfp.local")
        progress = _Progress(log, echo, verbose, steps)
        with _capture(progress), _ticking(progress):
            try:
                pipeline(**arguments)
            except RuntimeError as exc:
                error = _ANSI.sub("", str(exc))
    run = LocalRun(
        arguments, _run_dir(pipeline_root, wall_start), log_path, time.perf_counter() - started, steps
    )
    run.error = error
    _collect(run)
    return run


def _run_dir(pipeline_root: Path, since: float) -> Path | None:
    runs = [
        p for p in pipeline_root.glob(f"{PIPELINE_NAME}-*") if p.is_dir() and p.stat().st_mtime >= since - 1
    ]
    return max(runs, key=lambda p: p.name) if runs else None


def _collect(run: LocalRun) -> None:
    if run.run_dir is None:
        return
    out = run.run_dir / "summarize-run" / "executor_output.json"
    if out.is_file():
        params = json.loads(out.read_text()).get("parameterValues", {})
        if "Output" in params:
            run.summary = json.loads(params["Output"])
    decision = run.run_dir / "register-and-promote" / "executor_output.json"
    if decision.is_file():
        params = json.loads(decision.read_text()).get("parameterValues", {})
        if "Output" in params:
            run.promotion = json.loads(params["Output"])
    if run.error:
        failed = [s.name for s in run.steps.values() if s.status.upper() == "FAILURE"]
        run.failed_step = failed[0] if failed else None
        gate = run.run_dir / "pull-and-ingest" / "data_docs" / "summary.json"
        if gate.is_file():
            report = json.loads(gate.read_text())
            if not report.get("passed", True):
                run.gate_report = report


# --------------------------------------------------------------------------------------------
# A cluster: kfp.Client

_CRON_FIELDS = 6


def validate_cron(expr: str) -> str:
    """KFP's scheduler takes 6-field cron (``second minute hour day month weekday``)."""
    fields = expr.split()
    if len(fields) != _CRON_FIELDS:
        hint = f" — for a 5-field crontab prepend the seconds: '0 {expr}'" if len(fields) == 5 else ""
        raise PipelineError(
            f"cron {expr!r} has {len(fields)} fields; Kubeflow needs 6 "
            f"(second minute hour day-of-month month day-of-week, e.g. '0 0 3 * * *'){hint}"
        )
    return expr


def client(host: str, namespace: str | None = None, token: str | None = None):
    """A ``kfp.Client`` for ``host`` (in-cluster ServiceAccount tokens are picked up by kfp)."""
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)


@contextlib.contextmanager
def _package(package: str | Path | None, cluster: ClusterConfig | None) -> Iterator[str]:
    if package is not None:
        if not Path(package).is_file():
            raise PipelineError(f"pipeline package {package} does not exist")
        yield str(package)
        return
    with tempfile.TemporaryDirectory(prefix="ferflow-kfp-") as tmp:
        yield str(compile_pipeline(Path(tmp) / f"{PIPELINE_NAME}.yaml", cluster))


def submit(
    host: str,
    arguments: dict[str, Any],
    experiment: str = "ferflow",
    run_name: str | None = None,
    namespace: str | None = None,
    package: str | Path | None = None,
    cluster: ClusterConfig | None = None,
    kfp_client=None,
) -> str:
    """Create one run of the training pipeline on the KFP API at ``host``; returns the run id."""
    kfp_client = kfp_client or client(host, namespace)
    with _package(package, cluster) as path:
        result = kfp_client.create_run_from_pipeline_package(
            path,
            arguments=arguments,
            run_name=run_name
            or f"{PIPELINE_NAME} {arguments.get('profile', '')} {time.strftime('%Y-%m-%d %H-%M-%S')}",
            experiment_name=experiment,
            namespace=namespace,
        )
    return result.run_id


def schedule(
    host: str,
    cron: str,
    arguments: dict[str, Any],
    experiment: str = "ferflow",
    name: str | None = None,
    namespace: str | None = None,
    max_concurrency: int = 1,
    catchup: bool = False,
    package: str | Path | None = None,
    cluster: ClusterConfig | None = None,
    kfp_client=None,
):
    """Create a recurring run (KFP ``RecurringRun``) of the training pipeline on a cron schedule."""
    validate_cron(cron)
    kfp_client = kfp_client or client(host, namespace)
    exp = kfp_client.create_experiment(name=experiment, namespace=namespace)
    with _package(package, cluster) as path:
        return kfp_client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=name or f"{PIPELINE_NAME}-{arguments.get('profile', 'run')}",
            description=f"scheduled retraining ({cron}), profile {arguments.get('profile')}",
            cron_expression=cron,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            params=arguments,
            pipeline_package_path=path,
        )
