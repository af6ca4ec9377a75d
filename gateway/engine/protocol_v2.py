"""api_v2.py (current GPT-SoVITS server): request mapping and error classification, as pure functions.

Request: `POST /tts` with a JSON body. Every field is sent explicitly with the engine's documented default
when our request leaves it as None, because defaults drifted between engine releases (engine-protocol §0:
`top_k` was 5 before 2025-12). JSON null is never sent (pydantic v2 answers 422 to a null `str`/`list`).
`streaming_mode` is a boolean: `true` means mode 1 on current engines and streaming on old ones.

Error classification (engine-protocol §3.5, §11) — what the engine answers → what we raise:

| Engine answer                                                  | Raised                 | Why                       |
|----------------------------------------------------------------|------------------------|---------------------------|
| 400 `<field> is required`                                      | EngineRejected 422     | the request is incomplete |
| 400 `text_lang/prompt_lang: X is not supported in version vN`  | EngineRejected 422     | language vs loaded model; |
|                                                                |                        | vN is learned             |
| 400 `media_type/text_split_method/streaming_mode ... supported`| EngineRejected 422     | a bad knob value          |
| 400 tts failed: `Reference audio is outside the 3-10 ...`      | EngineRejected 422     | the reference is unusable |
| 400 tts failed: `prompt_text cannot be empty ...` (v3/v4)      | EngineRejected 422     | reference-free unsupported|
| 400 tts failed: `<path> not exists`                            | EngineBadResponse 502  | this engine cannot see the|
|                                                                |  (retried elsewhere)   | shared dir: a deploy fault|
| 400 tts failed: anything else (frontend crash on this text,    | EngineRejected 422     | the engine answered, so it|
|     `embedded null character`, bare assertion)                 |  (not retried)         | is well: it could not take|
|                                                                |                        | *this* request (below)    |
| 422 (FastAPI validation of our body)                           | EngineRejected 422     | a knob of the wrong type  |
| 404 / 405                                                      | EngineBadResponse 502  | not an api_v2 server      |
| 5xx                                                            | EngineBadResponse 502  | engine crash              |
| other 4xx                                                      | EngineRejected 422     | the engine refused        |

Every 4xx but `not exists` is an EngineRejected, which never counts against the engine's health (health.judge):
a client sending text the engine chokes on (a NUL byte: `embedded null character`) must not be able to put the
only engine into cooldown for everyone. The client gets 422 `engine_rejected` with the engine's words: the same
request fails the same way on any engine of that build, so neither a failover nor a Retry-After would help,
and only a changed request can succeed. `not exists` stays a 502 that counts: the gateway wrote that file, so
an engine that cannot see it is misdeployed, and cooling it sends the work to engines that can.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from gateway.engine.types import SynthesisRequest
from gateway.errors import EngineBadResponse, EngineError, EngineRejected
from gateway.languages import normalize_language

SYNTHESIS_PATH = "/tts"
SET_GPT_PATH = "/set_gpt_weights"
SET_SOVITS_PATH = "/set_sovits_weights"
SET_REFER_AUDIO_PATH = "/set_refer_audio"  # loads and checks a reference, no synthesis (sovits-gateway check)

#: Answers 400 `text_lang: __ is not supported in version <v>` during validation, before any synthesis:
#: a safe way to learn the loaded model version of an idle engine.
VERSION_PROBE_PARAMS = {"text": "x", "text_lang": "__", "prompt_lang": "__", "ref_audio_path": "x"}

# The engine's documented defaults (engine-protocol §3.3), sent explicitly.
_DEFAULTS: dict[str, Any] = {
    "top_k": 15,
    "top_p": 1.0,
    "temperature": 1.0,
    "text_split_method": "cut5",
    "batch_size": 1,
    "batch_threshold": 0.75,
    "split_bucket": True,
    "speed_factor": 1.0,
    "fragment_interval": 0.3,
    "seed": -1,
    "parallel_infer": True,
    "repetition_penalty": 1.35,
    "sample_steps": 32,
    "super_sampling": False,
}

_UNSUPPORTED_LANGUAGE = re.compile(r"^(text_lang|prompt_lang): (.*) is not supported in version (\S+)$")
_REFERENCE_RANGE_MARKERS = ("3-10", "3~10")
log = logging.getLogger("gateway.engine")

_SHARED_DIR_HINT = (
    "the engine cannot open the reference file: mount the gateway's shared directory on the engine host "
    "and set GATEWAY_ENGINE_SHARED_DIR to the path the engine sees"
)


def split_method_for(req: SynthesisRequest) -> tuple[str, list[str]]:
    """Pick `text_split_method`; api.py's `cut_punc` is translated to the nearest api_v2 method.

    cut_punc "" (no punctuation split) → cut0; only "。" → cut3; only "." → cut4; any other set → cut5
    (split on every punctuation mark). api_v2 cannot split on an arbitrary character set.
    """
    if req.text_split_method:
        return req.text_split_method, []
    if req.cut_punc is None:
        return _DEFAULTS["text_split_method"], []
    marks = set(req.cut_punc)
    if not marks:
        method = "cut0"
    elif marks == {"。"}:
        method = "cut3"
    elif marks == {"."}:
        method = "cut4"
    else:
        method = "cut5"
    if method != "cut5":
        return method, []
    return method, [f"cut_punc {req.cut_punc!r} approximated by text_split_method=cut5 (every punctuation mark)"]


#: Model versions that take `aux_ref_audio_paths` without using them (engine-protocol §3.3: only the main one).
MAIN_REFERENCE_ONLY = frozenset({"v3", "v4"})


def build_tts_body(
    req: SynthesisRequest, *, streaming: bool, version: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """SynthesisRequest → the JSON body of `POST /tts`, plus warnings about approximated or ignored knobs."""
    method, warnings = split_method_for(req)
    chosen: dict[str, Any] = {
        "top_k": req.top_k,
        "top_p": req.top_p,
        "temperature": req.temperature,
        "batch_size": req.batch_size,
        "speed_factor": req.speed,
        "fragment_interval": req.fragment_interval,
        "seed": req.seed,
        "repetition_penalty": req.repetition_penalty,
        "sample_steps": req.sample_steps,
    }
    body: dict[str, Any] = dict(_DEFAULTS)
    body.update({key: value for key, value in chosen.items() if value is not None})
    body.update(
        {
            "text": req.text,
            "text_lang": normalize_language(req.text_language),
            "ref_audio_path": req.reference_path,
            "prompt_text": req.prompt_text,
            "prompt_lang": normalize_language(req.prompt_language),
            "text_split_method": method,
            "media_type": "wav",
            "streaming_mode": streaming,
        }
    )
    if req.aux_reference_paths:
        body["aux_ref_audio_paths"] = list(req.aux_reference_paths)
        if version in MAIN_REFERENCE_ONLY:
            warnings.append(f"extra references are ignored by {version} models: only the main reference is used")
    return body, warnings


def _message_and_exception(body: bytes) -> tuple[str, str | None]:
    """Pull `message` and `Exception` out of an api_v2 error body (falls back to the raw text)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500], None
    if not isinstance(parsed, dict):
        return str(parsed)[:500], None
    if "detail" in parsed and "message" not in parsed:  # FastAPI validation error
        return json.dumps(parsed["detail"], ensure_ascii=False)[:500], None
    message = str(parsed.get("message", ""))
    exception = parsed.get("Exception")
    return message, None if exception is None else str(exception)


