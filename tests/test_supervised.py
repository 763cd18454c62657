"""Recover loop: backoff, reset, intensity, clean return, cancellation (fake clock)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from actors.runtime.supervised import LoopState, RecoverLoop, RestartPolicy
from tests.fakes import FakeClock

EXPECTED_DELAYS = [1, 2, 4, 8, 16, 30, 30]


def failing_loop(clock: FakeClock, unit_random: float = 0.5, **kwargs) -> tuple[RecoverLoop, list[int]]:
    calls: list[int] = []

    async def body() -> None:
        calls.append(1)
        raise ValueError(f"boom {len(calls)}")

    loop = RecoverLoop("t", body, clock=clock.now, sleep=clock.sleep, unit_random=lambda: unit_random, **kwargs)
    return loop, calls


async def test_clean_return_is_not_restarted() -> None:
    clock = FakeClock()
    calls = []

    async def body() -> None:
        calls.append(1)

    loop = RecoverLoop("t", body, clock=clock.now, sleep=clock.sleep)
    await loop.run()
    assert calls == [1]
    assert loop.state is LoopState.STOPPED
    assert clock.sleeps == []
    assert loop.exception_restarts == 0


@pytest.mark.parametrize("unit_random, factor", [(0.5, 1.0), (0.0, 0.8), (0.999999, 1.2)])
async def test_backoff_doubles_to_the_cap_within_jitter(unit_random: float, factor: float) -> None:
    clock = FakeClock(stop_after=len(EXPECTED_DELAYS))
    loop, calls = failing_loop(clock, unit_random)
    with pytest.raises(asyncio.CancelledError):
        await loop.run()
    assert clock.sleeps == pytest.approx([d * factor for d in EXPECTED_DELAYS], rel=1e-5)
    assert len(calls) == len(EXPECTED_DELAYS) + 1


async def test_real_jitter_stays_within_twenty_percent() -> None:
    clock = FakeClock(stop_after=7)
    calls = []

    async def body() -> None:
        calls.append(1)
        raise RuntimeError

    loop = RecoverLoop("t", body, clock=clock.now, sleep=clock.sleep)
    with pytest.raises(asyncio.CancelledError):
        await loop.run()
    for delay, base in zip(clock.sleeps, EXPECTED_DELAYS, strict=True):
        assert 0.8 * base <= delay <= 1.2 * base


async def test_backoff_resets_after_a_stable_run() -> None:
    clock = FakeClock(stop_after=4)
    calls = []

    async def body() -> None:
        calls.append(1)
        if len(calls) == 3:
            clock.advance(61)  # this run was stable for longer than reset_after_s
        raise RuntimeError("again")

    loop = RecoverLoop("t", body, clock=clock.now, sleep=clock.sleep, unit_random=lambda: 0.5)
    with pytest.raises(asyncio.CancelledError):
        await loop.run()
    assert clock.sleeps == [1, 2, 1, 2]


async def test_failed_after_eleven_restarts_in_ten_minutes_and_keeps_retrying() -> None:
    clock = FakeClock(stop_after=13)
    states: list[LoopState] = []
    calls = []

    async def body() -> None:
        calls.append(1)
        raise RuntimeError("x")

    async def sleep(seconds: float) -> None:
        states.append(loop.state)
        await clock.sleep(seconds)

    loop = RecoverLoop("t", body, clock=clock.now, sleep=sleep, unit_random=lambda: 0.5)
    with pytest.raises(asyncio.CancelledError):
        await loop.run()
    assert states[:10] == [LoopState.BACKOFF] * 10
    assert states[10:] == [LoopState.FAILED] * 4
    # FAILED retries at the cap: it never gives up.
    assert clock.sleeps[10:] == [30, 30, 30]
    assert len(calls) == 14
    assert loop.status()["state"] == "STOPPED"


async def test_failed_clears_after_a_stable_run() -> None:
    clock = FakeClock()
    release = asyncio.Event()
    stable = asyncio.Event()
    calls = []

    async def body() -> None:
        calls.append(1)
        if len(calls) <= 11:
            raise RuntimeError("x")
        stable.set()
        await release.wait()

    loop = RecoverLoop("t", body, clock=clock.now, sleep=clock.sleep, unit_random=lambda: 0.5)
    task = asyncio.create_task(loop.run())
    await stable.wait()
    assert loop.status()["state"] == "FAILED"
    clock.advance(59)
    assert loop.status()["state"] == "FAILED"
    clock.advance(2)
    assert loop.status()["state"] == "RUNNING"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_restart_is_recorded_with_reason_error_and_times(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(stop_after=0)
    loop, _ = failing_loop(clock)
    with caplog.at_level(logging.ERROR), pytest.raises(asyncio.CancelledError):
        await loop.run()
    restart = loop.restarts[0]
    assert restart.reason == "exception"
    assert restart.error == "ValueError: boom 1"
    assert restart.at == 1_000_000.0
    assert restart.next_try_at == 1_000_001.0
    status = loop.status()
    assert status["last_error"] == "ValueError: boom 1"
    assert status["exception_restarts"] == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "loop t failed" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError


async def test_cancel_during_run_stops_at_once_and_is_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    started = asyncio.Event()

    async def body() -> None:
        started.set()
        await asyncio.Event().wait()

    loop = RecoverLoop("t", body, clock=clock.now, sleep=clock.sleep)
    with caplog.at_level(logging.INFO):
        task = asyncio.create_task(loop.run())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1)
    assert loop.state is LoopState.STOPPED
    assert loop.exception_restarts == 0
    assert clock.sleeps == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_cancel_during_backoff_stops_the_restart_loop() -> None:
    calls = []
    sleeping = asyncio.Event()

    async def body() -> None:
        calls.append(1)
        raise RuntimeError("x")

    async def sleep(seconds: float) -> None:
        sleeping.set()
        await asyncio.sleep(3600)

    loop = RecoverLoop("t", body, sleep=sleep)
    task = asyncio.create_task(loop.run())
    await sleeping.wait()
    assert loop.state is LoopState.BACKOFF
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert calls == [1]
    assert loop.state is LoopState.STOPPED


@pytest.mark.parametrize(
    "field, value",
    [
        ("initial_backoff_s", 0),
        ("max_backoff_s", 0.5),
        ("multiplier", 0.5),
        ("jitter", 1.0),
        ("reset_after_s", 0),
        ("intensity", 0),
        ("intensity_window_s", -1),
    ],
)
def test_policy_rejects_bad_values_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        RestartPolicy(**{field: value})


async def test_cancelled_error_leaking_from_the_body_is_a_failure_not_a_stop() -> None:
    clock = FakeClock(stop_after=1)
    calls = []

    async def body() -> None:
        calls.append(1)
        inner = asyncio.get_running_loop().create_future()
        inner.cancel()
        await inner  # e.g. a library cancelled its own future; nobody cancelled this loop

    loop = RecoverLoop("t", body, clock=clock.now, sleep=clock.sleep, unit_random=lambda: 0.5)
    with pytest.raises(asyncio.CancelledError):
        await loop.run()
    assert len(calls) == 2
    assert loop.exception_restarts == 2
    assert loop.restarts[0].error == "CancelledError"
