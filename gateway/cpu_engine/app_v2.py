"""The api_v2.py flavour: `/tts` (GET + POST), `/control`, `/set_refer_audio`, `/set_*_weights`.

Routes, field names, defaults, validation order, messages and status codes follow engine-protocol.md
§3. One deliberate deviation: the real api_v2 runs a mode-0 synthesis on the event loop and answers
nothing else meanwhile (not even `/openapi.json`); here synthesis runs in worker threads behind the
one-at-a-time lock, so probes and `/_stats` stay responsive while requests are still serialized.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from gateway.cpu_engine.control import handle_control
from gateway.cpu_engine.degrade import degrade
from gateway.cpu_engine.faults import AUDIO_FAULTS, Fault, InjectedFault
from gateway.cpu_engine.framing import MEDIA_TYPES, PLACEHOLDER_RATE, encode, placeholder_silence, wav_stream_header
from gateway.cpu_engine.instant import InstantSynthesizer
from gateway.cpu_engine.instant import encoded as instant_body
from gateway.cpu_engine.pipeline import encoded_stream, in_thread, iterate_in_thread, whole_audio
from gateway.cpu_engine.responses import EngineStream, StreamAborted, TruncatedResponse, wait_for_disconnect
from gateway.cpu_engine.state import VERSIONS_NEEDING_PROMPT, EngineFailure, EngineState, Ticket
from gateway.cpu_engine.synth import SynthesisParams
from gateway.cpu_engine.text import SPLIT_METHODS

STREAMING_MODE_MESSAGE = "the value of streaming_mode must be 0, 1, 2, 3(int) or true/false(bool)"
NO_PROMPT_MESSAGE = "prompt_text cannot be empty when using SoVITS_V3"


class TTSRequest(BaseModel):
    """api_v2's `TTS_Request`. `str = None` on purpose: a missing key defaults to None, while an explicit
    JSON null fails validation with a 422, exactly as pydantic v2 does in the real engine (§3.3)."""

    text: str = None  # type: ignore[assignment]
    text_lang: str = None  # type: ignore[assignment]
    ref_audio_path: str = None  # type: ignore[assignment]
    aux_ref_audio_paths: list = None  # type: ignore[type-arg,assignment]
    prompt_lang: str = None  # type: ignore[assignment]
    prompt_text: str = ""
    top_k: int = 15
    top_p: float = 1
    temperature: float = 1
    text_split_method: str = "cut5"
    batch_size: int = 1
    batch_threshold: float = 0.75
    split_bucket: bool = True
    speed_factor: float = 1.0
    fragment_interval: float = 0.3
    seed: int = -1
    media_type: str = "wav"
    streaming_mode: bool | int = False
    parallel_infer: bool = True
    repetition_penalty: float = 1.35
    sample_steps: int = 32
    super_sampling: bool = False
    overlap_length: int = 2
    min_chunk_length: int = 16


def _bad_request(message: str, **extra: str) -> JSONResponse:
    return JSONResponse(status_code=400, content={"message": message, **extra})


def check_params(req: dict[str, Any], state: EngineState) -> JSONResponse | None:
    """api_v2's `check_params`: the first failing rule wins (§3.5 rows 1-8)."""
    text_lang, prompt_lang = req.get("text_lang"), req.get("prompt_lang")
    if req.get("ref_audio_path") in (None, ""):
        return _bad_request("ref_audio_path is required")
    if req.get("text") in (None, ""):
        return _bad_request("text is required")
    if text_lang in (None, ""):
        return _bad_request("text_lang is required")
    if text_lang.lower() not in state.languages:
        return _bad_request(f"text_lang: {text_lang} is not supported in version {state.version}")
    if prompt_lang in (None, ""):
        return _bad_request("prompt_lang is required")
    if prompt_lang.lower() not in state.languages:
        return _bad_request(f"prompt_lang: {prompt_lang} is not supported in version {state.version}")
    if req.get("media_type") not in MEDIA_TYPES:
        return _bad_request(f"media_type: {req.get('media_type')} is not supported")
    if req.get("text_split_method") not in SPLIT_METHODS:
        return _bad_request(f"text_split_method:{req.get('text_split_method')} is not supported")
    return None


def streaming_mode_number(value: bool | int) -> int | None:
    """0/false, 1/true, 2, 3 → that mode; anything else → None (row 9 of §3.5)."""
    return int(value) if value in (0, 1, 2, 3) else None


