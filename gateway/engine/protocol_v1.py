"""api.py (legacy GPT-SoVITS server): request mapping and error classification, as pure functions.

Request: `POST /` with a JSON object (api.py reads it as a raw dict, no schema). Knobs are sent explicitly
with api.py's defaults; `cut_punc` is omitted when neither it nor a split method is given, so the engine's
own `-cp` setting applies.

api.py silently swaps in its default reference when any of `refer_wav_path` / `prompt_text` /
`prompt_language` is empty (engine-protocol §2.3): a reference-free request would be answered in someone
else's voice. We refuse those before they reach the engine.

Error classification (engine-protocol §2.6) — what the engine answers → what we raise:

| Engine answer                                     | Raised                | Why                                   |
|---------------------------------------------------|-----------------------|---------------------------------------|
| 400 `{"code":400,"message":...}`                  | EngineRejected 422    | the engine refused the request        |
| 404 / 405                                         | EngineBadResponse 502 | not an api.py server                  |
| 5xx (`text` missing, body not JSON, crash)        | EngineBadResponse 502 | engine crash                          |
| 200 then an aborted chunked body                  | EngineBadResponse 502 | bad language, missing file, no model, |
|   (detected by the client while reading)          |                       | CUDA error: indistinguishable here    |
| other 4xx                                         | EngineRejected 422    | the engine refused                    |
"""

from __future__ import annotations

import json
from typing import Any

from gateway.engine.types import SynthesisRequest
from gateway.errors import EngineBadResponse, EngineError, EngineRejected
from gateway.languages import normalize_language
from gateway.settings import ModelWeights

SYNTHESIS_PATH = "/"
SET_MODEL_PATH = "/set_model"

#: Every punctuation mark api.py can split on (engine-protocol §2.4).
ALL_CUT_PUNC = ",.;?!、，。？！；：…"
_CUT_PUNC_FOR_METHOD = {"cut0": "", "cut3": "。", "cut4": ".", "cut5": ALL_CUT_PUNC}

REFERENCE_FREE_MESSAGE = (
    "api.py engines have no reference-free mode: with an empty prompt_text api.py silently answers in its "
    "default reference voice. Send the transcript of the reference audio as prompt_text."
)


def check_request(req: SynthesisRequest, engine: str) -> None:
    """Refuse what api.py would silently answer with the wrong voice."""
    if not req.prompt_text.strip() or not req.reference_path or not req.prompt_language.strip():
        raise EngineRejected(REFERENCE_FREE_MESSAGE, engine=engine, code="reference_free_unsupported")


def _cut_punc(req: SynthesisRequest) -> tuple[str | None, list[str]]:
    if req.cut_punc is not None:
        return req.cut_punc, []
    if req.text_split_method is None:
        return None, []
    if req.text_split_method in _CUT_PUNC_FOR_METHOD:
        return _CUT_PUNC_FOR_METHOD[req.text_split_method], []
    return None, [f"text_split_method {req.text_split_method!r} has no api.py equivalent; engine default used"]


def build_synthesis_body(req: SynthesisRequest) -> tuple[dict[str, Any], list[str]]:
    """SynthesisRequest → the JSON body of api.py's `POST /`, plus warnings about dropped knobs."""
    cut_punc, warnings = _cut_punc(req)
    body: dict[str, Any] = {
        "refer_wav_path": req.reference_path,
        "prompt_text": req.prompt_text,
        "prompt_language": normalize_language(req.prompt_language),
        "text": req.text,
        "text_language": normalize_language(req.text_language),
        "top_k": 15 if req.top_k is None else req.top_k,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "speed": 1.0 if req.speed is None else req.speed,
        "sample_steps": 32 if req.sample_steps is None else req.sample_steps,
        "if_sr": False,
    }
    if cut_punc is not None:
        body["cut_punc"] = cut_punc
    ignored = {
        "seed": req.seed,
        "batch_size": req.batch_size,
        "repetition_penalty": req.repetition_penalty,
        "fragment_interval": req.fragment_interval,
    }
    warnings += [
        f"{name} is not supported by api.py engines and was ignored" for name, v in ignored.items() if v is not None
    ]
    if req.aux_reference_paths:
        # api.py's inp_refs is non-functional (engine-protocol §2.3): say so rather than pretend.
        warnings.append("extra reference audio is not supported by api.py engines and was ignored")
    return body, warnings


def set_model_params(weights: ModelWeights, engine: str) -> dict[str, str]:
    """`/set_model` needs both paths at once; a partial pair cannot be expressed on api.py."""
    if not weights.gpt or not weights.sovits:
        raise EngineRejected(
            "api.py engines switch GPT and SoVITS weights together: both paths are required", engine=engine
        )
    return {"gpt_model_path": weights.gpt, "sovits_model_path": weights.sovits}


def _message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500]
    if isinstance(parsed, dict) and "message" in parsed:
        return str(parsed["message"])
    return json.dumps(parsed, ensure_ascii=False)[:500]


def classify_error(status: int, body: bytes, engine: str) -> EngineError:
    """A non-200 api.py answer → the error we raise (see the module docstring for the table)."""
    message = _message(body)
    where = f"engine {engine}"
    if status >= 500:
        return EngineBadResponse(f"{where} failed with HTTP {status}: {message or 'no message'}", engine=engine)
    if status in (404, 405):
        return EngineBadResponse(f"{where} answered HTTP {status}: is it an api.py server?", engine=engine)
    return EngineRejected(f"{where} rejected the request: {message}", engine=engine, engine_message=message)
