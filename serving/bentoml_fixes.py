"""Fixes for BentoML 1.4, applied when the service module loads.

1. The request-timeout middleware's timers.

``bentoml._internal.server.http.traffic.TimeoutMiddleware`` arms ``loop.call_later(timeout, …)``
for every HTTP request and never cancels it. Until the timer fires (``traffic.timeout`` later,
60 s here), the handle keeps the request's waiter future and its ``contextvars`` context alive,
and with it the request's OpenTelemetry span: about 5 KB per request. Under load, memory then
grows by (requests per second × timeout × 5 KB) and only levels off after ``timeout`` seconds.
Measured on ``GET /livez``: +64 MB per 15,000 requests, with one ``_Span``, one ``Future`` and
one ``TimerHandle`` alive per request served in the last minute.

The replacement ``__call__`` below does the same thing and cancels the timer when the request
ends. Cancelling a handle drops its callback and arguments at once. Its 504 answer has the
service's error shape.

2. The adaptive batcher's wait estimate. ``bentoml._internal.marshal.dispatcher.Optimizer``
averages, over its last 50 batches, the time each batch's first job waited before the batch
started, and the dispatcher then holds a lone request until it has waited about that long (to
let a batch fill). Time a job spends queued behind *other batches* counts too, and it feeds
itself: after one request of 5,000 crops (split into jobs of 64 that all carry the request's
arrival time) the average was ~3 s, so lone requests were held ~3 s, recorded ~3 s of wait,
and kept the average there for minutes. :func:`_log_outbound` records at most the batch's own
run time as its wait: holding a request longer than one batch takes to run never pays off.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import JSONResponse


async def _timeout_call(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: dict[str, Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            message = f"no answer within {self.timeout} seconds"
            resp = JSONResponse({"error": message, "status": 504, "type": "GatewayTimeout"}, status_code=504)
            await resp(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


def _log_outbound(self: Any, n: int, wait: float, duration: float) -> None:
    _UPSTREAM_LOG(self, n=n, wait=min(wait, duration), duration=duration)


_UPSTREAM: Any = None
_UPSTREAM_LOG: Any = None


def upstream_call() -> Any:
    """BentoML's own ``TimeoutMiddleware.__call__`` (before :func:`apply`), or None."""
    try:
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError:
        return None
    return _UPSTREAM or TimeoutMiddleware.__dict__.get("__call__")


def upstream_log_outbound() -> Any:
    """BentoML's own ``Optimizer.log_outbound`` (before :func:`apply`), or None."""
    try:
        from bentoml._internal.marshal.dispatcher import Optimizer
    except ImportError:
        return None
    return _UPSTREAM_LOG or Optimizer.__dict__.get("log_outbound")


def apply() -> bool:
    """Patch the classes in place; returns False when BentoML no longer has them."""
    global _UPSTREAM, _UPSTREAM_LOG
    try:
        from bentoml._internal.marshal.dispatcher import Optimizer
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError:  # a BentoML without these modules: nothing to fix
        return False
    if TimeoutMiddleware.__dict__.get("__call__") is not _timeout_call:
        _UPSTREAM = TimeoutMiddleware.__dict__.get("__call__")
        TimeoutMiddleware.__call__ = _timeout_call
    if Optimizer.__dict__.get("log_outbound") is not _log_outbound:
        _UPSTREAM_LOG = Optimizer.__dict__.get("log_outbound")
        Optimizer.log_outbound = _log_outbound
    return True
