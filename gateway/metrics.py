"""Prometheus metrics, one registry per app (no module globals, so tests can run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


class Metrics:
    """Every metric the gateway exports; components receive this object and record into it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route and status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "gateway_request_seconds", "Whole request time", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_wait_seconds = Histogram(
            "gateway_queue_wait_seconds", "Time spent waiting for an engine slot", buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("gateway_queue_depth", "Requests waiting for an engine slot", registry=r)
        self.batch_queue_depth = Gauge(
            "gateway_batch_queue_depth", "Job segments waiting for an engine slot (served after requests)", registry=r
        )
        self.engine_seconds = Histogram(
            "gateway_engine_seconds", "Engine call time", ["engine"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.engine_attempts = Counter(
            "gateway_engine_attempts", "Engine attempts by outcome (ok or error code)", ["engine", "outcome"],
            registry=r,
        )
        self.engine_up = Gauge("gateway_engine_up", "1 when the engine is selectable", ["engine"], registry=r)
        self.engine_in_flight = Gauge("gateway_engine_in_flight", "Requests in flight", ["engine"], registry=r)
        self.audio_seconds = Counter("gateway_audio_seconds", "Seconds of audio returned", registry=r)
        self.time_to_first_byte = Histogram(
            "gateway_stream_ttfb_seconds", "Streaming time to first audio byte", buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_cuts = Counter(
            "gateway_stream_cuts", "Streams cut after their 200, by reason (engine, stall, deadline, client)",
            ["reason"], registry=r,
        )
        self.job_segments = Counter(
            "gateway_job_segments", "Dubbing-job lines finished, by outcome (done, failed)", ["outcome"], registry=r
        )
        self.references = Counter(
            "gateway_references", "Reference intake outcomes (stored, reused, or an error code)", ["outcome"],
            registry=r,
        )
        self.result_cache = Counter(
            "gateway_result_cache", "Result cache lookups and stores of seeded renders (hit, miss, store)",
            ["outcome"], registry=r,
        )
        self.duration_targets = Counter(
            "gateway_duration_targets", "Renders fitted to a target duration, by method and whether they fit",
            ["method", "within"], registry=r,
        )
        self.quality_checks = Counter(
            "gateway_quality_checks", "Rendered clips checked for quality (ok, flagged); each regeneration counts",
            ["outcome"], registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