def prepare(state: EngineState, req: dict[str, Any]) -> SynthesisParams:
    """The checks `TTS.run` makes before inference, in its order; raises EngineFailure with its text."""
    text_lang, prompt_lang, prompt_text = req["text_lang"], req["prompt_lang"], req["prompt_text"]
    no_prompt_text = prompt_text in (None, "")
    # Bare `assert`s in the engine: an uppercase code passes check_params but fails here, message "".
    if text_lang not in state.languages or (not no_prompt_text and prompt_lang not in state.languages):
        raise EngineFailure("")
    if no_prompt_text and state.version in VERSIONS_NEEDING_PROMPT:
        raise EngineFailure(NO_PROMPT_MESSAGE)
    path = req["ref_audio_path"]
    state.load_reference(path)
    return SynthesisParams(
        text=req["text"],
        text_lang=text_lang,
        ref_audio_path=path if os.path.exists(path) else None,  # a cached reference may have been deleted since
        output_rate=state.output_rate,
        speed_factor=float(req["speed_factor"]),
        seed=int(req["seed"]),
        text_split_method=req["text_split_method"],
        fragment_interval=float(req["fragment_interval"]),
    )


async def serve_tts(state: EngineState, request: Request, req: dict[str, Any], ticket: Ticket) -> Response:
    """Validate, admit, then answer mode 0 as one body or modes 1-3 as an EngineStream that owns the lock."""
    invalid = check_params(req, state)
    if invalid is not None:
        return invalid
    mode = streaming_mode_number(req["streaming_mode"])
    if mode is None:
        return _bad_request(STREAMING_MODE_MESSAGE)
    if mode in (2, 3) and state.version in VERSIONS_NEEDING_PROMPT:
        mode = 1  # v3/v4 cannot stream tokens; the engine falls back to whole segments
    # what api_v2 would fuse for timbre (tests check the gateway sends it)
    state.stats.aux_ref_audio_paths = [str(path) for path in req.get("aux_ref_audio_paths") or []]
    fault = state.faults.admit()
    await state.lock.acquire()
    handed_off = False
    try:
        if fault == "hang":
            await wait_for_disconnect(request.receive)
            return Response()
        if fault == "500":
            raise InjectedFault("injected fault: 500")
        if mode == 0:
            state.whole_started()
            try:
                return await _whole(state, req, fault)
            finally:
                state.whole_ended()

        def close() -> None:
            state.lock.release()
            ticket.leave()

        stream = EngineStream(_stream_body(state, req, mode, fault), f"audio/{req['media_type']}", close)
        handed_off = True
        return stream
    finally:
        if not handed_off:
            state.lock.release()


async def _whole(state: EngineState, req: dict[str, Any], fault: Fault | None) -> Response:
    media_type = req["media_type"]
    if fault is None and isinstance(state.synthesizer, InstantSynthesizer):
        return await _instant_whole(state, req)
    try:
        params = await in_thread(prepare, state, req)
        await anyio.sleep(state.faults.delay)
        if fault == "silence":
            audio, rate = placeholder_silence(), PLACEHOLDER_RATE
        else:
            audio, rate = await in_thread(whole_audio, state.synthesizer, params)
            if fault in AUDIO_FAULTS and rate != PLACEHOLDER_RATE:
                audio = await in_thread(degrade, fault, audio, rate)
        body = await in_thread(encode, media_type, audio, rate)
    except Exception as exc:  # the engine turns every failure here into the same 400 envelope
        return _bad_request("tts failed", Exception=str(exc))
    if fault == "truncate":
        return TruncatedResponse(body, media_type=f"audio/{media_type}")
    return Response(body, media_type=f"audio/{media_type}")


async def _instant_whole(state: EngineState, req: dict[str, Any]) -> Response:
    """`--instant` mode 0: the same checks, then the canned clip with no worker-thread hops (each costs more
    than the work; a known reference is one path comparison, a new one a short header read, like api_v2 does
    on its event loop)."""
    media_type = req["media_type"]
    try:
        params = prepare(state, req)
        if state.faults.delay:
            await anyio.sleep(state.faults.delay)
        body = instant_body(media_type, params.output_rate)
    except Exception as exc:  # aac without ffmpeg, a missing reference ...: the same 400 as the real path
        return _bad_request("tts failed", Exception=str(exc))
    return Response(body, media_type=f"audio/{media_type}")


