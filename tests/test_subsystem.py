"""Subsystem runtime without Ray: hooks in order, exact delays on a fake clock, reports, faults."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from actors.runtime.subsystem import Every, Subsystem, SubsystemSpec
from actors.runtime.supervised import RestartPolicy
from settings import Settings
from tests.fakes import FakeClock

NO_JITTER = RestartPolicy(jitter=0.0)
SPEC = SubsystemSpec("probe", interval_s=5.0, policy=NO_JITTER)


class Probe(Subsystem):
    """Records each hook it is given; can fail its first opens and ticks."""

    spec = SPEC

    def __init__(self, settings: Settings, *, fail_opens: int = 0, fail_ticks: int = 0, **runtime: Any) -> None:
        super().__init__(settings, **runtime)
        # Set after super().__init__(): no loop may have run yet.
        self.calls: list[str] = []
        self.fail_opens = fail_opens
        self.fail_ticks = fail_ticks
        self.session_open = False
        self.client = self.own(Client(self.calls))

    async def open(self) -> None:
        self.calls.append("open")
        if self.fail_opens:
            self.fail_opens -= 1
            raise OSError("no route to the database")
        self.session_open = True

    async def setup(self) -> None:
        self.calls.append("setup")

    async def tick(self) -> None:
        self.calls.append("tick")
        if self.fail_ticks:
            self.fail_ticks -= 1
            raise ValueError("bad tick")

    async def close(self) -> None:
        self.calls.append("close")
        self.session_open = False

    def progress(self) -> dict[str, int]:
        return {"ticks": self.calls.count("tick")}


class Client:
    """A resource with `aclose()`, as a Redis client has."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def aclose(self) -> None:
        self.calls.append("client closed")


