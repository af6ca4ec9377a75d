"""The legacy api.py flavour: `/` (GET + POST), `/change_refer`, `/set_model`, `/control` (§2).

Every synthesis answer is a chunked 200 whose body carries the errors: a bad language or a missing
reference file cut the body off after the headers (§2.6). Two deliberate deviations from the real
api.py: requests are serialized by the engine lock (the real server overlaps them in threads and mixes
state), and a request waiting for that lock receives its headers only once it holds it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from gateway.cpu_engine.control import handle_control
from gateway.cpu_engine.degrade import degrade
from gateway.cpu_engine.faults import AUDIO_FAULTS, Fault, InjectedFault
from gateway.cpu_engine.framing import PLACEHOLDER_RATE, encode, encode_wav, placeholder_silence
from gateway.cpu_engine.pipeline import in_thread, iterate_in_thread
from gateway.cpu_engine.responses import EngineStream, StreamAborted, wait_for_disconnect
from gateway.cpu_engine.state import EngineState, Ticket, check_reference_readable, weights_file_problem
from gateway.cpu_engine.synth import SynthesisParams
from gateway.languages import V1_LABELS, V2_LANGUAGES

#: api.py's `dict_language`: Chinese labels and every code (any model version), matched after `.lower()`.
DICT_LANGUAGE: dict[str, str] = {**V1_LABELS, **{code: code for code in V2_LANGUAGES}}
NO_REFERENCE_MESSAGE = "未指定参考音频且接口无预设"
CHANGE_REFER_MESSAGE = '缺少任意一项以下参数: "path", "text", "language"'


@dataclass(frozen=True)
class V1Job:
    """One api.py synthesis after the default-reference substitution."""

    refer_wav_path: Any
    prompt_text: Any
    prompt_language: Any
    text: str
    text_language: Any
    cut_punc: str
    speed: Any


def _language_code(value: Any) -> str:
    """`dict_language[value.lower()]`: a KeyError (or AttributeError for None) aborts the stream."""
    return DICT_LANGUAGE[value.lower()]


def prepare(state: EngineState, job: V1Job) -> SynthesisParams:
    """`get_tts_wav` up to inference, in its order: prompt text, reference file, languages."""
    prompt_text = job.prompt_text.strip("\n")
    _ = prompt_text[-1]  # the engine indexes the last character (IndexError on a blank prompt)
    check_reference_readable(job.refer_wav_path)
    _language_code(job.prompt_language)
    text_lang = _language_code(job.text_language)
    return SynthesisParams(
        text=job.text.strip("\n"),
        text_lang=text_lang,
        ref_audio_path=job.refer_wav_path,
        output_rate=state.output_rate,
        speed_factor=float(job.speed),
        cut_punc=job.cut_punc,
        fragment_interval=0.3,
    )


def _encode_segments(media_type: str, segments: list[np.ndarray], rate: int) -> bytes:
    """Non-streaming body: one WAV of all segments, or per-segment ogg/aac streams back to back."""
    if media_type == "wav":
        audio = np.concatenate(segments) if segments else np.zeros(0, dtype=np.float32)
        return encode_wav(audio, rate)  # zero segments → a header-only WAV, like api.py
    return b"".join(encode(media_type, segment, rate) for segment in segments)


async def _body(state: EngineState, job: V1Job, fault: Fault | None) -> AsyncIterator[bytes]:
    media_type = state.media_type
    try:
        params = await in_thread(prepare, state, job)
    except Exception as exc:  # KeyError/AttributeError/EngineFailure alike: the engine just dies mid-body
        raise StreamAborted(repr(exc)) from exc
    await anyio.sleep(state.faults.delay)
    if fault == "silence":
        yield await in_thread(encode, media_type, placeholder_silence(), PLACEHOLDER_RATE)
        return
    segments = state.synthesizer.segments(params)
    try:
        if state.stream_mode == "normal":
            async for segment in iterate_in_thread(segments):
                yield await in_thread(encode, media_type, segment, params.output_rate)
                if fault == "truncate":
                    raise StreamAborted("injected fault: truncate")
            return
        collected: list[np.ndarray] = await in_thread(list, segments)
        if fault in AUDIO_FAULTS and collected:
            collected = [await in_thread(degrade, fault, np.concatenate(collected), params.output_rate)]
        body = await in_thread(_encode_segments, media_type, collected, params.output_rate)
    except StreamAborted:
        raise
    except Exception as exc:
        raise StreamAborted(repr(exc)) from exc
    if fault == "truncate":
        yield body[: len(body) // 2]
        raise StreamAborted("injected fault: truncate")
    yield body


def _is_empty(value: Any) -> bool:
    return value is None or value == ""


async def handle(state: EngineState, request: Request, fields: dict[str, Any]) -> Response:
    """api.py's `handle`: default reference, text check, then a chunked response owning the lock."""
    ticket = state.stats.enter()
    state.stats.requests += 1
    try:
        reference = (fields.get("refer_wav_path"), fields.get("prompt_text"), fields.get("prompt_language"))
        if any(_is_empty(value) for value in reference):
            default = state.default_reference
            reference = (default.path, default.text, default.language)
            if not default.is_ready():
                ticket.leave()
                return JSONResponse({"code": 400, "message": NO_REFERENCE_MESSAGE}, status_code=400)
        text = fields.get("text")
        if not isinstance(text, str):  # `cut_text(None, ...)` raises → plain-text 500
            raise TypeError(f"argument of type '{type(text).__name__}' is not iterable")
        cut_punc = fields.get("cut_punc")
        job = V1Job(*reference, text=text, text_language=fields.get("text_language"),
                    cut_punc=state.default_cut_punc if cut_punc is None else str(cut_punc),
                    speed=fields.get("speed", 1.0))
    except BaseException:
        ticket.leave()
        raise
    return await _admit(state, request, job, ticket)


