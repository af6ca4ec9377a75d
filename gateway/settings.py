"""All configuration in one place: environment variables prefixed GATEWAY_, or a .env file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ModelWeights(BaseModel):
    """A GPT/SoVITS weight pair as the engine sees the paths (admin-configured, never from clients)."""

    gpt: str | None = None
    sovits: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    # --- listening
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"

    # --- what operators and clients see (ops)
    log_format: Literal["text", "json"] = Field(
        "text", description="text for a terminal; json: one JSON object per line, one access line per request"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="browser origins allowed to call the API (comma-separated, or *); none: off"
    )

    # --- engines
    engines: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["http://127.0.0.1:9880"])
    engine_flavor: Literal["auto", "v2", "v1"] = "auto"
    engine_concurrency: int = Field(1, ge=1)
    connect_timeout: float = Field(3.0, gt=0)
    read_timeout: float = Field(30.0, gt=0, description="engine read timeout for a short text")
    read_timeout_per_char: float = Field(0.2, ge=0, description="extra read timeout per text character")
    max_request_seconds: float = Field(300.0, gt=0, description="cap on one request's whole deadline")
    max_attempts: int = Field(3, ge=1)
    max_queue: int = Field(64, ge=0)
    max_queue_wait: float = Field(60.0, gt=0)
    cooldown_after_failures: int = Field(2, ge=1)
    cooldown_seconds: float = Field(5.0, gt=0)
    cooldown_max_seconds: float = Field(60.0, gt=0)
    probe_interval: float = Field(5.0, gt=0)
    down_probe_interval: float = Field(
        0.25, gt=0, description="how often a down engine is probed (and at most how often on demand)"
    )
    # NoDecode: the validator below parses the JSON, so an empty GATEWAY_MODELS= means "none", not a crash
    models: Annotated[dict[str, ModelWeights], NoDecode] = Field(default_factory=dict)

    # --- storage
    shared_dir: Path = Path("var/shared")
    engine_shared_dir: Path | None = None

    # --- limits
    max_upload_bytes: int = Field(20_000_000, gt=0)
    max_text_chars: int = Field(5000, gt=0)
    min_reference_seconds: float = 3.0
    max_reference_seconds: float = 10.0

    # --- slow and idle clients (gateway/server.py)
    header_timeout: float = Field(
        20.0, gt=0, description="seconds a connection has to send its request headers (from connect or keep-alive)"
    )
    body_timeout: float = Field(
        20.0, gt=0, description="seconds a request body may pause; also the grace period before min_body_rate"
    )
    min_body_rate: float = Field(500.0, ge=0, description="bytes/s a request body must average after body_timeout")
    max_connections: int = Field(
        1000, ge=1, description="open client connections; one more gets a 503 and is closed (keep under ulimit -n)"
    )
    keep_alive_timeout: int = Field(5, ge=1, description="seconds an idle keep-alive connection stays open")

    # --- hot path
    reference_cache_size: int = Field(
        4096, ge=0, description="prepared references remembered by upload hash (metadata only; 0 disables)"
    )
    result_cache_bytes: int = Field(
        2_000_000_000, ge=0, description="bytes of seeded renders kept in shared_dir/results (LRU); 0 disables"
    )

    # --- streaming answers
    stream_stall_seconds: float = Field(10.0, gt=0, description="drop a streaming client that reads nothing this long")
    stream_buffer_bytes: int = Field(
        4_000_000, gt=0, description="encoded audio held for a slow reader; once full, the engine waits"
    )

    # --- dubbing jobs
    job_concurrency: int = Field(
        4, ge=1, description="segments of one job in flight at once (at least the engine count to use them all)"
    )
    job_ttl: float = Field(7 * 24 * 3600.0, gt=0, description="seconds a finished job (and its audio) is kept")
    job_max_upload_bytes: int = Field(
        200_000_000, gt=0, description="cap per file on a job (source track, subtitles, speaker references)"
    )

    # --- quality checks on every whole clip (gateway/audio/quality.py; calibrated on the CPU engine)
    quality_max_silence: float = Field(0.9, gt=0, le=1, description="flag a clip with more silent 20 ms frames")
    quality_max_clipping: float = Field(0.001, ge=0, le=1, description="flag a clip with more full-scale samples")
    quality_min_rate_ratio: float = Field(
        0.45, gt=0, le=1, description="flag speech shorter than this share of the text's typical duration"
    )
    quality_max_rate_ratio: float = Field(
        2.5, ge=1, description="flag speech longer than this many times the text's typical duration (+1 s)"
    )
    max_aux_references: int = Field(4, ge=0, le=16, description="extra references a voice or request may carry")

    # --- several replicas (gateway/coord): engine slots, queue, engine state, jobs and key limits in Redis
    redis_url: str | None = Field(
        None, description="redis://host:6379/0 to share engines between replicas; unset: one process, no Redis"
    )
    redis_prefix: str = Field("sovits-gateway", description="prefix of every Redis key (one per deployment)")
    lease_seconds: float = Field(
        10.0, gt=0, description="engine slot lease: renewed every third of it; a dead replica's slots return after it"
    )
    replica_id: str = Field("", description="this replica's name in Redis and logs (default: host-pid-random)")

    # --- speaker embeddings (gateway/speaker; the `quality` extra: torch CPU, resemblyzer, webrtcvad)
    speaker_encoder: Literal["ge2e", "ecapa"] = Field(
        "ge2e", description="ge2e: Resemblyzer's shipped weights (256-d); ecapa: ECAPA-TDNN (192-d), speaker_model_dir"
    )
    speaker_model_dir: Path | None = Field(
        None, description="the ECAPA-TDNN directory (hyperparams.json, embedding_model.ckpt); needed for ecapa"
    )
    voice_duplicate_similarity: float = Field(
        0.9, ge=-1, le=1, description="creating a voice this similar (cosine) to an existing one warns, naming it"
    )

    # --- API keys and per-key limits (gateway/auth; limits: 0 = unlimited, a key's own values win)
    api_keys_file: Path | None = Field(None, description="the keys file (sovits-gateway keys add|list|revoke)")
    api_keys: SecretStr = Field(SecretStr(""), description="comma-separated raw keys: KEY (admin) or KEY:synthesize")
    allow_open: bool = Field(False, description="run without keys on a non-loopback address")
    key_rpm: int = Field(0, ge=0, description="default requests per minute per key")
    key_concurrency: int = Field(0, ge=0, description="default requests in flight per key")
    key_audio_seconds_per_day: float = Field(0.0, ge=0, description="default audio seconds per key per UTC day")
    metrics_require_key: bool = Field(False, description="make /metrics need an API key (open by default)")

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _no_keys_file(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("engines", mode="before")
    @classmethod
    def _split_engines(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if isinstance(value, list):
            return [str(v).rstrip("/") for v in value]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in (p.strip() for p in value.split(",")) if part]
        return value

    @field_validator("engine_shared_dir", "redis_url", "speaker_model_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value or {}

    @model_validator(mode="after")
    def _ecapa_needs_a_dir(self) -> Settings:
        if self.speaker_encoder == "ecapa" and self.speaker_model_dir is None:
            raise ValueError("GATEWAY_SPEAKER_ENCODER=ecapa needs GATEWAY_SPEAKER_MODEL_DIR (the ECAPA-TDNN directory)")
        return self

    @property
    def engine_dir(self) -> Path:
        """The shared directory as the engines see it (defaults to the gateway's own path)."""
        return self.engine_shared_dir or self.shared_dir

    @property
    def refs_dir(self) -> Path:
        return self.shared_dir / "refs"

    @property
    def voices_dir(self) -> Path:
        return self.shared_dir / "voices"

    @property
    def results_dir(self) -> Path:
        return self.shared_dir / "results"

    @property
    def jobs_dir(self) -> Path:
        return self.shared_dir / "jobs"

    def to_engine_path(self, local: Path) -> str:
        """Translate a file under shared_dir into the path the engine opens (absolute on its side)."""
        # absolute(), not resolve(): no filesystem calls on the request path (the dir may be on NFS)
        relative = local.absolute().relative_to(self.shared_dir.absolute())
        base = self.engine_shared_dir if self.engine_shared_dir else self.shared_dir.absolute()
        return str(base / relative)
