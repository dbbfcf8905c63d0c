"""HTTP upload handling for the service: bounded body reads and strict in-memory multipart.

Starlette's form parser spools files over 1 MB to temporary files and turns a malformed body
into a 500 inside BentoML; uploads here stay in memory (images are never written to disk)
and every fault becomes an :class:`ferflow.inference.InferenceError` with a 4xx status and a
message naming the field at fault.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ferflow.inference import InferenceError, PayloadTooLarge, UnsupportedFormat

MULTIPART = "multipart/form-data"
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers allowed on top of the image bytes
MAX_EXTRA_PARTS = 8  # form fields besides the images (a client may add e.g. a name)
MAX_PART_HEADER_BYTES = 8 * 1024


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes

    @property
    def label(self) -> str:
        """How error messages name this part: ``image`` or ``image (face.png)``."""
        return f"{self.name} ({self.filename})" if self.filename else self.name


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading it when the
    Content-Length says so, and while reading otherwise (chunked uploads)."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise InferenceError(f"malformed Content-Length header {content_length!r}") from None
        if declared > limit:
            raise PayloadTooLarge(f"request body of {declared:,} bytes exceeds the limit of {limit:,} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit:,} bytes")
        parts.append(chunk)
    # A body that serving.gate already received arrives as one chunk: join returns that very
    # object, so a 200 MB video is not copied again.
    return b"".join(parts)


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary, or a 4xx saying what the Content-Type should be."""
    hint = "send multipart/form-data with the image in the field 'image' (curl -F image=@photo.jpg)"
    if not content_type:
        raise UnsupportedFormat(f"missing Content-Type header; {hint}")
    media, params = parse_options_header(content_type)
    media_type = media.decode("latin-1").lower()
    if media_type != MULTIPART:
        raise UnsupportedFormat(f"Content-Type {media_type or content_type!r} is not accepted; {hint}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InferenceError("malformed multipart request: the Content-Type has no boundary parameter")
    if len(boundary) > 200:
        raise InferenceError("malformed multipart request: boundary longer than 200 characters")
    return boundary


def parse_multipart(body: bytes, content_type: str | None, max_parts: int) -> list[Part]:
    """All parts of a ``multipart/form-data`` body, parsed in memory."""
    boundary = boundary_of(content_type)
    if not body:
        raise InferenceError("empty request body: expected a multipart form with the field 'image'")
    parts: list[Part] = []
    headers: dict[str, str] = {}
    state = {"field": b"", "value": b"", "data": bytearray(), "header_bytes": 0, "ended": False}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]
        state["header_bytes"] += end - start

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]
        state["header_bytes"] += end - start
        if state["header_bytes"] > MAX_PART_HEADER_BYTES:
            raise InferenceError(
                f"malformed multipart request: part headers over {MAX_PART_HEADER_BYTES} bytes"
            )

    def on_header_end() -> None:
        headers[state["field"].decode("latin-1").lower()] = state["value"].decode("latin-1")
        state["field"], state["value"] = b"", b""

    def on_part_begin() -> None:
        headers.clear()
        state["data"] = bytearray()
        state["header_bytes"] = 0

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"] += data[start:end]

    def on_part_end() -> None:
        if len(parts) >= max_parts:
            raise InferenceError(f"too many parts in the multipart body (at most {max_parts})")
        disposition, options = parse_options_header(headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in options:
            raise InferenceError(
                "malformed multipart request: a part has no 'Content-Disposition: form-data; name=...' header"
            )
        filename = options.get(b"filename")
        parts.append(
            Part(
                name=options[b"name"].decode("utf-8", "replace"),
                filename=filename.decode("utf-8", "replace") if filename is not None else None,
                content_type=headers.get("content-type"),
                data=bytes(state["data"]),
            )
        )

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise InferenceError(f"malformed multipart request: {exc}") from None
    if not state["ended"]:
        raise InferenceError(
            "malformed multipart request: the body does not end with the closing boundary "
            "(truncated upload, or a boundary different from the Content-Type's)"
        )
    return parts


def image_parts(parts: list[Part], field: str, max_images: int) -> list[Part]:
    """The parts named ``field``; at least one, at most ``max_images``."""
    found = [p for p in parts if p.name == field]
    if not found:
        names = sorted({p.name for p in parts})
        got = f"fields {names}" if names else "no fields"
        raise InferenceError(
            f"the multipart form has no field '{field}' (got {got}); put the image in '{field}'"
        )
    if len(found) > max_images:
        more = (
            "; send one image per request to /predict, or several to /predict_batch"
            if max_images == 1
            else ""
        )
        raise PayloadTooLarge(f"{len(found)} files in field '{field}', at most {max_images} allowed{more}")
    return found