async def _stream_body(state: EngineState, req: dict[str, Any], mode: int, fault: Fault | None) -> AsyncIterator[bytes]:
    """Chunks of a streaming answer; any failure after the 200 becomes an aborted body (§3.5)."""
    media_type = req["media_type"]
    try:
        params = await in_thread(prepare, state, req)
    except Exception as exc:
        raise StreamAborted(str(exc)) from exc
    await anyio.sleep(state.faults.delay)
    if fault == "silence":
        if media_type == "wav":
            yield wav_stream_header(PLACEHOLDER_RATE)
        yield await in_thread(encode, "raw" if media_type == "wav" else media_type, placeholder_silence(),
                              PLACEHOLDER_RATE)
        raise StreamAborted("injected fault: silence (inference error placeholder, then abort)")
    chunks = encoded_stream(state.synthesizer, params, mode=mode, media_type=media_type,
                            min_chunk_length=int(req["min_chunk_length"]))
    first = True
    try:
        async for chunk in iterate_in_thread(chunks):
            if first and media_type == "wav":
                yield wav_stream_header(params.output_rate)
            first = False
            yield chunk
            if fault == "truncate":
                raise StreamAborted("injected fault: truncate")
    except StreamAborted:
        raise
    except Exception as exc:
        raise StreamAborted(str(exc)) from exc


def create_app_v2(state: EngineState, *, title: str, description: str) -> FastAPI:
    app = FastAPI(title=title, description=description)

    @app.get("/control")
    async def control(command: str | None = None) -> Response:
        if command is None:
            return JSONResponse(status_code=400, content={"message": "command is required"})
        return await handle_control(command)

    @app.get("/tts")
    async def tts_get(
        request: Request,
        text: str | None = None,
        text_lang: str | None = None,
        ref_audio_path: str | None = None,
        prompt_lang: str | None = None,
        prompt_text: str = "",
        top_k: int = 15,
        top_p: float = 1,
        temperature: float = 1,
        text_split_method: str = "cut5",
        batch_size: int = 1,
        batch_threshold: float = 0.75,
        split_bucket: bool = True,
        speed_factor: float = 1.0,
        fragment_interval: float = 0.3,
        seed: int = -1,
        media_type: str = "wav",
        parallel_infer: bool = True,
        repetition_penalty: float = 1.35,
        sample_steps: int = 32,
        super_sampling: bool = False,
        streaming_mode: bool | int = False,
        overlap_length: int = 2,
        min_chunk_length: int = 16,
    ) -> Response:
        fields = dict(locals())  # every query parameter by name: the same dict the engine builds
        fields.pop("request")
        ticket = _enter(state)
        response: Response | None = None
        try:
            # The engine lower-cases both languages before validating: a missing one is an
            # AttributeError, i.e. a plain-text 500 (row 0 of §3.5).
            fields["text_lang"] = _lower(text_lang)
            fields["prompt_lang"] = _lower(prompt_lang)
            response = await serve_tts(state, request, fields, ticket)
            return response
        finally:
            if not isinstance(response, EngineStream):
                ticket.leave()

    @app.post("/tts")
    async def tts_post(request: Request, body: TTSRequest) -> Response:
        ticket = _enter(state)
        response: Response | None = None
        try:
            response = await serve_tts(state, request, body.model_dump(), ticket)
            return response
        finally:
            if not isinstance(response, EngineStream):
                ticket.leave()

    @app.get("/set_refer_audio")
    async def set_refer_audio(refer_audio_path: str | None = None) -> Response:
        return await _locked_change(state, "set refer audio failed", state.set_refer_audio, refer_audio_path)

    @app.get("/set_gpt_weights")
    async def set_gpt_weights(weights_path: str | None = None) -> Response:
        state.stats.set_weights_calls += 1
        if weights_path in (None, ""):
            return JSONResponse(status_code=400, content={"message": "gpt weight path is required"})
        return await _locked_change(state, "change gpt weight failed", state.set_gpt_weights, weights_path)

    @app.get("/set_sovits_weights")
    async def set_sovits_weights(weights_path: str | None = None) -> Response:
        state.stats.set_weights_calls += 1
        if weights_path in (None, ""):
            return JSONResponse(status_code=400, content={"message": "sovits weight path is required"})
        return await _locked_change(state, "change sovits weight failed", state.set_sovits_weights, weights_path)

    return app


def _enter(state: EngineState) -> Ticket:
    state.stats.requests += 1
    return state.stats.enter()


def _lower(value: str | None) -> str:
    if value is None:
        raise AttributeError("'NoneType' object has no attribute 'lower'")
    return value.lower()


async def _locked_change(state: EngineState, failure: Literal[
    "set refer audio failed", "change gpt weight failed", "change sovits weight failed"
], change: Any, argument: str | None) -> Response:
    """A global state change under the engine lock, answered with api_v2's envelopes."""
    ticket = state.stats.enter()
    try:
        async with state.lock:
            await in_thread(change, argument)
    except EngineFailure as exc:
        return _bad_request(failure, Exception=str(exc))
    finally:
        ticket.leave()
    return JSONResponse(status_code=200, content={"message": "success"})
