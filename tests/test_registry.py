"""Registry: verdicts, restart accounting, kill decisions and the original's query semantics."""

from __future__ import annotations

import pytest

from actors.runtime.registry import Expectation, Record, Registry
from actors.runtime.supervised import LoopState

T0 = 1_000_000.0


def registry(*names: str, interval_s: float = 1.0) -> Registry:
    reg = Registry(booted_at=T0)
    for name in names:
        reg.register(Expectation(name, interval_s, actor=name, namespace="ns", registered_at=T0))
    return reg


def beat(reg: Registry, name: str, now: float, *, pid: int = 10, state: str = "RUNNING", **extra) -> None:
    report = {"state": state, "exception_restarts": extra.pop("exceptions", 0), "tick_age_s": 0.0, **extra}
    reg.ingest({"pid": pid, "node": "n1", "reports": {name: report}}, now)


def test_defaults_follow_the_interval() -> None:
    e = Expectation("x", 5.0)
    assert e.stale_after_s == 11.0
    assert e.kill_after_s == 22.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": 5, "stale_after_s": 4}, "stale_after_s"),
        ({"interval_s": 1, "stale_after_s": 3, "kill_after_s": 2}, "kill_after_s"),
        ({"name": "", "interval_s": 1}, "name"),
    ],
)
def test_bad_expectations_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Expectation(**{"name": "x", **kwargs})


def test_unknown_name_is_stale_and_known_name_by_age() -> None:
    reg = registry("a", "b")  # stale after 3 s
    assert reg.unhealthy(T0) == ["a", "b"]  # never ticked
    beat(reg, "a", T0 + 1)
    assert reg.last_tick("a") == T0 + 1
    assert reg.unhealthy(T0 + 2) == ["b"]
    assert reg.unhealthy(T0 + 1 + 3.5) == ["a", "b"]
    assert reg.last_tick("nobody") is None


def test_never_seen_subsystem_is_reported_not_invisible() -> None:
    reg = registry("a", "b")
    beat(reg, "a", T0 + 1)
    snap = reg.snapshot(T0 + 1.5)
    assert set(snap["subsystems"]) == {"a", "b"}
    assert snap["healthy"] is False
    b = snap["subsystems"]["b"]
    assert (b["state"], b["healthy"], b["last_tick_at"], b["seconds_ago"]) == ("STARTING", False, None, None)
    assert reg.verdict("b", T0 + 3.5).state is LoopState.STALLED
    assert reg.unhealthy(T0 + 1.5) == ["b"]


def test_running_goes_stalled_after_stale_after_s() -> None:
    reg = registry("a")
    beat(reg, "a", T0)
    assert reg.verdict("a", T0 + 3.0).state is LoopState.RUNNING
    assert reg.verdict("a", T0 + 3.1).state is LoopState.STALLED
    assert reg.snapshot(T0 + 1)["subsystems"]["a"]["seconds_ago"] == 1.0


def test_backoff_is_unhealthy_at_once_and_stale_only_past_its_retry() -> None:
    reg = registry("a")
    beat(reg, "a", T0)
    beat(reg, "a", T0 + 1, state="BACKOFF", exceptions=1, next_retry_at=T0 + 31, last_error="E: x")
    v = reg.verdict("a", T0 + 20)
    assert (v.state, v.healthy) == (LoopState.BACKOFF, False)
    assert reg.verdict("a", T0 + 34.5).state is LoopState.STALLED
    assert reg.due_for_kill(T0 + 36) == []
    assert [e.name for e in reg.due_for_kill(T0 + 37.1)] == ["a"]


def test_exception_restarts_accumulate_across_process_restarts() -> None:
    reg = registry("a")
    beat(reg, "a", T0, pid=1, exceptions=2)
    beat(reg, "a", T0 + 1, pid=1, exceptions=3)
    beat(reg, "a", T0 + 2, pid=2, exceptions=1)  # new process; its own counter restarts
    assert reg.records["a"].restarts == {"exception": 4, "process": 1, "stalled": 0}


def test_watchdog_kill_counts_stalled_not_process_and_at_most_once_per_period() -> None:
    reg = registry("a")
    beat(reg, "a", T0, pid=1)
    assert reg.due_for_kill(T0 + 6) == []
    assert [e.name for e in reg.due_for_kill(T0 + 6.1)] == ["a"]
    reg.killed("a", T0 + 6.1)
    assert reg.due_for_kill(T0 + 10) == []
    beat(reg, "a", T0 + 8, pid=2)
    assert reg.records["a"].restarts == {"exception": 0, "process": 0, "stalled": 1}
    assert reg.verdict("a", T0 + 8.5).state is LoopState.RUNNING


