"""Fast units for the engine health rules (gateway/engine/health.py): no process, no socket.

Engines are real EngineState objects over real VoiceCloner clients that are never used (tests/engine_units.py).
Times are passed in as `now`. These tests are part of the fast set for `make mutate`: they pin exact values
and boundaries.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.engine.client import VoiceCloner
from gateway.engine.health import RECENT_FAILURE_WINDOW, EngineState, cooldown_length, judge
from gateway.errors import (
    EngineBadResponse,
    EngineError,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    QueueFull,
)
from gateway.settings import ModelWeights
from tests.engine_units import SETTINGS, failure, make_engine, make_settings

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
        (failure(EngineTimeout), "hung"),
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


def test_timeout_marks_down_and_cools_at_once() -> None:
    engine = make_engine()
    assert engine.record(failure(EngineTimeout), make_settings(cooldown_after_failures=5), 10.0) == 5.0
    assert (engine.down, engine.consecutive_failures, engine.cooldown_until) == (True, 1, 15.0)
    assert engine.last_error == "boom" and list(engine.recent_failures) == [10.0]
    assert engine.cooldowns_in_a_row == 1 and not engine.revivable(14.9) and engine.revivable(15.0)


def test_unreachable_marks_down_without_a_cooldown() -> None:
    """A refused or dropped connection: the process is gone or restarting; a probe brings it back."""
    engine = make_engine()
    engine.cooldowns_in_a_row = 2
    assert engine.record(failure(EngineUnavailable), make_settings(cooldown_after_failures=5), 10.0) is None
    assert (engine.down, engine.consecutive_failures, engine.cooldown_until) == (True, 1, 0.0)
    assert engine.last_error == "boom" and list(engine.recent_failures) == [10.0]
    assert engine.cooldowns_in_a_row == 2 and engine.revivable(10.0) and engine.state(10.0) == "down"


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


def test_revivable_is_down_and_not_cooling() -> None:
    engine = make_engine()
    assert not engine.revivable(0.0)  # up
    engine.down, engine.cooldown_until = True, 10.0
    assert [engine.revivable(now) for now in (9.9, 10.0, 11.0)] == [False, True, True]
    engine.down = False
    assert not engine.revivable(11.0)  # cooling from bad answers, or over: either way not down


INTERVAL, DOWN = 5.0, 0.25


def test_probe_due_for_a_healthy_engine_every_interval() -> None:
    engine = make_engine()
    engine.last_probe = 100.0
    # 0.9 × 5 s = 4.5 s: the loop ticks every 0.25 s, so a probe a hair early is fine
    assert [engine.probe_due(now, INTERVAL, DOWN) for now in (100.25, 104.4, 104.5, 110.0)] == [
        False, False, True, True
    ]
    engine.cooldown_until = 200.0  # cooling from bad answers: still probed at the normal interval
    assert not engine.probe_due(104.4, INTERVAL, DOWN) and engine.probe_due(104.5, INTERVAL, DOWN)


def test_probe_due_for_a_down_engine_every_down_interval() -> None:
    engine = make_engine(down=True)
    engine.last_probe = 0.0  # 0.9 × 0.25 s = 0.225 s, exactly (in binary too) at the boundary
    assert [engine.probe_due(now, INTERVAL, DOWN) for now in (0.2, 0.225, 0.3)] == [False, True, True]


def test_probe_due_for_a_hung_engine_normal_interval_while_cooling_then_at_once() -> None:
    engine = make_engine(down=True)
    engine.last_probe, engine.cooldown_until = 100.0, 103.0
    assert not engine.probe_due(102.9, INTERVAL, DOWN)  # cooling: no fast probes
    assert engine.probe_due(104.5, INTERVAL, DOWN)  # ... but still the normal ones
    engine.last_probe = 102.95  # probed just before its cooldown ended
    assert engine.probe_due(103.0, INTERVAL, DOWN), "not probed right when its cooldown ended"
    engine.last_probe = 103.0  # probed at the very end
    assert not engine.probe_due(103.1, INTERVAL, DOWN) and engine.probe_due(103.23, INTERVAL, DOWN)


def test_probe_due_never_with_a_request_in_flight_or_a_probe_running() -> None:
    for engine in (make_engine(), make_engine(down=True)):
        engine.in_flight = 1
        assert not engine.probe_due(1_000.0, INTERVAL, DOWN)
        engine.in_flight, engine.probing = 0, True
        assert not engine.probe_due(1_000.0, INTERVAL, DOWN)
        engine.probing = False
        assert engine.probe_due(1_000.0, INTERVAL, DOWN)


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
    assert engine.describe(10.0, verbose=True)["url"] == "http://a"  # the URL only for operators
    assert engine.describe(10.0) == {
        "id": "a",
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
