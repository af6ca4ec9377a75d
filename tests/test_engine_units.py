"""Fast units for the pool's decisions (gateway/engine/health.py, selection.py): no process, no socket.

Engines are real EngineState objects over real VoiceCloner clients that are never used (a client does no
I/O until a request is made). Times are passed in as `now` where the code takes it; where it reads the
clock itself, cooldowns are set far in the past or future so the test does not depend on speed.
These tests are the fast set for mutation testing, so they pin exact values and boundaries.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.engine.client import VoiceCloner
from gateway.engine.health import RECENT_FAILURE_WINDOW, EngineState, cooldown_length, judge
from gateway.engine.selection import (
    SlotQueue,
    _any_engine,
    _Waiter,
    attempts_spent,
    capability_filter,
    no_capable_engine_message,
    worth_retrying,
)
from gateway.engine.types import EngineInfo, SynthesisRequest
from gateway.errors import (
    EngineBadResponse,
    EngineError,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    GatewayError,
    QueueFull,
)
from gateway.metrics import Metrics
from gateway.settings import ModelWeights, Settings

FAR = 10_000.0  # seconds: a cooldown that cannot end (or has long ended) during a test


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "engines": ["http://a"],
        "cooldown_seconds": 5.0,
        "cooldown_max_seconds": 60.0,
        "cooldown_after_failures": 2,
        "probe_interval": 5.0,
        "max_queue": 4,
        "max_queue_wait": 30.0,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


SETTINGS = make_settings()


_CLIENTS: dict[str, VoiceCloner] = {}


def make_engine(
    url: str = "http://a", concurrency: int = 1, *, flavor: str = "v2", version: str | None = "v2", down: bool = False
) -> EngineState:
    """A healthy (unless `down`) engine of the given flavour/version; its client is never used.

    Clients are shared per URL (building one costs ~0.1 s of TLS set-up), so engines alive at the same
    time need distinct URLs when their flavour or version differs."""
    client = _CLIENTS.get(url) or _CLIENTS.setdefault(url, VoiceCloner(url, SETTINGS))
    client.info = EngineInfo(url=client.url, flavor=flavor, version=version)
    return EngineState(client, concurrency, down=down)


def engines(count: int, concurrency: int = 1) -> list[EngineState]:
    return [make_engine(f"http://e{index}", concurrency) for index in range(count)]


def request(**fields: Any) -> SynthesisRequest:
    values: dict[str, Any] = {"text": "hi", "text_language": "en", "reference_path": "/r.wav",
                              "prompt_text": "words", "prompt_language": "en", **fields}
    return SynthesisRequest(**values)


def failure(kind: type[EngineError] = EngineBadResponse, engine: str | None = "http://a", **kw: Any) -> EngineError:
    return kind("boom", engine=engine, **kw)


# ====================================================================== health: judging outcomes


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (None, "success"),
        (asyncio.CancelledError(), "silent"),
        (ValueError("a bug of ours"), "silent"),
        (QueueFull("full"), "silent"),
        (EngineUnavailable("no engine is available"), "silent"),  # pool-level: names no engine
        (EngineTimeout("the caller's deadline"), "silent"),
        (EngineBadResponse("no engine named"), "silent"),
        (failure(EngineTimeout), "gone"),
        (failure(EngineUnavailable), "gone"),
        (failure(EngineBadResponse), "failed"),
        (failure(EngineBadResponse, code="engine_silence"), "failed"),
        (failure(EngineRejected), "refused"),
        (failure(EngineRejected, code="weights_rejected"), "refused"),
        (failure(EngineError), "refused"),
    ],
)
def test_judge(error: BaseException | None, verdict: str) -> None:
    assert judge(error) == verdict


def test_retryable_classes() -> None:
    """Which failures another engine may cure: bad answers and unreachable engines, never a timeout."""
    assert (EngineBadResponse.retryable, EngineUnavailable.retryable) == (True, True)
    assert (EngineTimeout.retryable, EngineRejected.retryable, EngineError.retryable) == (False, False, False)
    assert [cls("x").status for cls in (EngineRejected, EngineBadResponse, EngineUnavailable, EngineTimeout)] == [
        422, 502, 503, 504
    ]


# ====================================================================== health: cooldown length


@pytest.mark.parametrize(("in_a_row", "seconds"), [(0, 5.0), (1, 10.0), (2, 20.0), (3, 40.0), (4, 60.0), (9, 60.0)])
def test_cooldown_length_doubles_up_to_the_cap(in_a_row: int, seconds: float) -> None:
    assert cooldown_length(SETTINGS, in_a_row) == seconds


def test_cooldown_length_reaching_the_cap_exactly() -> None:
    settings = make_settings(cooldown_seconds=1.5, cooldown_max_seconds=6.0)
    assert [cooldown_length(settings, n) for n in range(4)] == [1.5, 3.0, 6.0, 6.0]


def test_start_cooldown_counts_and_never_shortens() -> None:
    engine = make_engine()
    assert engine.start_cooldown(SETTINGS, 100.0) == 5.0
    assert (engine.cooldowns_in_a_row, engine.cooldown_until) == (1, 105.0)
    assert engine.start_cooldown(SETTINGS, 101.0) == 10.0
    assert (engine.cooldowns_in_a_row, engine.cooldown_until) == (2, 111.0)
    engine.cooldown_until = 500.0
    assert engine.start_cooldown(SETTINGS, 102.0) == 20.0
    assert engine.cooldown_until == 500.0, "a later, shorter cooldown must not cut an ongoing one short"


# ====================================================================== health: recording outcomes


def test_fresh_engine_state() -> None:
    engine = EngineState(VoiceCloner("http://a/", SETTINGS), 2)
    assert engine.url == "http://a"
    assert (engine.in_flight, engine.probing, engine.down) == (0, False, True)
    assert (engine.consecutive_failures, engine.cooldowns_in_a_row, engine.cooldown_until) == (0, 0, 0.0)
    assert (engine.last_probe, engine.weights, engine.weights_known, engine.last_error) == (0.0, None, True, None)
    assert list(engine.recent_failures) == []
    engine.down = False
    assert engine.selectable(0.5) and engine.state(0.5) == "ready"


def test_success_resets_failures_and_doubling() -> None:
    engine = make_engine()
    engine.consecutive_failures, engine.cooldowns_in_a_row, engine.last_error = 3, 2, "old"
    engine.recent_failures.append(1.0)
    assert engine.record(None, SETTINGS, 10.0) is None
    assert (engine.consecutive_failures, engine.cooldowns_in_a_row) == (0, 0)
    assert engine.last_error == "old" and list(engine.recent_failures) == [1.0]


@pytest.mark.parametrize("error", [asyncio.CancelledError(), EngineBadResponse("pool-level, no engine")])
def test_silent_outcome_changes_nothing(error: BaseException) -> None:
    engine = make_engine()
    engine.consecutive_failures, engine.cooldowns_in_a_row = 1, 1
    assert engine.record(error, SETTINGS, 10.0) is None
    assert (engine.consecutive_failures, engine.cooldowns_in_a_row, engine.cooldown_until) == (1, 1, 0.0)
    assert (engine.last_error, engine.down, list(engine.recent_failures)) == (None, False, [])


def test_rejection_is_remembered_but_not_counted() -> None:
    engine = make_engine()
    engine.consecutive_failures = 1
    settings = make_settings(cooldown_after_failures=1)
    for _ in range(3):
        assert engine.record(failure(EngineRejected), settings, 10.0) is None
    assert (engine.consecutive_failures, engine.cooldown_until, engine.down) == (1, 0.0, False)
    assert engine.last_error == "boom" and list(engine.recent_failures) == []


def test_bad_answers_cool_after_the_threshold_and_double() -> None:
    engine = make_engine()
    settings = make_settings(cooldown_after_failures=3)
    assert engine.record(failure(), settings, 10.0) is None
    assert engine.record(failure(), settings, 11.0) is None
    assert (engine.consecutive_failures, engine.cooldown_until, engine.last_error) == (2, 0.0, "boom")
    assert engine.record(failure(), settings, 12.0) == 5.0  # the third in a row: cooldown_after_failures
    assert (engine.consecutive_failures, engine.cooldown_until, engine.cooldowns_in_a_row) == (3, 17.0, 1)
    assert engine.record(failure(), settings, 20.0) == 10.0  # still failing after the cooldown: doubled
    assert engine.cooldown_until == 30.0 and not engine.down
    assert list(engine.recent_failures) == [10.0, 11.0, 12.0, 20.0]


def test_bad_answer_cools_at_the_threshold_of_one() -> None:
    engine = make_engine()
    assert engine.record(failure(), make_settings(cooldown_after_failures=1), 10.0) == 5.0
    assert engine.cooldown_until == 15.0


@pytest.mark.parametrize("kind", [EngineTimeout, EngineUnavailable])
def test_timeout_or_unreachable_marks_down_and_cools_at_once(kind: type[EngineError]) -> None:
    engine = make_engine()
    assert engine.record(failure(kind), make_settings(cooldown_after_failures=5), 10.0) == 5.0
    assert (engine.down, engine.consecutive_failures, engine.cooldown_until) == (True, 1, 15.0)
    assert engine.last_error == "boom" and list(engine.recent_failures) == [10.0]


def test_probe_results() -> None:
    engine = make_engine()
    engine.last_error = "old"
    engine.probe_failed()
    assert engine.down and engine.last_error == "old"
    engine.probe_failed("")
    assert engine.last_error == "old"
    engine.probe_failed("gone")
    assert engine.last_error == "gone"
    engine.consecutive_failures = 4
    engine.recovered(first_contact=True)
    assert (engine.down, engine.consecutive_failures, engine.weights_known) == (False, 0, True)
    engine.down, engine.consecutive_failures = True, 2
    engine.recovered(first_contact=False)  # it may have restarted with its start-up weights
    assert (engine.down, engine.consecutive_failures, engine.weights_known) == (False, 0, False)


# ====================================================================== health: state and availability


def test_cooldown_remaining_and_selectable_boundaries() -> None:
    engine = make_engine()
    engine.cooldown_until = 10.0
    assert [engine.cooldown_remaining(now) for now in (7.0, 10.0, 12.0)] == [3.0, 0.0, 0.0]
    assert [engine.selectable(now) for now in (9.5, 10.0, 10.5)] == [False, True, True]
    engine.down = True
    assert not engine.selectable(11.0)


def test_has_free_slot() -> None:
    engine = make_engine(concurrency=2)
    engine.in_flight = 1
    assert engine.has_free_slot(0.0)
    engine.in_flight = 2
    assert not engine.has_free_slot(0.0)
    engine.in_flight, engine.probing = 0, True
    assert not engine.has_free_slot(0.0)
    engine.probing, engine.cooldown_until = False, 5.0
    assert not engine.has_free_slot(4.0) and engine.has_free_slot(5.0)


def test_state_names() -> None:
    engine = make_engine(concurrency=2)
    engine.cooldown_until, engine.down = 10.0, True
    assert engine.state(9.0) == "cooling_down"
    assert engine.state(10.0) == "down"
    engine.down, engine.in_flight = False, 1
    assert engine.state(10.0) == "ready"
    engine.in_flight = 2
    assert engine.state(10.0) == "busy"


def test_recent_failures_expire_after_the_window() -> None:
    assert RECENT_FAILURE_WINDOW == 60.0
    engine = make_engine()
    engine.recent_failures.extend([0.0, 10.0, 50.0])
    assert engine.recent_failure_count(60.0) == 3  # exactly 60 s ago still counts
    assert engine.recent_failure_count(60.5) == 2
    assert list(engine.recent_failures) == [10.0, 50.0]
    assert engine.recent_failure_count(200.0) == 0


# ====================================================================== health: weights


def test_matches() -> None:
    engine = make_engine()
    assert engine.matches(None) and engine.matches(ModelWeights())
    assert not engine.matches(ModelWeights(gpt="g"))  # start-up weights: unknown paths
    assert not engine.matches(ModelWeights(sovits="s"))
    engine.weights = ModelWeights(gpt="g", sovits="s")
    assert engine.matches(ModelWeights(gpt="g", sovits="s"))
    assert engine.matches(ModelWeights(gpt="g")) and engine.matches(ModelWeights(sovits="s"))
    assert not engine.matches(ModelWeights(gpt="x")) and not engine.matches(ModelWeights(sovits="x"))
    assert not engine.matches(ModelWeights(gpt="g", sovits="x"))
    engine.weights_known = False
    assert not engine.matches(ModelWeights(gpt="g", sovits="s"))
    assert engine.matches(ModelWeights())


def test_switched_to_keeps_the_other_part() -> None:
    engine = make_engine()
    engine.weights_known = False
    engine.switched_to(ModelWeights(sovits="s1"))
    assert engine.weights == ModelWeights(sovits="s1") and engine.weights_known
    engine.switched_to(ModelWeights(gpt="g1"))
    assert engine.weights == ModelWeights(gpt="g1", sovits="s1")
    engine.switched_to(ModelWeights(sovits="s2"))
    assert engine.weights == ModelWeights(gpt="g1", sovits="s2")
    engine.weights_known = False  # after a recovery: the old pair is no base
    engine.switched_to(ModelWeights(gpt="g3"))
    assert engine.weights == ModelWeights(gpt="g3")


def test_describe() -> None:
    engine = make_engine(concurrency=2, version="v2Pro")
    engine.in_flight, engine.consecutive_failures, engine.cooldown_until = 1, 2, 11.23456
    engine.last_error = "boom"
    assert engine.describe(10.0) == {
        "url": "http://a",
        "flavor": "v2",
        "version": "v2Pro",
        "state": "cooling_down",
        "in_flight": 1,
        "consecutive_failures": 2,
        "cooldown_remaining": 1.235,
        "loaded_weights": None,
        "last_error": "boom",
    }
    engine.weights = ModelWeights(sovits="s")
    assert engine.describe(20.0)["loaded_weights"] == {"gpt": None, "sovits": "s"}
    assert engine.describe(20.0)["cooldown_remaining"] == 0.0
    engine.weights_known = False
    assert engine.describe(20.0)["loaded_weights"] == "unknown"


# ====================================================================== selection: pure decisions


@pytest.mark.parametrize(
    ("error", "untried_left", "expected"),
    [
        (failure(EngineBadResponse), True, True),
        (failure(EngineUnavailable), True, True),
        (failure(EngineBadResponse), False, False),  # only the engine that just failed is left
        (failure(EngineTimeout), True, False),  # the engine may still be working on it
        (failure(EngineRejected), True, False),  # the request is bad everywhere
        (EngineUnavailable("no engine slot", code="queue_timeout"), True, False),  # pool-level: final
        (QueueFull("full"), True, False),
        (GatewayError("other"), True, False),
        (ValueError("bug"), True, False),
    ],
)
def test_worth_retrying(error: BaseException, untried_left: bool, expected: bool) -> None:
    assert worth_retrying(error, untried_left=untried_left) is expected


@pytest.mark.parametrize(
    ("attempts", "max_attempts", "now", "expected"),
    [(1, 2, 5.0, False), (2, 2, 5.0, True), (3, 2, 5.0, True), (1, 3, 9.99, False), (1, 3, 10.0, True),
     (1, 3, 11.0, True), (1, 1, 0.0, True)],
)
def test_attempts_spent(attempts: int, max_attempts: int, now: float, expected: bool) -> None:
    assert attempts_spent(attempts, max_attempts, now, 10.0) is expected


def test_capability_filter() -> None:
    v1_model = make_engine("http://v1-model", version="v1")
    v2_model = make_engine("http://v2-model", version="v2")
    unknown = make_engine("http://unknown", version=None)
    legacy = make_engine("http://legacy", flavor="v1", version=None)
    assert _any_engine(legacy)
    korean = capability_filter(request(text_language="ko"))
    assert [korean(e) for e in (v1_model, v2_model, unknown, legacy)] == [False, True, True, True]
    korean_prompt = capability_filter(request(prompt_language="ko"))
    assert [korean_prompt(e) for e in (v1_model, v2_model)] == [False, True]
    english = capability_filter(request())
    assert all(english(e) for e in (v1_model, v2_model, unknown, legacy))
    reference_free = capability_filter(request(prompt_text=""))
    assert [reference_free(e) for e in (v1_model, v2_model, unknown, legacy)] == [True, True, True, False]


def test_no_capable_engine_message() -> None:
    group = [make_engine("http://v1-model", version="v1"), make_engine("http://legacy", flavor="v1", version=None)]
    assert no_capable_engine_message(request(text_language="ko"), group) == (
        "no engine can serve this request: it needs text language 'ko' and prompt language 'en'; "
        "engines: http://v1-model (v2, v1), http://legacy (v1, ?)"
    )
    assert no_capable_engine_message(request(prompt_text=""), group[1:]) == (
        "no engine can serve this request: it needs reference-free synthesis (api_v2 only), text language "
        "'en' and prompt language 'en'; engines: http://legacy (v1, ?)"
    )


# ====================================================================== selection: picking an engine


def test_has_untried() -> None:
    a, b = engines(2)
    queue = SlotQueue(SETTINGS, [a, b], None)
    assert queue.has_untried(_any_engine, frozenset({"http://e0"}), 0.0)
    assert not queue.has_untried(_any_engine, frozenset({"http://e0", "http://e1"}), 0.0)
    b.in_flight = 1  # busy still counts: it is healthy and can take the retry later
    assert queue.has_untried(_any_engine, frozenset({"http://e0"}), 0.0)
    b.cooldown_until = 5.0
    assert not queue.has_untried(_any_engine, frozenset({"http://e0"}), 1.0)
    assert queue.has_untried(_any_engine, frozenset({"http://e0"}), 5.0)
    assert not queue.has_untried(lambda e: e is a, frozenset({"http://e0"}), 5.0)


def test_pick_prefers_untried_engines() -> None:
    a, b = engines(2)
    b.in_flight, b.concurrency = 1, 2  # busier, yet untried wins
    queue = SlotQueue(SETTINGS, [a, b], None)
    assert queue._pick(None, frozenset({"http://e0"}), 0.0) is b
    # Every healthy engine tried: a tried one is better than none.
    assert queue._pick(None, frozenset({"http://e0", "http://e1"}), 0.0) is a


def test_pick_waits_for_a_busy_untried_engine_rather_than_repeat_a_failed_one() -> None:
    a, b = engines(2)
    b.in_flight = 1
    queue = SlotQueue(SETTINGS, [a, b], None)
    assert queue._pick(None, frozenset({"http://e0"}), 0.0) is None


def test_pick_skips_unhealthy_unfit_and_full_engines() -> None:
    a, b, c = engines(3)
    a.down = True
    b.cooldown_until = 10.0
    queue = SlotQueue(SETTINGS, [a, b, c], None)
    assert queue._pick(None, frozenset(), 5.0) is c
    assert queue._pick(None, frozenset(), 5.0, lambda e: e is not c) is None
    c.probing = True
    assert queue._pick(None, frozenset(), 5.0) is None
    c.probing = False
    assert queue._pick(None, frozenset(), 10.0) is b  # its cooldown is over


def test_pick_ranks_matching_weights_over_load() -> None:
    a, b = engines(2, concurrency=2)
    wanted = ModelWeights(sovits="s")
    a.weights, a.in_flight = wanted, 1
    queue = SlotQueue(SETTINGS, [a, b], None)
    assert queue._pick(wanted, frozenset(), 0.0) is a
    assert queue._pick(None, frozenset(), 0.0) is b  # no weights wanted: the least busy


def test_pick_ranks_load_over_recent_failures() -> None:
    a, b = engines(2, concurrency=3)
    a.in_flight, b.in_flight = 1, 2
    a.recent_failures.extend([1.0, 2.0])
    queue = SlotQueue(SETTINGS, [a, b], None)
    assert queue._pick(None, frozenset(), 3.0) is a


def test_pick_ranks_fewer_recent_failures_over_turn() -> None:
    a, b = engines(2)
    a.recent_failures.extend([1.0, 2.0])
    b.recent_failures.append(3.0)
    queue = SlotQueue(SETTINGS, [a, b], None)
    assert queue._pick(None, frozenset(), 4.0) is b
    assert queue._pick(None, frozenset(), 100.0) is a  # they have expired: round-robin from the start


def test_pick_round_robin() -> None:
    group = engines(3)
    queue = SlotQueue(SETTINGS, group, None)
    picks = [queue._pick(None, frozenset(), 0.0) for _ in range(4)]
    assert picks == [group[0], group[1], group[2], group[0]]
    group[2].down = True
    picks = [queue._pick(None, frozenset(), 0.0) for _ in range(3)]
    assert picks == [group[1], group[0], group[1]]


# ====================================================================== selection: estimates and refusals


def test_estimated_wait() -> None:
    a, b, c = make_engine("http://a", 2), make_engine("http://b", 1), make_engine("http://c", 4, down=True)
    queue = SlotQueue(SETTINGS, [a, b, c], None)
    assert queue.estimated_wait(3) == 2.0  # 2 s assumed × 3 / capacity 3 (the down engine adds none)
    assert queue.estimated_wait(1) == 1.0  # 0.67 s, but never below 1 s
    queue.record_engine_seconds(4.0)
    assert queue.estimated_wait(3) == 4.0
    queue.record_engine_seconds(9.0)  # EWMA: 4 + 0.2 × (9 - 4)
    assert queue.estimated_wait(3) == pytest.approx(5.0)
    assert queue.estimated_wait(6) == pytest.approx(10.0)
    a.down = b.down = True
    assert queue.estimated_wait(2) == pytest.approx(10.0)  # no capacity: counted as one slot


def test_no_engine_error_retry_after_is_the_soonest_cooldown_end() -> None:
    now = 100.0
    a, b, c = make_engine("http://a"), make_engine("http://b", down=True), make_engine("http://c", down=True)
    a.cooldown_until, c.cooldown_until = now + 7.5, now + 3.25
    b.last_error = "refused"
    error = SlotQueue(SETTINGS, [a, b, c], None).no_engine_error(now)
    assert isinstance(error, EngineUnavailable) and error.status == 503
    assert error.retry_after == 3.25
    assert error.extra == {"engines": ["http://a", "http://b", "http://c"]}
    assert error.message == (
        "no engine is available (2 cooling down, 2 down of 3): http://a is cooling_down; "
        "http://b is down (refused); http://c is cooling_down; retry in 4s"
    )


def test_no_engine_error_retry_after_without_cooldowns() -> None:
    down = make_engine("http://a", down=True)
    error = SlotQueue(make_settings(probe_interval=7.0), [down], None).no_engine_error(50.0)
    assert error.retry_after == 7.0 and error.message.endswith("(0 cooling down, 1 down of 1): http://a is down; "
                                                               "retry in 7s")
    assert SlotQueue(make_settings(probe_interval=0.2), [down], None).no_engine_error(50.0).retry_after == 1.0
    down.cooldown_until = 50.4
    assert SlotQueue(SETTINGS, [down], None).no_engine_error(50.0).retry_after == 1.0  # never below 1 s


# ====================================================================== selection: the queue (async, no I/O)

def waiter(loop: asyncio.AbstractEventLoop, give_up_at: float) -> _Waiter:
    return _Waiter(None, frozenset(), give_up_at, loop.create_future())


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def test_fail_hopeless_waiters(loop: asyncio.AbstractEventLoop) -> None:
    now = 100.0
    cooling, down_cooling = make_engine("http://a"), make_engine("http://b", down=True)
    cooling.cooldown_until, down_cooling.cooldown_until = now + 5.0, now + 2.0  # a down engine returns via a probe
    queue = SlotQueue(SETTINGS, [cooling, down_cooling], None)
    early, exact, late, settled = waiter(loop, now + 4.0), waiter(loop, now + 5.0), waiter(loop, now + 6.0), \
        waiter(loop, now + 1.0)
    settled.future.cancel()
    queue._waiters.extend([early, exact, late, settled])
    queue._fail_hopeless_waiters(now)
    assert list(queue._waiters) == [exact, late, settled]
    error = early.future.exception()
    # Retry-After still names the soonest cooldown end, a down engine's too (it is probed right then).
    assert isinstance(error, EngineUnavailable) and error.retry_after == 2.0
    assert not exact.future.done() and not late.future.done()


def test_fail_hopeless_waiters_when_no_cooldown_will_end(loop: asyncio.AbstractEventLoop) -> None:
    now = 100.0
    ended, down = make_engine("http://a"), make_engine("http://b", down=True)
    ended.cooldown_until, down.cooldown_until = now, now + 50.0  # ended: not a rescue to wait for
    queue = SlotQueue(SETTINGS, [ended, down], None)
    patient = waiter(loop, now + 1000.0)
    queue._waiters.append(patient)
    queue._fail_hopeless_waiters(now)
    assert not queue._waiters and isinstance(patient.future.exception(), EngineUnavailable)


@pytest.mark.anyio
async def test_acquire_takes_a_free_engine_at_once() -> None:
    metrics = Metrics()
    a, b = engines(2)
    queue = SlotQueue(SETTINGS, [a, b], metrics)
    assert await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False) == (a, 0.0)
    assert (a.in_flight, b.in_flight) == (1, 0)
    sample = metrics.registry.get_sample_value
    assert sample("gateway_engine_in_flight", {"engine": "http://e0"}) == 1
    assert sample("gateway_queue_wait_seconds_count") == 1 and sample("gateway_queue_wait_seconds_sum") == 0
    assert await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False) == (b, 0.0)
    assert (a.in_flight, b.in_flight) == (1, 1)


@pytest.mark.anyio
async def test_acquire_refuses_when_closed_or_nothing_is_healthy() -> None:
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], None)
    a.down = True
    with pytest.raises(EngineUnavailable) as caught:
        await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False)
    assert caught.value.message.startswith("no engine is available") and caught.value.retry_after == 5.0
    a.down = False
    with pytest.raises(EngineUnavailable) as unfit:
        await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False, fits=lambda e: False)
    assert unfit.value.message.startswith("no engine is available")
    queue.close()
    with pytest.raises(EngineUnavailable) as closed:
        await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False)
    assert closed.value.message == "the engine pool is closed"
    assert a.in_flight == 0


async def _queued(queue: SlotQueue, depth: int) -> None:
    """Let queued tasks run until the queue holds `depth` waiters (no clock involved)."""
    for _ in range(100):
        if queue.depth == depth:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"queue depth {queue.depth}, expected {depth}")


@pytest.mark.anyio
async def test_queue_is_fifo_and_a_retry_goes_first() -> None:
    metrics = Metrics()
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], metrics)
    deadline = time.monotonic() + 10
    await queue.acquire(None, frozenset(), deadline, retry=False)
    order: list[str] = []

    async def take(name: str, retry: bool) -> None:
        engine, waited = await queue.acquire(None, frozenset(), deadline, retry=retry)
        assert waited >= 0.0
        order.append(name)
        queue.release(engine)

    first = asyncio.create_task(take("first", False))
    await _queued(queue, 1)
    second = asyncio.create_task(take("second", False))
    await _queued(queue, 2)
    retry = asyncio.create_task(take("retry", True))
    await _queued(queue, 3)
    assert metrics.registry.get_sample_value("gateway_queue_depth") == 3
    queue.release(a)
    await asyncio.gather(first, second, retry)
    assert order == ["retry", "first", "second"]
    assert a.in_flight == 0 and queue.depth == 0
    assert metrics.registry.get_sample_value("gateway_queue_depth") == 0
    assert metrics.registry.get_sample_value("gateway_engine_in_flight", {"engine": "http://e0"}) == 0


@pytest.mark.anyio
async def test_queue_full_refuses_first_attempts_but_not_retries() -> None:
    (a,) = engines(1)
    queue = SlotQueue(make_settings(max_queue=1), [a], None)
    deadline = time.monotonic() + 10
    await queue.acquire(None, frozenset(), deadline, retry=False)
    waiting = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=False))
    await _queued(queue, 1)
    with pytest.raises(QueueFull) as caught:
        await queue.acquire(None, frozenset(), deadline, retry=False)
    assert caught.value.message == "all engines are busy and 1 requests are already waiting"
    assert caught.value.retry_after == 4.0  # estimated_wait(2): 2 s assumed × position 2 / capacity 1
    retry = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=True))
    await _queued(queue, 2)
    retry.cancel()
    waiting.cancel()
    await asyncio.gather(retry, waiting, return_exceptions=True)
    assert queue.depth == 0 and a.in_flight == 1


@pytest.mark.anyio
async def test_queue_of_zero_refuses_at_once() -> None:
    (a,) = engines(1)
    queue = SlotQueue(make_settings(max_queue=0), [a], None)
    await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False)
    with pytest.raises(QueueFull):
        await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False)


@pytest.mark.anyio
@pytest.mark.parametrize(("max_queue_wait", "deadline_in", "shown"), [(0.04, 10.0, "0.0"), (30.0, 0.04, "0.0"),
                                                                       (30.0, -5.0, "0.0")])
async def test_queue_wait_is_bounded_by_the_limit_and_the_deadline(
    max_queue_wait: float, deadline_in: float, shown: str
) -> None:
    (a,) = engines(1)
    queue = SlotQueue(make_settings(max_queue_wait=max_queue_wait), [a], None)
    await queue.acquire(None, frozenset(), time.monotonic() + 10, retry=False)
    async with asyncio.timeout(5):  # a wrong bound would wait 30 s
        with pytest.raises(EngineUnavailable) as caught:
            await queue.acquire(None, frozenset(), time.monotonic() + deadline_in, retry=False)
    assert caught.value.code == "queue_timeout" and caught.value.status == 503
    assert caught.value.message == f"no engine slot became free within {shown}s"
    assert caught.value.retry_after == 2.0  # estimated_wait(1): 2 s assumed × position 1 / capacity 1
    assert queue.depth == 0 and a.in_flight == 1


@pytest.mark.anyio
async def test_cancelled_waiter_leaves_and_hands_back_a_slot_it_was_given() -> None:
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], None)
    deadline = time.monotonic() + 10
    await queue.acquire(None, frozenset(), deadline, retry=False)
    gone = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=False))
    await _queued(queue, 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert queue.depth == 0 and a.in_flight == 1
    # Given the slot, then cancelled before it could run: the slot goes back.
    late = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=False))
    await _queued(queue, 1)
    queue.release(a)
    assert a.in_flight == 1 and queue.depth == 0  # handed to the waiter
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert a.in_flight == 0


@pytest.mark.anyio
async def test_dispatch_serves_the_first_servable_waiter() -> None:
    a, b = engines(2)
    queue = SlotQueue(SETTINGS, [a, b], None)
    deadline = time.monotonic() + 10
    await queue.acquire(None, frozenset(), deadline, retry=False)
    await queue.acquire(None, frozenset(), deadline, retry=False)
    only_b = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=False, fits=lambda e: e is b))
    await _queued(queue, 1)
    anyone = asyncio.create_task(queue.acquire(None, frozenset(), deadline, retry=False))
    await _queued(queue, 2)
    queue.release(a)  # the first waiter cannot use it; the second can
    assert (await anyone)[0] is a and not only_b.done()
    queue.release(b)
    assert (await only_b)[0] is b


@pytest.mark.anyio
async def test_dispatch_drops_settled_waiters_and_does_nothing_when_closed() -> None:
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], None)
    loop = asyncio.get_running_loop()
    settled = waiter(loop, time.monotonic() + 10)
    settled.future.cancel()
    fresh = waiter(loop, time.monotonic() + 10)
    queue._waiters.extend([settled, fresh])
    queue.dispatch()
    assert list(queue._waiters) == [] and fresh.future.result() is a and a.in_flight == 1
    queue.release(a)
    queue.closed = True
    late = waiter(loop, time.monotonic() + 10)
    queue._waiters.append(late)
    queue.dispatch()
    assert not late.future.done() and a.in_flight == 0


@pytest.mark.anyio
async def test_dispatch_fails_hopeless_waiters_when_nothing_is_healthy() -> None:
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], None)
    loop = asyncio.get_running_loop()
    a.cooldown_until = time.monotonic() + FAR
    hopeless, rescued = waiter(loop, time.monotonic() + 1.0), waiter(loop, math.inf)
    queue._waiters.extend([hopeless, rescued])
    queue.dispatch()
    assert isinstance(hopeless.future.exception(), EngineUnavailable)
    assert list(queue._waiters) == [rescued] and not rescued.future.done()
    a.cooldown_until = time.monotonic() - FAR
    queue.dispatch()
    assert rescued.future.result() is a and queue.depth == 0


@pytest.mark.anyio
async def test_close_fails_every_waiter() -> None:
    metrics = Metrics()
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], metrics)
    loop = asyncio.get_running_loop()
    settled, open_ = waiter(loop, 0.0), waiter(loop, 0.0)
    settled.future.set_result(a)
    queue._waiters.extend([settled, open_])
    queue.close()
    assert queue.closed and queue.depth == 0
    error = open_.future.exception()
    assert isinstance(error, EngineUnavailable) and error.message == "the gateway is shutting down"
    assert settled.future.result() is a
    assert metrics.registry.get_sample_value("gateway_queue_depth") == 0


def test_has_untried_asks_the_capability_filter_about_each_engine() -> None:
    a, b = engines(2)
    queue = SlotQueue(SETTINGS, [a, b], None)
    assert queue.has_untried(lambda e: e is b, frozenset(), 0.0)
    assert not queue.has_untried(lambda e: e is b, frozenset({"http://e1"}), 0.0)


@pytest.mark.anyio
async def test_acquire_at_once_honours_weights_and_capabilities() -> None:
    a, b = engines(2, concurrency=2)
    wanted = ModelWeights(sovits="s")
    b.weights = wanted
    queue = SlotQueue(SETTINGS, [a, b], None)
    deadline = time.monotonic() + 10
    assert (await queue.acquire(wanted, frozenset(), deadline, retry=False))[0] is b
    assert (await queue.acquire(None, frozenset(), deadline, retry=False, fits=lambda e: e is b))[0] is b
    assert (b.in_flight, a.in_flight) == (2, 0), "each slot taken counts"


@pytest.mark.anyio
async def test_queued_waiter_gets_the_engine_with_its_weights() -> None:
    a, b = engines(2)
    wanted = ModelWeights(sovits="s")
    b.weights = wanted
    queue = SlotQueue(SETTINGS, [a, b], None)
    deadline = time.monotonic() + 10
    a.in_flight = b.in_flight = 1
    task = asyncio.create_task(queue.acquire(wanted, frozenset(), deadline, retry=False))
    await _queued(queue, 1)
    a.in_flight = b.in_flight = 0
    queue.dispatch()  # both free: round-robin alone would pick the first
    assert (await task)[0] is b


@pytest.mark.anyio
async def test_queued_waiter_gives_up_at_its_own_time() -> None:
    """A waiter's give-up time is when it was queued plus its budget: a cooldown ending before that rescues it."""
    (a,) = engines(1)
    queue = SlotQueue(SETTINGS, [a], None)
    before = time.monotonic()
    await queue.acquire(None, frozenset(), before + 100, retry=False)
    task = asyncio.create_task(queue.acquire(None, frozenset(), before + 100, retry=False))
    await _queued(queue, 1)
    a.cooldown_until = time.monotonic() + 20.0  # ends before the 30 s queue wait is over
    queue.dispatch()
    assert queue.depth == 1 and not task.done()
    a.cooldown_until = 0.0
    queue.release(a)
    engine, waited = await task
    assert engine is a and 0.0 <= waited <= time.monotonic() - before