async def _admit(state: EngineState, request: Request, job: V1Job, ticket: Ticket) -> Response:
    """Take the engine lock and hand it (and the in-flight ticket) to the chunked response."""
    fault = state.faults.admit()
    await state.lock.acquire()
    handed_off = False
    try:
        if fault == "hang":
            await wait_for_disconnect(request.receive)
            return Response()
        if fault == "500":
            raise InjectedFault("injected fault: 500")

        def close() -> None:
            state.lock.release()
            ticket.leave()

        handed_off = True
        return EngineStream(_body(state, job, fault), f"audio/{state.media_type}", close)
    finally:
        if not handed_off:
            state.lock.release()
            ticket.leave()


async def _json_object(request: Request) -> Any:
    """api.py reads POST bodies with `await request.json()`: anything but JSON is a plain-text 500."""
    return await request.json()


def create_app_v1(state: EngineState, *, title: str, description: str) -> FastAPI:
    app = FastAPI(title=title, description=description)

    async def set_model(gpt_path: Any, sovits_path: Any) -> Response:
        """Load GPT, then SoVITS; the new pair is installed only when both load (§2.3 quirk)."""
        state.stats.set_weights_calls += 1
        ticket = state.stats.enter()
        try:
            async with state.lock:
                for path in (gpt_path, sovits_path):
                    problem = weights_file_problem(path)
                    if problem is not None:
                        return JSONResponse({"code": 400, "message": problem}, status_code=400)
                state.gpt_weights = gpt_path
                state.set_sovits_weights(sovits_path)
        finally:
            ticket.leave()
        return JSONResponse({"code": 0, "message": "Success"}, status_code=200)

    @app.post("/set_model")
    async def set_model_post(request: Request) -> Response:
        body = await _json_object(request)
        return await set_model(body.get("gpt_model_path"), body.get("sovits_model_path"))

    @app.get("/set_model")
    async def set_model_get(gpt_model_path: str | None = None, sovits_model_path: str | None = None) -> Response:
        return await set_model(gpt_model_path, sovits_model_path)

    @app.post("/control")
    async def control_post(request: Request) -> Response:
        body = await _json_object(request)
        return await handle_control(body.get("command"))

    @app.get("/control")
    async def control_get(command: str | None = None) -> Response:
        return await handle_control(command)

    async def change_refer(path: Any, text: Any, language: Any) -> Response:
        if all(_is_empty(value) for value in (path, text, language)):
            return JSONResponse({"code": 400, "message": CHANGE_REFER_MESSAGE}, status_code=400)
        # The engine's "is it given?" conditions are always true: all three are overwritten, even with None.
        async with state.lock:
            default = state.default_reference
            default.path, default.text, default.language = path, text, language
        return JSONResponse({"code": 0, "message": "Success"}, status_code=200)

    @app.post("/change_refer")
    async def change_refer_post(request: Request) -> Response:
        body = await _json_object(request)
        return await change_refer(body.get("refer_wav_path"), body.get("prompt_text"), body.get("prompt_language"))

    @app.get("/change_refer")
    async def change_refer_get(
        refer_wav_path: str | None = None, prompt_text: str | None = None, prompt_language: str | None = None
    ) -> Response:
        return await change_refer(refer_wav_path, prompt_text, prompt_language)

    @app.post("/")
    async def tts_post(request: Request) -> Response:
        body = await _json_object(request)
        return await handle(state, request, {
            "refer_wav_path": body.get("refer_wav_path"),
            "prompt_text": body.get("prompt_text"),
            "prompt_language": body.get("prompt_language"),
            "text": body.get("text"),
            "text_language": body.get("text_language"),
            "cut_punc": body.get("cut_punc"),
            "speed": body.get("speed", 1.0),
        })

    @app.get("/")
    async def tts_get(
        request: Request,
        refer_wav_path: str | None = None,
        prompt_text: str | None = None,
        prompt_language: str | None = None,
        text: str | None = None,
        text_language: str | None = None,
        cut_punc: str | None = None,
        top_k: int = 15,
        top_p: float = 1.0,
        temperature: float = 1.0,
        speed: float = 1.0,
        inp_refs: list[str] = Query(default=[]),  # noqa: B008 - FastAPI's way to declare a repeated query key
        sample_steps: int = 32,
        if_sr: bool = False,
    ) -> Response:
        return await handle(state, request, {
            "refer_wav_path": refer_wav_path,
            "prompt_text": prompt_text,
            "prompt_language": prompt_language,
            "text": text,
            "text_language": text_language,
            "cut_punc": cut_punc,
            "speed": speed,
        })

    return app
