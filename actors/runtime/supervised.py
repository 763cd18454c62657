"""Recover loop: run a coroutine forever, restarting it with capped exponential backoff."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


class LoopState(enum.StrEnum):
    """States a supervised loop can be in; the HealthActor uses the same words."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STALLED = "STALLED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"


@dataclass(frozen=True)
class RestartPolicy:
    """How a loop is restarted: backoff 1, 2, 4 ... capped, jittered, reset after a stable run.

    More than `intensity` restarts within `intensity_window_s` marks the loop FAILED; it keeps
    retrying at `max_backoff_s` and is never abandoned.
    """

    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after_s: float = 60.0
    intensity: int = 10
    intensity_window_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.initial_backoff_s > 0:
            raise ValueError(f"initial_backoff_s must be > 0, got {self.initial_backoff_s}")
        if not self.max_backoff_s >= self.initial_backoff_s:
            raise ValueError(f"max_backoff_s must be >= initial_backoff_s, got {self.max_backoff_s}")
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if not self.reset_after_s > 0:
            raise ValueError(f"reset_after_s must be > 0, got {self.reset_after_s}")
        if not self.intensity >= 1:
            raise ValueError(f"intensity must be >= 1, got {self.intensity}")
        if not self.intensity_window_s > 0:
            raise ValueError(f"intensity_window_s must be > 0, got {self.intensity_window_s}")

    def base_delay_s(self, attempt: int) -> float:
        """Delay before restart number `attempt` (0-based), without jitter."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** min(attempt, 64))

    def delay_s(self, attempt: int, unit_random: float) -> float:
        """Jittered delay; `unit_random` in [0, 1) maps to [-jitter, +jitter]."""
        return self.base_delay_s(attempt) * (1 + self.jitter * (2 * unit_random - 1))


@dataclass(frozen=True)
class Restart:
    """One restart of a loop: why, what failed, when, and when it tries again."""

    reason: str
    error: str
    at: float
    next_try_at: float


def describe(exc: BaseException) -> str:
    """`Type: message`, the form every last_error takes."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class RecoverLoop:
    """Runs `body` until it returns; restarts it after any exception.

    A clean return ends the loop (STOPPED). Cancellation propagates at once, in the run or in
    the backoff, and is never counted as a failure. Every restart is kept (last 100) with its
    reason and error. Only `Exception` is caught: cancellation and interpreter exits pass.
    """

    def __init__(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        policy: RestartPolicy | None = None,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        unit_random: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.policy = policy or RestartPolicy()
        self._body = body
        self._clock = clock
        self._sleep = sleep
        self._random = unit_random
        self.state = LoopState.STARTING
        self.restarts: deque[Restart] = deque(maxlen=100)
        self.exception_restarts = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.next_retry_at: float | None = None
        self.run_started_at: float | None = None
        self._attempt = 0
        self._failed = False

    def _recent_restarts(self, now: float) -> int:
        horizon = now - self.policy.intensity_window_s
        return sum(1 for r in self.restarts if r.at > horizon)

    def status(self) -> dict[str, Any]:
        """The loop's current state and error record, as plain data."""
        now = self._clock()
        if (
            self._failed
            and self.state is LoopState.FAILED
            and self.next_retry_at is None
            and self.run_started_at is not None
            and now - self.run_started_at >= self.policy.reset_after_s
        ):
            # A run that has been stable for reset_after_s clears FAILED.
            self._failed = False
            self.state = LoopState.RUNNING
        return {
            "state": self.state.value,
            "exception_restarts": self.exception_restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "next_retry_at": self.next_retry_at,
        }

    async def run(self) -> None:
        """Run and restart the body until it returns cleanly or this task is cancelled."""
        while True:
            self.run_started_at = self._clock()
            self.next_retry_at = None
            self.state = LoopState.FAILED if self._failed else LoopState.RUNNING
            try:
                await self._body()
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    self.state = LoopState.STOPPED
                    raise
                # Not a cancellation of this loop: a CancelledError leaked from inside the body.
                self._record_failure(exc)
            except Exception as exc:  # the recover loop exists to outlive any failure of its body
                self._record_failure(exc)
            else:
                self.state = LoopState.STOPPED
                log.info("loop %s returned; not restarted", self.name)
                return
            assert self.next_retry_at is not None
            try:
                await self._sleep(max(0.0, self.next_retry_at - self._clock()))
            except asyncio.CancelledError:
                self.state = LoopState.STOPPED
                raise

    def _record_failure(self, exc: BaseException) -> None:
        now = self._clock()
        if now - (self.run_started_at or now) >= self.policy.reset_after_s:
            self._attempt = 0
        self.exception_restarts += 1
        self.last_error = describe(exc)
        self.last_error_at = now
        # The restart being recorded counts toward the intensity window.
        self._failed = self._recent_restarts(now) + 1 > self.policy.intensity
        # FAILED keeps retrying, at the cap.
        attempt = 64 if self._failed else self._attempt
        delay = self.policy.delay_s(attempt, self._random())
        self._attempt += 1
        self.next_retry_at = now + delay
        self.restarts.append(Restart("exception", self.last_error, now, self.next_retry_at))
        self.state = LoopState.FAILED if self._failed else LoopState.BACKOFF
        log.error(
            "loop %s failed (%s); restart %d in %.1f s",
            self.name,
            self.last_error,
            self.exception_restarts,
            delay,
            exc_info=exc,
        )