class Beats:
    """Stands in for the HealthActor: keeps each batch of reports it is sent."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []

    async def __call__(self, batch: dict[str, Any]) -> str:
        self.batches.append(batch)
        return "health-1"

    def reports(self, name: str) -> list[dict[str, Any]]:
        return [b["reports"][name] for b in self.batches if name in b["reports"]]


def probe(clock: FakeClock, beats: Beats | None = None, *, faults: bool = True, **kwargs: Any) -> Probe:
    settings = Settings(enable_fault_injection=faults)
    return Probe(settings, clock=clock.now, sleep=clock.sleep, send_beats=beats or Beats(), **kwargs)


@contextlib.asynccontextmanager
async def running(sub: Subsystem) -> AsyncIterator[Subsystem]:
    """The subsystem, stopped afterwards even when the test fails."""
    try:
        yield sub
    finally:
        await asyncio.wait_for(sub.stop(), 10)


async def until(condition: Callable[[], Any], steps: int = 5_000) -> None:
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_loops_start_after_the_constructor_and_open_comes_once_before_the_first_tick() -> None:
    clock = FakeClock()
    sub = probe(clock)
    assert sub.calls == [] and sub.loops["probe"].state.value == "STARTING"
    async with running(sub):
        await until(lambda: sub.calls.count("tick") >= 3)
        assert sub.calls[:5] == ["open", "setup", "tick", "tick", "tick"]
        assert clock.by_task["probe"][:2] == [5.0, 5.0]  # interval_s between ticks
    assert sub.calls.count("open") == 1 and sub.calls[-2:] == ["close", "client closed"] and not sub.session_open


async def test_a_failing_open_backs_off_and_helpers_wait_for_it() -> None:
    clock = FakeClock()
    sub = probe(clock, fail_opens=2)
    opens_seen_by_helper: list[int] = []

    async def helper() -> None:
        opens_seen_by_helper.append(sub.calls.count("open"))
        await asyncio.Event().wait()

    sub.supervise("probe.helper", helper)
    async with running(sub):
        await until(lambda: "tick" in sub.calls and opens_seen_by_helper)
        assert sub.calls[:4] == ["open", "open", "open", "setup"]
        assert clock.by_task["probe"][:2] == [1.0, 2.0]  # backoff 1 s, 2 s
        assert opens_seen_by_helper == [3]  # it started once open had succeeded, and only then
        assert sub.main_loop.exception_restarts == 2
    assert sub.calls[-2:] == ["close", "client closed"]


async def test_a_failing_tick_restarts_with_backoff_and_runs_setup_again_but_not_open() -> None:
    clock, beats = FakeClock(), Beats()
    sub = probe(clock, beats, fail_ticks=3)
    async with running(sub):
        await until(lambda: sub.calls.count("tick") >= 5)
        assert clock.by_task["probe"][:4] == [1.0, 2.0, 4.0, 5.0]  # three restarts, then the interval
        assert sub.calls[:8] == ["open", "setup", "tick", "setup", "tick", "setup", "tick", "setup"]
        assert sub.calls.count("open") == 1
        await until(lambda: any(r.get("state") == "RUNNING" and "progress" in r for r in beats.reports("probe")))
        report = beats.reports("probe")[-1]
        assert report["exception_restarts"] == 3 and report["last_error"] == "ValueError: bad tick"


async def test_reports_start_as_starting_count_quarantine_and_take_the_worst_helper_state() -> None:
    clock, beats = FakeClock(), Beats()
    sub = probe(clock, beats)
    assert sub._report()["state"] == "STARTING"  # no tick completed yet
    async with running(sub):
        await until(lambda: "tick" in sub.calls)
        assert sub._report()["state"] == "RUNNING"
        for _ in range(3):
            await sub.items.fail("row-7", ValueError("corrupt"), version=1)
        assert sub._report()["quarantined"] == 1

        async def broken() -> None:
            raise ConnectionError("listener lost")

        sub.supervise("probe.listener", broken)
        await until(lambda: sub.loops["probe.listener"].exception_restarts >= 1)
        report = sub._report()
        assert report["state"] == "BACKOFF"
        assert report["last_error"] == "probe.listener: ConnectionError: listener lost"
    assert beats.reports("probe")[-1]["state"] == "STOPPED"


async def test_an_injected_raise_fails_the_next_tick_and_injection_can_be_refused() -> None:
    clock = FakeClock()
    async with running(probe(clock)) as sub:
        await until(lambda: "tick" in sub.calls)  # type: ignore[attr-defined]
        assert await sub.inject_fault("raise") is True
        await until(lambda: sub.main_loop.exception_restarts == 1)
        assert sub.main_loop.last_error == "RuntimeError: injected fault: raise"
        with pytest.raises(ValueError, match="fault must be one of"):
            await sub.inject_fault("explode")
    async with running(probe(FakeClock(), faults=False)) as refusing:
        with pytest.raises(PermissionError, match="ENABLE_FAULT_INJECTION"):
            await refusing.inject_fault("raise")


async def test_spec_comes_from_the_settings_hook() -> None:
    class Tuned(Probe):
        @classmethod
        def spec_for(cls, settings: Settings) -> SubsystemSpec:
            return SubsystemSpec("tuned", interval_s=settings.health_sweep_interval_s)

    clock = FakeClock()
    sub = Tuned(Settings(health_sweep_interval_s=7.0), clock=clock.now, sleep=clock.sleep, send_beats=Beats())
    assert (sub.name, sub.spec.interval_s, sub.spec.stale_after_s) == ("tuned", 7.0, 15.0)
    async with running(sub):
        await until(lambda: sub.calls.count("tick") >= 2)
        assert clock.by_task["tuned"][0] == 7.0


def test_every_is_due_once_per_interval() -> None:
    clock = FakeClock()
    every = Every(10.0, clock.now)
    assert every.due() is True and every.due() is False
    clock.advance(9.9)
    assert every.due() is False
    clock.advance(0.1)
    assert every.due() is True
    every.reset()
    assert every.due() is True
