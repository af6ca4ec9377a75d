"""Request parameters shared by the synthesis routes, validated once with pydantic."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidInput
from gateway.services.params import CloneParams, EngineKnobs

__all__ = ["CloneParams", "EngineKnobs", "openapi_body", "parse_params", "reject_engine_paths"]

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
        # an empty response_format is a mistake (the client meant some format), not "the default": refuse it
        return model.model_validate(_blank_to_none(fields, {"prompt_text", "text", "response_format"}))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidInput(problems, code="invalid_request") from exc


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic puts nested models under `$defs` with `#/$defs/...` refs; inside the OpenAPI document those
    resolve against its root, where nothing is, and ReDoc refuses the whole document. Inline them instead."""
    defs = schema.get("$defs", {})

    def expand(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [expand(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            siblings = {key: expand(value, seen) for key, value in node.items() if key != "$ref"}
            inlined = {"type": "object"} if name in seen else expand(defs[name], seen | {name})  # recursive: stop
            return {**inlined, **siblings}
        return {key: expand(value, seen) for key, value in node.items() if key != "$defs"}

    inlined: dict[str, Any] = expand(schema, frozenset())
    return inlined


def openapi_body(
    model: type[BaseModel], *, files: dict[str, str], json_body: bool = True, required_files: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Describe a body that routes read themselves (streamed, capped) so /docs still shows every field; the
    model's required fields are marked required, and so are `required_files` in the form."""
    schema = _inline_defs(model.model_json_schema())
    form = {
        **schema,
        "properties": {
            **schema.get("properties", {}),
            **{name: {"type": "string", "format": "binary", "description": text} for name, text in files.items()},
        },
    }
    required = [*schema.get("required", []), *required_files]
    if required:
        form["required"] = required
    content: dict[str, Any] = {"multipart/form-data": {"schema": form}}
    if json_body:
        content["application/json"] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}
