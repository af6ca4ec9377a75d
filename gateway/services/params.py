"""What a synthesis request may ask for, in the service layer's terms (validated once, by pydantic)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SplitMethod = Literal["cut0", "cut1", "cut2", "cut3", "cut4", "cut5"]


class EngineKnobs(BaseModel):
    """Optional engine knobs; None leaves the engine's own default in force."""

    # allow_inf_nan=False: "nan" fails every range check; say it must be a finite number instead of "≤ 2"
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

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


class StretchFields(BaseModel):
    """How closely a clip must meet its target duration and how far it may be stretched to (services/render.py);
    per request, or job-wide for every line."""

    model_config = ConfigDict(allow_inf_nan=False)

    duration_tolerance: float = Field(0.05, gt=0, le=1, description="accepted deviation, a fraction of the target")
    max_stretch: tuple[float, float] = Field(
        (0.8, 1.25), description="lowest and highest new/old duration factor of the time stretch ('low,high' in forms)"
    )

    @field_validator("max_stretch", mode="before")
    @classmethod
    def _split_pair(cls, value: Any) -> Any:
        """Forms send one string: "0.8,1.25" (brackets allowed)."""
        if isinstance(value, str):
            return [part.strip() for part in value.strip().strip("[]()").split(",")]
        return value

    @field_validator("max_stretch")
    @classmethod
    def _check_bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.5 <= low <= 1 <= high <= 2:
            raise ValueError("must be [low, high] with 0.5 ≤ low ≤ 1 ≤ high ≤ 2")
        return value


class DurationFields(StretchFields):
    """Duration targeting on a single request: how long the clip should last."""

    target_duration: float | None = Field(None, gt=0, le=600, description="seconds the clip should last")


class QualityFields(BaseModel):
    """What a single request asks of its clip beyond the always-on checks (services/quality.py)."""

    model_config = ConfigDict(allow_inf_nan=False)

    quality_retries: int = Field(
        0, ge=0, le=3, description="renders again with a new random seed, up to this many times, while the clip fails"
    )
    min_similarity: float | None = Field(
        None, ge=0, le=1, description="speaker similarity to the reference the clip must reach (the quality extra)"
    )


class CloneParams(QualityFields, DurationFields, EngineKnobs):
    """`POST /v1/voice-clone` fields other than the reference itself."""

    text: str = Field(min_length=1)
    text_language: str = "auto"
    prompt_text: str = Field("", max_length=1000)
    prompt_language: str | None = None
    voice_id: str | None = Field(None, max_length=128)
    trim_reference: bool = False
    stream: bool = False
    reference_audio_base64: str | None = None
    #: seed 000's name for the same field
    voice_clone_audio: str | None = None
    aux_audio_base64: list[str] | None = Field(None, description="extra references of the same voice (base64)")
