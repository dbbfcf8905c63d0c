"""``POST /classify_batch`` in front of BentoML's batchable API: validated, bounded, chunked.

BentoML parses a batchable API's body itself and answers 500 to what it cannot convert
(strings in the array, a multipart body), wraps out-of-range values into uint8 silently, and
accepts any number of crops. Its adaptive dispatcher then splits a large request into jobs of
``max_batch_size`` that all carry the request's arrival time, so the time they queue behind
one another enters its estimate of how long to hold a request for a batch: after one
5,000-crop request, lone requests were held ~3 s for minutes.

This handler (run by :class:`serving.gate.RequestGate` with the body already received and
bounded in bytes) parses and checks the crops first, answering 4xx that name the fault, then
sends them to BentoML's endpoint in chunks of at most ``max_batch_size`` crops, one after the
other: each chunk is one fresh job, so the dispatcher only ever sees its own batching delay.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import numpy as np

from ferflow.config import IMAGE_SIZE
from ferflow.inference import InferenceError, PayloadTooLarge, UnsupportedFormat
from serving.gate import App, Message, Scope, Send, replay_body, send_error
from serving.memory import trim

SHAPE_HINT = f'send {{"faces": [crop, ...]}}, each crop {IMAGE_SIZE} rows of {IMAGE_SIZE} integers 0..255'
TRIM_AFTER_FACES = 256  # a request this large leaves parsed lists behind: hand the memory back


def _first_fault(faces: list[Any]) -> str:
    """Where ``faces`` is not a list of 48x48 integers 0..255 (the slow path, errors only)."""
    for i, crop in enumerate(faces):
        if not isinstance(crop, list) or len(crop) != IMAGE_SIZE:
            got = f"{len(crop)} rows" if isinstance(crop, list) else type(crop).__name__
            return f"faces[{i}]: expected {IMAGE_SIZE} rows, got {got}"
        for r, row in enumerate(crop):
            if not isinstance(row, list) or len(row) != IMAGE_SIZE:
                got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
                return f"faces[{i}][{r}]: expected {IMAGE_SIZE} values, got {got}"
            for c, v in enumerate(row):
                if type(v) is not int or not 0 <= v <= 255:
                    return f"faces[{i}][{r}][{c}]: {json.dumps(v)[:40]} is not an integer in 0..255"
    return "faces: not an array of 48x48 crops"


def parse_faces(body: bytes, max_faces: int) -> np.ndarray:
    """``(N, 48, 48) uint8`` from ``{"faces": [...]}``, or an :class:`InferenceError`."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InferenceError(f"malformed JSON body ({exc}); {SHAPE_HINT}") from None
    if not isinstance(doc, dict) or "faces" not in doc:
        raise InferenceError(f"the JSON body has no field 'faces'; {SHAPE_HINT}")
    faces = doc["faces"]
    if not isinstance(faces, list):
        raise InferenceError(f"'faces' is {type(faces).__name__}, not an array; {SHAPE_HINT}")
    if not faces:
        raise InferenceError(f"'faces' is empty; {SHAPE_HINT}")
    if len(faces) > max_faces:
        raise PayloadTooLarge(f"{len(faces):,} faces in one request; at most {max_faces:,}")
    try:
        arr = np.array(faces)
    except (ValueError, OverflowError):  # ragged nesting
        raise InferenceError(_first_fault(faces)) from None
    shape_ok = arr.shape == (len(faces), IMAGE_SIZE, IMAGE_SIZE)
    if not shape_ok or arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
        raise InferenceError(_first_fault(faces))  # also JSON true/false and floats
    return arr.astype(np.uint8)


async def _call(app: App, scope: Scope, body: bytes) -> tuple[int, bytes]:
    """The app's answer to ``body`` sent as this request's JSON body: (status, body)."""
    headers = [
        (k, v) for k, v in scope.get("headers") or () if k.lower() not in (b"content-type", b"content-length")
    ]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    sub = {**scope, "headers": headers}
    answered = anyio.Event()
    status, out = 500, bytearray()

    async def disconnect_when_answered() -> Message:
        await answered.wait()  # nothing else to read: a "disconnect" once the answer is in
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            out.extend(message.get("body", b""))
            if not message.get("more_body"):
                answered.set()

    await app(sub, replay_body(body, disconnect_when_answered), send)
    return status, bytes(out)


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _encode(faces: np.ndarray) -> bytes:
    return json.dumps({"faces": faces.tolist()}, separators=(",", ":")).encode()


def handler(max_faces: int, chunk: int) -> Any:
    """The gate handler for ``/classify_batch``: at most ``max_faces`` crops per request, sent
    on in chunks of ``chunk`` (BentoML's ``max_batch_size`` for the API)."""

    async def classify_batch(app: App, scope: Scope, body: bytes, send: Send) -> None:
        request_id = scope.get("state", {}).get("request_id", "")
        ctype = next((v for k, v in scope.get("headers") or () if k.lower() == b"content-type"), b"")
        media = ctype.split(b";")[0].strip().lower().decode("latin-1")
        try:
            if media not in ("", "application/json"):
                hint = f"{SHAPE_HINT} as application/json"
                raise UnsupportedFormat(f"Content-Type {media!r} is not accepted; {hint}")
            faces = await anyio.to_thread.run_sync(parse_faces, body, max_faces)
        except InferenceError as exc:
            await send_error(send, exc.status_code, exc.message, type(exc).__name__, request_id)
            return
        del body
        rows: list[Any] = []
        for start in range(0, len(faces), chunk):
            part = await anyio.to_thread.run_sync(_encode, faces[start : start + chunk])
            status, out = await _call(app, scope, part)
            if status != 200:  # the gate's shaper gives it the common error shape
                await _send_json(send, status, out)
                return
            rows.extend(json.loads(out))
        await _send_json(send, 200, json.dumps(rows).encode())
        if len(faces) >= TRIM_AFTER_FACES:
            await anyio.to_thread.run_sync(trim)

    return classify_batch
