"""The OpenAPI document says what the server does: every error a route can answer, in the one envelope, so
generated clients and schema fuzzers (tests/test_fuzz_api.py) agree with the server.

Routes read their bodies themselves (streamed, capped), so FastAPI cannot infer their errors; they are added
here from a few rules instead of on every decorator: a body can be malformed (400), too large (413), of the
wrong type (415) or invalid (422); a path names something that may not exist (404); synthesis can meet a full
queue (429) or a failing engine (502/503/504); writes to the library can conflict (409) or find the shared dir
unwritable (503); every /v1 route may need a key (401/403) and meet its rate limit (429).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The one error envelope; `error` may carry more fields (supported, limit_bytes, engine, ...).",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "properties": {
                "code": {"type": "string", "description": "stable machine-readable reason, e.g. voice_not_found"},
                "message": {"type": "string", "description": "what went wrong and what to send instead"},
                "request_id": {"type": ["string", "null"], "description": "also in the X-Request-ID header"},
                "retry_after": {"type": "integer", "description": "seconds; also the Retry-After header"},
            },
            "additionalProperties": True,
        }
    },
}

REASONS = {
    400: "Malformed body (not JSON, nested too deep, bad multipart framing) or an unsupported format",
    401: "An API key is required (Authorization: Bearer, or X-API-Key)",
    403: "The API key lacks the scope this route needs",
    404: "The voice, job or segment does not exist",
    409: "Conflicts with the current state (a taken voice name, a job not finished)",
    413: "The body, a file or a field is over its limit",
    415: "The body is neither JSON nor a form",
    422: "A field is missing or invalid",
    429: "Too many requests: the queue is full or a key's limit is reached (see Retry-After)",
    501: "This gateway was installed without the optional part the route needs (the `quality` extra)",
    502: "The engine answered with an error or unusable audio, on every attempt",
    503: "No engine can serve (or the shared dir cannot be written); retry after Retry-After",
    504: "The engine did not answer within the request's deadline",
}

_BODY = (400, 413, 415, 422)
_ENGINE = (429, 502, 503, 504)
_LIBRARY_WRITE = (409, 503)
#: Errors a route may answer beyond the rules (method, path): what its handler raises itself.
_EXTRA: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/voice-clone"): (404, 501, *_ENGINE),
    ("post", "/v1/audio/speech"): (404, 501, *_ENGINE),
    ("post", "/v1/voices"): (*_LIBRARY_WRITE,),
    ("put", "/v1/voices/default"): (404, *_LIBRARY_WRITE),
    ("delete", "/v1/voices/default"): (503,),
    ("delete", "/v1/voices/{voice_id}"): (503,),
    ("post", "/v1/jobs"): (409, 503),
    ("post", "/v1/jobs/{job_id}/retry"): (409,),
    ("delete", "/v1/jobs/{job_id}"): (409,),
    ("get", "/v1/jobs/{job_id}/segments/{segment_id}"): (400, 409, 502, 503, 504),
    ("get", "/v1/jobs/{job_id}/track"): (400, 409),
    # speaker embeddings: no `quality` extra (501), an encoder that failed to load (503)
    ("post", "/v1/speaker-embedding"): (501, 503),
    ("post", "/inference/"): (401, 403, 429, 501, 503),  # seed 001's path, outside /v1/, but keyed like it
}


def _errors_for(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    statuses = set(_EXTRA.get((method, path), ()))
    if "requestBody" in operation:
        statuses.update(_BODY)
    if any(param.get("in") == "path" for param in operation.get("parameters", [])):
        statuses.add(404)
    if operation.get("parameters"):
        statuses.add(422)
    if path.startswith("/v1/"):
        statuses.update((401, 403, 429))
    return statuses


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the error responses, the envelope schema and /metrics as text to a generated document."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's {"detail": [...]}: never sent here
        components.pop(name, None)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in sorted(_errors_for(method, path, operation)):
                responses[str(status)] = {"description": REASONS[status], "content": error}
    readyz = schema["paths"].get("/readyz", {}).get("get")
    if readyz is not None:  # not ready is the readiness body with a 503, not an error envelope
        body = {"application/json": {"schema": {"type": "object", "required": ["status"]}}}
        readyz["responses"]["503"] = {"description": "Not ready: no engine can serve, or the shared dir is "
                                                     "not writable (Retry-After: 5)", "content": body}
    metrics = schema["paths"].get("/metrics", {}).get("get")
    if metrics is not None:
        metrics["responses"]["200"] = {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve the documented schema at /openapi.json (built once, on first request)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
