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
    flight), and its error is theirs; a failed fetch is not tried again for `fresh_s`, so a
    source that is down is not asked by every request. So a page many operators poll costs
    one fetch per `fresh_s` at most, and no answer is ever older than `max_age_s`.
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
        self._error: BaseException | None = None
        self._failed_at = float("-inf")
        self._flight: asyncio.Future[T] | None = None
        self._generation = 0  # bumped by forget(): a fetch started before it is not kept

    async def get(self) -> T:
        now = self._clock()
        if self._value is not None and now - self._at <= self.max_age_s:
            if now - self._at > self.fresh_s:
                self._start()
            return self._value
        if self._error is not None and now - self._failed_at <= self.fresh_s:
            raise self._error
        return await asyncio.shield(self._start())

    def forget(self) -> None:
        """The value is known to be out of date: the next `get` waits for a fetch started after now."""
        self._value, self._at, self._error = None, float("-inf"), None
        self._generation += 1
        self._flight = None

    def _start(self) -> asyncio.Future[T]:
        if self._flight is None or self._flight.done():
            self._flight = asyncio.ensure_future(self._refresh(self._generation))
            self._flight.add_done_callback(_observe)
        return self._flight

    async def _refresh(self, generation: int) -> T:
        started = self._clock()
        try:
            value = await self._fetch()
        except Exception as exc:
            if generation == self._generation:
                self._error, self._failed_at = exc, self._clock()
            raise
        if generation == self._generation:
            self._value, self._at, self._error = value, started, None  # its age counts from before the fetch
        return value


def _observe(flight: asyncio.Future[object]) -> None:
    """Log a failed fetch once (callers that waited for it got the error too)."""
    if not flight.cancelled() and (exc := flight.exception()) is not None:
        log.warning("refresh failed: %s", exc)
