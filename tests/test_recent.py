"""Recent: one fetch for many readers, a bounded age, and errors only when nothing recent is left."""

from __future__ import annotations

import asyncio

import pytest

from api.recent import Recent
from tests.fakes import FakeClock


class Source:
    """Counts fetches; each returns the next number, after `gate` opens if one is set."""

    def __init__(self) -> None:
        self.fetches = 0
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def fetch(self) -> int:
        self.fetches += 1
        number = self.fetches
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return number


def recent(source: Source, clock: FakeClock) -> Recent[int]:
    return Recent(source.fetch, fresh_s=0.25, max_age_s=1.0, clock=clock.now)


async def test_concurrent_readers_share_one_fetch() -> None:
    source, clock = Source(), FakeClock()
    source.gate = asyncio.Event()
    cache = recent(source, clock)
    readers = [asyncio.ensure_future(cache.get()) for _ in range(50)]
    await asyncio.sleep(0)
    source.gate.set()
    assert await asyncio.gather(*readers) == [1] * 50
    assert source.fetches == 1


async def test_a_fresh_value_is_served_without_a_fetch() -> None:
    source, clock = Source(), FakeClock()
    cache = recent(source, clock)
    assert await cache.get() == 1
    clock.advance(0.2)
    assert await cache.get() == 1
    assert source.fetches == 1


async def test_an_aging_value_is_served_while_one_fetch_replaces_it() -> None:
    source, clock = Source(), FakeClock()
    cache = recent(source, clock)
    await cache.get()
    clock.advance(0.5)
    assert [await cache.get() for _ in range(10)] == [1] * 10  # nobody waits
    await asyncio.sleep(0)  # the background fetch runs
    assert source.fetches == 2
    assert await cache.get() == 2


async def test_past_max_age_a_reader_waits_and_sees_the_error_which_is_kept_while_fresh() -> None:
    source, clock = Source(), FakeClock()
    cache = recent(source, clock)
    await cache.get()
    source.fail = RuntimeError("registry did not answer")
    clock.advance(0.5)
    assert await cache.get() == 1  # the failed background fetch leaves the old value in place
    await asyncio.sleep(0)
    clock.advance(0.6)
    with pytest.raises(RuntimeError, match="did not answer"):
        await cache.get()
    source.fail = None
    with pytest.raises(RuntimeError, match="did not answer"):  # a source that is down is not asked by every request
        await cache.get()
    assert source.fetches == 3
    clock.advance(0.3)
    assert await cache.get() == 4


async def test_forget_makes_the_next_reader_wait_for_a_new_value() -> None:
    source, clock = Source(), FakeClock()
    cache = recent(source, clock)
    await cache.get()
    cache.forget()
    assert await cache.get() == 2


def test_fresh_must_not_exceed_max_age() -> None:
    with pytest.raises(ValueError, match="fresh_s"):
        Recent(Source().fetch, fresh_s=2.0, max_age_s=1.0)


async def test_a_fetch_started_before_forget_is_not_kept() -> None:
    """A release makes the quarantine list out of date: a list read before it must not come back."""
    source, clock = Source(), FakeClock()
    source.gate = asyncio.Event()
    cache = recent(source, clock)
    before = asyncio.ensure_future(cache.get())
    await asyncio.sleep(0)
    cache.forget()
    after = asyncio.ensure_future(cache.get())
    await asyncio.sleep(0)
    source.gate.set()
    assert await before == 1 and await after == 2
    assert await cache.get() == 2
