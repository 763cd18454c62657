"""Item isolation: one tenant's failing item is recorded and quarantined, the tick goes on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from actors.runtime.supervised import Clock, describe
from store.records import rfc3339

log = logging.getLogger(__name__)


@dataclass
class ItemRecord:
    """What is known about one item's recent failures."""

    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    quarantined_version: Hashable | None = None
    quarantined: bool = False


@dataclass(frozen=True)
class Outcome:
    """Result of running one item's work: ok, failed (with error), or skipped (quarantined)."""

    ok: bool
    skipped: bool = False
    error: str | None = None
    quarantined_now: bool = False
    value: Any = None


class ItemGuard:
    """Runs per-item work so that one item's exception never escapes into the tick.

    An exception from the work is recorded against the item's key; after `max_failures`
    consecutive failures the key is quarantined and skipped until its `version` changes (the
    item was edited) or `release(key)` is called. Exceptions listed in `propagate` (for
    example a lost Redis connection, which is nobody's item's fault) are re-raised for the
    recover loop; so is cancellation. With `timeout_s`, work that takes longer is cancelled
    and counts as the item's failure, so one hung item cannot wedge the tick.

    Quarantine lives in this process; a subsystem that must keep it across restarts
    stores it with the item (for example a schedule's `last_status`).
    """

    def __init__(
        self,
        *,
        max_failures: int = 3,
        propagate: tuple[type[BaseException], ...] = (),
        on_quarantine: Callable[[Hashable, str], Awaitable[None]] | None = None,
        timeout_s: float | None = None,
        clock: Clock = time.time,
    ) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {max_failures}")
        self.max_failures = max_failures
        self._propagate = propagate
        self._on_quarantine = on_quarantine
        self._timeout_s = timeout_s
        self._clock = clock
        self._items: dict[Hashable, ItemRecord] = {}

    @property
    def quarantined(self) -> int:
        """How many items are quarantined now."""
        return sum(1 for r in self._items.values() if r.quarantined)

    def record(self, key: Hashable) -> ItemRecord | None:
        return self._items.get(key)

    def quarantined_items(self) -> list[dict[str, Any]]:
        """Each quarantined item as operators see it: key, error, since (when it was quarantined), failures."""
        return [
            {"key": str(key), "error": r.last_error, "since": rfc3339(r.last_error_at), "failures": r.failures}
            for key, r in self._items.items()
            if r.quarantined
        ]

    def lift(self, key: Hashable) -> bool:
        """Release `key` only if it is quarantined (an item still failing keeps its count); whether it was."""
        record = self._items.get(key)
        if record is None or not record.quarantined:
            return False
        del self._items[key]
        return True

    def release(self, key: Hashable) -> bool:
        """Operator release: forget the item's failures. Returns whether it was quarantined."""
        record = self._items.pop(key, None)
        return bool(record and record.quarantined)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[Any]], *, version: Hashable = None) -> Outcome:
        """Run `work` for `key` unless it is quarantined at this `version`."""
        skipped = self._skipped(key, version)
        if skipped is not None:
            return skipped
        try:
            if self._timeout_s is None:
                value = await work()
            else:
                value = await asyncio.wait_for(work(), self._timeout_s)
        except self._propagate:
            raise
        except Exception as exc:  # isolating one item's failure from the others is the point
            return await self._failed(key, exc, version)
        self._items.pop(key, None)
        return Outcome(ok=True, value=value)

    async def fail(self, key: Hashable, error: Exception, *, version: Hashable = None) -> Outcome:
        """Record a failure of `key` found without running its work (say, a record that cannot be read).

        Counts toward quarantine like a failed `run`; skipped if already quarantined at `version`.
        """
        skipped = self._skipped(key, version)
        if skipped is not None:
            return skipped
        return await self._failed(key, error, version)

    async def run_on(
        self,
        key: Hashable,
        record: Any,
        work: Callable[[Any], Awaitable[Any]],
        *,
        version: Callable[[Any], Hashable],
    ) -> Outcome:
        """`run(key, work(record))` for an item read as `record`, at `version(record)`.

        A record that could not be read (an Exception, as a pipeline returns it) is the
        item's failure, recorded with `fail`.
        """
        if isinstance(record, Exception):
            return await self.fail(key, record, version=str(record))
        return await self.run(key, lambda: work(record), version=version(record))

    def _skipped(self, key: Hashable, version: Hashable) -> Outcome | None:
        """The skip of an item quarantined at `version`; None if it should run (a new version releases it)."""
        record = self._items.get(key)
        if record is None or not record.quarantined:
            return None
        if record.quarantined_version == version:
            return Outcome(ok=False, skipped=True, error=record.last_error)
        log.info("item %s changed; released from quarantine", key)
        del self._items[key]
        return None

    async def _failed(self, key: Hashable, exc: Exception, version: Hashable) -> Outcome:
        record = self._items.setdefault(key, ItemRecord())
        record.failures += 1
        record.last_error = describe(exc)
        record.last_error_at = self._clock()
        log.warning("item %s failed (%d in a row): %s", key, record.failures, record.last_error, exc_info=exc)
        if record.failures < self.max_failures:
            return Outcome(ok=False, error=record.last_error)
        record.quarantined = True
        record.quarantined_version = version
        log.error("item %s quarantined after %d failures: %s", key, record.failures, record.last_error)
        if self._on_quarantine is not None:
            try:
                await self._on_quarantine(key, record.last_error)
            except self._propagate:
                raise
            except Exception as cb_exc:  # a failed notification must not fail the whole tick
                log.error("quarantine callback for item %s failed: %s", key, cb_exc, exc_info=cb_exc)
        return Outcome(ok=False, error=record.last_error, quarantined_now=True)