def version_from_error(body: bytes) -> str | None:
    """The loaded model version named by a `... is not supported in version vN` answer, if any."""
    message, _ = _message_and_exception(body)
    match = _UNSUPPORTED_LANGUAGE.match(message)
    return match.group(3) if match else None


def classify_error(status: int, body: bytes, engine: str) -> EngineError:
    """A non-200 api_v2 answer → the error we raise (see the module docstring for the table)."""
    message, exception = _message_and_exception(body)
    where = f"engine {engine}"
    if status >= 500:
        return EngineBadResponse(f"{where} failed with HTTP {status}: {message or 'no message'}", engine=engine)
    if status in (404, 405):
        return EngineBadResponse(
            f"{where} answered HTTP {status} on {SYNTHESIS_PATH}: is it an api_v2.py server?", engine=engine
        )
    if status == 422:
        return EngineRejected(f"{where} refused the request fields: {message}", engine=engine)
    if status == 400 and message == "tts failed" and exception is not None:
        return _classify_tts_failed(exception, engine)
    return EngineRejected(f"{where} rejected the request: {message}", engine=engine, engine_message=message)


def _classify_tts_failed(exception: str, engine: str) -> EngineError:
    where = f"engine {engine}"
    if exception.endswith(" not exists"):
        # the engine's words name a path on its host: for the operator's log, never for the client
        log.warning("%s: %s", where, exception)
        return EngineBadResponse(f"{where}: {_SHARED_DIR_HINT}", engine=engine, code="engine_cannot_read_reference")
    if any(marker in exception for marker in _REFERENCE_RANGE_MARKERS):
        return EngineRejected(
            f"{where} rejected the reference audio: {exception} (the engine accepts 3.0–10.0 s)",
            engine=engine,
            code="reference_duration",
            engine_message=exception,
        )
    if exception.startswith("prompt_text cannot be empty"):
        return EngineRejected(
            f"{where} needs the reference transcript: {exception}", engine=engine, engine_message=exception
        )
    detail = exception or "no detail (bare assertion; often an upper-case language code)"
    return EngineRejected(f"{where} could not synthesize this request: {detail}", engine=engine, engine_message=detail)
