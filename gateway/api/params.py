"""Request parameters shared by the synthesis routes, validated once with pydantic."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import InvalidInput

#: Fields that would let a client choose a file on the engine host (engine-protocol.md §5, DESIGN §9).
ENGINE_PATH_FIELDS = frozenset(
    {
        "ref_audio_path",
        "refer_wav_path",
        "refer_audio_path",
        "reference_path",
        "aux_ref_audio_paths",
        "inp_refs",
        "weights_path",
        "gpt_model_path",
        "sovits_model_path",
        "gpt_weights",
        "sovits_weights",
    }
)

M = TypeVar("M", bound=BaseModel)

SplitMethod = Literal["cut0", "cut1", "cut2", "cut3", "cut4", "cut5"]


class EngineKnobs(BaseModel):
    """Optional engine knobs; None leaves the engine's own default in force."""

    model_config = ConfigDict(extra="forbid")

    cut_punc: str | None = Field(None, max_length=32)
    text_split_method: SplitMethod | None = None
    top_k: int | None = Field(None, ge=1, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    temperature: float | None = Field(None, gt=0, le=2)
    speed: float | None = Field(None, ge=0.25, le=4)
    seed: int | None = Field(None, ge=-1, le=2**32 - 1)
    batch_size: int | None = Field(None, ge=1, le=64)
    repetition_penalty: float | None = Field(None, ge=0.5, le=3)
    fragment_interval: float | None = Field(None, ge=0, le=5)
    sample_steps: int | None = Field(None, ge=1, le=128)
    model: str | None = Field(None, max_length=128, description="an admin-configured weights name (GATEWAY_MODELS)")


class CloneParams(EngineKnobs):
    """`POST /v1/voice-clone` fields other than the reference itself."""

    text: str = Field(min_length=1)
    text_language: str = "auto"
    prompt_text: str = Field("", max_length=1000)
    prompt_language: str | None = None
    voice_id: str | None = Field(None, max_length=128)
    trim_reference: bool = False
    stream: bool = False
    reference_audio_base64: str | None = None


def reject_engine_paths(fields: dict[str, Any]) -> None:
    """A client never names a path on the engine host: say so plainly instead of ignoring the field."""
    named = sorted(ENGINE_PATH_FIELDS.intersection(fields))
    if named:
        raise InvalidInput(
            f"'{named[0]}' names a file on the engine host, which clients cannot choose; "
            "upload the reference as 'audio' (or 'reference_audio_base64', or use 'voice_id')",
            code="engine_path_not_allowed",
        )


def _blank_to_none(fields: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """HTML forms send empty strings for untouched inputs; treat them as absent."""
    return {k: v for k, v in fields.items() if not (v == "" and k not in keep)}


def parse_params(model: type[M], fields: dict[str, Any]) -> M:
    """Validate into `model`, turning pydantic's errors into our 422 envelope."""
    reject_engine_paths(fields)
    try:
        return model.model_validate(_blank_to_none(fields, {"prompt_text", "text"}))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidInput(problems, code="invalid_request") from exc


def openapi_body(model: type[BaseModel], *, files: dict[str, str], json_body: bool = True) -> dict[str, Any]:
    """Describe a body that routes read themselves (streamed, capped) so /docs still shows every field."""
    schema = model.model_json_schema()
    form = {
        **schema,
        "properties": {
            **schema.get("properties", {}),
            **{name: {"type": "string", "format": "binary", "description": text} for name, text in files.items()},
        },
    }
    content: dict[str, Any] = {"multipart/form-data": {"schema": form}}
    if json_body:
        content["application/json"] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}
