"""The contract between the service layer and the engine layer: engine-agnostic request and result."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.settings import ModelWeights


@dataclass(frozen=True)
class SynthesisRequest:
    """One synthesis, in our own vocabulary; protocol adapters map it to each flavour's fields.

    `reference_path` is always an engine-side path that the gateway wrote; clients never supply it.
    Knobs left as None are omitted, so the engine's own defaults apply.
    """

    text: str
    text_language: str
    reference_path: str
    prompt_text: str = ""
    prompt_language: str = "auto"
    cut_punc: str | None = None
    text_split_method: str | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    speed: float | None = None
    seed: int | None = None
    batch_size: int | None = None
    repetition_penalty: float | None = None
    fragment_interval: float | None = None
    sample_steps: int | None = None
    aux_reference_paths: tuple[str, ...] = ()
    weights: ModelWeights | None = None


@dataclass(frozen=True)
class EngineInfo:
    url: str
    flavor: str  # "v2" (api_v2.py) or "v1" (api.py)
    version: str | None = None  # loaded model version when known (v1, v2, v2Pro, v3, v4 ...)
    id: str = ""  # `e0`, `e1`, ... in GATEWAY_ENGINES order: what clients see instead of the URL


@dataclass
class SynthesisResult:
    """A checked RIFF WAV from an engine, plus where and how it was made."""

    wav: bytes
    sample_rate: int
    frames: int
    engine: EngineInfo
    attempts: int = 1
    queue_wait: float = 0.0
    engine_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0
