"""Streaming multipart/JSON body reading with byte caps, so an oversize upload costs no memory.

Starlette's `request.form()` spools whole files before a route sees them and has no file-size cap; this reader
parses the stream as it arrives (python-multipart) and stops at the cap with a 413.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from gateway.api.context import ClientDisconnected
from gateway.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMedia

#: Text fields are small; this bounds a hostile client sending a huge "text" part.
MAX_FIELD_BYTES = 256 * 1024
#: All text fields together, and how many parts a form may have: the whole body stays bounded.
MAX_FIELDS_TOTAL_BYTES = 1024 * 1024
MAX_PARTS = 64
#: Boundaries and part headers: about 1 KiB for each of MAX_PARTS parts.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
#: After refusing an upload we keep reading (and discarding) this much so the client can read our 413.
DRAIN_LIMIT_BYTES = 256 * 1024 * 1024
#: JSON bodies up to this size are parsed on the event loop (~0.3 ms).
INLINE_JSON_BYTES = 512 * 1024
#: No route's body nests deeper than a few levels; a hostile one 5,000 deep would overflow the parser's (and
#: pydantic's) recursion instead of getting a 400.
MAX_JSON_DEPTH = 32
#: RFC 2046 §5.1.1 limits a boundary to 70 characters; python-multipart raises on longer ones (over 256) deep
#: inside its parser, so a longer one is refused up front.
MAX_BOUNDARY_CHARS = 70


@dataclass
class UploadedFile:
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)
    #: files of a repeatable field (e.g. `aux_audio`), in the order sent
    repeated: dict[str, list[UploadedFile]] = field(default_factory=dict)


def _file_field_allowed(name: str, file_fields: frozenset[str]) -> bool:
    """`name` is one of the route's file fields, or matches a `prefix.*` one (e.g. `speaker.alice`)."""
    return name in file_fields or any(
        allowed.endswith(".*") and name.startswith(allowed[:-1]) and len(name) > len(allowed) - 1
        for allowed in file_fields
    )


class _FormBuilder:
    """python-multipart callbacks that collect parts while enforcing per-part caps."""

    def __init__(
        self, max_file_bytes: int, file_fields: frozenset[str], repeatable: frozenset[str] = frozenset(),
        max_repeats: int = 1,
    ) -> None:
        self.form = Form()
        self.max_file_bytes = max_file_bytes
        self.file_fields = file_fields | repeatable
        self.repeatable = repeatable
        self.max_repeats = max_repeats
        self._parts = 0
        self._field_bytes = 0
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._buffer = bytearray()
        self._name = ""
        self._filename: str | None = None
        self._is_file = False

    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise PayloadTooLarge(f"form has more than {MAX_PARTS} parts")
        self._headers, self._buffer = {}, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        self._is_file = raw_filename is not None
        self._filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
        if self._is_file and not _file_field_allowed(self._name, self.file_fields):
            # refused before a byte of it is buffered; a silently ignored file would hide a client's mistake
            expected = " or ".join(f"'{name}'" for name in sorted(self.file_fields)) or "no file"
            raise InvalidInput(f"unexpected file field '{self._name[:64]}'; this route takes {expected}",
                               code="unexpected_file")
        if self._is_file and self._name in self.form.files:
            raise InvalidInput(f"file field '{self._name[:64]}' was sent twice", code="unexpected_file")
        if self._is_file and len(self.form.repeated.get(self._name, [])) >= self.max_repeats:
            raise InvalidInput(f"at most {self.max_repeats} '{self._name[:64]}' files are allowed",
                               code="too_many_files", field=self._name[:64])

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._buffer += data[start:end]
        if self._is_file and len(self._buffer) > self.max_file_bytes:
            raise PayloadTooLarge(
                f"file field '{self._name}' is larger than the {self.max_file_bytes} byte limit",
                limit_bytes=self.max_file_bytes,
            )
        if not self._is_file and len(self._buffer) > MAX_FIELD_BYTES:
            raise PayloadTooLarge(f"field '{self._name}' is larger than {MAX_FIELD_BYTES} bytes")
        if not self._is_file:
            # without this, 64 parts each just under the per-field cap would hold 16 MiB of text
            self._field_bytes += end - start
            if self._field_bytes > MAX_FIELDS_TOTAL_BYTES:
                raise PayloadTooLarge(f"the text fields together are larger than {MAX_FIELDS_TOTAL_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._is_file:
            content_type = self._headers.get(b"content-type")
            upload = UploadedFile(
                self._filename, content_type.decode("latin-1") if content_type else None, bytes(self._buffer)
            )
            if self._name in self.repeatable:
                self.form.repeated.setdefault(self._name, []).append(upload)
            else:
                self.form.files[self._name] = upload
        else:
            try:
                self.form.fields[self._name] = self._buffer.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"field '{self._name}' is not valid UTF-8") from exc


async def _drain(request: Request) -> None:
    """Read and discard the rest of a refused body (bounded), so the client gets our answer, not a reset."""
    drained = 0
    try:
        async for chunk in request.stream():
            drained += len(chunk)
            if drained > DRAIN_LIMIT_BYTES:
                break
    except Exception:  # noqa: BLE001 - the client may already be gone; the answer is decided anyway
        return


def is_json(request: Request) -> bool:
    content_type, _ = parse_options_header(request.headers.get("content-type", ""))
    return content_type.lower() == b"application/json"


