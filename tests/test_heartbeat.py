"""Heartbeats: coalescing, one call in flight, nothing lost when a send fails."""

from __future__ import annotations

import asyncio

from actors.runtime.heartbeat import Heartbeats
from tests.fakes import FakeClock


class Sink:
    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def send(self, batch: dict) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("registry restarting")
        self.batches.append(batch)


def beats(sink: Sink, clock: FakeClock, **kwargs) -> Heartbeats:
    return Heartbeats(sink.send, pid=7, node="n", clock=clock.now, sleep=clock.sleep, **kwargs)


async def test_beat_is_a_local_write_and_a_flush_coalesces() -> None:
    sink, clock = Sink(), FakeClock()
    hb = beats(sink, clock)
    for i in range(1000):
        hb.beat(f"s{i % 3}", progress=i)
    assert sink.batches == []
    clock.advance(0.25)
    assert await hb.flush() is True
    [batch] = sink.batches
    assert batch["pid"] == 7 and batch["node"] == "n"
    assert set(batch["reports"]) == {"s0", "s1", "s2"}
    assert batch["reports"]["s0"]["progress"] == 999
    assert batch["reports"]["s0"]["tick_age_s"] == 0.25
    assert await hb.flush() is False  # nothing new
    assert len(sink.batches) == 1


async def test_at_most_one_call_in_flight() -> None:
    sink, clock = Sink(), FakeClock()
    sink.gate = asyncio.Event()
    hb = beats(sink, clock, send_timeout_s=0.01)
    hb.beat("a", 1)
    assert await hb.flush() is False  # times out, still in flight
    calls_before = hb.send_failures
    hb.beat("a", 2)
    assert await hb.flush() is False  # refused: the first call has not finished
    assert hb.send_failures == calls_before
    sink.gate.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert await hb.flush() is True
    assert [b["reports"]["a"]["progress"] for b in sink.batches] == [1, 2]


async def test_failed_send_keeps_beats_pending() -> None:
    sink, clock = Sink(), FakeClock()
    hb = beats(sink, clock)
    hb.beat("a", "x")
    sink.fail = True
    assert await hb.flush() is False
    sink.fail = False
    assert await hb.flush() is True
    assert sink.batches[0]["reports"]["a"]["progress"] == "x"


async def test_status_change_is_sent_without_a_beat_and_only_once() -> None:
    sink, clock = Sink(), FakeClock()
    hb = beats(sink, clock)
    status = {"state": "RUNNING"}
    hb.track("a", lambda: dict(status))
    assert await hb.flush() is True
    assert sink.batches[0]["reports"]["a"] == {"state": "RUNNING"}
    assert await hb.flush() is False
    status["state"] = "BACKOFF"
    assert await hb.flush() is True
    assert sink.batches[1]["reports"]["a"] == {"state": "BACKOFF"}


async def test_run_flushes_every_interval() -> None:
    sink, clock = Sink(), FakeClock(stop_after=3)
    hb = beats(sink, clock, interval_s=0.5)
    hb.beat("a")
    try:
        await hb.run()
    except asyncio.CancelledError:
        pass
    assert clock.sleeps == [0.5, 0.5, 0.5]
    assert len(sink.batches) == 1


async def test_a_new_receiver_gets_everything_again() -> None:
    answers = iter(["health-1", "health-1", "health-2", "health-2"])
    sent: list[dict] = []

    async def send(batch: dict) -> str:
        sent.append(batch)
        return next(answers)

    clock = FakeClock()
    hb = Heartbeats(send, pid=1, node=None, clock=clock.now, sleep=clock.sleep)
    hb.track("a", lambda: {"state": "BACKOFF"})
    hb.beat("b")
    assert await hb.flush() is True  # first receiver seen: resend next round
    assert await hb.flush() is True
    assert set(sent[1]["reports"]) == {"a", "b"}
    assert await hb.flush() is False  # acknowledged by health-1: nothing new
    hb.beat("b")
    assert await hb.flush() is True  # answered by a restarted health-2
    assert await hb.flush() is True
    assert set(sent[-1]["reports"]) == {"a", "b"}  # the unchanged status is sent again
    assert sent[-1]["sent_at"] == clock.now()
