"""Fast units for the pool's selection and retry decisions (gateway/engine/selection.py): no process, no socket.

Engines are real EngineState objects over real VoiceCloner clients that are never used (tests/engine_units.py).
Where the code reads the clock itself, cooldowns are set far in the past or future so no test depends on
speed. These tests are part of the fast set for `make mutate`: they pin exact values and boundaries.
"""

from __future__ import annotations

import pytest

from gateway.engine.selection import (
    SlotQueue,
    any_engine,
    attempts_spent,
    capability_filter,
    no_capable_engine_message,
    worth_retrying,
)
from gateway.errors import (
    EngineBadResponse,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    GatewayError,
    QueueFull,
)
from gateway.settings import ModelWeights
from tests.engine_units import SETTINGS, engines, failure, make_engine, make_settings, request

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
    assert any_engine(legacy)
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
        "engines: v1-model (v2, v1), legacy (v1, ?)"
    )
    assert no_capable_engine_message(request(prompt_text=""), group[1:]) == (
        "no engine can serve this request: it needs reference-free synthesis (api_v2 only), text language "
        "'en' and prompt language 'en'; engines: legacy (v1, ?)"
    )


# ====================================================================== selection: picking an engine


def test_has_untried() -> None:
    a, b = engines(2)
    queue = SlotQueue(SETTINGS, [a, b], None)
    assert queue.has_untried(any_engine, frozenset({"http://e0"}), 0.0)
    assert not queue.has_untried(any_engine, frozenset({"http://e0", "http://e1"}), 0.0)
    b.in_flight = 1  # busy still counts: it is healthy and can take the retry later
    assert queue.has_untried(any_engine, frozenset({"http://e0"}), 0.0)
    b.cooldown_until = 5.0
    assert not queue.has_untried(any_engine, frozenset({"http://e0"}), 1.0)
    assert queue.has_untried(any_engine, frozenset({"http://e0"}), 5.0)
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
    assert error.extra == {"engines": ["a", "b", "c"]}  # the engines' ids (make_engine: the URL's host)
    assert error.message == (
        "no engine is available (2 cooling down, 2 down of 3): a is cooling_down; "
        "b is down (refused); c is cooling_down; retry in 4s"
    )


def test_no_engine_error_retry_after_without_cooldowns() -> None:
    down = make_engine("http://a", down=True)
    # a down engine is probed every down_probe_interval (and by every request): the normal interval is no hint
    assert SlotQueue(make_settings(probe_interval=7.0), [down], None).no_engine_error(50.0).retry_after == 1.0
    error = SlotQueue(make_settings(down_probe_interval=7.0), [down], None).no_engine_error(50.0)
    assert error.retry_after == 7.0 and error.message.endswith("(0 cooling down, 1 down of 1): a is down; "
                                                               "retry in 7s")
    assert SlotQueue(make_settings(down_probe_interval=0.2), [down], None).no_engine_error(50.0).retry_after == 1.0
    down.cooldown_until = 50.4  # a cooldown ending sooner than the down-probe hint wins, but never below 1 s
    assert SlotQueue(make_settings(down_probe_interval=7.0), [down], None).no_engine_error(50.0).retry_after == 1.0