def multipart_allowance(max_file_bytes: int, file_fields: frozenset[str], repeated_files: int = 0) -> int:
    """The most a multipart body may hold: every file at its cap, the text fields at theirs, the framing.

    One number whether the body declares its length (refused up front) or arrives chunked (cut off once
    it passes): the part caps decide what fits, this only bounds what they never see (preamble, epilogue).
    """
    files = max(1, len(file_fields) + repeated_files)
    return max_file_bytes * files + MAX_FIELDS_TOTAL_BYTES + MULTIPART_OVERHEAD_BYTES


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


async def read_multipart(
    request: Request, *, max_file_bytes: int, file_fields: frozenset[str], repeatable: frozenset[str] = frozenset(),
    max_repeats: int = 1,
) -> Form:
    """Parse a multipart/form-data body as it streams in; 413 as soon as a part passes its cap.

    Files of a `repeatable` field may come up to `max_repeats` times (422 beyond), into `Form.repeated`.

    A urlencoded form (no files, e.g. `curl -d text=... -d voice_id=...`) is accepted too.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    content_type = content_type.lower()
    if content_type == b"application/x-www-form-urlencoded":
        raw = await _read_capped(request, MAX_FIELD_BYTES)
        try:
            return Form(fields=dict(urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True)))
        except UnicodeDecodeError as exc:
            raise InvalidInput("form body is not valid UTF-8") from exc
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMedia("expected a multipart/form-data body with a boundary")
    if len(boundary) > MAX_BOUNDARY_CHARS:
        await _drain(request)
        raise BadRequest(
            f"multipart boundary is {len(boundary)} characters; at most {MAX_BOUNDARY_CHARS} are allowed (RFC 2046)",
            code="malformed_body",
        )
    allowance = multipart_allowance(max_file_bytes, file_fields, len(repeatable) * max_repeats)
    too_large = PayloadTooLarge(
        f"request body is larger than the {allowance} byte limit for this form "
        f"(files up to {max_file_bytes} bytes each, plus form fields)",
        limit_bytes=allowance,
    )
    declared = _declared_length(request)
    if declared is not None and declared > allowance:
        await _drain(request)
        raise too_large
    builder = _FormBuilder(max_file_bytes, file_fields, repeatable, max_repeats)
    callbacks = {
        name: getattr(builder, name)
        for name in ("on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
                     "on_header_end", "on_headers_finished")
    }
    parser = MultipartParser(boundary, callbacks=callbacks)  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > allowance:
                raise too_large
            parser.write(chunk)
        parser.finalize()
    except ClientDisconnect as exc:
        raise ClientDisconnected() from exc
    except PayloadTooLarge:
        await _drain(request)
        raise
    except (InvalidInput, BadRequest):
        raise
    except Exception as exc:  # malformed multipart from python-multipart
        raise BadRequest(f"malformed multipart body: {exc}", code="malformed_body") from exc
    return builder.form


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    declared = _declared_length(request)
    if declared is not None and declared > max_bytes:
        await _drain(request)
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {max_bytes} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                await _drain(request)
                raise PayloadTooLarge(f"request body is larger than the {max_bytes} byte limit")
    except ClientDisconnect as exc:
        raise ClientDisconnected() from exc
    return bytes(body)


async def read_json(request: Request, *, max_bytes: int) -> dict[str, Any]:
    """Read a JSON object body with a byte cap (base64 references make these large)."""
    body = await _read_capped(request, max_bytes)
    # a capped JSON body with a base64 reference is ~27 MB: parse that off the event loop; a usual one (a 5 s
    # reference is ~430 KB, 0.25 ms to parse) costs less here than a worker-thread round trip (DESIGN §8)
    inline = len(body) <= INLINE_JSON_BYTES
    parsed = parse_json(body, "body") if inline else await anyio.to_thread.run_sync(parse_json, body, "body")
    if not isinstance(parsed, dict):
        raise InvalidInput("JSON body must be an object")
    return parsed


def parse_json(data: bytes | str, what: str) -> Any:
    """json.loads for client text: malformed or too deeply nested → 400 `malformed_body`, lone surrogates → 422."""
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}", code="malformed_body") from exc
    except RecursionError as exc:  # nested deeper than the C parser's recursion limit (~1,000)
        raise BadRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", code="malformed_body") from exc
    _check_json_values(parsed, what)
    return parsed


def _check_json_values(document: Any, what: str) -> None:
    """Refuse what the parser accepts but nothing downstream can use: nesting past MAX_JSON_DEPTH (pydantic
    recurses too) and lone surrogates (`"\\udc00"` parses to a str that cannot be encoded as UTF-8: every log
    line, file name and engine request would fail on it). Iterative, so depth costs no recursion."""
    stack: list[tuple[Any, str, int]] = [(document, "", 1)]  # (value, where it is, depth)
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", code="malformed_body")
        if isinstance(node, dict):
            for key, value in node.items():
                _check_text(key, where or what)
                stack.append((value, f"{where}.{key}" if where else key, depth + 1))
        elif isinstance(node, list):
            stack.extend((value, f"{where}[{index}]", depth + 1) for index, value in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, where or what)


def _check_text(text: str, where: str) -> None:
    if text.isascii():  # O(1) in CPython: the usual case, including base64 references of any size
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end].encode("utf-8", "backslashreplace").decode("ascii")
        shown = where.encode("utf-8", "backslashreplace").decode("utf-8")[:64]
        raise InvalidInput(
            f"{shown}: contains a lone UTF-16 surrogate ({bad}), which is not a character; send valid Unicode",
            code="invalid_request",
        ) from None
