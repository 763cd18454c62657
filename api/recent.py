"""Recent: a value many requests read, fetched once for all of them and reused while it is fresh."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Recent(Generic[T]):
    """The latest result of `fetch`, shared by every caller.

    A result younger than `fresh_s` is served as is. One younger than `max_age_s` is served
    too, while one fetch in the background replaces it. Older than that (or none yet), the
    caller waits for a fetch, shared with every caller waiting at the same time (single
    flight), and its error is theirs. So a page many operators poll costs one fetch per
    `fresh_s` at most, and no answer is ever older than `max_age_s`.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[T]],
        *,
        fresh_s: float,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= fresh_s <= max_age_s:
            raise ValueError(f"need 0 <= fresh_s <= max_age_s, got {fresh_s} and {max_age_s}")
        self._fetch = fetch
        self.fresh_s = fresh_s
        self.max_age_s = max_age_s
        self._clock = clock
        self._value: T | None = None
        self._at = float("-inf")
        self._flight: asyncio.Future[T] | None = None

    async def get(self) -> T:
        age = self._clock() - self._at
        if self._value is not None and age <= self.max_age_s:
            if age > self.fresh_s:
                self._start().add_done_callback(_log_failure)
            return self._value
        return await asyncio.shield(self._start())

    def forget(self) -> None:
        """The value is known to be out of date: the next `get` waits for a new one."""
        self._value, self._at = None, float("-inf")

    def _start(self) -> asyncio.Future[T]:
        if self._flight is None or self._flight.done():
            self._flight = asyncio.ensure_future(self._refresh())
        return self._flight

    async def _refresh(self) -> T:
        started = self._clock()
        value = await self._fetch()
        self._value, self._at = value, started  # its age counts from before the fetch
        return value


def _log_failure(flight: asyncio.Future[object]) -> None:
    if not flight.cancelled() and (exc := flight.exception()) is not None:
        log.warning("background refresh failed: %s", exc)