def test_stopped_and_unregistered_are_never_killed() -> None:
    reg = registry("a")
    reg.register(Expectation("no-actor", 1.0, registered_at=T0))
    beat(reg, "a", T0, state="STOPPED")
    assert reg.verdict("a", T0 + 100).state is LoopState.STOPPED
    assert reg.due_for_kill(T0 + 100) == []


def test_a_name_expected_anew_starts_with_no_record_of_a_late_beat() -> None:
    """An API forgotten when its node left beats once more on its way out; its name, given to a
    new API on another node, must not read as that node's until the new one beats."""
    reg = registry("api-3")
    beat(reg, "api-3", T0)
    reg.unregister("api-3")
    beat(reg, "api-3", T0 + 1)  # late, from the actor that was forgotten
    reg.register(Expectation("api-3", 1.0, registered_at=T0 + 2))
    subsystem = reg.snapshot(T0 + 2)["subsystems"]["api-3"]
    assert (subsystem["node"], subsystem["pid"], subsystem["last_tick_at"]) == (None, None, None)
    beat(reg, "api-3", T0 + 3, pid=11)
    assert reg.snapshot(T0 + 3)["subsystems"]["api-3"]["pid"] == 11
    reg.register(Expectation("api-3", 1.0, registered_at=T0 + 2))  # registered again: its record stays
    assert reg.snapshot(T0 + 3)["subsystems"]["api-3"]["pid"] == 11


def test_restarted_registry_forgives_only_its_own_absence() -> None:
    old = registry("a")
    beat(old, "a", T0)
    reborn = Registry(booted_at=T0 + 20)
    reborn.register(old.expected["a"])
    reborn.records["a"] = Record.from_json(old.records["a"].to_json())
    assert reborn.last_tick("a") == T0
    assert reborn.verdict("a", T0 + 21).state is LoopState.RUNNING
    assert reborn.verdict("a", T0 + 23.1).state is LoopState.STALLED


def test_failed_is_unhealthy() -> None:
    reg = registry("a")
    beat(reg, "a", T0, state="FAILED", exceptions=11, next_retry_at=T0 + 30)
    assert reg.verdict("a", T0 + 1).state is LoopState.FAILED
    assert reg.snapshot(T0 + 1)["subsystems"]["a"]["next_retry_at"] == "1970-01-12T13:47:10.000Z"


def test_new_process_after_a_drain_is_not_a_crash() -> None:
    reg = registry("a")
    beat(reg, "a", T0, pid=1)
    beat(reg, "a", T0 + 1, pid=1, state="STOPPED")
    beat(reg, "a", T0 + 5, pid=2)
    assert reg.records["a"].restarts == {"exception": 0, "process": 0, "stalled": 0}


def test_reported_starting_is_unhealthy_until_the_first_tick() -> None:
    reg = registry("a")
    reg.ingest({"pid": 1, "reports": {"a": {"state": "STARTING", "exception_restarts": 0}}}, T0)
    assert reg.verdict("a", T0 + 1).state is LoopState.STARTING
    assert reg.verdict("a", T0 + 3.5).state is LoopState.STALLED
    beat(reg, "a", T0 + 2)
    assert reg.verdict("a", T0 + 2.5).healthy


def test_sender_clock_skew_is_removed_from_absolute_times() -> None:
    reg = registry("a")
    sender_now = T0 - 100.0  # the sender's clock is 100 s behind
    report = {"state": "BACKOFF", "exception_restarts": 1, "next_retry_at": sender_now + 4, "last_error_at": sender_now}
    reg.ingest({"pid": 1, "sent_at": sender_now, "reports": {"a": report}}, T0)
    assert reg.records["a"].next_retry_at == T0 + 4
    assert reg.records["a"].last_error_at == T0


def test_after_a_kill_the_watchdog_waits_for_the_new_process() -> None:
    reg = registry("a")
    beat(reg, "a", T0, pid=1)
    reg.killed("a", T0 + 6.1)
    assert reg.due_for_kill(T0 + 12.2) == []  # restart slow: no second kill yet
    assert [e.name for e in reg.due_for_kill(T0 + 6.1 + 18.1)] == ["a"]  # never came back
    reg.kill_failed("a", T0 + 30)
    assert reg.due_for_kill(T0 + 31) == []
