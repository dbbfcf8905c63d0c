"""Stopping the whole server when a worker cannot start (a model that does not load).

``bentoml serve`` runs a circus arbiter in its main process and the service in worker processes
it spawns. A worker whose ``FERService.__init__`` raises exits, and the arbiter respawns it at
once, forever (outside containers; inside one, ``respawn`` is off and the arbiter stays up with
no worker): a bad ``FERFLOW_MODEL_URI`` would give a traceback per respawn, many a second, and
a server that never gets ready, while an orchestrator needs a process that exits non-zero.

The arbiter's process imports this service module too (BentoML loads the service before it
starts the arbiter), so it can take part:

- :func:`install` (arbiter side, at import): records its pid in ``FERFLOW_ARBITER_PID`` for
  the workers it will spawn (circus copies the environment), and handles ``SIGUSR2`` from a
  worker: it remembers the failure and sends itself ``SIGTERM``, circus's own graceful stop
  (every worker stopped, sockets and temporary folders cleaned up); at exit the process then
  leaves with :data:`EXIT_STATUS` instead of 0.
- :func:`stop_server` (worker side): logs the reason as one line, signals the arbiter and
  exits at once, without the traceback BentoML would print for each respawn.

A worker only signals a parent whose pid is the recorded one: each process that imports the
module outside a worker records itself, so a value inherited from some other process (one that
imported the service, then started ``bentoml serve``) is replaced before the workers start. With
no such parent the worker falls back to raising, BentoML's behaviour.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from typing import Any

ARBITER_ENV = "FERFLOW_ARBITER_PID"
WORKER_MODULE = "_bentoml_impl.worker.service"  # what BentoML 1.4's arbiter runs per worker
EXIT_STATUS = 1
FAILURE_SIGNAL = signal.SIGUSR2  # circus handles HUP, QUIT, INT, TERM and WINCH only

logger = logging.getLogger("bentoml.ferflow")
_worker_failed = False


def _on_worker_failure(signum: int, frame: Any) -> None:
    global _worker_failed
    if not _worker_failed:
        _worker_failed = True
        os.kill(os.getpid(), signal.SIGTERM)  # circus stops every worker and itself


def _exit_status() -> None:
    """At exit (after circus stopped): the non-zero status a failed start deserves."""
    if _worker_failed:
        logger.error("ferflow: server stopped: a worker could not start (the reason is logged above)")
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(EXIT_STATUS)  # SystemExit raised in an atexit hook would not change the status


def _in_worker() -> bool:
    """Whether this process is a BentoML service worker (``python -m`` :data:`WORKER_MODULE`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == WORKER_MODULE


def _arbiter_is_parent() -> bool:
    """Whether this process's parent is the arbiter that recorded itself (a value inherited from
    some other process that imported the service is not)."""
    arbiter = os.environ.get(ARBITER_ENV, "")
    return arbiter.isdigit() and int(arbiter) == os.getppid()


def install() -> bool:
    """Arbiter side; called when the service module is imported. False where it does nothing:
    in a worker, or off the main thread (signal handlers are the main thread's)."""
    if _in_worker() or threading.current_thread() is not threading.main_thread():
        return False
    os.environ[ARBITER_ENV] = str(os.getpid())
    signal.signal(FAILURE_SIGNAL, _on_worker_failure)
    atexit.register(_exit_status)
    return True


def one_line(exc: BaseException) -> str:
    """An exception as one log line: MLflow and ONNX Runtime messages span several."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    plain = type(exc).__name__ in ("ModelLoadError", "FileNotFoundError")  # they say what failed
    return text if plain else f"{type(exc).__name__}: {text}"


def stop_server(exc: BaseException) -> None:
    """Worker side: log why this worker cannot start, stop the server, exit. Returns only when
    the parent is not a ferflow arbiter; the caller then raises as before."""
    if not (_in_worker() and _arbiter_is_parent()):
        return
    reason = one_line(exc)
    logger.error("ferflow: cannot start: %s; stopping the server (exit status %d)", reason, EXIT_STATUS)
    logging.shutdown()  # flushed before os._exit
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.kill(os.getppid(), FAILURE_SIGNAL)
    os._exit(EXIT_STATUS)  # no traceback, no uvicorn shutdown: nothing was served yet
