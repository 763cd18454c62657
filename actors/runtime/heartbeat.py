"""In-process heartbeat buffer and the flusher that pushes it to the HealthActor in batches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from actors.runtime.supervised import Clock, Sleep

log = logging.getLogger(__name__)

StatusSource = Callable[[], dict[str, Any]]
Send = Callable[[dict[str, Any]], Awaitable[Any]]


class Heartbeats:
    """Collects beats and loop statuses of one process; `flush()` sends what changed in one call.

    `beat()` is a dictionary write. The flusher sends at most one batch at a time: a batch
    still in flight (a slow or restarting HealthActor) makes later rounds wait, and beats made
    meanwhile are coalesced into the next batch. A batch that fails is not lost: its names
    stay pending until a batch carrying them succeeds. A beat's time is sent as an age
    (`tick_age_s`) so the receiver's clock, not this node's, dates it. `send` returns the
    receiver's incarnation; when it changes, every name is sent again.
    """

    def __init__(
        self,
        send: Send,
        *,
        pid: int,
        node: str | None,
        interval_s: float = 0.5,
        send_timeout_s: float = 5.0,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._send = send
        self.pid = pid
        self.node = node
        self.interval_s = interval_s
        self.send_timeout_s = send_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._beats: dict[str, tuple[int, float, Any]] = {}
        self._sources: dict[str, StatusSource] = {}
        self._acked_seq: dict[str, int] = {}
        self._acked_status: dict[str, dict[str, Any]] = {}
        self._seq = 0
        self._inflight: asyncio.Future[Any] | None = None
        self._receiver: Any = None
        self.batches_sent = 0
        self.send_failures = 0

    def beat(self, name: str, progress: Any = None) -> None:
        """Record that `name` completed a unit of real work now. No I/O."""
        self._seq += 1
        self._beats[name] = (self._seq, self._clock(), progress)

    def track(self, name: str, status: StatusSource) -> None:
        """Report `status()` for `name` whenever it changes."""
        self._sources[name] = status

    def _pending(self) -> dict[str, tuple[int, dict[str, Any]]]:
        pending = {}
        for name in self._beats.keys() | self._sources.keys():
            seq = self._beats[name][0] if name in self._beats else 0
            source = self._sources.get(name)
            status = source() if source is not None else {}
            if seq != self._acked_seq.get(name, 0) or status != self._acked_status.get(name):
                pending[name] = (seq, status)
        return pending

    async def flush(self) -> bool:
        """Send pending reports if no batch is in flight. Returns whether a batch succeeded."""
        if self._inflight is not None and not self._inflight.done():
            return False
        pending = self._pending()
        if not pending:
            return False
        now = self._clock()
        reports: dict[str, dict[str, Any]] = {}
        for name, (_, status) in pending.items():
            report = dict(status)
            if name in self._beats:
                _, at, progress = self._beats[name]
                report["tick_age_s"] = max(0.0, now - at)
                report["progress"] = progress
            reports[name] = report
        batch = {"pid": self.pid, "node": self.node, "sent_at": now, "reports": reports}
        self._inflight = asyncio.ensure_future(self._send(batch))
        self._inflight.add_done_callback(_retrieve)
        try:
            receiver = await asyncio.wait_for(asyncio.shield(self._inflight), self.send_timeout_s)
        except TimeoutError:
            self.send_failures += 1
            log.warning("heartbeat batch still unanswered after %.1f s; holding beats", self.send_timeout_s)
            return False
        except Exception as exc:  # a failed send keeps the beats pending; the next round retries
            self.send_failures += 1
            log.warning("heartbeat batch failed: %s", exc)
            return False
        if receiver != self._receiver:
            # A new receiver (a restarted HealthActor) may have lost what the old one was
            # told since its last persist: send everything again next round.
            self._receiver = receiver
            self._acked_seq.clear()
            self._acked_status.clear()
            self.batches_sent += 1
            return True
        for name, (seq, status) in pending.items():
            self._acked_seq[name] = seq
            self._acked_status[name] = status
        self.batches_sent += 1
        return True

    async def drain(self) -> None:
        """Wait for the batch in flight, then send what is pending (used when stopping)."""
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait({self._inflight})
        await self.flush()

    async def run(self) -> None:
        """Flush every `interval_s` until cancelled."""
        while True:
            await self._sleep(self.interval_s)
            await self.flush()


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A batch abandoned by a timeout may fail later; its error was already counted.
    if not future.cancelled():
        future.exception()
