"""A request's first stop in a worker (pure ASGI): body deadline, limits, concurrency, request
ids and one error shape.

- Bodies first. A request body (on the paths given limits) is read in full before the request
  counts toward ``max_concurrency``, within ``body_timeout_s`` (else 408) and within its byte
  limit (413, from Content-Length before reading, else while reading). A client that trickles
  its upload, or declares more bytes than it sends, then holds a coroutine and its own bytes
  for at most the deadline: never a concurrency slot, a CPU slot or a thread. BentoML's own
  ``max_concurrency`` counts a request from its first byte, so the service leaves it unset and
  this gate applies the limit instead (429 beyond it; probes and metrics are never limited).
- Handlers: a path may have an async handler that takes the received body instead of the app
  (``/classify_batch``: :mod:`serving.classify_batch`).
- Request ids: each response carries ``X-Request-ID`` (the client's, when it sent a plain one,
  else a new one). Every error answer is JSON ``{"error", "status", "type", "request_id"}``,
  whichever layer produced it (FastAPI, BentoML's API handler, Starlette's 404 and 500 pages);
  a 5xx is logged with the same id, and an exception that escaped the app is logged with its
  traceback under that id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

logger = logging.getLogger("bentoml.ferflow")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
# (app, scope, body, send): answers the request from its received body
Handler = Callable[[App, Scope, bytes, Send], Awaitable[None]]

CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def error_kind(status: int) -> str:
    """``NotFound`` for 404: the ``type`` of an error no handler named."""
    try:
        return "".join(w.capitalize() for w in HTTPStatus(status).phrase.replace("-", " ").split())
    except ValueError:
        return "HTTPError"


def internal_error(request_id: str) -> str:
    return f"internal error; the server log has the details under request id {request_id}"


def error_body(status: int, message: str, kind: str, request_id: str) -> bytes:
    return json.dumps({"error": message, "status": status, "type": kind, "request_id": request_id}).encode()


async def send_error(
    send: Send, status: int, message: str, kind: str, request_id: str, close: bool = False
) -> None:
    body = error_body(status, message, kind, request_id)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"x-request-id", request_id.encode()))
    if close:  # the rest of the body was never read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value
    return None


class ErrorShaper:
    """``send`` for the app: adds ``X-Request-ID`` to every response and rewrites error
    answers (buffered: they are small) into the common JSON shape."""

    def __init__(self, send: Send, scope: Scope, request_id: str) -> None:
        self.send = send
        self.scope = scope
        self.request_id = request_id
        self.started = False  # a response start went out to the client
        self._error: Message | None = None
        self._body = bytearray()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            headers.append((b"x-request-id", self.request_id.encode()))
            message = {**message, "headers": headers}
            if message["status"] >= 400:
                self._error = message
                return
            self.started = True
        elif message["type"] == "http.response.body" and self._error is not None:
            self._body += message.get("body", b"")
            if message.get("more_body"):
                return
            await self._send_error()
            return
        await self.send(message)

    def _reshape(self, status: int, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        doc: Any = None
        if b"json" in ctype:
            try:
                doc = json.loads(self._body)
            except ValueError:
                doc = None
        if isinstance(doc, list) and len(doc) == 1:  # BentoML's 4xx body is a 1-tuple
            doc = doc[0]
        if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
            text = self._body.decode("utf-8", "replace").strip()
            doc = {"error": text[:500] or HTTPStatus(status).phrase}
        if status >= 500 and "server log" in doc["error"]:
            doc["error"] = internal_error(self.request_id)
        doc["status"] = status
        doc.setdefault("type", error_kind(status))
        doc["request_id"] = self.request_id
        return doc

    async def _send_error(self) -> None:
        assert self._error is not None
        status = self._error["status"]
        kept = [
            (k, v)
            for k, v in self._error["headers"]
            if k.lower() not in (b"content-type", b"content-length", b"transfer-encoding")
        ]
        doc = self._reshape(status, self._error["headers"])
        if status >= 500:
            logger.error(
                "ferflow: %s %s answered %d (request id %s): %s",
                self.scope.get("method"),
                self.scope.get("path"),
                status,
                self.request_id,
                doc["error"],
            )
        body = json.dumps(doc).encode()
        kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        self.started = True
        await self.send({**self._error, "headers": kept})
        await self.send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class GateConfig:
    body_limits: Mapping[str, int]  # path -> most bytes of its body; bodies read up front
    body_timeout_s: float
    max_concurrency: int
    unlimited_paths: frozenset[str] = frozenset()  # probes and metrics: never refused
    handlers: Mapping[str, Handler] = field(default_factory=dict)
    # Whether the gate may read a request's body: False (a wrong API key) leaves it to the app,
    # which refuses the request without reading it.
    may_read: Callable[[Scope], bool] = lambda scope: True


class RequestGate:
    def __init__(self, app: App, config: GateConfig) -> None:
        self.app = app
        self.config = config
        self.active = 0  # requests past the gate, bodies received

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given.decode() if given and CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        reply = ErrorShaper(send, scope, request_id)
        try:
            await self._handle(scope, receive, reply, request_id)
        except Exception:
            logger.exception(
                "ferflow: %s %s failed (request id %s)", scope.get("method"), scope.get("path"), request_id
            )
            if not reply.started:
                await send_error(send, 500, internal_error(request_id), "InternalServerError", request_id)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        path = scope["path"]
        if path in self.config.unlimited_paths:
            await self.app(scope, receive, send)
            return
        limit = self.config.body_limits.get(path) if scope.get("method") in BODY_METHODS else None
        body = None
        if limit is not None and self.config.may_read(scope):
            body = await self._read_body(scope, receive, send, limit, request_id)
            if body is None:  # answered (408, 413, 400), or the client went away
                return
            receive = replay_body(body, receive)
        if self.active >= self.config.max_concurrency:
            message = f"too many requests in progress (limit {self.config.max_concurrency}); retry later"
            await send_error(send, 429, message, "TooManyRequests", request_id)
            return
        self.active += 1
        try:
            handler = self.config.handlers.get(path)
            if handler is not None and body is not None:
                await handler(self.app, scope, body, send)
            else:
                await self.app(scope, receive, send)
        finally:
            self.active -= 1

    async def _read_body(
        self, scope: Scope, receive: Receive, send: Send, limit: int, request_id: str
    ) -> bytes | None:
        """The whole body, or None once answered: 413 over ``limit`` (declared or sent), 408
        when it has not all arrived within the deadline, 400 for a malformed Content-Length."""
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                message = f"malformed Content-Length header {declared.decode('latin-1')[:40]!r}"
                await send_error(send, 400, message, "InferenceError", request_id, close=True)
                return None
            if int(declared) > limit:
                message = f"request body of {int(declared):,} bytes exceeds the limit of {limit:,} bytes"
                await send_error(send, 413, message, "PayloadTooLarge", request_id, close=True)
                return None
        chunks: list[bytes] = []
        size = 0
        timeout = self.config.body_timeout_s
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        text = f"request body exceeds the limit of {limit:,} bytes"
                        await send_error(send, 413, text, "PayloadTooLarge", request_id, close=True)
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            expected = f" of {int(declared):,}" if declared is not None else ""
            text = f"request body not received within {timeout:g} s ({size:,}{expected} bytes arrived)"
            await send_error(send, 408, text, "RequestTimeout", request_id, close=True)
            return None


def replay_body(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app: the body already read, then the client's own messages
    (a disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
