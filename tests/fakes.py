"""Fake clock for unit tests of time-driven logic (no real sleeping)."""

from __future__ import annotations

import asyncio


class FakeClock:
    """`now()` is a number the test controls; `sleep(d)` records d and jumps the clock by d.

    `stop_after` sleeps, the next sleep raises CancelledError, as if the task were cancelled
    while it waited.
    """

    def __init__(self, start: float = 1_000_000.0, stop_after: int | None = None) -> None:
        self.t = start
        self.sleeps: list[float] = []
        self.by_task: dict[str, list[float]] = {}  # the sleeps of each asyncio task, by its name
        self.stop_after = stop_after

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        if self.stop_after is not None and len(self.sleeps) >= self.stop_after:
            raise asyncio.CancelledError
        self.sleeps.append(seconds)
        task = asyncio.current_task()
        self.by_task.setdefault(task.get_name() if task else "", []).append(seconds)
        self.t += seconds
        await asyncio.sleep(0)
