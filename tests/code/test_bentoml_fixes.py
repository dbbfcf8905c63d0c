"""BentoML's request-timeout middleware, as patched by serving.bentoml_fixes.

Upstream arms a timer per request and never cancels it, so each request's objects stay alive
for the whole timeout (60 s): the soak's RSS growth. These tests run the middleware on a plain
asyncio loop and look at the loop's own timer heap.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("bentoml")
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from serving import bentoml_fixes


async def ok_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope, receive, send) -> None:
    await asyncio.sleep(5)


async def receive() -> dict:
    return {"type": "http.request", "body": b""}


def run(app, timeout: float) -> tuple[list[dict], int]:
    """Messages sent, and timers still armed on the loop after 50 requests."""

    async def main() -> tuple[list[dict], int]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        middleware = TimeoutMiddleware(app, timeout=timeout)
        for _ in range(50):
            await middleware({"type": "http"}, receive, send)
        loop = asyncio.get_running_loop()
        armed = sum(not h.cancelled() for h in loop._scheduled)  # asyncio's timer heap
        return sent, armed

    return asyncio.run(main())


def test_upstream_middleware_leaves_one_timer_per_request(monkeypatch) -> None:
    # the bug the patch exists for: run the class as BentoML ships it (patch undone)
    upstream = bentoml_fixes.upstream_call()
    if upstream is None:
        pytest.skip("this BentoML has no TimeoutMiddleware.__call__ of its own")
    monkeypatch.setattr(TimeoutMiddleware, "__call__", upstream)
    _, armed = run(ok_app, timeout=60)
    assert armed == 50


def test_patched_middleware_cancels_each_timer_when_the_request_ends(monkeypatch) -> None:
    monkeypatch.setattr(TimeoutMiddleware, "__call__", bentoml_fixes._timeout_call)
    sent, armed = run(ok_app, timeout=60)
    assert armed == 0
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 50


def test_patched_middleware_still_answers_504_on_timeout(monkeypatch) -> None:
    monkeypatch.setattr(TimeoutMiddleware, "__call__", bentoml_fixes._timeout_call)

    async def main() -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        await TimeoutMiddleware(slow_app, timeout=0.05)({"type": "http"}, receive, send)
        return sent

    sent = asyncio.run(main())
    assert sent[0]["status"] == 504
    assert b"0.05 seconds" in sent[1]["body"]
