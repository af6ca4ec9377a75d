"""What a synthesis request may ask for, in the service layer's terms (validated once, by pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
